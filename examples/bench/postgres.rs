//! PostgreSQL: a fresh schema per run on the connections' `search_path`, `PgStore` on
//! it, and the baseline's one CTE statement that updates, records, queues and arms.

use std::str::FromStr;
use std::sync::Arc;

use fsm_core::RetryPolicy;
use fsm_sqlx::{Concurrency, PgStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use crate::baseline::{self, FINGERPRINT, Read, check_statements, now_ms, plan, seed_context};
use crate::cli::{Config, Kind};
use crate::db::{Db, pool_options};
use crate::{MACHINE, Res, STATE};

// Copied from the store's source (`baseline::POSTGRES_SOURCES`); `check` proves they are
// still there.
const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = $1 OR (t.idem_key = $2 AND t.legacy_key))
WHERE m.machine_type = $3 AND m.machine_id = $4";
const WRITE: &str = "\
WITH updated AS (
    UPDATE fsm_machines SET state = $4, version = $5, context = $6, updated_at = $7,
      entered_at = COALESCE($18, entered_at)
    WHERE machine_type = $1 AND machine_id = $2 AND version = $3
      AND ($16::text IS NULL OR (state = $16 AND context = $17))
    RETURNING machine_type, machine_id, version, state, updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
    SELECT machine_type, machine_id, version, $8, $9, $10, state, $11, $12, updated_at
    FROM updated
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq - 1, e.effect, u.updated_at
    FROM updated u, unnest($13::text[]) WITH ORDINALITY AS e(effect, seq)
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
    SELECT u.machine_type, u.machine_id, u.version, u.state, t.after_ms, t.due_at
    FROM updated u, unnest($14::int8[], $15::int8[]) AS t(after_ms, due_at)
)
SELECT count(*) FROM updated";
const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
SELECT $1, id, $3, 0, $4, $5, $6, $6, $6 FROM unnest($2::text[]) AS s(id)";

pub(crate) struct PgDb {
    store: Arc<PgStore>,
    pool: PgPool,
    admin: PgPool,
    schema: String,
    one_checkout: bool,
}

impl Db for PgDb {
    type Store = PgStore;

    fn check(_: &Config) -> Res<()> {
        check_statements(Kind::Postgres, &[READ, WRITE])
    }

    async fn open(cfg: &Config, run: usize, mode: Concurrency, retry: RetryPolicy) -> Res<Self> {
        let options = PgConnectOptions::from_str(&cfg.server_url(
            "FSM_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ))?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        // Generated from numbers only: nothing from outside is spliced in.
        let schema = format!("fsm_bench_{}_{run}", std::process::id());
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .execute(&admin)
        .await?;
        let pool = pool_options::<sqlx::Postgres>(cfg)
            .connect_with(options.options([("search_path", schema.as_str())]))
            .await?;
        let store = PgStore::from_pool(pool.clone())
            .with_retry(retry)
            .with_concurrency(mode);
        let store = crate::db::grouping(cfg, store);
        store.migrate().await?;
        Ok(PgDb {
            store: Arc::new(store),
            pool,
            admin,
            schema,
            one_checkout: cfg.one_checkout,
        })
    }

    fn store(&self) -> &Arc<PgStore> {
        &self.store
    }

    async fn second_store(&self, cfg: &Config) -> Res<PgStore> {
        crate::db::second_store(cfg, &self.pool).await
    }

    async fn close_second(store: PgStore) {
        store.pool().close().await;
    }

    async fn seed(&self, ids: &[String]) -> Res<()> {
        let (context, init) = seed_context()?;
        sqlx::query(SEED)
            .bind(MACHINE)
            .bind(ids)
            .bind(STATE)
            .bind(&context)
            .bind(&init)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        sqlx::raw_sql("ANALYZE").execute(&self.pool).await?;
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
        let updated: i64 = sqlx::query(WRITE)
            .bind(MACHINE)
            .bind(id)
            .bind(read.version)
            .bind(STATE)
            .bind(w.version)
            .bind(&w.context)
            .bind(w.at)
            .bind(STATE)
            .bind("Annotate")
            .bind(&w.payload)
            .bind(Some(key))
            .bind(Some(&FINGERPRINT[..]))
            .bind(&w.effects)
            // No timer to arm: `Paid` has no `after(..)` edge.
            .bind(Vec::<i64>::new())
            .bind(Vec::<i64>::new())
            // Decided on a read, not a caller's snapshot: no claim to check.
            .bind(None::<&str>)
            .bind(None::<&str>)
            // A self-loop: the instance does not re-enter its state.
            .bind(None::<i64>)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if updated != 1 {
            return Err("compare-and-set missed".into());
        }
        Ok(())
    }

    async fn close(self) -> Res<()> {
        drop(self.store);
        self.pool.close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await?;
        self.admin.close().await;
        Ok(())
    }
}
