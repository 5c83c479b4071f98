//! The conformance and durable suites on MySQL or MariaDB, each test in a database of its own.
//!
//! Reads the server from `FSM_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`; without it the tests are
//! skipped, or fail when `CI` is set.
#![cfg(feature = "mysql")]

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

/// 100,000 done outbox rows pruned in batches of 1,000 while transitions keep applying
/// (the rows are made done long ago with one `UPDATE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_100k_done_rows_in_batches_while_transitions_apply() {
    use fsm_core::testing::DurableFixture;
    use fsm_core::testing::durable::pruning_100k_done_rows_in_batches_while_transitions_apply as spec;
    let fixture = on_server!(Concurrency::Optimistic).await;
    let store = DurableFixture::store(&fixture);
    let pool = store.pool().clone();
    let load = spec(store, || async move {
        sqlx::query("UPDATE fsm_outbox SET done_at = 1 WHERE machine_type = 'Meter'")
            .execute(&pool)
            .await
            .expect("age the meter's outbox rows");
    })
    .await;
    eprintln!("MariaDB: {load}");
    DurableFixture::cleanup(fixture).await;
}
