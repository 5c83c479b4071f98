//! The store operations, written once for every dialect: read, decide with fsm-core,
//! write with a compare-and-set, and on a lost race read and decide again.
//!
//! Deciding stays in fsm-core's [`Prepared::apply`]; a dialect only moves rows.

pub(crate) mod batch;
pub(crate) mod hot;
pub(crate) mod prune;
pub(crate) mod queries;
pub(crate) mod rows;

use crate::SqlStore;
use sqlx::Pool;
use sqlx::pool::PoolConnection;

use std::time::Duration;

use fsm_core::kit::{Prepared, check_id, check_storable, fingerprint, now_ms, timer_name};
use fsm_core::{Created, Error, Outcome, Result, Snapshot, StateMachine, Transition};

use crate::Concurrency;
use crate::dialect::{
    Arg, Dialect, LOST_RACE_RUNS, begin_write, connection_lost, db_error, fetch, lost_race,
    lost_race_pause, read_args, retrying,
};
use rows::{
    InstanceRead, MachineRow, NewMachine, TimerRow, TransitionRow, WriteOutcome, decode_machine,
    decode_transition, timers_of, to_json, undecodable, write_of,
};

/// The idempotency key a read looks for: its stored form and, for a source or token key,
/// the form fsm 0.1.0 stored it in.
#[derive(Debug, Clone, Copy)]
struct KeyLookup<'a> {
    stored: Option<&'a str>,
    legacy: Option<&'a str>,
}

impl KeyLookup<'_> {
    const NONE: Self = KeyLookup {
        stored: None,
        legacy: None,
    };
}

/// A machine row's columns from `at`: state, version, context, init fingerprint.
fn machine_row<D: Dialect>(row: &D::Row) -> sqlx::Result<MachineRow> {
    Ok(MachineRow {
        state: D::string(row, 0)?,
        version: D::int(row, 1)?,
        context: D::string(row, 2)?,
        init_fingerprint: D::bytes(row, 3)?,
    })
}

/// A history row's columns from `at` (version NULL: no row, as from a `LEFT JOIN`).
fn transition_row<D: Dialect>(row: &D::Row, at: usize) -> sqlx::Result<Option<TransitionRow>> {
    let Some(version) = D::maybe_int(row, at)? else {
        return Ok(None);
    };
    Ok(Some(TransitionRow {
        version,
        from_state: D::string(row, at + 1)?,
        trigger: D::string(row, at + 2)?,
        to_state: D::string(row, at + 3)?,
        idem_key: D::maybe_text(row, at + 4)?,
        fingerprint: D::maybe_bytes(row, at + 5)?,
        at_ms: D::int(row, at + 6)?,
    }))
}

/// The instance and, if `key` is given, the transition recorded under it; one read.
async fn read_on<D: Dialect>(
    conn: &mut D::Connection,
    machine: &'static str,
    id: &str,
    key: KeyLookup<'_>,
) -> Result<InstanceRead> {
    let args = read_args(machine, id, key.stored, key.legacy);
    let row = D::row(conn, D::SQL.read, &args)
        .await
        .map_err(db_error(|| format!("read {machine} {id}")))?;
    let Some(row) = row else {
        return Ok(None);
    };
    machine_row::<D>(&row)
        .and_then(|m| Ok((m, transition_row::<D>(&row, 4)?)))
        .map(Some)
        .map_err(|e| undecodable(machine, id, "fsm_machines", &e))
}

/// The read of [`read_on`] on a pooled connection, run again after a lost race (even a
/// read can be one at SERIALIZABLE).
async fn read<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    id: &str,
    key: KeyLookup<'_>,
) -> Result<InstanceRead> {
    let mut conn = acquire(pool, machine, id).await?;
    read_again_on::<D>(&mut conn, machine, id, key).await
}

/// A pooled connection for one operation on instance `id`.
async fn acquire<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    id: &str,
) -> Result<PoolConnection<D>> {
    pool.acquire()
        .await
        .map_err(db_error(|| format!("read {machine} {id}")))
}

/// [`read_on`], run again on the same connection after a lost race.
async fn read_again_on<D: Dialect>(
    conn: &mut D::Connection,
    machine: &'static str,
    id: &str,
    key: KeyLookup<'_>,
) -> Result<InstanceRead> {
    let mut runs = 1;
    loop {
        match read_on::<D>(conn, machine, id, key).await {
            Err(err) if runs < LOST_RACE_RUNS && lost_race(&err) => {
                tokio::time::sleep(lost_race_pause(runs)).await;
                runs += 1;
            }
            other => return other,
        }
    }
}

/// As [`read`], inside a transaction that holds the instance's row lock until it is
/// committed or dropped: the key lookup runs once the lock is held, so it sees the
/// transition of the writer we waited for.
async fn lock<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    id: &str,
    key: KeyLookup<'_>,
) -> Result<Option<(sqlx::Transaction<'static, D>, InstanceRead)>> {
    let operation = || format!("lock {machine} {id}");
    let mut tx = begin_write(pool, operation).await?;
    if let Some(lock) = D::SQL.lock {
        let locked = D::rows(&mut tx, lock, &[Arg::Text(machine), Arg::Text(id)])
            .await
            .map_err(db_error(operation))?;
        if locked.is_empty() {
            return Ok(None);
        }
    }
    let read = read_on::<D>(&mut tx, machine, id, key).await?;
    Ok(Some((tx, read)))
}

/// `create`: insert, or return the existing instance when its initial context matches.
pub(crate) async fn create<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    id: &str,
    context: M::Context,
) -> Result<Created<M>> {
    check_id::<M>(id)?;
    check_storable::<M, _>(id, "context", &context)?;
    let init = fingerprint(&context).map_err(|e| Error::serialization::<M>(id, "context", e))?;
    let now = now_ms();
    let new = NewMachine {
        machine: M::DEFINITION.name,
        id,
        state: M::state_name(M::INITIAL),
        context: to_json::<M, _>(id, "context", &context)?,
        init_fingerprint: init.0,
        at_ms: now as i64,
        timers: timers_of::<M>(M::INITIAL, now),
    };
    if retrying(|| D::insert(pool, &new)).await? {
        return Ok(Created::New(Snapshot::new(id, M::INITIAL, 0, context)));
    }
    let (row, _) = read(pool, M::DEFINITION.name, id, KeyLookup::NONE)
        .await?
        .ok_or_else(|| Error::not_found::<M>(id))?;
    if row.init_fingerprint.len() != init.0.len() {
        return Err(Error::corrupt::<M>(
            "fsm_machines",
            id,
            format!(
                "init_fingerprint of {} bytes, expected 32",
                row.init_fingerprint.len()
            ),
        ));
    }
    let same_origin = row.init_fingerprint == init.0;
    let existing = decode_machine::<M>(id, row)?;
    if same_origin {
        Ok(Created::Existing(existing))
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
pub(crate) async fn load<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    id: &str,
) -> Result<Snapshot<M>> {
    check_id::<M>(id)?;
    let (row, _) = read(pool, M::DEFINITION.name, id, KeyLookup::NONE)
        .await?
        .ok_or_else(|| Error::not_found::<M>(id))?;
    decode_machine(id, row)
}

/// `history`.
pub(crate) async fn history<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    id: &str,
) -> Result<Vec<Transition<M>>> {
    check_id::<M>(id)?;
    let machine = M::DEFINITION.name;
    // The instance's version says how many rows there must be at least (and an unknown
    // id has none); read before the history, so a transition committed in between
    // only adds a row the version did not count, never the other way round.
    let (instance, _) = read(pool, machine, id, KeyLookup::NONE)
        .await?
        .ok_or_else(|| Error::not_found::<M>(id))?;
    let rows = fetch(
        pool,
        D::SQL.history,
        &[Arg::Text(machine), Arg::Text(id)],
        || format!("history of {machine} {id}"),
    )
    .await?;
    let mut history = Vec::with_capacity(rows.len());
    for (expected, row) in (1..).zip(&rows) {
        let row = transition_row::<D>(row, 0)
            .map_err(|e| undecodable(machine, id, "fsm_transitions", &e))?
            .ok_or_else(|| undecodable(machine, id, "fsm_transitions", &"NULL version"))?;
        let (transition, _) = decode_transition::<M>(id, row)?;
        if transition.version != expected {
            return Err(Error::corrupt::<M>(
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
    let stored = u64::try_from(instance.version).unwrap_or(0);
    if (history.len() as u64) < stored {
        return Err(Error::corrupt::<M>(
            "fsm_transitions",
            id,
            format!(
                "{} history rows for an instance at version {stored}",
                history.len()
            ),
        ));
    }
    Ok(history)
}

/// `fire` and `fire_with`: read (unless the caller's snapshot is given), decide with
/// fsm-core, write with a compare-and-set, and on a lost race read and decide again.
/// In pessimistic mode the read locks the row, so the write cannot lose.
///
/// Returns the outcome and the instance as stored afterwards.
pub(crate) async fn fire<D: Dialect, M: StateMachine>(
    store: &SqlStore<D>,
    id: &str,
    prepared: Prepared<M>,
    mut known: Option<Snapshot<M>>,
) -> Result<(Outcome<M>, Snapshot<M>)> {
    let SqlStore {
        pool,
        retry: policy,
        concurrency: mode,
        hot,
        ..
    } = store;
    let mode = *mode;
    let machine = M::DEFINITION.name;
    let key = KeyLookup {
        stored: prepared.stored_key(),
        legacy: prepared.legacy_key(),
    };
    let mut attempt = 1;
    let mut token_rejected = false;
    // Adaptive starts optimistic and locks once it has lost a race, or at once on an
    // instance that lost one lately.
    let mut locking = match mode {
        Concurrency::Pessimistic => true,
        Concurrency::Adaptive => hot.is_hot(machine, id),
        Concurrency::Optimistic => false,
    };
    loop {
        // An unlocked attempt writes on the connection it read on: one checkout per
        // attempt. It is dropped before a retry pauses or locks, so a fire never holds
        // two and a full pool cannot deadlock.
        let writer;
        // A caller's snapshot saves the read; it is trusted only once the write succeeds.
        let (snapshot, recorded, verified) = match (locking, known.take()) {
            (false, Some(snapshot)) => {
                writer = Writer::Unlocked(take(store, machine, id).await?);
                (snapshot, None, false)
            }
            (false, None) => {
                let mut conn = take(store, machine, id).await?;
                let read = match read_again_on::<D>(&mut conn, machine, id, key).await {
                    // A kept connection that died within the ping interval: the read
                    // changed nothing, so it runs again on a fresh one.
                    Err(err) if connection_lost(&err) => {
                        drop(conn.detach());
                        conn = acquire(pool, machine, id).await?;
                        read_again_on::<D>(&mut conn, machine, id, key).await
                    }
                    read => read,
                };
                let (row, recorded) = read?.ok_or_else(|| Error::not_found::<M>(id))?;
                writer = Writer::Unlocked(conn);
                (decode_machine::<M>(id, row)?, recorded, true)
            }
            (true, _) => {
                let locked_read = match lock(pool, machine, id, key).await {
                    // A deadlock among lockers (40P01), or a serialization failure.
                    Err(err) if lost_race(&err) => {
                        policy.pause(attempt, machine, id, 0).await?;
                        attempt += 1;
                        fsm_core::observe::cas_retry(machine, attempt);
                        continue;
                    }
                    other => other?,
                };
                let (tx, read) = locked_read.ok_or_else(|| Error::not_found::<M>(id))?;
                let (row, recorded) = read.ok_or_else(|| Error::not_found::<M>(id))?;
                writer = Writer::Locked(tx);
                (decode_machine::<M>(id, row)?, recorded, true)
            }
        };
        if let Some(row) = recorded {
            let outcome = replay_recorded(&prepared, id, row)?;
            writer.keep(store);
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
            Err(_) if !verified => {
                writer.keep(store);
                continue;
            }
            Err(err) => {
                writer.keep(store);
                return Err(err);
            }
        };
        let write = write_of(id, &prepared, &snapshot, verified, &applied)?;
        let written = match writer {
            Writer::Locked(tx) => D::write_locked(tx, &write).await,
            Writer::Unlocked(mut conn) => {
                let written = D::write(&mut conn, &write).await;
                if written.is_ok() {
                    store.conns.keep(pool, conn);
                }
                written
            }
        };
        let written = match written {
            // The database aborted the transaction (at any statement, COMMIT included)
            // to serialise it against another: nothing was written, and the race is lost
            // as surely as a moved version.
            Err(err) if lost_race(&err) => WriteOutcome::VersionMoved,
            other => other?,
        };
        match written {
            WriteOutcome::Committed => {
                if !write.effects.is_empty() {
                    store.effects_committed(machine);
                }
                return Ok((Outcome::Applied(applied.transition), applied.snapshot));
            }
            // The next read finds the key (or the token's transition) and replays it.
            WriteOutcome::KeyTaken => {}
            WriteOutcome::TokenRejected => {
                token_rejected = true;
                continue;
            }
            // A lost race on a row others write too: the adaptive retry takes the lock,
            // so it queues instead of racing again (and never gives up).
            WriteOutcome::VersionMoved if mode == Concurrency::Adaptive && !locking => {
                hot.lost_race(machine, id);
                locking = true;
            }
            WriteOutcome::VersionMoved if verified => {
                policy.pause(attempt, machine, id, snapshot.version).await?;
            }
            WriteOutcome::VersionMoved => {}
        }
        attempt += 1;
        fsm_core::observe::cas_retry(machine, attempt);
    }
}

/// The outcome of a command whose key the read found recorded: the recorded
/// transition as a duplicate, or the error of a different command under the same key.
pub(crate) fn replay_recorded<M: StateMachine>(
    prepared: &Prepared<M>,
    id: &str,
    row: TransitionRow,
) -> Result<Outcome<M>> {
    let (original, recorded_fingerprint) = decode_transition::<M>(id, row)?;
    let recorded_fingerprint = recorded_fingerprint.ok_or_else(|| {
        Error::corrupt::<M>(
            "fsm_transitions",
            id,
            "keyed row without fingerprint".into(),
        )
    })?;
    prepared.replay(id, original, &recorded_fingerprint)
}

/// What an attempt of [`fire`] writes through: the connection it read on, or the
/// transaction holding the instance's row lock.
enum Writer<D: Dialect> {
    Unlocked(PoolConnection<D>),
    Locked(sqlx::Transaction<'static, D>),
}

impl<D: Dialect> Writer<D> {
    /// Ends an attempt that wrote nothing: an unlocked connection, clean after its read,
    /// is kept for the next fire; a lock's transaction rolls back as it drops.
    fn keep(self, store: &SqlStore<D>) {
        if let Writer::Unlocked(conn) = self {
            store.conns.keep(&store.pool, conn);
        }
    }
}

/// A connection for one unlocked attempt on instance `id`: one the store kept from an
/// earlier fire, else a pooled one.
async fn take<D: Dialect>(
    store: &SqlStore<D>,
    machine: &'static str,
    id: &str,
) -> Result<PoolConnection<D>> {
    store
        .conns
        .take(&store.pool)
        .await
        .map_err(db_error(|| format!("read {machine} {id}")))
}

/// Fires one due timer as a compare-and-set at the version it was armed with; a machine
/// that moved on (or whose timer guard fails) makes it a no-op. The timer row is removed
/// either way, after the transition commits, so a crash in between only re-runs a no-op.
///
/// A timer the definition does not know (its state dropped, its delay changed) and one
/// of an instance that does not load are [`Error::Corrupt`] and stay: the caller skips
/// them until their lease runs out.
pub(crate) async fn fire_timer<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    timer: &TimerRow,
) -> Result<Option<Transition<M>>> {
    let machine = M::DEFINITION.name;
    let id = timer.machine_id.as_str();
    let after = u64::try_from(timer.after_ms)
        .map(Duration::from_millis)
        .map_err(|_| {
            Error::corrupt::<M>(
                "fsm_timers",
                id,
                format!("negative delay {}", timer.after_ms),
            )
        })?;
    let fired = retrying(|| fire_timer_once::<D, M>(pool, timer, after)).await?;
    let args = [
        Arg::Text(machine),
        Arg::Text(id),
        Arg::Int(timer.version),
        Arg::Int(timer.after_ms),
    ];
    crate::dialect::execute(pool, D::SQL.delete_timer, &args, || {
        format!("delete {machine} {id} timer")
    })
    .await?;
    Ok(fired)
}

/// [`fire_timer`]'s read, decision and write, run again whole after a lost race.
async fn fire_timer_once<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    timer: &TimerRow,
    after: Duration,
) -> Result<Option<Transition<M>>> {
    let machine = M::DEFINITION.name;
    let id = timer.machine_id.as_str();
    let fired = match read(pool, machine, id, KeyLookup::NONE).await? {
        Some((row, _)) if row.version == timer.version => {
            if !M::DEFINITION.has_timer(&timer.from_state, after) {
                return Err(Error::corrupt::<M>(
                    "fsm_timers",
                    id,
                    format!(
                        "the definition has no timer {}; kept",
                        timer_name(&timer.from_state, after)
                    ),
                ));
            }
            let snapshot = decode_machine::<M>(id, row)?;
            let prepared = Prepared::<M>::timer(after);
            match prepared.apply(&snapshot) {
                Ok(applied) => {
                    let write = write_of(id, &prepared, &snapshot, true, &applied)?;
                    let mut conn = acquire(pool, machine, id).await?;
                    match D::write(&mut conn, &write).await? {
                        WriteOutcome::Committed => Some(applied.transition),
                        _ => None,
                    }
                }
                Err(Error::IllegalTransition { .. } | Error::GuardRejected { .. }) => None,
                Err(err) => return Err(err),
            }
        }
        _ => None,
    };
    Ok(fired)
}
