//! [`PgStore`]: PostgreSQL, for services that share one database server.
//!
//! A transition is written by one statement: data-modifying CTEs chain the
//! compare-and-set `UPDATE`, the history row, the outbox rows and the timers of the new
//! state, so those rows exist only if the compare-and-set hit, and a unique violation on
//! the idempotency key aborts the whole statement. `fire` costs two round trips (read,
//! write); `fire_with` with a current snapshot costs one. A command carrying a token
//! adds a transaction around its `DELETE ... RETURNING` and the write.

use std::str::FromStr;

use sqlx::postgres::PgArguments;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use fsm_core::{Result, RetryPolicy};

use crate::Concurrency;
use crate::engine::{
    self, Arm, Backend, NewMachine, RawEffect, RawMachine, RawTimer, RawTransition, Settlement,
    Write, Written, database, is_unique_violation,
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
    concurrency: Concurrency,
}

impl PgStore {
    /// Wraps a pool, e.g. one whose connections set a `search_path`.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            retry: RetryPolicy::default(),
            concurrency: Concurrency::Optimistic,
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

    /// Chooses optimistic compare-and-set (the default) or row locking
    /// (`SELECT ... FOR UPDATE` before deciding).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
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

// Locks first, reads after: a statement that waited for the lock sees only the locked
// row re-checked, so the key lookup must be a fresh statement once the lock is held.
const LOCK: &str = "\
SELECT 1 FROM fsm_machines WHERE machine_type = $1 AND machine_id = $2 FOR UPDATE";

// The timers of the initial state are armed only if the row was inserted.
const INSERT: &str = "\
WITH inserted AS (
    INSERT INTO fsm_machines
      (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
    VALUES ($1, $2, $3, 0, $4, $5, $6, $6)
    ON CONFLICT (machine_type, machine_id) DO NOTHING
    RETURNING machine_type, machine_id
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at)
    SELECT i.machine_type, i.machine_id, 0, t.edge, t.due_at
    FROM inserted i, unnest($7::int4[], $8::int8[]) AS t(edge, due_at)
)
SELECT count(*) FROM inserted";

const CONSUME_TOKEN: &str = "\
DELETE FROM fsm_tokens
WHERE machine_type = $1 AND machine_id = $2 AND token = $3 AND expires_at > $4
RETURNING token";

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
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at)
    SELECT u.machine_type, u.machine_id, u.version, t.edge, t.due_at
    FROM updated u, unnest($14::int4[], $15::int8[]) AS t(edge, due_at)
)
SELECT count(*) FROM updated";

const HISTORY: &str = "\
SELECT version, from_state, payload, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = $1 AND machine_id = $2 ORDER BY version";

const ISSUE_TOKEN: &str = "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT $1, $2, $3, $4 WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = $1 AND machine_id = $2)";

// SKIP LOCKED: concurrent dispatchers take disjoint batches instead of queueing.
const CLAIM_EFFECTS: &str = "\
UPDATE fsm_outbox o SET lease_until = $3, attempts = o.attempts + 1
FROM (
  SELECT machine_type, machine_id, version, seq FROM fsm_outbox
  WHERE machine_type = $1 AND done_at IS NULL AND NOT dead AND available_at <= $2
    AND (lease_until IS NULL OR lease_until <= $2)
  ORDER BY available_at, machine_id, version, seq LIMIT $4
  FOR UPDATE SKIP LOCKED) due
WHERE o.machine_type = due.machine_type AND o.machine_id = due.machine_id
  AND o.version = due.version AND o.seq = due.seq
RETURNING o.machine_id, o.version, o.seq, o.effect, o.attempts, o.last_error";

const EFFECT_DONE: &str = "\
UPDATE fsm_outbox SET done_at = $5, lease_until = NULL
WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND attempts = $6";

const EFFECT_RETRY: &str = "\
UPDATE fsm_outbox SET available_at = $5, lease_until = NULL, last_error = $7
WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND attempts = $6";

const EFFECT_DEAD: &str = "\
UPDATE fsm_outbox SET dead = TRUE, lease_until = NULL, last_error = $7
WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND attempts = $6";

const DEAD_EFFECTS: &str = "\
SELECT machine_id, version, seq, effect, attempts, last_error FROM fsm_outbox
WHERE machine_type = $1 AND dead ORDER BY available_at, machine_id, version, seq";

const REQUEUE: &str = "\
UPDATE fsm_outbox SET dead = FALSE, attempts = 0, available_at = $5, last_error = NULL
WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND dead";

const CLAIM_TIMERS: &str = "\
UPDATE fsm_timers o SET lease_until = $3
FROM (
  SELECT machine_type, machine_id, version, edge FROM fsm_timers
  WHERE machine_type = $1 AND due_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)
  ORDER BY due_at LIMIT $4
  FOR UPDATE SKIP LOCKED) due
WHERE o.machine_type = due.machine_type AND o.machine_id = due.machine_id
  AND o.version = due.version AND o.edge = due.edge
RETURNING o.machine_id, o.version, o.edge";

const DELETE_TIMER: &str = "\
DELETE FROM fsm_timers WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND edge = $4";

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

fn raw_effect(row: &PgRow) -> sqlx::Result<RawEffect> {
    Ok(RawEffect {
        machine_id: row.try_get(0)?,
        version: row.try_get(1)?,
        seq: row.try_get(2)?,
        effect: row.try_get(3)?,
        attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
    })
}

fn timer_columns(timers: &[Arm]) -> (Vec<i32>, Vec<i64>) {
    timers.iter().map(|t| (t.edge, t.due_at)).unzip()
}

type Read = Option<(RawMachine, Option<RawTransition>)>;

async fn read_on(
    conn: &mut PgConnection,
    sql: &'static str,
    machine: &'static str,
    id: &str,
    key: Option<&str>,
) -> Result<Read> {
    let row = sqlx::query(sql)
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

fn write_query<'q>(
    w: &'q Write<'q>,
    timers: &'q (Vec<i32>, Vec<i64>),
) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(WRITE)
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
        .bind(&timers.0)
        .bind(&timers.1)
}

/// Runs the write statement on `conn`: the compare-and-set and everything it implies.
async fn write_on(conn: &mut PgConnection, w: &Write<'_>) -> Result<Written> {
    let timers = timer_columns(&w.timers);
    match write_query(w, &timers).fetch_one(conn).await {
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

impl Backend for PgStore {
    type Locked = Transaction<'static, Postgres>;

    async fn read(&self, machine: &'static str, id: &str, key: Option<&str>) -> Result<Read> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(database(|| format!("read {machine} {id}")))?;
        read_on(&mut conn, READ, machine, id, key).await
    }

    async fn lock(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> Result<Option<(Self::Locked, RawMachine, Option<RawTransition>)>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(database(|| format!("lock {machine} {id}")))?;
        let locked = sqlx::query(LOCK)
            .bind(machine)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(|| format!("lock {machine} {id}")))?;
        if locked.is_none() {
            return Ok(None);
        }
        let read = read_on(&mut tx, READ, machine, id, key).await?;
        Ok(read.map(|(m, t)| (tx, m, t)))
    }

    async fn insert(&self, new: &NewMachine<'_>) -> Result<bool> {
        let (edges, due) = timer_columns(&new.timers);
        let row = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .bind(&edges)
            .bind(&due)
            .fetch_one(&self.pool)
            .await
            .map_err(database(|| format!("create {} {}", new.machine, new.id)))?;
        let inserted: i64 = row
            .try_get(0)
            .map_err(|e| engine::undecodable(new.machine, new.id, "fsm_machines", &e))?;
        Ok(inserted == 1)
    }

    async fn write(&self, w: &Write<'_>) -> Result<Written> {
        if w.token.is_some() {
            let tx = self
                .pool
                .begin()
                .await
                .map_err(database(|| format!("fire {} {}", w.machine, w.id)))?;
            return self.write_locked(tx, w).await;
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(database(|| format!("fire {} {}", w.machine, w.id)))?;
        write_on(&mut conn, w).await
    }

    async fn write_locked(&self, mut tx: Self::Locked, w: &Write<'_>) -> Result<Written> {
        let failed = database(|| format!("fire {} {}", w.machine, w.id));
        if let Some(token) = w.token {
            let consumed = sqlx::query(CONSUME_TOKEN)
                .bind(w.machine)
                .bind(w.id)
                .bind(token)
                .bind(w.at_ms)
                .fetch_optional(&mut *tx)
                .await
                .map_err(&failed)?;
            if consumed.is_none() {
                return Ok(Written::TokenRejected);
            }
        }
        let written = write_on(&mut tx, w).await?;
        if written == Written::Applied {
            tx.commit().await.map_err(&failed)?;
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

crate::engine::impl_store!(PgStore);
