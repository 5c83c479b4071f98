//! Crash safety of the relay: a process relaying a SQLite outbox to JetStream is killed
//! with SIGKILL at random moments, [`ROUNDS`] times, and restarted; at the end the
//! stream holds every effect of the outbox exactly once.
//!
//! Before each round the parent adds [`ORDERS_PER_ROUND`] orders to the outbox (a `Pay`
//! emitting `Charge` and an `Annotate` emitting `Noted` each). A round spawns this test
//! binary as a child running only the ignored `relay_worker` test: it opens the same
//! SQLite file, runs a [`Dispatcher`] whose handler is the [`Relay`] with a short lease,
//! prints `READY`, and logs `A <effect id> <stream seq> <duplicate>` after each ack (one
//! unbuffered `write` per line, so a line outlives the kill). Its handler pauses up to
//! 3 ms after the ack, so kills often land between the ack and the settle of a row.
//!
//! After each kill the parent counts the effects a child published whose rows are still
//! pending ("at risk": they will be published again). After the last round it relays
//! the rest itself. Then the stream's messages, counted by `Nats-Msg-Id`, are exactly
//! the outbox's ids once each, with the outbox's payloads; every at-risk effect was
//! published again and absorbed by the duplicate window (`duplicate` acks).
//!
//! Reads the server from `FSM_NATS_URL`, e.g. `nats://127.0.0.1:4222`; without it the
//! test is skipped, or fails when `CI` is set.
#![cfg(unix)]

#[path = "../../fsm-sqlx/tests/support/child.rs"]
mod child;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::testing::{Note, Order, OrderData, OrderEvent, Payment};
use fsm_core::{
    BoxError, Command, Delivery, DispatchOptions, Dispatcher, DurableStore, EffectStatus, Store,
};
use fsm_nats::Relay;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use child::{ChildProcess, Log};
use common::{SqliteFile, TestStream, header};

/// Kills.
const ROUNDS: usize = 20;
const ORDERS_PER_ROUND: usize = 40;
/// How long after the child is READY it is killed, in milliseconds.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 20..=250;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// A child that is not killed stops by itself (the parent failed or vanished).
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

/// Relaying in a child: small batches and a short lease, so a killed child's rows are
/// claimed again within the test.
const CHILD_DISPATCH: DispatchOptions = DispatchOptions {
    workers: 2,
    batch: 8,
    lease: Duration::from_millis(500),
    max_attempts: 50,
    backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(100),
    idle_poll: Duration::from_millis(5),
};

/// The parent's relay after the last round.
const PARENT_DISPATCH: DispatchOptions = DispatchOptions {
    batch: 64,
    lease: Duration::from_secs(10),
    ..CHILD_DISPATCH
};

fn relay(jetstream: async_nats::jetstream::Context, prefix: &str) -> Relay<Order> {
    Relay::new(jetstream, prefix).with_timeout(PUBLISH_TIMEOUT)
}

#[test]
fn sigkilled_relays_leave_every_effect_in_the_stream_exactly_once() {
    let Some(url) = common::server_url() else {
        return;
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (jetstream, mut stream, db) = runtime.block_on(async {
        let jetstream = common::jetstream(&url).await;
        // The window every re-publish of the children's dispatchers falls in.
        let window = relay(jetstream.clone(), "x").duplicate_window_needed(&CHILD_DISPATCH);
        let stream = TestStream::create(&url, &jetstream, window).await;
        (jetstream, stream, SqliteFile::create().await)
    });

    let mut rng = rand::thread_rng();
    let mut acks: Vec<Ack> = Vec::new();
    let mut at_risk = 0;
    let mut orders = 0;
    for round in 0..ROUNDS {
        runtime.block_on(add_orders(&db.store, &mut orders));
        let log = db.dir.join(format!("acks-{round}.log"));
        let mut child = spawn_worker(&url, &db, &stream.name, &log, round);
        child.wait_ready();
        std::thread::sleep(Duration::from_millis(rng.gen_range(KILL_AFTER_MS)));
        child.kill();

        let round_acks = read_acks(&log);
        let pending = runtime.block_on(pending_of(&db.store, &round_acks));
        at_risk += pending;
        acks.extend(round_acks);
    }

    // The restart: this process relays what is left, once the children's leases expire.
    let parent_acks = runtime.block_on(drain(&db.store, &jetstream, &stream.name));
    let messages = runtime.block_on(stream.messages());

    // Every outbox row is done, and in the stream exactly once with its own payload.
    let outbox = runtime.block_on(outbox(&db.store, orders));
    assert!(
        outbox.values().all(|(_, done)| *done),
        "undone effects remain"
    );
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for message in &messages {
        let id = header(message, "Nats-Msg-Id").expect("Nats-Msg-Id");
        *copies.entry(id).or_default() += 1;
        let (raw, _) = outbox
            .get(id)
            .unwrap_or_else(|| panic!("{id} is in the stream but not in the outbox"));
        let published: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let stored: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(published, stored, "{id}: the stream holds another payload");
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = outbox
        .keys()
        .filter(|id| !copies.contains_key(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "never stored: {missing:?}");
    assert_eq!(messages.len(), outbox.len());

    // The kills hit the window between an ack and its settle, and every effect caught
    // there was published again and absorbed by the stream.
    assert!(at_risk > 0, "no kill landed between an ack and its settle");
    let duplicates = acks
        .iter()
        .chain(&parent_acks)
        .filter(|ack| ack.duplicate)
        .count();
    assert!(
        duplicates >= at_risk,
        "{at_risk} effects were at risk, only {duplicates} duplicate acks"
    );
    let by_children: HashSet<&str> = acks.iter().map(|ack| ack.id.as_str()).collect();
    eprintln!(
        "{ROUNDS} kills, {} effects, {} published by children, {} by the parent; \
         {at_risk} acked but unsettled at a kill, {duplicates} re-publishes absorbed; {:.1?}",
        outbox.len(),
        by_children.len(),
        parent_acks.iter().filter(|ack| !ack.duplicate).count(),
        started.elapsed()
    );
    runtime.block_on(async {
        db.store.pool().close().await;
        stream.delete(&jetstream).await;
    });
}

/// The child process: relays until killed. Does nothing unless started by the test.
#[test]
#[ignore = "the child process of the relay crash test, started by it"]
fn relay_worker() {
    let Ok(db) = std::env::var("FSM_RELAY_DB") else {
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (url, prefix, log) = (
        env("FSM_NATS_URL"),
        env("FSM_RELAY_PREFIX"),
        env("FSM_RELAY_LOG"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("worker runtime");
    runtime.block_on(async move {
        let store = fsm_sqlx::SqliteStore::open(&db).await.expect("open SQLite");
        let relay = relay(common::jetstream(&url).await, &prefix);
        let log = Log::create(Path::new(&log));
        let handler = move |delivery: Delivery<_>| {
            let (relay, log) = (relay.clone(), log.clone());
            async move {
                let ack = relay.publish(&delivery).await?;
                log.line(format!(
                    "A {} {} {}",
                    delivery.id, ack.sequence, ack.duplicate
                ));
                // Widens the window between the ack and the settle that a kill may hit.
                let pause = rand::thread_rng().gen_range(0..=3);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                Ok::<(), BoxError>(())
            }
        };
        let run = Dispatcher::new(store)
            .with_options(CHILD_DISPATCH)
            .run::<Order, _, _>(handler, CancellationToken::new());
        println!("READY");
        std::io::stdout().flush().expect("flush stdout");
        if tokio::time::timeout(CHILD_LIFETIME, run).await.is_ok() {
            eprintln!("the dispatcher ended by itself");
            std::process::exit(3);
        }
    });
}

/// Creates orders `e-{n}` and takes each through `Pay` and `Annotate`: two effects.
async fn add_orders(store: &fsm_sqlx::SqliteStore, orders: &mut usize) {
    for _ in 0..ORDERS_PER_ROUND {
        let id = format!("e-{orders}");
        let data = OrderData {
            total_cents: 100 + *orders as u64,
            ..OrderData::default()
        };
        store.create::<Order>(&id, data.clone()).await.unwrap();
        let pay = OrderEvent::Pay(Payment {
            amount_cents: data.total_cents,
        });
        store.fire(&id, Command::new(pay)).await.unwrap();
        let note = OrderEvent::Annotate(Note(format!("note-{orders}")));
        store.fire(&id, Command::new(note)).await.unwrap();
        *orders += 1;
    }
}

/// Effect id -> (stored JSON, done), for every outbox row of orders `e-0..e-{orders}`.
async fn outbox(store: &fsm_sqlx::SqliteStore, orders: usize) -> BTreeMap<String, (String, bool)> {
    let mut rows = BTreeMap::new();
    for n in 0..orders {
        for row in store.outbox::<Order>(&format!("e-{n}")).await.unwrap() {
            let done = row.status == EffectStatus::Done;
            rows.insert(row.id.to_string(), (row.raw, done));
        }
    }
    rows
}

/// How many of `acks` (distinct effects) are still pending in the outbox.
async fn pending_of(store: &fsm_sqlx::SqliteStore, acks: &[Ack]) -> usize {
    let acked: HashSet<&str> = acks.iter().map(|ack| ack.id.as_str()).collect();
    let instances: HashSet<&str> = acked
        .iter()
        .map(|id| id.split('/').nth(1).expect("Order/<id>/<version>/<seq>"))
        .collect();
    let mut pending = 0;
    for instance in instances {
        for row in store.outbox::<Order>(instance).await.unwrap() {
            let id = row.id.to_string();
            pending +=
                usize::from(acked.contains(id.as_str()) && row.status == EffectStatus::Pending);
        }
    }
    pending
}

/// Relays in this process until the outbox is drained; returns the acks seen.
async fn drain(
    store: &fsm_sqlx::SqliteStore,
    jetstream: &async_nats::jetstream::Context,
    prefix: &str,
) -> Vec<Ack> {
    let relay = relay(jetstream.clone(), prefix);
    let dispatcher = Dispatcher::new(store.clone()).with_options(PARENT_DISPATCH);
    let handler = move |delivery: Delivery<_>| {
        let relay = relay.clone();
        async move {
            let ack = relay.publish(&delivery).await?;
            Ok::<Ack, BoxError>(Ack {
                id: delivery.id.to_string(),
                duplicate: ack.duplicate,
            })
        }
    };
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&acks);
    let recording = move |delivery: Delivery<_>| {
        let (handler, recorded) = (handler.clone(), Arc::clone(&recorded));
        async move {
            let ack = handler(delivery).await?;
            recorded.lock().unwrap().push(ack);
            Ok::<(), BoxError>(())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = dispatcher
            .dispatch_once::<Order, _, _>(&recording)
            .await
            .expect("dispatch");
        let depth = store.outbox_depth("Order").await.expect("outbox depth");
        if depth.pending == 0 {
            assert_eq!(depth.dead, 0, "dead letters");
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {depth:?}");
        if report.claimed == 0 {
            // The killed children's leases have not expired yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    std::mem::take(&mut *acks.lock().unwrap())
}

/// One ack a relay saw.
#[derive(Debug, Clone)]
struct Ack {
    id: String,
    duplicate: bool,
}

/// The acks of a child's log; a line the kill cut short (no newline) is dropped.
fn read_acks(path: &Path) -> Vec<Ack> {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop();
    lines
        .iter()
        .map(
            |line| match line.split(' ').collect::<Vec<_>>().as_slice() {
                ["A", id, _seq, duplicate] => Ack {
                    id: (*id).to_owned(),
                    duplicate: *duplicate == "true",
                },
                _ => panic!("bad ack line {line:?}"),
            },
        )
        .collect()
}

/// A relay process for round `round`, on stream `prefix`, logging to `log`.
fn spawn_worker(
    url: &str,
    db: &SqliteFile,
    prefix: &str,
    log: &Path,
    round: usize,
) -> ChildProcess {
    let stderr = db.dir.join(format!("stderr-{round}.log"));
    ChildProcess::spawn("relay_worker", stderr, |command| {
        command
            .env("FSM_NATS_URL", url)
            .env("FSM_RELAY_DB", &db.path)
            .env("FSM_RELAY_PREFIX", prefix)
            .env("FSM_RELAY_LOG", log)
    })
}
