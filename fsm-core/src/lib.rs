//! Runtime of [`fsm`](https://docs.rs/fsm): state machines whose transitions apply
//! exactly once.
//!
//! * [`definition`]: the machine's graph as `'static` data.
//! * [`StateMachine`] and [`step`]: the contract `state_machine!` implements and the one
//!   transition rule (guards in declaration order, first passing edge wins).
//! * [`Command`], [`Outcome`], [`Error`]: what callers send and get back, including
//!   idempotency keys and their fingerprints.
//! * [`Store`] and [`MemoryStore`]: persistence with a version-checked compare-and-set.
//! * [`diagram`]: Mermaid, Graphviz DOT and SVG renderings of a definition.
//! * `testing` (feature `testing`): the conformance suite every store passes.
#![forbid(unsafe_code)]

pub mod command;
pub mod definition;
pub mod diagram;
pub mod error;
pub mod machine;
pub mod memory;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use command::{Command, Fingerprint, IdempotencyKey};
pub use definition::Definition;
pub use error::{Error, Result, UnknownName};
pub use machine::{
    EdgeIndex, Effects, MachineEvent, Rejection, StateMachine, Step, Trigger, step, step_timer,
};
pub use memory::MemoryStore;
pub use store::{Applied, Outcome, Prepared, RetryPolicy, Snapshot, Store, Transition};
