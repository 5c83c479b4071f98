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
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

pruning_100k_done_rows_in_batches_while_transitions_apply!("SQLite", SqliteFile::new().await);
