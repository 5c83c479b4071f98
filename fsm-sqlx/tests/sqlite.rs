//! The store conformance suite on SQLite, in a file and in memory.
#![cfg(feature = "sqlite")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fsm_core::testing::Fixture;
use fsm_sqlx::{Concurrency, SqliteStore};

/// A database file of its own, removed afterwards.
struct SqliteFile {
    store: Arc<SqliteStore>,
    path: PathBuf,
}

impl SqliteFile {
    async fn new() -> Self {
        Self::with(Concurrency::Optimistic).await
    }

    async fn with(concurrency: Concurrency) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "fsm-test-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let store = SqliteStore::open(&path)
            .await
            .expect("open SQLite file")
            .with_concurrency(concurrency);
        store.migrate().await.expect("migrate");
        SqliteFile {
            store: Arc::new(store),
            path,
        }
    }
}

impl common::durable::Harness for SqliteFile {
    type Store = SqliteStore;

    fn store(&self) -> SqliteStore {
        SqliteStore::clone(&self.store)
    }

    async fn reopen(&self) -> SqliteStore {
        SqliteStore::open(&self.path)
            .await
            .expect("reopen SQLite file")
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

impl Fixture for SqliteFile {
    type Store = SqliteStore;

    fn store(&self) -> Arc<SqliteStore> {
        Arc::clone(&self.store)
    }

    async fn cleanup(self) {
        self.store.pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

mod file {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::new());
}

mod file_pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::with(Concurrency::Pessimistic));
}

mod memory {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory().await.expect("in-memory SQLite");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effects_are_queued_once_with_their_transition() {
    let fixture = SqliteFile::new().await;
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
    common::durable::durable_tests!(SqliteFile::new());
}
