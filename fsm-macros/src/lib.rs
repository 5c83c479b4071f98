//! The `state_machine!` macro of [`fsm`](https://docs.rs/fsm); use it through `fsm`.
//!
//! The pipeline is `expand::state_machine`: `fsm_dsl::analyze` (`parse`, the syntax
//! tree keeping spans -> `model`, the graph, indexed -> `validate`, every check, errors
//! accumulated; shared with the `fsm` command) -> `expand` (code), or `fallback` plus the
//! errors.
#![forbid(unsafe_code)]

mod expand;
mod fallback;

use fsm_dsl::{ctxt, model};

/// Declares a state machine: its states, events, guards, actions and timers.
///
/// ```ignore
/// fsm::state_machine! {
///     /// An order from checkout to delivery.
///     pub machine Order {
///         context: OrderData,    // optional, default `()`
///         effect: OrderEffect,   // optional, default `()`
///         states {               // optional: docs, `#[terminal]`, entry and exit actions
///             /// Waiting for payment.
///             Created,
///             #[entry(email_tracking)] #[exit(stop_tracking)] Shipped,
///             #[terminal] Delivered,
///         }
///         events {               // optional: docs
///             /// The customer paid.
///             Pay,
///         }
///         *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
///         Created | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
///         Paid + Ship(Tracking) => Shipped,
///         Shipped + Deliver => Delivered,
///         Created + after(30 min) => Expired,
///     }
/// }
/// ```
///
/// A line is `Source + Event(Payload) [guard] / action => Target`: `*` marks the one
/// initial state, `A | B + E` is one edge per source, the payload type is written once
/// per event, guard and action are optional method names, and `after(N unit)` (units
/// `ms`, `s`, `sec`, `min`, `h`, `d`) is a durable timer instead of an event.
///
/// `#[entry(action)]` and `#[exit(action)]` on a state name methods run by every
/// transition that enters or leaves it, events and timers alike: exit(source), the
/// edge's action, entry(target), effects in that order. A self-loop (source == target)
/// is an internal transition and runs neither. They take no payload:
/// `fn action(&mut self, effects: &mut Effects<E>)`.
///
/// `_ + Cancel => Cancelled` is a wildcard source: one edge from every state that is
/// not terminal, is not `Cancelled`, and has no edge of its own on `Cancel` (explicit
/// edges win, guarded or not). Guards and actions apply to each generated edge.
///
/// For `machine Order` it generates `OrderState`, `OrderEvent`, `OrderEventKind`, the
/// marker type `Order` (whose docs show the machine's diagram: an SVG rendered at compile
/// time, then the Mermaid source) implementing
/// `fsm::StateMachine`, `Order::DEFINITION`, and, when there are guards or actions, the
/// trait `OrderRules` with one method per guard and action, to implement on the context
/// type.
///
/// Every mistake is reported in one compile at the token that causes it: no or several
/// initial states, duplicate or nondeterministic edges, an edge after an unguarded one
/// that always wins, unreachable states, conflicting payload types, edges or timers
/// leaving a `#[terminal]` state, unknown keywords and bad timer units, two entry or exit
/// actions on one state, an entry or exit action that no transition can run, a wildcard
/// that adds no edge, and two wildcards for one event.
#[proc_macro]
pub fn state_machine(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::state_machine(input.into()).into()
}
