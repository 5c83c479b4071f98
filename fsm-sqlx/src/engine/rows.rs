//! Rows as the tables hold them, and their translation to and from fsm-core's types.
//!
//! Decoding is strict: a state name the definition does not know, JSON that does not
//! parse, a negative version or a short fingerprint is [`Error::Corrupt`], never a panic
//! and never a default.

use fsm_core::kit::{Applied, Prepared, deadline, timer_delay};
use fsm_core::{Error, Fingerprint, Result, Snapshot, StateMachine, Transition, Trigger};

/// An `fsm_machines` row, before parsing.
#[derive(Debug)]
pub(crate) struct MachineRow {
    pub state: String,
    pub version: i64,
    pub context: String,
    pub init_fingerprint: Vec<u8>,
}

/// An `fsm_transitions` row, before parsing.
#[derive(Debug)]
pub(crate) struct TransitionRow {
    pub version: i64,
    pub from_state: String,
    /// The serialized [`Trigger`]: the event with its payload, or the timer.
    pub trigger: String,
    pub to_state: String,
    pub idem_key: Option<String>,
    pub fingerprint: Option<Vec<u8>>,
    pub at_ms: i64,
}

/// What one keyed read returns: the instance and the transition recorded under the key.
pub(crate) type InstanceRead = Option<(MachineRow, Option<TransitionRow>)>;

/// A timer to arm on entering a state: its delay (with the state, its name) and when it
/// is due.
#[derive(Debug, Clone, Copy)]
pub struct PendingTimer {
    pub after_ms: i64,
    pub due_at: i64,
}

/// A new instance to insert, with the timers of its initial state (stamped version 0).
#[derive(Debug)]
pub struct NewMachine<'a> {
    pub machine: &'static str,
    pub id: &'a str,
    pub state: &'static str,
    pub context: String,
    pub init_fingerprint: [u8; 32],
    pub at_ms: i64,
    pub timers: Vec<PendingTimer>,
}

/// An `fsm_timers` row as claimed.
#[derive(Debug, Clone)]
pub struct TimerRow {
    pub machine_id: String,
    pub version: i64,
    /// The state it was armed in, as stored.
    pub from_state: String,
    pub after_ms: i64,
    pub due_at: i64,
}

/// Every row of one transition, written with a compare-and-set on `expected`.
#[derive(Debug)]
pub struct TransitionWrite<'a> {
    pub machine: &'static str,
    pub id: &'a str,
    pub expected: i64,
    pub version: i64,
    pub from_state: &'static str,
    pub to_state: &'static str,
    pub context: String,
    /// When the instance enters `to_state`; `None` for a self-loop, which does not
    /// re-enter.
    pub entered_at: Option<i64>,
    /// The event's name (or `after(..)`), for people reading the table.
    pub event: String,
    /// The serialized [`Trigger`].
    pub trigger: String,
    pub idem_key: Option<&'a str>,
    pub fingerprint: Option<[u8; 32]>,
    pub at_ms: i64,
    /// Effects as JSON, written to the outbox as (version, seq).
    pub effects: Vec<String>,
    /// Timers of the target state, stamped with `version`.
    pub timers: Vec<PendingTimer>,
    /// A single-use token to consume (delete-returning) in the same transaction.
    pub token: Option<&'a str>,
    /// What a caller's snapshot claims the row holds, when the decision was made from it
    /// instead of a read: the compare-and-set checks it along with the version.
    pub claimed: Option<Claimed>,
}

/// The state and context a caller's snapshot claims, as stored.
#[derive(Debug)]
pub struct Claimed {
    pub state: &'static str,
    pub context: String,
}

/// How a compare-and-set write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed.
    Committed,
    /// The version moved (or the row vanished) since the read.
    VersionMoved,
    /// Another writer recorded the same idempotency key first.
    KeyTaken,
    /// The command's token is unknown, expired, or was just consumed by another writer.
    TokenRejected,
}

/// A row whose columns do not have the expected types.
pub(crate) fn undecodable(
    machine: &'static str,
    id: &str,
    table: &'static str,
    err: &dyn std::fmt::Display,
) -> Error {
    Error::Corrupt {
        table,
        machine,
        id: id.to_owned(),
        detail: format!("row does not decode: {err}"),
    }
}

fn parse_state<M: StateMachine>(table: &'static str, id: &str, name: &str) -> Result<M::State> {
    M::parse_state(name)
        .ok_or_else(|| Error::corrupt::<M>(table, id, format!("unknown state name {name:?}")))
}

fn version<M: StateMachine>(table: &'static str, id: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::corrupt::<M>(table, id, format!("negative version {v}")))
}

/// Parses a machine row; anything unexpected is [`Error::Corrupt`].
pub(crate) fn decode_machine<M: StateMachine>(id: &str, row: MachineRow) -> Result<Snapshot<M>> {
    const TABLE: &str = "fsm_machines";
    let state = parse_state::<M>(TABLE, id, &row.state)?;
    let context = serde_json::from_str(&row.context).map_err(|e| {
        Error::corrupt::<M>(
            TABLE,
            id,
            format!("context is not a valid {}: {e}", M::DEFINITION.context),
        )
    })?;
    Ok(Snapshot::new(
        id,
        state,
        version::<M>(TABLE, id, row.version)?,
        context,
    ))
}

/// Parses a history row, with the fingerprint its key was recorded with.
pub(crate) fn decode_transition<M: StateMachine>(
    id: &str,
    row: TransitionRow,
) -> Result<(Transition<M>, Option<Fingerprint>)> {
    const TABLE: &str = "fsm_transitions";
    let event: Trigger<M::Event> = serde_json::from_str(&row.trigger).map_err(|e| {
        Error::corrupt::<M>(
            TABLE,
            id,
            format!("trigger of version {} does not parse: {e}", row.version),
        )
    })?;
    let fingerprint = match row.fingerprint {
        None => None,
        Some(bytes) => Some(Fingerprint::from_slice(&bytes).ok_or_else(|| {
            Error::corrupt::<M>(
                TABLE,
                id,
                format!("fingerprint of {} bytes, expected 32", bytes.len()),
            )
        })?),
    };
    let transition = Transition {
        version: version::<M>(TABLE, id, row.version)?,
        from: parse_state::<M>(TABLE, id, &row.from_state)?,
        event,
        to: parse_state::<M>(TABLE, id, &row.to_state)?,
        key: row
            .idem_key
            .map(|k| fsm_core::IdempotencyKey::display_stored(&k).to_owned()),
        at_ms: u64::try_from(row.at_ms).unwrap_or(0),
    };
    Ok((transition, fingerprint))
}

/// `value` as the JSON text a column stores.
pub(crate) fn to_json<M: StateMachine, T: serde::Serialize + ?Sized>(
    id: &str,
    what: &'static str,
    value: &T,
) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::serialization::<M>(id, what, source))
}

/// The rows that record what [`Prepared::apply`] decided from version `expected`.
pub(crate) fn write_of<'a, M: StateMachine>(
    id: &'a str,
    prepared: &'a Prepared<M>,
    current: &Snapshot<M>,
    verified: bool,
    applied: &Applied<M>,
) -> Result<TransitionWrite<'a>> {
    let expected = current.version;
    let claimed = match verified {
        true => None,
        false => Some(Claimed {
            state: M::state_name(current.state),
            context: to_json::<M, _>(id, "context", &current.context)?,
        }),
    };
    let t = &applied.transition;
    Ok(TransitionWrite {
        machine: M::DEFINITION.name,
        id,
        expected: expected as i64,
        version: t.version as i64,
        from_state: M::state_name(t.from),
        to_state: M::state_name(t.to),
        context: to_json::<M, _>(id, "context", &applied.snapshot.context)?,
        entered_at: (t.from != t.to).then_some(t.at_ms as i64),
        event: t.event.label(),
        trigger: to_json::<M, _>(id, "event", &t.event)?,
        idem_key: prepared.stored_key(),
        fingerprint: prepared.fingerprint().map(|f| f.0),
        at_ms: t.at_ms as i64,
        effects: applied
            .effects
            .iter()
            .map(|e| to_json::<M, _>(id, "effect", e))
            .collect::<Result<_>>()?,
        timers: timers_of::<M>(t.to, t.at_ms),
        token: prepared.key().and_then(|key| key.token()),
        claimed,
    })
}

/// The timers to arm on entering `state` at `now`: one per delay (edges sharing one are
/// one timer, whose guards are tried in order when it fires).
pub(crate) fn timers_of<M: StateMachine>(state: M::State, now: u64) -> Vec<PendingTimer> {
    let mut timers: Vec<PendingTimer> = Vec::new();
    for &edge in M::timer_edges(state) {
        let after = timer_delay::<M>(edge).unwrap_or_default();
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        if timers.iter().all(|t| t.after_ms != after_ms) {
            timers.push(PendingTimer {
                after_ms,
                due_at: deadline(now, after),
            });
        }
    }
    timers
}
