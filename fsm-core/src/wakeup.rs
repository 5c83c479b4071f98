//! Waking dispatchers when effects are committed, so that an effect does not wait for
//! the next poll: a store keeps an [`OutboxWakeups`] and calls
//! [`notify`](OutboxWakeups::notify) after each commit that wrote outbox rows; a
//! [`Dispatcher`](crate::Dispatcher) holds an [`OutboxWakeup`] from
//! [`DurableStore::outbox_wakeup`](crate::DurableStore::outbox_wakeup) and waits on it
//! between polls. Polling stays the fallback: a wake-up only shortens the wait.
//!
//! # Examples
//!
//! ```
//! use fsm_core::kit::OutboxWakeups;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let wakeups = OutboxWakeups::new();
//! let mut wakeup = wakeups.subscribe("Order");
//! wakeups.notify("Invoice"); // another machine type: not this wake-up's business
//! wakeups.notify("Order");
//! wakeup.wait().await; // returns at once: an Order effect was committed
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The wake-ups of one store (shared by its clones), one channel per machine type.
/// Notifying a machine type nobody waits for costs a lock and a lookup.
#[derive(Clone, Default)]
pub struct OutboxWakeups {
    machines: Arc<Mutex<HashMap<&'static str, watch::Sender<u64>>>>,
}

impl OutboxWakeups {
    /// No subscribers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Effects of `machine` were committed (or made due again): wakes every
    /// [`OutboxWakeup`] of it.
    pub fn notify(&self, machine: &str) {
        let machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = machines.get(machine) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every [`OutboxWakeup`] of every machine type: for when notifications may
    /// have been lost (a listening connection made again, say), so that each dispatcher
    /// looks at once instead of at its next poll.
    pub fn notify_all(&self) {
        let machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in machines.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A wake-up for the effects of `machine`.
    pub fn subscribe(&self, machine: &'static str) -> OutboxWakeup {
        let mut machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = machines
            .entry(machine)
            .or_insert_with(|| watch::channel(0).0);
        OutboxWakeup(sender.subscribe())
    }

    /// Whether anything in this process waits for effects of `machine`.
    pub fn is_watched(&self, machine: &str) -> bool {
        let machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        machines
            .get(machine)
            .is_some_and(|sender| sender.receiver_count() > 0)
    }
}

impl fmt::Debug for OutboxWakeups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(machines.keys()).finish()
    }
}

/// One dispatcher's wake-up: [`wait`](Self::wait) returns at the first notification
/// since the last [`mark_seen`](Self::mark_seen) (or `wait`), so a commit made while the
/// dispatcher was busy is not missed.
#[derive(Debug)]
pub struct OutboxWakeup(watch::Receiver<u64>);

impl OutboxWakeup {
    /// Forgets the notifications so far; call it before looking for work.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Returns at the next notification not yet seen; never, once the store is gone.
    pub async fn wait(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notification_during_the_search_for_work_is_not_missed() {
        let wakeups = OutboxWakeups::new();
        let mut wakeup = wakeups.subscribe("Order");
        wakeup.mark_seen();
        wakeups.notify("Order");
        tokio::time::timeout(Duration::from_secs(1), wakeup.wait())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn seen_and_foreign_notifications_do_not_wake() {
        let wakeups = OutboxWakeups::new();
        let mut wakeup = wakeups.subscribe("Order");
        wakeups.notify("Order");
        wakeup.mark_seen();
        wakeups.notify("Invoice");
        let waited = tokio::time::timeout(Duration::from_millis(50), wakeup.wait()).await;
        assert!(waited.is_err(), "woken by a seen or foreign notification");
        assert!(wakeups.is_watched("Order") && !wakeups.is_watched("Invoice"));
    }

    #[tokio::test]
    async fn notify_all_wakes_every_machine_type() {
        let wakeups = OutboxWakeups::new();
        let (mut order, mut invoice) = (wakeups.subscribe("Order"), wakeups.subscribe("Invoice"));
        order.mark_seen();
        invoice.mark_seen();
        wakeups.notify_all();
        for wakeup in [&mut order, &mut invoice] {
            tokio::time::timeout(Duration::from_secs(1), wakeup.wait())
                .await
                .expect("woken");
        }
    }
}
