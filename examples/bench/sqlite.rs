//! SQLite: a temporary database file per run, `SqliteStore` on it (as
//! `SqliteStore::open` configures it unless `--pool`/`--ping` say otherwise), and the
//! baseline's `BEGIN IMMEDIATE` transaction of compare-and-set `UPDATE`, history `INSERT`
//! and outbox `INSERT`s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsm_core::RetryPolicy;
use fsm_sqlx::{Concurrency, SqliteStore};
use sqlx::{Connection, SqlitePool};

use crate::baseline::{self, Read, check_statements, now_ms, plan, seed_context};
use crate::cli::{Config, Kind};
use crate::db::{Db, pool_options};
use crate::{MACHINE, Res, STATE};

// Copied from the store's source (`baseline::SQLITE_SOURCES`); `check` proves they are
// still there.
pub(crate) const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = ?1 OR (t.idem_key = ?2 AND t.legacy_key))
WHERE m.machine_type = ?3 AND m.machine_id = ?4";
pub(crate) const CAS: &str = "\
UPDATE fsm_machines SET state = ?1, version = ?2, context = ?3, updated_at = ?4,
  entered_at = COALESCE(?5, entered_at)
WHERE machine_type = ?6 AND machine_id = ?7 AND version = ?8
  AND (?9 IS NULL OR (state = ?10 AND context = ?11))";
pub(crate) const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
// The store builds the outbox INSERT from OUTBOX_HEAD and one OUTBOX_ROW per effect.
pub(crate) const OUTBOX_HEAD: &str =
    "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at) VALUES ";
pub(crate) const OUTBOX_ROW: &str = "(?, ?, ?, ?, ?, ?)";
pub(crate) const BEGIN: &str = "BEGIN IMMEDIATE";
/// The pages past which the store's connections checkpoint themselves, as
/// `fsm-sqlx/src/checkpoint.rs` writes it (`check` proves it still does); the C SQLite
/// loop of `--limit` sets the same.
pub(crate) const WAL_BACKSTOP_PAGES: &str = "16_384";
const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?6, ?6)";

pub(crate) struct SqliteDb {
    store: Arc<SqliteStore>,
    pool: SqlitePool,
    path: PathBuf,
    one_checkout: bool,
}

impl Db for SqliteDb {
    type Store = SqliteStore;

    fn check(_: &Config) -> Res<()> {
        let backstop = format!("BACKSTOP_PAGES: u32 = {WAL_BACKSTOP_PAGES};");
        check_statements(
            Kind::Sqlite,
            &[
                READ,
                CAS,
                RECORD,
                OUTBOX_HEAD,
                OUTBOX_ROW,
                "\"BEGIN IMMEDIATE\"",
                &backstop,
            ],
        )
    }

    async fn open(cfg: &Config, run: usize, mode: Concurrency, retry: RetryPolicy) -> Res<Self> {
        let path = std::env::temp_dir().join(format!("fsm-bench-{}-{run}.db", std::process::id()));
        remove_files(&path);
        // As an application would (WAL, synchronous = NORMAL, checkpoints in the store's
        // task), with 8 connections unless `--pool`/`--ping` say otherwise.
        let store = SqliteStore::open_with(&path, pool_options::<sqlx::Sqlite>(cfg)).await?;
        let store = store.with_retry(retry).with_concurrency(mode);
        let store = crate::db::grouping(cfg, store);
        store.migrate().await?;
        let pool = store.pool().clone();
        Ok(SqliteDb {
            store: Arc::new(store),
            pool,
            path,
            one_checkout: cfg.one_checkout,
        })
    }

    fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    async fn second_store(&self, cfg: &Config) -> Res<SqliteStore> {
        crate::db::second_store(cfg, &self.pool).await
    }

    async fn close_second(store: SqliteStore) {
        store.pool().close().await;
    }

    fn file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    async fn seed(&self, ids: &[String]) -> Res<()> {
        let (context, init) = seed_context()?;
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(SEED)
                .bind(MACHINE)
                .bind(id)
                .bind(STATE)
                .bind(&context)
                .bind(&init)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn baseline(&self, id: &str, key: &str, note: &str) -> Res<()> {
        let mut conn = self.pool.acquire().await?;
        let row = baseline::read(READ, id, key)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or("instance not found")?;
        let read = Read::decode(&row)?;
        let w = plan(&read, note)?;
        conn = baseline::write_checkout(&self.pool, conn, self.one_checkout).await?;
        let mut tx = Connection::begin_with(&mut *conn, BEGIN).await?;
        let (cas, record) = baseline::cas_and_record(CAS, RECORD, id, key, &read, &w);
        let updated = cas.execute(&mut *tx).await?;
        if updated.rows_affected() != 1 {
            return Err("compare-and-set missed".into());
        }
        record.execute(&mut *tx).await?;
        let outbox = format!("{OUTBOX_HEAD}{OUTBOX_ROW}");
        for (seq, effect) in (0i32..).zip(&w.effects) {
            sqlx::query(&outbox)
                .bind(MACHINE)
                .bind(id)
                .bind(w.version)
                .bind(seq)
                .bind(effect)
                .bind(w.at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn close(self) -> Res<()> {
        drop(self.store);
        self.pool.close().await;
        remove_files(&self.path);
        Ok(())
    }
}

fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}
