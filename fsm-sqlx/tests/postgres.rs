//! The conformance and durable suites on PostgreSQL, each test in a schema of its own.
//!
//! Reads the server from `FSM_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`; without it the tests are
//! skipped, or fail when `CI` is set.
#![cfg(feature = "postgres")]

#[macro_use]
mod common;

use common::pg::PgSchema;
use fsm_sqlx::Concurrency;

const URL_VAR: &str = "FSM_POSTGRES_URL";

/// A fixture on the server, or an early return (a skip) when its URL is unset.
macro_rules! on_server {
    ($concurrency:expr) => {{
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::new(url, $concurrency)
    }};
}

mod optimistic {
    use super::*;
    fsm_core::store_conformance_tests!(on_server!(Concurrency::Optimistic));
}

mod pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(on_server!(Concurrency::Pessimistic));
}

mod adaptive {
    use super::*;
    fsm_core::store_conformance_tests!(on_server!(Concurrency::Adaptive));
}

/// As `on_server!`, with group commit.
macro_rules! grouped {
    ($concurrency:expr) => {{
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::grouped(url, $concurrency)
    }};
}

mod grouped {
    use super::*;
    fsm_core::store_conformance_tests!(grouped!(Concurrency::Adaptive));
    fsm_core::durable_store_tests!(grouped!(Concurrency::Adaptive));
    common::group::group_commit_tests!(grouped!(Concurrency::Adaptive));
}

mod durable {
    use super::*;
    fsm_core::durable_store_tests!(on_server!(Concurrency::Optimistic));
    fsm_core::durable_restart_tests!(on_server!(Concurrency::Optimistic));
}

/// Every transaction SERIALIZABLE: the server aborts one of two racing transactions
/// with SQLSTATE 40001 (or 40P01), which the store must retry as a lost race.
macro_rules! serializable {
    ($concurrency:expr) => {{
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        PgSchema::serializable(url, $concurrency)
    }};
}

mod serializable_optimistic {
    use super::*;
    fsm_core::store_conformance_tests!(serializable!(Concurrency::Optimistic));
}

mod serializable_pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(serializable!(Concurrency::Pessimistic));
}

mod serializable_adaptive {
    use super::*;
    fsm_core::store_conformance_tests!(serializable!(Concurrency::Adaptive));
}

mod serializable_durable {
    use super::*;
    fsm_core::durable_store_tests!(serializable!(Concurrency::Optimistic));
}

#[tokio::test]
async fn a_database_of_the_previous_release_upgrades_in_place() {
    use common::upgrade::{hex, previous_migrator, previous_rows, previous_rows_read_back};
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let schema = common::pg::Schema::create(url).await;
    let store = fsm_sqlx::PgStore::from_pool(common::pg::pool(&schema).await);
    previous_migrator("postgres")
        .await
        .run(store.pool())
        .await
        .expect("old migrations");
    for sql in previous_rows(|b| format!("'\\x{}'::bytea", hex(b))) {
        sqlx::query(&sql).execute(store.pool()).await.expect(&sql);
    }
    store.migrate().await.expect("upgrade");
    previous_rows_read_back(&store).await;
    store.pool().close().await;
}

pruning_100k_done_rows_in_batches_while_transitions_apply!(
    "PostgreSQL",
    on_server!(Concurrency::Optimistic).await
);
