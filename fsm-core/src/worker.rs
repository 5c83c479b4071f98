//! The background workers of a [`DurableStore`]: the outbox [`Dispatcher`] and the
//! [`TimerWorker`], both one poll-until-cancelled loop.
//!
//! A [`Dispatcher`] claims due outbox rows under a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL and MySQL, SQLite's single writer, a lock in memory), runs the handler, and
//! marks them done. A failed handler is retried with exponential backoff; after
//! [`DispatchOptions::max_attempts`] the row becomes a [`DeadLetter`](crate::DeadLetter).
//! A crashed worker's lease expires and its rows are claimed again, so delivery is at
//! least once: pass the id downstream as its idempotency key to make it effectively once.
//!
//! # Examples
//!
//! ```
//! use fsm_core::testing::{Order, OrderData, OrderEffect, OrderEvent, Payment};
//! use fsm_core::{Command, Delivery, Dispatcher, MemoryStore, Store};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let order = OrderData { total_cents: 500, ..OrderData::default() };
//! store.create::<Order>("o-1", order).await?;
//! store.fire("o-1", Command::new(OrderEvent::Pay(Payment { amount_cents: 500 }))).await?;
//!
//! let handler = |delivery: Delivery<OrderEffect>| async move {
//!     // e.g. charge the card with `delivery.id` as the processor's idempotency key
//!     assert_eq!(delivery.id.to_string(), "Order/o-1/1/0");
//!     Ok::<(), fsm_core::BoxError>(())
//! };
//! let report = Dispatcher::new(store).dispatch_once::<Order, _, _>(&handler).await?;
//! assert_eq!(report.done, 1);
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::durable::{ClaimedEffect, Delivery, DurableStore, Settlement};
use crate::error::{BoxError, Error, Result};
use crate::machine::StateMachine;
use crate::observe;
use crate::wakeup::OutboxWakeup;

/// What one pass of a worker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// It did work: look again at once.
    Busy,
    /// Nothing to do: wait `idle`, or less when woken.
    Idle,
    /// The backend failed: wait the whole `idle`, whatever wakes.
    Failed,
}

/// Runs `pass` until `shutdown` is cancelled, pausing `idle` whenever a pass found
/// nothing to do, or until `wakeup` fires (a commit made during the pass included). A
/// pass in progress finishes first.
async fn poll_until_cancelled<F, Fut>(
    shutdown: &CancellationToken,
    idle: Duration,
    mut wakeup: Option<OutboxWakeup>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Pass>,
{
    while !shutdown.is_cancelled() {
        if let Some(wakeup) = wakeup.as_mut() {
            wakeup.mark_seen();
        }
        let outcome = pass().await;
        if outcome == Pass::Busy {
            continue;
        }
        let woken = async {
            match wakeup.as_mut() {
                Some(wakeup) if outcome == Pass::Idle => wakeup.wait().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(idle) => {}
            () = woken => {}
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
    /// Pause when nothing is due; a store that offers an
    /// [`outbox_wakeup`](crate::DurableStore::outbox_wakeup) cuts it short when effects
    /// are committed, so this is the fallback (for retries coming due, other processes).
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
    /// The backoff after failed attempt number `attempts` (from 1): `backoff` doubled per
    /// attempt before it, at most `max_backoff`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = fsm_core::DispatchOptions::default();
    /// assert_eq!(options.retry_delay(1), Duration::from_millis(200));
    /// assert_eq!(options.retry_delay(3), Duration::from_millis(800));
    /// assert_eq!(options.retry_delay(30), options.max_backoff);
    /// ```
    pub fn retry_delay(&self, attempts: u32) -> Duration {
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

/// Why an effect was not handled; the kind, never the text, decides dead-lettering.
enum Failure {
    /// The stored JSON is not an `M::Effect` (any more): retrying cannot help.
    Undecodable(String),
    /// The handler returned an error.
    Handler(String),
}

/// Claims outbox rows and runs a handler on each.
#[derive(Debug, Clone)]
pub struct Dispatcher<S> {
    store: S,
    options: DispatchOptions,
    /// When the outbox gauges were last counted (ms since the epoch; 0: never), shared
    /// by clones so several workers count once per interval.
    gauged_at: Arc<std::sync::atomic::AtomicU64>,
}

/// How often a dispatcher counts the outbox for `fsm_outbox_pending` / `fsm_outbox_dead`.
const GAUGE_INTERVAL_MS: u64 = 10_000;

impl<S: DurableStore> Dispatcher<S> {
    /// A dispatcher with [`DispatchOptions::default`].
    pub fn new(store: S) -> Self {
        Dispatcher {
            store,
            options: DispatchOptions::default(),
            gauged_at: Arc::default(),
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
    /// A handler that panics counts as a failed attempt (retried, then dead-lettered),
    /// like one that returns an error.
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
        self.dispatch_batch::<M, H, Fut>(handler, None).await
    }

    /// [`dispatch_once`](Self::dispatch_once), starting no handler once `shutdown` is
    /// cancelled: the rows not started are released for other workers.
    async fn dispatch_batch<M, H, Fut>(
        &self,
        handler: &H,
        shutdown: Option<&CancellationToken>,
    ) -> Result<DispatchReport>
    where
        M: StateMachine,
        H: Fn(Delivery<M::Effect>) -> Fut,
        Fut: Future<Output = std::result::Result<(), BoxError>>,
    {
        let machine = M::DEFINITION.name;
        let batch = usize::try_from(self.options.batch).unwrap_or(usize::MAX);
        let rows = self
            .store
            .claim_effects(machine, self.options.lease, batch)
            .await?;
        let mut report = DispatchReport {
            claimed: rows.len(),
            ..DispatchReport::default()
        };
        let now = crate::kit::now_ms();
        for row in &rows {
            observe::effect_claimed(
                machine,
                Duration::from_millis(now.saturating_sub(row.available_at_ms)),
            );
        }
        // Handled rows are marked done together at the end of the batch (or before
        // a failure is settled, so that the outbox records them in the order handled).
        let mut done = Vec::new();
        for row in rows {
            if shutdown.is_some_and(CancellationToken::is_cancelled) {
                self.store
                    .settle_effect(machine, &row, Settlement::Release)
                    .await?;
                continue;
            }
            let outcome = self.handle::<M, _, _>(handler, &row).await;
            let settlement = match &outcome {
                Ok(()) => {
                    report.done += 1;
                    observe::effect_settled(machine, "done");
                    done.push(row);
                    continue;
                }
                Err(failure) => {
                    let (error, dead) = match failure {
                        Failure::Undecodable(error) => (error, true),
                        Failure::Handler(error) => {
                            (error, row.attempts >= self.options.max_attempts)
                        }
                    };
                    tracing::warn!(machine, id = %row.machine_id, version = row.version, seq = row.seq, attempts = row.attempts, error = %error, dead, "effect not handled");
                    if dead {
                        report.dead += 1;
                        Settlement::Dead { error }
                    } else {
                        report.retried += 1;
                        Settlement::Retry {
                            delay: self.options.retry_delay(row.attempts),
                            error,
                        }
                    }
                }
            };
            observe::effect_settled(
                machine,
                match settlement {
                    Settlement::Dead { .. } => "dead",
                    _ => "retry",
                },
            );
            self.settle_done(machine, &mut done).await?;
            if !self.store.settle_effect(machine, &row, settlement).await? {
                // Our lease expired and another worker claimed the row: its outcome counts.
                tracing::warn!(machine, id = %row.machine_id, version = row.version, seq = row.seq, "outbox lease lost before settling");
            }
        }
        self.settle_done(machine, &mut done).await?;
        Ok(report)
    }

    /// Marks the handled rows in `done` done, in one go, and empties it.
    async fn settle_done(
        &self,
        machine: &'static str,
        done: &mut Vec<ClaimedEffect>,
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let settled = self.store.settle_done(machine, done).await?;
        if settled < done.len() {
            // Those leases expired and other workers claimed the rows: their outcome counts.
            tracing::warn!(
                machine,
                lost = done.len() - settled,
                "outbox leases lost before settling"
            );
        }
        done.clear();
        Ok(())
    }

    /// Sets the outbox gauges, at most once per interval across this dispatcher's workers.
    async fn count_outbox(&self, machine: &'static str) {
        use std::sync::atomic::Ordering;
        let now = crate::kit::now_ms();
        let last = self.gauged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < GAUGE_INTERVAL_MS
            || self
                .gauged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match self.store.outbox_depth(machine).await {
            Ok(depth) => observe::outbox_depth(machine, depth.pending, depth.dead),
            Err(err) => tracing::warn!(machine, error = %err, "outbox count failed"),
        }
    }

    async fn handle<M, H, Fut>(&self, handler: &H, row: &ClaimedEffect) -> Result<(), Failure>
    where
        M: StateMachine,
        H: Fn(Delivery<M::Effect>) -> Fut,
        Fut: Future<Output = std::result::Result<(), BoxError>>,
    {
        let effect = serde_json::from_str::<M::Effect>(&row.effect).map_err(|e| {
            let effect = M::DEFINITION.effect.unwrap_or("()");
            Failure::Undecodable(format!("effect does not decode as {effect}: {e}"))
        })?;
        let delivery = Delivery {
            id: row.id(M::DEFINITION.name),
            effect,
            attempt: row.attempts,
        };
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| handler(delivery)))
            .map(|future| CatchUnwind(Box::pin(future)));
        let result = match handled {
            Ok(future) => future.await,
            Err(panic) => Err(panic),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Handler(e.to_string())),
            Err(panic) => Err(Failure::Handler(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
        }
    }

    /// Runs [`DispatchOptions::workers`] workers until `shutdown` is cancelled. Handlers
    /// in flight when it is cancelled finish, and their rows are settled, before this
    /// returns; no handler starts after it, and the rest of a claimed batch is released
    /// for other workers. Backend errors are logged and retried after
    /// [`DispatchOptions::idle_poll`], so a database restart does not stop dispatch; a
    /// handler's panic is a failed attempt.
    ///
    /// # Errors
    ///
    /// [`Error::WorkerDied`] when a worker task dies anyway (a panic outside the handler);
    /// the other workers are stopped.
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
                let wakeup = this.store.outbox_wakeup(M::DEFINITION.name);
                poll_until_cancelled(&shutdown, this.options.idle_poll, wakeup, || async {
                    this.count_outbox(M::DEFINITION.name).await;
                    match this.dispatch_batch::<M, _, _>(&*handler, Some(&shutdown)).await {
                        Ok(report) if report.claimed == 0 => Pass::Idle,
                        Ok(_) => Pass::Busy,
                        Err(err) => {
                            tracing::warn!(machine = M::DEFINITION.name, error = %err, "outbox claim failed; retrying");
                            Pass::Failed
                        }
                    }
                })
                .await;
            });
        }
        join_workers::<M>(workers, "outbox").await
    }
}

/// Waits for every worker; the first that died ends the others and is the error.
async fn join_workers<M: StateMachine>(
    mut workers: tokio::task::JoinSet<()>,
    worker: &'static str,
) -> Result<()> {
    while let Some(joined) = workers.join_next().await {
        if let Err(err) = joined {
            workers.abort_all();
            let detail = if err.is_panic() {
                panic_message(err.into_panic().as_ref())
            } else {
                err.to_string()
            };
            tracing::error!(machine = M::DEFINITION.name, worker, %detail, "worker died");
            return Err(Error::WorkerDied {
                machine: M::DEFINITION.name,
                worker,
                detail,
            });
        }
    }
    Ok(())
}

/// A panic's message, when it is a string.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

/// Polls a future, turning a panic inside it into an `Err` with the panic's payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Polls for due timers of one machine type and fires them.
///
/// A store arms a timer row when a machine enters a state with timer edges, stamped with
/// the version it entered at (creation arms those of the initial state). The worker
/// fires each due timer as an ordinary compare-and-set transition at that version, so a
/// machine that has moved on turns its old timers into no-ops. A worker that dies
/// mid-batch leaves leased rows that another claims once the lease expires.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fsm_core::testing::{EXPIRY, Order, OrderData, OrderState};
/// use fsm_core::{DurableStore, MemoryStore, Store, TimerWorker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// store.create::<Order>("o-1", OrderData::default()).await?;
/// store.advance_clock(EXPIRY); // a unit test need not wait 30 minutes
/// let fired = store.fire_due_timers::<Order>(10, Duration::from_secs(30)).await?;
/// assert_eq!(fired[0].1.to, OrderState::Expired);
/// # let _worker = TimerWorker::new(store);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct TimerWorker<S> {
    store: S,
    /// Timers claimed per round trip.
    pub batch: usize,
    /// How long a claim is exclusive.
    pub lease: Duration,
    /// Pause when nothing is due.
    pub poll: Duration,
}

impl<S: DurableStore> TimerWorker<S> {
    /// A worker claiming 64 timers at a time, polling every 200 ms.
    pub fn new(store: S) -> Self {
        TimerWorker {
            store,
            batch: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
        }
    }

    /// Fires due timers of `M` until `shutdown` is cancelled; a batch in progress
    /// finishes first. Backend errors are logged and retried after `poll`.
    ///
    /// # Errors
    ///
    /// Never returns an error today; the `Result` leaves room for fatal conditions.
    pub async fn run<M: StateMachine>(self, shutdown: CancellationToken) -> Result<()> {
        poll_until_cancelled(&shutdown, self.poll, None, || async {
            match self
                .store
                .fire_due_timers::<M>(self.batch, self.lease)
                .await
            {
                Ok(fired) => {
                    for (id, transition) in &fired {
                        tracing::debug!(machine = M::DEFINITION.name, id, %transition, "timer fired");
                    }
                    if fired.is_empty() { Pass::Idle } else { Pass::Busy }
                }
                Err(err) => {
                    tracing::warn!(machine = M::DEFINITION.name, error = %err, "timer pass failed; retrying");
                    Pass::Failed
                }
            }
        })
        .await;
        Ok(())
    }
}
