//! [`IntakeWorker`]: claims pending submissions, applies them through the store's
//! `fire`, records the outcomes.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::CancellationToken;

use fsm_core::kit::{deadline, now_ms};
use fsm_core::{Command, Error, Outcome, Result, StateMachine, Store};

use super::sql::{self, ClaimedRow, Settled};
use super::{Intake, failure, key_from_stored};
use crate::dialect::Dialect;
use crate::store::detached;

/// Applies the submissions of one [`Intake`]: claims a batch under a lease (skipping
/// rows other workers hold), applies each instance's rows in order (instances
/// concurrently) with the store's `fire`, and records the outcomes in one go.
///
/// Several workers, in one process or many, share the work; an instance's rows are
/// never applied by two of them at once, and never out of order.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use fsm_core::testing::{Order, OrderData, OrderEvent};
/// use fsm_core::{Command, Store};
/// use tokio_util::sync::CancellationToken;
///
/// let store = fsm_sqlx::SqliteStore::memory().await?;
/// store.migrate().await?;
/// store.create::<Order>("o-1", OrderData::default()).await?;
/// let intake = store.intake::<Order>();
///
/// let shutdown = CancellationToken::new();
/// let worker = tokio::spawn(intake.worker().run(shutdown.clone()));
/// intake.submit("o-1", Command::new(OrderEvent::Cancel).with_key("c-1")).await?;
/// while intake.pending().await? > 0 {
///     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
/// }
/// shutdown.cancel();
/// worker.await.unwrap()?;
/// assert_eq!(store.history::<Order>("o-1").await?.len(), 1);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub struct IntakeWorker<D: Dialect, M: StateMachine> {
    intake: Intake<D, M>,
}

impl<D: Dialect, M: StateMachine> Clone for IntakeWorker<D, M> {
    fn clone(&self) -> Self {
        IntakeWorker {
            intake: self.intake.clone(),
        }
    }
}

impl<D: Dialect, M: StateMachine> std::fmt::Debug for IntakeWorker<D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeWorker")
            .field("intake", &self.intake)
            .finish()
    }
}

/// What one [`IntakeWorker::run_once`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntakeReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Recorded [`Status::Applied`](super::Status::Applied).
    pub applied: usize,
    /// Recorded [`Status::Duplicate`](super::Status::Duplicate).
    pub duplicate: usize,
    /// Recorded [`Status::Failed`](super::Status::Failed).
    pub failed: usize,
    /// Left pending after a transient error, to be tried after the retry delay (with
    /// their instance's later rows).
    pub deferred: usize,
    /// Given back unapplied: an earlier row of their instance was not in this claim.
    pub waiting: usize,
    /// Outcomes not recorded because the lease had expired and another claim took the
    /// rows (its outcome counts).
    pub lost: usize,
}

/// What applying one row came to.
enum Applied {
    Settled(Settled),
    /// A transient error: try again later.
    Deferred,
}

impl<D: Dialect, M: StateMachine> IntakeWorker<D, M> {
    /// A worker for `intake`, with its options.
    pub fn new(intake: Intake<D, M>) -> Self {
        IntakeWorker { intake }
    }

    /// Claims one batch and applies it; what it did.
    ///
    /// # Errors
    ///
    /// Backend errors while claiming or recording outcomes (the rows stay pending and
    /// are claimed again once their lease expires). Failed commands are not errors here
    /// but recorded outcomes.
    ///
    /// # Examples
    ///
    /// See [`Intake`](super).
    pub async fn run_once(&self) -> Result<IntakeReport> {
        let store = &self.intake.store;
        let options = &self.intake.options;
        let machine = M::DEFINITION.name;
        let now = now_ms();
        let (pool, lease_until) = (store.pool.clone(), deadline(now, options.lease));
        let limit = options.claim_batch;
        // A claim runs to its end even if this pass is dropped: no transaction left open.
        let claimed =
            detached(
                async move { sql::claim(&pool, machine, now as i64, lease_until, limit).await },
            )
            .await?;
        let mut report = IntakeReport {
            claimed: claimed.len(),
            ..IntakeReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        let behind = sql::behind(&store.pool, machine, &claimed).await?;
        let (waiting, claimed): (Vec<ClaimedRow>, Vec<ClaimedRow>) = claimed
            .into_iter()
            .partition(|row| behind.contains(&row.seq));
        if !waiting.is_empty() {
            let waiting: Vec<&ClaimedRow> = waiting.iter().collect();
            sql::release(&store.pool, machine, &waiting).await?;
            report.waiting = waiting.len();
        }
        let mut groups: Vec<Vec<ClaimedRow>> = Vec::new();
        for row in claimed {
            // Claimed in seq order: each instance's rows stay in order in its group.
            match groups
                .iter_mut()
                .find(|g| g[0].machine_id == row.machine_id)
            {
                Some(group) => group.push(row),
                None => groups.push(vec![row]),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for group in groups {
            let store = store.clone();
            tasks.spawn(async move { apply_group::<D, M>(&store, group).await });
        }
        let mut settled = Vec::new();
        let mut deferred = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let results = joined.map_err(|e| Error::WorkerDied {
                machine,
                worker: "intake",
                detail: e.to_string(),
            })?;
            for (row, applied) in results {
                match applied {
                    Applied::Settled(s) => {
                        match s.status {
                            sql::APPLIED => report.applied += 1,
                            sql::DUPLICATE => report.duplicate += 1,
                            _ => report.failed += 1,
                        }
                        settled.push(s);
                    }
                    Applied::Deferred => deferred.push(row),
                }
            }
        }
        let written = sql::settle(&store.pool, machine, &settled, now_ms() as i64).await?;
        report.lost = settled.len().saturating_sub(written as usize);
        if report.lost > 0 {
            tracing::warn!(
                machine,
                lost = report.lost,
                "intake leases lost before recording outcomes"
            );
        }
        let retry_at = deadline(now_ms(), options.retry_delay);
        for row in &deferred {
            sql::retry_at(&store.pool, machine, row, retry_at).await?;
        }
        report.deferred = deferred.len();
        Ok(report)
    }

    /// Runs passes until `shutdown` is cancelled; a pass in progress finishes first.
    /// Pauses [`IntakeOptions::idle_poll`](super::IntakeOptions::idle_poll) when nothing
    /// is pending, or less when a submit through this intake wakes it. Backend errors
    /// are logged and retried after the pause, so a database restart does not stop it.
    ///
    /// # Errors
    ///
    /// Never returns an error today; the `Result` leaves room for fatal conditions.
    ///
    /// # Examples
    ///
    /// See [`IntakeWorker`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let machine = M::DEFINITION.name;
        let recorded = std::sync::Arc::clone(&self.intake.shared.recorded);
        while !shutdown.is_cancelled() {
            let woken = recorded.notified();
            let busy = match self.run_once().await {
                Ok(report) => report.applied + report.duplicate + report.failed > 0,
                Err(err) => {
                    tracing::warn!(machine, error = %err, "intake pass failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.intake.options.idle_poll) => {}
                () = woken => {}
            }
        }
        Ok(())
    }
}

/// Applies one instance's claimed rows in order, stopping at the first transient error
/// (the rest wait behind it).
async fn apply_group<D: Dialect, M: StateMachine>(
    store: &crate::SqlStore<D>,
    group: Vec<ClaimedRow>,
) -> Vec<(ClaimedRow, Applied)> {
    let mut results = Vec::with_capacity(group.len());
    let mut stopped = false;
    for row in group {
        if stopped {
            results.push((row, Applied::Deferred));
            continue;
        }
        let applied = apply_row::<D, M>(store, &row).await;
        stopped = matches!(applied, Applied::Deferred);
        results.push((row, applied));
    }
    results
}

async fn apply_row<D: Dialect, M: StateMachine>(
    store: &crate::SqlStore<D>,
    row: &ClaimedRow,
) -> Applied {
    let machine = M::DEFINITION.name;
    let settled = |status, outcome| {
        Applied::Settled(Settled {
            seq: row.seq,
            claims: row.claims,
            status,
            outcome,
        })
    };
    let failed = |err: &Error| {
        tracing::info!(machine, id = %row.machine_id, error = %err, "submitted command failed");
        settled(sql::FAILED, failure::to_json(err))
    };
    let event = match serde_json::from_str::<M::Event>(&row.event) {
        Ok(event) => event,
        Err(e) => {
            let poison = Error::Corrupt {
                table: sql::TABLE,
                machine,
                id: row.machine_id.clone(),
                detail: format!(
                    "submitted event does not decode as {}'s event: {e}",
                    machine
                ),
            };
            tracing::error!(machine, id = %row.machine_id, error = %poison, "poison submission");
            return failed(&poison);
        }
    };
    let command = Command::<M> {
        event,
        key: Some(key_from_stored(&row.idem_key)),
    };
    let fired = CatchUnwind(Box::pin(store.fire(&row.machine_id, command))).await;
    let transition_json = |t: &fsm_core::Transition<M>| serde_json::to_string(t).ok();
    match fired {
        Ok(Ok(Outcome::Applied(t))) => match transition_json(&t) {
            Some(json) => settled(sql::APPLIED, json),
            None => Applied::Deferred,
        },
        Ok(Ok(Outcome::Duplicate(t))) => {
            // An earlier claim of this row may have committed it before dying.
            let ours =
                row.attempts > 1 && i64::try_from(t.at_ms).unwrap_or(i64::MAX) >= row.submitted_at;
            let status = if ours { sql::APPLIED } else { sql::DUPLICATE };
            match transition_json(&t) {
                Some(json) => settled(status, json),
                None => Applied::Deferred,
            }
        }
        Ok(Err(err))
            if err.is_transient()
                || matches!(
                    err,
                    Error::WorkerDied {
                        worker: "write",
                        ..
                    }
                ) =>
        {
            tracing::warn!(machine, id = %row.machine_id, error = %err, "submitted command deferred");
            Applied::Deferred
        }
        Ok(Err(err)) => failed(&err),
        Err(panic) => failed(&Error::WorkerDied {
            machine,
            worker: "intake",
            detail: format!(
                "the command's action panicked: {}",
                panic_message(panic.as_ref())
            ),
        }),
    }
}

/// A panic's message, when it is a string.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

/// Polls a future, turning a panic inside it (an action's, re-raised by the store) into
/// an `Err`: retrying would panic again, so it is recorded, and the worker goes on.
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
