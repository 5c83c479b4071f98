//! The machine's graph as `'static` data.
//!
//! A [`Definition`] is what `state_machine!` knows about a machine, kept at run time:
//! states, events, edges and timers. Diagrams, stored-state parsing and validation all
//! read it, so there is one source of truth for the shape of a lifecycle.
//!
//! # Examples
//!
//! ```
//! use fsm_core::{Definition, Edge, EventInfo, On, StateInfo};
//!
//! static TOGGLE: Definition = Definition {
//!     name: "Toggle",
//!     doc: "A light switch.",
//!     context: "()",
//!     effect: None,
//!     states: &[
//!         StateInfo { name: "Off", doc: "", initial: true, terminal: false, renamed_from: &[], entry: None, exit: None, parent: None },
//!         StateInfo { name: "On", doc: "", initial: false, terminal: false, renamed_from: &["Lit"], entry: None, exit: None, parent: None },
//!     ],
//!     parents: &[],
//!     events: &[EventInfo { name: "Flip", doc: "", payload: None, renamed_from: &[] }],
//!     edges: &[
//!         Edge { from: "Off", on: On::Event("Flip"), guard: None, action: None, to: "On", from_wildcard: false, from_parent: None, to_parent: None },
//!         Edge { from: "On", on: On::Event("Flip"), guard: None, action: None, to: "Off", from_wildcard: false, from_parent: None, to_parent: None },
//!     ],
//! };
//! assert_eq!(TOGGLE.initial().name, "Off");
//! assert!(TOGGLE.state("On").is_some());
//! // A stored name from before a rename still reads as the state it became.
//! assert_eq!(TOGGLE.state("Lit").map(|s| s.name), Some("On"));
//! ```

use std::time::Duration;

/// A whole machine: its name, states, events and edges, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    /// The machine type's name, e.g. `"Order"`; stores key rows by it.
    pub name: &'static str,
    /// Doc comment of the machine, possibly empty.
    pub doc: &'static str,
    /// The context type as written, e.g. `"OrderData"`, or `"()"`.
    pub context: &'static str,
    /// The effect type as written, if the machine emits effects.
    pub effect: Option<&'static str>,
    /// States in order of first appearance: the leaves, the only states an instance is
    /// ever in (parents are listed in [`Definition::parents`]).
    pub states: &'static [StateInfo],
    /// Parent (composite) states grouping states in `states { Active { *Paid, Shipped } }`,
    /// in declaration order, each before the parents nested in it. Never stored: a parent
    /// is a set of leaves, see [`Definition::is_within`].
    pub parents: &'static [ParentInfo],
    /// Events in order of first appearance (timers are not events).
    pub events: &'static [EventInfo],
    /// Edges in declaration order; `A | B + E` contributes one edge per source. The
    /// edges of parent lines (`Active + E => T`, [`Edge::from_parent`]) follow the
    /// others, then those of wildcard lines (`_ + E => T`, [`Edge::from_wildcard`]),
    /// one line after another.
    pub edges: &'static [Edge],
}

/// A parent (composite) state: a name for a group of states, declared as
/// `Active { *Paid, Shipped }` in `states { }`.
///
/// An instance is never in a parent, only in one of its leaves. An edge written from a
/// parent applies to each leaf under it without an edge of its own on that event; an
/// edge into a parent lands in its initial child (recursively, down to a leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentInfo {
    /// The parent's name; never a stored state name.
    pub name: &'static str,
    /// Doc comment from the `states { }` block, possibly empty.
    pub doc: &'static str,
    /// The parent this one is nested in, if any.
    pub parent: Option<&'static str>,
    /// The child marked `*` (a state or a parent), where an edge into this parent lands.
    pub initial: Option<&'static str>,
    /// Entry action, run when a transition enters this parent from a state outside it,
    /// after the edge's action and before the entry actions of the states inside.
    pub entry: Option<&'static str>,
    /// Exit action, run when a transition leaves this parent for a state outside it,
    /// after the exit actions of the states inside and before the edge's action.
    pub exit: Option<&'static str>,
}

/// One state of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateInfo {
    /// The state's stable name, as stored in the database.
    pub name: &'static str,
    /// Doc comment from the `states { }` block, possibly empty.
    pub doc: &'static str,
    /// Whether this is the one initial state (marked `*`).
    pub initial: bool,
    /// Whether no edge leaves this state.
    pub terminal: bool,
    /// Names this state was stored under before a rename (`#[renamed_from(Old)]`): rows
    /// holding one of them still load, as this state.
    pub renamed_from: &'static [&'static str],
    /// Entry action (`#[entry(name)]`), run when a transition enters this state from
    /// another state, after the edge's action.
    pub entry: Option<&'static str>,
    /// Exit action (`#[exit(name)]`), run when a transition leaves this state for
    /// another state, before the edge's action.
    pub exit: Option<&'static str>,
    /// The parent this state is grouped under (`Active` for `Active { Paid }`), if any.
    pub parent: Option<&'static str>,
}

/// One event of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInfo {
    /// The event's stable name.
    pub name: &'static str,
    /// Doc comment from the `events { }` block, possibly empty.
    pub doc: &'static str,
    /// The payload type as written, if the event carries one.
    pub payload: Option<&'static str>,
    /// Names this event was recorded under before a rename (`#[renamed_from(Old)]`):
    /// history rows holding one of them still read, as this event.
    pub renamed_from: &'static [&'static str],
}

impl StateInfo {
    /// The names rows may hold for this state: its name, then its former names.
    pub fn stored_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.name).chain(self.renamed_from.iter().copied())
    }
}

impl EventInfo {
    /// The names history may hold for this event: its name, then its former names.
    pub fn stored_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.name).chain(self.renamed_from.iter().copied())
    }
}

/// What makes an edge fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum On {
    /// A command carrying this event.
    Event(&'static str),
    /// A durable timer, armed when the machine enters the source state.
    After(Duration),
}

/// One edge `from + on [guard] / action => to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Source state name.
    pub from: &'static str,
    /// The event or timer that triggers the edge.
    pub on: On,
    /// Guard name, if the edge is guarded.
    pub guard: Option<&'static str>,
    /// Action name, if the edge runs one.
    pub action: Option<&'static str>,
    /// Target state name.
    pub to: &'static str,
    /// Whether a wildcard line `_ + Event => Target` generated this edge: one such edge
    /// leaves each state that is not terminal, is not the target and has no edge of its
    /// own on that event. The edges of one wildcard line are consecutive.
    pub from_wildcard: bool,
    /// The parent whose line `Parent + Event => Target` generated this edge: one such
    /// edge leaves each state under the parent that is not `#[terminal]` and has no edge
    /// of its own (nor from a nearer parent) on that trigger. The edges of one parent
    /// line are consecutive.
    pub from_parent: Option<&'static str>,
    /// The parent the line names as its target (`=> Active`); [`Edge::to`] is then the
    /// parent's initial leaf.
    pub to_parent: Option<&'static str>,
}

impl Definition {
    /// The initial state.
    ///
    /// # Panics
    ///
    /// Panics if the definition has no initial state, which `state_machine!` rejects at
    /// compile time; only a hand-written definition can get here.
    pub fn initial(&self) -> &StateInfo {
        self.states
            .iter()
            .find(|s| s.initial)
            .expect("a definition has exactly one initial state")
    }

    /// Looks a state up by a stored name: its current name or one it was renamed from.
    pub fn state(&self, name: &str) -> Option<&StateInfo> {
        self.states
            .iter()
            .find(|s| s.name == name)
            .or_else(|| self.states.iter().find(|s| s.renamed_from.contains(&name)))
    }

    /// Looks a parent state up by name.
    pub fn parent(&self, name: &str) -> Option<&ParentInfo> {
        self.parents.iter().find(|p| p.name == name)
    }

    /// The parents around a state or a parent, nearest first: for `Order { Active {
    /// Paid } }`, `Paid` is within `Active`, then `Order`. `name` is a stored state name
    /// or a parent's name; nothing for a name the definition does not have.
    ///
    /// # Examples
    ///
    /// ```
    /// use fsm_core::{Definition, ParentInfo, StateInfo};
    ///
    /// const fn leaf(name: &'static str, parent: Option<&'static str>) -> StateInfo {
    ///     StateInfo { name, doc: "", initial: false, terminal: false, renamed_from: &[], entry: None, exit: None, parent }
    /// }
    /// const fn group(name: &'static str, parent: Option<&'static str>, initial: &'static str) -> ParentInfo {
    ///     ParentInfo { name, doc: "", parent, initial: Some(initial), entry: None, exit: None }
    /// }
    /// static ORDER: Definition = Definition {
    ///     name: "Order", doc: "", context: "()", effect: None,
    ///     states: &[leaf("Created", None), leaf("Paid", Some("Active")), leaf("Packed", Some("Shipping"))],
    ///     parents: &[group("Active", None, "Paid"), group("Shipping", Some("Active"), "Packed")],
    ///     events: &[],
    ///     edges: &[],
    /// };
    /// let names: Vec<&str> = ORDER.ancestors("Packed").map(|p| p.name).collect();
    /// assert_eq!(names, ["Shipping", "Active"]);
    /// assert!(ORDER.is_within("Packed", "Active"));
    /// assert!(!ORDER.is_within("Created", "Active"));
    /// let leaves: Vec<&str> = ORDER.leaves_within("Active").map(|s| s.name).collect();
    /// assert_eq!(leaves, ["Paid", "Packed"]);
    /// ```
    pub fn ancestors<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a ParentInfo> + 'a {
        let first = match self.state(name) {
            Some(state) => state.parent,
            None => self.parent(name).and_then(|p| p.parent),
        };
        // A hand-written definition could loop; `state_machine!` writes a tree.
        std::iter::successors(first.and_then(|p| self.parent(p)), |p| {
            p.parent.and_then(|q| self.parent(q))
        })
        .take(self.parents.len())
    }

    /// Whether `name` (a stored state name or a parent's name) is grouped under
    /// `parent`, directly or through nested parents. A state is not within itself.
    pub fn is_within(&self, name: &str, parent: &str) -> bool {
        self.ancestors(name).any(|p| p.name == parent)
    }

    /// The states (leaves) grouped under `parent` at any depth, in declaration order:
    /// what an instance "in `parent`" can be in, for queries and counts.
    pub fn leaves_within<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a StateInfo> {
        self.states
            .iter()
            .filter(move |s| self.is_within(s.name, parent))
    }

    /// Looks an event up by a recorded name: its current name or one it was renamed from.
    pub fn event(&self, name: &str) -> Option<&EventInfo> {
        self.events
            .iter()
            .find(|e| e.name == name)
            .or_else(|| self.events.iter().find(|e| e.renamed_from.contains(&name)))
    }

    /// Timer edges (`after(..)`), in declaration order, with their index in `edges`.
    pub fn timers(&self) -> impl Iterator<Item = (usize, &Edge)> + '_ {
        self.edges
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.on, On::After(_)))
    }

    /// Whether a timer armed in state `state` (a stored name) with delay `after` is one
    /// this definition has: a timer is named by its source state and its delay, never by
    /// its position, so edits elsewhere in the machine leave pending timers valid.
    pub fn has_timer(&self, state: &str, after: Duration) -> bool {
        let Some(state) = self.state(state) else {
            return false;
        };
        self.edges
            .iter()
            .any(|e| e.from == state.name && e.on == On::After(after))
    }

    /// Whether some edge on `event` leads into `state`: firing that event again once the
    /// machine is there is a repeat, which callers may treat as success.
    pub fn is_target_of(&self, state: &str, event: &str) -> bool {
        self.edges
            .iter()
            .any(|e| e.to == state && matches!(e.on, On::Event(name) if name == event))
    }
}

/// Formats a timer delay the way the DSL writes it: `30 min`, `2 h`, `1500 ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let units: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
        (1, "ms"),
    ];
    for (size, unit) in units {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{} {unit}", ms / size);
        }
    }
    "0 s".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(1800)), "30 min");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2 h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 3)), "3 d");
        assert_eq!(format_duration(Duration::ZERO), "0 s");
    }
}
