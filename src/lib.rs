//! # fsm: state machines whose transitions apply exactly once
//!
//! Declare a lifecycle with [`state_machine!`]; fire commands through a [`Store`]; the
//! engine guarantees that only legal transitions happen and that each one applies exactly
//! once, even under retries, double submits and racing service instances.
//!
//! See the README for a tour; [`fsm_core`] documents the runtime.
#![forbid(unsafe_code)]

pub use fsm_core::*;
pub use fsm_macros::state_machine;

/// Durable stores over sqlx (SQLite by default; features `postgres` and `mysql`).
pub use fsm_sqlx as sqlx;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}
