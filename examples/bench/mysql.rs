//! MySQL/MariaDB: a fresh database per run, `MySqlStore` on it, and the baseline's
//! transaction of compare-and-set `UPDATE`, history `INSERT` and the one multi-row outbox
//! `INSERT` the store builds.

use std::str::FromStr;
use std::sync::Arc;

use fsm_core::RetryPolicy;
use fsm_sqlx::{Concurrency, MySqlStore};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, MySqlPool};

use crate::baseline::{self, Read, check_statements, now_ms, plan, seed_context};
use crate::cli::{Config, Kind};
use crate::db::{Db, pool_options};
use crate::{MACHINE, Res, STATE};

// Copied from the store's source (`baseline::MYSQL_SOURCES`); `check` proves they are
// still there. The store builds the outbox INSERT from OUTBOX_HEAD and one OUTBOX_ROW per
// effect.
const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = ? OR (t.idem_key = ? AND t.legacy_key))
WHERE m.machine_type = ? AND m.machine_id = ?";
const CAS: &str = "\
UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?,
  entered_at = COALESCE(?, entered_at)
WHERE machine_type = ? AND machine_id = ? AND version = ?
  AND (? IS NULL OR (state = ? AND CAST(context AS BINARY) = CAST(? AS BINARY)))";
const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const OUTBOX_HEAD: &str =
    "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at) VALUES ";
const OUTBOX_ROW: &str = "(?, ?, ?, ?, ?, ?)";
const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)";

pub(crate) struct MySqlDb {
    store: Arc<MySqlStore>,
    pool: MySqlPool,
    admin: MySqlPool,
    database: String,
    outbox: String,
    one_checkout: bool,
}

impl Db for MySqlDb {
    type Store = MySqlStore;

    fn check(_: &Config) -> Res<()> {
        check_statements(
            Kind::Mysql,
            &[READ, CAS, RECORD, OUTBOX_HEAD, OUTBOX_ROW, "pool.begin()"],
        )
    }

    async fn open(cfg: &Config, run: usize, mode: Concurrency, retry: RetryPolicy) -> Res<Self> {
        let options = MySqlConnectOptions::from_str(
            &cfg.server_url("FSM_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        )?;
        let admin = MySqlPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        // Generated from numbers only: nothing from outside is spliced in.
        let database = format!("fsm_bench_{}_{run}", std::process::id());
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database}"))
            .execute(&admin)
            .await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await?;
        let pool = pool_options::<sqlx::MySql>(cfg)
            .connect_with(options.database(&database))
            .await?;
        let store = MySqlStore::from_pool(pool.clone())
            .with_retry(retry)
            .with_concurrency(mode);
        let store = crate::db::grouping(cfg, store);
        store.migrate().await?;
        Ok(MySqlDb {
            store: Arc::new(store),
            pool,
            admin,
            database,
            // What the store's `outbox_insert(1)` builds for one effect.
            outbox: format!("{OUTBOX_HEAD}{OUTBOX_ROW}"),
            one_checkout: cfg.one_checkout,
        })
    }

    fn store(&self) -> &Arc<MySqlStore> {
        &self.store
    }

    async fn second_store(&self, cfg: &Config) -> Res<MySqlStore> {
        crate::db::second_store(cfg, &self.pool).await
    }

    async fn close_second(store: MySqlStore) {
        store.pool().close().await;
    }

    async fn seed(&self, ids: &[String]) -> Res<()> {
        let (context, init) = seed_context()?;
        let mut tx = self.pool.begin().await?;
        for id in ids {
            let now = now_ms();
            sqlx::query(SEED)
                .bind(MACHINE)
                .bind(id)
                .bind(STATE)
                .bind(&context)
                .bind(&init)
                .bind(now)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        sqlx::raw_sql("ANALYZE TABLE fsm_machines, fsm_transitions, fsm_outbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn baseline(&self, id: &str, key: &str, note: &str) -> Res<()> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(READ)
            .bind(Some(key))
            .bind(Some(key))
            .bind(MACHINE)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or("instance not found")?;
        let read = Read::decode(&row)?;
        let w = plan(&read, note)?;
        conn = baseline::write_checkout(&self.pool, conn, self.one_checkout).await?;
        let mut tx = Connection::begin(&mut *conn).await?;
        let (cas, record) = baseline::cas_and_record(CAS, RECORD, id, key, &read, &w);
        let updated = cas.execute(&mut *tx).await?;
        if updated.rows_affected() != 1 {
            return Err("compare-and-set missed".into());
        }
        record.execute(&mut *tx).await?;
        let mut outbox = sqlx::query(&self.outbox);
        for (seq, effect) in (0i32..).zip(&w.effects) {
            outbox = outbox
                .bind(MACHINE)
                .bind(id)
                .bind(w.version)
                .bind(seq)
                .bind(effect)
                .bind(w.at);
        }
        outbox.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close(self) -> Res<()> {
        drop(self.store);
        self.pool.close().await;
        sqlx::raw_sql(&format!("DROP DATABASE {}", self.database))
            .execute(&self.admin)
            .await?;
        self.admin.close().await;
        Ok(())
    }
}
