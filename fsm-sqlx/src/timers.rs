//! [`TimerWorker`]: fires due `after(..)` timers.
//!
//! A store arms a timer row when a machine enters a state with timer edges, stamped with
//! the version it entered at (creation arms those of the initial state). The worker
//! fires each due timer as an ordinary compare-and-set transition at that version, so a
//! machine that has moved on turns its old timers into no-ops. Rows live in the
//! database, so timers survive restarts; a worker that dies mid-batch leaves leased
//! rows that another claims once the lease expires.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use fsm_core::{Result, StateMachine};

use crate::DurableStore;

/// Polls for due timers of one machine type and fires them.
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
        while !shutdown.is_cancelled() {
            let idle = match self
                .store
                .fire_due_timers::<M>(self.batch, self.lease)
                .await
            {
                Ok(fired) => {
                    for (id, transition) in &fired {
                        tracing::debug!(machine = M::DEFINITION.name, id, %transition, "timer fired");
                    }
                    fired.is_empty()
                }
                Err(err) => {
                    tracing::warn!(machine = M::DEFINITION.name, error = %err, "timer pass failed; retrying");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(self.poll) => {}
                }
            }
        }
        Ok(())
    }
}
