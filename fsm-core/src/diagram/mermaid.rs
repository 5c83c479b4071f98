//! Mermaid `stateDiagram-v2`.

use std::fmt::Write as _;

use super::{
    children, continues_parent_group, drawn_ends, edge_label, parent_actions, state_actions,
    summary, wildcard_group_start,
};
use crate::definition::{Definition, ParentInfo};

/// Renders a definition as a Mermaid `stateDiagram-v2`, ready for a Markdown
/// ` ```mermaid ` block.
///
/// The initial state is entered from `[*]`, terminal states lead to `[*]`, each edge is
/// labelled `Event [guard] / action` (timers `after 30 min`), and a state's doc comment
/// shows, first line only, as its description, followed by its entry and exit actions
/// (`entry / notify_shipped`). Edges keep declaration order.
///
/// A parent (composite) state is a `state Active { .. }` block, first, holding its
/// states, its nested parents and `[*] --> Paid` for its initial child; its docs and
/// actions follow as for a state. A parent's line is one arrow from the block
/// (`Active --> Cancelled : Cancel`), and an edge into a parent points at it.
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
///         action: Some("engage_bolt"),
///         to: "Locked",
///         from_wildcard: false,
///         from_parent: None,
///         to_parent: None,
///     }],
/// };
///
/// assert_eq!(
///     fsm_core::diagram::mermaid(&DOOR),
///     "stateDiagram-v2\n    \
///      [*] --> Open\n    \
///      Open --> Locked : Lock [is_closed] / engage_bolt\n    \
///      Locked --> [*]\n",
/// );
/// ```
pub fn mermaid(definition: &Definition) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    // A state belongs to the block it is first named in, so the blocks come first.
    let (_, top) = children(definition, None);
    for parent in top {
        block(definition, parent, 1, &mut out);
    }
    // Writing to a String cannot fail.
    for state in definition.states {
        let id = state_id(state.name);
        if id != state.name && state.parent.is_none() {
            let _ = writeln!(out, "    state \"{}\" as {id}", text(state.name));
        }
        let doc = summary(state.doc);
        if !doc.is_empty() {
            let _ = writeln!(out, "    {id} : {}", text(doc));
        }
        for action in state_actions(state) {
            let _ = writeln!(out, "    {id} : {}", text(&action));
        }
    }
    for parent in definition.parents {
        let id = state_id(parent.name);
        let doc = summary(parent.doc);
        if !doc.is_empty() {
            let _ = writeln!(out, "    {id} : {}", text(doc));
        }
        for action in parent_actions(parent) {
            let _ = writeln!(out, "    {id} : {}", text(&action));
        }
    }
    for state in definition.states.iter().filter(|s| s.initial) {
        let _ = writeln!(out, "    [*] --> {}", state_id(state.name));
    }
    for (i, edge) in definition.edges.iter().enumerate() {
        if let Some(line) = wildcard_group_start(definition.edges, i) {
            // A comment ends at the line's end; nothing else in it is parsed.
            let line = line.replace(['\n', '\r'], " ");
            let _ = writeln!(out, "    %% {line}: every state without its own edge");
        }
        if continues_parent_group(definition.edges, i) {
            continue;
        }
        let (from, to) = drawn_ends(edge);
        let (from, to) = (state_id(from), state_id(to));
        let _ = writeln!(out, "    {from} --> {to} : {}", text(&edge_label(edge)));
    }
    for state in definition.states.iter().filter(|s| s.terminal) {
        let _ = writeln!(out, "    {} --> [*]", state_id(state.name));
    }
    out
}

/// `state Parent { .. }`: its initial child, its states and its nested parents.
fn block(definition: &Definition, parent: &ParentInfo, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    let _ = writeln!(out, "{indent}state {} {{", state_id(parent.name));
    if let Some(initial) = parent.initial {
        let _ = writeln!(out, "{indent}    [*] --> {}", state_id(initial));
    }
    let (states, parents) = children(definition, Some(parent.name));
    for state in states {
        let id = state_id(state.name);
        if id == state.name {
            let _ = writeln!(out, "{indent}    {id}");
        } else {
            let _ = writeln!(out, "{indent}    state \"{}\" as {id}", text(state.name));
        }
    }
    for inner in parents {
        block(definition, inner, depth + 1, out);
    }
    let _ = writeln!(out, "{indent}}}");
}

/// A Mermaid state id: the name itself when it is an identifier (every name the macro
/// produces is), else the name with other characters replaced by `_` and the real
/// name declared as the state's label.
fn state_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Free text on one line, with the characters Mermaid parses (`:`, `;`, `#`, quotes,
/// angle brackets) written as its `#code;` entities.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            ':' => out.push_str("#58;"),
            '"' => out.push_str("#34;"),
            '<' => out.push_str("#60;"),
            '>' => out.push_str("#62;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Edge, On, StateInfo};
    use crate::diagram::fixture::ORDER;

    #[test]
    fn mermaid_of_an_order_matches_the_snapshot() {
        assert_eq!(mermaid(&ORDER), include_str!("snapshots/order.mmd"));
    }

    #[test]
    fn mermaid_marks_initial_and_terminal_states() {
        let out = mermaid(&ORDER);
        assert!(out.starts_with("stateDiagram-v2\n"));
        assert!(out.contains("    [*] --> Created\n"));
        assert!(out.contains("    Delivered --> [*]\n"));
        assert!(out.contains("    Cancelled --> [*]\n"));
        assert!(!out.contains("Paid --> [*]"));
    }

    #[test]
    fn mermaid_labels_edges_with_event_guard_and_action() {
        let out = mermaid(&ORDER);
        assert!(out.contains("    Created --> Paid : Pay [amount_matches] / record_payment\n"));
        assert!(out.contains("    Paid --> Delivered : Deliver\n"));
    }

    #[test]
    fn mermaid_draws_one_arrow_per_source_of_a_shared_edge() {
        let out = mermaid(&ORDER);
        assert!(out.contains("    Created --> Cancelled : Cancel / refund_if_paid\n"));
        assert!(out.contains("    Paid --> Cancelled : Cancel / refund_if_paid\n"));
    }

    #[test]
    fn mermaid_labels_timer_edges_with_their_delay() {
        assert!(mermaid(&ORDER).contains("    Created --> Cancelled : after 30 min\n"));
    }

    #[test]
    fn mermaid_describes_states_with_the_first_doc_line() {
        assert!(mermaid(&ORDER).contains("    Created : Waiting for payment.\n"));
    }

    #[test]
    fn mermaid_lists_entry_and_exit_actions_in_the_state() {
        assert_eq!(
            mermaid(&crate::diagram::fixture::SHIP),
            "stateDiagram-v2\n    \
             Shipped : With the carrier.\n    \
             Shipped : entry / notify_shipped\n    \
             Shipped : exit / stop_clock\n    \
             [*] --> Paid\n    \
             Paid --> Shipped : Ship\n    \
             Shipped --> [*]\n",
        );
    }

    #[test]
    fn mermaid_groups_a_wildcard_lines_edges_under_one_comment() {
        assert_eq!(
            mermaid(&crate::diagram::fixture::WILDCARD),
            "stateDiagram-v2\n    \
             [*] --> A\n    \
             A --> B : Go\n    \
             B --> C : Go\n    \
             %% _ + Cancel / refund => X: every state without its own edge\n    \
             A --> X : Cancel (any) / refund\n    \
             B --> X : Cancel (any) / refund\n    \
             C --> [*]\n    \
             X --> [*]\n",
        );
    }

    #[test]
    fn mermaid_draws_parents_as_blocks_and_their_lines_once() {
        assert_eq!(
            mermaid(&crate::diagram::fixture::COMPOSITE),
            "stateDiagram-v2\n    \
             state Active {\n        \
                 [*] --> Paid\n        \
                 Paid\n        \
                 state Packing {\n            \
                     [*] --> Picking\n            \
                     Picking\n            \
                     Packed\n        \
                 }\n    \
             }\n    \
             Active : Paid for.\n    \
             Active : entry / open_case\n    \
             [*] --> Cart\n    \
             Cart --> Active : Checkout\n    \
             Paid --> Packing : Pack\n    \
             Picking --> Packed : Pick\n    \
             Active --> Cancelled : Cancel\n    \
             Cancelled --> [*]\n",
        );
    }

    #[test]
    fn mermaid_escapes_what_its_parser_would_read() {
        static ODD: Definition = Definition {
            name: "Odd",
            doc: "",
            context: "()",
            effect: None,
            states: &[
                StateInfo {
                    name: "Start",
                    doc: "a: b; #1",
                    initial: true,
                    terminal: false,
                    renamed_from: &[],
                    entry: None,
                    exit: None,
                    parent: None,
                },
                StateInfo {
                    name: "Two words",
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
                from: "Start",
                on: On::Event("Go"),
                guard: None,
                action: None,
                to: "Two words",
                from_wildcard: false,
                from_parent: None,
                to_parent: None,
            }],
        };
        assert_eq!(
            mermaid(&ODD),
            "stateDiagram-v2\n    \
             Start : a#58; b#59; #35;1\n    \
             state \"Two words\" as Two_words\n    \
             [*] --> Start\n    \
             Start --> Two_words : Go\n    \
             Two_words --> [*]\n",
        );
    }
}
