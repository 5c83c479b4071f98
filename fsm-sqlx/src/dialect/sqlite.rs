//! SQLite, the embedded default: one file (or memory) per service.
//!
//! WAL journal, a busy timeout, and `BEGIN IMMEDIATE` for every write, so writers queue
//! on SQLite's lock instead of failing to upgrade a read lock; that lock is also what
//! serialises pessimistic mode and the outbox claim. Checkpoints run off the writers'
//! path, in a task of the store's ([`crate::checkpoint`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};

use fsm_core::Result;
use tokio_util::sync::DropGuard;

use super::sealed::Backend;
use super::{
    Arg, Dialect, Lookup, Sql, Statements, Steps, cas_args, db_error, is_unique_violation,
    outbox_args, record_args, timer_args,
};
use crate::SqlStore;
use crate::checkpoint;
use crate::engine::rows::{TransitionWrite, WriteOutcome};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

pub(crate) const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = ?1 OR (t.idem_key = ?2 AND t.legacy_key))
WHERE m.machine_type = ?3 AND m.machine_id = ?4";

// One statement: SQLite runs it under its single write lock, so claims never overlap.
const CLAIM_EFFECTS: &str = "\
UPDATE fsm_outbox SET lease_until = ?3,
  attempts = CASE WHEN attempts < 2147483647 THEN attempts + 1 ELSE attempts END, claims = claims + 1
WHERE rowid IN (
  SELECT rowid FROM fsm_outbox
  WHERE machine_type = ?1 AND done_at IS NULL AND dead = 0 AND available_at <= ?2
    AND (lease_until IS NULL OR lease_until <= ?2)
  ORDER BY available_at, machine_id, version, seq LIMIT ?4)
RETURNING machine_id, version, seq, effect, attempts, last_error, claims, available_at";

const CLAIM_TIMERS: &str = "\
UPDATE fsm_timers SET lease_until = ?3
WHERE rowid IN (
  SELECT rowid FROM fsm_timers
  WHERE machine_type = ?1 AND due_at <= ?2 AND (lease_until IS NULL OR lease_until <= ?2)
  ORDER BY due_at LIMIT ?4)
RETURNING machine_id, version, from_state, after_ms, due_at";

impl Dialect for Sqlite {}

impl Backend for Sqlite {
    // `BEGIN IMMEDIATE` holds the write lock: nothing else writes meanwhile.
    const LOCK_SKIP_LOCKED: &'static str = "";

    const WRITERS_SLEEP: bool = true;

    // The batch reads before `write_many` takes the write lock.
    const BATCH_IN_TRANSACTION: bool = false;

    const SQL: Statements = Statements {
        begin_write: Some("BEGIN IMMEDIATE"),
        read: READ,
        lock: None,
        consume_token: "\
DELETE FROM fsm_tokens
WHERE machine_type = ?1 AND machine_id = ?2 AND token = ?3 AND expires_at > ?4
RETURNING token",
        steps: Some(Steps {
            insert: "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (machine_type, machine_id) DO NOTHING",
            compare_and_set: "\
UPDATE fsm_machines SET state = ?1, version = ?2, context = ?3, updated_at = ?4,
  entered_at = COALESCE(?5, entered_at)
WHERE machine_type = ?6 AND machine_id = ?7 AND version = ?8
  AND (?9 IS NULL OR (state = ?10 AND context = ?11))",
            record: "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            arm_timer: "\
INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        }),
        history: "\
SELECT version, from_state, trigger_json, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = ?1 AND machine_id = ?2 ORDER BY version",
        issue_token: "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT ?1, ?2, ?3, ?4 WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = ?5 AND machine_id = ?6)",
        effect_done: "\
UPDATE fsm_outbox SET done_at = ?1, lease_until = NULL
WHERE machine_type = ?2 AND machine_id = ?3 AND version = ?4 AND seq = ?5 AND claims = ?6",
        effect_retry: "\
UPDATE fsm_outbox SET available_at = ?1, lease_until = NULL, last_error = ?2
WHERE machine_type = ?3 AND machine_id = ?4 AND version = ?5 AND seq = ?6 AND claims = ?7",
        effect_dead: "\
UPDATE fsm_outbox SET dead = 1, lease_until = NULL, last_error = ?1
WHERE machine_type = ?2 AND machine_id = ?3 AND version = ?4 AND seq = ?5 AND claims = ?6",
        effect_release: "\
UPDATE fsm_outbox SET lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND claims = ?5",
        dead_effects: "\
SELECT machine_id, version, seq, effect, attempts, last_error, claims, available_at FROM fsm_outbox
WHERE machine_type = ?1 AND dead = 1 ORDER BY available_at, machine_id, version, seq",
        requeue: "\
UPDATE fsm_outbox SET dead = 0, attempts = 0, available_at = ?1, last_error = NULL
WHERE machine_type = ?2 AND machine_id = ?3 AND version = ?4 AND seq = ?5 AND dead = 1",
        discard: "\
DELETE FROM fsm_outbox WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND dead = 1",
        prune_effects: "\
DELETE FROM fsm_outbox WHERE rowid IN (
  SELECT rowid FROM fsm_outbox WHERE done_at IS NOT NULL AND done_at < ?1 ORDER BY done_at LIMIT ?2)",
        prune_tokens: "\
DELETE FROM fsm_tokens WHERE rowid IN (
  SELECT rowid FROM fsm_tokens WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2)",
        claim_effects: CLAIM_EFFECTS,
        claim_timers: CLAIM_TIMERS,
        delete_timer: "\
DELETE FROM fsm_timers WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND after_ms = ?4",
    };

    fn tune(options: SqliteConnectOptions) -> SqliteConnectOptions {
        options
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string())
    }

    async fn background(options: &SqliteConnectOptions, pool: &Pool<Sqlite>) -> Option<DropGuard> {
        checkpoint::start(options, pool).await
    }

    async fn lane(
        options: &SqliteConnectOptions,
        pool: &Pool<Sqlite>,
        conns: &crate::conns::ConnCache<Sqlite>,
    ) -> Option<crate::lane::Lane> {
        crate::lane::Lane::start(options, pool, conns).await
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn write(
        conn: &mut sqlx::SqliteConnection,
        w: &TransitionWrite<'_>,
    ) -> Result<WriteOutcome> {
        // Under SQLite's 32,766 parameters; a token is consumed first, step by step.
        if w.token.is_some() || 6 * (w.effects.len() + w.timers.len()) > 30_000 {
            let tx =
                super::begin_write_on::<Sqlite>(conn, || format!("fire {} {}", w.machine, w.id))
                    .await?;
            return Self::write_locked(tx, w).await;
        }
        write(conn, w).await
    }

    async fn read_many<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        machine: &'c str,
        lookups: &'c [Lookup<'c>],
    ) -> sqlx::Result<Vec<Option<sqlx::sqlite::SqliteRow>>> {
        read_many(conn, machine, lookups).await
    }

    async fn write_many<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        writes: &'c [TransitionWrite<'c>],
    ) -> Result<Option<Vec<bool>>> {
        write_many(conn, writes).await
    }
}

/// Constructors of [`SqliteStore`](crate::SqliteStore).
// A lone fire's write in one call to sqlx's SQLite worker thread instead of six (each
// call is a hand-off to that thread and back, which costs more than SQLite's own work
// here). In one string: take the write lock, compare-and-set, record the history row
// only if the compare-and-set hit (`changes()` counts the rows the `UPDATE` changed),
// leave a mark in a connection-private table if the history row went in, queue the
// outbox rows and timers only where the mark is, take the mark back (returning it:
// no row back means the version moved and nothing was written) and commit. An error
// stops the string inside the transaction, so `write` then rolls it back. sqlx binds
// the arguments of a string of statements in order, each statement taking as many as
// it has `?`.
const WRITE_HEAD: &str = "\
CREATE TEMP TABLE IF NOT EXISTS fsm_hit (hit INTEGER NOT NULL);
BEGIN IMMEDIATE;
UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?,
  entered_at = COALESCE(?, entered_at)
WHERE machine_type = ? AND machine_id = ? AND version = ?
  AND (? IS NULL OR (state = ? AND context = ?));
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE changes() = 1;
INSERT INTO temp.fsm_hit (hit) SELECT 1 WHERE changes() = 1;
";
const WRITE_TAIL: &str = "DELETE FROM temp.fsm_hit RETURNING hit;\nCOMMIT";

/// The statements [`write`] runs for `effects` outbox rows and `timers` timers.
fn write_sql(effects: usize, timers: usize) -> String {
    let mut sql = String::from(WRITE_HEAD);
    let marked = ") WHERE EXISTS (SELECT 1 FROM temp.fsm_hit);\n";
    if effects > 0 {
        sql.push_str(
            "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
SELECT * FROM (VALUES ",
        );
        sql.push_str(&values("(?, ?, ?, ?, ?, ?)", effects, false));
        sql.push_str(marked);
    }
    if timers > 0 {
        sql.push_str(
            "INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
SELECT * FROM (VALUES ",
        );
        sql.push_str(&values("(?, ?, ?, ?, ?, ?)", timers, false));
        sql.push_str(marked);
    }
    sql.push_str(WRITE_TAIL);
    sql
}

/// A lone fire's write (see [`WRITE_HEAD`]); a command with a token takes the
/// step-by-step path, which consumes the token first.
async fn write(conn: &mut sqlx::SqliteConnection, w: &TransitionWrite<'_>) -> Result<WriteOutcome> {
    let failed = db_error(|| format!("fire {} {}", w.machine, w.id));
    let mut args = Vec::with_capacity(21 + 6 * (w.effects.len() + w.timers.len()));
    args.extend(cas_args(w));
    args.extend(record_args(w));
    for (seq, effect) in (0i32..).zip(&w.effects) {
        args.extend(outbox_args(w, seq, effect));
    }
    for timer in &w.timers {
        args.extend(timer_args(w.machine, w.id, w.version, w.to_state, timer));
    }
    let sql = write_sql(w.effects.len(), w.timers.len());
    match Sqlite::rows(conn, &sql, &args).await {
        Ok(hit) if hit.is_empty() => Ok(WriteOutcome::VersionMoved),
        Ok(_) => Ok(WriteOutcome::Committed),
        Err(e) => {
            rollback(conn).await;
            match is_unique_violation(&e) {
                true => Ok(WriteOutcome::KeyTaken),
                false => Err(failed(e)),
            }
        }
    }
}

/// Ends the write's transaction, if one is open (after a failed `BEGIN` there is none,
/// and the `ROLLBACK` fails harmlessly).
async fn rollback(conn: &mut sqlx::SqliteConnection) {
    if let Err(e) = Sqlite::run(conn, "ROLLBACK", &[]).await {
        tracing::debug!(error = %e, "ROLLBACK after a failed fire");
    }
}

/// `n` rows of `row` (a parenthesised tuple of `?`), comma-separated, each followed by
/// its 1-based position when `numbered`.
fn values(row: &str, n: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(n * (row.len() + 8));
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        if numbered {
            // "(?, ?, ?" + ", i)"
            sql.push_str(&row[..row.len() - 1]);
            sql.push_str(&format!(", {i})"));
        } else {
            sql.push_str(row);
        }
    }
    sql
}

/// Group commit's read on SQLite: `READ` for every lookup in one statement, the
/// lookup's position last. Runs outside any transaction, as a lone fire's read does;
/// [`write_many`] writes only what still holds.
async fn read_many(
    conn: &mut sqlx::SqliteConnection,
    machine: &str,
    lookups: &[Lookup<'_>],
) -> sqlx::Result<Vec<Option<sqlx::sqlite::SqliteRow>>> {
    if lookups.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "WITH i(id, idem_key, legacy, n) AS (VALUES {})
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at, i.n
FROM i JOIN fsm_machines m ON m.machine_type = ? AND m.machine_id = i.id
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = i.idem_key OR (t.idem_key = i.legacy AND t.legacy_key))",
        values("(?, ?, ?)", lookups.len(), true)
    );
    let mut args = Vec::with_capacity(lookups.len() * 3 + 1);
    for l in lookups {
        args.extend([
            Arg::Text(l.id),
            Arg::MaybeText(l.key),
            Arg::MaybeText(l.legacy.or(l.key)),
        ]);
    }
    args.push(Arg::Text(machine));
    let rows = Sqlite::rows(conn, &sql, &args).await?;
    let mut ordered: Vec<Option<sqlx::sqlite::SqliteRow>> = lookups.iter().map(|_| None).collect();
    for row in rows {
        let n: i64 = sqlx::Row::try_get(&row, 11)?;
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| ordered.get_mut(i)) {
            *slot = Some(row);
        }
    }
    Ok(ordered)
}

/// Rows per statement of [`write_many`], keeping each under SQLite's 32,766 parameters.
const BATCH_CHUNK: usize = 1_000;

/// The columns [`write_many`] binds per row of each table, in the order of
/// [`record_args`], [`outbox_args`] and [`timer_args`].
const HISTORY_COLUMNS: &[&str] = &[
    "machine_type",
    "machine_id",
    "version",
    "from_state",
    "event",
    "trigger_json",
    "to_state",
    "idem_key",
    "fingerprint",
    "at",
];
const OUTBOX_COLUMNS: &[&str] = &[
    "machine_type",
    "machine_id",
    "version",
    "seq",
    "effect",
    "available_at",
];
const TIMER_COLUMNS: &[&str] = &[
    "machine_type",
    "machine_id",
    "version",
    "from_state",
    "after_ms",
    "due_at",
];

/// Appends an `INSERT` into `table` of `rows` rows of `columns`, each bound followed by
/// the version its instance was read at, keeping only the rows whose instance still
/// holds that version.
fn insert_unmoved(sql: &mut String, table: &str, columns: &[&str], rows: usize) {
    let row = format!("({}?)", "?, ".repeat(columns.len()));
    let listed = columns.join(", ");
    let selected: Vec<String> = columns.iter().map(|c| format!("r.{c}")).collect();
    sql.push_str(&format!(
        "WITH r({listed}, expected) AS (VALUES {})
INSERT INTO {table} ({listed})
SELECT {} FROM r JOIN fsm_machines m ON m.machine_type = r.machine_type
  AND m.machine_id = r.machine_id AND m.version = r.expected;\n",
        values(&row, rows, false),
        selected.join(", "),
    ));
}

/// Group commit's write on SQLite, one string of statements in one call to sqlx's worker
/// thread: `BEGIN IMMEDIATE`, the history, outbox and timer rows, the compare-and-sets,
/// `COMMIT`. The batch read before taking the write lock, so an instance may have moved
/// since: each command's rows go in only where its instance still holds the version read
/// (joined before the compare-and-sets move any), and the compare-and-sets return the
/// ids they hit, so a moved instance costs its own command only. Nothing needs the
/// lock while the batch decides, which lets the next batch read and decide while this
/// one writes. A taken key abandons the batch (`None`, rolled back).
async fn write_many(
    conn: &mut sqlx::SqliteConnection,
    writes: &[TransitionWrite<'_>],
) -> Result<Option<Vec<bool>>> {
    let Some(first) = writes.first() else {
        return Ok(Some(Vec::new()));
    };
    let failed = db_error(|| format!("fire a batch of {}", first.machine));
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut args = Vec::with_capacity(writes.len() * 19);
    for chunk in writes.chunks(BATCH_CHUNK) {
        insert_unmoved(&mut sql, "fsm_transitions", HISTORY_COLUMNS, chunk.len());
        for w in chunk {
            args.extend(record_args(w));
            args.push(Arg::Int(w.expected));
        }
    }
    let effects: Vec<(&TransitionWrite<'_>, i32, &str)> = writes
        .iter()
        .flat_map(|w| {
            (0i32..)
                .zip(&w.effects)
                .map(move |(seq, e)| (w, seq, e.as_str()))
        })
        .collect();
    for chunk in effects.chunks(BATCH_CHUNK) {
        insert_unmoved(&mut sql, "fsm_outbox", OUTBOX_COLUMNS, chunk.len());
        for (w, seq, effect) in chunk {
            args.extend(outbox_args(w, *seq, effect));
            args.push(Arg::Int(w.expected));
        }
    }
    let timers: Vec<_> = writes
        .iter()
        .flat_map(|w| w.timers.iter().map(move |t| (w, t)))
        .collect();
    for chunk in timers.chunks(BATCH_CHUNK) {
        insert_unmoved(&mut sql, "fsm_timers", TIMER_COLUMNS, chunk.len());
        for (w, timer) in chunk {
            args.extend(timer_args(w.machine, w.id, w.version, w.to_state, timer));
            args.push(Arg::Int(w.expected));
        }
    }
    for chunk in writes.chunks(BATCH_CHUNK) {
        sql.push_str("WITH r(id, expected, to_state, version, context, at, entered) AS (VALUES ");
        sql.push_str(&values("(?, ?, ?, ?, ?, ?, ?)", chunk.len(), false));
        sql.push_str(
            ")
UPDATE fsm_machines SET state = r.to_state, version = r.version, context = r.context,
  updated_at = r.at, entered_at = COALESCE(r.entered, entered_at)
FROM r WHERE fsm_machines.machine_type = ? AND fsm_machines.machine_id = r.id
  AND fsm_machines.version = r.expected
RETURNING machine_id;\n",
        );
        for w in chunk {
            args.extend([
                Arg::Text(w.id),
                Arg::Int(w.expected),
                Arg::Text(w.to_state),
                Arg::Int(w.version),
                Arg::Text(&w.context),
                Arg::Int(w.at_ms),
                Arg::MaybeInt(w.entered_at),
            ]);
        }
        args.push(Arg::Text(first.machine));
    }
    sql.push_str("COMMIT");
    match Sqlite::rows(conn, &sql, &args).await {
        Ok(rows) => {
            // Committed: no error may leave here now, or the batch's commands would fire
            // again. A `TEXT NOT NULL` id always decodes.
            let hit: std::collections::HashSet<String> = rows
                .iter()
                .filter_map(|row| Sqlite::string(row, 0).ok())
                .collect();
            Ok(Some(writes.iter().map(|w| hit.contains(w.id)).collect()))
        }
        Err(e) => {
            rollback(conn).await;
            match is_unique_violation(&e) {
                true => Ok(None),
                false => Err(failed(e)),
            }
        }
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if missing) a database file with WAL, `synchronous = NORMAL` and a
    /// 5 s busy timeout, pooling up to 8 connections.
    ///
    /// The store checkpoints the WAL (copies it into the database file) from a task of
    /// its own, on one more connection, so that no fire waits for the disk: SQLite would
    /// otherwise run each checkpoint inside the commit that crosses 1,000 pages of WAL.
    /// Its connections keep SQLite's own checkpoint only as a backstop, at 16,384 pages
    /// (64 MiB). The task ends with the last clone of the store. Durability is
    /// SQLite's `synchronous = NORMAL` in WAL mode either way: a commit survives the
    /// process crashing, and may be lost with the machine's power.
    ///
    /// Fires run on the store's **write lane**, one more connection of its own
    /// (rusqlite, the same bundled SQLite): a fire that finds no other under way runs its
    /// read, decision and write right away in the caller's thread (SQLite's own work,
    /// about what C SQLite takes for the same statements, which under `synchronous = NORMAL` syncs nothing unless the WAL
    /// reached the backstop);
    /// otherwise it goes to the lane's thread, which takes the fires queued meanwhile
    /// into one transaction (group commit, one savepoint each) or, without group
    /// commit, one transaction each. Every fire on the lane reads under SQLite's write
    /// lock, so none loses a race or gives up with `Conflict`, whatever the
    /// [`Concurrency`](crate::Concurrency). Commands carrying a token go through sqlx,
    /// and so does a fire the lane cannot settle (a transaction that failed to commit,
    /// the lane stopped). An error of either path keeps a [`sqlx::Error`] as its source.
    /// The lane's connection is not one of the pool's: `pool.close()` stops the lane
    /// once the fires already queued are done, without waiting for its connection to
    /// close. It copies the pool's `synchronous`, `foreign_keys`, `busy_timeout` and
    /// `wal_autocheckpoint` (not an `after_connect`), and the lane does not start for a
    /// database in another journal mode, locked exclusively, on a VFS of its own or that
    /// the pool cannot write. While the pool has connections out (the store's work
    /// through sqlx, which waits for the write lock in SQLite's busy handler, or
    /// yours), fires go to the lane's thread, which gives way before its next
    /// transaction for at most 250 ms in any 500 ms.
    /// A store connected with [`connect`](SqlStore::connect) has the lane too (its
    /// fires go to the thread when its commits sync, as with the default
    /// `synchronous = FULL`), unless opened read-only; one built with
    /// [`from_pool`](SqlStore::from_pool) or [`memory`](Self::memory) fires through sqlx.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> fsm_core::Result<()> {
    /// let store = fsm_sqlx::SqliteStore::open("orders.db").await?;
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when the file cannot be opened.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Self::pool_options()).await
    }

    /// [`open`](Self::open) with pool options of your own (another size, an
    /// `after_connect`), keeping the connection settings and the checkpointing task.
    /// An `after_connect` runs on the pool's connections only, not on the write lane's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> fsm_core::Result<()> {
    /// use fsm_sqlx::SqliteStore;
    /// let store = SqliteStore::open_with("orders.db", SqliteStore::pool_options().max_connections(4))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when the file cannot be opened.
    pub async fn open_with(
        path: impl AsRef<Path>,
        pool: sqlx::pool::PoolOptions<Sqlite>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let options = Sqlite::tune(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .synchronous(SqliteSynchronous::Normal),
        );
        Self::connect_with(options, pool, || format!("open SQLite {}", path.display())).await
    }

    /// A private in-memory database, kept for the store's lifetime (one connection, so
    /// every task sees the same data).
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] if SQLite cannot start.
    pub async fn memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db_error(|| "parse sqlite::memory:".to_owned()))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db_error(|| "open in-memory SQLite".to_owned()))?;
        Ok(Self::from_pool(pool))
    }
}

#[cfg(test)]
mod tests {
    use fsm_core::Store;
    use fsm_core::testing::{Order, OrderData};

    use super::*;
    use crate::SqliteStore;
    use crate::engine::rows::PendingTimer;

    /// A keyed self-loop of `id` from `expected`, with one effect and one timer.
    fn note<'a>(id: &'a str, expected: i64, key: &'a str) -> TransitionWrite<'a> {
        TransitionWrite {
            machine: "Order",
            id,
            expected,
            version: expected + 1,
            from_state: "Created",
            to_state: "Created",
            context: format!("{{\"note\":\"{key}\"}}"),
            entered_at: None,
            event: "Note".into(),
            trigger: "{}".into(),
            idem_key: Some(key),
            fingerprint: Some([7; 32]),
            at_ms: 1,
            effects: vec!["{}".into()],
            timers: vec![PendingTimer {
                after_ms: 1_000,
                due_at: 1_001,
            }],
            token: None,
            claimed: None,
        }
    }

    async fn orders(ids: &[&str]) -> SqliteStore {
        let store = SqliteStore::memory().await.expect("in-memory SQLite");
        store.migrate().await.expect("migrate");
        for id in ids {
            store
                .create::<Order>(id, OrderData::default())
                .await
                .expect("create");
        }
        store
    }

    /// Rows of `table` for instance `id` (on the one connection of the in-memory store).
    async fn count(conn: &mut sqlx::SqliteConnection, table: &str, id: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE machine_id = ?1"
        ))
        .bind(id)
        .fetch_one(conn)
        .await
        .expect("count")
    }

    #[tokio::test]
    async fn a_batch_writes_every_instance_still_at_its_version_and_nothing_of_one_that_moved() {
        let store = orders(&["a", "b", "c"]).await;
        let mut conn = store.pool().acquire().await.expect("connection");
        let writes = [
            note("a", 0, "k-a"),
            note("b", 5, "k-b"),
            note("c", 0, "k-c"),
        ];
        let written = write_many(&mut conn, &writes).await.expect("batch");
        assert_eq!(written, Some(vec![true, false, true]));
        for (id, rows) in [("a", 1), ("b", 0), ("c", 1)] {
            for table in ["fsm_transitions", "fsm_outbox"] {
                assert_eq!(count(&mut conn, table, id).await, rows, "{table} of {id}");
            }
            // Created's own timer was armed when the order was.
            let timers = count(&mut conn, "fsm_timers", id).await;
            assert_eq!(timers, 1 + rows, "fsm_timers of {id}");
            let version: i64 =
                sqlx::query_scalar("SELECT version FROM fsm_machines WHERE machine_id = ?1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await
                    .expect("version");
            assert_eq!(version, rows, "version of {id}");
        }
    }

    #[tokio::test]
    async fn a_key_taken_since_the_read_abandons_the_batch_whole() {
        let store = orders(&["a", "b"]).await;
        let mut conn = store.pool().acquire().await.expect("connection");
        let first = write_many(&mut conn, &[note("a", 0, "k-a")]).await;
        assert_eq!(first.expect("first batch"), Some(vec![true]));
        let again = [note("b", 0, "k-b"), note("a", 1, "k-a")];
        assert_eq!(write_many(&mut conn, &again).await.expect("batch"), None);
        for table in ["fsm_transitions", "fsm_outbox"] {
            assert_eq!(count(&mut conn, table, "b").await, 0, "{table} of b");
            assert_eq!(count(&mut conn, table, "a").await, 1, "{table} of a");
        }
        // Created's own timer, and a's from its first batch.
        assert_eq!(count(&mut conn, "fsm_timers", "b").await, 1);
        assert_eq!(count(&mut conn, "fsm_timers", "a").await, 2);
        // The connection is usable again: the failed batch's transaction was rolled back.
        let next = write_many(&mut conn, &[note("b", 0, "k-b")]).await;
        assert_eq!(next.expect("next batch"), Some(vec![true]));
    }
}
