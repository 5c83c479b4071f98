//! Waking dispatchers of other stores on the same database, so that an effect committed
//! in one process reaches a dispatcher in another without waiting for its poll.
//!
//! On PostgreSQL a store announces its commits with `NOTIFY` and listens with `LISTEN`,
//! both on channel [`CHANNEL`]; on SQLite and MySQL nothing crosses between stores, and
//! a dispatcher of another store finds the effects at its next poll.
//!
//! * Announcing: the commit path only records "effects of machine type M committed" in
//!   the store's [`PeerWakeups`] and wakes one notifier task per store (started at the
//!   first such commit), which sends `SELECT pg_notify(..)` on a pooled connection of
//!   its own. A `NOTIFY` inside the fire's transaction would make every committing fire
//!   queue on PostgreSQL's global notification lock; outside it, the task coalesces: one
//!   statement per burst, one notification per machine type in it.
//! * Listening: the first [`outbox_wakeup`](fsm_core::DurableStore::outbox_wakeup) of a
//!   store starts a listener task holding a
//!   [`PgListener`](sqlx::postgres::PgListener) (one connection of the pool, kept
//!   checked out), which wakes this store's dispatchers of the machine type named by
//!   each notification of another store on the same schema.
//!
//! What is lost, polling recovers: a failed `NOTIFY` is logged and dropped, and
//! notifications sent while the listener was reconnecting never arrive, so after every
//! (re)connection the listener wakes every dispatcher of the store once.
//!
//! Both tasks end when the last clone of the store is dropped or its pool is closed.

// The state below is the same for every dialect; only PostgreSQL's tasks read it.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio_util::sync::CancellationToken;

/// The channel of `LISTEN` and `NOTIFY`.
pub(crate) const CHANNEL: &str = "fsm_outbox";

/// One store's side of the wake-ups across stores (shared by its clones): what it has
/// to announce, and whether its tasks run. Dialects without notifications leave it
/// unused.
#[derive(Clone)]
pub struct PeerWakeups {
    shared: Arc<Shared>,
}

struct Shared {
    /// Names this store in its notifications, so that its own listener skips them (its
    /// dispatchers were woken in process already).
    sender: String,
    /// The machine types committed since the notifier last sent, once the notifier runs.
    announcing: OnceLock<Arc<Announcements>>,
    /// Whether the listener was started.
    listening: AtomicBool,
    /// Cancelled when the last clone of the store goes: ends both tasks.
    gone: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

/// The machine types waiting for the notifier, and its wake-up.
#[derive(Default)]
struct Announcements {
    machines: Mutex<Vec<&'static str>>,
    ready: tokio::sync::Notify,
}

impl Announcements {
    /// Adds `machine` unless it waits already; whether the notifier must be woken.
    fn add(&self, machine: &'static str) -> bool {
        let mut machines = self.machines.lock().unwrap_or_else(PoisonError::into_inner);
        if machines.contains(&machine) {
            return false;
        }
        machines.push(machine);
        machines.len() == 1
    }

    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.machines.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Default for PeerWakeups {
    fn default() -> Self {
        PeerWakeups {
            shared: Arc::new(Shared {
                sender: format!("{:016x}", rand::random::<u64>()),
                announcing: OnceLock::new(),
                listening: AtomicBool::new(false),
                gone: CancellationToken::new(),
            }),
        }
    }
}

impl std::fmt::Debug for PeerWakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerWakeups")
            .field("announcing", &self.shared.announcing.get().is_some())
            .field("listening", &self.shared.listening.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(feature = "postgres")]
pub(crate) use postgres::{announce, listen};

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use fsm_core::kit::OutboxWakeups;
    use sqlx::postgres::PgListener;
    use sqlx::{Pool, Postgres};

    use super::{Announcements, CHANNEL, PeerWakeups};

    /// One notification per machine type, each payload `<schema> <sender> <machine>`,
    /// the schema being the one the connection's `search_path` resolves to, as the
    /// store's tables do. Binds: sender, machine types.
    const NOTIFY: &str = "SELECT pg_notify($1, coalesce(current_schema(), '') || ' ' || $2 || ' ' || m) \
                          FROM unnest($3::text[]) AS m";

    /// The longest payload `NOTIFY` takes is 7999 bytes; a schema name is at most 63.
    const MAX_MACHINE_NAME: usize = 7999 - 63 - 1 - 16 - 1;

    /// The pause before connecting the listener again after a failure, doubled up to
    /// [`MAX_RECONNECT_PAUSE`].
    const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
    const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

    /// Effects of `machine` were committed through the store of `pool`: tells the other
    /// stores' listeners, from the store's notifier task (started here the first time).
    pub(crate) fn announce(pool: &Pool<Postgres>, peers: &PeerWakeups, machine: &'static str) {
        if machine.len() > MAX_MACHINE_NAME {
            return;
        }
        let shared = &peers.shared;
        let announcements = shared.announcing.get_or_init(|| {
            let announcements = Arc::new(Announcements::default());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(notifier(
                        pool.clone(),
                        shared.sender.clone(),
                        Arc::clone(&announcements),
                        shared.gone.clone(),
                    ));
                }
                Err(_) => tracing::warn!("no tokio runtime: other stores will not be notified"),
            }
            announcements
        });
        if announcements.add(machine) {
            announcements.ready.notify_one();
        }
    }

    /// Sends what was announced, one statement at a time: announcements made while one
    /// is in flight go together in the next.
    async fn notifier(
        pool: Pool<Postgres>,
        sender: String,
        announcements: Arc<Announcements>,
        gone: tokio_util::sync::CancellationToken,
    ) {
        let closed = pool.close_event();
        let mut closed = std::pin::pin!(closed);
        loop {
            let last = tokio::select! {
                () = announcements.ready.notified() => false,
                // What was committed just before the store went is still announced.
                () = gone.cancelled() => true,
                () = &mut closed => return,
            };
            let machines = announcements.take();
            if !machines.is_empty() {
                let sent = sqlx::query(NOTIFY)
                    .bind(CHANNEL)
                    .bind(&sender)
                    .bind(&machines)
                    .execute(&pool)
                    .await;
                match sent {
                    Ok(_) => {}
                    Err(sqlx::Error::PoolClosed) => return,
                    // The other stores' dispatchers find the effects at their next poll.
                    Err(err) => tracing::warn!(error = %err, ?machines, "NOTIFY failed"),
                }
            }
            if last {
                return;
            }
        }
    }

    /// Starts the store's listener, unless it runs already: it wakes `wakeups` of each
    /// machine type another store of the same schema announces.
    pub(crate) fn listen(pool: &Pool<Postgres>, peers: &PeerWakeups, wakeups: &OutboxWakeups) {
        let shared = &peers.shared;
        if shared.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shared.listening.store(false, Ordering::Release);
            tracing::warn!("no tokio runtime: dispatchers of other stores are not heard");
            return;
        };
        let listening = listener(
            pool.clone(),
            shared.sender.clone(),
            wakeups.clone(),
            shared.gone.clone(),
        );
        runtime.spawn(listening);
    }

    /// Connects, listens and wakes until the store is gone or its pool closed; after
    /// each connection it wakes every dispatcher once, for what was sent meanwhile.
    async fn listener(
        pool: Pool<Postgres>,
        me: String,
        wakeups: OutboxWakeups,
        gone: tokio_util::sync::CancellationToken,
    ) {
        let mut pause = RECONNECT_PAUSE;
        loop {
            let connected = tokio::select! {
                connected = connect(&pool) => connected,
                () = gone.cancelled() => return,
            };
            match connected {
                Ok((mut listener, schema)) => {
                    pause = RECONNECT_PAUSE;
                    wakeups.notify_all();
                    loop {
                        let received = tokio::select! {
                            received = listener.try_recv() => received,
                            () = gone.cancelled() => return,
                        };
                        match received {
                            Ok(Some(notification)) => {
                                if let Some(machine) =
                                    peer_machine(notification.payload(), &schema, &me)
                                {
                                    wakeups.notify(machine);
                                }
                            }
                            // The connection was lost and made again (`eager_reconnect`).
                            Ok(None) => wakeups.notify_all(),
                            Err(sqlx::Error::PoolClosed) => return,
                            Err(err) => {
                                tracing::warn!(error = %err, "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(err) => tracing::warn!(error = %err, "LISTEN failed"),
            }
            if pool.is_closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = gone.cancelled() => return,
                () = pool.close_event() => return,
            }
            pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
        }
    }

    /// A listening connection, and the schema its `search_path` resolves to.
    async fn connect(pool: &Pool<Postgres>) -> sqlx::Result<(PgListener, String)> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let schema: String = sqlx::query_scalar("SELECT coalesce(current_schema(), '')")
            .fetch_one(&mut listener)
            .await?;
        Ok((listener, schema))
    }

    /// The machine type of a payload `<schema> <sender> <machine>` sent by another store
    /// on `schema` (a schema name may hold spaces; the other two parts do not).
    pub(super) fn peer_machine<'p>(payload: &'p str, schema: &str, me: &str) -> Option<&'p str> {
        let mut parts = payload.rsplitn(3, ' ');
        let (machine, sender, from) = (parts.next()?, parts.next()?, parts.next()?);
        (from == schema && sender != me).then_some(machine)
    }

    #[cfg(test)]
    mod tests {
        use super::peer_machine;

        #[test]
        fn a_peer_on_the_same_schema_is_heard() {
            assert_eq!(peer_machine("shop a1 Order", "shop", "b2"), Some("Order"));
            assert_eq!(
                peer_machine("my shop a1 Order", "my shop", "b2"),
                Some("Order")
            );
        }

        #[test]
        fn own_and_foreign_schema_notifications_are_ignored() {
            assert_eq!(peer_machine("shop b2 Order", "shop", "b2"), None);
            assert_eq!(peer_machine("other a1 Order", "shop", "b2"), None);
            assert_eq!(peer_machine("Order", "shop", "b2"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Announcements;

    #[test]
    fn a_burst_is_announced_once_per_machine_type() {
        let announcements = Announcements::default();
        assert!(announcements.add("Order"), "the first wakes the notifier");
        assert!(!announcements.add("Order"), "a repeat waits with the first");
        assert!(
            !announcements.add("Invoice"),
            "the notifier is awake already"
        );
        assert_eq!(announcements.take(), ["Order", "Invoice"]);
        assert!(
            announcements.add("Order"),
            "after a send, the next wakes it again"
        );
    }
}
