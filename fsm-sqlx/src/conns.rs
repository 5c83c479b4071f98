//! The connections a store keeps checked out between fires.
//!
//! sqlx 0.8 pings a connection every time it goes back to its pool
//! (`PoolConnection::return_to_pool`, with no option to turn it off) and, by default,
//! again when it is taken out. On PostgreSQL and MySQL each ping is a round trip, so a
//! fire that checked out a pooled connection paid one or two round trips besides its
//! own statements (pgbench pays none). A store therefore keeps a few connections out of
//! the pool after a fire that went well and hands them to the next fire directly.
//!
//! The pool still owns them (they count against its `max_connections`), so the cache
//! holds at most half the pool, leaving the other half to dispatchers, listings and the
//! locking path. A connection that took part in an error is never cached: it goes back
//! through the pool, whose ping closes it if it is broken. One that sat in the cache
//! for [`IDLE_PING`] or longer is pinged before use, as the pool would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Pool};

/// How long a cached connection may sit unused before it is pinged on its next use:
/// long enough that a busy store never pings, short enough that a server restart is
/// noticed before a fire uses a dead connection.
pub(crate) const IDLE_PING: Duration = Duration::from_secs(1);

/// Connections kept out of the pool between fires; clones share them.
pub struct ConnCache<D: Database> {
    shared: Arc<Shared<D>>,
}

struct Shared<D: Database> {
    idle: Mutex<Vec<(PoolConnection<D>, Instant)>>,
    /// Whether a task waits for the pool's close to give the cached connections back
    /// (`Pool::close` waits for every connection to return).
    watching: AtomicBool,
}

impl<D: Database> Drop for Shared<D> {
    fn drop(&mut self) {
        // A pooled connection goes back through a task of the runtime; a store dropped
        // after its runtime (at the end of `main`, say) closes them directly instead.
        if tokio::runtime::Handle::try_current().is_err() {
            let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
            for (conn, _) in idle.drain(..) {
                drop(conn.detach());
            }
        }
    }
}

impl<D: Database> std::fmt::Debug for ConnCache<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCache")
            .field("held", &self.held())
            .finish()
    }
}

impl<D: Database> Clone for ConnCache<D> {
    fn clone(&self) -> Self {
        ConnCache {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: Database> Default for ConnCache<D> {
    fn default() -> Self {
        ConnCache {
            shared: Arc::new(Shared {
                idle: Mutex::default(),
                watching: AtomicBool::new(false),
            }),
        }
    }
}

impl<D: Database> ConnCache<D> {
    /// A connection for one fire attempt: the most recently cached one, else one from
    /// `pool`.
    pub(crate) async fn take(&self, pool: &Pool<D>) -> sqlx::Result<PoolConnection<D>> {
        loop {
            let cached = self.idle().pop();
            let Some((mut conn, since)) = cached else {
                return pool.acquire().await;
            };
            if since.elapsed() < IDLE_PING || conn.ping().await.is_ok() {
                return Ok(conn);
            }
            // Broken while cached: closed without the pool's ping, and the next is tried.
            drop(conn.detach());
        }
    }

    /// Keeps `conn`, which finished its work without an error and holds no open
    /// transaction, for the next fire, or gives it back to `pool` when the cache holds
    /// half of the pool already.
    pub(crate) fn keep(&self, pool: &Pool<D>, conn: PoolConnection<D>) {
        if !self.shared.watching.swap(true, Ordering::AcqRel) {
            let (closed, shared) = (pool.close_event(), Arc::downgrade(&self.shared));
            tokio::spawn(async move {
                closed.await;
                if let Some(shared) = shared.upgrade() {
                    ConnCache { shared }.idle().clear();
                }
            });
        }
        let limit = pool.options().get_max_connections() as usize / 2;
        let mut idle = self.idle();
        if idle.len() < limit && !pool.is_closed() {
            idle.push((conn, Instant::now()));
            // A close that began since the check has been watched for already.
            if pool.is_closed() {
                idle.clear();
            }
        }
    }

    /// How many connections the cache holds out of the pool now.
    pub(crate) fn held(&self) -> usize {
        self.idle().len()
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(PoolConnection<D>, Instant)>> {
        // The vector is valid whatever a panicking holder did to it.
        self.shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
