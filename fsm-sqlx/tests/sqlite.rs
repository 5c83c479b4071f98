//! The conformance and durable suites on SQLite, in a file and in memory.
#![cfg(feature = "sqlite")]

#[macro_use]
mod common;

use std::sync::Arc;

use common::sqlite::SqliteFile;
use fsm_sqlx::{Concurrency, SqliteStore};

mod file {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::new());
}

mod file_pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::with(Concurrency::Pessimistic));
}

mod file_adaptive {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::with(Concurrency::Adaptive));
}

mod file_grouped {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::grouped(Concurrency::Adaptive));
    fsm_core::durable_store_tests!(SqliteFile::grouped(Concurrency::Adaptive));
    common::group::group_commit_tests!(SqliteFile::grouped(Concurrency::Adaptive));
}

mod memory_grouped {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory()
            .await
            .expect("in-memory SQLite")
            .with_group_commit(fsm_sqlx::GroupCommit::new());
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

mod memory {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory()
            .await
            .expect("in-memory SQLite")
            .without_group_commit();
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

mod durable {
    use super::*;
    fsm_core::durable_store_tests!(SqliteFile::new());
    fsm_core::durable_restart_tests!(SqliteFile::new());
}

#[tokio::test]
async fn a_database_of_the_previous_release_upgrades_in_place() {
    use common::upgrade::{hex, previous_migrator, previous_rows, previous_rows_read_back};
    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    previous_migrator("sqlite")
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
    common::sqlite::remove_files(&path);
}

pruning_100k_done_rows_in_batches_while_transitions_apply!("SQLite", SqliteFile::new().await);

/// The database file of a WAL store grows only when a checkpoint copies pages into it,
/// and the store's own connections checkpoint only past 16,384 pages: a file that grows
/// after a few hundred writes was checkpointed by the store's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_checkpoints_its_wal_in_a_task_of_its_own() {
    use fsm_core::Store;
    use fsm_core::testing::{Order, OrderData};

    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    let backstop: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(store.pool())
        .await
        .expect("wal_autocheckpoint");
    assert_eq!(
        backstop, 16_384,
        "the store's connections leave checkpoints to the task"
    );
    let settled = std::fs::metadata(&path).expect("database file").len();
    let notes = "n".repeat(2_000);
    for n in 0..300 {
        let order = OrderData {
            notes: vec![notes.clone()],
            ..OrderData::default()
        };
        store
            .create::<Order>(&format!("o-{n}"), order)
            .await
            .expect("create");
    }
    let waited = std::time::Instant::now();
    while std::fs::metadata(&path).expect("database file").len() <= settled {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "nothing was checkpointed into the database file within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(store);
    common::sqlite::remove_files(&path);
}

/// Writes `rows` rows of 2 KB through `conn` (a few hundred WAL pages) and tells whether
/// the database file grew within a second: whether anything checkpointed them.
async fn checkpointed_after_writes(
    path: &std::path::Path,
    conn: &mut sqlx::SqliteConnection,
    rows: usize,
) -> bool {
    // Whatever was in flight when the task was told to stop has settled.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = std::fs::metadata(path).expect("database file").len();
    sqlx::query("CREATE TABLE IF NOT EXISTS scratch (body BLOB)")
        .execute(&mut *conn)
        .await
        .expect("scratch table");
    for _ in 0..rows {
        sqlx::query("INSERT INTO scratch (body) VALUES (randomblob(2000))")
            .execute(&mut *conn)
            .await
            .expect("scratch row");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::fs::metadata(path).expect("database file").len() > before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointing_task_ends_with_the_stores_last_clone() {
    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    drop(store);
    let mut conn = pool.acquire().await.expect("connection");
    assert!(
        !checkpointed_after_writes(&path, &mut conn, 300).await,
        "something checkpointed the database after the store was dropped"
    );
    drop(conn);
    pool.close().await;
    common::sqlite::remove_files(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointing_task_ends_when_the_stores_pool_closes() {
    use sqlx::{ConnectOptions, Connection};

    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    store.pool().close().await;
    // A connection of the test's own, which never checkpoints by itself.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .pragma("wal_autocheckpoint", "0")
        .connect()
        .await
        .expect("connection");
    assert!(
        !checkpointed_after_writes(&path, &mut conn, 300).await,
        "something checkpointed the database after the store's pool closed"
    );
    conn.close().await.expect("close");
    drop(store);
    common::sqlite::remove_files(&path);
}
