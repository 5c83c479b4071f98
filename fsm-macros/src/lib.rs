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
///             Settled { *Paid, Refunded }   // a parent grouping states
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
/// `Parent { *A, B }` in `states { }` groups states under a parent (composite) state,
/// nested as deep as needed; `*` marks the child an edge into the parent enters. A line
/// from a parent (`Active + Cancel => Cancelled`) applies to each state under it that is
/// not `#[terminal]` and has no edge of its own on that event (a nearer parent's edge
/// counts as its own; wildcards come after); a line into a parent enters its initial
/// child, down to a leaf. A transition from `S` to `T` runs the exit actions from `S` up
/// to, not including, their lowest common parent, the edge's action, then the entry
/// actions from below that parent down to `T`, so a move inside a parent runs none of its
/// actions. Parents are never stored: the state enum has the leaves only, and
/// `OrderState::is_within("Active")` asks about the groups.
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
/// that adds no edge, two wildcards for one event, and for composite states: an edge into
/// a parent without an initial child, a parent declared twice or inside itself, a state
/// named like a parent, two initial children, an empty parent, a timer on a parent's
/// edge, a parent's edge that adds no edge, and `#[terminal]` or `#[renamed_from]` on a
/// parent.
#[proc_macro]
pub fn state_machine(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::state_machine(input.into()).into()
}
