//! In-memory cost of a transition. Results and method: BENCHMARKS.md.
//!
//! * `step`: one order lifecycle (Created -> Paid -> Shipped -> Delivered: three steps,
//!   the first guarded by `amount_matches` with the action `record_payment` reading the
//!   payment) per iteration, declared with `fsm::state_machine!` and run with
//!   `fsm::step`, with `smlang::statemachine!` and with `rust_fsm::state_machine!`.
//!   Every iteration starts from a fresh machine; the initial state, total and payment go
//!   through `black_box`. `step/opaque/*` also passes state and context through
//!   `black_box` between steps, so no compiler can fold the three steps into one test.
//! * `memory_store`: `MemoryStore::fire` (no key; a fresh key per iteration) against what
//!   a hand-rolled service does: a `Mutex<HashMap<..>>` + `fsm::step` + version bump (and,
//!   keyed, a `HashSet` of the keys seen). Both sides are async fns polled once with a
//!   no-op waker (nothing in them waits); `memory_store/tokio/*` drives the keyed pair
//!   through a current-thread tokio runtime's `block_on` instead. Stores and key sets are
//!   recreated every 100k fires, outside the timed region, to bound memory.
//! * With `FSM_BENCH_PROFILE=1`: `profile/*` and `parts/*`, the measurements behind the
//!   profiling notes in BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench step -- --warm-up-time 1 --measurement-time 3
//! FSM_BENCH_PROFILE=1 cargo bench --bench step -- --warm-up-time 1 --measurement-time 3 'profile|parts'
//! ```
#![allow(missing_docs, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

use fsm::{Command, Effects, MemoryStore, Store};

// ---------------------------------------------------------------------------------------
// Shared payloads and context
// ---------------------------------------------------------------------------------------

/// A card payment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub amount_cents: u64,
}

/// A free-form annotation (the self-loop used to fire a machine indefinitely).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Note(pub u64);

/// What the order knows: total and paid, in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderData {
    pub total_cents: u64,
    pub paid_cents: u64,
    pub notes: u64,
}

const TOTAL: u64 = 4_200;

fn fresh_data() -> OrderData {
    OrderData {
        total_cents: TOTAL,
        paid_cents: 0,
        notes: 0,
    }
}

// ---------------------------------------------------------------------------------------
// fsm
// ---------------------------------------------------------------------------------------

fsm::state_machine! {
    /// The order lifecycle, with a self-loop for the store benchmarks.
    pub machine Order {
        context: OrderData,

        *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
        Created + Annotate(Note) / annotate => Created,
        Paid + Ship => Shipped,
        Shipped + Deliver => Delivered,
    }
}

impl OrderRules for OrderData {
    fn amount_matches(&self, payment: &Payment) -> bool {
        payment.amount_cents == self.total_cents
    }

    fn record_payment(&mut self, payment: &Payment, _effects: &mut Effects<()>) {
        self.paid_cents += payment.amount_cents;
    }

    fn annotate(&mut self, _note: &Note, _effects: &mut Effects<()>) {
        self.notes += 1;
    }
}

// Each lifecycle function takes the initial state and the order's total and payment as
// scalars (the caller passes them through `black_box`) and builds the context inside, so
// no implementation pays for reading a struct the caller just spilled to the stack.
// They are `#[inline(never)]` so each is compiled alone, the same way for all three.

#[inline(never)]
fn fsm_lifecycle(state: OrderState, total: u64, amount: u64) -> (OrderState, OrderData) {
    let mut data = OrderData {
        total_cents: total,
        paid_cents: 0,
        notes: 0,
    };
    let pay = OrderEvent::Pay(Payment {
        amount_cents: amount,
    });
    let s = fsm::step::<Order>(state, &mut data, &pay).unwrap().to;
    let s = fsm::step::<Order>(s, &mut data, &OrderEvent::Ship)
        .unwrap()
        .to;
    let s = fsm::step::<Order>(s, &mut data, &OrderEvent::Deliver)
        .unwrap()
        .to;
    (s, data)
}

/// The same lifecycle with state and context forced through `black_box` between steps,
/// so the compiler cannot fold the three steps into one comparison: each step dispatches
/// on a state it does not know, as a service loading an instance does.
#[inline(never)]
fn fsm_lifecycle_opaque(state: OrderState, total: u64, amount: u64) -> (OrderState, OrderData) {
    let mut data = OrderData {
        total_cents: total,
        paid_cents: 0,
        notes: 0,
    };
    let pay = OrderEvent::Pay(Payment {
        amount_cents: amount,
    });
    let s = fsm::step::<Order>(state, &mut data, &pay).unwrap().to;
    let (s, mut data) = black_box((s, data));
    let s = fsm::step::<Order>(s, &mut data, &OrderEvent::Ship)
        .unwrap()
        .to;
    let (s, mut data) = black_box((s, data));
    let s = fsm::step::<Order>(s, &mut data, &OrderEvent::Deliver)
        .unwrap()
        .to;
    (s, data)
}

// ---------------------------------------------------------------------------------------
// smlang 0.8
// ---------------------------------------------------------------------------------------

mod sml {
    use super::{Note, OrderData, Payment};
    use std::hint::black_box;

    smlang::statemachine! {
        derive_states: [Debug, Clone, Copy],
        derive_events: [Debug, Clone, Copy],
        transitions: {
            *Created + Pay(Payment) [amount_matches] / record_payment = Paid,
            Created + Annotate(Note) / annotate = Created,
            Paid + Ship = Shipped,
            Shipped + Deliver = Delivered,
        }
    }

    impl StateMachineContext for OrderData {
        fn amount_matches(&self, payment: &Payment) -> Result<bool, ()> {
            Ok(payment.amount_cents == self.total_cents)
        }

        fn record_payment(&mut self, payment: Payment) -> Result<(), ()> {
            self.paid_cents += payment.amount_cents;
            Ok(())
        }

        fn annotate(&mut self, _note: Note) -> Result<(), ()> {
            self.notes += 1;
            Ok(())
        }
    }

    #[inline(never)]
    pub fn lifecycle(state: States, total: u64, amount: u64) -> (States, OrderData) {
        let data = OrderData {
            total_cents: total,
            paid_cents: 0,
            notes: 0,
        };
        let mut sm = StateMachine::new_with_state(data, state);
        sm.process_event(Events::Pay(Payment {
            amount_cents: amount,
        }))
        .unwrap();
        sm.process_event(Events::Ship).unwrap();
        let s = *sm.process_event(Events::Deliver).unwrap();
        (s, *sm.context())
    }

    #[inline(never)]
    pub fn lifecycle_opaque(state: States, total: u64, amount: u64) -> (States, OrderData) {
        let data = OrderData {
            total_cents: total,
            paid_cents: 0,
            notes: 0,
        };
        let mut sm = StateMachine::new_with_state(data, state);
        sm.process_event(Events::Pay(Payment {
            amount_cents: amount,
        }))
        .unwrap();
        let (s, data) = black_box((*sm.state(), *sm.context()));
        let mut sm = StateMachine::new_with_state(data, s);
        sm.process_event(Events::Ship).unwrap();
        let (s, data) = black_box((*sm.state(), *sm.context()));
        let mut sm = StateMachine::new_with_state(data, s);
        let s = *sm.process_event(Events::Deliver).unwrap();
        (s, *sm.context())
    }
}

// ---------------------------------------------------------------------------------------
// rust-fsm 0.8: inputs carry no data, so the guard `amount_matches` is an `if` before
// `consume` and the action `record_payment` runs after it, by hand.
// ---------------------------------------------------------------------------------------

#[allow(dead_code)] // `Annotate` keeps the graph identical to the other two; unused here
mod rfsm {
    use super::OrderData;
    use std::hint::black_box;

    rust_fsm::state_machine! {
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub order(Created)

        Created => {
            Pay => Paid,
            Annotate => Created,
        },
        Paid(Ship) => Shipped,
        Shipped(Deliver) => Delivered,
    }

    #[inline(never)]
    pub fn lifecycle(state: order::State, total: u64, amount: u64) -> (order::State, OrderData) {
        let mut data = OrderData {
            total_cents: total,
            paid_cents: 0,
            notes: 0,
        };
        let mut sm = order::StateMachine::from_state(state);
        assert!(amount == data.total_cents, "guard amount_matches rejected"); // guard
        sm.consume(&order::Input::Pay).unwrap();
        data.paid_cents += amount; // action
        sm.consume(&order::Input::Ship).unwrap();
        sm.consume(&order::Input::Deliver).unwrap();
        (*sm.state(), data)
    }

    #[inline(never)]
    pub fn lifecycle_opaque(
        state: order::State,
        total: u64,
        amount: u64,
    ) -> (order::State, OrderData) {
        let mut data = OrderData {
            total_cents: total,
            paid_cents: 0,
            notes: 0,
        };
        let mut sm = order::StateMachine::from_state(state);
        assert!(amount == data.total_cents, "guard amount_matches rejected"); // guard
        sm.consume(&order::Input::Pay).unwrap();
        data.paid_cents += amount; // action
        let (s, data) = black_box((*sm.state(), data));
        let mut sm = order::StateMachine::from_state(s);
        sm.consume(&order::Input::Ship).unwrap();
        let (s, data) = black_box((*sm.state(), data));
        let mut sm = order::StateMachine::from_state(s);
        sm.consume(&order::Input::Deliver).unwrap();
        (*sm.state(), data)
    }
}

fn bench_step(c: &mut Criterion) {
    // Every implementation ends in Delivered with the payment recorded, and refuses a
    // wrong amount.
    let done = OrderData {
        total_cents: TOTAL,
        paid_cents: TOTAL,
        notes: 0,
    };
    assert_eq!(
        fsm_lifecycle(OrderState::Created, TOTAL, TOTAL),
        (OrderState::Delivered, done)
    );
    assert_eq!(
        fsm_lifecycle_opaque(OrderState::Created, TOTAL, TOTAL),
        (OrderState::Delivered, done)
    );
    assert!(
        matches!(sml::lifecycle(sml::States::Created, TOTAL, TOTAL), (sml::States::Delivered, d) if d == done)
    );
    assert!(
        matches!(sml::lifecycle_opaque(sml::States::Created, TOTAL, TOTAL), (sml::States::Delivered, d) if d == done)
    );
    let delivered = (rfsm::order::State::Delivered, done);
    assert_eq!(
        rfsm::lifecycle(rfsm::order::State::Created, TOTAL, TOTAL),
        delivered
    );
    assert_eq!(
        rfsm::lifecycle_opaque(rfsm::order::State::Created, TOTAL, TOTAL),
        delivered
    );
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    assert!(std::panic::catch_unwind(|| fsm_lifecycle(OrderState::Created, TOTAL, 1)).is_err());
    assert!(std::panic::catch_unwind(|| sml::lifecycle(sml::States::Created, TOTAL, 1)).is_err());
    assert!(
        std::panic::catch_unwind(|| rfsm::lifecycle(rfsm::order::State::Created, TOTAL, 1))
            .is_err()
    );
    std::panic::set_hook(hook);

    let mut group = c.benchmark_group("step");
    macro_rules! lifecycle {
        ($name:literal, $f:path, $initial:expr) => {
            group.bench_function($name, |b| {
                b.iter(|| black_box($f(black_box($initial), black_box(TOTAL), black_box(TOTAL))))
            });
        };
    }
    lifecycle!("fsm", fsm_lifecycle, OrderState::Created);
    lifecycle!("smlang", sml::lifecycle, sml::States::Created);
    lifecycle!("rust_fsm", rfsm::lifecycle, rfsm::order::State::Created);
    lifecycle!("opaque/fsm", fsm_lifecycle_opaque, OrderState::Created);
    lifecycle!("opaque/smlang", sml::lifecycle_opaque, sml::States::Created);
    lifecycle!(
        "opaque/rust_fsm",
        rfsm::lifecycle_opaque,
        rfsm::order::State::Created
    );
    group.finish();
}

// ---------------------------------------------------------------------------------------
// MemoryStore::fire vs a hand-rolled Mutex<HashMap> + step
// ---------------------------------------------------------------------------------------

/// Stores (and key sets) are recreated after this many fires, outside the timed region,
/// so history and key maps stay bounded.
const CHUNK: u64 = 100_000;
const ID: &str = "order-1";

type Rows = HashMap<String, (OrderState, OrderData, u64)>;

/// The hand-rolled service: one lock, look up the row, step, bump the version.
#[derive(Default)]
struct Baseline {
    rows: Mutex<Rows>,
}

/// The same, remembering every key seen (a repeat is answered without stepping).
#[derive(Default)]
struct KeyedBaseline {
    inner: Mutex<(Rows, HashSet<String>)>,
}

impl Baseline {
    fn new() -> Self {
        let b = Baseline::default();
        b.rows
            .lock()
            .unwrap()
            .insert(ID.to_owned(), (OrderState::Created, fresh_data(), 0));
        b
    }

    async fn fire(&self, id: &str, event: OrderEvent) -> Result<(OrderState, u64), fsm::Rejection> {
        let mut rows = self.rows.lock().unwrap();
        let (state, data, version) = rows.get_mut(id).expect("row exists");
        let taken = fsm::step::<Order>(*state, data, &event)?;
        *state = taken.to;
        *version += 1;
        Ok((*state, *version))
    }
}

impl KeyedBaseline {
    fn new() -> Self {
        let b = KeyedBaseline::default();
        b.inner
            .lock()
            .unwrap()
            .0
            .insert(ID.to_owned(), (OrderState::Created, fresh_data(), 0));
        b
    }

    async fn fire(
        &self,
        id: &str,
        event: OrderEvent,
        key: String,
    ) -> Result<(OrderState, u64), fsm::Rejection> {
        let mut guard = self.inner.lock().unwrap();
        let (rows, keys) = &mut *guard;
        let (state, data, version) = rows.get_mut(id).expect("row exists");
        if keys.contains(&key) {
            return Ok((*state, *version));
        }
        let taken = fsm::step::<Order>(*state, data, &event)?;
        *state = taken.to;
        *version += 1;
        keys.insert(key);
        Ok((*state, *version))
    }
}

fn new_store(rt: &tokio::runtime::Runtime) -> MemoryStore {
    let store = MemoryStore::new();
    rt.block_on(store.create::<Order>(ID, fresh_data()))
        .unwrap();
    store
}

/// Runs `iters` iterations in chunks of at most [`CHUNK`], building fresh state with
/// `setup` (untimed) before each chunk and dropping it (untimed) after.
fn chunked<S>(iters: u64, mut setup: impl FnMut() -> S, mut run: impl FnMut(&S, u64)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(CHUNK);
        let state = setup();
        let start = Instant::now();
        for i in 0..n {
            run(&state, i);
        }
        total += start.elapsed();
        drop(state);
        done += n;
    }
    total
}

async fn ready() -> u64 {
    black_box(1)
}

/// Polls a future once with a no-op waker. `MemoryStore::fire` and the baselines never
/// wait (no `.await` on anything pending), so one poll completes them; this measures the
/// work without an executor's per-call overhead (see `tokio_block_on_ready`).
fn poll_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut TaskContext::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory fire never waits"),
    }
}

fn bench_memory_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // Sanity: every variant applies, under both drivers.
    {
        let store = new_store(&rt);
        let o = poll_ready(store.fire(
            ID,
            Command::new(OrderEvent::Annotate(Note(1))).with_key("k1"),
        ))
        .unwrap();
        assert_eq!(o.transition().version, 1);
        let o = rt
            .block_on(store.fire(
                ID,
                Command::new(OrderEvent::Annotate(Note(1))).with_key("k1"),
            ))
            .unwrap();
        assert!(o.is_duplicate());
        let b = Baseline::new();
        assert_eq!(
            poll_ready(b.fire(ID, OrderEvent::Annotate(Note(1))))
                .unwrap()
                .1,
            1
        );
        let k = KeyedBaseline::new();
        assert_eq!(
            poll_ready(k.fire(ID, OrderEvent::Annotate(Note(1)), "k1".into()))
                .unwrap()
                .1,
            1
        );
    }

    let mut group = c.benchmark_group("memory_store");
    // What the two drivers cost on their own.
    group.bench_function("poll_ready_noop", |b| {
        b.iter(|| black_box(poll_ready(ready())))
    });
    group.bench_function("tokio_block_on_ready", |b| {
        b.iter(|| black_box(rt.block_on(ready())))
    });

    group.bench_function("baseline_mutex_step", |b| {
        b.iter_custom(|iters| {
            chunked(iters, Baseline::new, |s, i| {
                black_box(
                    poll_ready(s.fire(black_box(ID), OrderEvent::Annotate(Note(i)))).unwrap(),
                );
            })
        })
    });
    group.bench_function("baseline_mutex_step_keyed", |b| {
        b.iter_custom(|iters| {
            chunked(iters, KeyedBaseline::new, |s, i| {
                let key = format!("k{i}");
                black_box(
                    poll_ready(s.fire(black_box(ID), OrderEvent::Annotate(Note(i)), key)).unwrap(),
                );
            })
        })
    });
    group.bench_function("fire_no_key", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                || new_store(&rt),
                |s, i| {
                    let cmd = Command::new(OrderEvent::Annotate(Note(i)));
                    black_box(poll_ready(s.fire::<Order>(black_box(ID), cmd)).unwrap());
                },
            )
        })
    });
    group.bench_function("fire_keyed", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                || new_store(&rt),
                |s, i| {
                    let cmd = Command::new(OrderEvent::Annotate(Note(i))).with_key(format!("k{i}"));
                    black_box(poll_ready(s.fire::<Order>(black_box(ID), cmd)).unwrap());
                },
            )
        })
    });

    // The same keyed pair driven by `Runtime::block_on`, as a service's handler would be.
    group.bench_function("tokio/baseline_mutex_step_keyed", |b| {
        b.iter_custom(|iters| {
            chunked(iters, KeyedBaseline::new, |s, i| {
                let key = format!("k{i}");
                black_box(
                    rt.block_on(s.fire(black_box(ID), OrderEvent::Annotate(Note(i)), key))
                        .unwrap(),
                );
            })
        })
    });
    group.bench_function("tokio/fire_keyed", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                || new_store(&rt),
                |s, i| {
                    let cmd = Command::new(OrderEvent::Annotate(Note(i))).with_key(format!("k{i}"));
                    black_box(rt.block_on(s.fire::<Order>(black_box(ID), cmd)).unwrap());
                },
            )
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Profiling aids, run only with FSM_BENCH_PROFILE=1 (see BENCHMARKS.md):
// * `profile/step_inline_copy`: the lifecycles above through a verbatim copy of
//   `fsm_core::machine::step` marked `#[inline]`, to price the missing inlining. Delete
//   once fsm-core's `step` carries `#[inline]`.
// * `parts/*`: the pieces of a keyed `MemoryStore::fire`, priced one by one.
// ---------------------------------------------------------------------------------------

#[inline]
fn step_inline_copy<M: fsm::StateMachine>(
    state: M::State,
    context: &mut M::Context,
    event: &M::Event,
) -> Result<fsm::Step<M>, fsm::Rejection> {
    let candidates = M::edges(state, event);
    for &edge in candidates {
        if M::guard(edge, context, Some(event)) {
            let mut effects = Effects::new();
            M::act(edge, context, Some(event), &mut effects);
            return Ok(fsm::Step {
                edge,
                from: state,
                to: M::target(edge),
                effects,
            });
        }
    }
    Err(rejection_copy::<M>(state, M::event_name(event), candidates))
}

#[cold]
fn rejection_copy<M: fsm::StateMachine>(
    state: M::State,
    event: &'static str,
    candidates: &[fsm::EdgeIndex],
) -> fsm::Rejection {
    let definition = M::DEFINITION;
    if candidates.is_empty() {
        fsm::Rejection::Illegal {
            repeat: definition.is_target_of(M::state_name(state), event),
        }
    } else {
        fsm::Rejection::GuardRejected {
            guards: candidates
                .iter()
                .filter_map(|&e| definition.edges[usize::from(e)].guard)
                .collect(),
        }
    }
}

#[inline(never)]
fn inline_copy_lifecycle(state: OrderState, total: u64, amount: u64) -> (OrderState, OrderData) {
    let mut data = OrderData {
        total_cents: total,
        paid_cents: 0,
        notes: 0,
    };
    let pay = OrderEvent::Pay(Payment {
        amount_cents: amount,
    });
    let s = step_inline_copy::<Order>(state, &mut data, &pay)
        .unwrap()
        .to;
    let s = step_inline_copy::<Order>(s, &mut data, &OrderEvent::Ship)
        .unwrap()
        .to;
    let s = step_inline_copy::<Order>(s, &mut data, &OrderEvent::Deliver)
        .unwrap()
        .to;
    (s, data)
}

#[inline(never)]
fn inline_copy_lifecycle_opaque(
    state: OrderState,
    total: u64,
    amount: u64,
) -> (OrderState, OrderData) {
    let mut data = OrderData {
        total_cents: total,
        paid_cents: 0,
        notes: 0,
    };
    let pay = OrderEvent::Pay(Payment {
        amount_cents: amount,
    });
    let s = step_inline_copy::<Order>(state, &mut data, &pay)
        .unwrap()
        .to;
    let (s, mut data) = black_box((s, data));
    let s = step_inline_copy::<Order>(s, &mut data, &OrderEvent::Ship)
        .unwrap()
        .to;
    let (s, mut data) = black_box((s, data));
    let s = step_inline_copy::<Order>(s, &mut data, &OrderEvent::Deliver)
        .unwrap()
        .to;
    (s, data)
}

fn bench_profile(c: &mut Criterion) {
    if std::env::var_os("FSM_BENCH_PROFILE").is_none() {
        return;
    }
    let expected = fsm_lifecycle(OrderState::Created, TOTAL, TOTAL);
    assert_eq!(
        inline_copy_lifecycle(OrderState::Created, TOTAL, TOTAL),
        expected
    );
    assert_eq!(
        inline_copy_lifecycle_opaque(OrderState::Created, TOTAL, TOTAL),
        expected
    );

    let mut group = c.benchmark_group("profile");
    group.bench_function("step_inline_copy", |b| {
        b.iter(|| {
            black_box(inline_copy_lifecycle(
                black_box(OrderState::Created),
                black_box(TOTAL),
                black_box(TOTAL),
            ))
        })
    });
    group.bench_function("opaque/step_inline_copy", |b| {
        b.iter(|| {
            black_box(inline_copy_lifecycle_opaque(
                black_box(OrderState::Created),
                black_box(TOTAL),
                black_box(TOTAL),
            ))
        })
    });
    group.finish();

    // Pieces of a keyed fire, priced one by one.
    let mut group = c.benchmark_group("parts");
    let mut i = 0u64;
    group.bench_function("format_key", |b| {
        b.iter(|| {
            i += 1;
            black_box(format!("k{i}"))
        })
    });
    group.bench_function("now_ms", |b| b.iter(|| black_box(fsm::kit::now_ms())));
    group.bench_function("fingerprint_event", |b| {
        b.iter(|| {
            i += 1;
            black_box(fsm::kit::fingerprint(&OrderEvent::Annotate(Note(black_box(i)))).unwrap())
        })
    });
    group.bench_function("serde_json_to_value", |b| {
        b.iter(|| {
            i += 1;
            black_box(serde_json::to_value(OrderEvent::Annotate(Note(black_box(i)))).unwrap())
        })
    });
    let value = serde_json::to_value(OrderEvent::Annotate(Note(12345))).unwrap();
    group.bench_function("fingerprint_json_prebuilt", |b| {
        b.iter(|| black_box(fsm::kit::fingerprint_json(black_box(&value))))
    });
    // Upper bound of SHA-256 over one block: canonical "null" is one small String + 4 bytes.
    group.bench_function("fingerprint_json_null", |b| {
        b.iter(|| {
            black_box(fsm::kit::fingerprint_json(black_box(
                &serde_json::Value::Null,
            )))
        })
    });
    group.bench_function("serde_json_to_vec", |b| {
        b.iter(|| {
            i += 1;
            black_box(serde_json::to_vec(&OrderEvent::Annotate(Note(black_box(i)))).unwrap())
        })
    });
    group.bench_function("prepared_new_no_key", |b| {
        b.iter(|| {
            i += 1;
            let cmd = Command::<Order>::new(OrderEvent::Annotate(Note(black_box(i))));
            black_box(fsm::kit::Prepared::new(black_box(ID), cmd).unwrap())
        })
    });
    group.bench_function("prepared_new_keyed", |b| {
        b.iter(|| {
            i += 1;
            let cmd = Command::<Order>::new(OrderEvent::Annotate(Note(black_box(i))))
                .with_key(format!("k{i}"));
            black_box(fsm::kit::Prepared::new(black_box(ID), cmd).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_step, bench_memory_store, bench_profile);
criterion_main!(benches);
