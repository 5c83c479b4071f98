//! Keeping the tables small: [`Retention`] says how long done work is kept, a
//! [`DurableStore`] deletes it in bounded batches, and a [`Pruner`] does so in the
//! background, like the [`Dispatcher`](crate::Dispatcher) delivers.
//!
//! What is pruned, and what never is:
//!
//! * **Done outbox rows** older than [`Retention::done_effects`]: their handler ran. A
//!   pending row is never pruned, and a dead letter stays until it is requeued or
//!   [discarded](DurableStore::discard) by its id.
//! * **Tokens** expired longer ago than [`Retention::expired_tokens`] (a consumed token
//!   is gone already: its key lives in the history).
//! * **History** only where the service asks for it, per machine type
//!   ([`Pruner::prune_finished`]): whole instances that reached a terminal state long
//!   enough ago and have nothing left in the outbox, with their history, timers and
//!   tokens. A retried command for such an instance then finds no instance
//!   ([`Error::NotFound`](crate::Error::NotFound)) instead of its `Duplicate`, and its
//!   id can be created again: choose the age well past any retry window.
//!
//! Every batch is one short statement (or, for finished instances, one short
//! transaction) of at most [`Retention::batch`] rows, on an index range: no table is
//! locked for long, and transitions keep applying while a pruner works.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use fsm_core::testing::{Order, OrderData, OrderEvent};
//! use fsm_core::{Command, DurableStore, MemoryStore, Pruner, Retention, Store};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! store.create::<Order>("o-1", OrderData::default()).await?;
//! store.fire("o-1", Command::<Order>::new(OrderEvent::Cancel)).await?;
//!
//! let pruner = Pruner::new(store.clone())
//!     .with_retention(Retention { done_effects: Duration::from_secs(7 * 86_400), ..Retention::default() })
//!     .prune_finished::<Order>(Duration::from_secs(90 * 86_400));
//! store.advance_clock(Duration::from_secs(91 * 86_400));
//! let pruned = pruner.prune_once().await?;
//! assert_eq!(pruned.finished_instances, 1);
//! assert!(store.load::<Order>("o-1").await.is_err(), "the cancelled order is gone");
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::durable::DurableStore;
use crate::error::Result;
use crate::machine::StateMachine;

/// How long done work is kept, and how many rows one statement deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Done outbox rows are kept this long after their handler succeeded (default 7
    /// days).
    pub done_effects: Duration,
    /// Tokens are kept this long after they expired (default 1 day), so a late request
    /// carrying one is told it expired rather than that it is unknown.
    pub expired_tokens: Duration,
    /// Rows (or instances) one statement deletes at most (default 1,000; 0 counts as 1).
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            done_effects: Duration::from_secs(7 * 86_400),
            expired_tokens: Duration::from_secs(86_400),
            batch: 1_000,
        }
    }
}

impl Retention {
    /// The batch size a store uses: at least one row.
    pub fn batch_size(&self) -> usize {
        self.batch.max(1)
    }
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Done outbox rows.
    pub done_effects: u64,
    /// Expired tokens.
    pub expired_tokens: u64,
    /// Finished instances, each with its history, timers, tokens and outbox rows.
    pub finished_instances: u64,
}

impl PruneReport {
    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        *self == PruneReport::default()
    }

    fn add(&mut self, other: PruneReport) {
        self.done_effects += other.done_effects;
        self.expired_tokens += other.expired_tokens;
        self.finished_instances += other.finished_instances;
    }
}

type PruneFinished<S> =
    for<'a> fn(&'a S, Duration, usize) -> Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>>;

/// Finished instances of one machine type, pruned once they are this old.
struct FinishedRule<S> {
    machine: &'static str,
    older_than: Duration,
    prune: PruneFinished<S>,
}

impl<S> Clone for FinishedRule<S> {
    fn clone(&self) -> Self {
        FinishedRule { ..*self }
    }
}

fn prune_finished_of<S: DurableStore, M: StateMachine>(
    store: &S,
    older_than: Duration,
    batch: usize,
) -> Pin<Box<dyn Future<Output = Result<u64>> + Send + '_>> {
    Box::pin(store.prune_finished::<M>(older_than, batch))
}

/// Deletes what [`Retention`] no longer keeps, batch after batch, until nothing is left
/// to delete; [`run`](Pruner::run) does so every [`interval`](Pruner::with_interval).
///
/// See the [module documentation](self) for what is pruned.
pub struct Pruner<S> {
    store: S,
    retention: Retention,
    interval: Duration,
    pause: Duration,
    finished: Vec<FinishedRule<S>>,
}

impl<S: Clone> Clone for Pruner<S> {
    fn clone(&self) -> Self {
        Pruner {
            store: self.store.clone(),
            retention: self.retention,
            interval: self.interval,
            pause: self.pause,
            finished: self.finished.clone(),
        }
    }
}

impl<S> fmt::Debug for Pruner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let finished: Vec<_> = self
            .finished
            .iter()
            .map(|rule| (rule.machine, rule.older_than))
            .collect();
        f.debug_struct("Pruner")
            .field("retention", &self.retention)
            .field("interval", &self.interval)
            .field("pause", &self.pause)
            .field("finished", &finished)
            .finish_non_exhaustive()
    }
}

impl<S: DurableStore> Pruner<S> {
    /// A pruner with [`Retention::default`], running every minute and pausing 10 ms
    /// between batches; it prunes no history until asked to.
    pub fn new(store: S) -> Self {
        Pruner {
            store,
            retention: Retention::default(),
            interval: Duration::from_secs(60),
            pause: Duration::from_millis(10),
            finished: Vec::new(),
        }
    }

    /// Replaces the retention.
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How often [`run`](Self::run) prunes.
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The pause between two batches, which leaves the database to other writers.
    #[must_use]
    pub fn with_pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Also deletes instances of `M` that have been in a terminal state for longer than
    /// `older_than` and have nothing pending or dead in the outbox, with their history
    /// ([`DurableStore::prune_finished`]). Without this call no history of `M` is ever
    /// pruned.
    #[must_use]
    pub fn prune_finished<M: StateMachine>(mut self, older_than: Duration) -> Self {
        self.finished
            .retain(|rule| rule.machine != M::DEFINITION.name);
        self.finished.push(FinishedRule {
            machine: M::DEFINITION.name,
            older_than,
            prune: prune_finished_of::<S, M>,
        });
        self
    }

    /// Prunes batch after batch, pausing between them, until a pass deletes less than a
    /// full batch of each kind; returns the totals.
    ///
    /// # Errors
    ///
    /// Backend errors; what earlier batches deleted stays deleted.
    pub async fn prune_once(&self) -> Result<PruneReport> {
        self.prune_until(None).await
    }

    /// [`prune_once`](Self::prune_once), stopping after the batch in progress once
    /// `shutdown` is cancelled.
    async fn prune_until(&self, shutdown: Option<&CancellationToken>) -> Result<PruneReport> {
        let batch = self.retention.batch_size();
        let full = u64::try_from(batch).unwrap_or(u64::MAX);
        let mut total = PruneReport::default();
        let mut done_work = false;
        while !done_work {
            let mut report = self.store.prune(&self.retention).await?;
            done_work = report.done_effects < full && report.expired_tokens < full;
            for rule in &self.finished {
                let pruned = (rule.prune)(&self.store, rule.older_than, batch).await?;
                done_work &= pruned < full;
                report.finished_instances += pruned;
            }
            crate::observe::pruned(&report);
            total.add(report);
            done_work |= shutdown.is_some_and(CancellationToken::is_cancelled);
            if !done_work {
                tokio::time::sleep(self.pause).await;
            }
        }
        if !total.is_empty() {
            tracing::info!(
                done_effects = total.done_effects,
                expired_tokens = total.expired_tokens,
                finished_instances = total.finished_instances,
                "pruned"
            );
        }
        Ok(total)
    }

    /// Prunes every [interval](Self::with_interval) until `shutdown` is cancelled; a
    /// batch in progress finishes first. Backend errors are logged and retried at the
    /// next interval.
    ///
    /// # Errors
    ///
    /// Never returns an error today; the `Result` leaves room for fatal conditions.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.prune_until(Some(&shutdown)).await {
                tracing::warn!(error = %err, "prune failed; retrying at the next interval");
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        Ok(())
    }
}
