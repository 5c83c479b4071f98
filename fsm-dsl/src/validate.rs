//! Checks over the model. Every check records into the error context and goes on, so a
//! user sees every mistake in one compile, each at the token that causes it.

use std::collections::VecDeque;

use quote::{ToTokens, quote};
use syn::Ident;

use crate::ctxt::Ctxt;
use crate::model::{Machine, Node, Trigger, name, type_string};
use crate::parse::StateAction;

pub fn check(m: &Machine, cx: &mut Ctxt) {
    check_keys(m, cx);
    check_declarations(m, cx);
    check_renames(m, cx);
    check_initial(m, cx);
    check_payloads(m, cx);
    check_rules(m, cx);
    check_state_actions(m, cx);
    check_hierarchy(m, cx);
    check_parent_targets(m, cx);
    check_parent_actions(m, cx);
    check_edges(m, cx);
    check_parent_lines(m, cx);
    check_wildcards(m, cx);
    check_terminal(m, cx);
    check_reachable(m, cx);
    check_size(m, cx);
}

/// `context:`, `effect:`, `states { }` and `events { }` appear at most once.
fn check_keys(m: &Machine, cx: &mut Ctxt) {
    for kv in m.contexts.iter().skip(1).chain(m.effects.iter().skip(1)) {
        let key = &kv.key;
        cx.error_spanned_by(key, format!("`{key}` is declared twice; keep one"));
    }
    for (i, keyword) in m.blocks.iter().enumerate() {
        if m.blocks[..i].iter().any(|k| k == keyword) {
            cx.error_spanned_by(
                keyword,
                format!("`{keyword} {{ }}` is declared twice; list everything in the first one"),
            );
        }
    }
}

/// Entries of `states { }` / `events { }` are listed once and used by some transition.
fn check_declarations(m: &Machine, cx: &mut Ctxt) {
    let states = m
        .states
        .iter()
        .map(|s| ("state", "states", &s.declared, &s.used_at));
    let events = m
        .events
        .iter()
        .map(|e| ("event", "events", &e.declared, &e.used_at));
    for (kind, block, declared, used_at) in states.chain(events) {
        for again in declared.iter().skip(1) {
            cx.error_spanned_by(
                again,
                format!("{kind} `{again}` is listed twice in `{block} {{ }}`; remove one"),
            );
        }
        if let (Some(first), None, true) = (declared.first(), used_at, m.complete) {
            cx.error_spanned_by(
                first,
                format!(
                    "{kind} `{first}` is declared in `{block} {{ }}` but no transition uses it; \
                     add a transition or remove it"
                ),
            );
        }
    }
}

/// A state or event with its former names.
type Renamed<'a> = (&'a Ident, &'a Vec<Ident>);

/// A former name is not a current name, nor the former name of another state or event:
/// a stored row must read as exactly one of them.
fn check_renames(m: &Machine, cx: &mut Ctxt) {
    let states = m.states.iter().map(|s| (&s.name, &s.renamed_from));
    let events = m.events.iter().map(|e| (&e.name, &e.renamed_from));
    let groups: [(&str, Vec<Renamed<'_>>); 2] =
        [("state", states.collect()), ("event", events.collect())];
    for (kind, entries) in groups {
        let mut seen: Vec<(String, &Ident)> = Vec::new();
        // (former name, the state or event that has it)
        for (current, old_names) in &entries {
            for old in old_names.iter() {
                let old_name = name(old);
                if let Some((now, _)) = entries.iter().find(|(n, _)| name(n) == old_name) {
                    let message = if name(now) == name(current) {
                        format!("{kind} `{current}` cannot be renamed from its own name")
                    } else {
                        format!(
                            "`{old_name}` is the name of {kind} `{now}`; a stored `{old_name}` \
                             must read as one {kind}, so rename `{now}` too or drop this"
                        )
                    };
                    cx.error_spanned_by(old, message);
                } else if let Some((_, owner)) = seen.iter().find(|(n, _)| *n == old_name) {
                    cx.error_spanned_by(
                        old,
                        format!(
                            "`{old_name}` is already a former name of {kind} `{owner}`; \
                             a stored name must read as one {kind}"
                        ),
                    );
                } else {
                    seen.push((old_name, current));
                }
            }
        }
    }
}

/// Exactly one state is marked `*`.
fn check_initial(m: &Machine, cx: &mut Ctxt) {
    let Some((_, initial)) = m.initial_marks.first() else {
        if m.complete {
            cx.error_spanned_by(
                &m.name,
                format!(
                    "machine `{}` has no initial state; mark the first source state of one \
                     transition with `*`, as in `*Created + Pay => Paid`",
                    m.name
                ),
            );
        }
        return;
    };
    for (star, state) in m.initial_marks.iter().skip(1) {
        let message = if state == initial {
            format!("`{state}` is already marked as the initial state; remove this `*`")
        } else {
            format!(
                "several initial states: `{initial}` is already marked `*`; a machine starts in \
                 one state, remove this `*`"
            )
        };
        cx.error_spanned_by(quote!(#star #state), message);
    }
}

/// An event has one payload type, however many lines write it.
fn check_payloads(m: &Machine, cx: &mut Ctxt) {
    for event in &m.events {
        let Some(first) = event.payload() else {
            continue;
        };
        let expected = type_string(first);
        for ty in &event.payloads[1..] {
            let written = type_string(ty);
            if written != expected {
                let name = &event.name;
                cx.error_spanned_by(
                    ty,
                    format!(
                        "event `{name}` already carries `{expected}`, not `{written}`; write \
                         `{name}` or `{name}({expected})` here, or use another event"
                    ),
                );
            }
        }
    }
}

/// A guard or action name is one method: one kind, one payload type.
fn check_rules(m: &Machine, cx: &mut Ctxt) {
    for rule in &m.rules {
        let first = &rule.uses[0];
        let payload = m.rule_payload(rule).map(type_string);
        for used in &rule.uses[1..] {
            let name = &used.name;
            if used.kind != rule.kind {
                cx.error_spanned_by(
                    name,
                    format!(
                        "`{name}` is already the {} of `{}`; a guard and an action need \
                         different names",
                        rule.kind.as_str(),
                        m.describe_site(first.site),
                    ),
                );
                continue;
            }
            let here = m.site_payload(used.site).map(type_string);
            if here != payload {
                let takes = |p: &Option<String>| match p {
                    Some(ty) => format!("`&{ty}`"),
                    None => "no payload".to_owned(),
                };
                cx.error_spanned_by(
                    name,
                    format!(
                        "{} `{name}` takes {} on `{}` but would take {} here; use another {} name",
                        used.kind.as_str(),
                        takes(&payload),
                        m.describe_site(first.site),
                        takes(&here),
                        used.kind.as_str(),
                    ),
                );
            }
        }
    }
}

/// A state has at most one entry and one exit action, and each one can run: some edge
/// enters the state from another state (entry), or leaves it for another (exit).
fn check_state_actions(m: &Machine, cx: &mut Ctxt) {
    for (i, state) in m.states.iter().enumerate() {
        let lists: [(&str, &Vec<StateAction>); 2] =
            [("entry", &state.entry), ("exit", &state.exit)];
        for (which, actions) in lists {
            let Some(first) = actions.first() else {
                continue;
            };
            for again in &actions[1..] {
                cx.error_spanned_by(
                    &again.attr,
                    format!(
                        "state `{}` already has {which} action `{}`; a state has one {which} \
                         action, so call both from that method",
                        state.name, first.action
                    ),
                );
            }
            // A state no transition mentions is reported by `check_declarations`.
            if !m.complete || state.used_at.is_none() {
                continue;
            }
            let runs = m.edges.iter().any(|e| {
                e.from != e.to
                    && if which == "entry" {
                        e.to == i
                    } else {
                        e.from == i
                    }
            });
            if !runs {
                let never = if which == "entry" {
                    "no transition enters it from another state"
                } else {
                    "no transition leaves it for another state"
                };
                cx.error_spanned_by(
                    &first.action,
                    format!(
                        "{which} action `{}` of `{}` never runs: {never} (a self-loop runs no \
                         entry or exit action); remove it or make it an edge action",
                        first.action, state.name
                    ),
                );
            }
        }
    }
}

/// A parent is declared once and not inside itself, no state has a parent's name, and at
/// most one child of a parent is marked `*`.
fn check_hierarchy(m: &Machine, cx: &mut Ctxt) {
    for (p, parent) in m.parents.iter().enumerate() {
        for (again, within) in parent.declared.iter().skip(1) {
            let inside_itself =
                within.is_some_and(|w| w == p || m.ancestors(Node::Parent(w)).contains(&p));
            let message = if inside_itself {
                format!("parent `{again}` cannot contain itself; give the inner group another name")
            } else {
                format!(
                    "parent `{again}` is already declared; list all its states in the first \
                     `{again} {{ .. }}`"
                )
            };
            cx.error_spanned_by(again, message);
        }
        for leaf in &parent.leaf_clashes {
            cx.error_spanned_by(
                leaf,
                format!(
                    "`{leaf}` is a parent (`{leaf} {{ .. }}`), so it cannot also be a state; give \
                     the state another name"
                ),
            );
        }
        let Some((_, first)) = parent.initial_marks.first() else {
            continue;
        };
        for (star, child) in parent.initial_marks.iter().skip(1) {
            cx.error_spanned_by(
                quote!(#star #child),
                format!(
                    "parent `{}` already starts in `{first}`; one child is initial, remove this `*`",
                    parent.name
                ),
            );
        }
    }
}

/// A parent named where a state is entered (a line's target, `*Active`) has an initial
/// child, down to a leaf.
fn check_parent_targets(m: &Machine, cx: &mut Ctxt) {
    for (at, p) in &m.parent_targets {
        let mut parent = *p;
        for _ in 0..m.parents.len() {
            if m.parents[parent].initial_marks.is_empty() {
                let within = if parent == *p {
                    String::new()
                } else {
                    format!(" (its initial child `{}` has none)", m.parents[parent].name)
                };
                let example = match m.parents[parent].children.first() {
                    Some(&child) => format!(
                        ", as in `{} {{ *{}, .. }}`",
                        m.parents[parent].name,
                        m.node_name(child)
                    ),
                    None => String::new(),
                };
                cx.error_spanned_by(
                    at,
                    format!(
                        "`{at}` is a parent without an initial child{within}, so there is no \
                         state to enter; mark one child with `*`{example}, or name a state here"
                    ),
                );
                break;
            }
            match m.initial_child(parent) {
                Some(Node::Parent(inner)) => parent = inner,
                _ => break,
            }
        }
    }
}

/// A parent's entry and exit actions are single and can run: some edge enters it from
/// a state outside (entry), or leaves it for one (exit).
fn check_parent_actions(m: &Machine, cx: &mut Ctxt) {
    for (p, parent) in m.parents.iter().enumerate() {
        let lists: [(&str, &Vec<StateAction>); 2] =
            [("entry", &parent.entry), ("exit", &parent.exit)];
        for (which, actions) in lists {
            let Some(first) = actions.first() else {
                continue;
            };
            for again in &actions[1..] {
                cx.error_spanned_by(
                    &again.attr,
                    format!(
                        "parent `{}` already has {which} action `{}`; a parent has one {which} \
                         action, so call both from that method",
                        parent.name, first.action
                    ),
                );
            }
            if !m.complete {
                continue;
            }
            let runs = m.edges.iter().any(|e| {
                let (from, to) = (m.is_within(e.from, p), m.is_within(e.to, p));
                if which == "entry" {
                    to && !from
                } else {
                    from && !to
                }
            });
            if !runs {
                let never = if which == "entry" {
                    "no transition enters it from a state outside it"
                } else {
                    "no transition leaves it for a state outside it"
                };
                cx.error_spanned_by(
                    &first.action,
                    format!(
                        "{which} action `{}` of parent `{}` never runs: {never} (a move between \
                         its own states runs neither); remove it or make it an edge action",
                        first.action, parent.name
                    ),
                );
            }
        }
    }
}

/// A parent's line takes an event, not a timer, and adds at least one edge.
fn check_parent_lines(m: &Machine, cx: &mut Ctxt) {
    for (l, line) in m.parent_lines.iter().enumerate() {
        let parent = &m.parents[line.parent].name;
        if let Trigger::After(timer) = &line.on {
            cx.error_spanned_by(
                &timer.keyword,
                format!(
                    "a parent's edge takes an event, not a timer: a timer restarts in each \
                     state it is armed in; write it on the states in `{parent}`"
                ),
            );
        } else if line.edges.is_empty() && m.complete {
            let event = name(line.on.token());
            cx.error_spanned_by(
                &line.source,
                format!(
                    "`{}` adds no edge: every state in `{parent}` is `#[terminal]` or has its \
                     own `{event}` edge (or one from a nearer parent); remove it",
                    m.describe_parent_line(l)
                ),
            );
        }
    }
}

/// For one state and trigger, guarded edges come first and at most one is unguarded;
/// otherwise an edge can never be taken.
fn check_edges(m: &Machine, cx: &mut Ctxt) {
    // Two parent lines clash on every leaf they share; one error per pair of lines.
    let mut reported = Vec::new();
    for (i, edge) in m.edges.iter().enumerate() {
        let earlier = m.edges[..i]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.from == edge.from && e.on.same(&edge.on));
        for (j, other) in earlier {
            // Within one `A | A + E` line the repeated source is the mistake.
            let at = if other.line == edge.line {
                edge.source.clone()
            } else {
                edge.on.token().to_token_stream()
            };
            if let (Some(a), Some(b)) = (edge.parent_line, other.parent_line) {
                if reported.contains(&(a, b)) {
                    break;
                }
                reported.push((a, b));
            }
            if other.guard == edge.guard {
                let identical = other.to == edge.to && other.action == edge.action;
                let message = match (&edge.guard, identical) {
                    (_, true) => format!(
                        "duplicate edge: `{}` is already declared; remove this one",
                        m.describe(j)
                    ),
                    (None, false) => format!(
                        "nondeterministic transition: `{}` already leaves `{}` on the same \
                         trigger without a guard; add a guard to one of them or remove one",
                        m.describe(j),
                        name(&m.states[edge.from].name),
                    ),
                    (Some(guard), false) => format!(
                        "duplicate edge: `{}` already checks guard `{guard}`, so this edge can \
                         never be taken; give it another guard",
                        m.describe(j)
                    ),
                };
                cx.error_spanned_by(at, message);
                break;
            }
            if let (None, Some(guard)) = (&other.guard, &edge.guard) {
                cx.error_spanned_by(
                    guard,
                    format!(
                        "unreachable edge: the unguarded `{}` is declared first and always \
                         wins, so guard `{guard}` is never checked; move this edge above it",
                        m.describe(j)
                    ),
                );
                break;
            }
        }
    }
}

/// One wildcard per event, and each one adds at least one edge.
fn check_wildcards(m: &Machine, cx: &mut Ctxt) {
    for (i, w) in m.wildcards.iter().enumerate() {
        let event = name(w.on.token());
        if let Some(first) = m.wildcards[..i].iter().position(|o| o.on.same(&w.on)) {
            cx.error_spanned_by(
                w.underscore,
                format!(
                    "`{}` already covers every state without its own `{event}` edge; one \
                     wildcard per event, remove this one or write its edges per state",
                    m.describe_wildcard(first)
                ),
            );
        } else if w.edges.is_empty() && m.complete {
            let target = name(m.node_name(w.target));
            cx.error_spanned_by(
                w.underscore,
                format!(
                    "`{}` adds no edge: every state is terminal, is `{target}` itself, or has \
                     its own `{event}` edge; remove it",
                    m.describe_wildcard(i)
                ),
            );
        }
    }
}

/// A state marked `#[terminal]` has no outgoing edge, not even a timer.
fn check_terminal(m: &Machine, cx: &mut Ctxt) {
    for (i, state) in m.states.iter().enumerate() {
        if state.terminal_attr.is_none() {
            continue;
        }
        let state = &state.name;
        for edge in m.edges.iter().filter(|e| e.from == i) {
            match &edge.on {
                Trigger::After(timer) => cx.error_spanned_by(
                    &timer.keyword,
                    format!(
                        "`{state}` is marked `#[terminal]`, so it cannot have a timer; remove \
                         `#[terminal]` or this edge"
                    ),
                ),
                Trigger::Event { .. } => cx.error_spanned_by(
                    &edge.source,
                    format!(
                        "`{state}` is marked `#[terminal]`, so no edge may leave it; remove \
                         `#[terminal]` or this edge"
                    ),
                ),
            }
        }
    }
}

/// Every state is reachable from the initial state, over event and timer edges.
fn check_reachable(m: &Machine, cx: &mut Ctxt) {
    if !m.complete {
        return;
    }
    let Some(initial) = m.initial() else { return };
    // Entering a parent without an initial child is reported once, by
    // `check_parent_targets`; here it enters each of its states, against cascades.
    let entered = |target: Node, leaf: usize| match target {
        Node::Parent(p) if !m.has_initial_leaf(p) => {
            (0..m.states.len()).filter(|&s| m.is_within(s, p)).collect()
        }
        _ => vec![leaf],
    };
    let mut reached = vec![false; m.states.len()];
    let start = match m.initial_marks.first() {
        Some((_, name)) => match m.parents.iter().position(|p| p.name == *name) {
            Some(p) => entered(Node::Parent(p), initial),
            None => vec![initial],
        },
        None => vec![initial],
    };
    let mut queue = VecDeque::new();
    for s in start {
        reached[s] = true;
        queue.push_back(s);
    }
    while let Some(state) = queue.pop_front() {
        for edge in m.edges.iter().filter(|e| e.from == state) {
            for to in entered(edge.target, edge.to) {
                if !reached[to] {
                    reached[to] = true;
                    queue.push_back(to);
                }
            }
        }
    }
    let initial = &m.states[initial].name;
    for (state, _) in m.states.iter().zip(reached).filter(|(_, r)| !r) {
        // A state no transition mentions is reported by `check_declarations`.
        let Some(at) = &state.used_at else { continue };
        // The target of a wildcard that adds no edge: `check_wildcards` reports it.
        let barren_target = m
            .wildcards
            .iter()
            .any(|w| w.edges.is_empty() && m.states[w.to].name == state.name);
        if barren_target {
            continue;
        }
        cx.error_spanned_by(
            at,
            format!(
                "state `{at}` is unreachable: no path leads to it from the initial state \
                 `{initial}`; add a transition into it or remove its edges"
            ),
        );
    }
}

/// Edge and parent indices are `u16`.
fn check_size(m: &Machine, cx: &mut Ctxt) {
    if m.parents.len() > usize::from(u16::MAX) + 1 {
        cx.error_spanned_by(
            &m.name,
            format!("machine `{}` has more than 65536 parents; split it", m.name),
        );
    }
    if m.edges.len() > usize::from(u16::MAX) + 1 {
        cx.error_spanned_by(
            &m.name,
            format!("machine `{}` has more than 65536 edges; split it", m.name),
        );
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    use super::*;

    /// Every error of the whole front end (parse, then validate), as messages.
    fn errors(tokens: TokenStream) -> Vec<String> {
        let mut cx = Ctxt::new();
        let input = crate::parse::machine(tokens, &mut cx).expect("header parses");
        check(&Machine::from_input(&input), &mut cx);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn assert_one(tokens: TokenStream, starts_with: &str) {
        let errors = errors(tokens);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].starts_with(starts_with), "{errors:#?}");
    }

    #[test]
    fn a_well_formed_machine_has_no_errors() {
        let errors = errors(quote! {
            machine Order {
                context: OrderData,
                states { Created, #[terminal] Delivered }
                events { Pay }
                *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
                Created + Pay [other] => Paid,
                Created + Pay => Cancelled,
                Created | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
                Paid + Deliver => Delivered,
                Created + after(30 min) => Cancelled,
                Created + after(1 h) => Cancelled,
            }
        });
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn no_initial_state() {
        assert_one(
            quote!(machine M { A + E => B }),
            "machine `M` has no initial state",
        );
    }

    #[test]
    fn several_initial_states() {
        assert_one(
            quote!(machine M { *A + E => B, *B + E => A }),
            "several initial states: `A` is already marked `*`",
        );
        assert_one(
            quote!(machine M { *A + E => B, *A + F => B }),
            "`A` is already marked as the initial state",
        );
    }

    #[test]
    fn duplicate_edge() {
        assert_one(
            quote!(machine M { *A + E => B, A + E => B }),
            "duplicate edge: `A + E => B`",
        );
        assert_one(quote!(machine M { *A | A + E => B }), "duplicate edge");
        assert_one(
            quote!(machine M { *A + E [g] => B, A + E [g] => C }),
            "duplicate edge: `A + E [g] => B` already checks guard `g`",
        );
        assert_one(
            quote!(machine M { *A + after(60 s) => B, A + after(1 min) => B }),
            "duplicate edge",
        );
    }

    #[test]
    fn nondeterministic_unguarded_edges() {
        assert_one(
            quote!(machine M { *A + E => B, A + E => C }),
            "nondeterministic transition: `A + E => B` already leaves `A`",
        );
    }

    #[test]
    fn unguarded_before_guarded() {
        assert_one(
            quote!(machine M { *A + E => B, A + E [g] => C }),
            "unreachable edge: the unguarded `A + E => B` is declared first",
        );
    }

    #[test]
    fn unreachable_state() {
        assert_one(
            quote!(machine M { *A + E => B, C + E => A }),
            "state `C` is unreachable",
        );
    }

    #[test]
    fn timers_count_for_reachability() {
        assert!(errors(quote!(machine M { *A + after(1 s) => B, B + E => C })).is_empty());
    }

    #[test]
    fn conflicting_payload_types() {
        assert_one(
            quote!(machine M { *A + E(X) => B, B + E(Y) => C, C + E => D, D + E(X) => A }),
            "event `E` already carries `X`, not `Y`",
        );
    }

    #[test]
    fn terminal_states_have_no_edges() {
        assert_one(
            quote!(machine M { states { #[terminal] B } *A + E => B, B + after(1 s) => A }),
            "`B` is marked `#[terminal]`, so it cannot have a timer",
        );
        assert_one(
            quote!(machine M { states { #[terminal] B } *A + E => B, B + F => A }),
            "`B` is marked `#[terminal]`, so no edge may leave it",
        );
    }

    #[test]
    fn rules_have_one_kind_and_one_payload() {
        assert_one(
            quote!(machine M { *A + E(X) [g] => B, B + F(Y) [g] => A }),
            "guard `g` takes `&X` on `A + E [g] => B` but would take `&Y` here",
        );
        assert_one(
            quote!(machine M { *A + E [g] => B, B + after(1 s) / g => A }),
            "`g` is already the guard of `A + E [g] => B`",
        );
        assert!(errors(quote!(machine M { *A + E(X) / a => B, B + E / a => A })).is_empty());
    }

    #[test]
    fn wildcards_add_edges_and_explicit_edges_win() {
        let m = {
            let mut cx = Ctxt::new();
            let input = crate::parse::machine(
                quote!(machine M {
                    *A + E => B,
                    B + F => C,
                    _ + Cancel => X,
                    B + Cancel [late] => C,
                    C + Done => D,
                }),
                &mut cx,
            )
            .unwrap();
            Machine::from_input(&input)
        };
        let from: Vec<String> = m.wildcards[0]
            .edges
            .iter()
            .map(|&e| name(&m.states[m.edges[e].from].name))
            .collect();
        // B has its own (guarded) Cancel edge; D and X are terminal.
        assert_eq!(from, ["A", "C"]);
        assert_eq!(
            m.describe(m.wildcards[0].edges[0]),
            "A + Cancel => X (from `_`)"
        );
    }

    #[test]
    fn wildcard_checks() {
        assert_one(
            quote!(machine M { *A + E => B, A + Cancel => C, _ + Cancel => C }),
            "`_ + Cancel => C` adds no edge",
        );
        assert_one(
            quote!(machine M { *A + E => B, B + F => A, _ + Cancel => C, _ + Cancel => D }),
            "`_ + Cancel => C` already covers every state without its own `Cancel` edge",
        );
        assert!(
            errors(quote!(machine M { *A + E => B, B + F => A, _ + Cancel [g] / a => C }))
                .is_empty()
        );
    }

    #[test]
    fn state_actions_are_single_and_can_run() {
        assert!(errors(quote! {
            machine M { states { #[exit(leave)] A, #[entry(arrive)] B } *A + E => B, B + F => A }
        })
        .is_empty());
        assert_one(
            quote!(machine M { states { #[entry(a)] #[entry(b)] B } *A + E => B }),
            "state `B` already has entry action `a`",
        );
        assert_one(
            quote!(machine M { states { #[exit(a)] B } *A + E => B }),
            "exit action `a` of `B` never runs: no transition leaves it",
        );
        assert_one(
            quote!(machine M { states { #[entry(a)] A } *A + E => A }),
            "entry action `a` of `A` never runs: no transition enters it",
        );
        assert_one(
            quote!(machine M { states { #[entry(g)] B } *A + E [g] => B }),
            "`g` is already the guard of `A + E [g] => B`",
        );
        assert_one(
            quote!(machine M { states { #[entry(a)] B } *A + E(X) / a => B }),
            "action `a` takes `&X` on `A + E / a => B` but would take no payload here",
        );
        assert!(
            errors(quote! {
                machine M { states { #[entry(a)] B } *A + E / a => B, B + F => A }
            })
            .is_empty()
        );
        // An action on a state no transition uses: that is the one mistake reported.
        assert_one(
            quote!(machine M { states { #[entry(a)] Lost } *A + E => B }),
            "state `Lost` is declared in `states { }` but no transition uses it",
        );
    }

    fn composite(tokens: TokenStream) -> Machine {
        let mut cx = Ctxt::new();
        let input = crate::parse::machine(tokens, &mut cx).unwrap();
        Machine::from_input(&input)
    }

    fn edges_of(m: &Machine) -> Vec<String> {
        (0..m.edges.len()).map(|e| m.describe(e)).collect()
    }

    #[test]
    fn a_parent_edge_applies_to_each_child_without_its_own() {
        let m = composite(quote!(machine M {
            states { Active { *Paid, Packed, #[terminal] Lost } }
            *Created + Pay => Active,
            Paid + Pack => Packed,
            Packed + Cancel [late] => Kept,
            Active + Cancel => Cancelled,
            Paid + Lose => Lost,
        }));
        assert_eq!(
            edges_of(&m),
            [
                "Created + Pay => Active",
                "Paid + Pack => Packed",
                "Packed + Cancel [late] => Kept",
                "Paid + Lose => Lost",
                // Packed has its own (guarded) Cancel edge; Lost is terminal.
                "Paid + Cancel => Cancelled (from `Active`)",
            ]
        );
        assert_eq!(m.edges[0].to, 0, "the edge into Active enters Paid");
        assert!(
            errors(quote!(machine M {
                states { Active { *Paid, Packed, #[terminal] Lost } }
                *Created + Pay => Active,
                Paid + Pack => Packed,
                Packed + Cancel [late] => Kept,
                Active + Cancel => Cancelled,
                Paid + Lose => Lost,
            }))
            .is_empty()
        );
    }

    #[test]
    fn a_nearer_parent_wins_and_targets_resolve_down_to_a_leaf() {
        let m = composite(quote!(machine M {
            states { Outer { *Inner { *A, B }, C } }
            *Start + Go => Outer,
            A + Next => B,
            B + Next => C,
            Inner + Stop => Halted,
            Outer + Stop => Cancelled,
        }));
        assert_eq!(m.initial(), Some(3));
        let edges = edges_of(&m);
        assert!(
            edges.contains(&"A + Stop => Halted (from `Inner`)".to_owned()),
            "{edges:#?}"
        );
        assert!(edges.contains(&"B + Stop => Halted (from `Inner`)".to_owned()));
        assert!(edges.contains(&"C + Stop => Cancelled (from `Outer`)".to_owned()));
        assert_eq!(edges.len(), 6, "{edges:#?}");
        let d = m.definition();
        assert_eq!(d.state("A").unwrap().parent, Some("Inner"));
        assert_eq!(d.parent("Inner").unwrap().parent, Some("Outer"));
        assert!(d.is_within("A", "Outer"));
        assert_eq!(d.edges[0].to, "A");
        assert_eq!(d.edges[0].to_parent, Some("Outer"));
        // Parents are not states: the generated enum has the leaves only.
        assert!(d.state("Outer").is_none());
    }

    #[test]
    fn a_machine_may_start_in_a_parent() {
        let m = composite(quote!(machine M {
            states { Active { Open, *Idle } }
            *Active + Close => Closed,
            Idle + Use => Open,
        }));
        assert_eq!(m.definition().initial().name, "Idle");
        assert_one(
            quote!(machine M { states { Active { Open, Idle } } *Active + Close => Closed, Idle + Use => Open }),
            "`Active` is a parent without an initial child",
        );
    }

    #[test]
    fn parent_checks() {
        assert_one(
            quote!(machine M { states { Active { Paid, Sent } } *A + E => Active, Paid + F => Sent }),
            "`Active` is a parent without an initial child, so there is no state to enter; \
             mark one child with `*`, as in `Active { *Paid, .. }`",
        );
        assert_one(
            quote!(machine M { states { O { *I { A }, B } } *S + E => O, A + F => B }),
            "`O` is a parent without an initial child (its initial child `I` has none)",
        );
        assert_one(
            quote!(machine M { states { P { *A, *B } } *S + E => P, A + F => B }),
            "parent `P` already starts in `A`",
        );
        assert_one(
            quote!(machine M { states { P { *A }, P { B } } *S + E => P, A + F => B }),
            "parent `P` is already declared",
        );
        assert_one(
            quote!(machine M { states { P { *A, Q { P { B } } } } *S + E => P, A + F => B }),
            "parent `P` cannot contain itself",
        );
        assert_one(
            quote!(machine M { states { P { *A }, P } *S + E => P, A + F => B }),
            "`P` is a parent (`P { .. }`), so it cannot also be a state",
        );
        assert_one(
            quote!(machine M { states { P { *A, B } } *S + E => P, A + F => B, P + after(1 s) => S }),
            "a parent's edge takes an event, not a timer",
        );
        assert_one(
            quote!(machine M { states { P { *A, B } } *S + E => P, A + G => B, A | B + F => S, P + F => S }),
            "`P + F => S` adds no edge: every state in `P`",
        );
        assert_one(
            quote!(machine M { states { P { *A, B } } *S + E => P, A + F => B, P + G => S, P + G => T }),
            "nondeterministic transition: `A + G => S (from `P`)` already leaves `A`",
        );
    }

    #[test]
    fn parent_actions_run_only_across_its_boundary() {
        assert!(
            errors(quote!(machine M {
                states { #[entry(open)] #[exit(close)] P { *A, B } }
                *S + E => P, A + F => B, P + G => S,
            }))
            .is_empty()
        );
        assert_one(
            quote!(machine M { states { #[exit(close)] P { *A, B } } *S + E => P, A + F => B }),
            "exit action `close` of parent `P` never runs",
        );
        assert_one(
            quote!(machine M {
                states { #[entry(a)] #[entry(b)] P { *A, B } }
                *S + E => P, A + F => B, B + G => S,
            }),
            "parent `P` already has entry action `a`",
        );
    }

    #[test]
    fn declarations_are_used_and_unique() {
        let errors = errors(quote! {
            machine M {
                context: A, context: B,
                states { A, A, Lost }
                events { Gone }
                states { B }
                *A + E => B,
            }
        });
        assert_eq!(
            errors,
            [
                "`context` is declared twice; keep one",
                "`states { }` is declared twice; list everything in the first one",
                "state `A` is listed twice in `states { }`; remove one",
                "state `Lost` is declared in `states { }` but no transition uses it; add a transition or remove it",
                "event `Gone` is declared in `events { }` but no transition uses it; add a transition or remove it",
            ]
        );
    }

    #[test]
    fn graph_checks_wait_for_a_complete_parse() {
        // The broken line might have been the initial state or the edge into `C`.
        let errors = errors(quote!(machine M { A + E => B, B + E => C, contxt: X }));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].starts_with("unknown keyword `contxt`"));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = errors(quote! {
            machine M {
                *A + E(X) => B,
                *B + E(Y) => C,
                A + E => B,
                A + F => D,
                Z + F => A,
            }
        });
        assert_eq!(errors.len(), 4, "{errors:#?}");
    }
}
