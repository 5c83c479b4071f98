//! Durable [`fsm_core::Store`]s over sqlx: SQLite (feature `sqlite`, the default),
//! PostgreSQL (`postgres`) and MySQL/MariaDB (`mysql`).
//!
//! One store type, [`SqlStore<D>`](SqlStore), generic over its [`Dialect`], with the
//! aliases [`SqliteStore`], [`PgStore`] and [`MySqlStore`]. Every dialect keeps the same
//! tables (`fsm_machines`, `fsm_transitions`, `fsm_outbox`, `fsm_timers`, `fsm_tokens`),
//! created by [`SqlStore::migrate`] from the migrations embedded per dialect, and applies
//! each transition with a version-checked compare-and-set:
//!
//! ```sql
//! UPDATE fsm_machines SET state = ?, version = ?, context = ?
//! WHERE machine_type = ? AND machine_id = ? AND version = ?   -- 0 rows: another writer won
//! ```
//!
//! The history row (with the idempotency key under a unique index), the outbox rows and
//! the new state's timers go in the same transaction. Deciding what to write is
//! fsm-core's job; a lost race is read and decided again under the store's
//! [`RetryPolicy`](fsm_core::RetryPolicy). Tokens, timers and the outbox are
//! fsm-core's [`DurableStore`] contract, drained by its
//! [`Dispatcher`] and [`TimerWorker`] (re-exported here).
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use fsm_core::testing::{Order, OrderData};
//! use fsm_core::Store;
//!
//! let store = fsm_sqlx::SqliteStore::memory().await?;
//! store.migrate().await?;
//! assert!(store.create::<Order>("o-1", OrderData::default()).await?.is_new());
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "sqlite")]
mod checkpoint;
mod config;
mod conns;
mod dialect;
mod durable;
mod engine;
pub mod intake;
#[cfg(feature = "sqlite")]
mod lane;
mod notify;
mod store;

pub use config::Concurrency;
pub use dialect::Dialect;
pub use engine::batch::GroupCommit;
pub use intake::{Intake, IntakeWorker};
pub use store::SqlStore;

pub use fsm_core::{
    DeadLetter, Delivery, DispatchOptions, DispatchReport, Dispatcher, DurableStore, EffectId,
    TimerWorker,
};

/// A [`SqlStore`] on SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteStore = SqlStore<sqlx::Sqlite>;
/// A [`SqlStore`] on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgStore = SqlStore<sqlx::Postgres>;
/// A [`SqlStore`] on MySQL or MariaDB.
#[cfg(feature = "mysql")]
pub type MySqlStore = SqlStore<sqlx::MySql>;
