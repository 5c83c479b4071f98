//! The inbox against a JetStream server (`FSM_NATS_URL`, e.g. `nats://127.0.0.1:4222`):
//! messages become commands exactly once through redelivery, consumers dropped
//! mid-batch and transient store failures; poison messages are terminated and recorded
//! once, never redelivered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use fsm_core::testing::{Note, Order, OrderData, OrderEvent};
use fsm_core::{Command, IdempotencyKey, Store, Trigger};
use fsm_nats::{Inbox, InboxOptions, InboxReport, PoisonReason, consumer_config};
use futures_util::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use common::{SqliteFile, TestStream};

/// What a message carries.
#[derive(Serialize, Deserialize)]
struct Envelope {
    id: String,
    event: OrderEvent,
}

fn decode(message: &jetstream::Message) -> Result<(String, OrderEvent), serde_json::Error> {
    serde_json::from_slice::<Envelope>(&message.payload).map(|e| (e.id, e.event))
}

const ACK_WAIT: Duration = Duration::from_secs(1);

/// Fast pulls for tests.
const OPTIONS: InboxOptions = InboxOptions {
    batch: 16,
    wait: Duration::from_millis(300),
    retry_delay: Duration::from_millis(300),
};

/// What was published: each instance's notes, and the poison messages' sequences.
struct Published {
    notes: BTreeMap<String, BTreeSet<String>>,
    poison: BTreeSet<u64>,
}

/// Creates `instances` orders and publishes `per_instance` notes to each, interleaved,
/// with three poison messages among them: one that does not decode, one illegal event,
/// one for an unknown instance.
async fn publish<S: Store>(
    store: &S,
    jetstream: &jetstream::Context,
    stream: &TestStream,
    instances: usize,
    per_instance: usize,
) -> Published {
    let mut published = Published {
        notes: BTreeMap::new(),
        poison: BTreeSet::new(),
    };
    for i in 0..instances {
        let id = format!("o-{i}");
        store
            .create::<Order>(&id, OrderData::default())
            .await
            .unwrap();
        published.notes.insert(id, BTreeSet::new());
    }
    let total = instances * per_instance;
    let poison_at = [total / 4, total / 2, 3 * total / 4];
    let subject = format!("{}.commands", stream.name);
    for n in 0..total {
        if let Some(which) = poison_at.iter().position(|&at| at == n) {
            let payload = match which {
                0 => b"{not json".to_vec(),
                1 => serde_json::to_vec(&Envelope {
                    id: "o-0".into(),
                    event: OrderEvent::Ship,
                })
                .unwrap(),
                _ => serde_json::to_vec(&Envelope {
                    id: "nobody".into(),
                    event: OrderEvent::Annotate(Note("lost".into())),
                })
                .unwrap(),
            };
            let ack = jetstream
                .publish(subject.clone(), payload.into())
                .await
                .unwrap();
            published.poison.insert(ack.await.unwrap().sequence);
        }
        let id = format!("o-{}", n % instances);
        let note = format!("n-{n}");
        let payload = serde_json::to_vec(&Envelope {
            id: id.clone(),
            event: OrderEvent::Annotate(Note(note.clone())),
        })
        .unwrap();
        jetstream
            .publish(subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        published.notes.get_mut(&id).unwrap().insert(note);
    }
    published
}

/// A durable pull consumer with a short ack wait, so redeliveries come within the test.
async fn consumer(stream: &TestStream, durable: &str) -> PullConsumer {
    stream
        .stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_wait: ACK_WAIT,
            ..consumer_config(durable)
        })
        .await
        .unwrap()
}

type Decode = fn(&jetstream::Message) -> Result<(String, OrderEvent), serde_json::Error>;

type Records = Arc<Mutex<Vec<(u64, String)>>>;

fn recording_inbox<S: Store + Clone>(
    store: S,
    consumer: PullConsumer,
    records: &Records,
) -> Inbox<S, Order, Decode> {
    let records = Arc::clone(records);
    Inbox::new(store, consumer, decode as Decode)
        .with_options(OPTIONS)
        .on_poison(move |poison| {
            let reason = match &poison.reason {
                PoisonReason::Undecodable(_) => "undecodable".to_owned(),
                PoisonReason::Rejected(err) => format!("rejected: {err}"),
                other => format!("{other}"),
            };
            records.lock().unwrap().push((poison.sequence, reason));
        })
}

/// Every published note is in its instance's history exactly once, under the key of a
/// stream sequence that is not a poison message's, and versions are 1..=n.
async fn check_histories<S: Store>(store: &S, stream: &str, published: &Published) {
    let mut keys = BTreeSet::new();
    for (id, notes) in &published.notes {
        let history = store.history::<Order>(id).await.unwrap();
        let versions: Vec<u64> = history.iter().map(|t| t.version).collect();
        assert!(
            versions.iter().copied().eq(1..=notes.len() as u64),
            "{id}: versions {versions:?}"
        );
        let mut applied = BTreeSet::new();
        for transition in &history {
            let Trigger::Event(OrderEvent::Annotate(Note(note))) = &transition.event else {
                panic!("{id}: unexpected {:?}", transition.event);
            };
            assert!(applied.insert(note.clone()), "{id}: {note} applied twice");
            let key = transition
                .key
                .as_deref()
                .expect("keyed by the stream sequence");
            let (source, seq) = key.rsplit_once('#').expect("source#seq");
            assert_eq!(source, stream);
            let seq: u64 = seq.parse().unwrap();
            assert!(!published.poison.contains(&seq));
            assert!(keys.insert(seq), "sequence {seq} applied twice");
        }
        assert_eq!(
            &applied, notes,
            "{id}: applied notes differ from the published ones"
        );
    }
}

fn add(total: &mut InboxReport, report: InboxReport) {
    total.received += report.received;
    total.applied += report.applied;
    total.duplicate += report.duplicate;
    total.poison += report.poison;
    total.retried += report.retried;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_fire_as_duplicates_and_poison_is_terminated_once() {
    let Some(url) = common::server_url() else {
        return;
    };
    common::logs();
    let jetstream = common::jetstream(&url).await;
    let stream = TestStream::create(&url, &jetstream, Duration::from_secs(60)).await;
    let db = SqliteFile::create().await;
    let store = db.store.clone();
    let published = publish(&store, &jetstream, &stream, 4, 25).await;
    let durable = common::unique_name();
    let consumer = consumer(&stream, &durable).await;

    // A consumer that dies before acking: it fires the first 20 messages of a batch of
    // 30 (the commits land), acks none of them and goes away.
    let mut batch = consumer.fetch().max_messages(30).messages().await.unwrap();
    let mut committed_unacked = 0;
    for _ in 0..20 {
        let message = batch.next().await.unwrap().unwrap();
        let info = message.info().unwrap();
        let (stream_name, seq) = (info.stream.to_owned(), info.stream_sequence);
        if let Ok((id, event)) = decode(&message) {
            let fired = store
                .fire(
                    &id,
                    Command::<Order>::new(event).from_source(stream_name, seq),
                )
                .await;
            committed_unacked += usize::from(fired.is_ok());
        }
    }
    drop(batch);
    assert!(committed_unacked >= 18, "{committed_unacked}");

    let records = Records::default();
    let inbox = recording_inbox(store.clone(), consumer, &records);
    let mut total = InboxReport::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while total.applied + total.duplicate < 100 || total.poison < 3 {
        assert!(
            Instant::now() < deadline,
            "not every message came back: {total:?}"
        );
        add(&mut total, inbox.process_once().await.unwrap());
    }
    assert_eq!(total.applied, 100 - committed_unacked, "{total:?}");
    assert!(total.duplicate >= committed_unacked, "{total:?}");
    assert_eq!(total.retried, 0, "{total:?}");

    // Past the ack wait, nothing comes back: acked and terminated messages stay done.
    tokio::time::sleep(ACK_WAIT + Duration::from_millis(500)).await;
    let after = inbox.process_once().await.unwrap();
    assert_eq!(
        after,
        InboxReport::default(),
        "redelivered after being settled"
    );

    let mut records = records.lock().unwrap().clone();
    records.sort();
    let recorded: BTreeSet<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(recorded, published.poison);
    assert_eq!(
        records.len(),
        3,
        "a poison message was recorded twice: {records:?}"
    );
    let reasons: Vec<&str> = records.iter().map(|(_, reason)| reason.as_str()).collect();
    assert_eq!(reasons[0], "undecodable");
    assert!(
        reasons[1].contains("not allowed in state Created"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("nobody: not found"), "{reasons:?}");
    check_histories(&store, &stream.name, &published).await;
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_aborted_mid_batch_lose_and_double_nothing() {
    let Some(url) = common::server_url() else {
        return;
    };
    common::logs();
    let jetstream = common::jetstream(&url).await;
    let stream = TestStream::create(&url, &jetstream, Duration::from_secs(60)).await;
    let db = SqliteFile::create().await;
    let store = db.store.clone();
    let published = publish(&store, &jetstream, &stream, 4, 75).await;
    let durable = common::unique_name();
    let records = Records::default();

    // Each round's inbox is dropped at a random moment, a fire or an ack in flight.
    let mut rng = rand::thread_rng();
    for _ in 0..5 {
        let inbox = recording_inbox(store.clone(), consumer(&stream, &durable).await, &records);
        let run = tokio::spawn(inbox.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=120))).await;
        run.abort();
        let _ = run.await;
    }

    // The last one runs until every note is in, then shuts down.
    let shutdown = CancellationToken::new();
    let inbox = recording_inbox(store.clone(), consumer(&stream, &durable).await, &records);
    let run = tokio::spawn(inbox.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected: usize = published.notes.values().map(BTreeSet::len).sum();
    loop {
        let mut versions = 0;
        for id in published.notes.keys() {
            versions += store.load::<Order>(id).await.unwrap().version as usize;
        }
        let recorded: BTreeSet<u64> = records.lock().unwrap().iter().map(|r| r.0).collect();
        // A message an aborted inbox fired (its fire runs on in a task of its own) but
        // never acked is still owed its redelivery, as a duplicate: wait until none is
        // outstanding, so that what follows sees only messages already settled.
        let mut probe = consumer(&stream, &durable).await;
        let info = probe.info().await.unwrap();
        let settled = info.num_ack_pending == 0 && info.num_pending == 0;
        if versions == expected && recorded == published.poison && settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{versions} of {expected} applied, poison recorded {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();

    tokio::time::sleep(ACK_WAIT + Duration::from_millis(500)).await;
    let last = recording_inbox(store.clone(), consumer(&stream, &durable).await, &records);
    let after = last.process_once().await.unwrap();
    assert_eq!(
        after,
        InboxReport::default(),
        "redelivered after being settled"
    );
    check_histories(&store, &stream.name, &published).await;
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_store_failures_are_nakd_and_applied_on_redelivery() {
    let Some(url) = common::server_url() else {
        return;
    };
    common::logs();
    let jetstream = common::jetstream(&url).await;
    let stream = TestStream::create(&url, &jetstream, Duration::from_secs(60)).await;
    let db = SqliteFile::create().await;
    let store = db.store.clone();
    let published = publish(&store, &jetstream, &stream, 2, 5).await;
    let durable = common::unique_name();
    let records = Records::default();

    // A store whose database is gone: every fire is a transient `Error::Database`.
    let broken = fsm_sqlx::SqliteStore::open(&db.path).await.unwrap();
    broken.pool().close().await;
    let failing = recording_inbox(broken, consumer(&stream, &durable).await, &records);
    let report = failing.process_once().await.unwrap();
    assert!(report.received > 0, "{report:?}");
    assert_eq!(report.retried, report.received, "{report:?}");
    for id in published.notes.keys() {
        assert_eq!(store.load::<Order>(id).await.unwrap().version, 0);
    }

    let inbox = recording_inbox(store.clone(), consumer(&stream, &durable).await, &records);
    let mut total = InboxReport::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while total.applied < 10 || total.poison < 3 {
        assert!(
            Instant::now() < deadline,
            "not every message came back: {total:?}"
        );
        add(&mut total, inbox.process_once().await.unwrap());
    }
    assert_eq!((total.applied, total.duplicate, total.poison), (10, 0, 3));
    check_histories(&store, &stream.name, &published).await;
    // The key is the stream and its sequence, as `Command::from_source` makes it.
    let first = &store.history::<Order>("o-0").await.unwrap()[0];
    let key = IdempotencyKey::from_source(stream.name.clone(), 1);
    assert_eq!(
        first.key.as_deref(),
        Some(IdempotencyKey::display_stored(&key.as_stored()))
    );
    store.pool().close().await;
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_on_the_last_allowed_delivery_is_recorded_not_dropped() {
    let Some(url) = common::server_url() else {
        return;
    };
    common::logs();
    let jetstream = common::jetstream(&url).await;
    let stream = TestStream::create(&url, &jetstream, Duration::from_secs(60)).await;
    let db = SqliteFile::create().await;
    let published = publish(&db.store, &jetstream, &stream, 2, 2).await;
    let total = 4 + published.poison.len();
    let records = Records::default();
    let broken = fsm_sqlx::SqliteStore::open(&db.path).await.unwrap();
    broken.pool().close().await;
    let limited = stream
        .stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_wait: ACK_WAIT,
            max_deliver: 2,
            ..consumer_config(common::unique_name())
        })
        .await
        .unwrap();
    let inbox = recording_inbox(broken, limited, &records);

    // First delivery: the first fire fails, and the batch is nak'd with it.
    let mut first = InboxReport::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.received < total {
        assert!(Instant::now() < deadline, "{first:?}");
        add(&mut first, inbox.process_once().await.unwrap());
    }
    assert_eq!((first.retried, first.poison), (total, 0), "{first:?}");

    // Second and last delivery: the failures are recorded as poison, none is lost.
    let mut last = InboxReport::default();
    while last.received < total {
        assert!(Instant::now() < deadline, "{last:?}");
        add(&mut last, inbox.process_once().await.unwrap());
    }
    assert_eq!((last.poison, last.retried), (total, 0), "{last:?}");
    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), total, "{records:?}");
    let exhausted = records
        .iter()
        .filter(|(_, reason)| reason.starts_with("last delivery failed"))
        .count();
    assert_eq!(
        exhausted,
        total - 1,
        "all but the undecodable one: {records:?}"
    );
    for id in published.notes.keys() {
        assert_eq!(db.store.load::<Order>(id).await.unwrap().version, 0);
    }
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_source_keys_commands_by_the_source_given() {
    let Some(url) = common::server_url() else {
        return;
    };
    common::logs();
    let jetstream = common::jetstream(&url).await;
    let stream = TestStream::create(&url, &jetstream, Duration::from_secs(60)).await;
    let db = SqliteFile::create().await;
    let published = publish(&db.store, &jetstream, &stream, 1, 4).await;
    let records = Records::default();
    let consumer = consumer(&stream, &common::unique_name()).await;
    let inbox = recording_inbox(db.store.clone(), consumer, &records).with_source("orders-v2");
    let mut total = InboxReport::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while total.applied < 4 || total.poison < published.poison.len() {
        assert!(Instant::now() < deadline, "{total:?}");
        add(&mut total, inbox.process_once().await.unwrap());
    }
    check_histories(&db.store, "orders-v2", &published).await;
    stream.delete(&jetstream).await;
}
