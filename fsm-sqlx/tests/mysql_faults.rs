//! Bad stored data and failing connections give typed errors on MySQL and MariaDB,
//! never panics; a connection killed in the middle of a transition writes nothing of it:
//! the fault suite (`common/faults.rs`), each test in a database of its own. How MySQL is
//! broken (a column retyped, a connection killed) is `common::mysql`'s `FaultFixture`
//! and `KillFixture`.
//!
//! Reads the server from `FSM_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`;
//! without it the tests are skipped, or fail when `CI` is set.
#![cfg(feature = "mysql")]

mod common;

use common::mysql::MySqlDatabase;

common::faults::fault_tests!(MySqlDatabase);
common::faults::connection_kill_tests!(MySqlDatabase);
