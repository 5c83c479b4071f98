//! Crash safety: a worker process fires transitions with effects and dispatches the
//! outbox until it is killed with SIGKILL at a random moment; after every kill the
//! database must still be one that only whole transitions produced.
//!
//! Each test runs [`ROUNDS`] rounds on one database. A round spawns this test binary as
//! a child running only the ignored `worker` test, told what to do by `FSM_CRASH_*`
//! variables. The child opens the store, prints `READY`, and then, until it is killed:
//!
//! * [`TASKS`] tasks fire in a tight loop at four long-lived orders (`o-0`..`o-3`):
//!   keyed and unkeyed `Annotate` (a self-loop emitting `Noted`), keyed and unkeyed
//!   `Pay` (`Charge` once, then duplicates or illegal repeats), duplicates of keys
//!   fired in earlier rounds, and short-lived orders (`e-..`) taken through create,
//!   `Pay`, `Annotate` and `Cancel` (`Refund`);
//! * a [`Dispatcher`] with a short lease whose handler sleeps a little per effect.
//!
//! Both append one line per event to files (one `write` per line, unbuffered, so a line
//! outlives the kill): the fire log `B <op> <instance> <label> <expect>` before each
//! command and `E <op> <outcome> <version>` or `X <op> <error>` after it; the call log
//! `C <effect id> <attempt> <effect JSON>` when a handler starts and `R <effect id>
//! <attempt>` when it returns.
//!
//! After each kill the parent reads the tables in one snapshot and checks, for every
//! instance: history versions are 1..=n without gaps, `fsm_machines.version` is n, the
//! state is the last row's target (and the rows chain), replaying the history with the
//! pure step rule gives each row's states, the stored context, and exactly the outbox
//! rows of each version (seq 0.., same effects); no outbox row or history row exists
//! without its transition or instance; a keyed command appears at most once; an
//! instance in `Created` has its expiry timer armed at its version. Against the logs:
//! every acknowledged outcome is the history row at the version it reported, every
//! handler call saw the effect the outbox holds under its id, and no effect done at an
//! earlier check was delivered again.
//!
//! After the last round the parent restarts dispatch: once the killed children's leases
//! have expired, a dispatcher drains the outbox. Then every row is done (none dead),
//! every effect was handled at least once across the children and the parent, every
//! done effect had a handler return, and each effect's calls saw its id with its own
//! payload under distinct, increasing attempt numbers.
//!
//! `FSM_CRASH_SEED` replays a run's random choices (kill moments still vary with
//! timing). The PostgreSQL test reads the server from `FSM_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; without it it is skipped, or fails when
//! `CI` is set.
#![cfg(all(unix, any(feature = "sqlite", feature = "postgres")))]

#[path = "support/child.rs"]
mod child;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fsm_core::BoxError;
use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent, OrderState, Payment};
use fsm_core::{Command, Error, RetryPolicy, StateMachine, Store, Trigger};
use fsm_sqlx::{Delivery, DispatchOptions, Dispatcher, DurableStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use child::{ChildProcess, Log};
use common::{TempDir, runtime};

/// Kills per backend.
const ROUNDS: usize = 24;
/// Firing tasks in a child.
const TASKS: u64 = 6;
/// Long-lived orders `o-0`..`o-3`, created by the parent.
const LIVE: u64 = 4;
const LIVE_TOTAL: u64 = 500;
const SHORT_TOTAL: u64 = 700;
/// How long after the child is READY it is killed, in milliseconds.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 20..=300;
/// The children's lease: rows a killed child held are claimable again after it.
const CHILD_LEASE: Duration = Duration::from_millis(500);
/// A child that is not killed stops by itself (the parent failed or vanished).
const CHILD_LIFETIME: Duration = Duration::from_secs(20);
const DRAIN_WITHIN: Duration = Duration::from_secs(20);

/// The children's stores never give up on a lost race: six tasks share four rows.
const PATIENT: RetryPolicy = RetryPolicy {
    max_attempts: 1000,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(10),
};

/// Dispatch in a child: small batches, handlers that sleep, a short lease.
const CHILD_DISPATCH: DispatchOptions = DispatchOptions {
    workers: 2,
    batch: 4,
    lease: CHILD_LEASE,
    max_attempts: 1000,
    backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(100),
    idle_poll: Duration::from_millis(5),
};

/// The restarted dispatcher in the parent.
const PARENT_DISPATCH: DispatchOptions = DispatchOptions {
    workers: 2,
    batch: 64,
    lease: Duration::from_secs(10),
    max_attempts: 1000,
    backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(100),
    idle_poll: Duration::from_millis(10),
};

// ---------------------------------------------------------------------------------------
// The tests.

#[cfg(feature = "sqlite")]
#[test]
fn sigkill_mid_transition_loses_nothing_on_sqlite() {
    let runtime = runtime();
    let dir = TempDir::new();
    let path = dir.path.join("crash.db");
    let store = runtime.block_on(async {
        let store = fsm_sqlx::SqliteStore::open(&path)
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate");
        store
    });
    let db = Db::Sqlite { store, path };
    crash_rounds(&runtime, db, &dir, "sqlite");
}

#[cfg(feature = "postgres")]
#[test]
fn sigkill_mid_transition_loses_nothing_on_postgres() {
    let Some(url) = common::server_url("FSM_POSTGRES_URL") else {
        return;
    };
    let runtime = runtime();
    let dir = TempDir::new();
    let (store, schema) = runtime.block_on(async {
        let schema = common::pg::Schema::create(url).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(schema.options(&format!("{}-parent", schema.name)))
            .await
            .expect("connect to FSM_POSTGRES_URL");
        let store = fsm_sqlx::PgStore::from_pool(pool);
        store.migrate().await.expect("migrate");
        (store, schema)
    });
    let db = Db::Pg { store, schema };
    crash_rounds(&runtime, db, &dir, "postgres");
}

/// The child process: fires and dispatches until killed. Does nothing unless started by
/// one of the tests above.
#[test]
#[ignore = "the child process of the crash tests, started by them"]
fn worker() {
    let Ok(backend) = std::env::var("FSM_CRASH_BACKEND") else {
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let config = WorkerConfig {
        dir: PathBuf::from(env("FSM_CRASH_DIR")),
        round: env("FSM_CRASH_ROUND").parse().expect("FSM_CRASH_ROUND"),
        seed: env("FSM_CRASH_SEED").parse().expect("FSM_CRASH_SEED"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("worker runtime");
    runtime.block_on(async {
        match backend.as_str() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let store = fsm_sqlx::SqliteStore::open(env("FSM_CRASH_TARGET"))
                    .await
                    .expect("open SQLite")
                    .with_retry(PATIENT);
                work(store, config).await;
            }
            #[cfg(feature = "postgres")]
            "postgres" => {
                let (url, schema) = (env("FSM_CRASH_TARGET"), env("FSM_CRASH_SCHEMA"));
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(common::pg::options(&url, &schema, &child_name(&schema)))
                    .await
                    .expect("connect to PostgreSQL");
                work(
                    fsm_sqlx::PgStore::from_pool(pool).with_retry(PATIENT),
                    config,
                )
                .await;
            }
            other => panic!("unknown FSM_CRASH_BACKEND {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent.

fn crash_rounds(runtime: &tokio::runtime::Runtime, db: Db, dir: &TempDir, backend: &str) {
    let started = Instant::now();
    let seed = std::env::var("FSM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("{backend}: FSM_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    runtime.block_on(async {
        for slot in 0..LIVE {
            db.create_live(&live_id(slot)).await;
        }
    });

    let mut calls: Vec<Call> = Vec::new();
    let mut totals = Totals::default();
    let mut last_kill = Instant::now();
    // Effects done as of the last check: never delivered again.
    let mut done_before = HashSet::new();
    for round in 0..ROUNDS {
        let round_started = Instant::now();
        let kill_after = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        let mut child = spawn_worker(&db, dir, backend, round, rng.r#gen());
        child.wait_ready();
        std::thread::sleep(kill_after);
        child.kill();
        last_kill = Instant::now();
        runtime.block_on(db.after_kill());

        let check_started = Instant::now();
        let tables = runtime.block_on(db.tables());
        let checked = check_tables(&tables);
        let fires = check_fires(&lines(&fires_log(&dir.path, round)), &checked)
            .unwrap_or_else(|why| child.fail(&format!("round {round}: {why}")));
        let (round_calls, cut) = read_calls(&lines(&calls_log(&dir.path, round)), round);
        check_calls(&round_calls, &checked, &done_before)
            .unwrap_or_else(|why| child.fail(&format!("round {round}: {why}")));
        done_before = checked.done.clone();
        eprintln!(
            "{backend} round {round:2}: killed {:3} ms after READY; {:4} commands begun, \
             {:4} acknowledged, {} in flight ({} committed unacknowledged, {} rolled back, \
             {} unclassified); +{:4} transitions, +{:4} effects (now {}/{}, {} done); \
             {:3} handler calls, {} cut mid-handler; round {:?}, check {:?}",
            kill_after.as_millis(),
            fires.begun,
            fires.acknowledged,
            fires.in_flight,
            fires.committed_unacknowledged,
            fires.rolled_back,
            fires.in_flight - fires.committed_unacknowledged - fires.rolled_back,
            checked.transitions - totals.transitions,
            checked.effects.len() - totals.effects,
            checked.transitions,
            checked.effects.len(),
            checked.done.len(),
            round_calls.len(),
            cut,
            round_started.elapsed(),
            check_started.elapsed(),
        );
        totals.add(&fires, &checked, round_calls.len(), cut);
        calls.extend(round_calls);
    }

    // Restart: a dispatcher in the parent, once every child's lease has run out.
    let drain_started = Instant::now();
    let lease_over = last_kill + CHILD_LEASE + Duration::from_millis(50);
    std::thread::sleep(lease_over.saturating_duration_since(Instant::now()));
    let parent_calls = runtime.block_on(db.drain());
    let tables = runtime.block_on(db.tables());
    let checked = check_tables(&tables);
    let pending: Vec<_> = tables
        .outbox
        .iter()
        .filter(|row| row.done == 0 || row.dead != 0)
        .map(|row| (row.effect_id(), row.dead))
        .collect();
    assert!(
        pending.is_empty(),
        "after the restart every effect is done, none dead: {pending:?}"
    );
    check_calls(&parent_calls, &checked, &done_before).unwrap_or_else(|why| panic!("{why}"));
    let drained = parent_calls.len();
    calls.extend(parent_calls);
    let (redelivered, recovered) = check_delivery(&tables, &calls);

    eprintln!(
        "{backend}: {ROUNDS} kills; {} commands begun, {} acknowledged, {} in flight at a \
         kill ({} committed unacknowledged, {} rolled back); {} transitions, {} effects; \
         {} handler calls in children ({} cut mid-handler), {drained} in the restarted \
         dispatcher; {redelivered} effects handled more than once ({recovered} left by a \
         killed child, finished by the restart); drain {:?}; total {:?}",
        totals.begun,
        totals.acknowledged,
        totals.in_flight,
        totals.committed_unacknowledged,
        totals.rolled_back,
        checked.transitions,
        checked.effects.len(),
        totals.calls,
        totals.cut,
        drain_started.elapsed(),
        started.elapsed(),
    );
    runtime.block_on(db.close());
}

#[derive(Debug, Default)]
struct Totals {
    begun: usize,
    acknowledged: usize,
    in_flight: usize,
    committed_unacknowledged: usize,
    rolled_back: usize,
    transitions: usize,
    effects: usize,
    calls: usize,
    cut: usize,
}

impl Totals {
    fn add(&mut self, fires: &Fires, checked: &Checked, calls: usize, cut: usize) {
        self.begun += fires.begun;
        self.acknowledged += fires.acknowledged;
        self.in_flight += fires.in_flight;
        self.committed_unacknowledged += fires.committed_unacknowledged;
        self.rolled_back += fires.rolled_back;
        self.transitions = checked.transitions;
        self.effects = checked.effects.len();
        self.calls += calls;
        self.cut += cut;
    }
}

/// `application_name` of a child's PostgreSQL connections.
#[cfg(feature = "postgres")]
fn child_name(schema: &str) -> String {
    format!("{schema}-child")
}

/// The database under test, and the parent's store on it.
enum Db {
    #[cfg(feature = "sqlite")]
    Sqlite {
        store: fsm_sqlx::SqliteStore,
        path: PathBuf,
    },
    #[cfg(feature = "postgres")]
    Pg {
        store: fsm_sqlx::PgStore,
        schema: common::pg::Schema,
    },
}

/// Reads the four tables in the transaction `$tx` (one snapshot); the SQL is the same
/// on every backend, every integer read as BIGINT.
macro_rules! read_tables {
    ($tx:ident) => {{
        use sqlx::Row;
        let machines = sqlx::query(
            "SELECT machine_id, state, version, context FROM fsm_machines \
             WHERE machine_type = 'Order'",
        )
        .fetch_all(&mut *$tx)
        .await
        .expect("read fsm_machines")
        .iter()
        .map(|r| MachineRow {
            id: r.get(0),
            state: r.get(1),
            version: r.get(2),
            context: r.get(3),
        })
        .collect();
        let transitions = sqlx::query(
            "SELECT machine_id, version, from_state, event, trigger_json, to_state, idem_key \
             FROM fsm_transitions WHERE machine_type = 'Order'",
        )
        .fetch_all(&mut *$tx)
        .await
        .expect("read fsm_transitions")
        .iter()
        .map(|r| TransitionRow {
            id: r.get(0),
            version: r.get(1),
            from: r.get(2),
            event: r.get(3),
            payload: r.get(4),
            to: r.get(5),
            key: r.get(6),
        })
        .collect();
        let outbox = sqlx::query(
            "SELECT machine_id, version, CAST(seq AS BIGINT), effect, CAST(attempts AS BIGINT), \
               CAST(CASE WHEN done_at IS NULL THEN 0 ELSE 1 END AS BIGINT), \
               CAST(CASE WHEN dead THEN 1 ELSE 0 END AS BIGINT) \
             FROM fsm_outbox WHERE machine_type = 'Order'",
        )
        .fetch_all(&mut *$tx)
        .await
        .expect("read fsm_outbox")
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            version: r.get(1),
            seq: r.get(2),
            effect: r.get(3),
            attempts: r.get(4),
            done: r.get(5),
            dead: r.get(6),
        })
        .collect();
        let timers =
            sqlx::query("SELECT machine_id, version FROM fsm_timers WHERE machine_type = 'Order'")
                .fetch_all(&mut *$tx)
                .await
                .expect("read fsm_timers")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
        Tables {
            machines,
            transitions,
            outbox,
            timers,
        }
    }};
}

impl Db {
    async fn create_live(&self, id: &str) {
        let total = initial_context(id);
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { store, .. } => store.create::<Order>(id, total).await,
            #[cfg(feature = "postgres")]
            Db::Pg { store, .. } => store.create::<Order>(id, total).await,
        }
        .expect("create a long-lived order");
    }

    /// The variables telling a child where the database is.
    fn child_env(&self) -> Vec<(&'static str, String)> {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { path, .. } => vec![
                ("FSM_CRASH_BACKEND", "sqlite".to_owned()),
                ("FSM_CRASH_TARGET", path.display().to_string()),
            ],
            #[cfg(feature = "postgres")]
            Db::Pg { schema, .. } => vec![
                ("FSM_CRASH_BACKEND", "postgres".to_owned()),
                ("FSM_CRASH_TARGET", schema.url.clone()),
                ("FSM_CRASH_SCHEMA", schema.name.clone()),
            ],
        }
    }

    /// Waits until the killed child's server sessions are gone, so that a statement the
    /// server was still running has committed or rolled back before the check.
    async fn after_kill(&self) {
        match self {
            // A killed process holds no SQLite lock: the kernel drops it.
            #[cfg(feature = "sqlite")]
            Db::Sqlite { .. } => {}
            #[cfg(feature = "postgres")]
            Db::Pg { store, schema } => {
                let name = child_name(&schema.name);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let sessions: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    )
                    .bind(&name)
                    .fetch_one(store.pool())
                    .await
                    .expect("read pg_stat_activity");
                    if sessions == 0 {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{sessions} sessions of a killed child still open after 10 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Every row of the tables under test, read in one snapshot.
    async fn tables(&self) -> Tables {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { store, .. } => {
                // A deferred transaction: one WAL snapshot from the first read on.
                let mut tx = store.pool().begin().await.expect("begin");
                let tables = read_tables!(tx);
                tx.rollback().await.expect("end the read");
                tables
            }
            #[cfg(feature = "postgres")]
            Db::Pg { store, .. } => {
                let mut tx = store.pool().begin().await.expect("begin");
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut *tx)
                    .await
                    .expect("repeatable read");
                let tables = read_tables!(tx);
                tx.rollback().await.expect("end the read");
                tables
            }
        }
    }

    /// Outbox rows not yet done (dead letters included: they never will be).
    async fn undone(&self) -> i64 {
        let sql = "SELECT count(*) FROM fsm_outbox WHERE done_at IS NULL";
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { store, .. } => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
            #[cfg(feature = "postgres")]
            Db::Pg { store, .. } => sqlx::query_scalar(sql).fetch_one(store.pool()).await,
        }
        .expect("count undone effects")
    }

    /// The restart: a dispatcher in this process runs until the outbox is drained.
    async fn drain(&self) -> Vec<Call> {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { store, .. } => self.drain_with(store.clone()).await,
            #[cfg(feature = "postgres")]
            Db::Pg { store, .. } => self.drain_with(store.clone()).await,
        }
    }

    async fn drain_with<S: DurableStore + 'static>(&self, store: S) -> Vec<Call> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&calls);
        let handler = move |delivery: Delivery<OrderEffect>| {
            let recorded = Arc::clone(&recorded);
            async move {
                recorded.lock().expect("calls").push(Call {
                    id: delivery.id.to_string(),
                    attempt: delivery.attempt,
                    effect: delivery.effect,
                    returned: true,
                    by: PARENT,
                });
                Ok::<(), BoxError>(())
            }
        };
        let shutdown = CancellationToken::new();
        let dispatcher = Dispatcher::new(store).with_options(PARENT_DISPATCH);
        let run = tokio::spawn(dispatcher.run::<Order, _, _>(handler, shutdown.clone()));
        let deadline = Instant::now() + DRAIN_WITHIN;
        loop {
            let undone = self.undone().await;
            if undone == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        run.await.expect("dispatcher task").expect("dispatcher");
        std::mem::take(&mut *calls.lock().expect("calls"))
    }

    async fn close(self) {
        match self {
            #[cfg(feature = "sqlite")]
            Db::Sqlite { store, .. } => store.pool().close().await,
            #[cfg(feature = "postgres")]
            Db::Pg { store, mut schema } => {
                store.pool().close().await;
                schema.drop_now().await;
            }
        }
    }
}

fn fires_log(dir: &Path, round: usize) -> PathBuf {
    dir.join(format!("fires-{round}.log"))
}

fn calls_log(dir: &Path, round: usize) -> PathBuf {
    dir.join(format!("calls-{round}.log"))
}

/// A worker process for round `round` of `backend`.
fn spawn_worker(db: &Db, dir: &TempDir, backend: &str, round: usize, seed: u64) -> ChildProcess {
    let stderr = dir.path.join(format!("stderr-{backend}-{round}.log"));
    ChildProcess::spawn("worker", stderr, |command| {
        command
            .envs(db.child_env())
            .env("FSM_CRASH_DIR", &dir.path)
            .env("FSM_CRASH_ROUND", round.to_string())
            .env("FSM_CRASH_SEED", seed.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// The child.

struct WorkerConfig {
    dir: PathBuf,
    round: u64,
    seed: u64,
}

async fn work<S: DurableStore + 'static>(store: S, config: WorkerConfig) {
    let round = usize::try_from(config.round).expect("round");
    let fires = Log::create(&fires_log(&config.dir, round));
    let calls = Log::create(&calls_log(&config.dir, round));
    let until = Instant::now() + CHILD_LIFETIME;

    let handler = move |delivery: Delivery<OrderEffect>| {
        let calls = calls.clone();
        async move {
            let effect = serde_json::to_string(&delivery.effect)?;
            calls.line(format!("C {} {} {effect}", delivery.id, delivery.attempt));
            let pause = rand::thread_rng().gen_range(0..=3);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            calls.line(format!("R {} {}", delivery.id, delivery.attempt));
            Ok::<(), BoxError>(())
        }
    };
    let dispatcher = Dispatcher::new(store.clone()).with_options(CHILD_DISPATCH);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        dispatcher
            .run::<Order, _, _>(handler, CancellationToken::new())
            .await
            .expect("dispatcher");
    });
    for task in 0..TASKS {
        let rng = StdRng::seed_from_u64(config.seed ^ task.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let fire = Fire {
            store: store.clone(),
            log: fires.clone(),
            round: config.round,
            task,
        };
        tasks.spawn(fire.run(rng, until));
    }
    println!("READY");
    std::io::stdout().flush().expect("flush stdout");
    while let Some(ended) = tasks.join_next().await {
        if let Err(err) = ended {
            eprintln!("a worker task failed: {err}");
            std::process::exit(3);
        }
        if Instant::now() < until {
            eprintln!("a worker task ended early");
            std::process::exit(3);
        }
    }
    eprintln!("not killed within {CHILD_LIFETIME:?}");
    std::process::exit(4);
}

/// What a command's outcome must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Applied now: a command nothing else fires (its label is unique).
    Apply,
    /// Applied now or a duplicate of an earlier fire of its key.
    Settle,
    /// Applied, duplicate, or rejected by the state machine.
    Any,
    /// `create` returned the instance.
    Create,
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Apply => "apply",
            Expect::Settle => "settle",
            Expect::Any => "any",
            Expect::Create => "create",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Expect::Apply, Expect::Settle, Expect::Any, Expect::Create]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

/// One firing task of a child.
struct Fire<S> {
    store: S,
    log: Log,
    round: u64,
    task: u64,
}

impl<S: Store> Fire<S> {
    async fn run(self, mut rng: StdRng, until: Instant) {
        let (round, task) = (self.round, self.task);
        for n in 0u64.. {
            if Instant::now() > until {
                return;
            }
            let op = format!("{round}.{task}.{n}");
            let roll = rng.gen_range(0..100);
            match roll {
                // A keyed note on the long-lived order its key maps to.
                0..=49 => {
                    let (id, command, label) = keyed_note(round, task, n);
                    self.fire(&op, &id, command, &label, Expect::Apply).await;
                }
                // An unkeyed note.
                50..=61 => {
                    let id = live_id(rng.gen_range(0..LIVE));
                    let label = format!("u-{round}-{task}-{n}");
                    let command = Command::new(OrderEvent::Annotate(Note(label.clone())));
                    self.fire(&op, &id, command, &label, Expect::Apply).await;
                }
                // The same request again under a key of an earlier round, to the same
                // order: a duplicate, or applied now if its first fire never committed.
                62..=76 if round > 0 => {
                    let earlier = rng.gen_range(round.saturating_sub(2)..round);
                    let (id, command, label) =
                        keyed_note(earlier, rng.gen_range(0..TASKS), rng.gen_range(0..40));
                    self.fire(&op, &id, command, &label, Expect::Settle).await;
                }
                // Paying a long-lived order: one `Charge`, then duplicates of it, or an
                // illegal repeat when an unkeyed `Pay` was first.
                77..=86 => {
                    let slot = rng.gen_range(0..LIVE);
                    let command = pay(LIVE_TOTAL).with_key(format!("pay-{slot}"));
                    self.fire(&op, &live_id(slot), command, "Pay", Expect::Any)
                        .await;
                }
                87..=88 => {
                    let slot = rng.gen_range(0..LIVE);
                    self.fire(&op, &live_id(slot), pay(LIVE_TOTAL), "Pay", Expect::Any)
                        .await;
                }
                // A short-lived order: create, pay, note, cancel with a refund.
                _ => {
                    let id = format!("e-{round}-{task}-{n}");
                    self.log.line(format!("B {op}.0 {id} create create"));
                    match self.store.create::<Order>(&id, initial_context(&id)).await {
                        Ok(_) => self.log.line(format!("E {op}.0 created 0")),
                        Err(err) => self.log.line(format!("X {op}.0 {err}")),
                    }
                    let command = pay(SHORT_TOTAL).with_key("pay");
                    self.fire(&format!("{op}.1"), &id, command, "Pay", Expect::Apply)
                        .await;
                    let note = format!("n-{round}-{task}-{n}");
                    let command =
                        Command::new(OrderEvent::Annotate(Note(note.clone()))).with_key(&note);
                    self.fire(&format!("{op}.2"), &id, command, &note, Expect::Apply)
                        .await;
                    let command = Command::new(OrderEvent::Cancel);
                    self.fire(&format!("{op}.3"), &id, command, "Cancel", Expect::Apply)
                        .await;
                }
            }
        }
    }

    async fn fire(&self, op: &str, id: &str, command: Command<Order>, label: &str, expect: Expect) {
        self.log
            .line(format!("B {op} {id} {label} {}", expect.name()));
        let line = match self.store.fire(id, command).await {
            Ok(outcome) => {
                let kind = if outcome.is_duplicate() {
                    "duplicate"
                } else {
                    "applied"
                };
                format!("E {op} {kind} {}", outcome.transition().version)
            }
            Err(Error::IllegalTransition { .. } | Error::GuardRejected { .. }) => {
                format!("E {op} rejected 0")
            }
            Err(err) => format!("X {op} {err}"),
        };
        self.log.line(line);
    }
}

fn live_id(slot: u64) -> String {
    format!("o-{slot}")
}

/// The keyed note `k-<round>-<task>-<n>` and the long-lived order it always goes to.
fn keyed_note(round: u64, task: u64, n: u64) -> (String, Command<Order>, String) {
    let label = format!("k-{round}-{task}-{n}");
    let slot = (round * 31 + task * 7 + n) % LIVE;
    let command = Command::new(OrderEvent::Annotate(Note(label.clone()))).with_key(&label);
    (live_id(slot), command, label)
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

/// The context an order was created with, known from its id.
fn initial_context(id: &str) -> OrderData {
    OrderData {
        total_cents: if id.starts_with("o-") {
            LIVE_TOTAL
        } else {
            SHORT_TOTAL
        },
        ..OrderData::default()
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

#[derive(Debug)]
struct MachineRow {
    id: String,
    state: String,
    version: i64,
    context: String,
}

#[derive(Debug)]
struct TransitionRow {
    id: String,
    version: i64,
    from: String,
    event: String,
    payload: String,
    to: String,
    key: Option<String>,
}

#[derive(Debug)]
struct OutboxRow {
    id: String,
    version: i64,
    seq: i64,
    effect: String,
    attempts: i64,
    done: i64,
    dead: i64,
}

impl OutboxRow {
    fn effect_id(&self) -> String {
        format!("Order/{}/{}/{}", self.id, self.version, self.seq)
    }
}

#[derive(Debug)]
struct Tables {
    machines: Vec<MachineRow>,
    transitions: Vec<TransitionRow>,
    outbox: Vec<OutboxRow>,
    timers: Vec<(String, i64)>,
}

/// What the tables hold, once they passed [`check_tables`].
#[derive(Debug, Default)]
struct Checked {
    machines: HashSet<String>,
    /// (instance, version) -> label of the event.
    rows: HashMap<(String, i64), String>,
    /// (instance, label) -> version.
    labels: HashMap<(String, String), i64>,
    transitions: usize,
    /// Effect id -> effect, for every outbox row.
    effects: HashMap<String, OrderEffect>,
    done: HashSet<String>,
}

/// How the history names an event: the note of an `Annotate` (unique per instance),
/// else the event's name (each at most once per instance in this test).
fn label(event: &OrderEvent) -> String {
    match event {
        OrderEvent::Annotate(Note(note)) => note.clone(),
        other => Order::event_name(other).to_owned(),
    }
}

/// Checks the tables on their own: every invariant a crash must not break. Panics
/// naming the instance and version at fault.
fn check_tables(tables: &Tables) -> Checked {
    let mut history: BTreeMap<&str, Vec<&TransitionRow>> = BTreeMap::new();
    for row in &tables.transitions {
        history.entry(&row.id).or_default().push(row);
    }
    let mut outbox: BTreeMap<(&str, i64), Vec<&OutboxRow>> = BTreeMap::new();
    for row in &tables.outbox {
        outbox.entry((&row.id, row.version)).or_default().push(row);
    }
    let timers: HashSet<(&str, i64)> = tables
        .timers
        .iter()
        .map(|(id, version)| (id.as_str(), *version))
        .collect();
    let mut checked = Checked::default();

    for machine in &tables.machines {
        let id = machine.id.as_str();
        let mut rows = history.remove(id).unwrap_or_default();
        rows.sort_by_key(|row| row.version);
        let versions: Vec<i64> = rows.iter().map(|row| row.version).collect();
        let n = rows.len() as i64;
        assert!(
            versions.iter().copied().eq(1..=n),
            "{id}: history versions are not 1..={n} without gaps: {versions:?}"
        );
        assert_eq!(
            machine.version, n,
            "{id}: fsm_machines.version is not the highest history version"
        );

        // Replay the history with the pure step rule from the initial state.
        let mut state = Order::INITIAL;
        let mut context = initial_context(id);
        for row in &rows {
            let v = row.version;
            let trigger: Trigger<OrderEvent> = serde_json::from_str(&row.payload)
                .unwrap_or_else(|e| panic!("{id} v{v}: payload {:?}: {e}", row.payload));
            let Trigger::Event(event) = trigger else {
                panic!("{id} v{v}: a timer fired, and none is due in this test")
            };
            assert_eq!(row.event, Order::event_name(&event), "{id} v{v}: event");
            assert_eq!(row.from, state.as_str(), "{id} v{v}: from_state");
            let step = fsm_core::step::<Order>(state, &mut context, &event)
                .unwrap_or_else(|r| panic!("{id} v{v}: replay rejects {event:?}: {r:?}"));
            assert_eq!(row.to, step.to.as_str(), "{id} v{v}: to_state");
            state = step.to;

            let expected = step.effects.into_vec();
            let mut queued = outbox.remove(&(id, v)).unwrap_or_default();
            queued.sort_by_key(|row| row.seq);
            let found: Vec<(i64, OrderEffect)> = queued
                .iter()
                .map(|row| {
                    let effect = serde_json::from_str(&row.effect)
                        .unwrap_or_else(|e| panic!("{id} v{v}: effect {:?}: {e}", row.effect));
                    (row.seq, effect)
                })
                .collect();
            let wanted: Vec<(i64, OrderEffect)> = (0..).zip(expected).collect();
            assert_eq!(
                found, wanted,
                "{id} v{v}: the outbox holds other than exactly this transition's effects"
            );
            for (row, (_, effect)) in queued.iter().zip(found) {
                if row.done != 0 {
                    checked.done.insert(row.effect_id());
                }
                checked.effects.insert(row.effect_id(), effect);
            }

            let name = label(&event);
            if let OrderEvent::Annotate(Note(note)) = &event {
                let keyed = note.starts_with("k-") || note.starts_with("n-");
                let key = keyed.then_some(note.as_str());
                assert_eq!(row.key.as_deref(), key, "{id} v{v}: idempotency key");
            }
            if let Some(first) = checked.labels.insert((id.to_owned(), name.clone()), v) {
                panic!("{id}: {name} applied twice, at versions {first} and {v}");
            }
            checked.rows.insert((id.to_owned(), v), name);
        }
        assert_eq!(
            machine.state,
            state.as_str(),
            "{id}: fsm_machines.state is not the last history row's target"
        );
        let stored: OrderData = serde_json::from_str(&machine.context)
            .unwrap_or_else(|e| panic!("{id}: context {:?}: {e}", machine.context));
        assert_eq!(stored, context, "{id}: context is not the history's replay");
        if state == OrderState::Created {
            assert!(
                timers.contains(&(id, n)),
                "{id}: in Created at version {n} without its expiry timer armed"
            );
        }
        checked.transitions += rows.len();
        checked.machines.insert(machine.id.clone());
    }
    assert!(
        history.is_empty(),
        "history of instances that do not exist: {:?}",
        history.keys().collect::<Vec<_>>()
    );
    assert!(
        outbox.is_empty(),
        "outbox rows of transitions that never committed: {:?}",
        outbox.keys().collect::<Vec<_>>()
    );
    checked
}

/// What a child's fire log showed.
#[derive(Debug, Default)]
struct Fires {
    begun: usize,
    acknowledged: usize,
    in_flight: usize,
    /// In flight at the kill, yet in the history: the commit landed, its reply did not.
    committed_unacknowledged: usize,
    /// In flight at the kill and not in the history.
    rolled_back: usize,
}

/// Checks a child's fire log against the tables: every acknowledged outcome is the
/// history row at the version it reported, and no command failed unexpectedly.
fn check_fires(lines: &[String], checked: &Checked) -> Result<Fires, String> {
    struct Begun<'a> {
        id: &'a str,
        label: &'a str,
        expect: Expect,
        ended: bool,
    }
    let mut begun: BTreeMap<&str, Begun<'_>> = BTreeMap::new();
    let mut fires = Fires::default();
    let mut errors = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["B", op, id, label, expect] => {
                let expect = Expect::parse(expect).ok_or_else(|| format!("bad line {line:?}"))?;
                begun.insert(
                    *op,
                    Begun {
                        id,
                        label,
                        expect,
                        ended: false,
                    },
                );
                fires.begun += 1;
            }
            ["E", op, kind, version] => {
                let fire = begun
                    .get_mut(op)
                    .ok_or_else(|| format!("{line:?} without its B line"))?;
                fire.ended = true;
                fires.acknowledged += 1;
                let version: i64 = version.parse().map_err(|_| format!("bad line {line:?}"))?;
                let allowed = match fire.expect {
                    Expect::Apply => *kind == "applied",
                    Expect::Settle => matches!(*kind, "applied" | "duplicate"),
                    Expect::Any => matches!(*kind, "applied" | "duplicate" | "rejected"),
                    Expect::Create => *kind == "created",
                };
                if !allowed {
                    errors.push(format!(
                        "{op} {} {}: {kind}, expected {}",
                        fire.id,
                        fire.label,
                        fire.expect.name()
                    ));
                }
                match *kind {
                    "applied" | "duplicate" => {
                        let row = checked.rows.get(&(fire.id.to_owned(), version));
                        if row.map(String::as_str) != Some(fire.label) {
                            errors.push(format!(
                                "{op}: {kind} {} {} at version {version}, but the history \
                                 has {row:?} there",
                                fire.id, fire.label
                            ));
                        }
                    }
                    "created" if !checked.machines.contains(fire.id) => {
                        errors.push(format!("{op}: created {}, which does not exist", fire.id));
                    }
                    _ => {}
                }
            }
            ["X", op, ..] => {
                if let Some(fire) = begun.get_mut(op) {
                    fire.ended = true;
                }
                errors.push(format!("command failed: {line}"));
            }
            _ => errors.push(format!("bad line {line:?}")),
        }
    }
    for fire in begun.values().filter(|fire| !fire.ended) {
        fires.in_flight += 1;
        match fire.expect {
            Expect::Apply => {
                if checked
                    .labels
                    .contains_key(&(fire.id.to_owned(), fire.label.to_owned()))
                {
                    fires.committed_unacknowledged += 1;
                } else {
                    fires.rolled_back += 1;
                }
            }
            Expect::Create => {
                if checked.machines.contains(fire.id) {
                    fires.committed_unacknowledged += 1;
                } else {
                    fires.rolled_back += 1;
                }
            }
            // Duplicates and repeats: their label may be in the history from before.
            Expect::Settle | Expect::Any => {}
        }
    }
    if errors.is_empty() {
        Ok(fires)
    } else {
        Err(errors.join("\n"))
    }
}

/// One handler call.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    attempt: u32,
    effect: OrderEffect,
    /// Whether the handler returned (else the process died in it).
    returned: bool,
    /// The round of the child that made the call, or [`PARENT`].
    by: usize,
}

/// [`Call::by`] of the restarted dispatcher's calls.
const PARENT: usize = usize::MAX;

/// The handler calls of a child's call log, and how many were cut by the kill.
fn read_calls(lines: &[String], by: usize) -> (Vec<Call>, usize) {
    let mut calls: Vec<Call> = Vec::new();
    let mut open: HashMap<(String, u32), usize> = HashMap::new();
    for line in lines {
        let mut words = line.splitn(4, ' ');
        let (tag, id, attempt) = (words.next(), words.next(), words.next());
        let (Some(tag), Some(id), Some(Ok(attempt))) = (tag, id, attempt.map(str::parse)) else {
            panic!("bad call line {line:?}");
        };
        match tag {
            "C" => {
                let json = words.next().unwrap_or_default();
                let effect = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("effect in {line:?}: {e}"));
                open.insert((id.to_owned(), attempt), calls.len());
                calls.push(Call {
                    id: id.to_owned(),
                    attempt,
                    effect,
                    returned: false,
                    by,
                });
            }
            "R" => {
                let call = open
                    .remove(&(id.to_owned(), attempt))
                    .unwrap_or_else(|| panic!("{line:?} without its C line"));
                calls[call].returned = true;
            }
            _ => panic!("bad call line {line:?}"),
        }
    }
    (calls, open.len())
}

/// Every handler call was for an effect in the outbox, saw that effect, and was not for
/// one already done before the round (in `done`).
fn check_calls(calls: &[Call], checked: &Checked, done: &HashSet<String>) -> Result<(), String> {
    let mut errors = Vec::new();
    for call in calls {
        if done.contains(&call.id) {
            errors.push(format!("{call:?}: delivered again after it was done"));
        }
        match checked.effects.get(&call.id) {
            None => errors.push(format!("{call:?}: no such effect in the outbox")),
            Some(effect) if *effect != call.effect => errors.push(format!(
                "{call:?}: the outbox holds {effect:?} under this id"
            )),
            Some(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// At-least-once delivery with stable ids, over every call of the run: each effect was
/// handled, each done one by a handler that returned, and each effect's calls carry
/// increasing attempt numbers no higher than the row's count. Returns how many effects
/// were handled more than once, and how many of those the parent finished after a child.
fn check_delivery(tables: &Tables, calls: &[Call]) -> (usize, usize) {
    let mut by_id: HashMap<&str, Vec<&Call>> = HashMap::new();
    for call in calls {
        by_id.entry(&call.id).or_default().push(call);
    }
    let (mut redelivered, mut recovered) = (0, 0);
    for row in &tables.outbox {
        let id = row.effect_id();
        let calls = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} is done but no handler ever saw it"));
        assert!(
            calls.iter().any(|call| call.returned),
            "{id} is done but every handler call was cut: {calls:?}"
        );
        // Every claim counts one attempt, and the claims of one process all come after
        // those of the processes before it (each was dead before the next started).
        let mut attempts: Vec<(usize, u32)> =
            calls.iter().map(|call| (call.by, call.attempt)).collect();
        attempts.sort_unstable();
        assert!(
            attempts[0].1 >= 1 && attempts.windows(2).all(|w| w[0].1 < w[1].1),
            "{id}: attempt numbers not increasing from 1 process by process: {calls:?}"
        );
        assert!(
            i64::from(attempts[attempts.len() - 1].1) <= row.attempts,
            "{id}: a call saw attempt {attempts:?}, but the row counts {}",
            row.attempts
        );
        redelivered += usize::from(calls.len() > 1);
        recovered += usize::from(
            calls.iter().any(|call| call.by != PARENT)
                && calls.iter().any(|call| call.by == PARENT),
        );
    }
    (redelivered, recovered)
}

/// The whole lines of a log; a line the kill cut short (no newline) is dropped.
fn lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    // After the last newline: empty, or a cut line.
    lines.pop();
    lines
}
