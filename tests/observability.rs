//! What the engine reports, on MemoryStore and on SQLite: the `fsm.fire` span with its
//! fields, and the `fsm_*` counters and histograms, through a test recorder and a span
//! capture (both thread-local, so these tests run in parallel with others).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fsm::testing::{Note, Order, OrderData, OrderEvent, Payment};
use fsm::{Command, MemoryStore, Store};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every span's name and fields as last recorded, in creation order.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Captured>>>);

/// A span's id, name and fields.
type Captured = (Id, &'static str, HashMap<String, String>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let name = attrs.metadata().name();
        self.0.lock().unwrap().push((id.clone(), name, fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, ..)| i == id) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<HashMap<String, String>> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(_, _, f)| f.clone())
            .collect()
    }
}

type Counters = HashMap<(String, Vec<(String, String)>), u64>;

/// Every histogram's recorded values, by name.
type Histograms = HashMap<String, Vec<f64>>;

/// A migrated in-memory SQLite store with the default settings.
async fn sqlite_memory() -> fsm::sqlx::SqliteStore {
    let store = fsm::sqlx::SqliteStore::memory().await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Runs `fire_all` on a store under a test recorder and span capture.
fn observed<S, F>(
    make: impl FnOnce() -> F,
    fire_all: impl AsyncFnOnce(&S),
) -> (Counters, Histograms, Spans)
where
    S: Store,
    F: Future<Output = S>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let store = make().await;
                fire_all(&store).await;
            })
        })
    });
    let mut counters = Counters::new();
    let mut histograms = Histograms::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let _ = kind;
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        match value {
            DebugValue::Counter(n) => {
                counters.insert((key.name().to_owned(), labels), n);
            }
            DebugValue::Histogram(values) => {
                let recorded = histograms.entry(key.name().to_owned()).or_default();
                recorded.extend(values.into_iter().map(|v| v.into_inner()));
            }
            DebugValue::Gauge(_) => {}
        }
    }
    (counters, histograms, spans)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// One of every outcome a caller can meet: applied, duplicate, illegal, guard_rejected,
/// key_reused, not_found, invalid.
async fn every_outcome<S: Store>(store: &S) {
    let order = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    store.create::<Order>("o-1", order).await.unwrap();
    let wrong = Command::<Order>::new(OrderEvent::Pay(Payment { amount_cents: 1 }));
    assert!(store.fire("o-1", wrong).await.is_err());
    let pay =
        || Command::<Order>::new(OrderEvent::Pay(Payment { amount_cents: 500 })).with_key("k-1");
    store.fire("o-1", pay()).await.unwrap();
    assert!(store.fire("o-1", pay()).await.unwrap().is_duplicate());
    let other = Command::<Order>::new(OrderEvent::Annotate(Note("x".into()))).with_key("k-1");
    assert!(store.fire("o-1", other).await.is_err());
    assert!(
        store
            .fire("o-1", Command::new(OrderEvent::Deliver))
            .await
            .is_err()
    );
    assert!(
        store
            .fire("nobody", Command::new(OrderEvent::Cancel))
            .await
            .is_err()
    );
    assert!(
        store
            .fire("", Command::new(OrderEvent::Cancel))
            .await
            .is_err()
    );
}

fn assert_reported(counters: &Counters, histograms: &Histograms, spans: &Spans) {
    let count = |event: &str, outcome: &str| {
        let key = (
            "fsm_transitions_total".to_owned(),
            labels(&[("machine", "Order"), ("event", event), ("outcome", outcome)]),
        );
        counters.get(&key).copied().unwrap_or(0)
    };
    assert_eq!(count("Pay", "applied"), 1, "{counters:?}");
    assert_eq!(count("Pay", "duplicate"), 1);
    assert_eq!(count("Pay", "guard_rejected"), 1);
    assert_eq!(count("Annotate", "key_reused"), 1);
    assert_eq!(count("Deliver", "illegal"), 1);
    assert_eq!(count("Cancel", "not_found"), 1);
    assert_eq!(count("Cancel", "invalid"), 1);
    assert!(histograms.contains_key("fsm_fire_duration_seconds"));

    let fires = spans.named("fsm.fire");
    assert_eq!(fires.len(), 7);
    let applied = fires
        .iter()
        .find(|f| f.get("outcome").map(String::as_str) == Some("applied"))
        .expect("a span for the applied fire");
    for (field, value) in [
        ("machine", "Order"),
        ("id", "o-1"),
        ("event", "Pay"),
        ("key", "k-1"),
        ("from", "Created"),
        ("to", "Paid"),
        ("version", "1"),
        ("attempts", "1"),
    ] {
        assert_eq!(
            applied.get(field).map(String::as_str),
            Some(value),
            "{field}: {applied:?}"
        );
    }
    assert_eq!(spans.named("fsm.create").len(), 1);
}

#[test]
fn memory_store_reports_every_outcome() {
    let (counters, histograms, spans) = observed(
        || async { MemoryStore::new() },
        every_outcome::<MemoryStore>,
    );
    assert_reported(&counters, &histograms, &spans);
}

#[test]
fn sqlite_store_reports_every_outcome() {
    let (counters, histograms, spans) =
        observed(sqlite_memory, every_outcome::<fsm::sqlx::SqliteStore>);
    assert_reported(&counters, &histograms, &spans);
}

/// Cancelled orders pruned by a `Pruner`: `fsm_pruned_total` counts them by kind.
async fn prune_two_finished_orders<S: fsm::DurableStore>(store: &S) {
    for id in ["o-1", "o-2"] {
        store
            .create::<Order>(id, OrderData::default())
            .await
            .unwrap();
        store
            .fire(id, Command::new(OrderEvent::Cancel))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let pruner = fsm::Pruner::new(store.clone()).prune_finished::<Order>(std::time::Duration::ZERO);
    assert_eq!(pruner.prune_once().await.unwrap().finished_instances, 2);
}

#[test]
fn pruning_is_counted_by_kind() {
    for (counters, ..) in [
        observed(
            || async { MemoryStore::new() },
            prune_two_finished_orders::<MemoryStore>,
        ),
        observed(
            sqlite_memory,
            prune_two_finished_orders::<fsm::sqlx::SqliteStore>,
        ),
    ] {
        let key = (
            "fsm_pruned_total".to_owned(),
            labels(&[("kind", "finished_instances")]),
        );
        assert_eq!(counters.get(&key), Some(&2), "{counters:?}");
    }
}

/// Sixteen orders created, then cancelled by sixteen fires at once.
async fn sixteen_cancelled_at_once<S: Store>(store: &S) {
    let ids: Vec<String> = (0..16).map(|n| format!("o-{n}")).collect();
    for id in &ids {
        store
            .create::<Order>(id, OrderData::default())
            .await
            .unwrap();
    }
    let fires = ids
        .iter()
        .map(|id| store.fire::<Order>(id, Command::new(OrderEvent::Cancel)));
    for outcome in futures_util::future::join_all(fires).await {
        assert!(!outcome.unwrap().is_duplicate());
    }
}

/// The number of Cancels counted as applied.
fn cancels_applied(counters: &Counters) -> u64 {
    let key = (
        "fsm_transitions_total".to_owned(),
        labels(&[
            ("machine", "Order"),
            ("event", "Cancel"),
            ("outcome", "applied"),
        ]),
    );
    counters.get(&key).copied().unwrap_or(0)
}

#[test]
fn a_sqlite_store_combines_concurrent_fires_into_batches_by_default() {
    let (counters, histograms, _) = observed(
        sqlite_memory,
        sixteen_cancelled_at_once::<fsm::sqlx::SqliteStore>,
    );
    assert_eq!(cancels_applied(&counters), 16);
    let batches = histograms
        .get("fsm_group_commit_size")
        .expect("fsm_group_commit_size recorded");
    // The first fire finds the queue idle and runs alone; the rest arrive meanwhile.
    assert!(batches.iter().any(|&size| size > 1.0), "{batches:?}");
    assert!(batches.iter().sum::<f64>() <= 16.0, "{batches:?}");
}

#[test]
fn a_store_without_group_commit_fires_each_command_alone() {
    let (counters, histograms, _) = observed(
        || async { sqlite_memory().await.without_group_commit() },
        sixteen_cancelled_at_once::<fsm::sqlx::SqliteStore>,
    );
    assert_eq!(cancels_applied(&counters), 16);
    assert!(!histograms.contains_key("fsm_group_commit_size"));
}
