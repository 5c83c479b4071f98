//! The one error type of fsm.
//!
//! Every variant carries what a person needs to act on it: the machine type, the
//! instance id, and where it applies the state, the event, the key or the versions.
//!
//! # Examples
//!
//! ```
//! use fsm_core::Error;
//!
//! let err = Error::IllegalTransition {
//!     machine: "Order",
//!     id: "o-1".into(),
//!     state: "Created".into(),
//!     event: "Ship".into(),
//!     repeat: false,
//! };
//! assert_eq!(err.to_string(), "Order o-1: event Ship is not allowed in state Created");
//! assert!(!err.is_repeat());
//! ```

use std::error::Error as StdError;

use crate::machine::StateMachine;

/// `Result` with fsm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed source error from a backend (for sqlx stores, a `sqlx::Error`).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when firing, loading or storing a machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No edge leaves the current state on this event.
    #[error("{machine} {id}: event {event} is not allowed in state {state}")]
    IllegalTransition {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The current state.
        state: String,
        /// The event fired.
        event: String,
        /// Whether the current state is itself a target of this event, so the command
        /// most likely already happened (see [`Error::is_repeat`]).
        repeat: bool,
    },
    /// Edges leave the state on this event, but every guard returned false.
    #[error("{machine} {id}: event {event} in state {state} rejected by guards {guards:?}")]
    GuardRejected {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The current state.
        state: String,
        /// The event fired.
        event: String,
        /// The guards tried, in declaration order.
        guards: Vec<&'static str>,
    },
    /// An idempotency key already recorded a different event on this instance.
    #[error(
        "{machine} {id}: idempotency key {key:?} was used for another request (version {version})"
    )]
    KeyReused {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The key.
        key: String,
        /// The version of the transition the key recorded first.
        version: u64,
    },
    /// An idempotency key outside 1..=255 bytes, or holding a NUL byte.
    #[error("{machine} {id}: idempotency key of {len} bytes, expected 1..=255 without NUL")]
    InvalidKey {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The key's length in bytes.
        len: usize,
    },
    /// A machine id outside 1..=255 bytes, or holding a NUL byte.
    #[error("{machine}: machine id of {len} bytes, expected 1..=255 without NUL")]
    InvalidId {
        /// Machine type.
        machine: &'static str,
        /// The id's length in bytes.
        len: usize,
    },
    /// A single-use token that is unknown, expired, or bound to another instance.
    #[error("{machine} {id}: token is unknown or expired")]
    InvalidToken {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
    },
    /// Compare-and-set kept failing under the retry policy: other writers won each race.
    #[error(
        "{machine} {id}: concurrent update; gave up after {attempts} attempts at version {version}"
    )]
    Conflict {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The version last read.
        version: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// No instance with this id.
    #[error("{machine} {id}: not found")]
    NotFound {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
    },
    /// `create` with an id that exists with another initial context.
    #[error(
        "{machine} {id}: already exists (state {state}, version {version}) with another context"
    )]
    AlreadyExists {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// The existing instance's state.
        state: String,
        /// The existing instance's version.
        version: u64,
    },
    /// Stored data that does not parse: an unknown state name, bad JSON, a version gap.
    #[error("{machine} {id}: corrupt row in {table}: {detail}")]
    Corrupt {
        /// Table (or store structure) holding the bad data.
        table: &'static str,
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// A value could not be serialized to or from JSON.
    #[error("{machine} {id}: {what} does not serialize: {source}")]
    Serialization {
        /// Machine type.
        machine: &'static str,
        /// Instance id.
        id: String,
        /// What was being serialized (`"context"`, `"event"`, `"effect"`).
        what: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A listing query that cannot run: a cursor that is not one this store issued (or
    /// was issued for another ordering or machine), or a limit outside 1..=1000.
    #[error("{machine}: invalid query: {detail}")]
    InvalidQuery {
        /// Machine type.
        machine: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A background worker (an outbox dispatcher's or a timer worker's task) died.
    #[error("{machine}: {worker} worker died: {detail}")]
    WorkerDied {
        /// Machine type the worker served.
        machine: &'static str,
        /// `"outbox"` or `"timer"`.
        worker: &'static str,
        /// What ended it (a panic's message).
        detail: String,
    },
    /// The backend failed: connection refused or dropped, timeout, I/O. The source is
    /// kept (for sqlx stores, a `sqlx::Error`, reachable by downcasting).
    #[error("{operation}: database error: {source}")]
    Database {
        /// What the store was doing, e.g. `"fire Order o-1"`.
        operation: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether this is an [`Error::IllegalTransition`] whose current state is itself a
    /// target of the event: the command most likely already happened ("state-machine
    /// idempotency"), and a caller without a key may treat it as success.
    pub fn is_repeat(&self) -> bool {
        matches!(self, Error::IllegalTransition { repeat: true, .. })
    }

    /// Whether retrying the same call later may succeed (conflicts and backend faults).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Database { .. })
    }

    /// No instance `id` of machine `M`.
    pub fn not_found<M: StateMachine>(id: &str) -> Self {
        Error::NotFound {
            machine: M::DEFINITION.name,
            id: id.to_owned(),
        }
    }

    /// `what` (`"context"`, `"event"`, `"effect"`) of instance `id` of `M` does not
    /// serialize.
    pub fn serialization<M: StateMachine>(
        id: &str,
        what: &'static str,
        source: serde_json::Error,
    ) -> Self {
        Error::Serialization {
            machine: M::DEFINITION.name,
            id: id.to_owned(),
            what,
            source,
        }
    }

    /// Stored data of instance `id` of `M` in `table` that does not parse.
    pub fn corrupt<M: StateMachine>(table: &'static str, id: &str, detail: String) -> Self {
        Error::Corrupt {
            table,
            machine: M::DEFINITION.name,
            id: id.to_owned(),
            detail,
        }
    }

    /// Wraps a backend error with what the store was doing.
    pub fn database(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Database {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

/// A name that is not a state or event of the machine, from `FromStr` on generated enums.
///
/// # Examples
///
/// ```
/// let err = fsm_core::UnknownName { machine: "Order", kind: "state", name: "Lost".into() };
/// assert_eq!(err.to_string(), "Order has no state named \"Lost\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{machine} has no {kind} named {name:?}")]
pub struct UnknownName {
    /// Machine type.
    pub machine: &'static str,
    /// `"state"` or `"event"`.
    pub kind: &'static str,
    /// The name given.
    pub name: String,
}
