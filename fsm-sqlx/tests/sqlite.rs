//! The conformance and durable suites on SQLite, in a file and in memory.
#![cfg(feature = "sqlite")]

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

mod memory {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory().await.expect("in-memory SQLite");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

mod durable {
    use super::*;
    fsm_core::durable_store_tests!(SqliteFile::new());
    fsm_core::durable_restart_tests!(SqliteFile::new());
}
