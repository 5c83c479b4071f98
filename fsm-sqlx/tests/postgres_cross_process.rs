//! Four OS processes of sixteen tasks each fire at one PostgreSQL row: the
//! compare-and-set in the database, nothing process-local, makes every transition
//! apply once and keeps versions gapless.
//!
//! Each test spawns four copies of this test binary that run only the ignored `worker`
//! test, told what to do by `FSM_WORKER_*` variables. A worker connects, prints
//! `READY`, waits for a start line on its stdin (written to all four at once, so that
//! they race), fires from sixteen tasks and prints one line per fire:
//!
//! ```text
//! OUTCOME applied|duplicate <version> <at_ms> <key> <elapsed_us>
//! ERROR <key> <error>
//! ```
//!
//! Reads the server from `FSM_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; without it the tests are skipped, or fail
//! when `CI` is set.
#![cfg(feature = "postgres")]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pg::Schema;
use fsm_core::testing::{Note, Order, OrderData, OrderEvent, OrderState, Payment};
use fsm_core::{Command, RetryPolicy, StateMachine, Store};
use fsm_sqlx::PgStore;
use sqlx::postgres::PgPoolOptions;

const URL_VAR: &str = "FSM_POSTGRES_URL";
const PROCESSES: usize = 4;
const TASKS: usize = 16;
const FIRES: usize = PROCESSES * TASKS;
const ID: &str = "o-1";
const TOTAL_CENTS: u64 = 500;
/// How long the workers may take to connect, and then to race.
const READY_WITHIN: Duration = Duration::from_secs(60);
const RACE_WITHIN: Duration = Duration::from_secs(120);

/// 64 writers on one row lose many races: the workers' store never gives up early.
const PATIENT: RetryPolicy = RetryPolicy {
    max_attempts: 1000,
    base_delay: Duration::from_millis(1),
    max_delay: Duration::from_millis(20),
};

/// A double-click that reaches four service instances at once: 64 fires of one keyed
/// `Pay`, one applied, 63 duplicates of that same transition, one charge queued.
#[test]
fn one_key_across_4_processes_applies_once() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let runtime = runtime();
    let mut schema = runtime.block_on(Schema::create(url));
    let store = runtime.block_on(order_in(&schema));

    let race = race(&schema, Mode::OneKey);

    let applied: Vec<_> = race.reports.iter().filter(|r| r.applied).collect();
    assert_eq!(applied.len(), 1, "{applied:#?}");
    let duplicates = race.reports.iter().filter(|r| !r.applied).count();
    assert_eq!(duplicates, FIRES - 1);
    let original = applied[0];
    for report in &race.reports {
        assert_eq!(
            (report.version, report.at_ms, report.key.as_str()),
            (1, original.at_ms, "double-click"),
            "every fire reports the one transition: {report:?}"
        );
    }
    runtime.block_on(async {
        let stored = store.load::<Order>(ID).await.unwrap();
        assert_eq!(
            (stored.state, stored.version, stored.context.paid_cents),
            (OrderState::Paid, 1, TOTAL_CENTS)
        );
        let history = store.history::<Order>(ID).await.unwrap();
        let rows: Vec<_> = history
            .iter()
            .map(|t| (t.version, t.key.as_deref(), t.at_ms))
            .collect();
        assert_eq!(rows, [(1, Some("double-click"), original.at_ms)]);
        assert_eq!(outbox_rows(&store).await, 1, "the customer is charged once");
        let lookups = machine_lookups(&store).await;
        eprintln!("one key: {lookups} primary-key lookups of fsm_machines");
        store.pool().close().await;
        schema.drop_now().await;
    });
    race.log("one key");
}

/// 64 distinct `Annotate` commands from four processes: all applied, versions exactly
/// 1..=64, each reported version is the history row of that command's key, and the
/// stored instance is what replaying the history from the initial state gives.
#[test]
fn distinct_keys_across_4_processes_give_gapless_versions() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let runtime = runtime();
    let mut schema = runtime.block_on(Schema::create(url));
    let store = runtime.block_on(order_in(&schema));

    let race = race(&schema, Mode::DistinctKeys);

    assert!(
        race.reports.iter().all(|r| r.applied),
        "{:#?}",
        race.reports
    );
    let mut versions: Vec<_> = race.reports.iter().map(|r| r.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=FIRES as u64).collect::<Vec<_>>());
    runtime.block_on(async {
        let history = store.history::<Order>(ID).await.unwrap();
        let stored_versions: Vec<_> = history.iter().map(|t| t.version).collect();
        assert_eq!(stored_versions, versions);
        for report in &race.reports {
            let row = &history[report.version as usize - 1];
            assert_eq!(
                (row.key.as_deref(), row.at_ms),
                (Some(report.key.as_str()), report.at_ms),
                "version {} is the transition its fire reported",
                report.version
            );
        }

        // Replaying the history with the pure step rule gives the stored instance.
        let mut state = Order::INITIAL;
        let mut context = initial_context();
        for row in &history {
            let event = row.event.event().expect("an event, not a timer");
            let step = fsm_core::step::<Order>(state, &mut context, event)
                .unwrap_or_else(|rejection| panic!("version {}: {rejection:?}", row.version));
            assert_eq!((step.from, step.to), (row.from, row.to), "{row:?}");
            state = step.to;
        }
        let stored = store.load::<Order>(ID).await.unwrap();
        assert_eq!(
            (stored.state, stored.version, &stored.context),
            (state, FIRES as u64, &context)
        );
        let noted: BTreeSet<_> = stored.context.notes.iter().cloned().collect();
        let sent: BTreeSet<_> = race.reports.iter().map(|r| note_of(&r.key)).collect();
        assert_eq!((noted.len(), noted), (FIRES, sent));
        assert_eq!(outbox_rows(&store).await, FIRES as i64);
        let attempts = machine_lookups(&store).await / 2;
        let switches = history
            .windows(2)
            .filter(|w| process_of(w[0].key.as_deref()) != process_of(w[1].key.as_deref()))
            .count();
        eprintln!(
            "distinct keys: about {attempts} compare-and-set attempts for {FIRES} fires; \
             the writing process changed {switches} times along the history"
        );
        store.pool().close().await;
        schema.drop_now().await;
    });
    race.log("distinct keys");
}

/// One worker process; does nothing unless a cross-process test spawned it.
#[test]
#[ignore = "worker process of the cross-process tests"]
fn worker() {
    let Ok(mode) = std::env::var("FSM_WORKER_MODE") else {
        return;
    };
    let mode = Mode::parse(&mode).unwrap_or_else(|| panic!("unknown FSM_WORKER_MODE {mode:?}"));
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (url, schema, id) = (
        var("FSM_WORKER_URL"),
        var("FSM_WORKER_SCHEMA"),
        var("FSM_WORKER_ID"),
    );
    let process: usize = var("FSM_WORKER_PROCESS")
        .parse()
        .expect("FSM_WORKER_PROCESS is an index");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("worker runtime");
    let store = Arc::new(runtime.block_on(worker_store(&url, &schema, process)));
    let start = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, start, id) = (Arc::clone(&store), Arc::clone(&start), id.clone());
            let (key, command) = mode.command(process, task);
            runtime.spawn(async move {
                start.wait().await;
                let began = Instant::now();
                let outcome = store.fire(&id, command).await;
                (key, outcome, began.elapsed())
            })
        })
        .collect();

    println!("READY");
    let mut go = String::new();
    let read = std::io::stdin()
        .read_line(&mut go)
        .expect("read the start line");
    assert!(
        read > 0,
        "stdin closed before the start line: the parent is gone"
    );
    runtime.block_on(async {
        start.wait().await;
        let race = async {
            for task in tasks {
                let (key, outcome, elapsed) = task.await.expect("fire task");
                match outcome {
                    Ok(outcome) => {
                        let kind = if outcome.is_duplicate() {
                            "duplicate"
                        } else {
                            "applied"
                        };
                        let t = outcome.transition();
                        let micros = elapsed.as_micros();
                        println!("OUTCOME {kind} {} {} {key} {micros}", t.version, t.at_ms);
                    }
                    Err(err) => println!("ERROR {key} {}", format!("{err:?}").replace('\n', " ")),
                }
            }
        };
        tokio::time::timeout(RACE_WITHIN, race)
            .await
            .expect("the race ends in time");
    });
}

/// What the workers fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every task fires `Pay(500)` with the key `double-click`.
    OneKey,
    /// Task `t` of process `p` fires `Annotate("note p<p>-t<t>")` with key `p<p>-t<t>`.
    DistinctKeys,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::OneKey => "one-key",
            Mode::DistinctKeys => "distinct-keys",
        }
    }

    fn parse(name: &str) -> Option<Mode> {
        [Mode::OneKey, Mode::DistinctKeys]
            .into_iter()
            .find(|mode| mode.name() == name)
    }

    /// The key and command of task `task` in process `process`.
    fn command(self, process: usize, task: usize) -> (String, Command<Order>) {
        match self {
            Mode::OneKey => {
                let pay = OrderEvent::Pay(Payment {
                    amount_cents: TOTAL_CENTS,
                });
                let key = "double-click".to_owned();
                (key.clone(), Command::new(pay).with_key(key))
            }
            Mode::DistinctKeys => {
                let key = format!("p{process}-t{task}");
                let note = OrderEvent::Annotate(Note(note_of(&key)));
                (key.clone(), Command::new(note).with_key(key))
            }
        }
    }
}

/// `p<p>` of a key `p<p>-t<t>`.
fn process_of(key: Option<&str>) -> Option<&str> {
    key?.split('-').next()
}

fn note_of(key: &str) -> String {
    format!("note {key}")
}

fn initial_context() -> OrderData {
    OrderData {
        total_cents: TOTAL_CENTS,
        ..OrderData::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

/// The parent's store on the test schema, migrated, holding order `o-1`.
async fn order_in(schema: &Schema) -> PgStore {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(schema.options(&format!("{}-parent", schema.name)))
        .await
        .expect("connect to FSM_POSTGRES_URL");
    let store = PgStore::from_pool(pool);
    store.migrate().await.expect("migrate");
    store
        .create::<Order>(ID, initial_context())
        .await
        .expect("create o-1");
    store
}

/// A worker's store: four connections, all open before the race, and a patient policy.
async fn worker_store(url: &str, schema: &str, process: usize) -> PgStore {
    let options = common::pg::options(url, schema, &format!("{schema}-w{process}"));
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("connect to FSM_WORKER_URL");
    let mut warm = Vec::new();
    for _ in 0..4 {
        warm.push(pool.acquire().await.expect("open a connection"));
    }
    drop(warm);
    PgStore::from_pool(pool).with_retry(PATIENT)
}

async fn outbox_rows(store: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fsm_outbox")
        .fetch_one(store.pool())
        .await
        .expect("count the outbox")
}

/// How often `fsm_machines` was looked up by primary key in this schema, as the
/// statistics collector saw it: every fire attempt is one read and one compare-and-set
/// (a key found by the read, one read), so this shows the races the retry policy absorbed.
async fn machine_lookups(store: &PgStore) -> i64 {
    let lookups = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = 'fsm_machines'",
        )
        .fetch_one(store.pool())
        .await
        .expect("read pg_stat_user_tables")
    };
    // Backends report their statistics when they go idle or exit: wait for them to settle.
    let mut seen = lookups().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = lookups().await;
        if now == seen {
            break;
        }
        seen = now;
    }
    seen
}

/// One fire as a worker reported it.
#[derive(Debug)]
struct Report {
    process: usize,
    applied: bool,
    version: u64,
    at_ms: u64,
    key: String,
    elapsed: Duration,
}

/// What the workers reported, and how long from the start line to the last report.
#[derive(Debug)]
struct Race {
    reports: Vec<Report>,
    wall: Duration,
}

impl Race {
    fn log(&self, what: &str) {
        let mut fires: Vec<_> = self.reports.iter().map(|r| r.elapsed).collect();
        fires.sort_unstable();
        let winners: Vec<_> = self
            .reports
            .iter()
            .filter(|r| r.applied)
            .map(|r| r.process)
            .collect();
        let applied_by: Vec<_> = (0..PROCESSES)
            .map(|p| winners.iter().filter(|&&w| w == p).count())
            .collect();
        eprintln!(
            "{what}: {} fires from {PROCESSES} processes in {:?}; per fire median {:?}, \
             slowest {:?}; applied per process {applied_by:?}",
            self.reports.len(),
            self.wall,
            fires[fires.len() / 2],
            fires[fires.len() - 1],
        );
    }
}

/// Runs four workers in `mode` against `schema` and collects their reports. Fails,
/// with every worker's output, when one of them fails, reports an error or hangs.
fn race(schema: &Schema, mode: Mode) -> Race {
    let mut workers = Workers::spawn(schema, mode);
    let ready_by = Instant::now() + READY_WITHIN;
    let mut ready = 0;
    while ready < PROCESSES {
        match workers.next_line(ready_by) {
            Some((_, Some(line))) if tagged(&line).is_some_and(|(tag, _)| tag == "READY") => {
                ready += 1;
            }
            Some((_, Some(_))) => {}
            Some((process, None)) => workers.fail(&format!("worker {process} ended before READY")),
            None => workers.fail("the workers were not READY in time"),
        }
    }

    let go = Instant::now();
    workers.start();
    let mut last = go;
    let mut open = PROCESSES;
    while open > 0 {
        match workers.next_line(go + RACE_WITHIN) {
            Some((_, Some(line))) => {
                if tagged(&line).is_some_and(|(tag, _)| tag != "READY") {
                    last = Instant::now();
                }
            }
            Some((_, None)) => open -= 1,
            None => workers.fail("the race did not end in time"),
        }
    }
    let wall = last - go;
    workers.wait();

    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (process, lines) in workers.stdout.iter().enumerate() {
        for line in lines {
            match tagged(line) {
                Some(("OUTCOME", fields)) => match parse_report(process, &fields) {
                    Some(report) => reports.push(report),
                    None => errors.push(format!("worker {process}: unreadable {line:?}")),
                },
                Some(("ERROR", _)) => errors.push(format!("worker {process}: {line}")),
                _ => {}
            }
        }
    }
    if !errors.is_empty() {
        workers.fail(&format!("fires failed:\n{}", errors.join("\n")));
    }
    for process in 0..PROCESSES {
        let reported = reports.iter().filter(|r| r.process == process).count();
        if reported != TASKS {
            workers.fail(&format!("worker {process} reported {reported} fires"));
        }
    }
    Race { reports, wall }
}

/// The tag (`READY`, `OUTCOME`, `ERROR`) of a worker's line and the words after it. The
/// test harness may print `test worker ... ` in front of the first line.
fn tagged(line: &str) -> Option<(&str, Vec<&str>)> {
    let mut words = line
        .split_whitespace()
        .skip_while(|word| !matches!(*word, "READY" | "OUTCOME" | "ERROR"));
    let tag = words.next()?;
    Some((tag, words.collect()))
}

fn parse_report(process: usize, fields: &[&str]) -> Option<Report> {
    let [kind, version, at_ms, key, micros] = fields else {
        return None;
    };
    Some(Report {
        process,
        applied: match *kind {
            "applied" => true,
            "duplicate" => false,
            _ => return None,
        },
        version: version.parse().ok()?,
        at_ms: at_ms.parse().ok()?,
        key: (*key).to_owned(),
        elapsed: Duration::from_micros(micros.parse().ok()?),
    })
}

/// The worker processes of one race, killed if the test ends before they do.
struct Workers {
    children: Vec<Child>,
    /// Lines from the workers' stdout: (process, line), or (process, None) at its end.
    lines: mpsc::Receiver<(usize, Option<String>)>,
    stdout: Vec<Vec<String>>,
    stderr: Vec<Option<JoinHandle<String>>>,
}

impl Workers {
    /// Spawns all the workers before waiting for any.
    fn spawn(schema: &Schema, mode: Mode) -> Self {
        let exe = std::env::current_exe().expect("path of this test binary");
        let (sender, lines) = mpsc::channel();
        let mut workers = Workers {
            children: Vec::new(),
            lines,
            stdout: vec![Vec::new(); PROCESSES],
            stderr: Vec::new(),
        };
        for process in 0..PROCESSES {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "worker",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("FSM_WORKER_URL", &schema.url)
                .env("FSM_WORKER_SCHEMA", &schema.name)
                .env("FSM_WORKER_ID", ID)
                .env("FSM_WORKER_MODE", mode.name())
                .env("FSM_WORKER_PROCESS", process.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a worker process");
            let stdout = child.stdout.take().expect("piped stdout");
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if sender.send((process, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = sender.send((process, None));
            });
            let mut stderr = child.stderr.take().expect("piped stderr");
            workers.stderr.push(Some(std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })));
            workers.children.push(child);
        }
        workers
    }

    /// The next line any worker printed, kept for the transcript; `None` at `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<(usize, Option<String>)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (process, line) = self.lines.recv_timeout(wait).ok()?;
        if let Some(line) = &line {
            self.stdout[process].push(line.clone());
        }
        Some((process, line))
    }

    /// Writes the start line to every worker at once.
    fn start(&mut self) {
        let stdins: Vec<_> = self
            .children
            .iter_mut()
            .map(|child| child.stdin.take().expect("piped stdin"))
            .collect();
        for (process, mut stdin) in stdins.into_iter().enumerate() {
            if let Err(err) = stdin.write_all(b"go\n") {
                self.fail(&format!("start worker {process}: {err}"));
            }
        }
    }

    /// Waits for every worker to exit, and fails unless all succeeded.
    fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for process in 0..PROCESSES {
            let status = loop {
                match self.children[process].try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => self.fail(&format!("worker {process} does not exit")),
                    Err(err) => self.fail(&format!("wait for worker {process}: {err}")),
                }
            };
            if !status.success() {
                self.fail(&format!("worker {process} exited with {status}"));
            }
        }
    }

    /// Kills the workers and panics with `why` and everything they printed.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        let mut transcript = String::new();
        for process in 0..PROCESSES {
            let stderr = self.stderr[process]
                .take()
                .and_then(|handle| handle.join().ok())
                .unwrap_or_default();
            transcript.push_str(&format!(
                "--- worker {process} stdout:\n{}\n--- worker {process} stderr:\n{stderr}\n",
                self.stdout[process].join("\n")
            ));
        }
        panic!("{why}\n{transcript}");
    }

    fn kill(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill();
    }
}
