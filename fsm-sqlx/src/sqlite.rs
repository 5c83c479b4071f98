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
use sqlx::{Row, SqlitePool};

use fsm_core::{Result, RetryPolicy};

use crate::engine::{
    self, Backend, NewMachine, RawMachine, RawTransition, Write, Written, database,
    is_unique_violation,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A [`Store`](fsm_core::Store) on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    retry: RetryPolicy,
}

impl SqliteStore {
    /// Wraps a pool. Prefer [`open`](Self::open), which sets WAL and a busy timeout.
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            retry: RetryPolicy::default(),
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

const HISTORY: &str = "\
SELECT version, from_state, payload, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = ?1 AND machine_id = ?2 ORDER BY version";

const EXISTS: &str = "SELECT 1 FROM fsm_machines WHERE machine_type = ?1 AND machine_id = ?2";

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

impl Backend for SqliteStore {
    async fn read(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> Result<Option<(RawMachine, Option<RawTransition>)>> {
        let row = sqlx::query(READ)
            .bind(machine)
            .bind(id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(database(|| format!("read {machine} {id}")))?;
        let Some(row) = row else { return Ok(None) };
        let decoded = raw_machine(&row).and_then(|m| Ok((m, raw_transition(&row, 4)?)));
        decoded
            .map(Some)
            .map_err(|e| engine::undecodable(machine, id, "fsm_machines", &e))
    }

    async fn insert(&self, new: &NewMachine<'_>) -> Result<bool> {
        let done = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .execute(&self.pool)
            .await
            .map_err(database(|| format!("create {} {}", new.machine, new.id)))?;
        Ok(done.rows_affected() == 1)
    }

    async fn write(&self, w: &Write<'_>) -> Result<Written> {
        let failed = database(|| format!("fire {} {}", w.machine, w.id));
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(&failed)?;
        let updated = sqlx::query(CAS)
            .bind(w.to_state)
            .bind(w.version)
            .bind(&w.context)
            .bind(w.at_ms)
            .bind(w.machine)
            .bind(w.id)
            .bind(w.expected)
            .execute(&mut *tx)
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
            .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await
                .map_err(&failed)?;
        }
        tx.commit().await.map_err(&failed)?;
        Ok(Written::Applied)
    }

    async fn history(&self, machine: &'static str, id: &str) -> Result<Option<Vec<RawTransition>>> {
        let failed = database(|| format!("history of {machine} {id}"));
        let rows = sqlx::query(HISTORY)
            .bind(machine)
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(&failed)?;
        if rows.is_empty() {
            let exists = sqlx::query(EXISTS)
                .bind(machine)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(&failed)?;
            return Ok(exists.map(|_| Vec::new()));
        }
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw = raw_transition(row, 0)
                .map_err(|e| engine::undecodable(machine, id, "fsm_transitions", &e))?
                .ok_or_else(|| {
                    engine::undecodable(machine, id, "fsm_transitions", &"NULL version")
                })?;
            history.push(raw);
        }
        Ok(Some(history))
    }
}

crate::engine::impl_store!(SqliteStore);
