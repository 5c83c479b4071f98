//! Crash safety of the buffered intake: a child process submits commands and runs
//! `IntakeWorker`s until it is killed with SIGKILL at a random moment; after every kill,
//! and after a final drain, every submitted command is applied exactly once, in order,
//! and what the intake recorded agrees with history.
//!
//! The approach of `crash.rs`: each round spawns this test binary as a child running
//! only the ignored `child` test, told what to do by `FSM_INTAKE_CRASH_*` variables.
//! The child opens the store, starts two workers with a short lease ([`CHILD_LEASE`]),
//! prints `READY`, and [`TASKS`] tasks submit `Annotate(key)` under fresh keys
//! `r<round>-t<task>-n<n>` to the orders `o-0`..`o-7` in a tight loop, each first
//! resubmitting three keys of the previous round. Each appends `S <id> <key>` to a log
//! before a submit and `A <id> <key>` once it returned (one unbuffered `write` per
//! line, so a line outlives the kill).
//!
//! After each kill the parent checks: no key appears twice in an instance's history,
//! every history row's key was submitted to the intake, every acknowledged key is
//! recorded, every row recorded applied has its transition in history at the version
//! it names, no row is recorded duplicate or failed, and each task's commands to an
//! instance were applied in the order it submitted them. After the last round, once the
//! leases expired, a worker in the parent drains the rest: nothing is pending, every row
//! is applied, and history holds exactly the submitted keys, once each.
//!
//! [`ROUNDS`] kills per backend, or `FSM_INTAKE_CRASH_ROUNDS`; `FSM_INTAKE_CRASH_SEED`
//! replays the random choices. The PostgreSQL test reads `FSM_POSTGRES_URL` (skipped
//! without it, failing when `CI` is set).
#![cfg(all(unix, any(feature = "sqlite", feature = "postgres")))]

#[path = "support/child.rs"]
mod child;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fsm_core::testing::{Note, Order, OrderData, OrderEvent};
use fsm_core::{Command, RetryPolicy, Store, Transition, Trigger};
use fsm_sqlx::intake::IntakeOptions;
use fsm_sqlx::{Dialect, SqlStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use child::{ChildProcess, Log};
use common::{TempDir, runtime};

/// Kills per backend, unless `FSM_INTAKE_CRASH_ROUNDS` says otherwise.
const ROUNDS: usize = 20;
/// Submitting tasks in a child.
const TASKS: u64 = 4;
/// Orders `o-0`..`o-7`, created by the parent.
const INSTANCES: u64 = 8;
/// How long after READY the child is killed, in milliseconds.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 30..=400;
/// The children's lease: rows a killed child held are claimable again after it.
const CHILD_LEASE: Duration = Duration::from_millis(400);
/// A child that is not killed stops by itself (the parent failed or vanished).
const CHILD_LIFETIME: Duration = Duration::from_secs(20);
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// The children's intake: small claims, quick retries, a short lease.
const CHILD_INTAKE: IntakeOptions = IntakeOptions {
    submit_batch: 64,
    submits_in_flight: 2,
    claim_batch: 8,
    lease: CHILD_LEASE,
    retry_delay: Duration::from_millis(20),
    idle_poll: Duration::from_millis(5),
};

/// Four tasks' submits and two workers share eight rows: never give up on a race.
const PATIENT: RetryPolicy = RetryPolicy {
    max_attempts: 1000,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(10),
};

#[cfg(feature = "sqlite")]
#[test]
fn sigkill_of_the_intake_worker_loses_nothing_and_applies_nothing_twice_on_sqlite() {
    let runtime = runtime();
    let dir = TempDir::new();
    let path = dir.path.join("intake-crash.db");
    let store = runtime.block_on(async {
        let store = fsm_sqlx::SqliteStore::open(&path)
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate");
        store
    });
    let target = Target::Sqlite(path);
    rounds(&runtime, &store, &target, &dir, "sqlite");
    runtime.block_on(store.pool().close());
}

#[cfg(feature = "postgres")]
#[test]
fn sigkill_of_the_intake_worker_loses_nothing_and_applies_nothing_twice_on_postgres() {
    let Some(url) = common::server_url("FSM_POSTGRES_URL") else {
        return;
    };
    let runtime = runtime();
    let dir = TempDir::new();
    let (store, mut schema) = runtime.block_on(async {
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
    let target = Target::Pg {
        url: schema.url.clone(),
        schema: schema.name.clone(),
    };
    rounds(&runtime, &store, &target, &dir, "postgres");
    runtime.block_on(async {
        store.pool().close().await;
        schema.drop_now().await;
    });
}

/// The child process: submits and applies until killed. Does nothing unless started
/// by one of the tests above.
#[test]
#[ignore = "the child process of the intake crash tests, started by them"]
fn child() {
    let Ok(backend) = std::env::var("FSM_INTAKE_CRASH_BACKEND") else {
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let config = ChildConfig {
        log: PathBuf::from(env("FSM_INTAKE_CRASH_LOG")),
        round: env("FSM_INTAKE_CRASH_ROUND").parse().expect("round"),
        seed: env("FSM_INTAKE_CRASH_SEED").parse().expect("seed"),
    };
    let runtime = runtime();
    runtime.block_on(async {
        match backend.as_str() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let store = fsm_sqlx::SqliteStore::open(env("FSM_INTAKE_CRASH_TARGET"))
                    .await
                    .expect("open SQLite");
                work(store.with_retry(PATIENT), config).await;
            }
            #[cfg(feature = "postgres")]
            "postgres" => {
                let (url, schema) = (
                    env("FSM_INTAKE_CRASH_TARGET"),
                    env("FSM_INTAKE_CRASH_SCHEMA"),
                );
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
            other => panic!("unknown FSM_INTAKE_CRASH_BACKEND {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent.

/// Where the children find the database.
enum Target {
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf),
    #[cfg(feature = "postgres")]
    Pg { url: String, schema: String },
}

impl Target {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            #[cfg(feature = "sqlite")]
            Target::Sqlite(path) => vec![
                ("FSM_INTAKE_CRASH_BACKEND", "sqlite".to_owned()),
                ("FSM_INTAKE_CRASH_TARGET", path.display().to_string()),
            ],
            #[cfg(feature = "postgres")]
            Target::Pg { url, schema } => vec![
                ("FSM_INTAKE_CRASH_BACKEND", "postgres".to_owned()),
                ("FSM_INTAKE_CRASH_TARGET", url.clone()),
                ("FSM_INTAKE_CRASH_SCHEMA", schema.clone()),
            ],
        }
    }
}

fn rounds<D: Dialect>(
    runtime: &tokio::runtime::Runtime,
    store: &SqlStore<D>,
    target: &Target,
    dir: &TempDir,
    backend: &str,
) where
    for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
    for<'q> <D as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    for<'r> (String, String, i32, Option<String>): sqlx::FromRow<'r, D::Row>,
{
    let started = Instant::now();
    let rounds = std::env::var("FSM_INTAKE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let seed = std::env::var("FSM_INTAKE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("{backend}: FSM_INTAKE_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    runtime.block_on(async {
        for n in 0..INSTANCES {
            store
                .create::<Order>(&format!("o-{n}"), OrderData::default())
                .await
                .expect("create an order");
        }
    });
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut last_kill = Instant::now();
    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        let log = dir.path.join(format!("submits-{round}.log"));
        let mut child = spawn_child(target, dir, &log, round, rng.r#gen());
        child.wait_ready();
        std::thread::sleep(kill_after);
        child.kill();
        last_kill = Instant::now();
        runtime.block_on(after_kill(store, target));
        let (begun, round_acked) = read_log(&log);
        acked.extend(round_acked.iter().map(|(k, id)| (k.clone(), id.clone())));
        let found = runtime.block_on(read(store));
        let checked = check(&found, &acked)
            .unwrap_or_else(|why| child.fail(&format!("round {round}: {why}")));
        eprintln!(
            "{backend} round {round:2}: killed {:3} ms after READY; {begun:4} submits begun, \
             {:4} acknowledged; now {} recorded ({} pending, {} of them applied but not yet \
             recorded), {} transitions",
            kill_after.as_millis(),
            round_acked.len(),
            checked.recorded,
            checked.pending,
            checked.applied_unrecorded,
            checked.transitions,
        );
    }

    // The restart: a worker in this process, once the children's leases ran out.
    let drain_started = Instant::now();
    let lease_over = last_kill + CHILD_LEASE + Duration::from_millis(50);
    std::thread::sleep(lease_over.saturating_duration_since(Instant::now()));
    runtime.block_on(async {
        let intake = store.intake::<Order>();
        let worker = intake.worker();
        let deadline = Instant::now() + DRAIN_WITHIN;
        while intake.pending().await.expect("count pending") > 0 {
            assert!(Instant::now() < deadline, "the intake did not drain");
            worker.run_once().await.expect("a drain pass");
        }
    });
    let found = runtime.block_on(read(store));
    let checked = check(&found, &acked).unwrap_or_else(|why| panic!("after the drain: {why}"));
    assert_eq!(checked.pending, 0, "nothing pending after the drain");
    let submitted: HashSet<(&str, &str)> = found
        .intake
        .iter()
        .map(|row| (row.id.as_str(), row.key.as_str()))
        .collect();
    let applied: HashSet<(&str, &str)> = found
        .history
        .iter()
        .flat_map(|(id, rows)| {
            rows.iter()
                .map(move |t| (id.as_str(), t.key.as_deref().unwrap_or("")))
        })
        .collect();
    assert_eq!(
        submitted, applied,
        "history holds exactly the submitted keys"
    );
    assert_eq!(
        checked.transitions,
        found.intake.len(),
        "each key applied once"
    );
    eprintln!(
        "{backend}: {rounds} kills; {} submissions, {} acknowledged, all applied once; drain {:?}; total {:?}",
        found.intake.len(),
        acked.len(),
        drain_started.elapsed(),
        started.elapsed()
    );
}

/// `application_name` of a child's PostgreSQL connections.
#[cfg(feature = "postgres")]
fn child_name(schema: &str) -> String {
    format!("{schema}-child")
}

/// Waits until the killed child's server sessions are gone, so a statement the server
/// was still running has committed or rolled back before the check (a killed process
/// holds no SQLite lock: the kernel drops it).
async fn after_kill<D: Dialect>(store: &SqlStore<D>, target: &Target) {
    let _ = store;
    match target {
        #[cfg(feature = "sqlite")]
        Target::Sqlite(_) => {}
        #[cfg(feature = "postgres")]
        Target::Pg { url, schema } => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sessions: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(child_name(schema))
                .fetch_one(&mut conn)
                .await
                .expect("read pg_stat_activity");
                if sessions == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "a killed child's sessions stay open"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// A recorded submission.
struct IntakeRow {
    id: String,
    key: String,
    status: i32,
    outcome: Option<String>,
}

/// What the database holds after a kill (the child is gone: nothing changes meanwhile).
struct Found {
    intake: Vec<IntakeRow>,
    history: BTreeMap<String, Vec<Transition<Order>>>,
}

async fn read<D: Dialect>(store: &SqlStore<D>) -> Found
where
    for<'c> &'c mut D::Connection: sqlx::Executor<'c, Database = D>,
    for<'q> <D as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, D>,
    for<'r> (String, String, i32, Option<String>): sqlx::FromRow<'r, D::Row>,
{
    let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT machine_id, idem_key, status, outcome FROM fsm_intake WHERE machine_type = 'Order'",
    )
    .fetch_all(store.pool())
    .await
    .expect("read fsm_intake");
    let intake = rows
        .into_iter()
        .map(|(id, key, status, outcome)| IntakeRow {
            id,
            key,
            status,
            outcome,
        })
        .collect();
    let mut history = BTreeMap::new();
    for n in 0..INSTANCES {
        let id = format!("o-{n}");
        let rows = store.history::<Order>(&id).await.expect("history");
        history.insert(id, rows);
    }
    Found { intake, history }
}

#[derive(Debug)]
struct Checked {
    recorded: usize,
    pending: usize,
    applied_unrecorded: usize,
    transitions: usize,
}

/// The invariants of the module documentation, on what was found.
fn check(found: &Found, acked: &HashMap<String, String>) -> Result<Checked, String> {
    let recorded: HashMap<(&str, &str), &IntakeRow> = found
        .intake
        .iter()
        .map(|row| ((row.id.as_str(), row.key.as_str()), row))
        .collect();
    let mut transitions = 0;
    let mut in_history: HashMap<(&str, &str), u64> = HashMap::new();
    for (id, rows) in &found.history {
        // Each (round, task)'s commands to this instance, in the order applied.
        let mut last_n: HashMap<(u64, u64), u64> = HashMap::new();
        for t in rows {
            transitions += 1;
            let key = t
                .key
                .as_deref()
                .ok_or(format!("{id} v{}: a transition without a key", t.version))?;
            if in_history.insert((id, key), t.version).is_some() {
                return Err(format!("{id}: key {key} applied twice"));
            }
            if !recorded.contains_key(&(id.as_str(), key)) {
                return Err(format!("{id}: key {key} in history was never submitted"));
            }
            let Trigger::Event(OrderEvent::Annotate(Note(note))) = &t.event else {
                return Err(format!(
                    "{id} v{}: unexpected event {:?}",
                    t.version, t.event
                ));
            };
            if note != key {
                return Err(format!("{id} v{}: note {note} under key {key}", t.version));
            }
            let (round, task, n) = parse_key(key).ok_or(format!("unexpected key {key}"))?;
            if let Some(&before) = last_n.get(&(round, task))
                && before >= n
            {
                return Err(format!(
                    "{id}: {key} applied after n{before:05} of its task"
                ));
            }
            last_n.insert((round, task), n);
        }
    }
    for (key, id) in acked {
        if !recorded.contains_key(&(id.as_str(), key.as_str())) {
            return Err(format!("acknowledged {id} {key} is not recorded: lost"));
        }
    }
    let (mut pending, mut applied_unrecorded) = (0, 0);
    for row in &found.intake {
        let applied = in_history.get(&(row.id.as_str(), row.key.as_str()));
        match row.status {
            0 => {
                pending += 1;
                applied_unrecorded += usize::from(applied.is_some());
            }
            1 => {
                let outcome: Transition<Order> = row
                    .outcome
                    .as_deref()
                    .and_then(|json| serde_json::from_str(json).ok())
                    .ok_or(format!(
                        "{} {}: applied without a readable outcome",
                        row.id, row.key
                    ))?;
                if applied != Some(&outcome.version) {
                    return Err(format!(
                        "{} {}: recorded applied at v{}, history has {applied:?}",
                        row.id, row.key, outcome.version
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{} {}: recorded status {other} ({:?}); only applied is expected",
                    row.id, row.key, row.outcome
                ));
            }
        }
    }
    Ok(Checked {
        recorded: found.intake.len(),
        pending,
        applied_unrecorded,
        transitions,
    })
}

/// `r<round>-t<task>-n<n>`.
fn parse_key(key: &str) -> Option<(u64, u64, u64)> {
    let mut parts = key.split('-');
    let round = parts.next()?.strip_prefix('r')?.parse().ok()?;
    let task = parts.next()?.strip_prefix('t')?.parse().ok()?;
    let n = parts.next()?.strip_prefix('n')?.parse().ok()?;
    Some((round, task, n))
}

/// Submits begun, and the keys acknowledged (key -> instance).
fn read_log(path: &Path) -> (usize, HashMap<String, String>) {
    let Ok(file) = File::open(path) else {
        return (0, HashMap::new());
    };
    let (mut begun, mut acked) = (0, HashMap::new());
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["S", _, _] => begun += 1,
            ["A", id, key] => {
                acked.insert((*key).to_owned(), (*id).to_owned());
            }
            // The last line may be cut by the kill.
            _ => {}
        }
    }
    (begun, acked)
}

/// The child process for round `round`, logging to `log`.
fn spawn_child(
    target: &Target,
    dir: &TempDir,
    log: &Path,
    round: usize,
    seed: u64,
) -> ChildProcess {
    let stderr = dir.path.join(format!("stderr-{round}.log"));
    ChildProcess::spawn("child", stderr, |command| {
        command
            .envs(target.env())
            .env("FSM_INTAKE_CRASH_LOG", log)
            .env("FSM_INTAKE_CRASH_ROUND", round.to_string())
            .env("FSM_INTAKE_CRASH_SEED", seed.to_string())
    })
}

// ---------------------------------------------------------------------------------------
// The child.

struct ChildConfig {
    log: PathBuf,
    round: u64,
    seed: u64,
}

async fn work<D: Dialect>(store: SqlStore<D>, config: ChildConfig) {
    let log = Log::create(&config.log);
    let intake = store.intake::<Order>().with_options(CHILD_INTAKE);
    let shutdown = CancellationToken::new();
    for _ in 0..2 {
        tokio::spawn(intake.worker().run(shutdown.clone()));
    }
    println!("READY");
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (intake, log) = (intake.clone(), log.clone());
            let mut rng = StdRng::seed_from_u64(config.seed ^ task);
            let round = config.round;
            tokio::spawn(async move {
                let submit = |id: String, key: String| {
                    let (intake, log) = (intake.clone(), log.clone());
                    async move {
                        log.line(format!("S {id} {key}"));
                        let command =
                            Command::<Order>::new(OrderEvent::Annotate(Note(key.clone())))
                                .with_key(key.clone());
                        match intake.submit(&id, command).await {
                            Ok(_) => log.line(format!("A {id} {key}")),
                            Err(err) => panic!("submit {id} {key}: {err}"),
                        }
                    }
                };
                // The same requests again: whatever the last round recorded is answered.
                if round > 0 {
                    for n in 0..3 {
                        let id = format!("o-{}", (task + n) % INSTANCES);
                        submit(id, format!("r{}-t{task}-n{n:05}", round - 1)).await;
                    }
                }
                for n in 0.. {
                    let id = format!("o-{}", (task + n) % INSTANCES);
                    submit(id, format!("r{round}-t{task}-n{n:05}")).await;
                    if rng.gen_bool(0.1) {
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3))).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(CHILD_LIFETIME).await;
    shutdown.cancel();
    for task in tasks {
        task.abort();
    }
}
