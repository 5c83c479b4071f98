//! [`PgStore`]: PostgreSQL, for services that share one database server.
//!
//! A transition is written by one statement: data-modifying CTEs chain the
//! compare-and-set `UPDATE`, the history row and the outbox rows, so the history and
//! outbox rows exist only if the compare-and-set hit, and a unique violation on the
//! idempotency key aborts the whole statement. `fire` costs two round trips (read,
//! write); `fire_with` with a current snapshot costs one.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use fsm_core::{Result, RetryPolicy};

use crate::engine::{
    self, Backend, NewMachine, RawMachine, RawTransition, Write, Written, database,
    is_unique_violation,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`](fsm_core::Store) on PostgreSQL.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> fsm_core::Result<()> {
/// let store = fsm_sqlx::PgStore::connect("postgres://app@localhost/orders").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    retry: RetryPolicy,
}

impl PgStore {
    /// Wraps a pool, e.g. one whose connections set a `search_path`.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to a `postgres:` URL with a pool of up to 8 connections.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] for a bad URL or a server that cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(database(|| "parse PostgreSQL URL".to_owned()))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(database(|| "connect to PostgreSQL".to_owned()))?;
        Ok(Self::from_pool(pool))
    }

    /// Replaces the retry policy for lost compare-and-set races.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Creates or upgrades fsm's tables (`fsm_*`) in the first schema of the
    /// connections' `search_path`, embedded from `migrations/postgres`.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| fsm_core::Error::database("migrate PostgreSQL", e))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = $3
WHERE m.machine_type = $1 AND m.machine_id = $2";

const INSERT: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
VALUES ($1, $2, $3, 0, $4, $5, $6, $6)
ON CONFLICT (machine_type, machine_id) DO NOTHING";

// Every sub-statement runs exactly once; the INSERTs read `updated`, so they write
// nothing when the compare-and-set missed. The result is the number of rows updated.
const WRITE: &str = "\
WITH updated AS (
    UPDATE fsm_machines SET state = $4, version = $5, context = $6, updated_at = $7
    WHERE machine_type = $1 AND machine_id = $2 AND version = $3
    RETURNING machine_type, machine_id, version, state, updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
    SELECT machine_type, machine_id, version, $8, $9, $10, state, $11, $12, updated_at
    FROM updated
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq - 1, e.effect, u.updated_at
    FROM updated u, unnest($13::text[]) WITH ORDINALITY AS e(effect, seq)
)
SELECT count(*) FROM updated";

const HISTORY: &str = "\
SELECT version, from_state, payload, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = $1 AND machine_id = $2 ORDER BY version";

const EXISTS: &str = "SELECT 1 FROM fsm_machines WHERE machine_type = $1 AND machine_id = $2";

fn raw_machine(row: &PgRow) -> sqlx::Result<RawMachine> {
    Ok(RawMachine {
        state: row.try_get(0)?,
        version: row.try_get(1)?,
        context: row.try_get(2)?,
        init_fingerprint: row.try_get(3)?,
    })
}

fn raw_transition(row: &PgRow, at: usize) -> sqlx::Result<Option<RawTransition>> {
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

impl Backend for PgStore {
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
        let updated = sqlx::query(WRITE)
            .bind(w.machine)
            .bind(w.id)
            .bind(w.expected)
            .bind(w.to_state)
            .bind(w.version)
            .bind(&w.context)
            .bind(w.at_ms)
            .bind(w.from_state)
            .bind(&w.event)
            .bind(&w.payload)
            .bind(w.idem_key)
            .bind(w.fingerprint.as_ref().map(|f| &f[..]))
            .bind(&w.effects)
            .fetch_one(&self.pool)
            .await;
        match updated {
            Ok(row) => {
                let updated: i64 = row
                    .try_get(0)
                    .map_err(|e| engine::undecodable(w.machine, w.id, "fsm_machines", &e))?;
                Ok(if updated == 0 {
                    Written::VersionMoved
                } else {
                    Written::Applied
                })
            }
            // The statement is atomic: a taken key left nothing behind.
            Err(e) if is_unique_violation(&e) => Ok(Written::KeyTaken),
            Err(e) => Err(database(|| format!("fire {} {}", w.machine, w.id))(e)),
        }
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

crate::engine::impl_store!(PgStore);
