//! How a store serialises writers of one instance.

/// How a store serialises writers of one instance.
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
    /// Read, decide, then compare-and-set on the version; a lost race is read and decided
    /// again under the store's retry policy. Best when instances are rarely contended.
    #[default]
    Optimistic,
    /// Lock the instance's row while deciding (`SELECT ... FOR UPDATE` on PostgreSQL and
    /// MySQL, `BEGIN IMMEDIATE` on SQLite): writers queue instead of retrying. Best for hot
    /// rows, at the price of holding a lock across a round trip.
    Pessimistic,
}
