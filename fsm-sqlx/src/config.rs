//! How a store serialises writers of one instance.

/// How a store serialises writers of one instance.
///
/// A SQLite file store's write lane reads under SQLite's write lock in every mode, with
/// no round trip to hold it across, so there the three modes fire alike; they differ
/// only for commands carrying a token, which fire through sqlx
/// ([`SqliteStore::open`](crate::SqliteStore::open)).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> fsm_core::Result<()> {
/// use fsm_sqlx::{Concurrency, SqliteStore};
/// let store = SqliteStore::memory().await?.with_concurrency(Concurrency::Pessimistic);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// Optimistic first; once a fire loses a race, its next attempt takes the row lock
    /// ([`Pessimistic`](Self::Pessimistic)) and cannot lose again. An uncontended fire
    /// costs what an optimistic one does, and a hot row never gives up with
    /// [`Conflict`](fsm_core::Error::Conflict): writers that collided queue on the lock.
    #[default]
    Adaptive,
    /// Read, decide, then compare-and-set on the version; a lost race is read and decided
    /// again under the store's retry policy, which may give up with
    /// [`Conflict`](fsm_core::Error::Conflict). Holds no lock across a round trip, which
    /// matters where locks are node-local (a Galera cluster).
    Optimistic,
    /// Lock the instance's row while deciding (`SELECT ... FOR UPDATE` on PostgreSQL and
    /// MySQL, `BEGIN IMMEDIATE` on SQLite): writers queue instead of retrying. Best for hot
    /// rows, at the price of holding a lock across a round trip on every fire.
    Pessimistic,
}
