//! [`MySqlStore`]: MySQL and MariaDB.
//!
//! A transition is one InnoDB transaction: the token's `DELETE ... RETURNING` when the
//! command carries one, the compare-and-set `UPDATE`, the history row, the outbox rows,
//! the new state's timers, `COMMIT`. The server reports found rather than changed rows
//! to sqlx, which does not matter here: the version bump changes every row the
//! compare-and-set finds. Names, ids and keys are `VARBINARY`, so they compare byte for
//! byte as on the other backends.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, MySqlConnection, MySqlPool, Row, Transaction};

use fsm_core::{Result, RetryPolicy};

use crate::Concurrency;
use crate::engine::{
    self, Arm, Backend, NewMachine, RawEffect, RawMachine, RawTimer, RawTransition, Settlement,
    Write, Written, database, is_unique_violation,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// A [`Store`](fsm_core::Store) on MySQL or MariaDB.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> fsm_core::Result<()> {
/// let store = fsm_sqlx::MySqlStore::connect("mysql://app@localhost/orders").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    retry: RetryPolicy,
    concurrency: Concurrency,
}

impl MySqlStore {
    /// Wraps a pool.
    pub fn from_pool(pool: MySqlPool) -> Self {
        MySqlStore {
            pool,
            retry: RetryPolicy::default(),
            concurrency: Concurrency::Optimistic,
        }
    }

    /// Connects to a `mysql:` URL (MariaDB too) with a pool of up to 8 connections.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] for a bad URL or a server that cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = MySqlConnectOptions::from_str(url)
            .map_err(database(|| "parse MySQL URL".to_owned()))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(database(|| "connect to MySQL".to_owned()))?;
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

    /// Creates or upgrades fsm's tables (`fsm_*`) in the connections' database,
    /// embedded from `migrations/mysql`.
    ///
    /// # Errors
    ///
    /// [`fsm_core::Error::Database`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| fsm_core::Error::database("migrate MySQL", e))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

// MySQL placeholders are positional: binds follow the order of the `?`s.
const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = ?
WHERE m.machine_type = ? AND m.machine_id = ?";

// A plain INSERT: a duplicate id is a unique violation. `ON DUPLICATE KEY UPDATE` cannot
// tell inserted from existing, because sqlx connects with CLIENT_FOUND_ROWS.
const INSERT: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
VALUES (?, ?, ?, 0, ?, ?, ?, ?)";

// Locks first, reads after: the key lookup runs once the lock is held, so it sees the
// transition of the writer we waited for.
const LOCK: &str = "\
SELECT 1 FROM fsm_machines WHERE machine_type = ? AND machine_id = ? FOR UPDATE";

const CONSUME_TOKEN: &str = "\
DELETE FROM fsm_tokens
WHERE machine_type = ? AND machine_id = ? AND token = ? AND expires_at > ?
RETURNING token";

const ARM: &str = "\
INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at) VALUES (?, ?, ?, ?, ?)";

const ISSUE_TOKEN: &str = "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT ?, ?, ?, ? FROM DUAL WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = ? AND machine_id = ?)";

// SKIP LOCKED: concurrent dispatchers take disjoint batches instead of queueing.
// MariaDB has no UPDATE ... RETURNING, so the claim is a locking read then an update.
const DUE_EFFECTS: &str = "\
SELECT machine_id, version, seq, effect, attempts, last_error FROM fsm_outbox
WHERE machine_type = ? AND done_at IS NULL AND NOT dead AND available_at <= ?
  AND (lease_until IS NULL OR lease_until <= ?)
ORDER BY available_at, machine_id, version, seq LIMIT ?
FOR UPDATE SKIP LOCKED";

const LEASE_EFFECT: &str = "\
UPDATE fsm_outbox SET lease_until = ?, attempts = attempts + 1
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ?";

const EFFECT_DONE: &str = "\
UPDATE fsm_outbox SET done_at = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND attempts = ?";

const EFFECT_RETRY: &str = "\
UPDATE fsm_outbox SET available_at = ?, last_error = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND attempts = ?";

const EFFECT_DEAD: &str = "\
UPDATE fsm_outbox SET dead = TRUE, last_error = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND attempts = ?";

const DEAD_EFFECTS: &str = "\
SELECT machine_id, version, seq, effect, attempts, last_error FROM fsm_outbox
WHERE machine_type = ? AND dead ORDER BY available_at, machine_id, version, seq";

const REQUEUE: &str = "\
UPDATE fsm_outbox SET dead = FALSE, attempts = 0, available_at = ?, last_error = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND dead";

const DUE_TIMERS: &str = "\
SELECT machine_id, version, edge FROM fsm_timers
WHERE machine_type = ? AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)
ORDER BY due_at LIMIT ?
FOR UPDATE SKIP LOCKED";

const LEASE_TIMER: &str = "\
UPDATE fsm_timers SET lease_until = ?
WHERE machine_type = ? AND machine_id = ? AND version = ? AND edge = ?";

const DELETE_TIMER: &str = "\
DELETE FROM fsm_timers WHERE machine_type = ? AND machine_id = ? AND version = ? AND edge = ?";

const CAS: &str = "\
UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?
WHERE machine_type = ? AND machine_id = ? AND version = ?";

const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const OUTBOX: &str =
    "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at) VALUES ";

const OUTBOX_ROW: &str = "(?, ?, ?, ?, ?, ?)";

const HISTORY: &str = "\
SELECT version, from_state, payload, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = ? AND machine_id = ? ORDER BY version";

/// One `INSERT` of `rows` outbox rows: placeholders only, the values are bound.
fn outbox_insert(rows: usize) -> String {
    let mut sql = String::with_capacity(OUTBOX.len() + rows * (OUTBOX_ROW.len() + 2));
    sql.push_str(OUTBOX);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(OUTBOX_ROW);
    }
    sql
}

fn raw_machine(row: &MySqlRow) -> sqlx::Result<RawMachine> {
    Ok(RawMachine {
        state: row.try_get(0)?,
        version: row.try_get(1)?,
        context: row.try_get(2)?,
        init_fingerprint: row.try_get(3)?,
    })
}

fn raw_transition(row: &MySqlRow, at: usize) -> sqlx::Result<Option<RawTransition>> {
    let Some(version) = row.try_get::<Option<i64>, _>(at)? else {
        return Ok(None);
    };
    // `idem_key` is VARBINARY: bytes that fsm wrote from a `str`.
    let idem_key = row
        .try_get::<Option<Vec<u8>>, _>(at + 4)?
        .map(String::from_utf8)
        .transpose()
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: "idem_key".to_owned(),
            source: Box::new(e),
        })?;
    Ok(Some(RawTransition {
        version,
        from_state: row.try_get(at + 1)?,
        payload: row.try_get(at + 2)?,
        to_state: row.try_get(at + 3)?,
        idem_key,
        fingerprint: row.try_get(at + 5)?,
        at_ms: row.try_get(at + 6)?,
    }))
}

/// A VARBINARY column that fsm wrote from a `str`.
fn text(row: &MySqlRow, index: usize, column: &str) -> sqlx::Result<String> {
    String::from_utf8(row.try_get(index)?).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

fn raw_effect(row: &MySqlRow) -> sqlx::Result<RawEffect> {
    Ok(RawEffect {
        machine_id: text(row, 0, "machine_id")?,
        version: row.try_get(1)?,
        seq: row.try_get(2)?,
        effect: row.try_get(3)?,
        attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
    })
}

type Read = Option<(RawMachine, Option<RawTransition>)>;

async fn read_on(
    conn: &mut MySqlConnection,
    sql: &'static str,
    machine: &'static str,
    id: &str,
    key: Option<&str>,
) -> Result<Read> {
    let row = sqlx::query(sql)
        .bind(key)
        .bind(machine)
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(database(|| format!("read {machine} {id}")))?;
    let Some(row) = row else { return Ok(None) };
    raw_machine(&row)
        .and_then(|m| Ok((m, raw_transition(&row, 4)?)))
        .map(Some)
        .map_err(|e| engine::undecodable(machine, id, "fsm_machines", &e))
}

async fn arm(
    conn: &mut MySqlConnection,
    machine: &str,
    id: &str,
    version: i64,
    timers: &[Arm],
) -> sqlx::Result<()> {
    for timer in timers {
        sqlx::query(ARM)
            .bind(machine)
            .bind(id)
            .bind(version)
            .bind(timer.edge)
            .bind(timer.due_at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every row of one transition, in the caller's transaction; commits nothing. On a miss
/// the transaction is rolled back at once to release the locks InnoDB took.
async fn write_in(tx: &mut Transaction<'static, MySql>, w: &Write<'_>) -> Result<Written> {
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
    if !w.effects.is_empty() {
        let sql = outbox_insert(w.effects.len());
        let mut outbox = sqlx::query(&sql);
        for (seq, effect) in (0i32..).zip(&w.effects) {
            outbox = outbox
                .bind(w.machine)
                .bind(w.id)
                .bind(w.version)
                .bind(seq)
                .bind(effect)
                .bind(w.at_ms);
        }
        outbox.execute(&mut **tx).await.map_err(&failed)?;
    }
    arm(tx, w.machine, w.id, w.version, &w.timers)
        .await
        .map_err(&failed)?;
    Ok(Written::Applied)
}

impl Backend for MySqlStore {
    type Locked = Transaction<'static, MySql>;

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
        let failed = database(|| format!("create {} {}", new.machine, new.id));
        let mut tx = self.pool.begin().await.map_err(&failed)?;
        let inserted = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .bind(new.at_ms)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(failed(e)),
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
            .begin()
            .await
            .map_err(database(|| format!("fire {} {}", w.machine, w.id)))?;
        self.write_locked(tx, w).await
    }

    async fn write_locked(&self, mut tx: Self::Locked, w: &Write<'_>) -> Result<Written> {
        let failed = database(|| format!("fire {} {}", w.machine, w.id));
        let written = write_in(&mut tx, w).await?;
        if written == Written::Applied {
            tx.commit().await.map_err(&failed)?;
        } else {
            tx.rollback().await.map_err(&failed)?;
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
            .bind(machine)
            .bind(id)
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
        let failed = database(|| format!("claim {machine} effects"));
        let mut tx = self.pool.begin().await.map_err(&failed)?;
        let rows = sqlx::query(DUE_EFFECTS)
            .bind(machine)
            .bind(now)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(&failed)?;
        let mut effects = rows
            .iter()
            .map(raw_effect)
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(|e| engine::undecodable(machine, "-", "fsm_outbox", &e))?;
        for effect in &mut effects {
            sqlx::query(LEASE_EFFECT)
                .bind(lease_until)
                .bind(machine)
                .bind(&effect.machine_id)
                .bind(effect.version)
                .bind(effect.seq)
                .execute(&mut *tx)
                .await
                .map_err(&failed)?;
            effect.attempts += 1;
        }
        tx.commit().await.map_err(&failed)?;
        Ok(effects)
    }

    async fn settle_effect(
        &self,
        machine: &'static str,
        effect: &RawEffect,
        settlement: Settlement<'_>,
    ) -> Result<bool> {
        let query = match settlement {
            Settlement::Done { at } => sqlx::query(EFFECT_DONE).bind(at),
            Settlement::Retry { at, error } => sqlx::query(EFFECT_RETRY).bind(at).bind(error),
            Settlement::Dead { error } => sqlx::query(EFFECT_DEAD).bind(error),
        };
        let done = query
            .bind(machine)
            .bind(&effect.machine_id)
            .bind(effect.version)
            .bind(effect.seq)
            // `attempts` is the claim's lease token: a worker whose lease expired and was
            // claimed again settles nothing.
            .bind(effect.attempts)
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
            .bind(now)
            .bind(machine)
            .bind(id)
            .bind(version)
            .bind(seq)
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
        let failed = database(|| format!("claim {machine} timers"));
        let mut tx = self.pool.begin().await.map_err(&failed)?;
        let rows = sqlx::query(DUE_TIMERS)
            .bind(machine)
            .bind(now)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(&failed)?;
        let timers = rows
            .iter()
            .map(|row| {
                Ok(RawTimer {
                    machine_id: text(row, 0, "machine_id")?,
                    version: row.try_get(1)?,
                    edge: row.try_get(2)?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(|e| engine::undecodable(machine, "-", "fsm_timers", &e))?;
        for timer in &timers {
            sqlx::query(LEASE_TIMER)
                .bind(lease_until)
                .bind(machine)
                .bind(&timer.machine_id)
                .bind(timer.version)
                .bind(timer.edge)
                .execute(&mut *tx)
                .await
                .map_err(&failed)?;
        }
        tx.commit().await.map_err(&failed)?;
        Ok(timers)
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

crate::engine::impl_store!(MySqlStore);
