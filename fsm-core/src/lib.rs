//! Runtime of [`fsm`](https://docs.rs/fsm): state machines whose transitions apply
//! exactly once.
//!
//! Everything a user names is re-exported here, flat:
//!
//! * [`Definition`] and its parts ([`StateInfo`], [`EventInfo`], [`Edge`], [`On`]): the
//!   machine's graph as `'static` data.
//! * [`StateMachine`] and [`step`]: the contract `state_machine!` implements and the one
//!   transition rule (guards in declaration order, first passing edge wins).
//! * [`Command`], [`Outcome`], [`Error`]: what callers send and get back, including
//!   idempotency keys and their fingerprints.
//! * [`Store`] and [`MemoryStore`]: persistence with a version-checked compare-and-set;
//!   [`DurableStore`] adds single-use tokens, durable timers and the outbox, drained by a
//!   [`Dispatcher`] and a [`TimerWorker`].
//! * [`retention`]: a [`Pruner`] keeps the outbox and token tables small.
//! * [`diagram`]: Mermaid, Graphviz DOT and SVG renderings of a definition.
//! * [`kit`]: what only store implementations need.
//! * [`observe`]: the spans and metrics every store reports.
//! * `testing` (feature `testing`): the conformance suites every store passes.
//!
//! # Examples
//!
//! ```
//! use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState};
//! use fsm_core::{Command, MemoryStore, Store};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! store.create::<Order>("o-1", OrderData::default()).await?;
//! let outcome = store.fire("o-1", Command::<Order>::new(OrderEvent::Cancel)).await?;
//! assert_eq!(outcome.transition().to, OrderState::Cancelled);
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```
#![forbid(unsafe_code)]

mod command;
mod definition;
pub mod diagram;
mod durable;
mod error;
pub mod kit;
mod machine;
mod memory;
pub mod observe;
mod query;
pub mod retention;
mod storable;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod wakeup;
mod worker;

pub use command::{Command, Fingerprint, IdempotencyKey, MAX_KEY_LEN};
pub use definition::{Definition, Edge, EventInfo, On, ParentInfo, StateInfo, format_duration};
pub use durable::{
    ArmedTimer, DeadLetter, Delivery, DurableStore, EffectId, EffectStatus, OutboxDepth,
    OutboxEntry,
};
pub use error::{BoxError, Error, Result, UnknownName};
pub use machine::{
    EdgeIndex, Effects, MachineEvent, ParentIndex, Rejection, StateMachine, Step, Trigger, step,
    step_timer,
};
pub use memory::MemoryStore;
pub use query::{
    Cursor, Listed, MAX_PAGE, Page, Query, StateCounts, Unknown, UnknownKind, Unreadable,
    VerifyReport,
};
pub use retention::{PruneReport, Pruner, Retention};
pub use store::{Created, Outcome, RetryPolicy, Snapshot, Store, Transition};
pub use worker::{DispatchOptions, DispatchReport, Dispatcher, TimerWorker};
