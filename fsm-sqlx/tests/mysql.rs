//! The conformance and durable suites on MySQL or MariaDB, each test in a database of its own.
//!
//! Reads the server from `FSM_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`; without it the tests are
//! skipped, or fail when `CI` is set.
#![cfg(feature = "mysql")]

#[macro_use]
mod common;

use common::mysql::MySqlDatabase;
use fsm_sqlx::Concurrency;

const URL_VAR: &str = "FSM_MYSQL_URL";

/// A fixture on the server, or an early return (a skip) when its URL is unset.
macro_rules! on_server {
    ($concurrency:expr) => {{
        let Some(url) = common::server_url(URL_VAR) else {
            return;
        };
        MySqlDatabase::new(url, $concurrency)
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
        MySqlDatabase::grouped(url, $concurrency)
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

#[tokio::test]
async fn a_database_of_the_previous_release_upgrades_in_place() {
    use common::upgrade::{hex, previous_migrator, previous_rows, previous_rows_read_back};
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let database = common::mysql::Database::create(url).await;
    let store = fsm_sqlx::MySqlStore::from_pool(common::mysql::pool(&database).await);
    previous_migrator("mysql")
        .await
        .run(store.pool())
        .await
        .expect("old migrations");
    for sql in previous_rows(|b| format!("X'{}'", hex(b))) {
        sqlx::query(&sql).execute(store.pool()).await.expect(&sql);
    }
    store.migrate().await.expect("upgrade");
    previous_rows_read_back(&store).await;
    store.pool().close().await;
}

pruning_100k_done_rows_in_batches_while_transitions_apply!(
    "MariaDB",
    on_server!(Concurrency::Optimistic).await
);
