//! Bad stored data and failing databases give typed errors on SQLite, never panics: the
//! fault suite (`common/faults.rs`), each test on a database file of its own, and a file
//! that cannot be opened.
#![cfg(feature = "sqlite")]

mod common;

use common::faults::assert_database_error_in;
use common::sqlite::SqliteFile;
use fsm_sqlx::SqliteStore;

common::faults::fault_tests!(SqliteFile);

#[tokio::test]
async fn unopenable_database_is_a_database_error_keeping_the_sqlx_source() {
    let path = std::env::temp_dir()
        .join("fsm-no-such-dir")
        .join("deeper")
        .join("x.db");
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_database_error_in(&err, "x.db");
}
