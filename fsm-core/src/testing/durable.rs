//! The durable suite: specifications of what [`DurableStore`] adds to `Store`
//! (single-use tokens, durable timers, the outbox dispatcher), run against every
//! durable store with [`durable_store_tests!`](crate::durable_store_tests) and, for
//! stores that outlive the process, [`durable_restart_tests!`](crate::durable_restart_tests).
//!
//! ```
//! # mod durable {
//! use fsm_core::testing::DurableFixture;
//! use fsm_core::MemoryStore;
//!
//! struct Memory(MemoryStore);
//!
//! impl DurableFixture for Memory {
//!     type Store = MemoryStore;
//!     fn store(&self) -> MemoryStore {
//!         self.0.clone()
//!     }
//!     async fn expire_timers(&self) {
//!         self.0.advance_clock(fsm_core::testing::EXPIRY);
//!     }
//! }
//!
//! fsm_core::durable_store_tests!(async { Memory(MemoryStore::new()) });
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use super::evolution::a_changed_definition_reads_fires_and_reports_what_the_old_one_stored;
use super::{EXPIRY, Note, Order, OrderData, OrderEffect, OrderEvent, OrderState, Payment};
use crate::kit::Settlement;
use crate::{
    BoxError, Command, Delivery, DispatchOptions, DispatchReport, Dispatcher, DurableStore,
    EffectId, EffectStatus, Error, Outcome, Pruner, Retention, Store, Trigger,
};

/// A fresh durable store for one test, with the backdoors the specifications need.
pub trait DurableFixture: Send + Sync + Sized + 'static {
    /// The store under test.
    type Store: DurableStore;
    /// The store under test (a handle sharing its data).
    fn store(&self) -> Self::Store;
    /// Makes every armed timer due now (the suite's timer is [`EXPIRY`](super::EXPIRY)).
    fn expire_timers(&self) -> impl Future<Output = ()> + Send;
    /// A second store on the same data, as after a process restart (only stores that
    /// outlive the process: see [`durable_restart_tests!`](crate::durable_restart_tests)).
    fn reopen(&self) -> impl Future<Output = Self::Store> + Send {
        async { unimplemented!("this store does not survive a restart") }
    }
    /// Releases what the fixture created (a schema, a database file).
    fn cleanup(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Expands to one `#[tokio::test]` per durable specification, each with a fresh
/// [`DurableFixture`] from `$make` (an expression of a future yielding one).
#[macro_export]
macro_rules! durable_store_tests {
    ($make:expr) => {
        $crate::__durable_cases! { $make;
            tokens_are_single_use,
            unknown_expired_or_foreign_tokens_are_invalid,
            one_token_raced_by_16_tasks_applies_once,
            timer_fires_as_a_transition_at_its_version,
            timer_of_a_machine_that_moved_on_is_a_no_op,
            dispatcher_delivers_each_effect_once_with_a_stable_id,
            failing_handler_retries_then_dead_letters,
            expired_lease_is_claimed_again,
            a_worker_that_lost_its_lease_settles_nothing,
            concurrent_dispatchers_never_overlap,
            shutdown_lets_in_flight_handlers_finish,
            effects_are_queued_once_with_their_transition,
            a_panicking_handler_is_a_failed_attempt,
            run_keeps_dispatching_after_a_handler_panics,
            no_handler_starts_after_shutdown_and_the_rest_is_released,
            a_stale_worker_never_settles_a_requeued_effect,
            durations_saturate_instead_of_wrapping,
            a_handler_error_worded_like_a_decode_error_is_retried,
            eleven_thousand_effects_from_one_action_are_all_queued,
            key_kinds_never_share_a_slot,
            a_changed_definition_reads_fires_and_reports_what_the_old_one_stored,
            pending_timers_and_outbox_rows_of_one_instance,
            pruning_deletes_done_effects_and_expired_tokens_and_keeps_the_rest,
            pruning_goes_in_batches_of_the_configured_size,
            a_dead_letter_is_kept_until_discarded,
            finished_instances_are_pruned_only_when_asked_and_only_when_settled,
            a_committed_effect_wakes_an_idle_dispatcher_before_its_next_poll,
            a_batch_of_handled_effects_is_settled_together,
        }
    };
}

/// The specifications of a durable store that outlives the process; its fixture
/// implements [`DurableFixture::reopen`].
#[macro_export]
macro_rules! durable_restart_tests {
    ($make:expr) => {
        $crate::__durable_cases! { $make;
            timers_survive_a_restart,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __durable_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let fixture = $make.await;
                $crate::testing::durable::$case(&fixture).await;
                $crate::testing::DurableFixture::cleanup(fixture).await;
            }
        )*
    };
}

const ID: &str = "o-1";

fn order() -> OrderData {
    OrderData {
        total_cents: 500,
        ..OrderData::default()
    }
}

fn pay() -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents: 500 }))
}

fn annotate(note: &str) -> Command<Order> {
    Command::new(OrderEvent::Annotate(Note(note.to_owned())))
}

const MINUTE: Duration = Duration::from_secs(60);

/// Tokens are single use.
pub async fn tokens_are_single_use<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let token = store.issue_token::<Order>(ID, MINUTE).await.unwrap();
    assert_eq!(token.len(), 32, "128 bits as hex: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(token, store.issue_token::<Order>(ID, MINUTE).await.unwrap());

    let first = store.fire(ID, pay().with_token(&token)).await.unwrap();
    assert!(matches!(first, Outcome::Applied(_)), "{first:?}");
    let again = store.fire(ID, pay().with_token(&token)).await.unwrap();
    assert!(again.is_duplicate(), "{again:?}");
    assert_eq!(again.transition().version, 1);
    let other = store
        .fire(ID, annotate("x").with_token(&token))
        .await
        .unwrap_err();
    assert!(matches!(other, Error::KeyReused { .. }), "{other:?}");
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 1);
}

/// Unknown expired or foreign tokens are invalid.
pub async fn unknown_expired_or_foreign_tokens_are_invalid<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.create::<Order>("o-2", order()).await.unwrap();
    let expired = store
        .issue_token::<Order>(ID, Duration::ZERO)
        .await
        .unwrap();
    let foreign = store.issue_token::<Order>("o-2", MINUTE).await.unwrap();
    for token in [
        "00112233445566778899aabbccddeeff",
        expired.as_str(),
        foreign.as_str(),
    ] {
        let err = store.fire(ID, pay().with_token(token)).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidToken { machine: "Order", id } if id == ID),
            "{token}: {err:?}"
        );
    }
    let err = store
        .issue_token::<Order>("nobody", MINUTE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 0);
    // The foreign token still works where it belongs.
    store.fire("o-2", pay().with_token(&foreign)).await.unwrap();
}

/// One token raced by 16 tasks applies once.
pub async fn one_token_raced_by_16_tasks_applies_once<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let token = store.issue_token::<Order>(ID, MINUTE).await.unwrap();
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (store, token) = (store.clone(), token.clone());
            tokio::spawn(async move { store.fire(ID, pay().with_token(token)).await })
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        let outcome = racer.await.unwrap().expect("applied or duplicate");
        applied += usize::from(!outcome.is_duplicate());
        assert_eq!(outcome.transition().version, 1);
    }
    assert_eq!(applied, 1);
}

/// Timer fires as a transition at its version.
pub async fn timer_fires_as_a_transition_at_its_version<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let early = store.fire_due_timers::<Order>(10, MINUTE).await.unwrap();
    assert!(early.is_empty(), "not due for 30 minutes: {early:?}");
    h.expire_timers().await;
    let fired = store.fire_due_timers::<Order>(10, MINUTE).await.unwrap();
    assert_eq!(fired.len(), 1);
    let (id, transition) = &fired[0];
    assert_eq!(id, ID);
    assert_eq!(
        (transition.version, transition.from, transition.to),
        (1, OrderState::Created, OrderState::Expired)
    );
    assert!(matches!(transition.event, Trigger::Timer { after: EXPIRY }));
    let history = store.history::<Order>(ID).await.unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        store
            .fire_due_timers::<Order>(10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Timer of a machine that moved on is a no op.
pub async fn timer_of_a_machine_that_moved_on_is_a_no_op<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    h.expire_timers().await;
    assert!(
        store
            .fire_due_timers::<Order>(10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
    let order = store.load::<Order>(ID).await.unwrap();
    assert_eq!((order.state, order.version), (OrderState::Paid, 1));
    // A self-loop re-enters Created and re-arms; the old stamp is stale, the new one fires.
    store.create::<Order>("o-2", self::order()).await.unwrap();
    store.fire("o-2", annotate("wrap it")).await.unwrap();
    h.expire_timers().await;
    let fired = store.fire_due_timers::<Order>(10, MINUTE).await.unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].1.version, 2);
}

/// Timers survive a restart.
pub async fn timers_survive_a_restart<F: DurableFixture>(h: &F) {
    h.store().create::<Order>(ID, order()).await.unwrap();
    let restarted = h.reopen().await;
    h.expire_timers().await;
    let fired = restarted
        .fire_due_timers::<Order>(10, MINUTE)
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(
        restarted.load::<Order>(ID).await.unwrap().state,
        OrderState::Expired
    );
}

type Seen = Arc<Mutex<Vec<(EffectId, OrderEffect, u32)>>>;

fn recorder() -> (
    Seen,
    impl Fn(Delivery<OrderEffect>) -> std::future::Ready<Result<(), BoxError>>
    + Send
    + Sync
    + Clone
    + 'static,
) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let handler = move |d: Delivery<OrderEffect>| {
        sink.lock().unwrap().push((d.id, d.effect, d.attempt));
        std::future::ready(Ok(()))
    };
    (seen, handler)
}

/// Dispatcher delivers each effect once with a stable id.
pub async fn dispatcher_delivers_each_effect_once_with_a_stable_id<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay().with_key("p")).await.unwrap();
    store.fire(ID, pay().with_key("p")).await.unwrap(); // duplicate: no second Charge
    store.fire(ID, annotate("gift")).await.unwrap();
    let dispatcher = Dispatcher::new(store.clone());
    let (seen, handler) = recorder();
    let report = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(
        report,
        DispatchReport {
            claimed: 2,
            done: 2,
            retried: 0,
            dead: 0
        }
    );
    let seen = seen.lock().unwrap().clone();
    let ids: Vec<String> = seen.iter().map(|(id, _, _)| id.to_string()).collect();
    assert_eq!(ids, ["Order/o-1/1/0", "Order/o-1/2/0"]);
    assert_eq!(seen[0].1, OrderEffect::Charge { cents: 500 });
    assert_eq!(seen[1].1, OrderEffect::Noted("gift".into()));
    assert!(seen.iter().all(|(_, _, attempt)| *attempt == 1));
    let again = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(again.claimed, 0);
}

/// Failing handler retries then dead letters.
pub async fn failing_handler_retries_then_dead_letters<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    // A backoff long enough that the claim right after the failure cannot outlast it
    // on a loaded machine.
    let options = DispatchOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(600),
        ..DispatchOptions::default()
    };
    let dispatcher = Dispatcher::new(store.clone()).with_options(options);
    let attempts: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let failing = {
        let attempts = Arc::clone(&attempts);
        move |d: Delivery<OrderEffect>| {
            attempts.lock().unwrap().push((d.id.to_string(), d.attempt));
            std::future::ready(Err::<(), BoxError>("card processor down".into()))
        }
    };
    let first = dispatcher
        .dispatch_once::<Order, _, _>(&failing)
        .await
        .unwrap();
    assert_eq!((first.claimed, first.retried), (1, 1));
    // Backing off: not claimable at once.
    assert_eq!(
        dispatcher
            .dispatch_once::<Order, _, _>(&failing)
            .await
            .unwrap()
            .claimed,
        0
    );
    for _ in 0..500 {
        if attempts.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        dispatcher
            .dispatch_once::<Order, _, _>(&failing)
            .await
            .unwrap();
    }
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts,
        [
            ("Order/o-1/1/0".into(), 1),
            ("Order/o-1/1/0".into(), 2),
            ("Order/o-1/1/0".into(), 3)
        ]
    );
    let dead = store.dead_letters::<Order>().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].effect, Some(OrderEffect::Charge { cents: 500 }));
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_deref()),
        (3, Some("card processor down"))
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        dispatcher
            .dispatch_once::<Order, _, _>(&failing)
            .await
            .unwrap()
            .claimed,
        0,
        "dead stays dead"
    );

    assert!(store.requeue(&dead[0].id).await.unwrap());
    assert!(
        !store.requeue(&dead[0].id).await.unwrap(),
        "no longer a dead letter"
    );
    let (seen, handler) = recorder();
    let report = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(
        seen.lock().unwrap()[0].2,
        1,
        "a requeued effect starts counting again"
    );
    assert!(store.dead_letters::<Order>().await.unwrap().is_empty());
}

/// Expired lease is claimed again.
pub async fn expired_lease_is_claimed_again<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    const LEASE: Duration = Duration::from_millis(500);
    let short = DispatchOptions {
        lease: LEASE,
        ..DispatchOptions::default()
    };
    // A worker claims the effect and dies in its handler, before settling it.
    let crashed = Dispatcher::new(store.clone()).with_options(short);
    let handed_over = Arc::new(tokio::sync::Notify::new());
    let crash = {
        let handed_over = Arc::clone(&handed_over);
        move |_: Delivery<OrderEffect>| {
            handed_over.notify_one();
            std::future::pending::<Result<(), BoxError>>()
        }
    };
    tokio::select! {
        _ = crashed.dispatch_once::<Order, _, _>(&crash) => unreachable!("the handler never returns"),
        () = handed_over.notified() => {}
    }
    let dispatcher = Dispatcher::new(store.clone());
    let (seen, handler) = recorder();
    assert_eq!(
        dispatcher
            .dispatch_once::<Order, _, _>(&handler)
            .await
            .unwrap()
            .claimed,
        0,
        "still leased"
    );
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    assert_eq!(
        dispatcher
            .dispatch_once::<Order, _, _>(&handler)
            .await
            .unwrap()
            .done,
        1
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].0.to_string(), "Order/o-1/1/0");
    assert_eq!(seen[0].2, 2, "second attempt, same id");
}

/// Concurrent dispatchers never overlap.
pub async fn concurrent_dispatchers_never_overlap<F: DurableFixture>(h: &F) {
    let store = h.store();
    for i in 0..40 {
        let id = format!("o-{i}");
        store.create::<Order>(&id, order()).await.unwrap();
        store.fire(&id, pay()).await.unwrap();
    }
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let options = DispatchOptions {
        batch: 4,
        ..DispatchOptions::default()
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let dispatcher = Dispatcher::new(store.clone()).with_options(options);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let handler = move |d: Delivery<OrderEffect>| {
                    let counts = Arc::clone(&counts);
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        *counts.lock().unwrap().entry(d.id.to_string()).or_default() += 1;
                        Ok::<(), BoxError>(())
                    }
                };
                while dispatcher
                    .dispatch_once::<Order, _, _>(&handler)
                    .await
                    .unwrap()
                    .claimed
                    > 0
                {}
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

/// A dispatcher that found nothing and waits a minute for its next poll hands over an
/// effect committed meanwhile at once (a store without
/// [`outbox_wakeup`](DurableStore::outbox_wakeup) only polls: nothing to check).
pub async fn a_committed_effect_wakes_an_idle_dispatcher_before_its_next_poll<F: DurableFixture>(
    h: &F,
) {
    let store = h.store();
    if store.outbox_wakeup("Order").is_none() {
        return;
    }
    store.create::<Order>(ID, order()).await.unwrap();
    let idle = DispatchOptions {
        idle_poll: Duration::from_secs(60),
        ..DispatchOptions::default()
    };
    let handed_over = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let handed_over = Arc::clone(&handed_over);
        move |_: Delivery<OrderEffect>| {
            handed_over.notify_one();
            std::future::ready(Ok::<(), BoxError>(()))
        }
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Dispatcher::new(store.clone())
            .with_options(idle)
            .run::<Order, _, _>(handler, shutdown.clone()),
    );
    // Its first pass finds the outbox empty (or, if it has not started yet, this
    // effect): either way it must not wait out the minute.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.fire(ID, pay()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), handed_over.notified())
        .await
        .expect("handed over long before the next poll");
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(store.outbox_depth("Order").await.unwrap().pending, 0);
}

/// Effects handled in one batch are all marked done; none is handed over again.
pub async fn a_batch_of_handled_effects_is_settled_together<F: DurableFixture>(h: &F) {
    let store = h.store();
    for n in 0..70 {
        let id = format!("o-{n}");
        store.create::<Order>(&id, order()).await.unwrap();
        store.fire(&id, pay()).await.unwrap();
    }
    let wide = DispatchOptions {
        batch: 100,
        ..DispatchOptions::default()
    };
    let dispatcher = Dispatcher::new(store.clone()).with_options(wide);
    let (seen, handler) = recorder();
    let report = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!((report.claimed, report.done), (70, 70));
    assert_eq!(store.outbox_depth("Order").await.unwrap().pending, 0);
    let again = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(again.claimed, 0);
    let seen = seen.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<String> = seen.iter().map(|s| s.0.to_string()).collect();
    assert_eq!((seen.len(), ids.len()), (70, 70));
    // A worker whose lease was lost settles nothing of the batch.
    store.create::<Order>("late", order()).await.unwrap();
    store.fire("late", pay()).await.unwrap();
    let lapsed = store
        .claim_effects("Order", Duration::ZERO, 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let current = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    assert_eq!((lapsed.len(), current.len()), (1, 1));
    assert_eq!(store.settle_done("Order", &lapsed).await.unwrap(), 0);
    assert_eq!(store.settle_done("Order", &current).await.unwrap(), 1);
    assert_eq!(store.outbox_depth("Order").await.unwrap().pending, 0);
}

/// Shutdown lets in flight handlers finish.
pub async fn shutdown_lets_in_flight_handlers_finish<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let shutdown = CancellationToken::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let finished: Seen = Arc::default();
    let handler = {
        let (started, finished) = (Arc::clone(&started), Arc::clone(&finished));
        move |d: Delivery<OrderEffect>| {
            let (started, finished) = (Arc::clone(&started), Arc::clone(&finished));
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(200)).await;
                finished.lock().unwrap().push((d.id, d.effect, d.attempt));
                Ok::<(), BoxError>(())
            }
        }
    };
    let run =
        tokio::spawn(Dispatcher::new(store.clone()).run::<Order, _, _>(handler, shutdown.clone()));
    started.notified().await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        finished.lock().unwrap().len(),
        1,
        "the in-flight handler finished"
    );
    let (_, handler) = recorder();
    let after = Dispatcher::new(store)
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(after.claimed, 0, "and its effect was marked done");
}

/// A worker that lost its lease settles nothing.
pub async fn a_worker_that_lost_its_lease_settles_nothing<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let short = DispatchOptions {
        lease: Duration::from_millis(50),
        max_attempts: 1,
        ..DispatchOptions::default()
    };
    // A slow worker whose lease runs out mid-handler, then fails: it would dead-letter.
    let slow = Dispatcher::new(store.clone()).with_options(short);
    let slow_handler = |_: Delivery<OrderEffect>| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err::<(), BoxError>("timed out".into())
    };
    let stale = tokio::spawn(async move { slow.dispatch_once::<Order, _, _>(&slow_handler).await });
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (seen, handler) = recorder();
    let fresh = Dispatcher::new(store.clone())
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(fresh.done, 1, "the expired lease was claimed again");
    assert_eq!(seen.lock().unwrap()[0].2, 2);
    stale.await.unwrap().unwrap();
    assert!(
        store.dead_letters::<Order>().await.unwrap().is_empty(),
        "the stale failure was ignored"
    );
    let (_, handler) = recorder();
    let after = Dispatcher::new(store)
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(after.claimed, 0, "the fresh worker's Done stands");
}

/// Applied transitions queue their effects as outbox rows (version, seq from 0) in the
/// same commit; a duplicate or a rejected command queues nothing.
pub async fn effects_are_queued_once_with_their_transition<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay().with_key("p")).await.unwrap();
    assert!(
        store
            .fire(ID, pay().with_key("p"))
            .await
            .unwrap()
            .is_duplicate()
    );
    store.fire(ID, pay()).await.unwrap_err();
    store.fire(ID, annotate("gift wrap")).await.unwrap();
    let rows = store
        .claim_effects("Order", MINUTE, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let effect: OrderEffect = serde_json::from_str(&row.effect).expect("effect as JSON");
            (row.version, row.seq, effect)
        })
        .collect::<Vec<_>>();
    assert_eq!(
        rows,
        [
            (1, 0, OrderEffect::Charge { cents: 500 }),
            (2, 0, OrderEffect::Noted("gift wrap".to_owned())),
        ]
    );
}

/// A handler that panics is a failed attempt: retried, then dead-lettered with the
/// panic's message; the panic does not escape `dispatch_once`.
pub async fn a_panicking_handler_is_a_failed_attempt<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let options = DispatchOptions {
        max_attempts: 2,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        ..DispatchOptions::default()
    };
    let dispatcher = Dispatcher::new(store.clone()).with_options(options);
    let panicking = |_: Delivery<OrderEffect>| async {
        panic!("card processor client bug");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    };
    let first = dispatcher
        .dispatch_once::<Order, _, _>(&panicking)
        .await
        .unwrap();
    assert_eq!((first.claimed, first.retried, first.dead), (1, 1, 0));
    let second = dispatcher
        .dispatch_once::<Order, _, _>(&panicking)
        .await
        .unwrap();
    assert_eq!((second.claimed, second.dead), (1, 1));
    let dead = store.dead_letters::<Order>().await.unwrap();
    assert_eq!(dead.len(), 1);
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("panicked") && error.contains("card processor client bug"),
        "{error}"
    );
}

/// `run` treats a panic as a failed attempt and goes on: the effect is retried and done,
/// and `run` ends cleanly at shutdown.
pub async fn run_keeps_dispatching_after_a_handler_panics<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let options = DispatchOptions {
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        idle_poll: Duration::from_millis(10),
        ..DispatchOptions::default()
    };
    let (done, handler) = {
        let done = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&done);
        let handler = move |d: Delivery<OrderEffect>| {
            let notify = Arc::clone(&notify);
            async move {
                assert!(d.attempt > 1, "first attempt panics");
                notify.notify_one();
                Ok::<(), BoxError>(())
            }
        };
        (done, handler)
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Dispatcher::new(store.clone())
            .with_options(options)
            .run::<Order, _, _>(handler, shutdown.clone()),
    );
    tokio::time::timeout(Duration::from_secs(10), done.notified())
        .await
        .expect("the second attempt succeeds");
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops")
        .expect("the run task itself did not panic");
    assert!(ended.is_ok(), "{ended:?}");
}

/// Once shutdown is cancelled no handler starts: of a claimed batch of three, the one in
/// flight finishes and the two others are released, claimable at once with their
/// attempt uncounted.
pub async fn no_handler_starts_after_shutdown_and_the_rest_is_released<F: DurableFixture>(h: &F) {
    let store = h.store();
    for i in 0..3 {
        let id = format!("o-{i}");
        store.create::<Order>(&id, order()).await.unwrap();
        store.fire(&id, pay()).await.unwrap();
    }
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let first_started = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (started, first_started) = (Arc::clone(&started), Arc::clone(&first_started));
        move |d: Delivery<OrderEffect>| {
            let (started, first_started) = (Arc::clone(&started), Arc::clone(&first_started));
            async move {
                started.lock().unwrap().push(d.id.to_string());
                first_started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<(), BoxError>(())
            }
        }
    };
    let shutdown = CancellationToken::new();
    let options = DispatchOptions {
        batch: 3,
        ..DispatchOptions::default()
    };
    let run = tokio::spawn(
        Dispatcher::new(store.clone())
            .with_options(options)
            .run::<Order, _, _>(handler, shutdown.clone()),
    );
    first_started.notified().await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        started.lock().unwrap().len(),
        1,
        "{:?}",
        started.lock().unwrap()
    );
    let (seen, handler) = recorder();
    let rest = Dispatcher::new(store)
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!((rest.claimed, rest.done), (2, 2), "released at once");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|(_, _, attempt)| *attempt == 1)
    );
}

/// The lease token never repeats for a row: after a requeue, a worker holding a claim
/// from before the dead-lettering cannot settle the new claim.
pub async fn a_stale_worker_never_settles_a_requeued_effect<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let stale = store
        .claim_effects("Order", Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    // Its lease (zero) is over: another worker claims it and dead-letters it.
    let second = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    assert_eq!(second.len(), 1);
    let dead = crate::kit::Settlement::Dead { error: "gave up" };
    assert!(
        store
            .settle_effect("Order", &second[0], dead)
            .await
            .unwrap()
    );
    let id = second[0].id("Order");
    assert!(store.requeue(&id).await.unwrap());
    let fresh = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    assert_eq!(
        (fresh.len(), fresh[0].attempts),
        (1, 1),
        "a fresh attempt count"
    );
    let done = crate::kit::Settlement::Done;
    assert!(
        !store.settle_effect("Order", &stale[0], done).await.unwrap(),
        "the first claim's holder settles nothing"
    );
    assert!(store.settle_effect("Order", &fresh[0], done).await.unwrap());
    assert!(
        store
            .claim_effects("Order", MINUTE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `Duration::MAX` means "never" wherever a duration becomes a deadline: a token issued
/// for it is valid, and a claim leased for it is not claimed again.
pub async fn durations_saturate_instead_of_wrapping<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let token = store.issue_token::<Order>(ID, Duration::MAX).await.unwrap();
    store.fire(ID, pay().with_token(&token)).await.unwrap();
    let claimed = store
        .claim_effects("Order", Duration::MAX, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .claim_effects("Order", MINUTE, 10)
            .await
            .unwrap()
            .is_empty(),
        "still leased"
    );
    let early = store
        .fire_due_timers::<Order>(10, Duration::MAX)
        .await
        .unwrap();
    assert!(early.is_empty());
}

/// Whether an effect is dead-lettered is decided by what failed, not by how the error
/// reads: a handler error saying "effect does not decode" is retried like any other.
pub async fn a_handler_error_worded_like_a_decode_error_is_retried<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    let failing = |_: Delivery<OrderEffect>| {
        std::future::ready(Err::<(), BoxError>(
            "effect does not decode at the processor".into(),
        ))
    };
    let report = Dispatcher::new(store.clone())
        .dispatch_once::<Order, _, _>(&failing)
        .await
        .unwrap();
    assert_eq!((report.retried, report.dead), (1, 0));
    assert!(store.dead_letters::<Order>().await.unwrap().is_empty());
}

/// One action may emit more effects than a statement takes parameters (MySQL allows
/// 65,535): every one is queued, in order, in the transition's commit.
pub async fn eleven_thousand_effects_from_one_action_are_all_queued<F: DurableFixture>(h: &F) {
    use super::{Meter, MeterData, MeterEvent};
    let store = h.store();
    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    let outcome = store
        .fire("m-1", Command::<Meter>::new(MeterEvent::Burst(11_000)))
        .await
        .unwrap();
    assert_eq!(outcome.transition().version, 1);
    let queued = store.claim_effects("Meter", MINUTE, 20_000).await.unwrap();
    assert_eq!(queued.len(), 11_000);
    assert!(
        queued
            .iter()
            .zip(0..)
            .all(|(row, seq)| row.seq == seq && row.version == 1)
    );
    assert_eq!(queued[10_999].effect, r#"{"Tick":10999}"#);
}

/// A client key spelled like a token's or a source's stored form takes no slot of
/// theirs: the token's holder and the source's message still apply.
pub async fn key_kinds_never_share_a_slot<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let token = store.issue_token::<Order>(ID, MINUTE).await.unwrap();
    let client = store
        .fire(ID, annotate("client").with_key(format!("token:{token}")))
        .await
        .unwrap();
    assert!(!client.is_duplicate());
    let holder = store.fire(ID, pay().with_token(&token)).await.unwrap();
    assert!(matches!(holder, Outcome::Applied(_)), "{holder:?}");
    store
        .fire(ID, annotate("client").with_key("billing#7"))
        .await
        .unwrap();
    let source = store
        .fire(ID, annotate("source").from_source("billing", 7))
        .await
        .unwrap();
    assert!(matches!(source, Outcome::Applied(_)), "{source:?}");
    assert_eq!(source.transition().key.as_deref(), Some("billing#7"));
    assert!(
        store
            .fire(ID, annotate("source").from_source("billing", 7))
            .await
            .unwrap()
            .is_duplicate()
    );
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 4);
}

/// One instance's pending timers and outbox rows, whatever their status, in order.
pub async fn pending_timers_and_outbox_rows_of_one_instance<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    let armed = store.pending_timers::<Order>(ID).await.unwrap();
    assert_eq!(armed.len(), 1, "{armed:?}");
    assert_eq!(
        (armed[0].state.as_str(), armed[0].after, armed[0].version),
        ("Created", EXPIRY, 0)
    );
    assert!(armed[0].due_at_ms > crate::kit::now_ms());
    store.fire(ID, pay()).await.unwrap();
    store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    let claimed = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let settle = |n: usize, how| {
        let store = store.clone();
        let effect = claimed[n].clone();
        async move { store.settle_effect("Order", &effect, how).await.unwrap() }
    };
    assert!(settle(0, Settlement::Done).await);
    assert!(settle(1, Settlement::Dead { error: "refused" }).await);
    let outbox = store.outbox::<Order>(ID).await.unwrap();
    let rows: Vec<_> = outbox
        .iter()
        .map(|e| {
            (
                e.id.version,
                e.id.seq,
                e.status,
                e.effect.clone(),
                e.attempts,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                1,
                0,
                EffectStatus::Done,
                Some(OrderEffect::Charge { cents: 500 }),
                1
            ),
            (
                2,
                0,
                EffectStatus::Dead,
                Some(OrderEffect::Refund { cents: 500 }),
                1
            ),
        ]
    );
    assert!(outbox[0].done_at_ms.is_some() && outbox[1].done_at_ms.is_none());
    assert_eq!(outbox[1].last_error.as_deref(), Some("refused"));
    assert!(
        store
            .outbox::<Order>("no-such-order")
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------
// Retention.

/// Keeps nothing that is done or expired, in batches of `batch`.
fn keep_nothing(batch: usize) -> Retention {
    Retention {
        done_effects: Duration::ZERO,
        expired_tokens: Duration::ZERO,
        batch,
    }
}

/// Lets the store's clock pass the last millisecond written, so "older than zero"
/// covers everything written so far.
async fn a_moment_later() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// A failing handler with one attempt: every effect it sees is dead-lettered.
async fn dead_letter_everything<S: DurableStore>(store: &S) -> DispatchReport {
    let options = DispatchOptions {
        max_attempts: 1,
        ..DispatchOptions::default()
    };
    let failing =
        |_: Delivery<OrderEffect>| std::future::ready(Err::<(), BoxError>("refused".into()));
    Dispatcher::new(store.clone())
        .with_options(options)
        .dispatch_once::<Order, _, _>(&failing)
        .await
        .unwrap()
}

/// A prune deletes done outbox rows and expired tokens past their age, and nothing
/// else: pending rows, dead letters, live tokens and history stay.
pub async fn pruning_deletes_done_effects_and_expired_tokens_and_keeps_the_rest<
    F: DurableFixture,
>(
    h: &F,
) {
    let store = h.store();
    for id in ["done", "pending", "dead"] {
        store.create::<Order>(id, order()).await.unwrap();
        store.fire(id, pay()).await.unwrap();
        if id == "done" {
            let (_, handler) = recorder();
            let report = Dispatcher::new(store.clone())
                .dispatch_once::<Order, _, _>(&handler)
                .await
                .unwrap();
            assert_eq!(report.done, 1);
        }
    }
    let pending_id = EffectId {
        machine: "Order",
        id: "pending".into(),
        version: 1,
        seq: 0,
    };
    // Claimed and released: the "pending" row stays pending, not dead.
    let claimed = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    for row in &claimed {
        let how = if row.machine_id == "dead" {
            Settlement::Dead { error: "refused" }
        } else {
            Settlement::Release
        };
        assert!(store.settle_effect("Order", row, how).await.unwrap());
    }
    let expiring = store
        .issue_token::<Order>("done", Duration::from_millis(1))
        .await
        .unwrap();
    let live = store.issue_token::<Order>("done", MINUTE).await.unwrap();
    a_moment_later().await;

    let kept = store.prune(&Retention::default()).await.unwrap();
    assert!(kept.is_empty(), "nothing is a week old yet: {kept:?}");

    let pruned = store.prune(&keep_nothing(100)).await.unwrap();
    assert_eq!(
        (pruned.done_effects, pruned.expired_tokens),
        (1, 1),
        "{pruned:?}"
    );
    assert!(store.outbox::<Order>("done").await.unwrap().is_empty());
    let pending = store.outbox::<Order>("pending").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (&pending[0].id, pending[0].status),
        (&pending_id, EffectStatus::Pending)
    );
    assert_eq!(store.dead_letters::<Order>().await.unwrap().len(), 1);
    for id in ["done", "pending", "dead"] {
        assert_eq!(store.history::<Order>(id).await.unwrap().len(), 1, "{id}");
    }
    let with = |token: &str| Command::<Order>::new(OrderEvent::Cancel).with_token(token);
    assert!(matches!(
        store.fire("done", with(&expiring)).await,
        Err(Error::InvalidToken { .. })
    ));
    assert!(
        !store
            .fire("done", with(&live))
            .await
            .unwrap()
            .is_duplicate()
    );
    assert!(
        store.prune(&keep_nothing(100)).await.unwrap().is_empty(),
        "a second prune finds nothing"
    );
}

/// No prune deletes more than a batch, and a [`Pruner`] goes on until none is full.
pub async fn pruning_goes_in_batches_of_the_configured_size<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    for n in 0..25 {
        store.fire(ID, annotate(&format!("n{n}"))).await.unwrap();
    }
    let (_, handler) = recorder();
    let dispatcher = Dispatcher::new(store.clone()).with_options(DispatchOptions {
        batch: 100,
        ..DispatchOptions::default()
    });
    let report = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(report.done, 25);
    a_moment_later().await;
    let mut batches = Vec::new();
    loop {
        let pruned = store.prune(&keep_nothing(10)).await.unwrap().done_effects;
        batches.push(pruned);
        if pruned < 10 {
            break;
        }
    }
    assert_eq!(batches, [10, 10, 5]);

    for n in 25..48 {
        store.fire(ID, annotate(&format!("n{n}"))).await.unwrap();
    }
    let report = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(report.done, 23);
    a_moment_later().await;
    let pruner = Pruner::new(store.clone())
        .with_retention(keep_nothing(10))
        .with_pause(Duration::from_millis(1));
    let total = pruner.prune_once().await.unwrap();
    assert_eq!(total.done_effects, 23, "{total:?}");
    assert!(store.outbox::<Order>(ID).await.unwrap().is_empty());
    assert_eq!(store.history::<Order>(ID).await.unwrap().len(), 48);
}

/// A dead letter stays until it is discarded by its id; nothing else is discarded.
pub async fn a_dead_letter_is_kept_until_discarded<F: DurableFixture>(h: &F) {
    let store = h.store();
    store.create::<Order>(ID, order()).await.unwrap();
    store.fire(ID, pay()).await.unwrap();
    assert_eq!(dead_letter_everything(&store).await.dead, 1);
    a_moment_later().await;
    assert!(store.prune(&keep_nothing(100)).await.unwrap().is_empty());
    let dead = store.dead_letters::<Order>().await.unwrap();
    assert_eq!(dead.len(), 1);

    store.fire(ID, annotate("pending")).await.unwrap();
    let pending = EffectId {
        machine: "Order",
        id: ID.into(),
        version: 2,
        seq: 0,
    };
    assert!(
        !store.discard(&pending).await.unwrap(),
        "a pending row is not a dead letter"
    );
    assert!(store.discard(&dead[0].id).await.unwrap());
    assert!(!store.discard(&dead[0].id).await.unwrap(), "discarded once");
    assert!(store.dead_letters::<Order>().await.unwrap().is_empty());
    assert!(!store.requeue(&dead[0].id).await.unwrap());
    let outbox = store.outbox::<Order>(ID).await.unwrap();
    assert_eq!(
        outbox.iter().map(|e| (&e.id, e.status)).collect::<Vec<_>>(),
        [(&pending, EffectStatus::Pending)]
    );
}

/// History is pruned only for a machine type the pruner names, and only with whole
/// instances that finished long enough ago and have nothing left in the outbox.
pub async fn finished_instances_are_pruned_only_when_asked_and_only_when_settled<
    F: DurableFixture,
>(
    h: &F,
) {
    let store = h.store();
    let cancel = || Command::<Order>::new(OrderEvent::Cancel);
    for id in ["cancelled", "refunded", "dead", "open"] {
        store.create::<Order>(id, order()).await.unwrap();
    }
    store.fire("cancelled", cancel()).await.unwrap();
    store.fire("refunded", pay()).await.unwrap();
    store.fire("refunded", cancel()).await.unwrap();
    store.fire("dead", pay()).await.unwrap();
    store.fire("dead", cancel()).await.unwrap();
    // "dead"'s charge and refund become dead letters; "refunded"'s stay pending.
    let claimed = store.claim_effects("Order", MINUTE, 10).await.unwrap();
    for row in &claimed {
        let how = match row.machine_id.as_str() {
            "dead" => Settlement::Dead { error: "refused" },
            _ => Settlement::Release,
        };
        assert!(store.settle_effect("Order", row, how).await.unwrap());
    }
    store
        .issue_token::<Order>("cancelled", MINUTE)
        .await
        .unwrap();
    a_moment_later().await;

    let history_kept = Pruner::new(store.clone()).with_retention(keep_nothing(10));
    assert_eq!(
        history_kept.prune_once().await.unwrap().finished_instances,
        0
    );
    assert_eq!(store.history::<Order>("cancelled").await.unwrap().len(), 1);
    assert_eq!(
        store
            .prune_finished::<Order>(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0,
        "cancelled a moment ago, not an hour"
    );

    assert_eq!(
        store
            .prune_finished::<Order>(Duration::ZERO, 10)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.load::<Order>("cancelled").await,
        Err(Error::NotFound { .. })
    ));
    for id in ["refunded", "dead", "open"] {
        store.load::<Order>(id).await.unwrap();
    }

    let (_, handler) = recorder();
    let delivered = Dispatcher::new(store.clone())
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!(delivered.done, 2, "the refunded order's charge and refund");
    a_moment_later().await;
    let pruner = Pruner::new(store.clone())
        .with_retention(Retention {
            batch: 10,
            ..Retention::default()
        })
        .prune_finished::<Order>(Duration::ZERO);
    assert_eq!(pruner.prune_once().await.unwrap().finished_instances, 1);
    assert!(store.outbox::<Order>("refunded").await.unwrap().is_empty());
    assert!(matches!(
        store.load::<Order>("refunded").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.dead_letters::<Order>().await.unwrap().len(), 2);
    store.load::<Order>("dead").await.unwrap();
    store.load::<Order>("open").await.unwrap();

    let again = store.create::<Order>("cancelled", order()).await.unwrap();
    assert!(again.is_new(), "a pruned id is free again");
    assert!(
        store
            .history::<Order>("cancelled")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .pending_timers::<Order>("cancelled")
            .await
            .unwrap()
            .len()
            == 1
    );
}

/// What [`pruning_100k_done_rows_in_batches_while_transitions_apply`] saw; its
/// `Display` is one line for a test's output.
#[derive(Debug, Clone)]
pub struct PruneLoad {
    /// Rows each batch deleted, in order.
    pub batches: Vec<u64>,
    /// How long the longest batch took.
    pub longest_batch: Duration,
    /// How long pruning took in all, pauses included.
    pub elapsed: Duration,
    /// Transitions applied while the pruner worked.
    pub applied_meanwhile: u64,
}

impl std::fmt::Display for PruneLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pruned {} rows in {} batches in {:.2?} (longest batch {:.2?}); {} transitions applied meanwhile",
            self.batches.iter().sum::<u64>(),
            self.batches.len(),
            self.elapsed,
            self.longest_batch,
            self.applied_meanwhile
        )
    }
}

/// 100,000 done outbox rows are pruned in batches of 1,000 while four tasks keep firing
/// transitions and a dispatcher keeps settling their effects: every batch is bounded,
/// every old row goes, every fire applies, and no recent row is touched.
///
/// `age` must make every outbox row of the [`Meter`](super::Meter) machine done long
/// ago (a database fixture sets `done_at` with one `UPDATE`; going through the
/// dispatcher would take 100,000 round trips) and leave other rows alone.
pub async fn pruning_100k_done_rows_in_batches_while_transitions_apply<S, F, Fut>(
    store: S,
    age: F,
) -> PruneLoad
where
    S: DurableStore + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    use super::{Meter, MeterData, MeterEvent};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROWS: u32 = 100_000;
    const BATCH: usize = 1_000;

    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    for _ in 0..10 {
        store
            .fire("m-1", Command::<Meter>::new(MeterEvent::Burst(ROWS / 10)))
            .await
            .unwrap();
    }
    age().await;

    let orders: Vec<String> = (0..8).map(|n| format!("busy-{n}")).collect();
    for id in &orders {
        store.create::<Order>(id, order()).await.unwrap();
    }
    let (stop, applied) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut firing = Vec::new();
    for task in 0..4 {
        let (store, stop, applied) = (store.clone(), Arc::clone(&stop), Arc::clone(&applied));
        let mine = [orders[2 * task].clone(), orders[2 * task + 1].clone()];
        firing.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let outcome = store.fire(&mine[n % 2], annotate(&format!("n{n}"))).await;
                assert!(!outcome.unwrap().is_duplicate());
                applied.fetch_add(1, Ordering::Relaxed);
                n += 1;
                // A steady load, not a flood: each context grows by a note per fire.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let shutdown = CancellationToken::new();
    let (_, handler) = recorder();
    let dispatching = tokio::spawn(
        Dispatcher::new(store.clone())
            .with_options(DispatchOptions {
                idle_poll: Duration::from_millis(5),
                ..DispatchOptions::default()
            })
            .run::<Order, _, _>(handler, shutdown.clone()),
    );

    // Recent done rows (the dispatcher's) are an hour short of the retention age.
    let retention = Retention {
        done_effects: Duration::from_secs(3600),
        batch: BATCH,
        ..Retention::default()
    };
    let started = std::time::Instant::now();
    let before = applied.load(Ordering::Relaxed);
    let (mut batches, mut longest_batch) = (Vec::new(), Duration::ZERO);
    loop {
        let one = std::time::Instant::now();
        let pruned = store.prune(&retention).await.unwrap().done_effects;
        longest_batch = longest_batch.max(one.elapsed());
        batches.push(pruned);
        if pruned < BATCH as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let applied_meanwhile = applied.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for task in firing {
        task.await.unwrap();
    }
    shutdown.cancel();
    dispatching.await.unwrap().unwrap();

    assert!(batches.iter().all(|&n| n <= BATCH as u64), "{batches:?}");
    assert_eq!(batches.iter().sum::<u64>(), u64::from(ROWS));
    assert!(batches.len() > 100, "{} batches", batches.len());
    assert!(store.outbox::<Meter>("m-1").await.unwrap().is_empty());
    assert!(applied_meanwhile > 0, "no transition applied while pruning");
    for id in &orders {
        let history = store.history::<Order>(id).await.unwrap();
        let versions: Vec<u64> = history.iter().map(|t| t.version).collect();
        assert_eq!(versions, (1..=history.len() as u64).collect::<Vec<_>>());
        let outbox = store.outbox::<Order>(id).await.unwrap();
        assert_eq!(
            outbox.len(),
            history.len(),
            "{id}: a recent effect was pruned"
        );
    }
    PruneLoad {
        batches,
        longest_batch,
        elapsed,
        applied_meanwhile,
    }
}
