//! The outbox dispatcher: effects recorded with a transition, handled after it commits.
//!
//! Actions emit effects; the store writes them in the transition's commit as rows with a
//! stable [`EffectId`] `(machine type, id, version, index)`, never again for a
//! `Duplicate`. A [`Dispatcher`] claims due rows under a lease (`FOR UPDATE SKIP LOCKED`
//! on PostgreSQL and MySQL, SQLite's single writer), runs the handler, and marks them
//! done. A failed handler is retried with exponential backoff; after
//! [`DispatchOptions::max_attempts`] the row becomes a [`DeadLetter`]. A crashed
//! worker's lease expires and its rows are claimed again, so delivery is at least once:
//! pass the id downstream as its idempotency key to make it effectively once.
//!
//! # Examples
//!
//! ```no_run
//! # use fsm_core::testing::{Order, OrderEffect};
//! # async fn demo(store: fsm_sqlx::SqliteStore) -> fsm_core::Result<()> {
//! use fsm_sqlx::{Delivery, Dispatcher};
//! use tokio_util::sync::CancellationToken;
//!
//! let shutdown = CancellationToken::new();
//! let dispatcher = Dispatcher::new(store);
//! let handler = |delivery: Delivery<OrderEffect>| async move {
//!     // e.g. charge the card with `delivery.id` as the processor's idempotency key
//!     println!("{}: {:?}", delivery.id, delivery.effect);
//!     Ok::<(), fsm_core::error::BoxError>(())
//! };
//! dispatcher.run::<Order, _, _>(handler, shutdown.clone()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use fsm_core::error::BoxError;
use fsm_core::store::now_ms;
use fsm_core::{Result, StateMachine};

use crate::DurableStore;
use crate::engine::{RawEffect, Settlement};

/// The stable identity of one effect: the transition that emitted it and its position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectId {
    /// Machine type.
    pub machine: &'static str,
    /// Instance id.
    pub id: String,
    /// Version of the transition that emitted the effect.
    pub version: u64,
    /// Position among that transition's effects, from 0.
    pub index: u32,
}

impl fmt::Display for EffectId {
    /// `Order/o-1/3/0`: usable as a downstream idempotency key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.machine, self.id, self.version, self.index
        )
    }
}

impl EffectId {
    fn of(machine: &'static str, row: &RawEffect) -> Self {
        EffectId {
            machine,
            id: row.machine_id.clone(),
            version: u64::try_from(row.version).unwrap_or_default(),
            index: u32::try_from(row.seq).unwrap_or_default(),
        }
    }
}

/// One effect handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery<E> {
    /// The effect's stable id; the same on every attempt.
    pub id: EffectId,
    /// The effect.
    pub effect: E,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// An effect whose handler kept failing.
#[derive(Debug, Clone)]
pub struct DeadLetter<E> {
    /// The effect's id.
    pub id: EffectId,
    /// The effect, unless its stored JSON no longer decodes.
    pub effect: Option<E>,
    /// The stored JSON.
    pub raw: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last handler error.
    pub last_error: Option<String>,
}

impl<E: serde::de::DeserializeOwned> DeadLetter<E> {
    pub(crate) fn from_row(machine: &'static str, row: RawEffect) -> Self {
        DeadLetter {
            id: EffectId::of(machine, &row),
            effect: serde_json::from_str(&row.effect).ok(),
            attempts: u32::try_from(row.attempts).unwrap_or_default(),
            last_error: row.last_error,
            raw: row.effect,
        }
    }
}

/// How a [`Dispatcher`] claims and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchOptions {
    /// Concurrent worker tasks.
    pub workers: usize,
    /// Rows claimed per round trip.
    pub batch: u32,
    /// How long a claim is exclusive; a handler running longer may see its effect claimed
    /// again by another worker.
    pub lease: Duration,
    /// Attempts before an effect is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt up to `max_backoff`.
    pub backoff: Duration,
    /// Upper bound of the retry delay.
    pub max_backoff: Duration,
    /// Pause when nothing is due.
    pub idle_poll: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            workers: 1,
            batch: 32,
            lease: Duration::from_secs(30),
            max_attempts: 8,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            idle_poll: Duration::from_millis(100),
        }
    }
}

impl DispatchOptions {
    fn retry_delay(&self, attempts: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.max_backoff)
    }
}

/// What one [`Dispatcher::dispatch_once`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Handled and marked done.
    pub done: usize,
    /// Failed, to be retried after a backoff.
    pub retried: usize,
    /// Failed for the last time, or undecodable: dead-lettered.
    pub dead: usize,
}

/// Claims outbox rows and runs a handler on each.
#[derive(Debug, Clone)]
pub struct Dispatcher<S> {
    store: S,
    options: DispatchOptions,
}

impl<S: DurableStore> Dispatcher<S> {
    /// A dispatcher with [`DispatchOptions::default`].
    pub fn new(store: S) -> Self {
        Dispatcher {
            store,
            options: DispatchOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: DispatchOptions) -> Self {
        self.options = options;
        self
    }

    /// Claims one batch of due effects of machine type `M` and handles them in order.
    ///
    /// # Errors
    ///
    /// Backend errors while claiming or settling; handler errors are not errors here but
    /// retries or dead letters.
    pub async fn dispatch_once<M, H, Fut>(&self, handler: &H) -> Result<DispatchReport>
    where
        M: StateMachine,
        H: Fn(Delivery<M::Effect>) -> Fut,
        Fut: Future<Output = std::result::Result<(), BoxError>>,
    {
        let machine = M::DEFINITION.name;
        let now = now_ms() as i64;
        let lease_until = now.saturating_add(self.options.lease.as_millis() as i64);
        let rows = self
            .store
            .claim_effects(machine, now, lease_until, i64::from(self.options.batch))
            .await?;
        let mut report = DispatchReport {
            claimed: rows.len(),
            ..DispatchReport::default()
        };
        for row in rows {
            let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
            let settlement = match serde_json::from_str::<M::Effect>(&row.effect) {
                Err(e) => Err(format!(
                    "effect does not decode as {}: {e}",
                    type_name::<M>()
                )),
                Ok(effect) => {
                    let delivery = Delivery {
                        id: EffectId::of(machine, &row),
                        effect,
                        attempt: attempts,
                    };
                    handler(delivery).await.map_err(|e| e.to_string())
                }
            };
            let error;
            let settlement = match settlement {
                Ok(()) => {
                    report.done += 1;
                    Settlement::Done {
                        at: now_ms() as i64,
                    }
                }
                Err(e) => {
                    error = e;
                    tracing::warn!(machine, id = %row.machine_id, version = row.version, seq = row.seq, attempts, error = %error, "effect handler failed");
                    if attempts >= self.options.max_attempts
                        || error.starts_with("effect does not decode")
                    {
                        report.dead += 1;
                        Settlement::Dead { error: &error }
                    } else {
                        report.retried += 1;
                        let delay = self.options.retry_delay(attempts).as_millis() as i64;
                        Settlement::Retry {
                            at: (now_ms() as i64).saturating_add(delay),
                            error: &error,
                        }
                    }
                }
            };
            if !self.store.settle_effect(machine, &row, settlement).await? {
                // Our lease expired and another worker claimed the row: its outcome counts.
                tracing::warn!(machine, id = %row.machine_id, version = row.version, seq = row.seq, "outbox lease lost before settling");
            }
        }
        Ok(report)
    }

    /// Runs [`DispatchOptions::workers`] workers until `shutdown` is cancelled. Handlers
    /// in flight when it is cancelled finish, and their rows are settled, before this
    /// returns. Backend errors are logged and retried after
    /// [`DispatchOptions::idle_poll`], so a database restart does not stop dispatch.
    ///
    /// # Errors
    ///
    /// Never returns an error today; the `Result` leaves room for fatal conditions.
    pub async fn run<M, H, Fut>(self, handler: H, shutdown: CancellationToken) -> Result<()>
    where
        M: StateMachine,
        S: 'static,
        H: Fn(Delivery<M::Effect>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let this = Arc::new(self);
        let handler = Arc::new(handler);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..this.options.workers.max(1) {
            let (this, handler, shutdown) =
                (Arc::clone(&this), Arc::clone(&handler), shutdown.clone());
            workers.spawn(async move {
                while !shutdown.is_cancelled() {
                    let idle = match this.dispatch_once::<M, _, _>(&*handler).await {
                        Ok(report) => report.claimed == 0,
                        Err(err) => {
                            tracing::warn!(error = %err, "outbox claim failed; retrying");
                            true
                        }
                    };
                    if idle {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(this.options.idle_poll) => {}
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        Ok(())
    }
}

fn type_name<M: StateMachine>() -> &'static str {
    M::DEFINITION.effect.unwrap_or("()")
}
