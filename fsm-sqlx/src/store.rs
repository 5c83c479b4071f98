//! [`SqlStore`]: the one store type, generic over its [`Dialect`].

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use sqlx::Pool;
use sqlx::pool::PoolOptions;

use fsm_core::kit::{OutboxWakeup, OutboxWakeups, Prepared, SnapshotSeal, now_ms};
use fsm_core::observe;
use fsm_core::{
    Command, Created, Error, Outcome, Page, Query, Result, RetryPolicy, Snapshot, StateCounts,
    StateMachine, Store, Transition, VerifyReport,
};
use tokio_util::sync::DropGuard;
use tracing::Instrument;

use crate::Concurrency;
use crate::conns::{ConnCache, IDLE_PING};
use crate::dialect::{ConnectOptionsOf, Dialect, db_error};
use crate::engine;
use crate::engine::batch::{Batchers, GroupCommit, Settled};
use crate::engine::hot::HotRows;
#[cfg(feature = "sqlite")]
use crate::lane::Fired;
use crate::notify::PeerWakeups;

/// A durable [`Store`] on database `D`, in sqlx's manner: [`SqliteStore`](crate::SqliteStore),
/// [`PgStore`](crate::PgStore) and [`MySqlStore`](crate::MySqlStore) are aliases, as
/// `PgPool` is of `Pool<Postgres>`.
///
/// It holds a connection pool, the [`RetryPolicy`] for lost compare-and-set races and a
/// [`Concurrency`] mode; clones share the pool. Every dialect's instance passes the same
/// conformance, durable and fault suites.
///
/// A dispatcher on the store ([`outbox_wakeup`](fsm_core::DurableStore::outbox_wakeup))
/// is woken by effects committed through the store and, on PostgreSQL, through any other
/// store on the same schema: each store sends `NOTIFY fsm_outbox` after such commits (from
/// a task of its own, outside the fire's transaction), and a store whose dispatcher runs
/// `LISTEN`s on **one connection of its pool, kept checked out** while the store lives.
/// Both tasks end with the last clone of the store or when the pool closes; whatever a
/// notification misses (a failed `NOTIFY`, one sent while the listener reconnected) the
/// dispatcher's poll finds.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState};
/// use fsm_core::{Command, Store};
///
/// let store = fsm_sqlx::SqliteStore::memory().await?;
/// store.migrate().await?;
/// store.create::<Order>("o-1", OrderData::default()).await?;
/// let outcome = store.fire("o-1", Command::<Order>::new(OrderEvent::Cancel)).await?;
/// assert_eq!(outcome.transition().to, OrderState::Cancelled);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub struct SqlStore<D: Dialect> {
    pub(crate) pool: Pool<D>,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: Concurrency,
    /// Seals the snapshots this store hands out, so `fire_with` trusts only those.
    pub(crate) seal: SnapshotSeal,
    /// Instances that lost a race lately, which an adaptive fire locks at once.
    pub(crate) hot: Arc<HotRows>,
    /// This process's dispatchers waiting for effects committed through this store.
    pub(crate) wakeups: OutboxWakeups,
    /// What wakes dispatchers of other stores on the database, and what wakes ours
    /// from theirs (PostgreSQL's `NOTIFY` and `LISTEN`).
    pub(crate) peers: PeerWakeups,
    /// Connections kept checked out between fires, sparing the pool's pings.
    pub(crate) conns: ConnCache<D>,
    /// The group-commit queues, unless [`without_group_commit`](Self::without_group_commit).
    pub(crate) batchers: Option<Arc<Batchers>>,
    /// Ends the dialect's background task (SQLite's checkpointer) with the last clone.
    pub(crate) background: Option<Arc<DropGuard>>,
    /// SQLite's write lane, where fires run in one hand-off ([`crate::lane`]).
    #[cfg(feature = "sqlite")]
    pub(crate) lane: Option<Arc<crate::lane::Lane>>,
}

impl<D: Dialect> SqlStore<D> {
    /// Wraps a pool (one whose connections set a PostgreSQL `search_path`, say), with the
    /// default retry policy, [`Concurrency::Adaptive`], and on SQLite and PostgreSQL
    /// group commit ([`with_group_commit`](Self::with_group_commit)). On SQLite the
    /// pool's own settings decide checkpoints; [`SqliteStore::open_with`](crate::SqliteStore::open_with)
    /// takes pool options and runs them off the writers' path.
    pub fn from_pool(pool: Pool<D>) -> Self {
        SqlStore {
            pool,
            retry: RetryPolicy::default(),
            concurrency: Concurrency::default(),
            seal: SnapshotSeal::new(),
            hot: Arc::default(),
            wakeups: OutboxWakeups::new(),
            peers: PeerWakeups::default(),
            conns: ConnCache::default(),
            batchers: D::GROUP_COMMIT.then(|| Arc::new(Batchers::new(GroupCommit::new()))),
            background: None,
            #[cfg(feature = "sqlite")]
            lane: None,
        }
    }

    /// Connects to a URL (`sqlite:`, `postgres:` or `mysql:`, as `D` expects) with a pool
    /// of up to 8 connections; SQLite URLs get WAL, a 5 s busy timeout and, for a file,
    /// the checkpointing task that [`SqliteStore::open`](crate::SqliteStore::open)
    /// describes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo() -> fsm_core::Result<()> {
    /// let store = fsm_sqlx::PgStore::connect("postgres://app@localhost/orders").await?;
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] for a bad URL or a server that cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = ConnectOptionsOf::<D>::from_str(url).map_err(db_error(|| {
            format!("parse {} URL", <D as sqlx::Database>::NAME)
        }))?;
        Self::connect_with(D::tune(options), Self::pool_options(), || {
            format!("connect to {}", <D as sqlx::Database>::NAME)
        })
        .await
    }

    /// A store over a new pool of `pool` on `options` (tuned already), with the
    /// dialect's background task (SQLite's checkpointer); `operation` names the attempt
    /// in an error.
    pub(crate) async fn connect_with(
        options: ConnectOptionsOf<D>,
        pool: PoolOptions<D>,
        operation: impl Fn() -> String,
    ) -> Result<Self> {
        let pool = pool
            .connect_with(options.clone())
            .await
            .map_err(db_error(operation))?;
        let mut store = Self::from_pool(pool);
        store.background = D::background(&options, &store.pool).await.map(Arc::new);
        #[cfg(feature = "sqlite")]
        {
            store.lane = D::lane(&options, &store.pool, &store.conns)
                .await
                .map(Arc::new);
        }
        Ok(store)
    }

    /// The pool options the store's constructors use, for building a pool of your own
    /// (with an `after_connect`, say) to pass to [`from_pool`](Self::from_pool): up to
    /// 8 connections, and a connection is pinged when it is taken out of the pool only
    /// if it sat idle for a second or more. sqlx's default pings on every checkout, a
    /// round trip on PostgreSQL and MySQL that a busy store does not need: a connection
    /// used a moment ago is alive, and one that died since fails its statement with
    /// [`Error::Database`] and is not reused.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use sqlx::Executor;
    /// let pool = fsm_sqlx::PgStore::pool_options()
    ///     .after_connect(|conn, _| Box::pin(async move {
    ///         conn.execute("SET search_path TO orders").await.map(drop)
    ///     }))
    ///     .connect("postgres://app@localhost/shop")
    ///     .await?;
    /// let store = fsm_sqlx::PgStore::from_pool(pool);
    /// # Ok(()) }
    /// ```
    pub fn pool_options() -> PoolOptions<D> {
        PoolOptions::<D>::new()
            .max_connections(8)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    }

    /// Replaces the retry policy for lost compare-and-set races.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Chooses how writers of one instance meet ([`Concurrency`]): adaptive (the
    /// default: compare-and-set, then the row lock after a lost race), optimistic
    /// compare-and-set only, or row locking on every fire (`SELECT ... FOR UPDATE`
    /// before deciding; on SQLite the database's write lock, taken by `BEGIN IMMEDIATE`
    /// before reading).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Combines concurrent fires into one transaction per batch ([`GroupCommit`]): on
    /// PostgreSQL one read statement and one write statement for the whole batch, on
    /// a SQLite file store the fires queued on its write lane while a transaction runs
    /// (see [`SqliteStore::open`](crate::SqliteStore::open)), each in a savepoint of its
    /// own, elsewhere on SQLite one read statement and then one transaction writing
    /// each table's rows, on MySQL one transaction holding every command's statements. Under load
    /// this multiplies throughput; a fire that finds nothing running or waiting runs
    /// alone at once, so a lone caller pays nothing for it. SQLite and PostgreSQL
    /// stores group with [`GroupCommit::new`] by default; MySQL stores do not, since
    /// there a batch runs each command's statements in turn and gains only the commit.
    ///
    /// Every caller gets the outcome or error a lone fire would have given it: a
    /// command whose instance moved since the batch read it, or a batch abandoned
    /// because another writer took one of its keys, is fired again alone, so one
    /// command's lost race, failed guard or panicking action never fails another.
    /// One batch holds at most one command per instance (the next waits for the next
    /// batch, in order). Commands carrying a token, [`fire_with`](Store::fire_with),
    /// pessimistic stores and instances that lost a race lately fire alone as before.
    /// On a SQLite file store's write lane the batches are the lane's instead: each
    /// command decided in turn under the write lock, several of one instance in order,
    /// `fire_with` and every concurrency mode included, one batch at a time
    /// (`in_flight` does not apply there).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use fsm_core::testing::{Order, OrderData, OrderEvent};
    /// use fsm_core::{Command, Store};
    /// use fsm_sqlx::{GroupCommit, SqliteStore};
    ///
    /// let store = SqliteStore::memory().await?.with_group_commit(GroupCommit::new());
    /// store.migrate().await?;
    /// store.create::<Order>("o-1", OrderData::default()).await?;
    /// let outcome = store.fire("o-1", Command::<Order>::new(OrderEvent::Cancel)).await?;
    /// assert!(!outcome.is_duplicate());
    /// # Ok::<(), fsm_core::Error>(()) }).unwrap();
    /// ```
    #[must_use]
    pub fn with_group_commit(mut self, config: GroupCommit) -> Self {
        self.batchers = Some(Arc::new(Batchers::new(config)));
        self
    }

    /// Fires every command alone, each in its own transaction (see
    /// [`with_group_commit`](Self::with_group_commit)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # async fn demo() -> fsm_core::Result<()> {
    /// let store = fsm_sqlx::SqliteStore::memory().await?.without_group_commit();
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn without_group_commit(mut self) -> Self {
        self.batchers = None;
        self
    }

    /// Creates or upgrades fsm's tables (`fsm_*`) from the migrations embedded for `D`
    /// (PostgreSQL: in the first schema of the connections' `search_path`).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        D::migrate_with(D::migrator(), &self.pool)
            .await
            .map_err(|e| Error::database("migrate", e))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool<D> {
        &self.pool
    }

    /// Effects of `machine` were committed through this store, or made due again: wakes
    /// this store's dispatchers and, on PostgreSQL, announces it to the other stores on
    /// the database (`NOTIFY`, from a task of the store's, after the commit).
    pub(crate) fn effects_committed(&self, machine: &'static str) {
        self.wakeups.notify(machine);
        D::announce_effects(&self.pool, &self.peers, machine);
    }

    /// A dispatcher's wake-up for the effects of `machine`: woken by this store's
    /// commits and, on PostgreSQL, by other stores' (the store's `LISTEN`, started here
    /// the first time).
    pub(crate) fn watch_outbox(&self, machine: &'static str) -> OutboxWakeup {
        let wakeup = self.wakeups.subscribe(machine);
        D::listen_for_effects(&self.pool, &self.peers, &self.wakeups);
        wakeup
    }
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            retry: self.retry,
            concurrency: self.concurrency,
            seal: self.seal.clone(),
            hot: Arc::clone(&self.hot),
            wakeups: self.wakeups.clone(),
            peers: self.peers.clone(),
            conns: self.conns.clone(),
            batchers: self.batchers.clone(),
            background: self.background.clone(),
            #[cfg(feature = "sqlite")]
            lane: self.lane.clone(),
        }
    }
}

impl<D: Dialect> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &std::any::type_name::<D>())
            .field("pool", &self.pool)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("group_commit", &self.batchers.as_ref().map(|b| b.config()))
            .finish()
    }
}

impl<D: Dialect> Store for SqlStore<D> {
    async fn create<M: StateMachine>(&self, id: &str, context: M::Context) -> Result<Created<M>> {
        let (pool, owned_id) = (self.pool.clone(), id.to_owned());
        let mut created =
            detached(async move { engine::create::<D, M>(&pool, &owned_id, context).await })
                .instrument(observe::instance_span("fsm.create", M::DEFINITION.name, id))
                .await?;
        match &mut created {
            Created::New(snapshot) | Created::Existing(snapshot) => self.seal.seal(snapshot),
        }
        Ok(created)
    }

    async fn load<M: StateMachine>(&self, id: &str) -> Result<Snapshot<M>> {
        let mut snapshot = engine::load::<D, M>(&self.pool, id)
            .instrument(observe::instance_span("fsm.load", M::DEFINITION.name, id))
            .await?;
        self.seal.seal(&mut snapshot);
        Ok(snapshot)
    }

    async fn fire<M: StateMachine>(&self, id: &str, command: Command<M>) -> Result<Outcome<M>> {
        let event = M::event_name(&command.event);
        let span = observe::fire_span::<M>(id, event, command.key.as_ref());
        observe::fire(span, event, async {
            let mut prepared = Prepared::new(id, command)?;
            #[cfg(feature = "sqlite")]
            if let Some(lane) = self.lane_for(&prepared) {
                match lane.fire(id, prepared, self.lane_batch()).await {
                    Fired::Done { result, effects } => {
                        return self.fired_on_lane::<M>(result, effects).map(|(o, _)| o);
                    }
                    Fired::Panicked(panic) => std::panic::resume_unwind(panic),
                    Fired::Elsewhere(elsewhere) => prepared = elsewhere,
                }
            }
            let mut slot = None;
            if let Some(batchers) = self.batches(id, &prepared) {
                let unbatched = || SqlStore {
                    batchers: None,
                    ..self.clone()
                };
                match batchers.fire(unbatched, id, prepared).await {
                    Settled::Done(result) => return result,
                    Settled::Panicked(panic) => std::panic::resume_unwind(panic),
                    Settled::Alone(alone) => prepared = alone,
                    Settled::Idle(alone, held) => (prepared, slot) = (alone, Some(held)),
                }
            }
            let (store, id) = (self.clone(), id.to_owned());
            let (outcome, _) = detached(async move {
                let _slot = slot;
                engine::fire(&store, &id, prepared, None).await
            })
            .await?;
            Ok(outcome)
        })
        .await
    }

    async fn fire_with<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> Result<Outcome<M>> {
        let event = M::event_name(&command.event);
        let span = observe::fire_span::<M>(&snapshot.id, event, command.key.as_ref());
        observe::fire(span, event, self.fire_with_inner(snapshot, command)).await
    }

    async fn history<M: StateMachine>(&self, id: &str) -> Result<Vec<Transition<M>>> {
        engine::history::<D, M>(&self.pool, id)
            .instrument(observe::instance_span(
                "fsm.history",
                M::DEFINITION.name,
                id,
            ))
            .await
    }

    async fn list<M: StateMachine>(&self, query: &Query<M>) -> Result<Page<M>> {
        let mut page = engine::queries::list::<D, M>(&self.pool, query, now_ms())
            .instrument(observe::machine_span("fsm.list", M::DEFINITION.name))
            .await?;
        for listed in &mut page.items {
            self.seal.seal(&mut listed.snapshot);
        }
        Ok(page)
    }

    async fn count_by_state<M: StateMachine>(&self) -> Result<StateCounts<M>> {
        engine::queries::count_by_state::<D, M>(&self.pool)
            .instrument(observe::machine_span(
                "fsm.count_by_state",
                M::DEFINITION.name,
            ))
            .await
    }

    async fn verify<M: StateMachine>(&self) -> Result<VerifyReport> {
        engine::queries::verify::<D, M>(&self.pool)
            .instrument(observe::machine_span("fsm.verify", M::DEFINITION.name))
            .await
    }
}

impl<D: Dialect> SqlStore<D> {
    /// The group-commit queues a fire of `prepared` at `id` goes through, if any.
    fn batches<M: StateMachine>(&self, id: &str, prepared: &Prepared<M>) -> Option<&Batchers> {
        let batchers = self.batchers.as_deref()?;
        let alone = prepared.key().and_then(|key| key.token()).is_some()
            || self.concurrency == Concurrency::Pessimistic
            || (self.concurrency == Concurrency::Adaptive
                && self.hot.is_hot(M::DEFINITION.name, id));
        (!alone).then_some(batchers)
    }

    /// The write lane a fire of `prepared` takes, if the store has one and its pool is
    /// open: any command but one carrying a token (whose consumption sqlx's path orders).
    #[cfg(feature = "sqlite")]
    fn lane_for<M: StateMachine>(&self, prepared: &Prepared<M>) -> Option<&crate::lane::Lane> {
        let token = prepared.key().and_then(|key| key.token()).is_some();
        self.lane
            .as_deref()
            .filter(|_| !token && !self.pool.is_closed())
    }

    /// How many fires one lane transaction may hold: group commit's batch, or one.
    #[cfg(feature = "sqlite")]
    fn lane_batch(&self) -> usize {
        self.batchers
            .as_ref()
            .map_or(1, |b| b.config().batch_limit())
    }

    /// A lane fire's result, once its committed effects have woken the dispatchers.
    #[cfg(feature = "sqlite")]
    fn fired_on_lane<M: StateMachine>(
        &self,
        result: Result<(Outcome<M>, Snapshot<M>)>,
        effects: bool,
    ) -> Result<(Outcome<M>, Snapshot<M>)> {
        if effects {
            self.effects_committed(M::DEFINITION.name);
        }
        result
    }

    async fn fire_with_inner<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> Result<Outcome<M>> {
        #[cfg_attr(not(feature = "sqlite"), allow(unused_mut))]
        let mut prepared = Prepared::new(&snapshot.id, command)?;
        // The lane reads under the write lock anyway: the snapshot saves nothing there.
        #[cfg(feature = "sqlite")]
        if let Some(lane) = self.lane_for(&prepared) {
            match lane.fire(&snapshot.id, prepared, self.lane_batch()).await {
                Fired::Done { result, effects } => {
                    let (outcome, mut current) = self.fired_on_lane::<M>(result, effects)?;
                    self.seal.seal(&mut current);
                    *snapshot = current;
                    return Ok(outcome);
                }
                Fired::Panicked(panic) => std::panic::resume_unwind(panic),
                Fired::Elsewhere(elsewhere) => prepared = elsewhere,
            }
        }
        let id = snapshot.id.clone();
        // Only a snapshot this store issued, unchanged, may stand in for the read.
        let known = self.seal.is_intact(snapshot).then(|| snapshot.clone());
        let store = self.clone();
        let (outcome, mut current) =
            detached(async move { engine::fire(&store, &id, prepared, known).await }).await?;
        self.seal.seal(&mut current);
        *snapshot = current;
        Ok(outcome)
    }
}

/// Runs `work` (a write) so that a caller who drops the future (a client that hung up,
/// a `timeout`, a `select!`) does not cut it off between two statements: it then
/// applies as a whole or not at all, and its connection goes back to the pool with no
/// transaction open. On SQLite a transaction dropped while its `BEGIN` runs on sqlx's
/// worker thread would keep the database's write lock, and every other writer would
/// fail with "database is locked" (sqlx#3932).
///
/// The work runs in the caller's task; only if the caller drops it unfinished is the
/// rest handed to a task of its own. Spawning every write instead cost a wake-up of
/// another runtime thread per fire, the largest single cost of a SQLite fire after its
/// two hand-offs to sqlx's worker thread.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    Detached(Some(Box::pin(work.in_current_span()))).await
}

/// The future of [`detached`]: polls its work inline and, dropped before the work is
/// done, spawns the rest onto the runtime it was dropped in.
struct Detached<F: Future + Send + 'static>(Option<Pin<Box<F>>>)
where
    F::Output: Send;

impl<F: Future + Send + 'static> Future for Detached<F>
where
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(work) = self.0.as_mut() else {
            panic!("`detached` polled after it completed");
        };
        // A panicking action ends the work where it is, as it would inline: the work is
        // taken out first so that unwinding through `drop` does not spawn it.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(ready) => {
                self.0 = None;
                ready
            }
            Err(panic) => {
                self.0 = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        let Some(work) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(work)),
            // Outside a runtime nothing can run it: dropped, as any sqlx future would be.
            Err(_) => tracing::warn!("a write dropped unfinished outside a tokio runtime"),
        }
    }
}
