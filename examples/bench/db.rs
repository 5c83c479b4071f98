//! One run's database, as each backend module provides it: a fresh, migrated database,
//! the fsm store on it, seeding, the baseline's transition by hand, and dropping it after
//! the run whatever its outcome.

use std::future::Future;
use std::sync::Arc;

use fsm_core::RetryPolicy;
use fsm_sqlx::Concurrency;

use crate::Res;
use crate::cli::Config;

/// One run's database.
pub(crate) trait Db: Sized + Send + Sync + 'static {
    type Store: fsm_sqlx::DurableStore;

    /// The statements the baseline issues are in the store's source files.
    fn check(cfg: &Config) -> Res<()>;

    /// A fresh, migrated database whose store runs in `mode` and retries with `retry`.
    fn open(
        cfg: &Config,
        run: usize,
        mode: Concurrency,
        retry: RetryPolicy,
    ) -> impl Future<Output = Res<Self>> + Send;

    fn store(&self) -> &Arc<Self::Store>;

    /// Inserts instances `ids` in state `Paid` at version 0.
    fn seed(&self, ids: &[String]) -> impl Future<Output = Res<()>> + Send;

    /// One transition by hand: the store's read and write statements.
    fn baseline(&self, id: &str, key: &str, note: &str) -> impl Future<Output = Res<()>> + Send;

    /// Drops the database.
    fn close(self) -> impl Future<Output = Res<()>> + Send;
}

/// Drops the run's database whether or not the run succeeded.
pub(crate) async fn closing<D: Db, T>(db: Arc<D>, result: Res<T>) -> Res<T> {
    let db = Arc::into_inner(db).ok_or("database still shared")?;
    let closed = db.close().await;
    let value = result?;
    closed?;
    Ok(value)
}
