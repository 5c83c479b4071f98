//! MySqlStore on a 3-node MariaDB Galera cluster: the conformance and durable suites
//! with every call sent to the next node in turn (so their racing tasks race across
//! nodes), and the cross-node races spelled out: one key from 3 x 16 tasks, distinct
//! keys at one instance, a dispatcher and a timer worker on each node.
//!
//! Reads the nodes from `FSM_GALERA_URLS` (comma-separated; `bash .ci/galera start`
//! prints it); without it the tests are skipped, or fail when `CI` is set.
#![cfg(feature = "mysql")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::galera::{GaleraDatabase, node_urls};
use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent, OrderState, Payment};
use fsm_core::{
    BoxError, Command, Delivery, DispatchOptions, Dispatcher, DurableStore, Store, Trigger,
};
use fsm_sqlx::{Concurrency, MySqlStore};
use tokio_util::sync::CancellationToken;

/// A fixture on the cluster, or an early return (a skip) when its URLs are unset.
macro_rules! on_cluster {
    ($concurrency:expr) => {{
        let Some(urls) = node_urls() else {
            return;
        };
        GaleraDatabase::new(urls, $concurrency)
    }};
}

mod adaptive {
    use super::*;
    fsm_core::store_conformance_tests!(on_cluster!(Concurrency::Adaptive));
}

// Not `Concurrency::Optimistic`: across nodes every lost race is a certification
// abort, and 32 racers at one instance exhaust its bounded retries (`Conflict`), as
// documented; the adaptive default queues on the row lock instead.
mod pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(on_cluster!(Concurrency::Pessimistic));
}

mod durable {
    use super::*;
    fsm_core::durable_store_tests!(on_cluster!(Concurrency::Adaptive));
    fsm_core::durable_restart_tests!(on_cluster!(Concurrency::Adaptive));
}

const ID: &str = "o-1";
const TASKS_PER_NODE: usize = 16;

fn order() -> OrderData {
    OrderData {
        total_cents: 500,
        ..OrderData::default()
    }
}

fn pay() -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents: 500 }))
}

/// Runs `fire(node, i)` in 16 tasks on each node at once; their results in task order.
async fn on_every_node<T, F, Fut>(nodes: &[MySqlStore], fire: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(MySqlStore, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..TASKS_PER_NODE * nodes.len())
        .map(|i| tokio::spawn(fire(nodes[i % nodes.len()].clone(), i)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

/// 3 nodes x 16 tasks fire one key: exactly one `Applied`, 47 `Duplicate` carrying the
/// same transition, and no error: a certification failure is a lost race, retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_fired_from_three_nodes_applies_once() {
    let cluster = on_cluster!(Concurrency::default()).await;
    let nodes = cluster.nodes();
    nodes[0].create::<Order>(ID, order()).await.unwrap();
    let outcomes = on_every_node(nodes, |node, _| async move {
        node.fire(ID, pay().with_key("double-click")).await
    })
    .await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.expect("applied or duplicate, never an error"))
        .collect();
    let applied: Vec<_> = outcomes.iter().filter(|o| !o.is_duplicate()).collect();
    assert_eq!((applied.len(), outcomes.len()), (1, 48));
    let original = format!("{:?}", applied[0].transition());
    for outcome in &outcomes {
        assert_eq!(format!("{:?}", outcome.transition()), original);
    }
    for node in nodes {
        let loaded = node.load::<Order>(ID).await.unwrap();
        assert_eq!(
            (loaded.state, loaded.version, loaded.context.paid_cents),
            (OrderState::Paid, 1, 500)
        );
    }
    cluster.cleanup().await;
}

/// 3 nodes x 16 tasks fire distinct keys at one instance: every one applies, versions
/// are exactly 1..=48, and the state is the replay of the history, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_keys_from_three_nodes_give_gapless_versions_and_the_replayed_state() {
    let cluster = on_cluster!(Concurrency::default()).await;
    let nodes = cluster.nodes();
    nodes[0].create::<Order>(ID, order()).await.unwrap();
    let outcomes = on_every_node(nodes, |node, i| async move {
        let note = OrderEvent::Annotate(Note(format!("note {i}")));
        node.fire(ID, Command::new(note).with_key(format!("k{i}")))
            .await
    })
    .await;
    let mut versions: Vec<u64> = outcomes
        .into_iter()
        .map(|o| {
            let outcome = o.expect("applied, never an error");
            assert!(!outcome.is_duplicate());
            outcome.transition().version
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=48).collect::<Vec<_>>());
    for node in nodes {
        let history = node.history::<Order>(ID).await.unwrap();
        assert_eq!(
            history.iter().map(|t| t.version).collect::<Vec<_>>(),
            versions
        );
        let replayed: Vec<String> = history
            .iter()
            .map(|t| match &t.event {
                Trigger::Event(OrderEvent::Annotate(Note(note))) => note.clone(),
                other => panic!("unexpected trigger {other:?}"),
            })
            .collect();
        let loaded = node.load::<Order>(ID).await.unwrap();
        assert_eq!(loaded.version, 48);
        assert_eq!(loaded.context.notes, replayed);
    }
    cluster.cleanup().await;
}

/// A dispatcher on each node: every effect is handled, each under the id the outbox
/// gave it, and no row is left pending or leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatchers_on_three_nodes_handle_every_effect_and_leave_none_stuck() {
    const ORDERS: usize = 30;
    let cluster = on_cluster!(Concurrency::default()).await;
    let nodes = cluster.nodes();
    let mut expected = BTreeSet::new();
    for n in 0..ORDERS {
        let id = format!("o-{n}");
        let node = &nodes[n % nodes.len()];
        node.create::<Order>(&id, order()).await.unwrap();
        node.fire(&id, pay()).await.unwrap();
        expected.insert(format!("Order/{id}/1/0"));
    }
    let handled: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let shutdown = CancellationToken::new();
    let options = DispatchOptions {
        batch: 4,
        idle_poll: Duration::from_millis(20),
        ..DispatchOptions::default()
    };
    let workers: Vec<_> = nodes
        .iter()
        .map(|node| {
            let handled = Arc::clone(&handled);
            let handler = move |d: Delivery<OrderEffect>| {
                let handled = Arc::clone(&handled);
                async move {
                    assert_eq!(d.effect, OrderEffect::Charge { cents: 500 });
                    *handled.lock().unwrap().entry(d.id.to_string()).or_default() += 1;
                    Ok::<(), BoxError>(())
                }
            };
            let dispatcher = Dispatcher::new(node.clone()).with_options(options);
            tokio::spawn(dispatcher.run::<Order, _, _>(handler, shutdown.clone()))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let depth = nodes[0].outbox_depth("Order").await.unwrap();
        if depth.pending == 0 {
            assert_eq!(depth.dead, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending after 60 s: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for worker in workers {
        worker.await.unwrap().expect("dispatcher");
    }
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.keys().cloned().collect::<BTreeSet<_>>(), expected);
    eprintln!(
        "handled {} effects, {} of them more than once",
        handled.len(),
        handled.values().filter(|&&n| n > 1).count()
    );
    for node in nodes {
        assert_eq!(node.outbox_depth("Order").await.unwrap().pending, 0);
    }
    cluster.cleanup().await;
}

/// Due timers fired from every node at once: each fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_fired_from_three_nodes_fire_once() {
    const ORDERS: usize = 24;
    let cluster = on_cluster!(Concurrency::default()).await;
    let nodes = cluster.nodes();
    for n in 0..ORDERS {
        nodes[n % nodes.len()]
            .create::<Order>(&format!("o-{n}"), order())
            .await
            .unwrap();
    }
    sqlx::query("UPDATE fsm_timers SET due_at = 0")
        .execute(nodes[0].pool())
        .await
        .expect("make the timers due");
    let fired = on_every_node(nodes, |node, _| async move {
        let mut fired = Vec::new();
        loop {
            let batch = node
                .fire_due_timers::<Order>(2, Duration::from_secs(30))
                .await
                .expect("fire due timers");
            if batch.is_empty() {
                return fired;
            }
            fired.extend(batch.into_iter().map(|(id, _)| id));
        }
    })
    .await;
    let fired: Vec<String> = fired.into_iter().flatten().collect();
    let distinct: BTreeSet<&String> = fired.iter().collect();
    assert_eq!((fired.len(), distinct.len()), (ORDERS, ORDERS), "{fired:?}");
    for n in 0..ORDERS {
        let id = format!("o-{n}");
        let history = nodes[(n + 1) % nodes.len()]
            .history::<Order>(&id)
            .await
            .unwrap();
        assert_eq!(history.len(), 1, "{id}: {history:?}");
        assert_eq!(
            (history[0].from, history[0].to),
            (OrderState::Created, OrderState::Expired)
        );
    }
    cluster.cleanup().await;
}

/// What the stores rely on: the loser of a race between two nodes is aborted at
/// `COMMIT` (certification) with SQLSTATE 40001, the code they retry as a lost race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_lost_across_nodes_fails_at_commit_with_sqlstate_40001() {
    let cluster = on_cluster!(Concurrency::default()).await;
    let nodes = cluster.nodes();
    nodes[0].create::<Order>(ID, order()).await.unwrap();
    let bump = "UPDATE fsm_machines SET version = version + 1 WHERE machine_id = ?";
    let mut loser = nodes[0].pool().begin().await.unwrap();
    sqlx::query(bump)
        .bind(ID)
        .execute(&mut *loser)
        .await
        .unwrap();
    // The other node commits a write of the same row first; the loser's own lock on
    // its node does not stop it.
    sqlx::query(bump)
        .bind(ID)
        .execute(nodes[1].pool())
        .await
        .unwrap();
    let err = loser.commit().await.expect_err("certification fails");
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("40001"), "{err}");
    cluster.cleanup().await;
}
