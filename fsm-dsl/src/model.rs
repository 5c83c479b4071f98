//! The machine as a graph: states, events, edges and rules, indexed and in order of
//! first appearance.
//!
//! Building the model never fails: where the input contradicts itself (two payload types
//! for one event, two initial states) the first occurrence wins and every occurrence is
//! kept, so [`validate`](crate::validate) can point at the offending one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fsm_core::{Definition, Edge as EdgeInfo, EventInfo, On, ParentInfo, StateInfo};
use proc_macro2::{Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Attribute, Expr, ExprLit, Ident, Lit, Meta, Token, Type, Visibility};

use crate::parse::{
    self, Block, Entry, Item, KeyValue, MachineInput, StateAction, Timer, Transition,
};

#[derive(Debug)]
pub struct Machine {
    pub docs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    /// Every `context:` key, in order; the first one counts.
    pub contexts: Vec<KeyValue>,
    /// Every `effect:` key, in order; the first one counts.
    pub effects: Vec<KeyValue>,
    /// The keyword of every `states { }` / `events { }` block, in order.
    pub blocks: Vec<Ident>,
    /// The leaves: the generated state enum's variants.
    pub states: Vec<State>,
    /// Parents (composite states) in order of first appearance.
    pub parents: Vec<Parent>,
    pub events: Vec<Event>,
    pub edges: Vec<Edge>,
    /// Every `*` with the state it marks, in order; the first one counts.
    pub initial_marks: Vec<(Token![*], Ident)>,
    /// Guards and actions in order of first use, one per name.
    pub rules: Vec<Rule>,
    /// Every wildcard line `_ + Event => Target`, in order.
    pub wildcards: Vec<Wildcard>,
    /// Every source of a line that names a parent (`Active + Cancel => Cancelled`).
    pub parent_lines: Vec<ParentLine>,
    /// Every place a parent is named where a state must be entered: a line's target, or
    /// the machine's initial state `*Active`, with the parent.
    pub parent_targets: Vec<(Ident, usize)>,
    /// Whether every item parsed (see [`MachineInput::complete`]).
    pub complete: bool,
    /// Names declared as `Name { .. }` somewhere, while building.
    parent_names: HashSet<String>,
}

fn collect_parent_names(entries: &[Entry], names: &mut HashSet<String>) {
    for entry in entries {
        if let Some(children) = &entry.children {
            names.insert(name(&entry.name));
            collect_parent_names(children, names);
        }
    }
}

#[derive(Debug)]
pub struct State {
    /// The first occurrence anywhere; the generated variant.
    pub name: Ident,
    /// The first occurrence in a transition.
    pub used_at: Option<Ident>,
    /// Every entry in `states { }`.
    pub declared: Vec<Ident>,
    pub docs: Vec<Attribute>,
    pub terminal_attr: Option<Attribute>,
    /// Former stored names, from `#[renamed_from(..)]`.
    pub renamed_from: Vec<Ident>,
    /// Every `#[entry(..)]` of its declaration; the first one counts.
    pub entry: Vec<StateAction>,
    /// Every `#[exit(..)]` of its declaration; the first one counts.
    pub exit: Vec<StateAction>,
    /// The parent of its first declaration.
    pub parent: Option<usize>,
}

/// A parent (composite) state: `Active { *Paid, Shipped }` in `states { }`.
#[derive(Debug)]
pub struct Parent {
    /// The first occurrence anywhere.
    pub name: Ident,
    /// The first occurrence in a transition.
    pub used_at: Option<Ident>,
    /// Every `Name { .. }` declaration, with the parent it is written in.
    pub declared: Vec<(Ident, Option<usize>)>,
    /// Every plain (leaf) entry that has this parent's name.
    pub leaf_clashes: Vec<Ident>,
    pub docs: Vec<Attribute>,
    pub entry: Vec<StateAction>,
    pub exit: Vec<StateAction>,
    /// The parent of its first declaration.
    pub parent: Option<usize>,
    /// Its children in declaration order, from every declaration.
    pub children: Vec<Node>,
    /// Every `*` on a child, with the child; the first one counts.
    pub initial_marks: Vec<(Token![*], Ident)>,
}

impl Parent {
    pub fn entry(&self) -> Option<&Ident> {
        self.entry.first().map(|a| &a.action)
    }

    pub fn exit(&self) -> Option<&Ident> {
        self.exit.first().map(|a| &a.action)
    }
}

/// A name in `states { }` or on a line: a leaf (index in [`Machine::states`]) or a
/// parent (index in [`Machine::parents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    State(usize),
    Parent(usize),
}

/// One source of a line that names a parent: `Active + Cancel [guard] / action =>
/// Target` expands to one edge per leaf under `Active` that is not `#[terminal]` and has
/// no edge of its own on the trigger, nor one from a nearer parent.
#[derive(Debug)]
pub struct ParentLine {
    pub parent: usize,
    /// The parent's name as written on the line.
    pub source: Ident,
    pub line: usize,
    pub on: Trigger,
    pub guard: Option<Ident>,
    pub action: Option<Ident>,
    pub target: Node,
    /// The leaf `target` resolves to.
    pub to: usize,
    /// Indices of the edges it generated.
    pub edges: Vec<usize>,
}

impl State {
    /// The entry action, if declared.
    pub fn entry(&self) -> Option<&Ident> {
        self.entry.first().map(|a| &a.action)
    }

    /// The exit action, if declared.
    pub fn exit(&self) -> Option<&Ident> {
        self.exit.first().map(|a| &a.action)
    }
}

#[derive(Debug)]
pub struct Event {
    pub name: Ident,
    pub used_at: Option<Ident>,
    pub declared: Vec<Ident>,
    pub docs: Vec<Attribute>,
    /// Every payload type written for this event, in order; the first one counts.
    pub payloads: Vec<Type>,
    /// Former recorded names, from `#[renamed_from(..)]`.
    pub renamed_from: Vec<Ident>,
}

impl Event {
    pub fn payload(&self) -> Option<&Type> {
        self.payloads.first()
    }
}

/// One edge; an `A | B + E` line contributes one per source.
#[derive(Debug)]
pub struct Edge {
    /// Index of the transition line the edge comes from.
    pub line: usize,
    pub from: usize,
    /// The source state as written on this line (`_` for a wildcard's edge).
    pub source: TokenStream,
    pub on: Trigger,
    pub guard: Option<Ident>,
    pub action: Option<Ident>,
    /// The leaf the edge enters: the target itself, or a parent target's initial leaf.
    pub to: usize,
    /// The target as written.
    pub target: Node,
    /// The wildcard line (index in [`Machine::wildcards`]) that generated this edge.
    pub wildcard: Option<usize>,
    /// The parent line (index in [`Machine::parent_lines`]) that generated this edge.
    pub parent_line: Option<usize>,
}

/// `_ + Event [guard] / action => Target`: expands to one edge per state that is not
/// terminal, is not the target, and has no edge of its own on the event.
#[derive(Debug)]
pub struct Wildcard {
    pub underscore: Token![_],
    pub line: usize,
    pub on: Trigger,
    pub guard: Option<Ident>,
    pub action: Option<Ident>,
    pub target: Node,
    /// The leaf `target` resolves to.
    pub to: usize,
    /// Indices of the edges it generated (none for a second wildcard on one event).
    pub edges: Vec<usize>,
}

/// What fires an edge, resolved to indices.
#[derive(Debug, Clone)]
pub enum Trigger {
    Event { event: usize, name: Ident },
    After(Timer),
}

impl Trigger {
    /// The token an error about this edge's trigger underlines.
    pub fn token(&self) -> &Ident {
        match self {
            Trigger::Event { name, .. } => name,
            Trigger::After(timer) => &timer.keyword,
        }
    }

    /// Whether two edges fire on the same thing.
    pub fn same(&self, other: &Trigger) -> bool {
        match (self, other) {
            (Trigger::Event { event: a, .. }, Trigger::Event { event: b, .. }) => a == b,
            (Trigger::After(a), Trigger::After(b)) => a.millis == b.millis,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Guard,
    Action,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Guard => "guard",
            RuleKind::Action => "action",
        }
    }
}

/// A named guard or action: one method of the generated rules trait.
#[derive(Debug)]
pub struct Rule {
    /// The first use; the method's name.
    pub name: Ident,
    pub kind: RuleKind,
    /// Every use, in edge order; the first one fixes the kind and the payload.
    pub uses: Vec<RuleUse>,
}

/// Where a rule is named: on an edge, or as a state's entry or exit action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Edge(usize),
    Entry(usize),
    Exit(usize),
    /// A parent's `#[entry(..)]`.
    ParentEntry(usize),
    /// A parent's `#[exit(..)]`.
    ParentExit(usize),
}

#[derive(Debug)]
pub struct RuleUse {
    pub site: Site,
    pub name: Ident,
    pub kind: RuleKind,
}

impl Machine {
    pub fn from_input(input: &MachineInput) -> Machine {
        let mut machine = Machine {
            docs: input.docs.clone(),
            vis: input.vis.clone(),
            name: input.name.clone(),
            contexts: Vec::new(),
            effects: Vec::new(),
            blocks: Vec::new(),
            states: Vec::new(),
            parents: Vec::new(),
            events: Vec::new(),
            edges: Vec::new(),
            initial_marks: Vec::new(),
            rules: Vec::new(),
            wildcards: Vec::new(),
            parent_lines: Vec::new(),
            parent_targets: Vec::new(),
            complete: input.complete,
            parent_names: HashSet::new(),
        };
        // A name is a parent wherever it is written once it is declared with braces.
        for item in &input.items {
            if let Item::States(block) = item {
                collect_parent_names(&block.entries, &mut machine.parent_names);
            }
        }
        let mut line = 0;
        for item in &input.items {
            match item {
                Item::Context(kv) => machine.contexts.push(kv.clone()),
                Item::Effect(kv) => machine.effects.push(kv.clone()),
                Item::States(block) => machine.declare_states(block),
                Item::Events(block) => machine.declare_events(block),
                Item::Transition(t) => {
                    machine.add_transition(t, line);
                    line += 1;
                }
            }
        }
        machine.resolve_targets();
        machine.expand_parent_lines();
        machine.expand_wildcards();
        machine.collect_rules();
        machine
    }

    /// The leaf a node enters: itself, or a parent's initial child down to a leaf (its
    /// first child where none is marked, which `validate` reports). `None` only for a
    /// parent without children, which parsing never yields.
    pub fn resolve(&self, node: Node) -> Option<usize> {
        let mut node = node;
        // A cycle cannot be declared (a parent's first declaration fixes its place).
        for _ in 0..=self.parents.len() {
            match node {
                Node::State(s) => return Some(s),
                Node::Parent(p) => node = self.initial_child(p)?,
            }
        }
        None
    }

    /// Whether parent `p` has a child marked `*`, and so on down to a leaf.
    pub fn has_initial_leaf(&self, p: usize) -> bool {
        let mut parent = p;
        for _ in 0..=self.parents.len() {
            if self.parents[parent].initial_marks.is_empty() {
                return false;
            }
            match self.initial_child(parent) {
                Some(Node::Parent(inner)) => parent = inner,
                Some(Node::State(_)) => return true,
                None => return false,
            }
        }
        false
    }

    /// The child of parent `p` marked `*`, else its first child.
    pub fn initial_child(&self, p: usize) -> Option<Node> {
        let parent = &self.parents[p];
        let marked = parent.initial_marks.first().and_then(|(_, child)| {
            parent
                .children
                .iter()
                .copied()
                .find(|&c| self.node_name(c) == child)
        });
        marked.or_else(|| parent.children.first().copied())
    }

    /// The identifier a node was first written as.
    pub fn node_name(&self, node: Node) -> &Ident {
        match node {
            Node::State(s) => &self.states[s].name,
            Node::Parent(p) => &self.parents[p].name,
        }
    }

    /// The parents around a leaf or a parent, nearest first.
    pub fn ancestors(&self, node: Node) -> Vec<usize> {
        let mut next = match node {
            Node::State(s) => self.states[s].parent,
            Node::Parent(p) => self.parents[p].parent,
        };
        let mut out = Vec::new();
        while let Some(p) = next {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            next = self.parents[p].parent;
        }
        out
    }

    /// Whether leaf `state` is grouped under parent `p`, at any depth.
    pub fn is_within(&self, state: usize, p: usize) -> bool {
        self.ancestors(Node::State(state)).contains(&p)
    }

    /// Sets each edge's and line's leaf target, now that every parent's children are
    /// known; a leaf entered only through its parent counts as used there.
    fn resolve_targets(&mut self) {
        let fallback = |m: &Machine, node: Node| m.resolve(node).unwrap_or(0);
        for e in 0..self.edges.len() {
            self.edges[e].to = fallback(self, self.edges[e].target);
        }
        for l in 0..self.parent_lines.len() {
            self.parent_lines[l].to = fallback(self, self.parent_lines[l].target);
        }
        for w in 0..self.wildcards.len() {
            self.wildcards[w].to = fallback(self, self.wildcards[w].target);
        }
        let entered: Vec<usize> = self
            .parent_targets
            .iter()
            .filter_map(|(_, p)| self.resolve(Node::Parent(*p)))
            .collect();
        for s in entered {
            self.mark_used(s);
        }
    }

    /// A leaf that a parent's line or target involves is used by a transition, though
    /// none names it: errors about it point at its declaration.
    fn mark_used(&mut self, s: usize) {
        let state = &mut self.states[s];
        if state.used_at.is_none() {
            state.used_at = state.declared.first().cloned();
        }
    }

    /// Adds the edges of each parent line, after every explicit edge is known: one per
    /// leaf under the parent that is not `#[terminal]`, has no explicit edge on the
    /// trigger, and is not under a nearer parent with a line on the trigger.
    fn expand_parent_lines(&mut self) {
        let explicit = self.edges.len();
        for l in 0..self.parent_lines.len() {
            let mut added = Vec::new();
            for s in 0..self.states.len() {
                let line = &self.parent_lines[l];
                let ancestors = self.ancestors(Node::State(s));
                let Some(depth) = ancestors.iter().position(|&p| p == line.parent) else {
                    continue;
                };
                let own = self.edges[..explicit]
                    .iter()
                    .any(|e| e.from == s && e.on.same(&line.on));
                let nearer = self.parent_lines.iter().any(|other| {
                    ancestors[..depth].contains(&other.parent) && other.on.same(&line.on)
                });
                if self.states[s].terminal_attr.is_some() || own || nearer {
                    continue;
                }
                added.push(self.edges.len());
                self.edges.push(Edge {
                    line: line.line,
                    from: s,
                    source: line.source.to_token_stream(),
                    on: line.on.clone(),
                    guard: line.guard.clone(),
                    action: line.action.clone(),
                    to: line.to,
                    target: line.target,
                    wildcard: None,
                    parent_line: Some(l),
                });
                self.mark_used(s);
            }
            self.parent_lines[l].edges = added;
        }
    }

    /// Adds the edges of each wildcard line, after every explicit edge is known: one per
    /// state that is not terminal (marked, or without explicit outgoing edge), is not
    /// the target and has no explicit edge on the event. Explicit edges win wherever
    /// they are written, and so do those of parent lines; a second wildcard on one event
    /// adds nothing (an error).
    fn expand_wildcards(&mut self) {
        let explicit = self.edges.len();
        let terminal: Vec<bool> = (0..self.states.len())
            .map(|s| {
                self.states[s].terminal_attr.is_some()
                    || !self.edges[..explicit].iter().any(|e| e.from == s)
            })
            .collect();
        for w in 0..self.wildcards.len() {
            let wildcard = &self.wildcards[w];
            if self.wildcards[..w].iter().any(|o| o.on.same(&wildcard.on)) {
                continue;
            }
            let mut added = Vec::new();
            for (s, _) in terminal.iter().enumerate().filter(|(_, t)| !**t) {
                let own = self.edges[..explicit]
                    .iter()
                    .any(|e| e.from == s && e.on.same(&wildcard.on));
                if s == wildcard.to || own {
                    continue;
                }
                added.push(self.edges.len());
                let underscore = wildcard.underscore;
                self.edges.push(Edge {
                    line: wildcard.line,
                    from: s,
                    source: quote::quote!(#underscore),
                    on: wildcard.on.clone(),
                    guard: wildcard.guard.clone(),
                    action: wildcard.action.clone(),
                    to: wildcard.to,
                    target: wildcard.target,
                    wildcard: Some(w),
                    parent_line: None,
                });
            }
            self.wildcards[w].edges = added;
        }
    }

    /// Adds one edge per source of line number `line`; a wildcard line is kept for
    /// [`Machine::expand_wildcards`].
    fn add_transition(&mut self, t: &Transition, line: usize) {
        let sources: Vec<Node> = t.sources.iter().map(|s| self.use_node(s)).collect();
        if let (Some(star), Some(first)) = (t.initial, t.sources.first()) {
            self.initial_marks.push((star, first.clone()));
        }
        let on = match &t.trigger {
            parse::Trigger::Event { name, payload } => {
                let event = self.use_event(name);
                self.events[event]
                    .payloads
                    .extend(payload.as_deref().cloned());
                Trigger::Event {
                    event,
                    name: name.clone(),
                }
            }
            parse::Trigger::After(timer) => Trigger::After(timer.clone()),
        };
        let target = self.use_node(&t.target);
        if let Node::Parent(p) = target {
            self.parent_targets.push((t.target.clone(), p));
        }
        if let (Some(_), Some(first), Some(Node::Parent(p))) =
            (t.initial, t.sources.first(), sources.first())
        {
            self.parent_targets.push((first.clone(), *p));
        }
        // Leaf targets are set once every parent's children are known.
        let to = 0;
        if let Some(underscore) = t.wildcard {
            self.wildcards.push(Wildcard {
                underscore,
                line,
                on,
                guard: t.guard.clone(),
                action: t.action.clone(),
                target,
                to,
                edges: Vec::new(),
            });
            return;
        }
        for (source, from) in t.sources.iter().zip(sources) {
            match from {
                Node::State(from) => self.edges.push(Edge {
                    line,
                    from,
                    source: source.to_token_stream(),
                    on: on.clone(),
                    guard: t.guard.clone(),
                    action: t.action.clone(),
                    to,
                    target,
                    wildcard: None,
                    parent_line: None,
                }),
                Node::Parent(parent) => self.parent_lines.push(ParentLine {
                    parent,
                    source: source.clone(),
                    line,
                    on: on.clone(),
                    guard: t.guard.clone(),
                    action: t.action.clone(),
                    target,
                    to,
                    edges: Vec::new(),
                }),
            }
        }
    }

    fn state_index(&mut self, name: &Ident) -> usize {
        if let Some(i) = self.states.iter().position(|s| s.name == *name) {
            return i;
        }
        self.states.push(State {
            name: name.clone(),
            used_at: None,
            declared: Vec::new(),
            docs: Vec::new(),
            terminal_attr: None,
            renamed_from: Vec::new(),
            entry: Vec::new(),
            exit: Vec::new(),
            parent: None,
        });
        self.states.len() - 1
    }

    fn parent_index(&mut self, name: &Ident) -> usize {
        if let Some(i) = self.parents.iter().position(|p| p.name == *name) {
            return i;
        }
        self.parents.push(Parent {
            name: name.clone(),
            used_at: None,
            declared: Vec::new(),
            leaf_clashes: Vec::new(),
            docs: Vec::new(),
            entry: Vec::new(),
            exit: Vec::new(),
            parent: None,
            children: Vec::new(),
            initial_marks: Vec::new(),
        });
        self.parents.len() - 1
    }

    /// A name on a transition line: a parent if declared as one, else a state.
    fn use_node(&mut self, name: &Ident) -> Node {
        if self.parent_names.contains(&self::name(name)) {
            let p = self.parent_index(name);
            self.parents[p].used_at.get_or_insert_with(|| name.clone());
            return Node::Parent(p);
        }
        let i = self.state_index(name);
        self.states[i].used_at.get_or_insert_with(|| name.clone());
        Node::State(i)
    }

    fn event_index(&mut self, name: &Ident) -> usize {
        if let Some(i) = self.events.iter().position(|e| e.name == *name) {
            return i;
        }
        self.events.push(Event {
            name: name.clone(),
            used_at: None,
            declared: Vec::new(),
            docs: Vec::new(),
            payloads: Vec::new(),
            renamed_from: Vec::new(),
        });
        self.events.len() - 1
    }

    fn use_event(&mut self, name: &Ident) -> usize {
        let i = self.event_index(name);
        self.events[i].used_at.get_or_insert_with(|| name.clone());
        i
    }

    fn declare_states(&mut self, block: &Block) {
        self.blocks.push(block.keyword.clone());
        self.declare_entries(&block.entries, None, true);
    }

    /// Declares the entries of `states { }` or of a parent's braces (`within`). A
    /// parent's place and initial child come from its first declaration; a later one
    /// (`first` false, an error) only adds children, so a parent written inside itself
    /// (the only cycle braces can express) is a second declaration, never a loop.
    fn declare_entries(&mut self, entries: &[Entry], within: Option<usize>, first: bool) {
        for entry in entries {
            let node = if let Some(children) = &entry.children {
                let p = self.parent_index(&entry.name);
                let parent = &mut self.parents[p];
                if parent.declared.is_empty() {
                    parent.docs = entry.docs.clone();
                    parent.entry = entry.entry.clone();
                    parent.exit = entry.exit.clone();
                    parent.parent = within;
                }
                parent.declared.push((entry.name.clone(), within));
                let first = parent.declared.len() == 1;
                self.declare_entries(children, Some(p), first);
                Some(Node::Parent(p))
            } else if self.parent_names.contains(&name(&entry.name)) {
                let p = self.parent_index(&entry.name);
                self.parents[p].leaf_clashes.push(entry.name.clone());
                None
            } else {
                let i = self.state_index(&entry.name);
                let state = &mut self.states[i];
                if state.declared.is_empty() {
                    state.docs = entry.docs.clone();
                    state.terminal_attr = entry.terminal.clone();
                    state.renamed_from = entry.renamed_from.clone();
                    state.entry = entry.entry.clone();
                    state.exit = entry.exit.clone();
                    state.parent = within;
                }
                state.declared.push(entry.name.clone());
                Some(Node::State(i))
            };
            let Some(p) = within else { continue };
            if let (Some(star), true) = (entry.initial, first) {
                self.parents[p]
                    .initial_marks
                    .push((star, entry.name.clone()));
            }
            // A child is listed once, however often it is declared.
            if let Some(node) = node
                && !self.parents[p].children.contains(&node)
                && !self.declared_elsewhere(node, p)
            {
                self.parents[p].children.push(node);
            }
        }
    }

    /// Whether `node` already belongs to a parent other than `p`.
    fn declared_elsewhere(&self, node: Node, p: usize) -> bool {
        let first = match node {
            Node::State(s) => self.states[s].parent,
            Node::Parent(q) => self.parents[q].parent,
        };
        first != Some(p)
    }

    fn declare_events(&mut self, block: &Block) {
        self.blocks.push(block.keyword.clone());
        for entry in &block.entries {
            let i = self.event_index(&entry.name);
            let event = &mut self.events[i];
            if event.declared.is_empty() {
                event.docs = entry.docs.clone();
                event.renamed_from = entry.renamed_from.clone();
            }
            event.declared.push(entry.name.clone());
        }
    }

    /// Edge guards and actions first, in edge order, then entry and exit actions in
    /// state order, then those of parents.
    fn collect_rules(&mut self) {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let edge_rules = self.edges.iter().enumerate().flat_map(|(edge, e)| {
            [
                (Site::Edge(edge), e.guard.clone(), RuleKind::Guard),
                (Site::Edge(edge), e.action.clone(), RuleKind::Action),
            ]
        });
        let state_rules = self.states.iter().enumerate().flat_map(|(i, s)| {
            [
                (Site::Exit(i), s.exit().cloned(), RuleKind::Action),
                (Site::Entry(i), s.entry().cloned(), RuleKind::Action),
            ]
        });
        let parent_rules = self.parents.iter().enumerate().flat_map(|(i, p)| {
            [
                (Site::ParentExit(i), p.exit().cloned(), RuleKind::Action),
                (Site::ParentEntry(i), p.entry().cloned(), RuleKind::Action),
            ]
        });
        let named: Vec<(Site, Option<Ident>, RuleKind)> =
            edge_rules.chain(state_rules).chain(parent_rules).collect();
        for (site, name, kind) in named {
            let Some(name) = name else { continue };
            let used = RuleUse {
                site,
                name: name.clone(),
                kind,
            };
            match by_name.get(&name.to_string()) {
                Some(&i) => self.rules[i].uses.push(used),
                None => {
                    by_name.insert(name.to_string(), self.rules.len());
                    self.rules.push(Rule {
                        name,
                        kind,
                        uses: vec![used],
                    });
                }
            }
        }
    }

    /// The payload an edge's guard and action receive: its event's, none for a timer.
    pub fn payload_of(&self, edge: usize) -> Option<&Type> {
        match &self.edges[edge].on {
            Trigger::Event { event, .. } => self.events[*event].payload(),
            Trigger::After(_) => None,
        }
    }

    /// The payload a rule receives where it is named; entry and exit actions take none.
    pub fn site_payload(&self, site: Site) -> Option<&Type> {
        match site {
            Site::Edge(edge) => self.payload_of(edge),
            Site::Entry(_) | Site::Exit(_) | Site::ParentEntry(_) | Site::ParentExit(_) => None,
        }
    }

    /// The payload of a rule's first use, which fixes its method's signature.
    pub fn rule_payload(&self, rule: &Rule) -> Option<&Type> {
        self.site_payload(rule.uses[0].site)
    }

    /// Where a rule is named, for docs and messages: an edge as the DSL writes it, or
    /// `#[entry(notify)] Shipped`.
    pub fn describe_site(&self, site: Site) -> String {
        let state_action = |which: &str, state: &Ident, action: Option<&Ident>| {
            let action = action.map(name).unwrap_or_default();
            format!("#[{which}({action})] {}", name(state))
        };
        match site {
            Site::Edge(edge) => self.describe(edge),
            Site::Entry(s) => state_action("entry", &self.states[s].name, self.states[s].entry()),
            Site::Exit(s) => state_action("exit", &self.states[s].name, self.states[s].exit()),
            Site::ParentEntry(p) => {
                let parent = &self.parents[p];
                state_action("entry", &parent.name, parent.entry()) + " { .. }"
            }
            Site::ParentExit(p) => {
                let parent = &self.parents[p];
                state_action("exit", &parent.name, parent.exit()) + " { .. }"
            }
        }
    }

    /// The context type (`()` when not declared).
    pub fn context(&self) -> TokenStream {
        match self.contexts.first() {
            Some(kv) => kv.ty.to_token_stream(),
            None => quote::quote!(()),
        }
    }

    /// The effect type (`()` when not declared).
    pub fn effect(&self) -> TokenStream {
        match self.effects.first() {
            Some(kv) => kv.ty.to_token_stream(),
            None => quote::quote!(()),
        }
    }

    /// The initial state: the first one marked `*`, or the initial leaf of a parent
    /// marked `*`.
    pub fn initial(&self) -> Option<usize> {
        let (_, name) = self.initial_marks.first()?;
        if let Some(p) = self.parents.iter().position(|p| p.name == *name) {
            return self.resolve(Node::Parent(p));
        }
        self.states.iter().position(|s| s.name == *name)
    }

    /// Whether some edge leaves state `state`.
    pub fn has_outgoing(&self, state: usize) -> bool {
        self.edges.iter().any(|e| e.from == state)
    }

    /// How an edge reads in the DSL, for docs and messages: `Created + Pay => Paid`.
    pub fn describe(&self, edge: usize) -> String {
        let e = &self.edges[edge];
        let on = match &e.on {
            Trigger::Event { event, .. } => name(&self.events[*event].name),
            Trigger::After(timer) => {
                format!(
                    "after({})",
                    fsm_core::format_duration(timer_duration(timer))
                )
            }
        };
        let mut text = format!("{} + {on}", name(&self.states[e.from].name));
        if let Some(guard) = &e.guard {
            text.push_str(&format!(" [{guard}]"));
        }
        if let Some(action) = &e.action {
            text.push_str(&format!(" / {action}"));
        }
        text.push_str(&format!(" => {}", name(self.node_name(e.target))));
        if e.wildcard.is_some() {
            text.push_str(" (from `_`)");
        }
        if let Some(l) = e.parent_line {
            let parent = &self.parents[self.parent_lines[l].parent].name;
            text.push_str(&format!(" (from `{}`)", name(parent)));
        }
        text
    }

    /// How a parent line reads in the DSL: `Active + Cancel / refund => Cancelled`.
    pub fn describe_parent_line(&self, l: usize) -> String {
        let line = &self.parent_lines[l];
        let on = match &line.on {
            Trigger::Event { event, .. } => name(&self.events[*event].name),
            Trigger::After(timer) => {
                format!(
                    "after({})",
                    fsm_core::format_duration(timer_duration(timer))
                )
            }
        };
        let mut text = format!("{} + {on}", name(&line.source));
        if let Some(guard) = &line.guard {
            text.push_str(&format!(" [{guard}]"));
        }
        if let Some(action) = &line.action {
            text.push_str(&format!(" / {action}"));
        }
        text.push_str(&format!(" => {}", name(self.node_name(line.target))));
        text
    }

    /// How a wildcard line reads in the DSL: `_ + Cancel / refund => Cancelled`.
    pub fn describe_wildcard(&self, wildcard: usize) -> String {
        let w = &self.wildcards[wildcard];
        let on = match &w.on {
            Trigger::Event { event, .. } => name(&self.events[*event].name),
            Trigger::After(timer) => {
                format!(
                    "after({})",
                    fsm_core::format_duration(timer_duration(timer))
                )
            }
        };
        let mut text = format!("_ + {on}");
        if let Some(guard) = &w.guard {
            text.push_str(&format!(" [{guard}]"));
        }
        if let Some(action) = &w.action {
            text.push_str(&format!(" / {action}"));
        }
        text.push_str(&format!(" => {}", name(self.node_name(w.target))));
        text
    }

    /// The machine as the runtime's [`Definition`], for rendering its diagram here and
    /// as the source of the generated `DEFINITION` constant.
    pub fn definition(&self) -> Definition {
        let initial = self.initial();
        let states: Vec<StateInfo> = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| StateInfo {
                name: leak(name(&s.name)),
                doc: leak(doc_string(&s.docs)),
                initial: initial == Some(i),
                terminal: !self.has_outgoing(i),
                renamed_from: leak_names(&s.renamed_from),
                entry: s.entry().map(|a| leak(name(a))),
                exit: s.exit().map(|a| leak(name(a))),
                parent: s.parent.map(|p| leak(name(&self.parents[p].name))),
            })
            .collect();
        let parents: Vec<ParentInfo> = self
            .parents
            .iter()
            .map(|p| ParentInfo {
                name: leak(name(&p.name)),
                doc: leak(doc_string(&p.docs)),
                parent: p.parent.map(|q| leak(name(&self.parents[q].name))),
                initial: p.initial_marks.first().map(|(_, child)| leak(name(child))),
                entry: p.entry().map(|a| leak(name(a))),
                exit: p.exit().map(|a| leak(name(a))),
            })
            .collect();
        let parent_name = |p: usize| parents[p].name;
        let events: Vec<EventInfo> = self
            .events
            .iter()
            .map(|e| EventInfo {
                name: leak(name(&e.name)),
                doc: leak(doc_string(&e.docs)),
                payload: e.payload().map(|ty| leak(type_string(ty))),
                renamed_from: leak_names(&e.renamed_from),
            })
            .collect();
        let edges: Vec<EdgeInfo> = self
            .edges
            .iter()
            .map(|e| EdgeInfo {
                from: states[e.from].name,
                on: match &e.on {
                    Trigger::Event { event, .. } => On::Event(events[*event].name),
                    Trigger::After(timer) => On::After(timer_duration(timer)),
                },
                guard: e.guard.as_ref().map(|g| leak(name(g))),
                action: e.action.as_ref().map(|a| leak(name(a))),
                to: states[e.to].name,
                from_wildcard: e.wildcard.is_some(),
                from_parent: e
                    .parent_line
                    .map(|l| parent_name(self.parent_lines[l].parent)),
                to_parent: match e.target {
                    Node::Parent(p) => Some(parent_name(p)),
                    Node::State(_) => None,
                },
            })
            .collect();
        Definition {
            name: leak(name(&self.name)),
            doc: leak(doc_string(&self.docs)),
            context: leak(
                self.contexts
                    .first()
                    .map_or_else(|| "()".to_owned(), |kv| type_string(&kv.ty)),
            ),
            effect: self.effects.first().map(|kv| leak(type_string(&kv.ty))),
            states: Box::leak(states.into_boxed_slice()),
            parents: Box::leak(parents.into_boxed_slice()),
            events: Box::leak(events.into_boxed_slice()),
            edges: Box::leak(edges.into_boxed_slice()),
        }
    }
}

pub fn timer_duration(timer: &Timer) -> Duration {
    Duration::from_millis(timer.millis)
}

/// A `'static` string for the runtime's `Definition`; the macro's process is short-lived.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn leak_names(names: &[Ident]) -> &'static [&'static str] {
    Box::leak(
        names
            .iter()
            .map(|n| leak(name(n)))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// The stable name of a state, event or rule: the identifier without `r#`.
pub fn name(ident: &Ident) -> String {
    ident.unraw().to_string()
}

/// The text of doc attributes: one line per attribute, the leading space `///` leaves
/// removed, blank lines around trimmed.
pub fn doc_string(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    lines.join("\n").trim_matches('\n').trim_end().to_owned()
}

/// A type as the user would write it: `Vec<u8>`, `std::string::String`, `(u32, bool)`.
pub fn type_string(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    let mut previous_word = false;
    for tree in tokens {
        match tree {
            TokenTree::Ident(ident) => {
                if previous_word {
                    out.push(' ');
                }
                out.push_str(&ident.to_string());
                previous_word = true;
            }
            TokenTree::Literal(lit) => {
                if previous_word {
                    out.push(' ');
                }
                out.push_str(&lit.to_string());
                previous_word = true;
            }
            TokenTree::Punct(p) => {
                let c = p.as_char();
                if matches!(c, '+' | '=') || (c == '-' && p.spacing() == Spacing::Joint) {
                    out.push(' ');
                }
                out.push(c);
                let spaced =
                    matches!(c, ',' | ';' | '+' | '=') || (c == '>' && out.ends_with("->"));
                if spaced {
                    out.push(' ');
                }
                previous_word = false;
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::Brace => ("{", "}"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(group.stream(), out);
                out.push_str(close);
                previous_word = false;
            }
        }
    }
}

/// The name of a payload parameter: the snake_case last segment of its type
/// (`&Payment` -> `payment`), or `payload` where that is not an identifier.
pub fn parameter_name(ty: &Type) -> String {
    let segment = match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .map(|s| s.ident.unraw().to_string()),
        _ => None,
    };
    let Some(segment) = segment else {
        return "payload".to_owned();
    };
    let mut snake = String::new();
    for (i, c) in segment.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 && !snake.ends_with('_') {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    let usable =
        syn::parse_str::<Ident>(&snake).is_ok() && !matches!(snake.as_str(), "effects" | "self");
    if usable { snake } else { "payload".to_owned() }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;
    use crate::ctxt::Ctxt;

    pub(crate) fn model(tokens: TokenStream) -> Machine {
        let mut cx = Ctxt::new();
        let input = crate::parse::machine(tokens, &mut cx).expect("header parses");
        Machine::from_input(&input)
    }

    fn order() -> Machine {
        model(quote! {
            /// An order.
            pub machine Order {
                context: OrderData,
                states { /// Waiting for payment.
                    Created }
                *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
                Created | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
                Paid + Ship(Tracking) => Shipped,
                Shipped + Deliver => Delivered,
                Created + after(30 min) => Expired,
                Paid + Cancel(Reason) [late] => Cancelled,
            }
        })
    }

    #[test]
    fn states_and_events_keep_first_appearance_order() {
        let m = order();
        let states: Vec<String> = m.states.iter().map(|s| name(&s.name)).collect();
        assert_eq!(
            states,
            [
                "Created",
                "Paid",
                "Cancelled",
                "Shipped",
                "Delivered",
                "Expired"
            ]
        );
        let events: Vec<String> = m.events.iter().map(|e| name(&e.name)).collect();
        assert_eq!(events, ["Pay", "Cancel", "Ship", "Deliver"]);
    }

    #[test]
    fn a_line_with_several_sources_is_one_edge_per_source() {
        let m = order();
        assert_eq!(m.edges.len(), 7);
        assert_eq!((m.edges[1].from, m.edges[2].from), (0, 1));
        assert_eq!(m.edges[1].line, m.edges[2].line);
        assert_eq!(m.describe(2), "Paid + Cancel / refund_if_paid => Cancelled");
        assert_eq!(m.describe(5), "Created + after(30 min) => Expired");
    }

    #[test]
    fn a_payload_written_once_applies_to_every_line() {
        let m = order();
        assert_eq!(m.events[1].payloads.len(), 2);
        assert_eq!(type_string(m.payload_of(6).unwrap()), "Reason");
    }

    #[test]
    fn rules_are_one_per_name_in_order_of_first_use() {
        let m = order();
        let rules: Vec<(String, RuleKind, usize)> = m
            .rules
            .iter()
            .map(|r| (name(&r.name), r.kind, r.uses.len()))
            .collect();
        assert!(
            matches!(&rules[..], [(a, RuleKind::Guard, 1), (b, RuleKind::Action, 1), (c, RuleKind::Action, 2), (d, RuleKind::Guard, 1)]
            if a == "amount_matches" && b == "record_payment" && c == "refund_if_paid" && d == "late")
        );
    }

    #[test]
    fn definition_flags_initial_and_terminal_states() {
        let d = order().definition();
        assert_eq!(d.name, "Order");
        assert_eq!(d.doc, "An order.");
        assert_eq!(d.context, "OrderData");
        assert_eq!(d.effect, None);
        assert_eq!(d.initial().name, "Created");
        assert_eq!(d.states[0].doc, "Waiting for payment.");
        let terminal: Vec<&str> = d
            .states
            .iter()
            .filter(|s| s.terminal)
            .map(|s| s.name)
            .collect();
        assert_eq!(terminal, ["Cancelled", "Delivered", "Expired"]);
        assert_eq!(d.events[0].payload, Some("Payment"));
        assert_eq!(d.events[3].payload, None);
        assert_eq!(d.edges[5].on, On::After(Duration::from_secs(1800)));
        assert_eq!(d.edges[0].guard, Some("amount_matches"));
    }

    #[test]
    fn types_print_as_written() {
        let cases = [
            (quote!(Payment), "Payment"),
            (quote!(Vec<u8>), "Vec<u8>"),
            (
                quote!(std::collections::HashMap<String, Vec<u8> >),
                "std::collections::HashMap<String, Vec<u8>>",
            ),
            (quote!((u32, bool)), "(u32, bool)"),
            (quote!([u8; 4]), "[u8; 4]"),
            (quote!(&'static str), "&'static str"),
            (
                quote!(Box<dyn Fn(u8) -> u8 + Send>),
                "Box<dyn Fn(u8) -> u8 + Send>",
            ),
            (quote!(()), "()"),
        ];
        for (tokens, expected) in cases {
            let ty: Type = syn::parse2(tokens).unwrap();
            assert_eq!(type_string(&ty), expected);
        }
    }

    #[test]
    fn payload_parameters_are_snake_case_type_names() {
        let cases = [
            (quote!(Payment), "payment"),
            (quote!(crate::ShippingLabel), "shipping_label"),
            (quote!(Vec<u8>), "vec"),
            (quote!(u64), "u64"),
            (quote!((u32, u32)), "payload"),
            (quote!(Type), "payload"),
            (quote!(Effects), "payload"),
        ];
        for (tokens, expected) in cases {
            let ty: Type = syn::parse2(tokens).unwrap();
            assert_eq!(parameter_name(&ty), expected);
        }
    }
}
