//! The store conformance suite: one set of specifications every [`Store`] passes.
//!
//! A store crate runs it with [`store_conformance_tests!`](crate::store_conformance_tests),
//! giving an expression that yields a fresh [`Fixture`] per test:
//!
//! ```
//! # mod conformance {
//! fsm_core::store_conformance_tests!(async { std::sync::Arc::new(fsm_core::MemoryStore::new()) });
//! # }
//! ```
//!
//! The suite drives [`Order`], a hand-written [`StateMachine`] (no macro, so this crate
//! needs no proc-macro), which also documents the trait contract `state_machine!`
//! implements:
//!
//! ```text
//! *Created + Pay(Payment) [amount_matches] / record_payment => Paid
//! Created + Cancel => Cancelled
//! Paid + Cancel / refund => Cancelled
//! Paid + Ship => Shipped
//! Shipped + Deliver => Delivered
//! Created | Paid + Annotate(Note) / annotate => (same state)
//! Created + after(30 min) => Expired
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    Command, Definition, Edge, EdgeIndex, Effects, Error, EventInfo, MachineEvent, On, Outcome,
    Snapshot, StateInfo, StateMachine, Store, UnknownName,
};

pub mod durable;
mod evolution;
mod meter;
mod queries;

pub use durable::DurableFixture;
pub use evolution::{
    ParcelV1, ParcelV1Event, ParcelV1State, ParcelV2, ParcelV2Event, ParcelV2State,
};
pub use meter::{Meter, MeterData, MeterEffect, MeterEvent, MeterState, Sample, nested};
pub use queries::{
    counts_per_state_equal_a_full_scan, entered_before_finds_instances_by_time_in_their_state,
    foreign_cursors_and_bad_limits_are_invalid_queries, id_prefix_lists_matching_ids_in_byte_order,
    listing_pages_every_steady_match_exactly_once_while_8_tasks_fire,
};

/// A fresh store for one conformance test, and how to clean it up afterwards.
pub trait Fixture: Send + Sized + 'static {
    /// The store under test.
    type Store: Store;
    /// The store, shared with the test's tasks.
    fn store(&self) -> Arc<Self::Store>;
    /// Releases what the fixture created (a schema, a database file).
    fn cleanup(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<S: Store> Fixture for Arc<S> {
    type Store = S;
    fn store(&self) -> Arc<S> {
        Arc::clone(self)
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh fixture from
/// `$make` (an expression of a future yielding a [`Fixture`]).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases! { $make;
            legal_path_applies_each_event_once,
            illegal_event_names_machine_state_and_event,
            repeated_event_is_an_illegal_repeat,
            guard_rejection_lists_guards_and_changes_nothing,
            duplicate_key_returns_original_outcome,
            same_key_with_another_payload_is_key_reused,
            keys_outside_1_to_255_bytes_are_invalid,
            source_and_sequence_keys_deduplicate,
            one_key_fired_by_64_tasks_applies_once,
            distinct_keys_from_32_tasks_give_gapless_versions,
            create_is_idempotent_on_the_business_id,
            simultaneous_first_creates_report_one_new,
            ids_outside_1_to_255_bytes_are_invalid,
            unknown_instance_is_not_found,
            history_is_in_version_order,
            fire_with_a_current_snapshot_advances_it,
            fire_with_a_stale_snapshot_decides_from_the_stored_version,
            ids_and_keys_compare_byte_for_byte,
            a_snapshot_with_a_forged_state_decides_nothing,
            a_snapshot_with_a_forged_context_passes_no_guard,
            a_deserialized_snapshot_is_read_afresh,
            nul_bytes_in_ids_and_keys_are_invalid_before_any_io,
            non_finite_floats_are_refused_before_any_write,
            values_nested_past_what_json_reads_back_are_refused,
            an_action_result_that_cannot_be_stored_changes_nothing,
            an_action_that_panics_changes_nothing,
            listing_pages_every_steady_match_exactly_once_while_8_tasks_fire,
            counts_per_state_equal_a_full_scan,
            entered_before_finds_instances_by_time_in_their_state,
            id_prefix_lists_matching_ids_in_byte_order,
            foreign_cursors_and_bad_limits_are_invalid_queries,
            fires_dropped_midway_apply_at_most_once_and_leave_the_store_usable,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let fixture = $make.await;
                let store = $crate::testing::Fixture::store(&fixture);
                $crate::testing::$case(store).await;
                $crate::testing::Fixture::cleanup(fixture).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// The test machine, written by hand.

/// Marker of the conformance suite's order machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Order;

/// States of [`Order`].
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderState {
    Created,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Expired,
}

/// Events of [`Order`].
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    Pay(Payment),
    Cancel,
    Ship,
    Deliver,
    Annotate(Note),
}

/// Payload of [`OrderEvent::Pay`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Amount paid, in cents.
    pub amount_cents: u64,
}

/// Payload of [`OrderEvent::Annotate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note(pub String);

/// Context of [`Order`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderData {
    /// What the customer owes, in cents.
    pub total_cents: u64,
    /// What the customer paid, in cents.
    pub paid_cents: u64,
    /// Notes added by `Annotate`, in order.
    pub notes: Vec<String>,
}

/// Effects of [`Order`].
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEffect {
    Charge { cents: u64 },
    Refund { cents: u64 },
    Noted(String),
}

impl OrderState {
    /// Every state, in declaration order.
    pub const ALL: [OrderState; 6] = [
        OrderState::Created,
        OrderState::Paid,
        OrderState::Shipped,
        OrderState::Delivered,
        OrderState::Cancelled,
        OrderState::Expired,
    ];

    /// The stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderState::Created => "Created",
            OrderState::Paid => "Paid",
            OrderState::Shipped => "Shipped",
            OrderState::Delivered => "Delivered",
            OrderState::Cancelled => "Cancelled",
            OrderState::Expired => "Expired",
        }
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownName {
                machine: "Order",
                kind: "state",
                name: s.to_owned(),
            })
    }
}

const STATES: &[StateInfo] = &[
    StateInfo {
        name: "Created",
        doc: "",
        initial: true,
        terminal: false,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
    StateInfo {
        name: "Paid",
        doc: "",
        initial: false,
        terminal: false,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
    StateInfo {
        name: "Shipped",
        doc: "",
        initial: false,
        terminal: false,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
    StateInfo {
        name: "Delivered",
        doc: "",
        initial: false,
        terminal: true,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
    StateInfo {
        name: "Cancelled",
        doc: "",
        initial: false,
        terminal: true,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
    StateInfo {
        name: "Expired",
        doc: "",
        initial: false,
        terminal: true,
        renamed_from: &[],
        entry: None,
        exit: None,
        parent: None,
    },
];

const EVENTS: &[EventInfo] = &[
    EventInfo {
        name: "Pay",
        doc: "",
        payload: Some("Payment"),
        renamed_from: &[],
    },
    EventInfo {
        name: "Cancel",
        doc: "",
        payload: None,
        renamed_from: &[],
    },
    EventInfo {
        name: "Ship",
        doc: "",
        payload: None,
        renamed_from: &[],
    },
    EventInfo {
        name: "Deliver",
        doc: "",
        payload: None,
        renamed_from: &[],
    },
    EventInfo {
        name: "Annotate",
        doc: "",
        payload: Some("Note"),
        renamed_from: &[],
    },
];

/// How long an unpaid order waits before it expires.
pub const EXPIRY: Duration = Duration::from_secs(30 * 60);

/// Index of the `Created + after(30 min) => Expired` edge.
pub const EXPIRY_EDGE: EdgeIndex = 7;

const EDGES: &[Edge] = &[
    Edge {
        from: "Created",
        on: On::Event("Pay"),
        guard: Some("amount_matches"),
        action: Some("record_payment"),
        to: "Paid",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Created",
        on: On::Event("Cancel"),
        guard: None,
        action: None,
        to: "Cancelled",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Paid",
        on: On::Event("Cancel"),
        guard: None,
        action: Some("refund"),
        to: "Cancelled",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Paid",
        on: On::Event("Ship"),
        guard: None,
        action: None,
        to: "Shipped",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Shipped",
        on: On::Event("Deliver"),
        guard: None,
        action: None,
        to: "Delivered",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Created",
        on: On::Event("Annotate"),
        guard: None,
        action: Some("annotate"),
        to: "Created",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Paid",
        on: On::Event("Annotate"),
        guard: None,
        action: Some("annotate"),
        to: "Paid",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
    Edge {
        from: "Created",
        on: On::After(EXPIRY),
        guard: None,
        action: None,
        to: "Expired",
        from_wildcard: false,
        from_parent: None,
        to_parent: None,
    },
];

const TARGETS: [OrderState; 8] = [
    OrderState::Paid,
    OrderState::Cancelled,
    OrderState::Cancelled,
    OrderState::Shipped,
    OrderState::Delivered,
    OrderState::Created,
    OrderState::Paid,
    OrderState::Expired,
];

impl MachineEvent for OrderEvent {
    type Machine = Order;
}

impl StateMachine for Order {
    type State = OrderState;
    type Event = OrderEvent;
    type Context = OrderData;
    type Effect = OrderEffect;

    const DEFINITION: &'static Definition = &Definition {
        name: "Order",
        doc: "The conformance suite's order.",
        context: "OrderData",
        effect: Some("OrderEffect"),
        states: STATES,
        parents: &[],
        events: EVENTS,
        edges: EDGES,
    };
    const INITIAL: OrderState = OrderState::Created;

    fn state_name(state: OrderState) -> &'static str {
        state.as_str()
    }

    fn parse_state(name: &str) -> Option<OrderState> {
        name.parse().ok()
    }

    fn event_name(event: &OrderEvent) -> &'static str {
        match event {
            OrderEvent::Pay(_) => "Pay",
            OrderEvent::Cancel => "Cancel",
            OrderEvent::Ship => "Ship",
            OrderEvent::Deliver => "Deliver",
            OrderEvent::Annotate(_) => "Annotate",
        }
    }

    fn edges(state: OrderState, event: &OrderEvent) -> &'static [EdgeIndex] {
        use OrderEvent as E;
        use OrderState as S;
        match (state, event) {
            (S::Created, E::Pay(_)) => &[0],
            (S::Created, E::Cancel) => &[1],
            (S::Paid, E::Cancel) => &[2],
            (S::Paid, E::Ship) => &[3],
            (S::Shipped, E::Deliver) => &[4],
            (S::Created, E::Annotate(_)) => &[5],
            (S::Paid, E::Annotate(_)) => &[6],
            _ => &[],
        }
    }

    fn timer_edges(state: OrderState) -> &'static [EdgeIndex] {
        match state {
            OrderState::Created => &[EXPIRY_EDGE],
            _ => &[],
        }
    }

    fn target(edge: EdgeIndex) -> OrderState {
        TARGETS[usize::from(edge)]
    }

    fn guard(edge: EdgeIndex, context: &OrderData, event: Option<&OrderEvent>) -> bool {
        match (edge, event) {
            (0, Some(OrderEvent::Pay(payment))) => payment.amount_cents == context.total_cents,
            (0, _) => false,
            _ => true,
        }
    }

    fn act(
        edge: EdgeIndex,
        context: &mut OrderData,
        event: Option<&OrderEvent>,
        effects: &mut Effects<OrderEffect>,
    ) {
        match (edge, event) {
            (0, Some(OrderEvent::Pay(payment))) => {
                context.paid_cents += payment.amount_cents;
                effects.emit(OrderEffect::Charge {
                    cents: payment.amount_cents,
                });
            }
            (2, _) => {
                effects.emit(OrderEffect::Refund {
                    cents: context.paid_cents,
                });
                context.paid_cents = 0;
            }
            (5 | 6, Some(OrderEvent::Annotate(Note(note)))) => {
                context.notes.push(note.clone());
                effects.emit(OrderEffect::Noted(note.clone()));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cases.

const ID: &str = "order-1";

fn order(total_cents: u64) -> OrderData {
    OrderData {
        total_cents,
        ..OrderData::default()
    }
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

fn annotate(note: impl Into<String>) -> Command<Order> {
    Command::new(OrderEvent::Annotate(Note(note.into())))
}

async fn created<S: Store>(store: &S, total_cents: u64) -> Snapshot<Order> {
    let created = store
        .create::<Order>(ID, order(total_cents))
        .await
        .expect("create order-1");
    assert!(created.is_new(), "{created:?}");
    created.into_snapshot()
}

/// Create, pay, ship, deliver: each applied once, versions 1..=3.
pub async fn legal_path_applies_each_event_once<S: Store>(store: Arc<S>) {
    let snapshot = created(&*store, 500).await;
    assert_eq!((snapshot.state, snapshot.version), (OrderState::Created, 0));

    let steps = [
        (pay(500), OrderState::Paid),
        (Command::new(OrderEvent::Ship), OrderState::Shipped),
        (Command::new(OrderEvent::Deliver), OrderState::Delivered),
    ];
    for (version, (command, to)) in (1..).zip(steps) {
        let outcome = store.fire(ID, command).await.expect("legal event");
        assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
        assert_eq!(outcome.transition().version, version);
        assert_eq!(outcome.transition().to, to);
    }
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!((loaded.state, loaded.version), (OrderState::Delivered, 3));
    assert_eq!(loaded.context.paid_cents, 500);
}

/// An event with no edge from the current state is `IllegalTransition`, naming all four.
pub async fn illegal_event_names_machine_state_and_event<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let err = store
        .fire(ID, Command::new(OrderEvent::Ship))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IllegalTransition { machine: "Order", id, state, event, repeat: false }
            if id == ID && state == "Created" && event == "Ship"),
        "{err:?}"
    );
    assert!(!err.is_repeat());
    let message = err.to_string();
    for part in ["Order", ID, "Created", "Ship"] {
        assert!(message.contains(part), "{message:?} lacks {part}");
    }
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 0);
}

/// Firing an event whose target is the current state is an illegal repeat.
pub async fn repeated_event_is_an_illegal_repeat<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    store.fire(ID, pay(500)).await.unwrap();
    let err = store.fire(ID, pay(500)).await.unwrap_err();
    assert!(err.is_repeat(), "{err:?}");
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 1);
}

/// When every guard fails the error lists them, and nothing is written.
pub async fn guard_rejection_lists_guards_and_changes_nothing<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let err = store.fire(ID, pay(499).with_key("k")).await.unwrap_err();
    assert!(
        matches!(&err, Error::GuardRejected { state, event, guards, .. }
            if state == "Created" && event == "Pay" && guards == &["amount_matches"]),
        "{err:?}"
    );
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!(
        (loaded.state, loaded.version, loaded.context.paid_cents),
        (OrderState::Created, 0, 0)
    );
    assert!(store.history::<Order>(ID).await.unwrap().is_empty());
    // A rejected command records no key: the corrected request may reuse it.
    let outcome = store.fire(ID, pay(500).with_key("k")).await.unwrap();
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
}

/// The same key and request again returns the first transition; nothing changes.
pub async fn duplicate_key_returns_original_outcome<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let first = store.fire(ID, pay(500).with_key("pay-1")).await.unwrap();
    let Outcome::Applied(original) = first else {
        panic!("first fire: {first:?}")
    };
    let again = store.fire(ID, pay(500).with_key("pay-1")).await.unwrap();
    let Outcome::Duplicate(replayed) = again else {
        panic!("retry: {again:?}")
    };
    assert_eq!(
        (
            replayed.version,
            replayed.from,
            replayed.to,
            replayed.key.as_deref(),
            replayed.at_ms
        ),
        (
            original.version,
            original.from,
            original.to,
            Some("pay-1"),
            original.at_ms
        )
    );
    assert_eq!(replayed.event, original.event);
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!((loaded.version, loaded.context.paid_cents), (1, 500));
    assert_eq!(store.history::<Order>(ID).await.unwrap().len(), 1);
}

/// The same key with another request is `KeyReused`, naming the key and first version.
pub async fn same_key_with_another_payload_is_key_reused<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    store
        .fire(ID, annotate("gift wrap").with_key("note"))
        .await
        .unwrap();
    let err = store
        .fire(ID, annotate("no gift wrap").with_key("note"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::KeyReused { key, version: 1, .. } if key == "note"),
        "{err:?}"
    );
    // Another event kind under the same key is reuse too.
    let err = store.fire(ID, pay(500).with_key("note")).await.unwrap_err();
    assert!(matches!(err, Error::KeyReused { .. }), "{err:?}");
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 1);
}

/// Empty and 256-byte keys are rejected before any write; 255 bytes is fine.
pub async fn keys_outside_1_to_255_bytes_are_invalid<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    for key in [String::new(), "k".repeat(256), "é".repeat(128)] {
        let err = store
            .fire(ID, annotate("x").with_key(key.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidKey { len, .. } if len == key.len()),
            "{err:?}"
        );
    }
    let outcome = store
        .fire(ID, annotate("x").with_key("k".repeat(255)))
        .await
        .unwrap();
    assert_eq!(outcome.transition().key.as_deref().map(str::len), Some(255));
}

/// A `source` + `seq` pair is a key like any other.
pub async fn source_and_sequence_keys_deduplicate<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let first = store
        .fire(ID, annotate("a").from_source("crm", 7))
        .await
        .unwrap();
    let again = store
        .fire(ID, annotate("a").from_source("crm", 7))
        .await
        .unwrap();
    let next = store
        .fire(ID, annotate("a").from_source("crm", 8))
        .await
        .unwrap();
    assert!(!first.is_duplicate() && again.is_duplicate() && !next.is_duplicate());
    assert_eq!(again.transition().version, 1);
    assert_eq!(next.transition().version, 2);
}

/// 64 tasks racing with one key: exactly one `Applied`, 63 `Duplicate` of it.
pub async fn one_key_fired_by_64_tasks_applies_once<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.fire(ID, pay(500).with_key("double-click")).await })
        })
        .collect();
    let mut applied = 0;
    let mut versions = BTreeSet::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("fire");
        applied += usize::from(!outcome.is_duplicate());
        versions.insert(outcome.transition().version);
    }
    assert_eq!(applied, 1);
    assert_eq!(versions, BTreeSet::from([1]));
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!(
        (loaded.state, loaded.version, loaded.context.paid_cents),
        (OrderState::Paid, 1, 500)
    );
}

/// Fires dropped at any moment (a client that hung up, a `timeout`, a `select!`) while
/// three writers keep firing: each applies at most once, the writers never fail, a fire
/// afterwards applies at once, and the history stays gapless.
pub async fn fires_dropped_midway_apply_at_most_once_and_leave_the_store_usable<S: Store>(
    store: Arc<S>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    created(&*store, 500).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut fired = 0u32;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let note = annotate(format!("w{w}-{n}")).with_key(format!("w{w}-{n}"));
                    match store.fire(ID, note).await {
                        Ok(_) => fired += 1,
                        // Optimistic mode may give up on a row this hot, as documented.
                        Err(Error::Conflict { .. }) => {}
                        Err(err) => panic!("a writer beside dropped fires: {err}"),
                    }
                    n += 1;
                }
                fired
            })
        })
        .collect();
    let mut dropped = 0;
    for n in 0..200u64 {
        // Spread over the first 3 ms: before the read, inside the transaction, at commit.
        let after = Duration::from_micros(n * 7_919 % 3_000);
        let fire = store.fire(ID, annotate(format!("c{n}")).with_key(format!("c{n}")));
        dropped += usize::from(tokio::time::timeout(after, fire).await.is_err());
    }
    stop.store(true, Ordering::Relaxed);
    let mut steady = 0;
    for writer in writers {
        steady += writer.await.expect("writer");
    }
    let mut after = Err(Error::Conflict {
        machine: "Order",
        id: ID.into(),
        version: 0,
        attempts: 0,
    });
    for _ in 0..20 {
        after = store.fire(ID, annotate("after").with_key("after")).await;
        if !matches!(after, Err(Error::Conflict { .. })) {
            break;
        }
    }
    let after = after.expect("a fire after the dropped ones");
    let history = store.history::<Order>(ID).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|t| t.version).collect();
    assert_eq!(versions, (1..=history.len() as u64).collect::<Vec<_>>());
    assert!(after.transition().version <= history.len() as u64);
    let keys: BTreeSet<&str> = history.iter().filter_map(|t| t.key.as_deref()).collect();
    assert_eq!(keys.len(), history.len(), "a key applied twice");
    let writers = keys.iter().filter(|k| k.starts_with('w')).count();
    assert_eq!(writers, steady as usize, "a writer's fire lost or doubled");
    assert!(keys.contains("after"));
    // A store whose fire never waits (MemoryStore) finishes each before its timeout.
    eprintln!("{dropped} of 200 fires dropped midway");
}

/// 32 tasks with distinct keys: all applied, versions exactly 1..=32.
pub async fn distinct_keys_from_32_tasks_give_gapless_versions<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .fire(ID, annotate(format!("note {i}")).with_key(format!("k{i}")))
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("fire");
        assert!(!outcome.is_duplicate());
        versions.push(outcome.transition().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<_>>());
    let history = store.history::<Order>(ID).await.unwrap();
    assert_eq!(
        history.iter().map(|t| t.version).collect::<Vec<_>>(),
        versions
    );
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!((loaded.version, loaded.context.notes.len()), (32, 32));
}

/// `create` again with the same context returns the instance; another is `AlreadyExists`.
pub async fn create_is_idempotent_on_the_business_id<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    store.fire(ID, pay(500)).await.unwrap();
    let again = store.create::<Order>(ID, order(500)).await.unwrap();
    assert!(!again.is_new(), "{again:?}");
    let again = again.snapshot();
    assert_eq!((again.state, again.version), (OrderState::Paid, 1));
    let err = store.create::<Order>(ID, order(700)).await.unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { id, state, version: 1, .. } if id == ID && state == "Paid"),
        "{err:?}"
    );
}

/// 16 tasks create the same instance at once: exactly one is told it created it, the
/// others get the existing instance.
pub async fn simultaneous_first_creates_report_one_new<S: Store>(store: Arc<S>) {
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create::<Order>(ID, order(500)).await })
        })
        .collect();
    let mut new = 0;
    for racer in racers {
        let created = racer.await.expect("task").expect("created or existing");
        assert_eq!(created.snapshot().version, 0);
        new += usize::from(created.is_new());
    }
    assert_eq!(new, 1);
}

/// Empty and over-long ids are `InvalidId` everywhere.
pub async fn ids_outside_1_to_255_bytes_are_invalid<S: Store>(store: Arc<S>) {
    for id in [String::new(), "i".repeat(256)] {
        let err = store.create::<Order>(&id, order(1)).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidId { len, .. } if len == id.len()),
            "{err:?}"
        );
        let err = store.fire(&id, pay(1)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
        let err = store.load::<Order>(&id).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "load: {err:?}");
        let err = store.history::<Order>(&id).await.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "history: {err:?}");
    }
    store
        .create::<Order>(&"i".repeat(255), order(1))
        .await
        .unwrap();
}

/// Reading or firing an id that was never created is `NotFound`.
pub async fn unknown_instance_is_not_found<S: Store>(store: Arc<S>) {
    let err = store.load::<Order>("nope").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { machine: "Order", id } if id == "nope"),
        "{err:?}"
    );
    let err = store.fire("nope", pay(1)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = store.fire("nope", pay(1).with_key("k")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = store.history::<Order>("nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// History lists transitions 1..=n with their events, keys and states chained.
pub async fn history_is_in_version_order<S: Store>(store: Arc<S>) {
    created(&*store, 500).await;
    store.fire(ID, annotate("a").with_key("a")).await.unwrap();
    store.fire(ID, pay(500).with_key("p")).await.unwrap();
    store.fire(ID, annotate("b")).await.unwrap();
    store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    let history = store.history::<Order>(ID).await.unwrap();
    let rows: Vec<_> = history
        .iter()
        .map(|t| {
            (
                t.version,
                t.from,
                t.to,
                t.key.as_deref(),
                t.event.event().map(Order::event_name),
            )
        })
        .collect();
    use OrderState::*;
    assert_eq!(
        rows,
        [
            (1, Created, Created, Some("a"), Some("Annotate")),
            (2, Created, Paid, Some("p"), Some("Pay")),
            (3, Paid, Paid, None, Some("Annotate")),
            (4, Paid, Cancelled, None, Some("Cancel")),
        ]
    );
    assert!(history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
}

/// `fire_with` from the current snapshot applies and advances it, context included.
pub async fn fire_with_a_current_snapshot_advances_it<S: Store>(store: Arc<S>) {
    let mut snapshot = created(&*store, 500).await;
    let outcome = store
        .fire_with(&mut snapshot, pay(500).with_key("p"))
        .await
        .unwrap();
    assert!(!outcome.is_duplicate());
    assert_eq!(
        (
            snapshot.state,
            snapshot.version,
            snapshot.context.paid_cents
        ),
        (OrderState::Paid, 1, 500)
    );
    let outcome = store
        .fire_with(&mut snapshot, Command::new(OrderEvent::Ship))
        .await
        .unwrap();
    assert_eq!(outcome.transition().version, 2);
    let loaded = store.load::<Order>(ID).await.unwrap();
    assert_eq!(
        (loaded.state, loaded.version),
        (snapshot.state, snapshot.version)
    );
    // A duplicate refreshes the snapshot without changing anything.
    let outcome = store
        .fire_with(&mut snapshot, pay(500).with_key("p"))
        .await
        .unwrap();
    assert!(outcome.is_duplicate());
    assert_eq!(snapshot.version, 2);
}

/// `fire_with` from an old snapshot loses the compare-and-set, re-reads, and decides from
/// the stored version: a racing change is never overwritten.
pub async fn fire_with_a_stale_snapshot_decides_from_the_stored_version<S: Store>(store: Arc<S>) {
    let mut stale = created(&*store, 500).await;
    store.fire(ID, annotate("first")).await.unwrap();
    store.fire(ID, annotate("second")).await.unwrap();
    let outcome = store
        .fire_with(&mut stale, annotate("third"))
        .await
        .unwrap();
    assert_eq!(outcome.transition().version, 3);
    assert_eq!(stale.version, 3);
    assert_eq!(stale.context.notes, ["first", "second", "third"]);
    // A stale snapshot cannot bring back a transition the current state forbids.
    let mut stale = store.load::<Order>(ID).await.unwrap();
    store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    let err = store.fire_with(&mut stale, pay(500)).await.unwrap_err();
    assert!(
        matches!(&err, Error::IllegalTransition { state, .. } if state == "Cancelled"),
        "{err:?}"
    );
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 4);
}

/// Ids and keys that differ only in trailing spaces or case are distinct on every store
/// (a case-insensitive or PAD SPACE collation would merge them).
pub async fn ids_and_keys_compare_byte_for_byte<S: Store>(store: Arc<S>) {
    store.create::<Order>("o", order(500)).await.unwrap();
    for id in ["o ", "O"] {
        let other = store.create::<Order>(id, order(700)).await.unwrap();
        assert!(other.is_new(), "{id:?} is not \"o\"");
        assert_eq!(other.snapshot().context.total_cents, 700);
    }
    for key in ["k", "k ", "K"] {
        let outcome = store.fire("o", annotate(key).with_key(key)).await.unwrap();
        assert!(!outcome.is_duplicate(), "{key:?}: {outcome:?}");
        assert_eq!(outcome.transition().key.as_deref(), Some(key));
    }
    let again = store
        .fire("o", annotate("k ").with_key("k "))
        .await
        .unwrap();
    assert!(again.is_duplicate());
    assert_eq!(again.transition().key.as_deref(), Some("k "));
    assert_eq!(store.history::<Order>("o").await.unwrap().len(), 3);
    assert!(store.history::<Order>("o ").await.unwrap().is_empty());
}

/// A snapshot whose state was changed by the caller is not a decision: `fire_with`
/// decides from the stored state (`Created`, where `Deliver` is illegal) and writes
/// nothing; the snapshot comes back as stored.
pub async fn a_snapshot_with_a_forged_state_decides_nothing<S: Store>(store: Arc<S>) {
    let mut snapshot = created(&*store, 500).await;
    snapshot.state = OrderState::Shipped;
    let err = store
        .fire_with(&mut snapshot, Command::new(OrderEvent::Deliver))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IllegalTransition { state, event, .. } if state == "Created" && event == "Deliver"),
        "{err:?}"
    );
    let stored = store.load::<Order>(ID).await.unwrap();
    assert_eq!((stored.state, stored.version), (OrderState::Created, 0));
    assert!(store.history::<Order>(ID).await.unwrap().is_empty());
}

/// A snapshot whose context was changed by the caller does not get a payment of 1 cent
/// past the `amount_matches` guard of a 500-cent order.
pub async fn a_snapshot_with_a_forged_context_passes_no_guard<S: Store>(store: Arc<S>) {
    let mut snapshot = created(&*store, 500).await;
    snapshot.context.total_cents = 1;
    let err = store.fire_with(&mut snapshot, pay(1)).await.unwrap_err();
    assert!(matches!(err, Error::GuardRejected { .. }), "{err:?}");
    let stored = store.load::<Order>(ID).await.unwrap();
    assert_eq!((stored.version, stored.context.total_cents), (0, 500));
    // The genuine snapshot still saves the read.
    let mut genuine = store.load::<Order>(ID).await.unwrap();
    store.fire_with(&mut genuine, pay(500)).await.unwrap();
    assert_eq!((genuine.state, genuine.version), (OrderState::Paid, 1));
}

/// A snapshot that went through serde (a cache, a queue) and came back claiming another
/// state is read afresh before anything is decided.
pub async fn a_deserialized_snapshot_is_read_afresh<S: Store>(store: Arc<S>) {
    let snapshot = created(&*store, 500).await;
    let json = serde_json::to_string(&snapshot)
        .unwrap()
        .replace("\"Created\"", "\"Paid\"");
    let mut forged: Snapshot<Order> = serde_json::from_str(&json).unwrap();
    assert_eq!(forged.state, OrderState::Paid);
    let err = store
        .fire_with(&mut forged, Command::new(OrderEvent::Ship))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IllegalTransition { .. }), "{err:?}");
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 0);
}

/// A NUL byte cannot be stored in every database's text type, so an id or key holding
/// one is `InvalidId` / `InvalidKey` on every store, before any I/O (a retry cannot fix
/// it: the error is not transient). Client keys hold no control character at all (the
/// stored forms of source and token keys start with one).
pub async fn nul_bytes_in_ids_and_keys_are_invalid_before_any_io<S: Store>(store: Arc<S>) {
    let err = store.create::<Order>("o\0", order(1)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
    assert!(!err.is_transient());
    for result in [
        store.load::<Order>("o\0").await.map(|_| ()),
        store.history::<Order>("o\0").await.map(|_| ()),
        store.fire("o\0", pay(1)).await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
    }
    created(&*store, 500).await;
    for command in [
        pay(500).with_key("k\0"),
        pay(500).with_key("k\u{1f}"),
        pay(500).with_key("\u{1f}source:billing#7"),
        pay(500).with_key("line\nbreak"),
        pay(500).from_source("billing\0", 7),
        pay(500).with_token("\0"),
    ] {
        let err = store.fire(ID, command).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
        assert!(!err.is_transient());
    }
    assert_eq!(store.load::<Order>(ID).await.unwrap().version, 0);
}

fn reading(value: f64) -> Command<Meter> {
    Command::new(MeterEvent::Record(Sample {
        value,
        detail: None,
    }))
}

/// serde_json writes NaN and infinities as `null`, which would not read back (and would
/// fingerprint like `None`): a context or event holding one is refused before any
/// write, on every store, and the key of a refused command stays free.
pub async fn non_finite_floats_are_refused_before_any_write<S: Store>(store: Arc<S>) {
    let nan = MeterData {
        last_inverse: Some(f64::NAN),
        ..MeterData::default()
    };
    let err = store.create::<Meter>("m-1", nan).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                what: "context",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");
    let err = store.load::<Meter>("m-1").await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }),
        "nothing stored: {err:?}"
    );
    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = store
            .fire("m-1", reading(value).with_key("k"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Serialization { what: "event", .. }),
            "{err:?}"
        );
    }
    let outcome = store.fire("m-1", reading(2.0).with_key("k")).await.unwrap();
    assert!(
        !outcome.is_duplicate(),
        "the refused commands took no key: {outcome:?}"
    );
    let stored = store.load::<Meter>("m-1").await.unwrap();
    assert_eq!(
        (stored.version, stored.context.last_inverse),
        (1, Some(0.5))
    );
}

/// A context or payload nested deeper than JSON readers accept would be written and then
/// never read again: it is refused at write; one that reads back is accepted.
pub async fn values_nested_past_what_json_reads_back_are_refused<S: Store>(store: Arc<S>) {
    let deep = MeterData {
        detail: Some(nested(200)),
        ..MeterData::default()
    };
    let err = store.create::<Meter>("m-1", deep).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                what: "context",
                ..
            }
        ),
        "{err:?}"
    );
    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    let deep = Command::new(MeterEvent::Record(Sample {
        value: 1.0,
        detail: Some(nested(200)),
    }));
    let err = store.fire("m-1", deep.with_key("k")).await.unwrap_err();
    assert!(
        matches!(err, Error::Serialization { what: "event", .. }),
        "{err:?}"
    );
    let fine = Command::new(MeterEvent::Record(Sample {
        value: 1.0,
        detail: Some(nested(100)),
    }));
    store.fire("m-1", fine.clone().with_key("k")).await.unwrap();
    assert!(
        store
            .fire("m-1", fine.with_key("k"))
            .await
            .unwrap()
            .is_duplicate()
    );
    assert_eq!(
        store.load::<Meter>("m-1").await.unwrap().context.detail,
        Some(nested(100))
    );
    assert_eq!(store.history::<Meter>("m-1").await.unwrap().len(), 1);
}

/// An action that leaves the context unstorable (`1 / 0` is infinite) is an error and
/// changes nothing, on every store.
pub async fn an_action_result_that_cannot_be_stored_changes_nothing<S: Store>(store: Arc<S>) {
    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    let err = store.fire("m-1", reading(0.0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Serialization {
                what: "context",
                ..
            }
        ),
        "{err:?}"
    );
    let stored = store.load::<Meter>("m-1").await.unwrap();
    assert_eq!((stored.version, stored.context.samples), (0, 0));
    assert!(store.history::<Meter>("m-1").await.unwrap().is_empty());
}

/// An action that panics after changing the context leaves the instance as it was.
pub async fn an_action_that_panics_changes_nothing<S: Store>(store: Arc<S>) {
    store
        .create::<Meter>("m-1", MeterData::default())
        .await
        .unwrap();
    let racer = Arc::clone(&store);
    let fired = tokio::spawn(async move { racer.fire("m-1", reading(-1.0)).await }).await;
    assert!(fired.is_err_and(|e| e.is_panic()), "the action panicked");
    let stored = store.load::<Meter>("m-1").await.unwrap();
    assert_eq!((stored.version, stored.context.samples), (0, 0));
    store.fire("m-1", reading(4.0)).await.unwrap();
    let stored = store.load::<Meter>("m-1").await.unwrap();
    assert_eq!((stored.version, stored.context.samples), (1, 1));
}
