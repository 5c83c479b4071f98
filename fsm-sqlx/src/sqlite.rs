//! [`SqliteStore`]: the embedded default, one file (or memory) per service.
//!
//! WAL journal, a busy timeout, and `BEGIN IMMEDIATE` for every write, so writers queue
//! on SQLite's lock instead of failing to upgrade a read lock.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> fsm_core::Result<()> {
//! let store = fsm_sqlx::SqliteStore::open("orders.db").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use fsm_core::{Result, RetryPolicy};

use crate::Concurrency;
use crate::engine::{
    self, Backend, NewMachine, RawEffect, RawMachine, RawTimer, RawTransition, Settlement, Write,
    Written, database, is_unique_violation,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A [`Store`](fsm_core::Store) on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    retry: RetryPolicy,
    concurrency: Concurrency,
}

impl SqliteStore {
    /// Wraps a pool. Prefer [`open`](Self::open), which sets WAL and a busy timeout.
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            retry: RetryPolicy::default(),
            concurrency: Concurrency::Optimistic,
        }
    }

    /// Opens (creating if missing) a database file with WAL and a 5 s busy timeout.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when the file cannot be opened.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(database(|| format!("open SQLite {}", path.display())))?;
        Ok(Self::from_pool(pool))
    }

    /// Connects to a `sqlite:` URL, e.g. `sqlite://orders.db?mode=rwc`.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] for a bad URL or a file that cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(database(|| format!("parse SQLite URL {url}")))?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(database(|| format!("connect to {url}")))?;
        Ok(Self::from_pool(pool))
    }

    /// A private in-memory database, kept for the store's lifetime (one connection, so
    /// every task sees the same data).
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] if SQLite cannot start.
    pub async fn memory() -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(database(|| "parse sqlite::memory:".to_owned()))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(database(|| "open in-memory SQLite".to_owned()))?;
        Ok(Self::from_pool(pool))
    }

    /// Replaces the retry policy for lost compare-and-set races.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Chooses optimistic compare-and-set (the default) or row locking. On SQLite the lock
    /// is the database's write lock, taken by `BEGIN IMMEDIATE` before reading.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Creates or upgrades fsm's tables (`fsm_*`), embedded from `migrations/sqlite`.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| fsm_core::Error::database("migrate SQLite", e))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = ?3
WHERE m.machine_type = ?1 AND m.machine_id = ?2";

const INSERT: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?6)
ON CONFLICT (machine_type, machine_id) DO NOTHING";

const CONSUME_TOKEN: &str = "\
DELETE FROM fsm_tokens
WHERE machine_type = ?1 AND machine_id = ?2 AND token = ?3 AND expires_at > ?4
RETURNING token";

const CAS: &str = "\
UPDATE fsm_machines SET state = ?1, version = ?2, context = ?3, updated_at = ?4
WHERE machine_type = ?5 AND machine_id = ?6 AND version = ?7";

const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const OUTBOX: &str = "\
INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const ARM: &str = "\
INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at) VALUES (?1, ?2, ?3, ?4, ?5)";

const HISTORY: &str = "\
SELECT version, from_state, payload, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = ?1 AND machine_id = ?2 ORDER BY version";

const ISSUE_TOKEN: &str = "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT ?1, ?2, ?3, ?4 WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = ?1 AND machine_id = ?2)";

// One statement: SQLite runs it under its single write lock, so claims never overlap.
const CLAIM_EFFECTS: &str = "\
UPDATE fsm_outbox SET lease_until = ?3, attempts = attempts + 1
WHERE rowid IN (
  SELECT rowid FROM fsm_outbox
  WHERE machine_type = ?1 AND done_at IS NULL AND dead = 0 AND available_at <= ?2
    AND (lease_until IS NULL OR lease_until <= ?2)
  ORDER BY available_at, machine_id, version, seq LIMIT ?4)
RETURNING machine_id, version, seq, effect, attempts, last_error";

const EFFECT_DONE: &str = "\
UPDATE fsm_outbox SET done_at = ?5, lease_until = NULL
WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND attempts = ?6";

const EFFECT_RETRY: &str = "\
UPDATE fsm_outbox SET available_at = ?5, lease_until = NULL, last_error = ?7
WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND attempts = ?6";

const EFFECT_DEAD: &str = "\
UPDATE fsm_outbox SET dead = 1, lease_until = NULL, last_error = ?7
WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND attempts = ?6";

const DEAD_EFFECTS: &str = "\
SELECT machine_id, version, seq, effect, attempts, last_error FROM fsm_outbox
WHERE machine_type = ?1 AND dead = 1 ORDER BY available_at, machine_id, version, seq";

const REQUEUE: &str = "\
UPDATE fsm_outbox SET dead = 0, attempts = 0, available_at = ?5, last_error = NULL
WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND seq = ?4 AND dead = 1";

const CLAIM_TIMERS: &str = "\
UPDATE fsm_timers SET lease_until = ?3
WHERE rowid IN (
  SELECT rowid FROM fsm_timers
  WHERE machine_type = ?1 AND due_at <= ?2 AND (lease_until IS NULL OR lease_until <= ?2)
  ORDER BY due_at LIMIT ?4)
RETURNING machine_id, version, edge";

const DELETE_TIMER: &str = "\
DELETE FROM fsm_timers WHERE machine_type = ?1 AND machine_id = ?2 AND version = ?3 AND edge = ?4";

fn raw_machine(row: &SqliteRow) -> sqlx::Result<RawMachine> {
    Ok(RawMachine {
        state: row.try_get(0)?,
        version: row.try_get(1)?,
        context: row.try_get(2)?,
        init_fingerprint: row.try_get(3)?,
    })
}

fn raw_transition(row: &SqliteRow, at: usize) -> sqlx::Result<Option<RawTransition>> {
    let Some(version) = row.try_get::<Option<i64>, _>(at)? else {
        return Ok(None);
    };
    Ok(Some(RawTransition {
        version,
        from_state: row.try_get(at + 1)?,
        payload: row.try_get(at + 2)?,
        to_state: row.try_get(at + 3)?,
        idem_key: row.try_get(at + 4)?,
        fingerprint: row.try_get(at + 5)?,
        at_ms: row.try_get(at + 6)?,
    }))
}

fn raw_effect(row: &SqliteRow) -> sqlx::Result<RawEffect> {
    Ok(RawEffect {
        machine_id: row.try_get(0)?,
        version: row.try_get(1)?,
        seq: row.try_get(2)?,
        effect: row.try_get(3)?,
        attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
    })
}

type Read = Option<(RawMachine, Option<RawTransition>)>;

async fn read_on(
    conn: &mut SqliteConnection,
    machine: &'static str,
    id: &str,
    key: Option<&str>,
) -> Result<Read> {
    let row = sqlx::query(READ)
        .bind(machine)
        .bind(id)
        .bind(key)
        .fetch_optional(conn)
        .await
        .map_err(database(|| format!("read {machine} {id}")))?;
    let Some(row) = row else { return Ok(None) };
    raw_machine(&row)
        .and_then(|m| Ok((m, raw_transition(&row, 4)?)))
        .map(Some)
        .map_err(|e| engine::undecodable(machine, id, "fsm_machines", &e))
}

/// Every row of one transition, in the caller's transaction; commits nothing.
async fn write_in(tx: &mut Transaction<'static, Sqlite>, w: &Write<'_>) -> Result<Written> {
    let failed = database(|| format!("fire {} {}", w.machine, w.id));
    if let Some(token) = w.token {
        let consumed = sqlx::query(CONSUME_TOKEN)
            .bind(w.machine)
            .bind(w.id)
            .bind(token)
            .bind(w.at_ms)
            .fetch_optional(&mut **tx)
            .await
            .map_err(&failed)?;
        if consumed.is_none() {
            return Ok(Written::TokenRejected);
        }
    }
    let updated = sqlx::query(CAS)
        .bind(w.to_state)
        .bind(w.version)
        .bind(&w.context)
        .bind(w.at_ms)
        .bind(w.machine)
        .bind(w.id)
        .bind(w.expected)
        .execute(&mut **tx)
        .await
        .map_err(&failed)?;
    if updated.rows_affected() == 0 {
        return Ok(Written::VersionMoved);
    }
    let recorded = sqlx::query(RECORD)
        .bind(w.machine)
        .bind(w.id)
        .bind(w.version)
        .bind(w.from_state)
        .bind(&w.event)
        .bind(&w.payload)
        .bind(w.to_state)
        .bind(w.idem_key)
        .bind(w.fingerprint.as_ref().map(|f| &f[..]))
        .bind(w.at_ms)
        .execute(&mut **tx)
        .await;
    match recorded {
        Err(e) if is_unique_violation(&e) => return Ok(Written::KeyTaken),
        other => other.map_err(&failed)?,
    };
    for (seq, effect) in (0i64..).zip(&w.effects) {
        sqlx::query(OUTBOX)
            .bind(w.machine)
            .bind(w.id)
            .bind(w.version)
            .bind(seq)
            .bind(effect)
            .bind(w.at_ms)
            .execute(&mut **tx)
            .await
            .map_err(&failed)?;
    }
    arm(tx, w.machine, w.id, w.version, &w.timers)
        .await
        .map_err(&failed)?;
    Ok(Written::Applied)
}

async fn arm(
    tx: &mut Transaction<'static, Sqlite>,
    machine: &str,
    id: &str,
    version: i64,
    timers: &[engine::Arm],
) -> sqlx::Result<()> {
    for timer in timers {
        sqlx::query(ARM)
            .bind(machine)
            .bind(id)
            .bind(version)
            .bind(timer.edge)
            .bind(timer.due_at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Backend for SqliteStore {
    type Locked = Transaction<'static, Sqlite>;

    async fn read(&self, machine: &'static str, id: &str, key: Option<&str>) -> Result<Read> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(database(|| format!("read {machine} {id}")))?;
        read_on(&mut conn, machine, id, key).await
    }

    async fn lock(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> Result<Option<(Self::Locked, RawMachine, Option<RawTransition>)>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(database(|| format!("lock {machine} {id}")))?;
        let read = read_on(&mut tx, machine, id, key).await?;
        Ok(read.map(|(m, t)| (tx, m, t)))
    }

    async fn insert(&self, new: &NewMachine<'_>) -> Result<bool> {
        let failed = database(|| format!("create {} {}", new.machine, new.id));
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&failed)?;
        let done = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .execute(&mut *tx)
            .await
            .map_err(&failed)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        arm(&mut tx, new.machine, new.id, 0, &new.timers)
            .await
            .map_err(&failed)?;
        tx.commit().await.map_err(&failed)?;
        Ok(true)
    }

    async fn write(&self, w: &Write<'_>) -> Result<Written> {
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(database(|| format!("fire {} {}", w.machine, w.id)))?;
        self.write_locked(tx, w).await
    }

    async fn write_locked(&self, mut tx: Self::Locked, w: &Write<'_>) -> Result<Written> {
        let written = write_in(&mut tx, w).await?;
        if written == Written::Applied {
            tx.commit()
                .await
                .map_err(database(|| format!("commit {} {}", w.machine, w.id)))?;
        }
        Ok(written)
    }

    async fn history(&self, machine: &'static str, id: &str) -> Result<Vec<RawTransition>> {
        let failed = database(|| format!("history of {machine} {id}"));
        let rows = sqlx::query(HISTORY)
            .bind(machine)
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(&failed)?;
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw = raw_transition(row, 0)
                .map_err(|e| engine::undecodable(machine, id, "fsm_transitions", &e))?
                .ok_or_else(|| {
                    engine::undecodable(machine, id, "fsm_transitions", &"NULL version")
                })?;
            history.push(raw);
        }
        Ok(history)
    }

    async fn insert_token(
        &self,
        machine: &'static str,
        id: &str,
        token: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let done = sqlx::query(ISSUE_TOKEN)
            .bind(machine)
            .bind(id)
            .bind(token)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(database(|| format!("issue token for {machine} {id}")))?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_effects(
        &self,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<RawEffect>> {
        let rows = sqlx::query(CLAIM_EFFECTS)
            .bind(machine)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(database(|| format!("claim {machine} effects")))?;
        let mut effects = rows
            .iter()
            .map(raw_effect)
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(|e| engine::undecodable(machine, "-", "fsm_outbox", &e))?;
        // RETURNING has no order: hand each instance's effects over in emission order.
        effects.sort_by(|a, b| {
            (&a.machine_id, a.version, a.seq).cmp(&(&b.machine_id, b.version, b.seq))
        });
        Ok(effects)
    }

    async fn settle_effect(
        &self,
        machine: &'static str,
        effect: &RawEffect,
        settlement: Settlement<'_>,
    ) -> Result<bool> {
        let (sql, at, error) = match settlement {
            Settlement::Done { at } => (EFFECT_DONE, Some(at), None),
            Settlement::Retry { at, error } => (EFFECT_RETRY, Some(at), Some(error)),
            Settlement::Dead { error } => (EFFECT_DEAD, None, Some(error)),
        };
        // `attempts` is the claim's lease token: a worker whose lease expired and was
        // claimed again settles nothing.
        let done = sqlx::query(sql)
            .bind(machine)
            .bind(&effect.machine_id)
            .bind(effect.version)
            .bind(effect.seq)
            .bind(at)
            .bind(effect.attempts)
            .bind(error)
            .execute(&self.pool)
            .await
            .map_err(database(|| {
                format!("settle {machine} {} effect", effect.machine_id)
            }))?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_effects(&self, machine: &'static str) -> Result<Vec<RawEffect>> {
        let rows = sqlx::query(DEAD_EFFECTS)
            .bind(machine)
            .fetch_all(&self.pool)
            .await
            .map_err(database(|| format!("read {machine} dead letters")))?;
        rows.iter()
            .map(raw_effect)
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(|e| engine::undecodable(machine, "-", "fsm_outbox", &e))
    }

    async fn requeue_effect(
        &self,
        machine: &'static str,
        id: &str,
        version: i64,
        seq: i32,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(REQUEUE)
            .bind(machine)
            .bind(id)
            .bind(version)
            .bind(seq)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(database(|| format!("requeue {machine} {id} effect")))?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_timers(
        &self,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<RawTimer>> {
        let rows = sqlx::query(CLAIM_TIMERS)
            .bind(machine)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(database(|| format!("claim {machine} timers")))?;
        rows.iter()
            .map(|row| {
                Ok(RawTimer {
                    machine_id: row.try_get(0)?,
                    version: row.try_get(1)?,
                    edge: row.try_get(2)?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(|e| engine::undecodable(machine, "-", "fsm_timers", &e))
    }

    async fn delete_timer(&self, machine: &'static str, timer: &RawTimer) -> Result<()> {
        sqlx::query(DELETE_TIMER)
            .bind(machine)
            .bind(&timer.machine_id)
            .bind(timer.version)
            .bind(timer.edge)
            .execute(&self.pool)
            .await
            .map_err(database(|| {
                format!("delete {machine} {} timer", timer.machine_id)
            }))?;
        Ok(())
    }
}

crate::engine::impl_store!(SqliteStore);
