//! Group commit as a caller sees it, written once for every backend: commands that
//! land in one batch each get the answer a lone fire would have given them.

// Not every test binary that includes `common` runs these cases.
#![allow(unused_macros, unused_imports)]

use std::sync::Arc;

use fsm_core::testing::{
    Meter, MeterData, MeterEvent, Order, OrderData, OrderEffect, OrderEvent, OrderState, Payment,
    Sample,
};
use fsm_core::{Command, DurableStore, Error, Outcome, Store};
use fsm_sqlx::{Dialect, SqlStore};
use tokio::sync::Barrier;

/// Expands to one `#[tokio::test]` per case, each on a fresh fixture from `$make` (a
/// future of a [`Fixture`] whose store has group commit).
macro_rules! group_commit_tests {
    ($make:expr) => {
        $crate::common::group::group_commit_cases! { $make;
            commands_fired_together_each_get_the_answer_a_lone_fire_gives,
            an_action_panicking_in_a_batch_fails_only_its_own_caller,
        }
    };
}

macro_rules! group_commit_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let fixture = $make.await;
                let store = ::fsm_core::testing::Fixture::store(&fixture);
                $crate::common::group::$case(store).await;
                ::fsm_core::testing::Fixture::cleanup(fixture).await;
            }
        )*
    };
}

pub(crate) use {group_commit_cases, group_commit_tests};

fn pay(cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment {
        amount_cents: cents,
    }))
}

/// What each of 50 racing commands is, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Legal,
    GuardFails,
    Illegal,
    DoubleSubmit,
    Unknown,
}

fn kind(n: usize) -> Kind {
    [
        Kind::Legal,
        Kind::GuardFails,
        Kind::Illegal,
        Kind::DoubleSubmit,
        Kind::Unknown,
    ][n % 5]
}

/// 10 orders of each kind, fired from 60 tasks released at once: the legal payments
/// apply, the short payments fail their guard, shipping an unpaid order is illegal, a
/// payment submitted twice with one key applies once (the other caller sees it as a
/// duplicate), an unknown order is not found, and no failure changes another order.
pub(crate) async fn commands_fired_together_each_get_the_answer_a_lone_fire_gives<D: Dialect>(
    store: Arc<SqlStore<D>>,
) {
    let order = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    for n in 0..50 {
        if kind(n) != Kind::Unknown {
            store
                .create::<Order>(&format!("o-{n}"), order.clone())
                .await
                .unwrap();
        }
    }
    let tasks: Vec<(usize, Command<Order>)> = (0..50)
        .flat_map(|n| match kind(n) {
            Kind::Legal => vec![(n, pay(500).with_key(format!("pay-{n}")))],
            Kind::GuardFails => vec![(n, pay(499))],
            Kind::Illegal => vec![(n, Command::new(OrderEvent::Ship))],
            Kind::DoubleSubmit => (0..2)
                .map(|_| (n, pay(500).with_key(format!("twice-{n}"))))
                .collect(),
            Kind::Unknown => vec![(n, pay(500))],
        })
        .collect();
    let start = Arc::new(Barrier::new(tasks.len()));
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|(n, command)| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                (n, store.fire(&format!("o-{n}"), command).await)
            })
        })
        .collect();
    let mut twice: std::collections::HashMap<usize, Vec<Outcome<Order>>> = Default::default();
    for handle in handles {
        let (n, result) = handle.await.expect("no fire panics");
        match (kind(n), result) {
            (Kind::Legal, Ok(Outcome::Applied(t))) => {
                assert_eq!((t.version, t.to), (1, OrderState::Paid));
            }
            (Kind::GuardFails, Err(Error::GuardRejected { guards, .. })) => {
                assert_eq!(guards, ["amount_matches"]);
            }
            (Kind::Illegal, Err(Error::IllegalTransition { state, event, .. })) => {
                assert_eq!((state.as_str(), event.as_str()), ("Created", "Ship"));
            }
            (Kind::DoubleSubmit, Ok(outcome)) => twice.entry(n).or_default().push(outcome),
            (Kind::Unknown, Err(Error::NotFound { .. })) => {}
            (kind, other) => panic!("order {n} ({kind:?}): {other:?}"),
        }
    }
    for (n, outcomes) in twice {
        let applied = outcomes.iter().filter(|o| !o.is_duplicate()).count();
        assert_eq!(applied, 1, "order {n}: {outcomes:?}");
        let versions: Vec<u64> = outcomes.iter().map(|o| o.transition().version).collect();
        assert_eq!(
            versions,
            [1, 1],
            "order {n}: both callers see one transition"
        );
    }
    for n in (0..50).filter(|&n| kind(n) != Kind::Unknown) {
        let id = format!("o-{n}");
        let stored = store.load::<Order>(&id).await.unwrap();
        let history = store.history::<Order>(&id).await.unwrap();
        let outbox = store.outbox::<Order>(&id).await.unwrap();
        let effects: Vec<_> = outbox.into_iter().filter_map(|e| e.effect).collect();
        if matches!(kind(n), Kind::Legal | Kind::DoubleSubmit) {
            assert_eq!(
                (stored.state, stored.version),
                (OrderState::Paid, 1),
                "{id}"
            );
            assert_eq!(history.len(), 1, "{id}");
            assert_eq!(effects, [OrderEffect::Charge { cents: 500 }], "{id}");
        } else {
            assert_eq!(
                (stored.state, stored.version),
                (OrderState::Created, 0),
                "{id}"
            );
            assert!(history.is_empty() && effects.is_empty(), "{id}");
        }
    }
}

/// 16 meters take a reading at once while the reading of a 17th panics in its action:
/// the panic reaches that caller alone, the 16 apply, and the 17th is unchanged.
pub(crate) async fn an_action_panicking_in_a_batch_fails_only_its_own_caller<D: Dialect>(
    store: Arc<SqlStore<D>>,
) {
    for n in 0..17 {
        store
            .create::<Meter>(&format!("m-{n}"), MeterData::default())
            .await
            .unwrap();
    }
    let start = Arc::new(Barrier::new(17));
    let handles: Vec<_> = (0..17)
        .map(|n| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            // A negative reading panics in the meter's action.
            let value = if n == 16 { -1.0 } else { 4.0 };
            tokio::spawn(async move {
                start.wait().await;
                store
                    .fire(
                        &format!("m-{n}"),
                        Command::new(MeterEvent::Record(Sample {
                            value,
                            detail: None,
                        })),
                    )
                    .await
            })
        })
        .collect();
    for (n, handle) in handles.into_iter().enumerate() {
        let joined = handle.await;
        if n == 16 {
            assert!(
                joined.is_err_and(|e| e.is_panic()),
                "the action's panic reaches its caller"
            );
        } else {
            assert!(!joined.expect("no panic").expect("applied").is_duplicate());
        }
    }
    for n in 0..17 {
        let stored = store.load::<Meter>(&format!("m-{n}")).await.unwrap();
        let expected = if n == 16 { (0, 0) } else { (1, 1) };
        assert_eq!((stored.version, stored.context.samples), expected, "m-{n}");
    }
}
