//! [`MySqlStore`]: MySQL and MariaDB.
//!
//! A transition is one InnoDB transaction: the compare-and-set `UPDATE`, the history
//! row, the outbox rows, `COMMIT`. The server reports found rather than changed rows
//! to sqlx, which does not matter here: the version bump changes every row the
//! compare-and-set finds. Names, ids and keys are `VARBINARY`, so they compare byte for
//! byte as on the other backends.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{MySqlPool, Row};

use fsm_core::{Result, RetryPolicy};

use crate::engine::{
    self, Backend, NewMachine, RawMachine, RawTransition, Write, Written, database,
    is_unique_violation,
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
}

impl MySqlStore {
    /// Wraps a pool.
    pub fn from_pool(pool: MySqlPool) -> Self {
        MySqlStore {
            pool,
            retry: RetryPolicy::default(),
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

const EXISTS: &str = "SELECT 1 FROM fsm_machines WHERE machine_type = ? AND machine_id = ?";

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

impl Backend for MySqlStore {
    async fn read(
        &self,
        machine: &'static str,
        id: &str,
        key: Option<&str>,
    ) -> Result<Option<(RawMachine, Option<RawTransition>)>> {
        let row = sqlx::query(READ)
            .bind(key)
            .bind(machine)
            .bind(id)
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
        let inserted = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .bind(new.at_ms)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(database(|| format!("create {} {}", new.machine, new.id))(e)),
        }
    }

    async fn write(&self, w: &Write<'_>) -> Result<Written> {
        let failed = database(|| format!("fire {} {}", w.machine, w.id));
        let mut tx = self.pool.begin().await.map_err(&failed)?;
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
            // Releases the lock InnoDB keeps on the row it examined.
            tx.rollback().await.map_err(&failed)?;
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
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(&failed)?;
                return Ok(Written::KeyTaken);
            }
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
            outbox.execute(&mut *tx).await.map_err(&failed)?;
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

crate::engine::impl_store!(MySqlStore);
