//! Finding instances: [`Query`] (by state, time in state and id prefix, with keyset
//! pagination), [`StateCounts`], and [`VerifyReport`], the check of stored names against
//! the current definition.
//!
//! Every store answers these with the same semantics; the conformance suite checks it.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format_duration;
use crate::kit::millis;
use crate::machine::StateMachine;
use crate::store::Snapshot;

/// The most instances one page may hold.
pub const MAX_PAGE: usize = 1_000;

/// Which instances of machine `M` to list, in which order, from where.
///
/// The order depends on what is asked, so that an instance that keeps matching keeps its
/// place while others change (a page boundary never skips or repeats it):
///
/// * **by state** ([`in_state`](Self::in_state), [`in_states`](Self::in_states)): by the
///   time the instance entered its state, then id; a self-loop does not re-enter;
/// * else **by id prefix** ([`id_prefix`](Self::id_prefix)): by id, byte order;
/// * else **every instance**: by creation time, then id.
///
/// Oldest first unless [`newest_first`](Self::newest_first). Pages are cut by keyset
/// (the last item's position, in an opaque [`Cursor`]), never by offset: an instance
/// that matches throughout a pagination is returned exactly once, however many
/// transitions other instances take meanwhile; one that changes state meanwhile may or
/// may not be.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fsm_core::testing::{Order, OrderData, OrderState};
/// use fsm_core::{MemoryStore, Query, Store};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// for n in 0..5 {
///     store.create::<Order>(&format!("o-{n}"), OrderData::default()).await?;
/// }
/// // Orders waiting for payment, 2 per page, oldest first.
/// let mut query = Query::<Order>::new().in_state(OrderState::Created).limit(2);
/// let mut seen = Vec::new();
/// loop {
///     let page = store.list(&query).await?;
///     seen.extend(page.items.iter().map(|listed| listed.snapshot.id.clone()));
///     match page.next {
///         Some(cursor) => query = query.after(cursor),
///         None => break,
///     }
/// }
/// assert_eq!(seen.len(), 5);
///
/// // Stuck: created more than a day ago and still waiting (none here).
/// let stuck = Query::<Order>::new().in_state(OrderState::Created).stuck_for(Duration::from_secs(86_400));
/// assert!(store.list(&stuck).await?.items.is_empty());
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub struct Query<M: StateMachine> {
    states: Vec<M::State>,
    entered_before: Option<Since>,
    id_prefix: Option<String>,
    newest_first: bool,
    limit: usize,
    after: Option<Cursor>,
    machine: PhantomData<fn() -> M>,
}

/// A bound on the time an instance entered its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// Before this instant, ms since the Unix epoch.
    At(u64),
    /// Longer ago than this, by the store's clock.
    Ago(Duration),
}

impl<M: StateMachine> Query<M> {
    /// Every instance, oldest first, 50 per page.
    pub fn new() -> Self {
        Query {
            states: Vec::new(),
            entered_before: None,
            id_prefix: None,
            newest_first: false,
            limit: 50,
            after: None,
            machine: PhantomData,
        }
    }

    /// Only instances in `state` (added to any states given before).
    pub fn in_state(mut self, state: M::State) -> Self {
        if !self.states.contains(&state) {
            self.states.push(state);
        }
        self
    }

    /// Only instances in one of `states` (added to any given before).
    pub fn in_states(self, states: impl IntoIterator<Item = M::State>) -> Self {
        states.into_iter().fold(self, Self::in_state)
    }

    /// Only instances that entered their current state before `at_ms` (milliseconds since
    /// the Unix epoch).
    pub fn entered_before_ms(mut self, at_ms: u64) -> Self {
        self.entered_before = Some(Since::At(at_ms));
        self
    }

    /// Only instances that have been in their current state for longer than `age`, by
    /// the store's clock: the stuck ones.
    pub fn stuck_for(mut self, age: Duration) -> Self {
        self.entered_before = Some(Since::Ago(age));
        self
    }

    /// Only instances whose id starts with `prefix` (byte-wise).
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into()).filter(|p| !p.is_empty());
        self
    }

    /// The most recent first.
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// The oldest first (the default).
    pub fn oldest_first(mut self) -> Self {
        self.newest_first = false;
        self
    }

    /// At most `limit` instances per page, 1..=[`MAX_PAGE`] (default 50).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page after the one that returned `cursor` as its [`Page::next`].
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// What a store runs for this query, at `now_ms` by the store's clock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for a limit outside 1..=[`MAX_PAGE`] or a cursor issued
    /// for another ordering.
    pub fn plan(&self, now_ms: u64) -> Result<Plan> {
        let machine = M::DEFINITION.name;
        if !(1..=MAX_PAGE).contains(&self.limit) {
            return Err(Error::InvalidQuery {
                machine,
                detail: format!("limit {} is outside 1..={MAX_PAGE}", self.limit),
            });
        }
        let order = if !self.states.is_empty() {
            Order::Entered
        } else if self.id_prefix.is_some() {
            Order::Id
        } else {
            Order::Created
        };
        let after = match &self.after {
            None => None,
            Some(cursor) => {
                let position = cursor.decode(machine)?;
                if position.order != order || position.newest_first != self.newest_first {
                    return Err(Error::InvalidQuery {
                        machine,
                        detail: "the cursor belongs to a query with another ordering".into(),
                    });
                }
                Some((position.time, position.id))
            }
        };
        let states = self
            .states
            .iter()
            .filter_map(|&state| M::DEFINITION.state(M::state_name(state)))
            .flat_map(|info| info.stored_names())
            .collect();
        Ok(Plan {
            machine,
            order,
            newest_first: self.newest_first,
            states,
            entered_before_ms: self.entered_before.map(|since| match since {
                Since::At(at) => at,
                Since::Ago(age) => now_ms.saturating_sub(millis(age)),
            }),
            id_prefix: self.id_prefix.clone(),
            after,
            limit: self.limit,
        })
    }
}

impl<M: StateMachine> Default for Query<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: StateMachine> Clone for Query<M> {
    fn clone(&self) -> Self {
        Query {
            states: self.states.clone(),
            entered_before: self.entered_before,
            id_prefix: self.id_prefix.clone(),
            newest_first: self.newest_first,
            limit: self.limit,
            after: self.after.clone(),
            machine: PhantomData,
        }
    }
}

impl<M: StateMachine> fmt::Debug for Query<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("machine", &M::DEFINITION.name)
            .field("states", &self.states)
            .field("entered_before", &self.entered_before)
            .field("id_prefix", &self.id_prefix)
            .field("newest_first", &self.newest_first)
            .field("limit", &self.limit)
            .field("after", &self.after)
            .finish()
    }
}

/// The sort key of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// (time the instance entered its state, id).
    Entered,
    /// (creation time, id).
    Created,
    /// id alone.
    Id,
}

impl Order {
    fn tag(self) -> char {
        match self {
            Order::Entered => 'e',
            Order::Created => 'c',
            Order::Id => 'i',
        }
    }
}

/// A [`Query`] resolved for a store to run: stored names, bounds and the keyset position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The machine type.
    pub machine: &'static str,
    /// The sort key.
    pub order: Order,
    /// Descending instead of ascending.
    pub newest_first: bool,
    /// The stored state names to match (a state's current and former names); empty
    /// for every state.
    pub states: Vec<&'static str>,
    /// Only instances that entered their state before this, ms since the Unix epoch.
    pub entered_before_ms: Option<u64>,
    /// Only ids starting with this.
    pub id_prefix: Option<String>,
    /// Only rows strictly after this (sort time, id) position; the time is 0 when the
    /// order is by id.
    pub after: Option<(u64, String)>,
    /// Rows per page; a store fetches one more to know whether a next page exists.
    pub limit: usize,
}

/// An instance row as a store found it, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRow {
    /// Instance id.
    pub id: String,
    /// State as stored.
    pub state: String,
    /// Stored version (negative only in a corrupt row).
    pub version: i64,
    /// Context as stored JSON.
    pub context: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When the instance entered its current state.
    pub entered_at_ms: u64,
    /// When the last transition applied.
    pub updated_at_ms: u64,
}

impl Plan {
    /// Whether an instance with these stored fields matches the filters (the keyset
    /// position aside).
    pub fn matches(&self, id: &str, state: &str, entered_at_ms: u64) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && self.entered_before_ms.is_none_or(|t| entered_at_ms < t)
            && self.id_prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }

    /// The sort time of a row (0 when the order is by id).
    pub fn sort_time(&self, created_at_ms: u64, entered_at_ms: u64) -> u64 {
        match self.order {
            Order::Entered => entered_at_ms,
            Order::Created => created_at_ms,
            Order::Id => 0,
        }
    }

    /// Whether a row at (`time`, `id`) comes after the keyset position.
    pub fn is_after(&self, time: u64, id: &str) -> bool {
        let Some((at, at_id)) = &self.after else {
            return true;
        };
        let position = (time, id).cmp(&(*at, at_id.as_str()));
        match self.newest_first {
            false => position.is_gt(),
            true => position.is_lt(),
        }
    }

    /// The upper bound of ids starting with the prefix, in byte order: the prefix
    /// followed by enough U+10FFFF that no id of at most 255 bytes with that prefix
    /// reaches it. Lets a store scan the prefix as an index range.
    pub fn id_prefix_end(&self) -> Option<String> {
        let prefix = self.id_prefix.as_deref()?;
        let pad = (crate::MAX_KEY_LEN + 4 - prefix.len().min(crate::MAX_KEY_LEN)) / 4 + 1;
        let mut end = String::with_capacity(prefix.len() + pad * 4);
        end.push_str(prefix);
        end.extend(std::iter::repeat_n(char::MAX, pad));
        Some(end)
    }

    /// Sorts rows a store fetched (possibly from several index ranges, one per stored
    /// state name) into one page: filters, orders, cuts at the limit and decodes. A row
    /// that does not decode is reported in [`Page::unreadable`] and still advances the
    /// cursor, so one bad row never hides the rest.
    pub fn page<M: StateMachine>(
        &self,
        mut rows: Vec<ListedRow>,
        decode: impl Fn(&ListedRow) -> Result<Snapshot<M>>,
    ) -> Page<M> {
        rows.retain(|r| {
            self.matches(&r.id, &r.state, r.entered_at_ms)
                && self.is_after(self.sort_time(r.created_at_ms, r.entered_at_ms), &r.id)
        });
        rows.sort_by(|a, b| {
            let time = |r: &ListedRow| self.sort_time(r.created_at_ms, r.entered_at_ms);
            let ordering = (time(a), &a.id).cmp(&(time(b), &b.id));
            if self.newest_first {
                ordering.reverse()
            } else {
                ordering
            }
        });
        rows.dedup_by(|a, b| a.id == b.id);
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        let next = match (more, rows.last()) {
            (true, Some(last)) => Some(Cursor::encode(
                self,
                self.sort_time(last.created_at_ms, last.entered_at_ms),
                &last.id,
            )),
            _ => None,
        };
        let mut page = Page {
            items: Vec::with_capacity(rows.len()),
            unreadable: Vec::new(),
            next,
        };
        for row in &rows {
            match decode(row) {
                Ok(snapshot) => page.items.push(Listed {
                    snapshot,
                    created_at_ms: row.created_at_ms,
                    entered_at_ms: row.entered_at_ms,
                    updated_at_ms: row.updated_at_ms,
                }),
                Err(error) => page.unreadable.push(Unreadable {
                    id: row.id.clone(),
                    error,
                }),
            }
        }
        page
    }
}

/// One page of a listing.
pub struct Page<M: StateMachine> {
    /// The instances, in the query's order.
    pub items: Vec<Listed<M>>,
    /// Rows of this page that do not decode under the current definition (a state it
    /// does not know, a context that no longer parses), in place of instances.
    pub unreadable: Vec<Unreadable>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<M: StateMachine> fmt::Debug for Page<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("items", &self.items)
            .field("unreadable", &self.unreadable)
            .field("next", &self.next)
            .finish()
    }
}

/// One listed instance with its times.
pub struct Listed<M: StateMachine> {
    /// The instance.
    pub snapshot: Snapshot<M>,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it entered its current state.
    pub entered_at_ms: u64,
    /// When its last transition applied (its creation if none).
    pub updated_at_ms: u64,
}

impl<M: StateMachine> fmt::Debug for Listed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listed")
            .field("snapshot", &self.snapshot)
            .field("created_at_ms", &self.created_at_ms)
            .field("entered_at_ms", &self.entered_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// A listed row that does not decode.
#[derive(Debug)]
pub struct Unreadable {
    /// Instance id.
    pub id: String,
    /// Why (usually [`Error::Corrupt`]).
    pub error: Error,
}

/// Where a page ends: pass it to [`Query::after`] for the next one.
///
/// Opaque text, safe in a URL query string, valid only for a query with the same
/// ordering.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

struct Position {
    order: Order,
    newest_first: bool,
    time: u64,
    id: String,
}

impl Cursor {
    fn encode(plan: &Plan, time: u64, id: &str) -> Cursor {
        let direction = if plan.newest_first { 'd' } else { 'a' };
        let text = format!("{}{direction}{time}:{id}", plan.order.tag());
        Cursor(hex::encode(text))
    }

    fn decode(&self, machine: &'static str) -> Result<Position> {
        let invalid = || Error::InvalidQuery {
            machine,
            detail: format!("{:?} is not a cursor this store issued", self.0),
        };
        let bytes = hex::decode(&self.0).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut chars = text.chars();
        let order = match chars.next() {
            Some('e') => Order::Entered,
            Some('c') => Order::Created,
            Some('i') => Order::Id,
            _ => return Err(invalid()),
        };
        let newest_first = match chars.next() {
            Some('a') => false,
            Some('d') => true,
            _ => return Err(invalid()),
        };
        let (time, id) = chars.as_str().split_once(':').ok_or_else(invalid)?;
        Ok(Position {
            order,
            newest_first,
            time: time.parse().map_err(|_| invalid())?,
            id: id.to_owned(),
        })
    }

    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::convert::Infallible;

    /// Any text; a cursor no store issued is refused when the query runs.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Cursor(s.to_owned()))
    }
}

/// How many instances of machine `M` are in each state.
pub struct StateCounts<M: StateMachine> {
    /// Every state of the definition, in its order, with its count (rows stored under a
    /// former name counted in).
    pub states: Vec<(M::State, u64)>,
    /// Stored state names the definition does not know, with their counts.
    pub unknown: Vec<(String, u64)>,
}

impl<M: StateMachine> StateCounts<M> {
    /// Folds `(stored name, count)` pairs into the definition's states.
    pub fn from_stored(stored: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut counts = StateCounts {
            states: M::DEFINITION
                .states
                .iter()
                .filter_map(|info| M::parse_state(info.name))
                .map(|state| (state, 0))
                .collect(),
            unknown: Vec::new(),
        };
        for (name, count) in stored {
            match M::parse_state(&name) {
                Some(state) => match counts.states.iter_mut().find(|(s, _)| *s == state) {
                    Some((_, n)) => *n += count,
                    None => counts.states.push((state, count)),
                },
                None => counts.unknown.push((name, count)),
            }
        }
        counts.unknown.sort();
        counts
    }

    /// The count of one state.
    pub fn get(&self, state: M::State) -> u64 {
        self.states
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    /// Every instance, unknown states included.
    pub fn total(&self) -> u64 {
        self.states.iter().map(|(_, n)| n).sum::<u64>()
            + self.unknown.iter().map(|(_, n)| n).sum::<u64>()
    }
}

impl<M: StateMachine> fmt::Debug for StateCounts<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCounts")
            .field("states", &self.states)
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// What [`Store::verify`](crate::Store::verify) found: every stored name the current
/// definition of a machine does not know.
///
/// A clean report means every instance loads, every history row reads and every pending
/// timer fires under this definition. Run it against a copy of production before
/// deploying a changed machine.
///
/// # Examples
///
/// ```
/// use fsm_core::testing::{Order, OrderData};
/// use fsm_core::{MemoryStore, Store};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// store.create::<Order>("o-1", OrderData::default()).await?;
/// let report = store.verify::<Order>().await?;
/// assert!(report.is_clean(), "{report}");
/// assert_eq!(report.instances, 1);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The machine type.
    pub machine: &'static str,
    /// Instances stored.
    pub instances: u64,
    /// History rows stored.
    pub history_rows: u64,
    /// Timers pending.
    pub pending_timers: u64,
    /// What the definition does not know, by kind, then name.
    pub unknown: Vec<Unknown>,
}

/// One stored name the definition does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// Where it was found.
    pub kind: UnknownKind,
    /// The stored name; for a timer, `State + after(30 min)`.
    pub name: String,
    /// Rows holding it.
    pub count: u64,
    /// Up to three ids of instances holding it.
    pub sample_ids: Vec<String>,
}

/// Where an [`Unknown`] name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnknownKind {
    /// The state an instance is in: it does not load.
    State,
    /// A state in history (`from` or `to`): that instance's history does not read.
    HistoryState,
    /// An event in history: that instance's history does not read.
    Event,
    /// A pending timer (source state and delay): it will not fire, and is kept.
    Timer,
}

impl UnknownKind {
    fn as_str(self) -> &'static str {
        match self {
            UnknownKind::State => "state",
            UnknownKind::HistoryState => "state in history",
            UnknownKind::Event => "event",
            UnknownKind::Timer => "timer",
        }
    }
}

impl VerifyReport {
    /// Builds a report from stored names with counts and samples; names the definition
    /// knows (under their current or a former name) are dropped.
    pub fn of<M: StateMachine>(
        counts: [u64; 3],
        found: impl IntoIterator<Item = Unknown>,
    ) -> VerifyReport {
        let definition = M::DEFINITION;
        let mut unknown: Vec<Unknown> = found
            .into_iter()
            .filter(|u| match u.kind {
                UnknownKind::State | UnknownKind::HistoryState => {
                    definition.state(&u.name).is_none()
                }
                UnknownKind::Event => definition.event(&u.name).is_none(),
                UnknownKind::Timer => true,
            })
            .collect();
        // The same name found twice (from and to of history) is one finding.
        unknown.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        unknown.dedup_by(|later, first| {
            let same = later.kind == first.kind && later.name == first.name;
            if same {
                first.count += later.count;
                for id in later.sample_ids.drain(..) {
                    if first.sample_ids.len() < 3 && !first.sample_ids.contains(&id) {
                        first.sample_ids.push(id);
                    }
                }
            }
            same
        });
        for u in &mut unknown {
            u.sample_ids.sort();
            u.sample_ids.truncate(3);
        }
        let [instances, history_rows, pending_timers] = counts;
        VerifyReport {
            machine: definition.name,
            instances,
            history_rows,
            pending_timers,
            unknown,
        }
    }

    /// Whether the definition knows everything stored.
    pub fn is_clean(&self) -> bool {
        self.unknown.is_empty()
    }

    /// The findings of one kind.
    pub fn of_kind(&self, kind: UnknownKind) -> impl Iterator<Item = &Unknown> + '_ {
        self.unknown.iter().filter(move |u| u.kind == kind)
    }
}

/// The name [`VerifyReport`] gives a timer: `State + after(30 min)`.
pub fn timer_name(state: &str, after: Duration) -> String {
    format!("{state} + after({})", format_duration(after))
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} instances, {} history rows, {} pending timers",
            self.machine, self.instances, self.history_rows, self.pending_timers
        )?;
        if self.unknown.is_empty() {
            return write!(f, "; the definition knows every stored name");
        }
        for u in &self.unknown {
            write!(
                f,
                "\n  unknown {} {:?}: {} rows, e.g. {}",
                u.kind.as_str(),
                u.name,
                u.count,
                u.sample_ids.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Order, OrderState};

    #[test]
    fn a_cursor_round_trips_and_refuses_what_no_store_issued() {
        let query = Query::<Order>::new().in_state(OrderState::Paid);
        let plan = query.plan(0).unwrap();
        let cursor = Cursor::encode(&plan, 17, "o:1");
        let next = query.clone().after(cursor).plan(0).unwrap();
        assert_eq!(next.after, Some((17, "o:1".to_owned())));
        for bogus in ["", "zz", "6530", &hex::encode("xa1:o")] {
            let err = query
                .clone()
                .after(bogus.parse().unwrap())
                .plan(0)
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidQuery { .. }),
                "{bogus}: {err:?}"
            );
        }
        // A cursor of a by-state listing does not position a by-id one.
        let by_id = Query::<Order>::new()
            .id_prefix("o")
            .after(Cursor::encode(&plan, 1, "o"));
        assert!(by_id.plan(0).is_err());
    }

    #[test]
    fn limits_outside_one_to_a_thousand_are_refused() {
        assert!(Query::<Order>::new().limit(0).plan(0).is_err());
        assert!(Query::<Order>::new().limit(MAX_PAGE + 1).plan(0).is_err());
        assert!(Query::<Order>::new().limit(MAX_PAGE).plan(0).is_ok());
    }

    #[test]
    fn the_prefix_end_bounds_every_id_with_the_prefix() {
        let plan = Query::<Order>::new().id_prefix("o-").plan(0).unwrap();
        let end = plan.id_prefix_end().unwrap();
        let longest = format!("o-{}", char::MAX.to_string().repeat(63));
        assert!(longest.len() <= 255);
        for id in ["o-", "o-1", "o-\u{10FFFF}", longest.as_str()] {
            assert!(id.as_bytes() < end.as_bytes(), "{id:?}");
        }
        assert!("o.".as_bytes() > end.as_bytes());
    }

    #[test]
    fn stuck_for_is_measured_on_the_store_clock() {
        let plan = Query::<Order>::new()
            .stuck_for(Duration::from_secs(60))
            .plan(100_000)
            .unwrap();
        assert_eq!(plan.entered_before_ms, Some(40_000));
    }
}
