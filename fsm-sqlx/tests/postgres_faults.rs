//! Bad stored data and failing connections give typed errors on PostgreSQL, never
//! panics; a connection killed in the middle of a transition writes nothing of it: the
//! fault suite (`common/faults.rs`), each test in a schema of its own. How PostgreSQL is
//! broken (a column retyped, a backend terminated) is `common::pg`'s `FaultFixture` and
//! `KillFixture`.
//!
//! Reads the server from `FSM_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`;
//! without it the tests are skipped, or fail when `CI` is set.
#![cfg(feature = "postgres")]

mod common;

use common::pg::PgSchema;

common::faults::fault_tests!(PgSchema);
common::faults::connection_kill_tests!(PgSchema);
