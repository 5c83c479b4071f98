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

    /// Another store on the same database over a pool of its own, as a second process
    /// would open it (`--remote-dispatcher`): only the database can tell it of commits.
    fn second_store(&self, cfg: &Config) -> impl Future<Output = Res<Self::Store>> + Send;

    /// Closes a [`second_store`](Db::second_store)'s pool.
    fn close_second(store: Self::Store) -> impl Future<Output = ()> + Send;

    /// The database file, for a backend that has one (SQLite).
    fn file(&self) -> Option<&std::path::Path> {
        None
    }

    /// Inserts instances `ids` in state `Paid` at version 0.
    fn seed(&self, ids: &[String]) -> impl Future<Output = Res<()>> + Send;

    /// One transition by hand: the store's read and write statements.
    fn baseline(&self, id: &str, key: &str, note: &str) -> impl Future<Output = Res<()>> + Send;

    /// Drops the database.
    fn close(self) -> impl Future<Output = Res<()>> + Send;
}

/// The pool of a run: the stores' own options (`SqlStore::pool_options`), with
/// `--pool`'s size, or with sqlx's ping on every acquire under `--ping`.
pub(crate) fn pool_options<D: fsm_sqlx::Dialect>(cfg: &Config) -> sqlx::pool::PoolOptions<D> {
    let options = if cfg.ping {
        sqlx::pool::PoolOptions::new()
    } else {
        fsm_sqlx::SqlStore::<D>::pool_options()
    };
    options.max_connections(cfg.pool.unwrap_or(8))
}

/// A store over a new pool with `pool`'s connect options (PostgreSQL: its
/// `search_path`) and the run's pool options.
pub(crate) async fn second_store<D: fsm_sqlx::Dialect>(
    cfg: &Config,
    pool: &sqlx::Pool<D>,
) -> Res<fsm_sqlx::SqlStore<D>> {
    let options = (*pool.connect_options()).clone();
    let pool = pool_options::<D>(cfg).connect_with(options).await?;
    Ok(fsm_sqlx::SqlStore::from_pool(pool))
}

/// `store` with or without group commit when the run says (`--grouped`, `--alone`,
/// `--group-commit`), else as its dialect's default.
pub(crate) fn grouping<D: fsm_sqlx::Dialect>(
    cfg: &Config,
    store: fsm_sqlx::SqlStore<D>,
) -> fsm_sqlx::SqlStore<D> {
    match cfg.grouped {
        Some(true) => store.with_group_commit(fsm_sqlx::GroupCommit::new()),
        Some(false) => store.without_group_commit(),
        None => store,
    }
}

/// Drops the run's database whether or not the run succeeded.
pub(crate) async fn closing<D: Db, T>(db: Arc<D>, result: Res<T>) -> Res<T> {
    let db = Arc::into_inner(db).ok_or("database still shared")?;
    let closed = db.close().await;
    let value = result?;
    closed?;
    Ok(value)
}
