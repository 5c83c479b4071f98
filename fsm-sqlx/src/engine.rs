//! What every backend shares: the fire loop, row decoding and error mapping.
//!
//! A backend only moves rows ([`Backend`]); deciding stays in fsm-core's
//! [`Prepared::apply`], and the read, decide, compare-and-set, retry loop is written
//! once, here.

use std::future::Future;

use fsm_core::command::{Fingerprint, fingerprint};
use fsm_core::machine::timer_delay;
use fsm_core::store::{Applied, Prepared, check_id, now_ms};
use fsm_core::{
    EdgeIndex, Error, Outcome, Result, RetryPolicy, Snapshot, StateMachine, Transition, Trigger,
};

use crate::Concurrency;

/// A machine row as stored, before parsing.
#[derive(Debug)]
pub struct RawMachine {
    pub state: String,
    pub version: i64,
    pub context: String,
    pub init_fingerprint: Vec<u8>,
}

/// A history row as stored, before parsing.
#[derive(Debug)]
pub struct RawTransition {
    pub version: i64,
    pub from_state: String,
    pub payload: String,
    pub to_state: String,
    pub idem_key: Option<String>,
    pub fingerprint: Option<Vec<u8>>,
    pub at_ms: i64,
}

/// A timer to arm: the `after(..)` edge and when it is due.
#[derive(Debug, Clone, Copy)]
pub struct Arm {
    pub edge: i32,
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
    pub timers: Vec<Arm>,
}

/// An outbox row as stored.
#[derive(Debug)]
pub struct RawEffect {
    pub machine_id: String,
    pub version: i64,
    pub seq: i32,
    pub effect: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// How a claimed outbox row ends.
#[derive(Debug)]
pub enum Settlement<'a> {
    /// Handled: never claimed again.
    Done { at: i64 },
    /// Failed: claimable again from `at`.
    Retry { at: i64, error: &'a str },
    /// Failed for the last time: kept as a dead letter.
    Dead { error: &'a str },
}

/// A timer row as claimed.
#[derive(Debug, Clone)]
pub struct RawTimer {
    pub machine_id: String,
    pub version: i64,
    pub edge: i32,
}

/// One transition to write with a compare-and-set on `expected`.
#[derive(Debug)]
pub struct Write<'a> {
    pub machine: &'static str,
    pub id: &'a str,
    pub expected: i64,
    pub version: i64,
    pub from_state: &'static str,
    pub to_state: &'static str,
    pub context: String,
    pub event: String,
    pub payload: String,
    pub idem_key: Option<&'a str>,
    pub fingerprint: Option<[u8; 32]>,
    pub at_ms: i64,
    /// Effects as JSON, written to the outbox as (version, index).
    pub effects: Vec<String>,
    /// Timers of the target state, stamped with `version`.
    pub timers: Vec<Arm>,
    /// A single-use token to consume (delete-returning) in the same transaction.
    pub token: Option<&'a str>,
}

/// How a compare-and-set write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed.
    Applied,
    /// The version moved (or the row vanished) since the read.
    VersionMoved,
    /// Another writer recorded the same idempotency key first.
    KeyTaken,
    /// The command's token is unknown, expired, or was just consumed by another writer.
    TokenRejected,
}

/// The SQL of one database: reads and writes rows, decides nothing.
pub trait Backend: Send + Sync {
    /// A transaction holding the instance's row lock (pessimistic mode).
    type Locked: Send;

    /// The instance and, if `key` is given, the transition recorded under it; one read.
    fn read(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Option<(RawMachine, Option<RawTransition>)>>> + Send;

    /// As [`read`](Backend::read), inside a transaction that locks the instance's row
    /// until [`write_locked`](Backend::write_locked) commits it or it is dropped.
    #[allow(clippy::type_complexity)]
    fn lock(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Option<(Self::Locked, RawMachine, Option<RawTransition>)>>> + Send;

    /// Inserts unless the id exists, with its initial timers; `true` when inserted.
    fn insert(&self, new: &NewMachine<'_>) -> impl Future<Output = Result<bool>> + Send;

    /// Applies one transition atomically: token, compare-and-set, history, outbox, timers.
    fn write(&self, write: &Write<'_>) -> impl Future<Output = Result<Written>> + Send;

    /// [`write`](Backend::write) inside a locked transaction, committing it when applied.
    fn write_locked(
        &self,
        locked: Self::Locked,
        write: &Write<'_>,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// The history in version order (empty for an unknown instance too).
    fn history(
        &self,
        machine: &'static str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<RawTransition>>> + Send;

    /// Stores a token for an existing instance; `false` when the instance does not exist.
    fn insert_token(
        &self,
        machine: &'static str,
        id: &str,
        token: &str,
        expires_at: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Leases up to `limit` due, unleased outbox rows until `lease_until`, counting an
    /// attempt on each; rows locked by another claimer are skipped.
    fn claim_effects(
        &self,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RawEffect>>> + Send;

    /// Records how a claimed outbox row ended, unless the claim's lease was lost (the
    /// row was claimed again since); `false` then.
    fn settle_effect(
        &self,
        machine: &'static str,
        effect: &RawEffect,
        settlement: Settlement<'_>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Dead-lettered outbox rows of a machine type, oldest first.
    fn dead_effects(
        &self,
        machine: &'static str,
    ) -> impl Future<Output = Result<Vec<RawEffect>>> + Send;

    /// Makes a dead letter claimable again; `false` when it is not a dead letter.
    fn requeue_effect(
        &self,
        machine: &'static str,
        id: &str,
        version: i64,
        seq: i32,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Leases up to `limit` due, unleased timers until `lease_until`.
    fn claim_timers(
        &self,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RawTimer>>> + Send;

    /// Removes a timer that fired or became moot.
    fn delete_timer(
        &self,
        machine: &'static str,
        timer: &RawTimer,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Maps a sqlx error to fsm's, keeping it as the source.
pub fn database(operation: impl Fn() -> String) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::database(operation(), source)
}

/// Whether a write lost to a unique index (another writer's key or version).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// A row whose columns do not have the expected types.
pub fn undecodable(
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

fn corrupt<M: StateMachine>(table: &'static str, id: &str, detail: String) -> Error {
    Error::Corrupt {
        table,
        machine: M::DEFINITION.name,
        id: id.to_owned(),
        detail,
    }
}

fn parse_state<M: StateMachine>(table: &'static str, id: &str, name: &str) -> Result<M::State> {
    M::parse_state(name)
        .ok_or_else(|| corrupt::<M>(table, id, format!("unknown state name {name:?}")))
}

fn version(table: &'static str, id: &str, machine: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt {
        table,
        machine,
        id: id.to_owned(),
        detail: format!("negative version {v}"),
    })
}

/// Parses a machine row; anything unexpected is [`Error::Corrupt`].
pub fn decode_machine<M: StateMachine>(id: &str, raw: RawMachine) -> Result<Snapshot<M>> {
    const TABLE: &str = "fsm_machines";
    let state = parse_state::<M>(TABLE, id, &raw.state)?;
    let context = serde_json::from_str(&raw.context).map_err(|e| {
        corrupt::<M>(
            TABLE,
            id,
            format!("context is not a valid {}: {e}", M::DEFINITION.context),
        )
    })?;
    Ok(Snapshot {
        id: id.to_owned(),
        state,
        version: version(TABLE, id, M::DEFINITION.name, raw.version)?,
        context,
    })
}

/// Parses a history row, with the fingerprint its key was recorded with.
pub fn decode_transition<M: StateMachine>(
    id: &str,
    raw: RawTransition,
) -> Result<(Transition<M>, Option<Fingerprint>)> {
    const TABLE: &str = "fsm_transitions";
    let event: Trigger<M::Event> = serde_json::from_str(&raw.payload).map_err(|e| {
        corrupt::<M>(
            TABLE,
            id,
            format!("payload of version {} does not parse: {e}", raw.version),
        )
    })?;
    let fingerprint = match raw.fingerprint {
        None => None,
        Some(bytes) => Some(Fingerprint::from_slice(&bytes).ok_or_else(|| {
            corrupt::<M>(
                TABLE,
                id,
                format!("fingerprint of {} bytes, expected 32", bytes.len()),
            )
        })?),
    };
    let transition = Transition {
        version: version(TABLE, id, M::DEFINITION.name, raw.version)?,
        from: parse_state::<M>(TABLE, id, &raw.from_state)?,
        event,
        to: parse_state::<M>(TABLE, id, &raw.to_state)?,
        key: raw.idem_key,
        at_ms: u64::try_from(raw.at_ms).unwrap_or(0),
    };
    Ok((transition, fingerprint))
}

fn json<M: StateMachine, T: serde::Serialize + ?Sized>(
    id: &str,
    what: &'static str,
    value: &T,
) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Serialization {
        machine: M::DEFINITION.name,
        id: id.to_owned(),
        what,
        source,
    })
}

fn write_of<'a, M: StateMachine>(
    id: &'a str,
    prepared: &'a Prepared<M>,
    expected: u64,
    applied: &Applied<M>,
) -> Result<Write<'a>> {
    let t = &applied.transition;
    let event = match &t.event {
        Trigger::Event(e) => M::event_name(e).to_owned(),
        Trigger::Timer { after, .. } => {
            format!("after({})", fsm_core::definition::format_duration(*after))
        }
    };
    Ok(Write {
        machine: M::DEFINITION.name,
        id,
        expected: expected as i64,
        version: t.version as i64,
        from_state: M::state_name(t.from),
        to_state: M::state_name(t.to),
        context: json::<M, _>(id, "context", &applied.snapshot.context)?,
        event,
        payload: json::<M, _>(id, "event", &t.event)?,
        idem_key: prepared.stored_key(),
        fingerprint: prepared.fingerprint().map(|f| f.0),
        at_ms: t.at_ms as i64,
        effects: applied
            .effects
            .iter()
            .map(|e| json::<M, _>(id, "effect", e))
            .collect::<Result<_>>()?,
        timers: arms::<M>(t.to, t.at_ms),
        token: prepared.key().and_then(|key| key.token()),
    })
}

/// The timers to arm on entering `state` at `now`.
fn arms<M: StateMachine>(state: M::State, now: u64) -> Vec<Arm> {
    M::timer_edges(state)
        .iter()
        .map(|&edge| Arm {
            edge: i32::from(edge),
            due_at: now
                .saturating_add(timer_delay::<M>(edge).unwrap_or_default().as_millis() as u64)
                as i64,
        })
        .collect()
}

fn not_found<M: StateMachine>(id: &str) -> Error {
    Error::NotFound {
        machine: M::DEFINITION.name,
        id: id.to_owned(),
    }
}

/// `create`: insert, or return the existing instance when its initial context matches.
pub async fn create<B: Backend, M: StateMachine>(
    backend: &B,
    id: &str,
    context: M::Context,
) -> Result<Snapshot<M>> {
    check_id::<M>(id)?;
    let serialization = |source| Error::Serialization {
        machine: M::DEFINITION.name,
        id: id.to_owned(),
        what: "context",
        source,
    };
    let init = fingerprint(&context).map_err(serialization)?;
    let now = now_ms();
    let new = NewMachine {
        machine: M::DEFINITION.name,
        id,
        state: M::state_name(M::INITIAL),
        context: serde_json::to_string(&context).map_err(serialization)?,
        init_fingerprint: init.0,
        at_ms: now as i64,
        timers: arms::<M>(M::INITIAL, now),
    };
    if backend.insert(&new).await? {
        return Ok(Snapshot {
            id: id.to_owned(),
            state: M::INITIAL,
            version: 0,
            context,
        });
    }
    let (raw, _) = backend
        .read(M::DEFINITION.name, id, None)
        .await?
        .ok_or_else(|| not_found::<M>(id))?;
    let same_origin = raw.init_fingerprint == init.0;
    let existing = decode_machine::<M>(id, raw)?;
    if same_origin {
        Ok(existing)
    } else {
        Err(Error::AlreadyExists {
            machine: M::DEFINITION.name,
            id: id.to_owned(),
            state: M::state_name(existing.state).to_owned(),
            version: existing.version,
        })
    }
}

/// `load`.
pub async fn load<B: Backend, M: StateMachine>(backend: &B, id: &str) -> Result<Snapshot<M>> {
    check_id::<M>(id)?;
    let (raw, _) = backend
        .read(M::DEFINITION.name, id, None)
        .await?
        .ok_or_else(|| not_found::<M>(id))?;
    decode_machine(id, raw)
}

/// `history`.
pub async fn history<B: Backend, M: StateMachine>(
    backend: &B,
    id: &str,
) -> Result<Vec<Transition<M>>> {
    check_id::<M>(id)?;
    let rows = backend.history(M::DEFINITION.name, id).await?;
    // No rows: a new instance or an unknown id; the instance read tells which.
    if rows.is_empty() && backend.read(M::DEFINITION.name, id, None).await?.is_none() {
        return Err(not_found::<M>(id));
    }
    let mut history = Vec::with_capacity(rows.len());
    for (expected, raw) in (1..).zip(rows) {
        let (transition, _) = decode_transition::<M>(id, raw)?;
        if transition.version != expected {
            return Err(corrupt::<M>(
                "fsm_transitions",
                id,
                format!(
                    "version {} where {expected} was expected",
                    transition.version
                ),
            ));
        }
        history.push(transition);
    }
    Ok(history)
}

/// `fire` and `fire_with`: read (unless the caller's snapshot is given), decide with
/// fsm-core, write with a compare-and-set, and on a lost race read and decide again.
/// In pessimistic mode the read locks the row, so the write cannot lose.
///
/// Returns the outcome and the instance as stored afterwards.
pub async fn fire<B: Backend, M: StateMachine>(
    backend: &B,
    policy: &RetryPolicy,
    mode: Concurrency,
    id: &str,
    prepared: Prepared<M>,
    mut known: Option<Snapshot<M>>,
) -> Result<(Outcome<M>, Snapshot<M>)> {
    let machine = M::DEFINITION.name;
    let key = prepared.stored_key();
    let mut attempt = 1;
    let mut token_rejected = false;
    loop {
        let mut locked = None;
        // A caller's snapshot saves the read; it is trusted only once the write succeeds.
        let (snapshot, recorded, verified) = match (mode, known.take()) {
            (Concurrency::Optimistic, Some(snapshot)) => (snapshot, None, false),
            (Concurrency::Optimistic, None) => {
                let (raw, recorded) = backend
                    .read(machine, id, key)
                    .await?
                    .ok_or_else(|| not_found::<M>(id))?;
                (decode_machine::<M>(id, raw)?, recorded, true)
            }
            (Concurrency::Pessimistic, _) => {
                let (tx, raw, recorded) = backend
                    .lock(machine, id, key)
                    .await?
                    .ok_or_else(|| not_found::<M>(id))?;
                locked = Some(tx);
                (decode_machine::<M>(id, raw)?, recorded, true)
            }
        };
        if let Some(raw) = recorded {
            let (original, recorded_fingerprint) = decode_transition::<M>(id, raw)?;
            let recorded_fingerprint = recorded_fingerprint.ok_or_else(|| {
                corrupt::<M>(
                    "fsm_transitions",
                    id,
                    "keyed row without fingerprint".into(),
                )
            })?;
            let outcome = prepared.replay(id, original, &recorded_fingerprint)?;
            return Ok((outcome, snapshot));
        }
        if token_rejected {
            // Not consumed by a transition we can replay: unknown, expired or foreign.
            return Err(Error::InvalidToken {
                machine,
                id: id.to_owned(),
            });
        }
        let applied = match prepared.apply(&snapshot) {
            Ok(applied) => applied,
            // A rejection decided on an unverified snapshot may be stale: read and decide again.
            Err(_) if !verified => continue,
            Err(err) => return Err(err),
        };
        let write = write_of(id, &prepared, snapshot.version, &applied)?;
        let written = match locked {
            Some(tx) => backend.write_locked(tx, &write).await?,
            None => backend.write(&write).await?,
        };
        match written {
            Written::Applied => {
                return Ok((Outcome::Applied(applied.transition), applied.snapshot));
            }
            // The next read finds the key (or the token's transition) and replays it.
            Written::KeyTaken => {}
            Written::TokenRejected => {
                token_rejected = true;
                continue;
            }
            Written::VersionMoved if verified => {
                policy.pause(attempt, machine, id, snapshot.version).await?;
            }
            Written::VersionMoved => {}
        }
        attempt += 1;
    }
}

/// Fires one due timer as a compare-and-set at the version it was armed with; a machine
/// that moved on (or whose timer guard fails) makes it a no-op. The timer row is removed
/// either way, after the transition commits, so a crash in between only re-runs a no-op.
pub async fn fire_timer<B: Backend, M: StateMachine>(
    backend: &B,
    timer: &RawTimer,
) -> Result<Option<Transition<M>>> {
    let machine = M::DEFINITION.name;
    let id = timer.machine_id.as_str();
    let edge = EdgeIndex::try_from(timer.edge)
        .ok()
        .filter(|&edge| timer_delay::<M>(edge).is_some())
        .ok_or_else(|| {
            corrupt::<M>(
                "fsm_timers",
                id,
                format!("{} is not a timer edge", timer.edge),
            )
        })?;
    let fired = match backend.read(machine, id, None).await? {
        Some((raw, _)) if raw.version == timer.version => {
            let snapshot = decode_machine::<M>(id, raw)?;
            let prepared = Prepared::<M>::timer(edge);
            match prepared.apply(&snapshot) {
                Ok(applied) => {
                    let write = write_of(id, &prepared, snapshot.version, &applied)?;
                    match backend.write(&write).await? {
                        Written::Applied => Some(applied.transition),
                        _ => None,
                    }
                }
                Err(Error::IllegalTransition { .. } | Error::GuardRejected { .. }) => None,
                Err(err) => return Err(err),
            }
        }
        _ => None,
    };
    backend.delete_timer(machine, timer).await?;
    Ok(fired)
}

/// Implements [`fsm_core::Store`] for a backend through this module's functions, so every
/// backend behaves the same by construction.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_macros)
)]
macro_rules! impl_store {
    ($store:ty) => {
        impl ::fsm_core::Store for $store {
            async fn create<M: ::fsm_core::StateMachine>(
                &self,
                id: &str,
                context: M::Context,
            ) -> ::fsm_core::Result<::fsm_core::Snapshot<M>> {
                $crate::engine::create(self, id, context).await
            }

            async fn load<M: ::fsm_core::StateMachine>(
                &self,
                id: &str,
            ) -> ::fsm_core::Result<::fsm_core::Snapshot<M>> {
                $crate::engine::load(self, id).await
            }

            async fn fire<M: ::fsm_core::StateMachine>(
                &self,
                id: &str,
                command: ::fsm_core::Command<M>,
            ) -> ::fsm_core::Result<::fsm_core::Outcome<M>> {
                let prepared = ::fsm_core::Prepared::new(id, command)?;
                let (outcome, _) =
                    $crate::engine::fire(self, &self.retry, self.concurrency, id, prepared, None)
                        .await?;
                Ok(outcome)
            }

            async fn fire_with<M: ::fsm_core::StateMachine>(
                &self,
                snapshot: &mut ::fsm_core::Snapshot<M>,
                command: ::fsm_core::Command<M>,
            ) -> ::fsm_core::Result<::fsm_core::Outcome<M>> {
                let prepared = ::fsm_core::Prepared::new(&snapshot.id, command)?;
                let id = snapshot.id.clone();
                let known = Some(snapshot.clone());
                let (outcome, current) =
                    $crate::engine::fire(self, &self.retry, self.concurrency, &id, prepared, known)
                        .await?;
                *snapshot = current;
                Ok(outcome)
            }

            async fn history<M: ::fsm_core::StateMachine>(
                &self,
                id: &str,
            ) -> ::fsm_core::Result<::std::vec::Vec<::fsm_core::Transition<M>>> {
                $crate::engine::history(self, id).await
            }
        }
    };
}
pub(crate) use impl_store;
