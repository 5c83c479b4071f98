//! The store conformance suite on PostgreSQL, each test in a schema of its own.
//!
//! Reads the server from `FSM_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; without it the tests are skipped, or fail
//! when `CI` is set.
#![cfg(feature = "postgres")]

mod common;

use std::str::FromStr;
use std::sync::Arc;

use fsm_core::testing::Fixture;
use fsm_sqlx::{Concurrency, PgStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};

const URL_VAR: &str = "FSM_POSTGRES_URL";

/// A store whose connections' `search_path` is a fresh schema, dropped afterwards.
struct PgSchema {
    store: Arc<PgStore>,
    schema: Schema,
}

impl PgSchema {
    async fn new(url: String, concurrency: Concurrency) -> Self {
        let schema = Schema::create(url).await;
        let pool = connect(&schema).await;
        let store = PgStore::from_pool(pool).with_concurrency(concurrency);
        store.migrate().await.expect("migrate");
        PgSchema {
            store: Arc::new(store),
            schema,
        }
    }
}

/// A pool on the test's own schema.
async fn connect(schema: &Schema) -> sqlx::PgPool {
    let options = PgConnectOptions::from_str(&schema.url)
        .expect("parse FSM_POSTGRES_URL")
        .options([("search_path", &schema.name)]);
    // Small pools: tests run in parallel against one server.
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to FSM_POSTGRES_URL")
}

impl common::durable::Harness for PgSchema {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        PgStore::clone(&self.store)
    }

    async fn reopen(&self) -> PgStore {
        PgStore::from_pool(connect(&self.schema).await)
    }

    async fn expire_timers(&self) {
        sqlx::query("UPDATE fsm_timers SET due_at = 0")
            .execute(self.store.pool())
            .await
            .expect("expire timers");
    }

    async fn cleanup(self) {
        Fixture::cleanup(self).await;
    }
}

impl Fixture for PgSchema {
    type Store = PgStore;

    fn store(&self) -> Arc<PgStore> {
        Arc::clone(&self.store)
    }

    async fn cleanup(mut self) {
        self.store.pool().close().await;
        self.schema.drop_now().await;
    }
}

/// A schema, dropped with all it holds by `drop_now` or, if a test panicked, on drop.
struct Schema {
    url: String,
    name: String,
    dropped: bool,
}

impl Schema {
    async fn create(url: String) -> Self {
        let name = common::unique_name();
        // An identifier cannot be bound; this one is generated, never a caller's value.
        admin(&url, format!("CREATE SCHEMA {name}")).await;
        Schema {
            url,
            name,
            dropped: false,
        }
    }

    async fn drop_now(&mut self) {
        admin(&self.url, self.drop_sql()).await;
        self.dropped = true;
    }

    fn drop_sql(&self) -> String {
        format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if !self.dropped {
            let (url, sql) = (self.url.clone(), self.drop_sql());
            common::block_on_own_thread(async move { admin(&url, sql).await });
        }
    }
}

async fn admin(url: &str, sql: String) {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("connect to FSM_POSTGRES_URL");
    conn.execute(sql.as_str())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

mod optimistic {
    use super::*;
    fsm_core::store_conformance_tests!({
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::new(url, Concurrency::Optimistic)
    });
}

mod pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!({
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::new(url, Concurrency::Pessimistic)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effects_are_queued_once_with_their_transition() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let fixture = PgSchema::new(url, Concurrency::Optimistic).await;
    let store = fixture.store();
    let pool = store.pool().clone();
    common::effects_are_queued_once_with_their_transition(store, || async move {
        sqlx::query_as("SELECT version, seq, effect FROM fsm_outbox ORDER BY version, seq")
            .fetch_all(&pool)
            .await
            .expect("read the outbox")
    })
    .await;
    fixture.cleanup().await;
}

mod durable {
    use super::*;
    common::durable::durable_tests!({
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::new(url, Concurrency::Optimistic)
    });
}
