//! A MariaDB Galera cluster of three nodes (`bash .ci/galera start`): a database of the
//! test's own, created through one node and replicated to all, a [`MySqlStore`] per
//! node, and [`Spread`], one store that sends each call to the next node so that the
//! suites' racing tasks race across nodes.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fsm_core::kit::{ClaimedEffect, Settlement};
use fsm_core::testing::{DurableFixture, Fixture};
use fsm_core::{
    ArmedTimer, Command, Created, DeadLetter, DurableStore, EffectId, OutboxDepth, OutboxEntry,
    Outcome, Page, PruneReport, Query, Result, Retention, RetryPolicy, Snapshot, StateCounts,
    StateMachine, Store, Transition, VerifyReport,
};
use fsm_sqlx::{Concurrency, MySqlStore};
use sqlx::Executor;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use super::mysql::Database;

/// The env var naming the three nodes, comma-separated.
pub(crate) const URLS_VAR: &str = "FSM_GALERA_URLS";

/// The nodes' URLs from [`URLS_VAR`], or `None` (a skip; a failure under `CI`).
pub(crate) fn node_urls() -> Option<Vec<String>> {
    let urls = super::server_url(URLS_VAR)?;
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
    assert!(
        urls.len() >= 2,
        "{URLS_VAR} names {} node(s): a cluster test needs at least two",
        urls.len()
    );
    Some(urls)
}

/// Across nodes the row lock is node-local, so a fire that holds it can still lose at
/// certification, and each loss costs an attempt: with the default 16, one of 48
/// cross-node racers at one instance gave up with `Conflict` in a CI run at load 5.
/// On a cluster, allow more (the README says so).
pub(crate) const CLUSTER_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 64,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(50),
};

/// Which node a fixture starts on, so that consecutive tests start on different nodes.
static NEXT_FIRST_NODE: AtomicUsize = AtomicUsize::new(0);

/// A pool on one node. `wsrep_sync_wait = 7` makes its reads, updates, deletes and
/// inserts wait until the node has applied what the cluster committed before them
/// (causal reads): without it a statement on one node may miss a write committed
/// through another a moment ago (a `requeue` would find no dead letter, a `load` no
/// instance).
pub(crate) async fn node_pool(options: MySqlConnectOptions) -> sqlx::MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION wsrep_sync_wait = 7").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .expect("connect to a Galera node")
}

/// Options connecting to the node at `url`, into `database`.
pub(crate) fn node_options(url: &str, database: &str) -> MySqlConnectOptions {
    MySqlConnectOptions::from_str(url)
        .expect("parse a Galera node URL")
        .database(database)
}

/// Waits until the node at `url` has applied the `CREATE DATABASE` of `database`, made
/// through another node: a connection into it fails until then.
async fn replicated(url: &str, database: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(url)
        .await
        .expect("connect to a Galera node");
    conn.execute("SET SESSION wsrep_sync_wait = 1")
        .await
        .expect("causal reads");
    let known: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(database)
    .fetch_one(&mut conn)
    .await
    .expect("read the schemata");
    assert_eq!(known, 1, "{database} did not reach {url}");
    let _ = conn.close().await;
}

/// A fresh database on the cluster with a [`MySqlStore`] on each node.
pub(crate) struct GaleraDatabase {
    nodes: Vec<MySqlStore>,
    urls: Vec<String>,
    spread: Spread,
    database: Database,
}

impl GaleraDatabase {
    pub(crate) async fn new(urls: Vec<String>, concurrency: Concurrency) -> Self {
        let first = NEXT_FIRST_NODE.fetch_add(1, Ordering::Relaxed) % urls.len();
        let database = Database::create(urls[first].clone()).await;
        // The test's first node first.
        let urls: Vec<String> = (0..urls.len())
            .map(|k| urls[(first + k) % urls.len()].clone())
            .collect();
        let mut nodes = Vec::new();
        for url in &urls {
            replicated(url, &database.name).await;
            let pool = node_pool(node_options(url, &database.name)).await;
            nodes.push(
                MySqlStore::from_pool(pool)
                    .with_concurrency(concurrency)
                    .with_retry(CLUSTER_RETRY),
            );
        }
        nodes[0]
            .migrate()
            .await
            .expect("migrate through the first node");
        let spread = Spread::new(nodes.clone());
        GaleraDatabase {
            nodes,
            urls,
            spread,
            database,
        }
    }

    /// The store on each node, the test's first node first.
    pub(crate) fn nodes(&self) -> &[MySqlStore] {
        &self.nodes
    }

    pub(crate) fn spread(&self) -> &Spread {
        &self.spread
    }

    pub(crate) async fn cleanup(mut self) {
        for node in &self.nodes {
            node.pool().close().await;
        }
        self.database.drop_now().await;
    }
}

impl Fixture for GaleraDatabase {
    type Store = Spread;

    fn store(&self) -> Arc<Spread> {
        Arc::new(self.spread.clone())
    }

    async fn cleanup(self) {
        GaleraDatabase::cleanup(self).await;
    }
}

impl DurableFixture for GaleraDatabase {
    type Store = Spread;

    fn store(&self) -> Spread {
        self.spread.clone()
    }

    async fn expire_timers(&self) {
        sqlx::query("UPDATE fsm_timers SET due_at = 0")
            .execute(self.nodes[0].pool())
            .await
            .expect("expire timers");
    }

    /// New pools on every node, as after a restart of every service instance.
    async fn reopen(&self) -> Spread {
        let mut nodes = Vec::new();
        for url in &self.urls {
            let pool = node_pool(node_options(url, &self.database.name)).await;
            nodes.push(MySqlStore::from_pool(pool).with_retry(CLUSTER_RETRY));
        }
        Spread::new(nodes)
    }

    async fn cleanup(self) {
        GaleraDatabase::cleanup(self).await;
    }
}

/// One store over several nodes: each call goes to the next node in turn, as behind a
/// load balancer, so that concurrent callers write through different nodes.
#[derive(Debug, Clone)]
pub(crate) struct Spread {
    nodes: Arc<[MySqlStore]>,
    next: Arc<AtomicUsize>,
}

impl Spread {
    pub(crate) fn new(nodes: Vec<MySqlStore>) -> Self {
        Spread {
            nodes: nodes.into(),
            next: Arc::default(),
        }
    }

    fn node(&self) -> &MySqlStore {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        &self.nodes[k]
    }
}

impl Store for Spread {
    async fn create<M: StateMachine>(&self, id: &str, context: M::Context) -> Result<Created<M>> {
        self.node().create::<M>(id, context).await
    }

    async fn load<M: StateMachine>(&self, id: &str) -> Result<Snapshot<M>> {
        self.node().load::<M>(id).await
    }

    async fn fire<M: StateMachine>(&self, id: &str, command: Command<M>) -> Result<Outcome<M>> {
        self.node().fire(id, command).await
    }

    async fn fire_with<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> Result<Outcome<M>> {
        self.node().fire_with(snapshot, command).await
    }

    async fn history<M: StateMachine>(&self, id: &str) -> Result<Vec<Transition<M>>> {
        self.node().history::<M>(id).await
    }

    async fn list<M: StateMachine>(&self, query: &Query<M>) -> Result<Page<M>> {
        self.node().list(query).await
    }

    async fn count_by_state<M: StateMachine>(&self) -> Result<StateCounts<M>> {
        self.node().count_by_state::<M>().await
    }

    async fn verify<M: StateMachine>(&self) -> Result<VerifyReport> {
        self.node().verify::<M>().await
    }
}

impl DurableStore for Spread {
    async fn issue_token<M: StateMachine>(&self, id: &str, ttl: Duration) -> Result<String> {
        self.node().issue_token::<M>(id, ttl).await
    }

    async fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<(String, Transition<M>)>> {
        self.node().fire_due_timers::<M>(limit, lease).await
    }

    async fn dead_letters<M: StateMachine>(&self) -> Result<Vec<DeadLetter<M::Effect>>> {
        self.node().dead_letters::<M>().await
    }

    async fn requeue(&self, id: &EffectId) -> Result<bool> {
        self.node().requeue(id).await
    }

    async fn claim_effects(
        &self,
        machine: &'static str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEffect>> {
        self.node().claim_effects(machine, lease, limit).await
    }

    async fn settle_effect(
        &self,
        machine: &'static str,
        effect: &ClaimedEffect,
        settlement: Settlement<'_>,
    ) -> Result<bool> {
        self.node().settle_effect(machine, effect, settlement).await
    }

    async fn outbox_depth(&self, machine: &'static str) -> Result<OutboxDepth> {
        self.node().outbox_depth(machine).await
    }

    async fn pending_timers<M: StateMachine>(&self, id: &str) -> Result<Vec<ArmedTimer>> {
        self.node().pending_timers::<M>(id).await
    }

    async fn outbox<M: StateMachine>(&self, id: &str) -> Result<Vec<OutboxEntry<M::Effect>>> {
        self.node().outbox::<M>(id).await
    }

    async fn discard(&self, id: &EffectId) -> Result<bool> {
        self.node().discard(id).await
    }

    async fn prune(&self, retention: &Retention) -> Result<PruneReport> {
        self.node().prune(retention).await
    }

    async fn prune_finished<M: StateMachine>(
        &self,
        older_than: Duration,
        batch: usize,
    ) -> Result<u64> {
        self.node().prune_finished::<M>(older_than, batch).await
    }
}
