//! The store conformance suite on MySQL or MariaDB, each test in a database of its own.
//!
//! Reads the server from `FSM_MYSQL_URL`, e.g.
//! `mysql://root@127.0.0.1:3306/test`; without it the tests are skipped, or fail
//! when `CI` is set.
#![cfg(feature = "mysql")]

mod common;

use std::str::FromStr;
use std::sync::Arc;

use fsm_core::testing::Fixture;
use fsm_sqlx::{Concurrency, MySqlStore};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySqlConnection};

const URL_VAR: &str = "FSM_MYSQL_URL";

/// A store on a fresh database, dropped afterwards.
struct MySqlDatabase {
    store: Arc<MySqlStore>,
    database: Database,
}

impl MySqlDatabase {
    async fn new(url: String, concurrency: Concurrency) -> Self {
        let database = Database::create(url).await;
        let pool = connect(&database).await;
        let store = MySqlStore::from_pool(pool).with_concurrency(concurrency);
        store.migrate().await.expect("migrate");
        MySqlDatabase {
            store: Arc::new(store),
            database,
        }
    }
}

/// A pool on the test's own database.
async fn connect(database: &Database) -> sqlx::MySqlPool {
    let options = MySqlConnectOptions::from_str(&database.url)
        .expect("parse FSM_MYSQL_URL")
        .database(&database.name);
    // Small pools: tests run in parallel against one server.
    MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to FSM_MYSQL_URL")
}

impl common::durable::Harness for MySqlDatabase {
    type Store = MySqlStore;

    fn store(&self) -> MySqlStore {
        MySqlStore::clone(&self.store)
    }

    async fn reopen(&self) -> MySqlStore {
        MySqlStore::from_pool(connect(&self.database).await)
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

impl Fixture for MySqlDatabase {
    type Store = MySqlStore;

    fn store(&self) -> Arc<MySqlStore> {
        Arc::clone(&self.store)
    }

    async fn cleanup(mut self) {
        self.store.pool().close().await;
        self.database.drop_now().await;
    }
}

/// A database, dropped with all it holds by `drop_now` or, if a test panicked, on drop.
struct Database {
    url: String,
    name: String,
    dropped: bool,
}

impl Database {
    async fn create(url: String) -> Self {
        let name = common::unique_name();
        // An identifier cannot be bound; this one is generated, never a caller's value.
        admin(&url, format!("CREATE DATABASE {name}")).await;
        Database {
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
        format!("DROP DATABASE IF EXISTS {}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !self.dropped {
            let (url, sql) = (self.url.clone(), self.drop_sql());
            common::block_on_own_thread(async move { admin(&url, sql).await });
        }
    }
}

async fn admin(url: &str, sql: String) {
    let mut conn = MySqlConnection::connect(url)
        .await
        .expect("connect to FSM_MYSQL_URL");
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
        MySqlDatabase::new(url, Concurrency::Optimistic)
    });
}

mod pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!({
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        MySqlDatabase::new(url, Concurrency::Pessimistic)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effects_are_queued_once_with_their_transition() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let fixture = MySqlDatabase::new(url, Concurrency::Optimistic).await;
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
        MySqlDatabase::new(url, Concurrency::Optimistic)
    });
}
