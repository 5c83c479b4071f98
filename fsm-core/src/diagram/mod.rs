//! Diagrams of a [`Definition`](crate::Definition): Mermaid, Graphviz DOT and SVG.
//!
//! Every renderer reads the same `'static` graph that the step function runs on, so a
//! diagram cannot drift from the code. Each one draws the same things:
//!
//! * the initial state, entered from a start marker (`[*]` in Mermaid, a small filled
//!   point in DOT and SVG);
//! * terminal states, leading to `[*]` in Mermaid and drawn with a double outline in
//!   DOT and SVG;
//! * every edge, labelled the way the DSL writes it: `Pay [amount_matches] /
//!   record_payment`, with guard and action only when the edge has them;
//! * timer edges, labelled `after 30 min` and dashed where the format can dash;
//! * the edges of a wildcard line `_ + Cancel => Cancelled` as one group: labelled
//!   `Cancel (any)`, introduced by a comment naming the line in Mermaid and DOT, drawn
//!   grey in DOT and SVG;
//! * entry and exit actions inside their state, as UML writes them: `entry /
//!   notify_shipped`, `exit / stop_clock`;
//! * parent (composite) states as a frame around their states, named and listing the
//!   parent's entry and exit actions: `state Active { .. }` with `[*] --> Paid` for its
//!   initial child in Mermaid, a `cluster_Active` subgraph in DOT, a rectangle in SVG.
//!   A parent's line `Active + Cancel => Cancelled` is one arrow leaving the frame in
//!   Mermaid and DOT (SVG, laid out without clusters, draws one arrow per state it
//!   applies to, labelled `Cancel (Active)`), and an edge into a parent points at the
//!   frame.
//!
//! An `A | B + E` line is two edges, so it is drawn as two arrows.
//!
//! | function    | output                          | render it with                        |
//! |-------------|---------------------------------|---------------------------------------|
//! | [`mermaid`] | Mermaid `stateDiagram-v2`       | GitHub/GitLab Markdown, mermaid.live  |
//! | [`dot`]     | Graphviz `digraph`              | `dot -Tsvg`, any Graphviz viewer      |
//! | `svg`       | a standalone SVG document       | a browser; needs feature `svg`        |
//!
//! The SVG is laid out in pure Rust (through `layout-rs`), so rendering it never
//! shells out to Graphviz, at build time or at run time.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//!
//! use fsm_core::{Definition, Edge, EventInfo, On, StateInfo};
//! use fsm_core::diagram;
//!
//! static ORDER: Definition = Definition {
//!     name: "Order",
//!     doc: "",
//!     context: "()",
//!     effect: None,
//!     states: &[
//!         StateInfo { name: "Created", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None, parent: None },
//!         StateInfo { name: "Paid", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None, parent: None },
//!         StateInfo { name: "Expired", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None, parent: None },
//!     ],
//!     parents: &[],
//!     events: &[EventInfo { name: "Pay", doc: "", payload: None, renamed_from: &[] }],
//!     edges: &[
//!         Edge {
//!             from: "Created",
//!             on: On::Event("Pay"),
//!             guard: Some("amount_matches"),
//!             action: None,
//!             to: "Paid",
//!             from_wildcard: false,
//!             from_parent: None,
//!             to_parent: None,
//!         },
//!         Edge {
//!             from: "Created",
//!             on: On::After(Duration::from_secs(30 * 60)),
//!             guard: None,
//!             action: None,
//!             to: "Expired",
//!             from_wildcard: false,
//!             from_parent: None,
//!             to_parent: None,
//!         },
//!     ],
//! };
//!
//! let mermaid = diagram::mermaid(&ORDER);
//! assert!(mermaid.contains("Created --> Paid : Pay [amount_matches]"));
//! assert!(mermaid.contains("Created --> Expired : after 30 min"));
//!
//! let dot = diagram::dot(&ORDER);
//! assert!(dot.contains(r#""Created" -> "Expired" [label="after 30 min", style=dashed];"#));
//! ```

use crate::definition::{Definition, Edge, On, ParentInfo, StateInfo, format_duration};

mod dot;
mod mermaid;
#[cfg(feature = "svg")]
mod svg;

pub use dot::dot;
pub use mermaid::mermaid;
#[cfg(feature = "svg")]
pub use svg::{StateMark, svg, svg_marked};

/// The label of an edge as the DSL writes it: `Pay [amount_matches] / record_payment`,
/// or `after 30 min` for a timer; guard and action only when present. An edge of a
/// wildcard line says so: `Cancel (any) / refund`.
fn edge_label(edge: &Edge) -> String {
    let mut label = match edge.on {
        On::Event(event) => event.to_owned(),
        On::After(delay) => format!("after {}", format_duration(delay)),
    };
    if edge.from_wildcard {
        label.push_str(" (any)");
    }
    if let Some(guard) = edge.guard {
        label.push_str(&format!(" [{guard}]"));
    }
    if let Some(action) = edge.action {
        label.push_str(&format!(" / {action}"));
    }
    label
}

/// The wildcard line an edge comes from, as the DSL writes it (`_ + Cancel / refund =>
/// Cancelled`), when `edge` is the first edge of that line's group in `edges`.
fn wildcard_group_start(edges: &[Edge], index: usize) -> Option<String> {
    let edge = &edges[index];
    if !edge.from_wildcard {
        return None;
    }
    let same_line =
        |other: &Edge| other.from_wildcard && other.on == edge.on && other.to == edge.to;
    if index > 0 && same_line(&edges[index - 1]) {
        return None;
    }
    let mut line = String::from("_ + ");
    line.push_str(&match edge.on {
        On::Event(event) => event.to_owned(),
        On::After(delay) => format!("after({})", format_duration(delay)),
    });
    if let Some(guard) = edge.guard {
        line.push_str(&format!(" [{guard}]"));
    }
    if let Some(action) = edge.action {
        line.push_str(&format!(" / {action}"));
    }
    line.push_str(&format!(" => {}", edge.to));
    Some(line)
}

/// Whether `edge` continues the group of edges that one parent line generated, begun by
/// the edge before it: renderers that can draw from a parent's frame draw the group once.
fn continues_parent_group(edges: &[Edge], index: usize) -> bool {
    let edge = &edges[index];
    index > 0 && edge.from_parent.is_some() && {
        let before = &edges[index - 1];
        before.from_parent == edge.from_parent
            && (
                before.on,
                before.guard,
                before.action,
                before.to,
                before.to_parent,
            ) == (edge.on, edge.guard, edge.action, edge.to, edge.to_parent)
    }
}

/// Where an edge is drawn from and to where a renderer draws parents as frames: the
/// parent for a parent line's edge and for an edge into a parent, else the states.
fn drawn_ends(edge: &Edge) -> (&'static str, &'static str) {
    (
        edge.from_parent.unwrap_or(edge.from),
        edge.to_parent.unwrap_or(edge.to),
    )
}

/// The states (leaves) and parents directly inside `parent` (`None`: at the top), in
/// declaration order.
fn children<'a>(
    definition: &'a Definition,
    parent: Option<&'a str>,
) -> (
    impl Iterator<Item = &'a StateInfo> + 'a,
    impl Iterator<Item = &'a ParentInfo> + 'a,
) {
    (
        definition.states.iter().filter(move |s| s.parent == parent),
        definition
            .parents
            .iter()
            .filter(move |p| p.parent == parent),
    )
}

/// A parent's entry and exit actions, as for a state.
fn parent_actions(parent: &ParentInfo) -> impl Iterator<Item = String> {
    let entry = parent.entry.map(|a| format!("entry / {a}"));
    let exit = parent.exit.map(|a| format!("exit / {a}"));
    entry.into_iter().chain(exit)
}

/// A state's entry and exit actions as UML writes them: `entry / notify_shipped`,
/// `exit / stop_clock`.
fn state_actions(state: &StateInfo) -> impl Iterator<Item = String> {
    let entry = state.entry.map(|a| format!("entry / {a}"));
    let exit = state.exit.map(|a| format!("exit / {a}"));
    entry.into_iter().chain(exit)
}

/// The first line of a doc comment, trimmed: what fits in a diagram.
fn summary(doc: &str) -> &str {
    doc.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
pub(crate) mod fixture {
    use std::time::Duration;

    use crate::definition::{Definition, Edge, EventInfo, On, ParentInfo, StateInfo};

    /// An order with every feature a diagram must show: an initial state, a guarded
    /// edge with an action, `Created | Paid + Cancel`, a timer and two terminal states.
    pub(crate) static ORDER: Definition = Definition {
        name: "Order",
        doc: "An order from checkout to delivery.",
        context: "OrderData",
        effect: Some("OrderEffect"),
        states: &[
            StateInfo {
                name: "Created",
                doc: "Waiting for payment.\nUnpaid orders expire.",
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
        ],
        parents: &[],
        events: &[
            EventInfo {
                name: "Pay",
                doc: "",
                payload: Some("Payment"),
                renamed_from: &[],
            },
            EventInfo {
                name: "Cancel",
                doc: "",
                payload: Some("Reason"),
                renamed_from: &[],
            },
            EventInfo {
                name: "Deliver",
                doc: "",
                payload: None,
                renamed_from: &[],
            },
        ],
        edges: &[
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
                action: Some("refund_if_paid"),
                to: "Cancelled",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            },
            Edge {
                from: "Paid",
                on: On::Event("Cancel"),
                guard: None,
                action: Some("refund_if_paid"),
                to: "Cancelled",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            },
            Edge {
                from: "Paid",
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
                on: On::After(Duration::from_secs(30 * 60)),
                guard: None,
                action: None,
                to: "Cancelled",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            },
        ],
    };

    /// A state with a doc comment, an entry and an exit action.
    pub(crate) static SHIP: Definition = Definition {
        name: "Ship",
        doc: "",
        context: "()",
        effect: None,
        states: &[
            StateInfo {
                name: "Paid",
                doc: "",
                initial: true,
                terminal: false,
                renamed_from: &[],
                entry: None,
                exit: None,
                parent: None,
            },
            StateInfo {
                name: "Shipped",
                doc: "With the carrier.",
                initial: false,
                terminal: true,
                renamed_from: &[],
                entry: Some("notify_shipped"),
                exit: Some("stop_clock"),
                parent: None,
            },
        ],
        parents: &[],
        events: &[],
        edges: &[Edge {
            from: "Paid",
            on: On::Event("Ship"),
            guard: None,
            action: None,
            to: "Shipped",
            from_wildcard: false,
            from_parent: None,
            to_parent: None,
        }],
    };
    const fn state(name: &'static str, initial: bool, terminal: bool) -> StateInfo {
        StateInfo {
            name,
            doc: "",
            initial,
            terminal,
            renamed_from: &[],
            entry: None,
            exit: None,
            parent: None,
        }
    }

    const fn edge(from: &'static str, event: &'static str, to: &'static str, any: bool) -> Edge {
        Edge {
            from,
            on: On::Event(event),
            guard: None,
            action: if any { Some("refund") } else { None },
            to,
            from_wildcard: any,
            from_parent: None,
            to_parent: None,
        }
    }

    const fn leaf(name: &'static str, parent: Option<&'static str>, initial: bool) -> StateInfo {
        StateInfo {
            name,
            doc: "",
            initial,
            terminal: false,
            renamed_from: &[],
            entry: None,
            exit: None,
            parent,
        }
    }

    const fn inner(
        from: &'static str,
        event: &'static str,
        to: &'static str,
        from_parent: Option<&'static str>,
        to_parent: Option<&'static str>,
    ) -> Edge {
        Edge {
            from,
            on: On::Event(event),
            guard: None,
            action: None,
            to,
            from_wildcard: false,
            from_parent,
            to_parent,
        }
    }

    /// `states { #[entry(open_case)] Active { *Paid, Packing { *Picking, Packed } } }`,
    /// `*Cart + Checkout => Active`, `Paid + Pack => Packing`, `Picking + Pick =>
    /// Packed`, `Active + Cancel => Cancelled`.
    pub(crate) static COMPOSITE: Definition = Definition {
        name: "Composite",
        doc: "",
        context: "()",
        effect: None,
        states: &[
            leaf("Cart", None, true),
            leaf("Paid", Some("Active"), false),
            leaf("Picking", Some("Packing"), false),
            leaf("Packed", Some("Packing"), false),
            StateInfo {
                terminal: true,
                ..leaf("Cancelled", None, false)
            },
        ],
        parents: &[
            ParentInfo {
                name: "Active",
                doc: "Paid for.",
                parent: None,
                initial: Some("Paid"),
                entry: Some("open_case"),
                exit: None,
            },
            ParentInfo {
                name: "Packing",
                doc: "",
                parent: Some("Active"),
                initial: Some("Picking"),
                entry: None,
                exit: None,
            },
        ],
        events: &[],
        edges: &[
            inner("Cart", "Checkout", "Paid", None, Some("Active")),
            inner("Paid", "Pack", "Picking", None, Some("Packing")),
            inner("Picking", "Pick", "Packed", None, None),
            inner("Paid", "Cancel", "Cancelled", Some("Active"), None),
            inner("Picking", "Cancel", "Cancelled", Some("Active"), None),
            inner("Packed", "Cancel", "Cancelled", Some("Active"), None),
        ],
    };

    /// `*A + Go => B, B + Go => C, _ + Cancel / refund => X`: the wildcard adds
    /// `A + Cancel` and `B + Cancel`.
    pub(crate) static WILDCARD: Definition = Definition {
        name: "Wildcard",
        doc: "",
        context: "()",
        effect: None,
        states: &[
            state("A", true, false),
            state("B", false, false),
            state("C", false, true),
            state("X", false, true),
        ],
        parents: &[],
        events: &[],
        edges: &[
            edge("A", "Go", "B", false),
            edge("B", "Go", "C", false),
            edge("A", "Cancel", "X", true),
            edge("B", "Cancel", "X", true),
        ],
    };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn edge(on: On, guard: Option<&'static str>, action: Option<&'static str>) -> Edge {
        Edge {
            from: "A",
            on,
            guard,
            action,
            to: "B",
            from_wildcard: false,
            from_parent: None,
            to_parent: None,
        }
    }

    #[test]
    fn edge_label_reads_like_the_dsl() {
        let pay = On::Event("Pay");
        assert_eq!(edge_label(&edge(pay, None, None)), "Pay");
        assert_eq!(edge_label(&edge(pay, Some("ok"), None)), "Pay [ok]");
        assert_eq!(edge_label(&edge(pay, None, Some("record"))), "Pay / record");
        assert_eq!(
            edge_label(&edge(pay, Some("ok"), Some("record"))),
            "Pay [ok] / record"
        );
    }

    #[test]
    fn timer_edge_label_says_after_and_the_delay() {
        let after = On::After(Duration::from_secs(2 * 3600));
        assert_eq!(edge_label(&edge(after, None, None)), "after 2 h");
        assert_eq!(
            edge_label(&edge(after, Some("unpaid"), None)),
            "after 2 h [unpaid]"
        );
    }

    #[test]
    fn summary_is_the_first_non_blank_line() {
        assert_eq!(
            summary("\n  Waiting for payment.  \nMore."),
            "Waiting for payment."
        );
        assert_eq!(summary(""), "");
    }
}
