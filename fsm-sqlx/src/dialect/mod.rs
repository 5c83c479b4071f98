//! [`Dialect`]: what differs between the databases, and the SQL they share.
//!
//! Every statement is a bound-parameter string, and every dialect binds its parameters
//! in the same order (the order MySQL's positional `?` forces; SQLite and PostgreSQL
//! number theirs to match), so the Rust that binds, runs and checks a statement is
//! written once, here. A dialect supplies its statements and the few write paths that
//! truly differ: PostgreSQL's single-statement transition, MariaDB's claim without
//! `UPDATE ... RETURNING`, SQLite's `BEGIN IMMEDIATE`.

use std::future::Future;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use tokio_util::sync::DropGuard;

use fsm_core::kit::{ClaimedEffect, OutboxWakeups};
use fsm_core::{Error, Result};

use crate::engine::rows::{NewMachine, TimerRow, TransitionWrite, WriteOutcome, undecodable};
use crate::notify::PeerWakeups;
use sealed::Backend;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A database fsm can store machines in: [`sqlx::Sqlite`], [`sqlx::Postgres`] or
/// [`sqlx::MySql`] (MariaDB too), each behind its cargo feature.
///
/// Sealed: the conformance, durable and fault suites run against exactly these.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// fn describe<D: fsm_sqlx::Dialect>(_: &fsm_sqlx::SqlStore<D>) -> &'static str {
///     std::any::type_name::<D>()
/// }
/// # }
/// ```
pub trait Dialect: sealed::Backend {}

pub(crate) mod sealed {
    use super::*;

    /// The statements and write paths of one database; implemented for the three
    /// databases only.
    pub trait Backend: Sql + Sized {
        /// The statements, with parameters in the shared order.
        const SQL: Statements;

        /// The id column as the listings compare and order it: byte by byte.
        const BYTE_ORDERED_ID: &'static str = "machine_id";

        /// What a `SELECT` appends to lock the rows it reads, skipping those another
        /// transaction holds (SQLite's write transaction holds the whole database).
        const LOCK_SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

        /// The `n`th (from 1) placeholder of a statement built at run time.
        fn placeholder(_n: usize) -> String {
            "?".to_owned()
        }

        /// Connection options as [`SqlStore::connect`](crate::SqlStore::connect) sets
        /// them from a URL.
        fn tune(options: ConnectOptionsOf<Self>) -> ConnectOptionsOf<Self> {
            options
        }

        /// A task that a store connected on `options` runs while any clone of it lives
        /// and `pool` is open (SQLite's checkpointer); dropping the guard ends it. By
        /// default none.
        fn background(
            _options: &ConnectOptionsOf<Self>,
            _pool: &Pool<Self>,
        ) -> impl Future<Output = Option<DropGuard>> + Send {
            async { None }
        }

        /// SQLite's write lane for a store connected on `options` ([`crate::lane`]); by
        /// default none.
        #[cfg(feature = "sqlite")]
        fn lane(
            _options: &ConnectOptionsOf<Self>,
            _pool: &Pool<Self>,
            _conns: &crate::conns::ConnCache<Self>,
        ) -> impl Future<Output = Option<crate::lane::Lane>> + Send {
            async { None }
        }

        /// The embedded migrations.
        fn migrator() -> &'static Migrator;

        /// Tells the other stores on the database that effects of `machine` were
        /// committed through the store of `pool`. By default nothing: their dispatchers
        /// find the effects at their next poll.
        fn announce_effects(_pool: &Pool<Self>, _peers: &PeerWakeups, _machine: &'static str) {}

        /// Makes the other stores' announcements wake `wakeups`, once per store. By
        /// default nothing: only this store's commits wake its dispatchers.
        fn listen_for_effects(_pool: &Pool<Self>, _peers: &PeerWakeups, _wakeups: &OutboxWakeups) {}

        /// Rows a statement changed.
        fn rows_affected(result: &Self::QueryResult) -> u64;

        /// A text column fsm wrote from a `str` (MySQL keeps names and ids as bytes).
        fn text(row: &Self::Row, index: usize) -> sqlx::Result<String> {
            Self::string(row, index)
        }

        /// A nullable text column fsm wrote from a `str`.
        fn maybe_text(row: &Self::Row, index: usize) -> sqlx::Result<Option<String>> {
            Self::maybe_string(row, index)
        }

        /// Inserts unless the id exists, with its initial timers; `true` when inserted.
        fn insert(
            pool: &Pool<Self>,
            new: &NewMachine<'_>,
        ) -> impl Future<Output = Result<bool>> + Send {
            super::transaction::insert::<Self>(pool, new)
        }

        /// Applies one transition atomically on `conn` (the connection the fire read
        /// on, so a fire checks out one): token, compare-and-set, history, outbox,
        /// timers.
        fn write(
            conn: &mut Self::Connection,
            write: &TransitionWrite<'_>,
        ) -> impl Future<Output = Result<WriteOutcome>> + Send {
            async move {
                let tx = super::begin_write_on::<Self>(conn, || {
                    format!("fire {} {}", write.machine, write.id)
                })
                .await?;
                Self::write_locked(tx, write).await
            }
        }

        /// [`write`](Backend::write) inside a transaction that holds the instance's lock,
        /// committing it when applied and rolling it back otherwise.
        fn write_locked(
            tx: sqlx::Transaction<'_, Self>,
            write: &TransitionWrite<'_>,
        ) -> impl Future<Output = Result<WriteOutcome>> + Send {
            super::transaction::write_locked::<Self>(tx, write)
        }

        /// Whether a group commit runs in one transaction whose statements are each
        /// command's (reads included), rather than as a read statement and a write (on
        /// SQLite, one string of statements in a transaction of its own) for the whole
        /// batch.
        const BATCH_IN_TRANSACTION: bool = true;

        /// Whether a store of this dialect combines concurrent fires by default
        /// ([`GroupCommit`](crate::GroupCommit)).
        const GROUP_COMMIT: bool = true;

        /// Whether a second writer waits for the first in the database's busy handler
        /// (SQLite's sleeps, 1 ms and up) rather than in a lock queue: then a fire that
        /// finds its group-commit queue idle takes the batch's slot, so a batch never
        /// starts beside it only to sleep.
        const WRITERS_SLEEP: bool = false;

        /// Group commit's read: `read`'s row (or none) for each `(id, key)` lookup, in
        /// order. By default one `read` per lookup.
        fn read_many<'c>(
            conn: &'c mut Self::Connection,
            machine: &'c str,
            lookups: &'c [Lookup<'c>],
        ) -> impl Future<Output = sqlx::Result<Vec<Option<Self::Row>>>> + Send + 'c {
            async move {
                let mut rows = Vec::with_capacity(lookups.len());
                for lookup in lookups {
                    let args = read_args(machine, lookup.id, lookup.key, lookup.legacy);
                    rows.push(Self::row(conn, Self::SQL.read, &args).await?);
                }
                Ok(rows)
            }
        }

        /// Group commit's write of `writes` (distinct instances, no tokens): for each,
        /// whether it was written (`false`: its version moved, nothing of it was), or
        /// `None` when the batch must be abandoned whole (a key another writer took; in a
        /// transaction, the caller rolls back). By default each transition's statements.
        fn write_many<'c>(
            conn: &'c mut Self::Connection,
            writes: &'c [TransitionWrite<'c>],
        ) -> impl Future<Output = Result<Option<Vec<bool>>>> + Send + 'c {
            async move {
                let mut written = Vec::with_capacity(writes.len());
                for w in writes {
                    match super::transaction::write_rows::<Self>(conn, w).await? {
                        WriteOutcome::Committed => written.push(true),
                        WriteOutcome::VersionMoved => written.push(false),
                        WriteOutcome::KeyTaken | WriteOutcome::TokenRejected => return Ok(None),
                    }
                }
                Ok(Some(written))
            }
        }

        /// Leases up to `limit` due, unleased outbox rows until `lease_until`, counting an
        /// attempt on each; rows locked by another claimer are skipped. By default one
        /// `UPDATE ... RETURNING`.
        fn claim_effects(
            pool: &Pool<Self>,
            machine: &'static str,
            now: i64,
            lease_until: i64,
            limit: i64,
        ) -> impl Future<Output = Result<Vec<ClaimedEffect>>> + Send {
            let times = [now, lease_until, limit];
            claim_returning(pool, Self::SQL.claim_effects, machine, times, move |row| {
                claimed_effect::<Self>(machine, row)
            })
        }

        /// Leases up to `limit` due, unleased timers until `lease_until`. By default one
        /// `UPDATE ... RETURNING`.
        fn claim_timers(
            pool: &Pool<Self>,
            machine: &'static str,
            now: i64,
            lease_until: i64,
            limit: i64,
        ) -> impl Future<Output = Result<Vec<TimerRow>>> + Send {
            let times = [now, lease_until, limit];
            claim_returning(pool, Self::SQL.claim_timers, machine, times, move |row| {
                timer_row::<Self>(machine, row)
            })
        }
    }
}

/// The statements every dialect provides. Parameters are listed in bind order.
#[derive(Debug)]
pub struct Statements {
    /// `BEGIN` variant for a write transaction, if not the plain one.
    pub begin_write: Option<&'static str>,
    /// The instance and the transition under a key. Binds: key, the key's fsm 0.1.0 form
    /// (or the key again), machine, id.
    pub read: &'static str,
    /// Locks the instance's row, if the write transaction does not already. Binds:
    /// machine, id.
    pub lock: Option<&'static str>,
    /// Binds: machine, id, token, now.
    pub consume_token: &'static str,
    /// The statements of a transition written step by step in a transaction; `None` for
    /// a dialect that overrides [`insert`](sealed::Backend::insert),
    /// [`write`](sealed::Backend::write) and [`write_locked`](sealed::Backend::write_locked).
    pub steps: Option<Steps>,
    /// Binds: machine, id.
    pub history: &'static str,
    /// Binds: machine, id, token, expires, machine, id.
    pub issue_token: &'static str,
    /// Binds: done at, machine, id, version, seq, claim.
    pub effect_done: &'static str,
    /// Binds: available at, error, machine, id, version, seq, claim.
    pub effect_retry: &'static str,
    /// Binds: error, machine, id, version, seq, claim.
    pub effect_dead: &'static str,
    /// Gives a claimed row back unhandled, uncounting its attempt. Binds: machine, id,
    /// version, seq, claim.
    pub effect_release: &'static str,
    /// Binds: machine.
    pub dead_effects: &'static str,
    /// Binds: available at, machine, id, version, seq.
    pub requeue: &'static str,
    /// Binds: machine, id, version, delay in ms.
    pub delete_timer: &'static str,
    /// Deletes a dead letter. Binds: machine, id, version, seq.
    pub discard: &'static str,
    /// Deletes done outbox rows of every machine type, the oldest first. Binds: done
    /// before, limit.
    pub prune_effects: &'static str,
    /// Deletes tokens of every machine type, the longest expired first. Binds: expired
    /// before, limit.
    pub prune_tokens: &'static str,
    /// Leases due outbox rows, returning machine id, version, seq, effect, attempts, last
    /// error. Binds: machine, now, lease until, limit (MySQL: its locking `SELECT`, whose
    /// third bind is now).
    pub claim_effects: &'static str,
    /// Leases due timers, returning machine id, version, state, delay in ms. Binds as
    /// `claim_effects`.
    pub claim_timers: &'static str,
}

/// One instance a group commit reads, with the key its command carries.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub id: &'a str,
    pub key: Option<&'a str>,
    pub legacy: Option<&'a str>,
}

/// The connection options of database `D`.
pub(crate) type ConnectOptionsOf<D> = <<D as Database>::Connection as sqlx::Connection>::Options;

/// A transition written step by step in one transaction.
#[derive(Debug)]
pub struct Steps {
    /// Inserts an instance, doing nothing or failing on a unique violation when it
    /// exists. Binds: machine, id, state, context, init fingerprint, created, updated,
    /// entered.
    pub insert: &'static str,
    /// The compare-and-set. Binds: state, version, context, updated, entered (NULL for a
    /// self-loop), machine, id, expected version, then the claimed state (or NULL),
    /// again, and the claimed context: a write decided on a caller's snapshot also
    /// checks what it claims.
    pub compare_and_set: &'static str,
    /// The history row. Binds: machine, id, version, from, event, trigger, to, key,
    /// fingerprint, at.
    pub record: &'static str,
    /// Binds: machine, id, version, state, delay in ms, due.
    pub arm_timer: &'static str,
}

/// The step-by-step statements of `D`; only dialects that write step by step call this.
pub(crate) fn steps<D: Backend>() -> &'static Steps {
    match &D::SQL.steps {
        Some(steps) => steps,
        None => unreachable!(
            "{} writes transitions in one statement",
            std::any::type_name::<D>()
        ),
    }
}

/// Outbox rows are inserted many per statement, in chunks under every server's
/// placeholder limit (MySQL's is 65,535; six per row).
macro_rules! outbox_insert {
    () => {
        "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at) VALUES "
    };
}
macro_rules! outbox_values {
    () => {
        "(?, ?, ?, ?, ?, ?)"
    };
}
const OUTBOX_INSERT: &str = outbox_insert!();
const OUTBOX_VALUES: &str = outbox_values!();
/// The common case, one effect, needs no statement built per transition.
pub(crate) const OUTBOX_ONE: &str = concat!(outbox_insert!(), outbox_values!());
const OUTBOX_CHUNK: usize = 1_000;

/// One bound parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Text(&'a str),
    MaybeText(Option<&'a str>),
    Int(i64),
    MaybeInt(Option<i64>),
    Small(i32),
    Bytes(&'a [u8]),
    MaybeBytes(Option<&'a [u8]>),
}

/// Binding, running and decoding on any of the three databases: the sqlx bounds are
/// spelled out once, on the blanket implementation below.
pub trait Sql: Database {
    /// `sql` with `args` bound in order.
    fn query<'q>(sql: &'q str, args: &[Arg<'q>]) -> Query<'q, Self, Self::Arguments<'q>>;

    /// Runs a statement; the database's result.
    fn run<'q>(
        conn: &'q mut Self::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<Self::QueryResult>> + Send + 'q;

    /// Runs a query; its rows.
    fn rows<'q>(
        conn: &'q mut Self::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Row>>> + Send + 'q;

    /// Runs a query; its first row, if any.
    fn row<'q>(
        conn: &'q mut Self::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<Option<Self::Row>>> + Send + 'q;

    /// A `TEXT` column.
    fn string(row: &Self::Row, index: usize) -> sqlx::Result<String>;
    /// A nullable `TEXT` column.
    fn maybe_string(row: &Self::Row, index: usize) -> sqlx::Result<Option<String>>;
    /// A `BIGINT` column.
    fn int(row: &Self::Row, index: usize) -> sqlx::Result<i64>;
    /// A nullable `BIGINT` column.
    fn maybe_int(row: &Self::Row, index: usize) -> sqlx::Result<Option<i64>>;
    /// An `INTEGER` column.
    fn small(row: &Self::Row, index: usize) -> sqlx::Result<i32>;
    /// A nullable binary column.
    fn maybe_bytes(row: &Self::Row, index: usize) -> sqlx::Result<Option<Vec<u8>>>;
    /// A binary column.
    fn bytes(row: &Self::Row, index: usize) -> sqlx::Result<Vec<u8>>;

    /// Creates or upgrades fsm's tables.
    fn migrate_with(
        migrator: &'static Migrator,
        pool: &Pool<Self>,
    ) -> impl Future<Output = std::result::Result<(), sqlx::migrate::MigrateError>> + Send;
}

impl<D> Sql for D
where
    D: Database,
    D::Connection: Migrate,
    usize: ColumnIndex<D::Row>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> &'q str: Encode<'q, D> + Type<D>,
    for<'q> &'q [u8]: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D>,
    for<'q> Option<&'q [u8]>: Encode<'q, D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> Option<i64>: Encode<'q, D>,
    for<'q> i32: Encode<'q, D> + Type<D>,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> Vec<u8>: Decode<'r, D> + Type<D>,
    for<'r> i64: Decode<'r, D>,
    for<'r> i32: Decode<'r, D>,
{
    fn query<'q>(sql: &'q str, args: &[Arg<'q>]) -> Query<'q, D, D::Arguments<'q>> {
        args.iter().fold(sqlx::query(sql), |query, &arg| match arg {
            Arg::Text(v) => query.bind(v),
            Arg::MaybeText(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::MaybeInt(v) => query.bind(v),
            Arg::Small(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
            Arg::MaybeBytes(v) => query.bind(v),
        })
    }

    fn run<'q>(
        conn: &'q mut D::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<D::QueryResult>> + Send + 'q {
        Self::query(sql, args).execute(conn)
    }

    fn rows<'q>(
        conn: &'q mut D::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<Vec<D::Row>>> + Send + 'q {
        Self::query(sql, args).fetch_all(conn)
    }

    fn row<'q>(
        conn: &'q mut D::Connection,
        sql: &'q str,
        args: &[Arg<'q>],
    ) -> impl Future<Output = sqlx::Result<Option<D::Row>>> + Send + 'q {
        Self::query(sql, args).fetch_optional(conn)
    }

    fn string(row: &D::Row, index: usize) -> sqlx::Result<String> {
        row.try_get(index)
    }

    fn maybe_string(row: &D::Row, index: usize) -> sqlx::Result<Option<String>> {
        row.try_get(index)
    }

    fn int(row: &D::Row, index: usize) -> sqlx::Result<i64> {
        row.try_get(index)
    }

    fn maybe_int(row: &D::Row, index: usize) -> sqlx::Result<Option<i64>> {
        row.try_get(index)
    }

    fn small(row: &D::Row, index: usize) -> sqlx::Result<i32> {
        row.try_get(index)
    }

    fn maybe_bytes(row: &D::Row, index: usize) -> sqlx::Result<Option<Vec<u8>>> {
        row.try_get(index)
    }

    fn bytes(row: &D::Row, index: usize) -> sqlx::Result<Vec<u8>> {
        row.try_get(index)
    }

    fn migrate_with(
        migrator: &'static Migrator,
        pool: &Pool<D>,
    ) -> impl Future<Output = std::result::Result<(), sqlx::migrate::MigrateError>> + Send {
        migrator.run(pool)
    }
}

/// Maps a sqlx error to fsm's, with what the store was doing, keeping it as the source.
pub(crate) fn db_error(operation: impl Fn() -> String) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::database(operation(), source)
}

/// Whether a write lost to a unique index (another writer's key or version).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// Whether the database aborted a statement or transaction to serialise it against a
/// concurrent one: SQLSTATE 40001 (PostgreSQL at SERIALIZABLE, CockroachDB, YugabyteDB;
/// MySQL's deadlock 1213 and a Galera certification failure) or 40P01 (a PostgreSQL
/// deadlock). Nothing of it was written: it is a lost race, to be run again.
pub(crate) fn is_lost_race(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

/// Whether an [`Error::Database`] says the connection itself is gone (an I/O error, a
/// connection exception `08xxx`, an operator intervention `57Pxx` such as a terminated
/// backend), rather than anything about the statement.
pub(crate) fn connection_lost(err: &Error) -> bool {
    let Error::Database { source, .. } = err else {
        return false;
    };
    match source.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Io(_)) => true,
        Some(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// [`is_lost_race`] of the sqlx error an [`Error::Database`] keeps as its source.
pub(crate) fn lost_race(err: &Error) -> bool {
    match err {
        Error::Database { source, .. } => source
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_lost_race),
        _ => false,
    }
}

/// Runs of one statement or transaction before a lost race is reported as the error.
pub(crate) const LOST_RACE_RUNS: u32 = 16;

/// Runs `run` (one statement, or one whole transaction) again while the database
/// aborts it as a lost race, after a short random pause that grows with the attempts.
pub(crate) async fn retrying<T, F, Fut>(mut run: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut runs = 1;
    loop {
        match run().await {
            Err(err) if runs < LOST_RACE_RUNS && lost_race(&err) => {
                tracing::debug!(error = %err, runs, "lost a race to another transaction; running again");
                tokio::time::sleep(lost_race_pause(runs)).await;
                runs += 1;
            }
            other => return other,
        }
    }
}

/// Up to 2^runs ms (at most 64 ms), random so the racers spread out.
pub(crate) fn lost_race_pause(runs: u32) -> std::time::Duration {
    use rand::Rng;
    let ceiling = 1u64 << runs.min(6);
    std::time::Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling))
}

/// A transaction for writing: SQLite takes its write lock at `BEGIN`.
pub(crate) async fn begin_write<D: Backend>(
    pool: &Pool<D>,
    operation: impl Fn() -> String,
) -> Result<sqlx::Transaction<'static, D>> {
    match D::SQL.begin_write {
        Some(begin) => pool.begin_with(begin).await,
        None => pool.begin().await,
    }
    .map_err(db_error(operation))
}

/// [`begin_write`] on a connection the caller holds.
pub(crate) async fn begin_write_on<'c, D: Backend>(
    conn: &'c mut D::Connection,
    operation: impl Fn() -> String,
) -> Result<sqlx::Transaction<'c, D>> {
    use sqlx::Connection as _;
    match D::SQL.begin_write {
        Some(begin) => conn.begin_with(begin).await,
        None => conn.begin().await,
    }
    .map_err(db_error(operation))
}

/// Runs a statement on a pooled connection; rows changed.
///
/// A statement the database aborts as a lost race is run again ([`retrying`]).
pub(crate) async fn execute<D: Backend>(
    pool: &Pool<D>,
    sql: &'static str,
    args: &[Arg<'_>],
    operation: impl Fn() -> String,
) -> Result<u64> {
    let failed = db_error(operation);
    retrying(|| async {
        let mut conn = pool.acquire().await.map_err(&failed)?;
        let result = D::run(&mut conn, sql, args).await.map_err(&failed)?;
        Ok(D::rows_affected(&result))
    })
    .await
}

/// Runs a query on a pooled connection; its rows.
///
/// A statement the database aborts as a lost race is run again ([`retrying`]).
pub(crate) async fn fetch<D: Backend>(
    pool: &Pool<D>,
    sql: &'static str,
    args: &[Arg<'_>],
    operation: impl Fn() -> String,
) -> Result<Vec<D::Row>> {
    retrying(|| fetch_once(pool, sql, args, &operation)).await
}

/// [`fetch`], run once: for a caller that retries the whole of what it does.
async fn fetch_once<D: Backend>(
    pool: &Pool<D>,
    sql: &'static str,
    args: &[Arg<'_>],
    operation: impl Fn() -> String,
) -> Result<Vec<D::Row>> {
    let failed = db_error(operation);
    let mut conn = pool.acquire().await.map_err(&failed)?;
    D::rows(&mut conn, sql, args).await.map_err(&failed)
}

/// An outbox row as selected (machine id, version, seq, effect, attempts, last error,
/// claims, available at).
pub(crate) fn claimed_effect<D: Backend>(
    machine: &'static str,
    row: &D::Row,
) -> Result<ClaimedEffect> {
    type Columns = (String, i64, i32, String, i32, Option<String>, i64, i64);
    let decode = || -> sqlx::Result<Columns> {
        Ok((
            D::text(row, 0)?,
            D::int(row, 1)?,
            D::small(row, 2)?,
            D::string(row, 3)?,
            D::small(row, 4)?,
            D::maybe_string(row, 5)?,
            D::int(row, 6)?,
            D::int(row, 7)?,
        ))
    };
    let (machine_id, version, seq, effect, attempts, last_error, claim, available_at) =
        decode().map_err(|e| undecodable(machine, "-", "fsm_outbox", &e))?;
    let out_of_range = |what: &str, value: i64| {
        undecodable(
            machine,
            &machine_id,
            "fsm_outbox",
            &format!("{what} {value} out of range"),
        )
    };
    Ok(ClaimedEffect {
        version: u64::try_from(version).map_err(|_| out_of_range("version", version))?,
        seq: u32::try_from(seq).map_err(|_| out_of_range("seq", seq.into()))?,
        attempts: u32::try_from(attempts).map_err(|_| out_of_range("attempts", attempts.into()))?,
        claim: u64::try_from(claim).map_err(|_| out_of_range("claims", claim))?,
        available_at_ms: u64::try_from(available_at).unwrap_or(0),
        machine_id,
        effect,
        last_error,
    })
}

/// A timer row as selected (machine id, version, state, delay in ms).
pub(crate) fn timer_row<D: Backend>(machine: &'static str, row: &D::Row) -> Result<TimerRow> {
    let decode = || -> sqlx::Result<TimerRow> {
        Ok(TimerRow {
            machine_id: D::text(row, 0)?,
            version: D::int(row, 1)?,
            from_state: D::string(row, 2)?,
            after_ms: D::int(row, 3)?,
            due_at: D::int(row, 4)?,
        })
    };
    decode().map_err(|e| undecodable(machine, "-", "fsm_timers", &e))
}

/// A claim that is one `UPDATE ... RETURNING` statement. Binds: machine, now, lease
/// until, limit.
async fn claim_returning<D: Backend, T>(
    pool: &Pool<D>,
    sql: &'static str,
    machine: &'static str,
    [now, lease_until, limit]: [i64; 3],
    decode: impl Fn(&D::Row) -> Result<T>,
) -> Result<Vec<T>> {
    let args = [
        Arg::Text(machine),
        Arg::Int(now),
        Arg::Int(lease_until),
        Arg::Int(limit),
    ];
    // Run once: the claim as a whole is retried by its caller (`retrying`).
    let rows = fetch_once(pool, sql, &args, || format!("claim {machine} rows")).await?;
    Ok(rows
        .iter()
        .filter_map(|row| decodable(decode(row)))
        .collect())
}

/// A claimed row that does not decode is skipped and reported, so one poison row never
/// stops the good ones; its lease expires and it is reported again on a later claim.
pub(crate) fn decodable<T>(row: Result<T>) -> Option<T> {
    row.map_err(|err| tracing::error!(error = %err, "claimed row skipped: it does not decode"))
        .ok()
}

/// The write paths of dialects whose transition is several statements in a
/// transaction (SQLite, MySQL).
mod transaction {
    use super::*;

    /// Inserts the instance and arms its initial timers in one transaction.
    pub(super) async fn insert<D: Backend>(pool: &Pool<D>, new: &NewMachine<'_>) -> Result<bool> {
        let failed = db_error(|| format!("create {} {}", new.machine, new.id));
        let mut tx = begin_write(pool, || format!("create {} {}", new.machine, new.id)).await?;
        let args = [
            Arg::Text(new.machine),
            Arg::Text(new.id),
            Arg::Text(new.state),
            Arg::Text(&new.context),
            Arg::Bytes(&new.init_fingerprint),
            Arg::Int(new.at_ms),
            Arg::Int(new.at_ms),
            Arg::Int(new.at_ms),
        ];
        let inserted = match D::run(&mut tx, steps::<D>().insert, &args).await {
            Ok(result) => D::rows_affected(&result) == 1,
            Err(e) if is_unique_violation(&e) => false,
            Err(e) => return Err(failed(e)),
        };
        if !inserted {
            return Ok(false);
        }
        arm::<D>(&mut tx, new.machine, new.id, 0, new.state, &new.timers)
            .await
            .map_err(&failed)?;
        tx.commit().await.map_err(&failed)?;
        Ok(true)
    }

    /// Every row of one transition, then `COMMIT`; on a miss the transaction is rolled
    /// back at once to release the locks it took.
    pub(super) async fn write_locked<D: Backend>(
        mut tx: sqlx::Transaction<'_, D>,
        w: &TransitionWrite<'_>,
    ) -> Result<WriteOutcome> {
        let failed = db_error(|| format!("fire {} {}", w.machine, w.id));
        let written = write_rows::<D>(&mut tx, w).await?;
        if written == WriteOutcome::Committed {
            tx.commit().await.map_err(&failed)?;
        } else {
            tx.rollback().await.map_err(&failed)?;
        }
        Ok(written)
    }

    pub(super) async fn write_rows<D: Backend>(
        conn: &mut D::Connection,
        w: &TransitionWrite<'_>,
    ) -> Result<WriteOutcome> {
        let failed = db_error(|| format!("fire {} {}", w.machine, w.id));
        if let Some(token) = w.token
            && !consume_token::<D>(conn, w, token).await?
        {
            return Ok(WriteOutcome::TokenRejected);
        }
        let cas = cas_args(w);
        let updated = D::run(conn, steps::<D>().compare_and_set, &cas)
            .await
            .map_err(&failed)?;
        if D::rows_affected(&updated) == 0 {
            return Ok(WriteOutcome::VersionMoved);
        }
        let record = record_args(w);
        match D::run(conn, steps::<D>().record, &record).await {
            Err(e) if is_unique_violation(&e) => return Ok(WriteOutcome::KeyTaken),
            other => other.map_err(&failed)?,
        };
        queue_effects::<D>(conn, w).await.map_err(&failed)?;
        arm::<D>(conn, w.machine, w.id, w.version, w.to_state, &w.timers)
            .await
            .map_err(&failed)?;
        Ok(WriteOutcome::Committed)
    }

    async fn queue_effects<D: Backend>(
        conn: &mut D::Connection,
        w: &TransitionWrite<'_>,
    ) -> sqlx::Result<()> {
        let seqs: Vec<i32> = (0..).take(w.effects.len()).collect();
        for (effects, seqs) in w
            .effects
            .chunks(OUTBOX_CHUNK)
            .zip(seqs.chunks(OUTBOX_CHUNK))
        {
            let mut built = String::new();
            if effects.len() > 1 {
                built.reserve(OUTBOX_INSERT.len() + effects.len() * (OUTBOX_VALUES.len() + 2));
                built.push_str(OUTBOX_INSERT);
            }
            let mut args = Vec::with_capacity(effects.len() * 6);
            for (n, (effect, &seq)) in effects.iter().zip(seqs).enumerate() {
                if effects.len() > 1 {
                    if n > 0 {
                        built.push_str(", ");
                    }
                    built.push_str(OUTBOX_VALUES);
                }
                args.extend(outbox_args(w, seq, effect));
            }
            let sql = if effects.len() == 1 {
                OUTBOX_ONE
            } else {
                &built
            };
            D::run(conn, sql, &args).await?;
        }
        Ok(())
    }
}

/// The read's binds: the key as stored, the key in fsm 0.1.0's form (else as stored
/// again), the machine type and the id.
pub(crate) fn read_args<'a>(
    machine: &'a str,
    id: &'a str,
    key: Option<&'a str>,
    legacy: Option<&'a str>,
) -> [Arg<'a>; 4] {
    [
        Arg::MaybeText(key),
        Arg::MaybeText(legacy.or(key)),
        Arg::Text(machine),
        Arg::Text(id),
    ]
}

/// The compare-and-set's binds for `w`: state, version, context, updated, entered,
/// machine, id, expected version, then the claimed state (or NULL), again, and the
/// claimed context.
pub(crate) fn cas_args<'w>(w: &'w TransitionWrite<'_>) -> [Arg<'w>; 11] {
    let claimed = w.claimed.as_ref();
    [
        Arg::Text(w.to_state),
        Arg::Int(w.version),
        Arg::Text(&w.context),
        Arg::Int(w.at_ms),
        Arg::MaybeInt(w.entered_at),
        Arg::Text(w.machine),
        Arg::Text(w.id),
        Arg::Int(w.expected),
        Arg::MaybeText(claimed.map(|c| c.state)),
        Arg::MaybeText(claimed.map(|c| c.state)),
        Arg::MaybeText(claimed.map(|c| c.context.as_str())),
    ]
}

/// The history row's binds for `w`: machine, id, version, from, event, trigger, to, key,
/// fingerprint, at.
pub(crate) fn record_args<'w>(w: &'w TransitionWrite<'_>) -> [Arg<'w>; 10] {
    [
        Arg::Text(w.machine),
        Arg::Text(w.id),
        Arg::Int(w.version),
        Arg::Text(w.from_state),
        Arg::Text(&w.event),
        Arg::Text(&w.trigger),
        Arg::Text(w.to_state),
        Arg::MaybeText(w.idem_key),
        Arg::MaybeBytes(w.fingerprint.as_ref().map(|f| &f[..])),
        Arg::Int(w.at_ms),
    ]
}

/// One outbox row's binds for `w`: machine, id, version, seq, effect, available at.
pub(crate) fn outbox_args<'w>(w: &TransitionWrite<'w>, seq: i32, effect: &'w str) -> [Arg<'w>; 6] {
    [
        Arg::Text(w.machine),
        Arg::Text(w.id),
        Arg::Int(w.version),
        Arg::Small(seq),
        Arg::Text(effect),
        Arg::Int(w.at_ms),
    ]
}

/// One timer row's binds: machine, id, the version and state it was armed at, delay, due.
pub(crate) fn timer_args<'a>(
    machine: &'a str,
    id: &'a str,
    version: i64,
    state: &'a str,
    timer: &crate::engine::rows::PendingTimer,
) -> [Arg<'a>; 6] {
    [
        Arg::Text(machine),
        Arg::Text(id),
        Arg::Int(version),
        Arg::Text(state),
        Arg::Int(timer.after_ms),
        Arg::Int(timer.due_at),
    ]
}

/// Deletes the command's token, if it is this instance's and unexpired; `false` if not.
pub(crate) async fn consume_token<D: Backend>(
    conn: &mut D::Connection,
    w: &TransitionWrite<'_>,
    token: &str,
) -> Result<bool> {
    let args = [
        Arg::Text(w.machine),
        Arg::Text(w.id),
        Arg::Text(token),
        Arg::Int(w.at_ms),
    ];
    let consumed = D::rows(conn, D::SQL.consume_token, &args)
        .await
        .map_err(db_error(|| format!("fire {} {}", w.machine, w.id)))?;
    Ok(!consumed.is_empty())
}

/// Arms `timers` for the instance entering `state` at `version`, one statement each.
pub(crate) async fn arm<D: Backend>(
    conn: &mut D::Connection,
    machine: &str,
    id: &str,
    version: i64,
    state: &str,
    timers: &[crate::engine::rows::PendingTimer],
) -> sqlx::Result<()> {
    for timer in timers {
        let args = timer_args(machine, id, version, state, timer);
        D::run(conn, steps::<D>().arm_timer, &args).await?;
    }
    Ok(())
}
