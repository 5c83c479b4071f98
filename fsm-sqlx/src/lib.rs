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

#[doc(hidden)]
pub mod engine;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod timers;

#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;

#[cfg(feature = "mysql")]
impl DurableStore for MySqlStore {}
#[cfg(feature = "postgres")]
pub use postgres::PgStore;

#[cfg(feature = "postgres")]
impl DurableStore for PgStore {}
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

#[cfg(feature = "sqlite")]
impl DurableStore for SqliteStore {}

pub use outbox::{DeadLetter, Delivery, DispatchOptions, Dispatcher, EffectId};
pub use timers::TimerWorker;

use std::future::Future;
use std::time::Duration;

use fsm_core::store::{check_id, now_ms};
use fsm_core::{Error, Result, StateMachine, Store, Transition};

/// How a store serialises writers of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// Read, decide, then compare-and-set on the version; a lost race is read and decided
    /// again under the store's retry policy. Best when instances are rarely contended.
    #[default]
    Optimistic,
    /// Lock the instance's row while deciding (`SELECT ... FOR UPDATE` on PostgreSQL and
    /// MySQL, `BEGIN IMMEDIATE` on SQLite): writers queue instead of retrying. Best for hot
    /// rows, at the price of holding a lock across a round trip.
    Pessimistic,
}

/// What the sqlx stores add to [`Store`]: single-use tokens, durable timers and the
/// outbox's dead letters. Implemented by every store of this crate.
pub trait DurableStore: Store + Clone + engine::Backend {
    /// Issues a random 128-bit single-use token bound to instance `id`, valid for `ttl`.
    /// A command carrying it ([`Command::with_token`](fsm_core::Command::with_token))
    /// consumes it in the transition's commit.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the instance does not exist; backend errors.
    fn issue_token<M: StateMachine>(
        &self,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<String>> + Send {
        async move {
            check_id::<M>(id)?;
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let token = hex::encode(bytes);
            let expires_at = now_ms().saturating_add(ttl.as_millis() as u64) as i64;
            if self
                .insert_token(M::DEFINITION.name, id, &token, expires_at)
                .await?
            {
                Ok(token)
            } else {
                Err(Error::NotFound {
                    machine: M::DEFINITION.name,
                    id: id.to_owned(),
                })
            }
        }
    }

    /// Fires up to `limit` due timers of machine type `M`, each as a compare-and-set at
    /// the version it was armed with; returns the transitions that applied (timers of
    /// instances that moved on are dropped).
    ///
    /// # Errors
    ///
    /// Backend errors; [`Error::Corrupt`] for a timer row naming no timer edge.
    fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<(String, Transition<M>)>>> + Send {
        async move {
            let now = now_ms() as i64;
            let lease_until = now.saturating_add(lease.as_millis() as i64);
            let due = self
                .claim_timers(M::DEFINITION.name, now, lease_until, limit as i64)
                .await?;
            let mut fired = Vec::new();
            for timer in &due {
                if let Some(transition) = engine::fire_timer::<Self, M>(self, timer).await? {
                    fired.push((timer.machine_id.clone(), transition));
                }
            }
            Ok(fired)
        }
    }

    /// Effects of machine type `M` whose handler failed `max_attempts` times, oldest first.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn dead_letters<M: StateMachine>(
        &self,
    ) -> impl Future<Output = Result<Vec<DeadLetter<M::Effect>>>> + Send {
        async move {
            let rows = self.dead_effects(M::DEFINITION.name).await?;
            Ok(rows
                .into_iter()
                .map(|row| DeadLetter::from_row(M::DEFINITION.name, row))
                .collect())
        }
    }

    /// Makes a dead letter claimable again with a fresh attempt count; `false` when `id`
    /// is not a dead letter.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn requeue(&self, id: &EffectId) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let (version, index) = (id.version as i64, id.index as i32);
            self.requeue_effect(id.machine, &id.id, version, index, now_ms() as i64)
                .await
        }
    }
}
