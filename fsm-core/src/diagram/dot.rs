//! Graphviz DOT.

use std::fmt::Write as _;

use super::{
    children, continues_parent_group, edge_label, parent_actions, state_actions, summary,
    wildcard_group_start,
};
use crate::definition::{Definition, On, ParentInfo};

/// Renders a definition as a Graphviz `digraph`, laid out left to right.
///
/// States are rounded boxes, terminal states double circles; a small filled point
/// `__start` leads into the initial state. Each edge is labelled
/// `Event [guard] / action`; timer edges are dashed and labelled `after 30 min`. A
/// state's doc comment, first line only, becomes its tooltip; its entry and exit actions
/// are lines of its label under its name (`entry / notify_shipped`). Every name and label is
/// quoted, with `"` and `\` escaped, so any string renders as written.
///
/// A parent (composite) state is a `cluster_Active` subgraph, labelled with its name and
/// actions and holding its states and nested parents. A parent's line is drawn once,
/// from its first state, clipped at the cluster (`ltail`), and an edge into a parent
/// ends at its cluster (`lhead`); `compound=true` lets Graphviz clip them.
///
/// # Examples
///
/// ```
/// use fsm_core::{Definition, Edge, EventInfo, On, StateInfo};
///
/// static DOOR: Definition = Definition {
///     name: "Door",
///     doc: "",
///     context: "()",
///     effect: None,
///     states: &[
///         StateInfo { name: "Open", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None, parent: None },
///         StateInfo { name: "Locked", doc: "", initial: false, terminal: true, renamed_from: &[], entry: None, exit: None, parent: None },
///     ],
///     parents: &[],
///     events: &[EventInfo { name: "Lock", doc: "", payload: None, renamed_from: &[] }],
///     edges: &[Edge {
///         from: "Open",
///         on: On::Event("Lock"),
///         guard: Some("is_closed"),
///         action: None,
///         to: "Locked",
///         from_wildcard: false,
///         from_parent: None,
///         to_parent: None,
///     }],
/// };
///
/// let dot = fsm_core::diagram::dot(&DOOR);
/// assert!(dot.starts_with("digraph \"Door\" {\n    rankdir=LR;\n"));
/// assert!(dot.contains("    __start -> \"Open\";\n"));
/// assert!(dot.contains("    \"Locked\" [shape=doublecircle];\n"));
/// assert!(dot.contains("    \"Open\" -> \"Locked\" [label=\"Lock [is_closed]\"];\n"));
/// ```
pub fn dot(definition: &Definition) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "digraph {} {{", quote(definition.name));
    out.push_str("    rankdir=LR;\n");
    if !definition.parents.is_empty() {
        out.push_str("    compound=true;\n");
    }
    out.push_str("    node [shape=box, style=rounded];\n");
    out.push_str("    __start [shape=point, width=0.15, label=\"\"];\n");
    for state in definition.states {
        let mut attrs = Vec::new();
        let actions: Vec<String> = state_actions(state).collect();
        if !actions.is_empty() {
            let label = format!("{}\n{}", state.name, actions.join("\n"));
            attrs.push(format!("label={}", quote(&label)));
        }
        if state.terminal {
            attrs.push("shape=doublecircle".to_owned());
        }
        let doc = summary(state.doc);
        if !doc.is_empty() {
            attrs.push(format!("tooltip={}", quote(doc)));
        }
        let _ = writeln!(out, "    {}{};", quote(state.name), attr_list(&attrs));
    }
    let (_, top) = children(definition, None);
    for parent in top {
        cluster(definition, parent, 1, &mut out);
    }
    for state in definition.states.iter().filter(|s| s.initial) {
        let _ = writeln!(out, "    __start -> {};", quote(state.name));
    }
    for (i, edge) in definition.edges.iter().enumerate() {
        if let Some(line) = wildcard_group_start(definition.edges, i) {
            let line = line.replace(['\n', '\r'], " ");
            let _ = writeln!(out, "    // {line}: every state without its own edge");
        }
        let mut attrs = vec![format!("label={}", quote(&edge_label(edge)))];
        if matches!(edge.on, On::After(_)) {
            attrs.push("style=dashed".to_owned());
        }
        if edge.from_wildcard {
            attrs.push("color=gray40, fontcolor=gray40".to_owned());
        }
        if continues_parent_group(definition.edges, i) {
            continue;
        }
        if let Some(parent) = edge.from_parent {
            attrs.push(format!("ltail={}", quote(&cluster_id(parent))));
        }
        if let Some(parent) = edge.to_parent {
            attrs.push(format!("lhead={}", quote(&cluster_id(parent))));
        }
        let (from, to) = (quote(edge.from), quote(edge.to));
        let _ = writeln!(out, "    {from} -> {to}{};", attr_list(&attrs));
    }
    out.push_str("}\n");
    out
}

/// `subgraph "cluster_Active" { .. }`: the parent's label, its states, its nested
/// parents.
fn cluster(definition: &Definition, parent: &ParentInfo, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    let _ = writeln!(
        out,
        "{indent}subgraph {} {{",
        quote(&cluster_id(parent.name))
    );
    let mut label = parent.name.to_owned();
    for action in parent_actions(parent) {
        label.push('\n');
        label.push_str(&action);
    }
    let _ = writeln!(out, "{indent}    label={};", quote(&label));
    out.push_str(&format!("{indent}    style=rounded;\n"));
    let doc = summary(parent.doc);
    if !doc.is_empty() {
        let _ = writeln!(out, "{indent}    tooltip={};", quote(doc));
    }
    let (states, parents) = children(definition, Some(parent.name));
    for state in states {
        let _ = writeln!(out, "{indent}    {};", quote(state.name));
    }
    for inner in parents {
        cluster(definition, inner, depth + 1, out);
    }
    let _ = writeln!(out, "{indent}}}");
}

/// A cluster's name: Graphviz draws a subgraph as a frame when its name starts so.
fn cluster_id(parent: &str) -> String {
    format!("cluster_{parent}")
}

/// ` [a, b]`, or nothing for no attributes.
fn attr_list(attrs: &[String]) -> String {
    if attrs.is_empty() {
        String::new()
    } else {
        format!(" [{}]", attrs.join(", "))
    }
}

/// A DOT double-quoted string: `"` and `\` escaped, line breaks as `\n`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Edge, StateInfo};
    use crate::diagram::fixture::ORDER;

    #[test]
    fn dot_of_an_order_matches_the_snapshot() {
        assert_eq!(dot(&ORDER), include_str!("snapshots/order.dot"));
    }

    #[test]
    fn dot_marks_initial_and_terminal_states() {
        let out = dot(&ORDER);
        assert!(out.contains("    __start [shape=point, width=0.15, label=\"\"];\n"));
        assert!(out.contains("    __start -> \"Created\";\n"));
        assert!(out.contains("    \"Delivered\" [shape=doublecircle];\n"));
        assert!(out.contains("    \"Cancelled\" [shape=doublecircle];\n"));
        assert!(out.contains("    \"Paid\";\n"));
    }

    #[test]
    fn dot_labels_edges_with_event_guard_and_action() {
        assert!(dot(&ORDER).contains(
            "    \"Created\" -> \"Paid\" [label=\"Pay [amount_matches] / record_payment\"];\n"
        ));
    }

    #[test]
    fn dot_draws_one_arrow_per_source_of_a_shared_edge() {
        let out = dot(&ORDER);
        assert!(
            out.contains("    \"Created\" -> \"Cancelled\" [label=\"Cancel / refund_if_paid\"];\n")
        );
        assert!(
            out.contains("    \"Paid\" -> \"Cancelled\" [label=\"Cancel / refund_if_paid\"];\n")
        );
    }

    #[test]
    fn dot_dashes_timer_edges_and_labels_their_delay() {
        assert!(dot(&ORDER).contains(
            "    \"Created\" -> \"Cancelled\" [label=\"after 30 min\", style=dashed];\n"
        ));
    }

    #[test]
    fn dot_lists_entry_and_exit_actions_under_the_state_name() {
        assert!(dot(&crate::diagram::fixture::SHIP).contains(
            "    \"Shipped\" [label=\"Shipped\\nentry / notify_shipped\\nexit / stop_clock\", \
             shape=doublecircle, tooltip=\"With the carrier.\"];\n"
        ));
    }

    #[test]
    fn dot_groups_a_wildcard_lines_edges_in_grey_under_one_comment() {
        let out = dot(&crate::diagram::fixture::WILDCARD);
        let grey = "color=gray40, fontcolor=gray40";
        assert!(out.contains(&format!(
            "    // _ + Cancel / refund => X: every state without its own edge\n    \
             \"A\" -> \"X\" [label=\"Cancel (any) / refund\", {grey}];\n    \
             \"B\" -> \"X\" [label=\"Cancel (any) / refund\", {grey}];\n"
        )));
        assert_eq!(out.matches("// _ +").count(), 1);
    }

    #[test]
    fn dot_draws_parents_as_clusters_and_their_lines_once_from_the_frame() {
        let out = dot(&crate::diagram::fixture::COMPOSITE);
        assert!(
            out.contains("    rankdir=LR;\n    compound=true;\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "    subgraph \"cluster_Active\" {\n        \
                 label=\"Active\\nentry / open_case\";\n        \
                 style=rounded;\n        \
                 tooltip=\"Paid for.\";\n        \
                 \"Paid\";\n        \
                 subgraph \"cluster_Packing\" {\n            \
                 label=\"Packing\";\n            \
                 style=rounded;\n            \
                 \"Picking\";\n            \
                 \"Packed\";\n        \
                 }\n    \
                 }\n"
            ),
            "{out}"
        );
        assert!(out.contains(
            "    \"Cart\" -> \"Paid\" [label=\"Checkout\", lhead=\"cluster_Active\"];\n"
        ));
        assert!(out.contains(
            "    \"Paid\" -> \"Cancelled\" [label=\"Cancel\", ltail=\"cluster_Active\"];\n"
        ));
        assert_eq!(out.matches("label=\"Cancel\"").count(), 1, "{out}");
        assert!(!dot(&ORDER).contains("compound"));
    }

    #[test]
    fn dot_escapes_quotes_and_backslashes() {
        static ODD: Definition = Definition {
            name: "Say \"hi\"",
            doc: "",
            context: "()",
            effect: None,
            states: &[
                StateInfo {
                    name: "a\\b",
                    doc: "line one\nline two",
                    initial: true,
                    terminal: false,
                    renamed_from: &[],
                    entry: None,
                    exit: None,
                    parent: None,
                },
                StateInfo {
                    name: "\"q\"",
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
            events: &[],
            edges: &[Edge {
                from: "a\\b",
                on: On::Event("Go"),
                guard: None,
                action: None,
                to: "\"q\"",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            }],
        };
        assert_eq!(
            dot(&ODD),
            "digraph \"Say \\\"hi\\\"\" {\n    \
             rankdir=LR;\n    \
             node [shape=box, style=rounded];\n    \
             __start [shape=point, width=0.15, label=\"\"];\n    \
             \"a\\\\b\" [tooltip=\"line one\"];\n    \
             \"\\\"q\\\"\" [shape=doublecircle];\n    \
             __start -> \"a\\\\b\";\n    \
             \"a\\\\b\" -> \"\\\"q\\\"\" [label=\"Go\"];\n\
             }\n",
        );
    }
}
