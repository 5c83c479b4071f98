//! Durable [`fsm_core::Store`]s over sqlx: SQLite (feature `sqlite`, the default),
//! PostgreSQL (`postgres`) and MySQL/MariaDB (`mysql`).
//!
//! Every store keeps the same tables (`fsm_machines`, `fsm_transitions`, `fsm_outbox`),
//! created by `migrate()` from the migrations embedded per backend, and applies each
//! transition with a version-checked compare-and-set:
//!
//! ```sql
//! UPDATE fsm_machines SET state = ?, version = ?, context = ?
//! WHERE machine_type = ? AND machine_id = ? AND version = ?   -- 0 rows: another writer won
//! ```
//!
//! The history row (with the idempotency key under a unique index) and the outbox rows
//! go in the same transaction. Deciding what to write is fsm-core's job; a lost race is
//! read and decided again under the store's [`RetryPolicy`](fsm_core::RetryPolicy).
//! The three backends mirror each other file for file and pass one conformance suite.
#![forbid(unsafe_code)]

mod engine;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
