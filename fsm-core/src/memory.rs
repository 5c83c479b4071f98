//! [`MemoryStore`]: a thread-safe in-process [`Store`] and [`DurableStore`], for unit
//! tests and single-process services that need no durability.
//!
//! It keeps everything a database store keeps (instances, history, idempotency keys,
//! single-use tokens, timers, the outbox and its dead letters) and answers exactly as
//! the sqlx stores do: the same conformance and durable suites run against it. What it
//! does not survive is the process: a restart loses every instance, pending timer and
//! undelivered effect.
//!
//! # Examples
//!
//! ```
//! use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState};
//! use fsm_core::{Command, MemoryStore, Store};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! store.create::<Order>("o-1", OrderData::default()).await?;
//! let cancel = || Command::<Order>::new(OrderEvent::Cancel).with_key("k1");
//! let outcome = store.fire("o-1", cancel()).await?;
//! assert_eq!(outcome.transition().to, OrderState::Cancelled);
//! assert!(store.fire("o-1", cancel()).await?.is_duplicate());
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```

use crate::wakeup::{OutboxWakeup, OutboxWakeups};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::command::{Command, Fingerprint, IdempotencyKey, fingerprint};
use crate::durable::{
    ArmedTimer, ClaimedEffect, DeadLetter, DurableStore, EffectId, EffectStatus, OutboxDepth,
    OutboxEntry, Settlement,
};
use crate::error::{Error, Result};
use crate::kit::{
    ListedRow, check_id, check_storable, millis, new_token, now_ms, timer_delay, timer_name,
};
use crate::machine::{StateMachine, Trigger};
use crate::observe;
use crate::query::{Page, Query, StateCounts, Unknown, UnknownKind, VerifyReport};
use crate::retention::{PruneReport, Retention};
use crate::store::{Created, Outcome, Prepared, Snapshot, Store, Transition};

/// Instances by machine type, then id. Few machine types per store: a scan beats hashing
/// the type name on every call.
#[derive(Default)]
struct Instances {
    by_type: Vec<(&'static str, ById)>,
}

type ById = HashMap<String, Entry>;

impl Instances {
    fn of_type(&mut self, machine: &'static str) -> Option<&mut ById> {
        self.by_type
            .iter_mut()
            .find(|(name, _)| std::ptr::eq(*name, machine) || *name == machine)
            .map(|(_, by_id)| by_id)
    }

    fn of_type_or_new(&mut self, machine: &'static str) -> &mut ById {
        let index = match self.by_type.iter().position(|(name, _)| *name == machine) {
            Some(index) => index,
            None => {
                self.by_type.push((machine, HashMap::new()));
                self.by_type.len() - 1
            }
        };
        &mut self.by_type[index].1
    }
}

/// One instance. What depends on the machine type (state and context) is typed, behind
/// `Any`, and can be encoded in stored form: another type of the same machine name (a
/// changed definition) then reads it by name, as a database store reads its rows.
struct Entry {
    typed: Box<dyn Any + Send>,
    /// The typed part's stored state name and context JSON.
    encode: fn(&(dyn Any + Send)) -> Result<(&'static str, String)>,
    version: u64,
    initial: Fingerprint,
    created_at: u64,
    entered_at: u64,
    updated_at: u64,
    /// History in stored form: names and JSON, decoded when read.
    history: Vec<Recorded>,
    /// Stored key -> (index in `history`, fingerprint of the request).
    keys: HashMap<String, (usize, Fingerprint)>,
}

/// The typed part of an instance of `M`.
struct Typed<M: StateMachine> {
    state: M::State,
    context: M::Context,
}

/// A history row as stored.
struct Recorded {
    version: u64,
    from: &'static str,
    /// The event's name; `None` for a timer.
    event: Option<&'static str>,
    /// The [`Trigger`].
    trigger: StoredTrigger,
    to: &'static str,
    key: Option<String>,
    at_ms: u64,
}

/// A history row's trigger: as fired, serialized only when another type of the same
/// machine name reads it (the firing type reads it back without JSON, as fsm's fire
/// path cannot afford a serialization per transition). [`Prepared`] checked it is
/// storable, so serializing it later cannot fail.
struct StoredTrigger {
    trigger: Box<dyn Any + Send + Sync>,
    to_json: fn(&(dyn Any + Send + Sync)) -> serde_json::Result<String>,
}

impl StoredTrigger {
    fn of<M: StateMachine>(trigger: Trigger<M::Event>) -> Self {
        fn to_json<M: StateMachine>(any: &(dyn Any + Send + Sync)) -> serde_json::Result<String> {
            match any.downcast_ref::<Trigger<M::Event>>() {
                Some(trigger) => serde_json::to_string(trigger),
                None => unreachable!("a trigger is stored with its own encoder"),
            }
        }
        StoredTrigger {
            trigger: Box::new(trigger),
            to_json: to_json::<M>,
        }
    }

    /// The trigger as `M` reads it: a clone when `M` fired it, else through its JSON.
    fn read<M: StateMachine>(&self) -> std::result::Result<Trigger<M::Event>, String> {
        if let Some(trigger) = self.trigger.downcast_ref::<Trigger<M::Event>>() {
            return Ok(trigger.clone());
        }
        let json = (self.to_json)(self.trigger.as_ref()).map_err(|e| e.to_string())?;
        serde_json::from_str(&json).map_err(|e| e.to_string())
    }
}

/// (machine type, id, version, seq), ordered as the outbox table's key.
type EffectKey = (&'static str, String, u64, u32);

struct OutboxRow {
    effect: String,
    attempts: u32,
    claims: u64,
    available_at: u64,
    lease_until: Option<u64>,
    done_at: Option<u64>,
    dead: bool,
    last_error: Option<String>,
}

/// (machine type, id, version armed at, delay in ms): a timer is named by its state and
/// delay, as in the database stores.
type TimerKey = (&'static str, String, u64, u64);

struct TimerRow {
    /// The state it was armed in.
    state: &'static str,
    due_at: u64,
    lease_until: Option<u64>,
}

/// (machine type, id, token) -> expiry in ms.
type Tokens = HashMap<(&'static str, String, String), u64>;

/// Everything behind the store's one lock.
#[derive(Default)]
struct Tables {
    instances: Instances,
    outbox: BTreeMap<EffectKey, OutboxRow>,
    timers: BTreeMap<TimerKey, TimerRow>,
    tokens: Tokens,
}

#[derive(Default)]
struct Shared {
    tables: Mutex<Tables>,
    /// How far [`MemoryStore::advance_clock`] moved this store's clock ahead, in ms.
    clock_offset_ms: AtomicU64,
    /// Dispatchers waiting for effects.
    wakeups: OutboxWakeups,
}

/// Machines held in memory behind one lock.
///
/// Each `fire` reads, decides and writes under the lock, so its compare-and-set never
/// loses; [`Store::fire_with`] with a stale snapshot re-decides from the stored version,
/// exactly as a database store does after a lost race. Clones share the same data, as
/// clones of a database store share its pool.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this store's clock ahead by `by`, for every clone: timers, token expiry,
    /// leases, retry backoff and the times listings filter on (creation, entering a
    /// state) then see the later time. Lets a unit test fire a 30-minute timer without
    /// waiting (the history's `at_ms` stays wall-clock time).
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_offset_ms
            .fetch_add(millis(by), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        now_ms().saturating_add(self.shared.clock_offset_ms.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic in another thread cannot leave an instance half-written: every
        // mutation below happens after all fallible steps.
        self.shared
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads, decides and writes under the lock; `snapshot` asks for the instance as
    /// stored afterwards (for `fire_with`), which plain `fire` does not pay for.
    fn fire_from<M: StateMachine>(
        &self,
        id: &str,
        prepared: &Prepared<M>,
        snapshot: bool,
    ) -> Result<(Outcome<M>, Option<Snapshot<M>>)> {
        let now = self.now();
        let mut tables = self.lock();
        let Tables {
            instances,
            outbox,
            timers,
            tokens,
        } = &mut *tables;
        let entry = entry::<M>(instances, id)?;
        if let Some((index, recorded)) = prepared.stored_key().and_then(|key| entry.keys.get(key)) {
            let original = decode_transition::<M>(id, &entry.history[*index])?;
            let outcome = prepared.replay(id, original, recorded)?;
            return Ok((outcome, snapshot.then(|| entry.snapshot::<M>(id))));
        }
        let token = match prepared.key().and_then(|key| key.token()) {
            None => None,
            Some(token) => {
                let slot = (M::DEFINITION.name, id.to_owned(), token.to_owned());
                match tokens.get(&slot) {
                    Some(&expires_at) if expires_at > now => Some(slot),
                    _ => {
                        return Err(Error::InvalidToken {
                            machine: M::DEFINITION.name,
                            id: id.to_owned(),
                        });
                    }
                }
            }
        };
        // Under the lock the stored version is the one decided from; a caller's stale
        // snapshot is superseded, as after a lost database race.
        let queued = outbox.len();
        let transition = entry.commit(id, prepared, now, outbox, timers)?;
        if let Some(slot) = token {
            tokens.remove(&slot);
        }
        if outbox.len() > queued {
            self.shared.wakeups.notify(M::DEFINITION.name);
        }
        Ok((
            Outcome::Applied(transition),
            snapshot.then(|| entry.snapshot::<M>(id)),
        ))
    }

    fn with_entry<M: StateMachine, T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Entry) -> Result<T>,
    ) -> Result<T> {
        check_id::<M>(id)?;
        let mut tables = self.lock();
        entry::<M>(&mut tables.instances, id).and_then(f)
    }
}

/// The instance `id` of `M`, its typed part converted to `M` first if another type of
/// the same name wrote it. A conversion that fails (a state `M` does not know, a context
/// that does not parse) changes nothing and is [`Error::Corrupt`], as the row would be
/// in a database store.
fn entry<'a, M: StateMachine>(instances: &'a mut Instances, id: &str) -> Result<&'a mut Entry> {
    let entry = instances
        .of_type(M::DEFINITION.name)
        .and_then(|by_id| by_id.get_mut(id))
        .ok_or_else(|| Error::not_found::<M>(id))?;
    if !entry.typed.is::<Typed<M>>() {
        let (state, context) = (entry.encode)(entry.typed.as_ref())?;
        let typed = decode_typed::<M>(id, state, &context)?;
        entry.typed = Box::new(typed);
        entry.encode = encode::<M>;
    }
    Ok(entry)
}

fn encode<M: StateMachine>(typed: &(dyn Any + Send)) -> Result<(&'static str, String)> {
    let typed = typed
        .downcast_ref::<Typed<M>>()
        .expect("an entry's encoder is the one of its typed part");
    let context = serde_json::to_string(&typed.context)
        .map_err(|s| Error::serialization::<M>("-", "context", s))?;
    Ok((M::state_name(typed.state), context))
}

fn decode_typed<M: StateMachine>(id: &str, state: &str, context: &str) -> Result<Typed<M>> {
    let parsed = M::parse_state(state).ok_or_else(|| {
        Error::corrupt::<M>("memory", id, format!("unknown state name {state:?}"))
    })?;
    let context = serde_json::from_str(context).map_err(|e| {
        Error::corrupt::<M>(
            "memory",
            id,
            format!("context is not a valid {}: {e}", M::DEFINITION.context),
        )
    })?;
    Ok(Typed {
        state: parsed,
        context,
    })
}

fn decode_transition<M: StateMachine>(id: &str, row: &Recorded) -> Result<Transition<M>> {
    let state = |name: &str| {
        M::parse_state(name).ok_or_else(|| {
            Error::corrupt::<M>(
                "memory",
                id,
                format!("unknown state name {name:?} in history"),
            )
        })
    };
    let event: Trigger<M::Event> = row.trigger.read::<M>().map_err(|e| {
        Error::corrupt::<M>(
            "memory",
            id,
            format!("trigger of version {} does not parse: {e}", row.version),
        )
    })?;
    Ok(Transition {
        version: row.version,
        from: state(row.from)?,
        event,
        to: state(row.to)?,
        key: row.key.clone(),
        at_ms: row.at_ms,
    })
}

impl Entry {
    fn typed<M: StateMachine>(&self) -> &Typed<M> {
        self.typed
            .downcast_ref()
            .expect("`entry` converted the typed part")
    }

    fn state_name(&self) -> Result<&'static str> {
        (self.encode)(self.typed.as_ref()).map(|(state, _)| state)
    }

    fn snapshot<M: StateMachine>(&self, id: &str) -> Snapshot<M> {
        let typed = self.typed::<M>();
        Snapshot::new(id, typed.state, self.version, typed.context.clone())
    }

    /// Decides from the stored state and records the result: state, version, key,
    /// history, the effects in the outbox and the timers of the target state.
    fn commit<M: StateMachine>(
        &mut self,
        id: &str,
        prepared: &Prepared<M>,
        now: u64,
        outbox: &mut BTreeMap<EffectKey, OutboxRow>,
        timers: &mut BTreeMap<TimerKey, TimerRow>,
    ) -> Result<Transition<M>> {
        let typed: &mut Typed<M> = self
            .typed
            .downcast_mut()
            .expect("`entry` converted the typed part");
        // Decided on a copy: an action that panics or leaves an unstorable context changes
        // nothing, as a rolled-back database transaction would not.
        let mut context = typed.context.clone();
        let (transition, effects) =
            prepared.apply_in_place(id, typed.state, &mut context, self.version)?;
        let effects = effects
            .iter()
            .map(|e| {
                serde_json::to_string(e).map_err(|s| Error::serialization::<M>(id, "effect", s))
            })
            .collect::<Result<Vec<_>>>()?;
        typed.context = context;
        typed.state = transition.to;
        self.version = transition.version;
        self.updated_at = now;
        if transition.from != transition.to {
            self.entered_at = now;
        }
        if let (Some(key), Some(fingerprint)) = (prepared.stored_key(), prepared.fingerprint()) {
            self.keys
                .insert(key.to_owned(), (self.history.len(), *fingerprint));
        }
        for (seq, effect) in (0u32..).zip(effects) {
            let key = (M::DEFINITION.name, id.to_owned(), transition.version, seq);
            outbox.insert(
                key,
                OutboxRow {
                    effect,
                    attempts: 0,
                    claims: 0,
                    available_at: now,
                    lease_until: None,
                    done_at: None,
                    dead: false,
                    last_error: None,
                },
            );
        }
        arm::<M>(timers, id, transition.to, transition.version, now);
        self.history.push(Recorded {
            version: transition.version,
            from: M::state_name(transition.from),
            event: transition.event.event().map(M::event_name),
            trigger: StoredTrigger::of::<M>(transition.event.clone()),
            to: M::state_name(transition.to),
            key: prepared
                .stored_key()
                .map(|k| IdempotencyKey::display_stored(k).to_owned()),
            at_ms: transition.at_ms,
        });
        Ok(transition)
    }
}

/// Arms the timers of `state`, entered at `version`: one per delay.
fn arm<M: StateMachine>(
    timers: &mut BTreeMap<TimerKey, TimerRow>,
    id: &str,
    state: M::State,
    version: u64,
    now: u64,
) {
    for &edge in M::timer_edges(state) {
        let after = millis(timer_delay::<M>(edge).unwrap_or_default());
        let key = (M::DEFINITION.name, id.to_owned(), version, after);
        timers.entry(key).or_insert(TimerRow {
            state: M::state_name(state),
            due_at: now.saturating_add(after),
            lease_until: None,
        });
    }
}

/// An instance's listing row; the context is left out (the page decodes from the entry).
fn listed_row(id: &str, entry: &Entry, state: &str) -> ListedRow {
    ListedRow {
        id: id.to_owned(),
        state: state.to_owned(),
        version: i64::try_from(entry.version).unwrap_or(i64::MAX),
        context: String::new(),
        created_at_ms: entry.created_at,
        entered_at_ms: entry.entered_at,
        updated_at_ms: entry.updated_at,
    }
}

impl Store for MemoryStore {
    async fn create<M: StateMachine>(&self, id: &str, context: M::Context) -> Result<Created<M>> {
        let _span = observe::instance_span("fsm.create", M::DEFINITION.name, id).entered();
        check_id::<M>(id)?;
        check_storable::<M, _>(id, "context", &context)?;
        let initial =
            fingerprint(&context).map_err(|s| Error::serialization::<M>(id, "context", s))?;
        let now = self.now();
        let mut tables = self.lock();
        let exists = tables
            .instances
            .of_type(M::DEFINITION.name)
            .is_some_and(|by_id| by_id.contains_key(id));
        if exists {
            let existing = entry::<M>(&mut tables.instances, id)?;
            if existing.initial != initial {
                return Err(Error::AlreadyExists {
                    machine: M::DEFINITION.name,
                    id: id.to_owned(),
                    state: M::state_name(existing.typed::<M>().state).to_owned(),
                    version: existing.version,
                });
            }
            return Ok(Created::Existing(existing.snapshot(id)));
        }
        let entry = Entry {
            typed: Box::new(Typed::<M> {
                state: M::INITIAL,
                context,
            }),
            encode: encode::<M>,
            version: 0,
            initial,
            created_at: now,
            entered_at: now,
            updated_at: now,
            history: Vec::new(),
            keys: HashMap::new(),
        };
        let snapshot = entry.snapshot(id);
        tables
            .instances
            .of_type_or_new(M::DEFINITION.name)
            .insert(id.to_owned(), entry);
        arm::<M>(&mut tables.timers, id, M::INITIAL, 0, now);
        Ok(Created::New(snapshot))
    }

    async fn load<M: StateMachine>(&self, id: &str) -> Result<Snapshot<M>> {
        let _span = observe::instance_span("fsm.load", M::DEFINITION.name, id).entered();
        self.with_entry::<M, _>(id, |entry| Ok(entry.snapshot(id)))
    }

    async fn fire<M: StateMachine>(&self, id: &str, command: Command<M>) -> Result<Outcome<M>> {
        let event = M::event_name(&command.event);
        let span = observe::fire_span::<M>(id, event, command.key.as_ref());
        observe::fire(span, event, async {
            let prepared = Prepared::new(id, command)?;
            self.fire_from(id, &prepared, false)
                .map(|(outcome, _)| outcome)
        })
        .await
    }

    async fn fire_with<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> Result<Outcome<M>> {
        let event = M::event_name(&command.event);
        let span = observe::fire_span::<M>(&snapshot.id, event, command.key.as_ref());
        observe::fire(span, event, async {
            let prepared = Prepared::new(&snapshot.id, command)?;
            let (outcome, current) = self.fire_from(&snapshot.id, &prepared, true)?;
            if let Some(current) = current {
                *snapshot = current;
            }
            Ok(outcome)
        })
        .await
    }

    async fn history<M: StateMachine>(&self, id: &str) -> Result<Vec<Transition<M>>> {
        let _span = observe::instance_span("fsm.history", M::DEFINITION.name, id).entered();
        check_id::<M>(id)?;
        let mut tables = self.lock();
        let entry = tables
            .instances
            .of_type(M::DEFINITION.name)
            .and_then(|by_id| by_id.get(id))
            .ok_or_else(|| Error::not_found::<M>(id))?;
        // History reads by name, whether or not the instance itself still loads.
        entry
            .history
            .iter()
            .map(|row| decode_transition::<M>(id, row))
            .collect()
    }

    async fn list<M: StateMachine>(&self, query: &Query<M>) -> Result<Page<M>> {
        let _span = observe::machine_span("fsm.list", M::DEFINITION.name).entered();
        let plan = query.plan(self.now())?;
        let mut tables = self.lock();
        let Some(by_id) = tables.instances.of_type(M::DEFINITION.name) else {
            return Ok(plan.page::<M>(Vec::new(), |_| unreachable!("no rows")));
        };
        let ids: Vec<String> = by_id.keys().cloned().collect();
        let mut rows = Vec::new();
        let mut unreadable = HashMap::new();
        for id in ids {
            let state = match entry::<M>(&mut tables.instances, &id) {
                Ok(entry) => M::state_name(entry.typed::<M>().state),
                Err(error) => {
                    let Some(entry) = tables
                        .instances
                        .of_type(M::DEFINITION.name)
                        .and_then(|by_id| by_id.get(&id))
                    else {
                        continue;
                    };
                    let name = entry.state_name().unwrap_or("");
                    unreadable.insert(id.clone(), error);
                    name
                }
            };
            let by_id = tables
                .instances
                .of_type(M::DEFINITION.name)
                .expect("listed above");
            let entry = &by_id[&id];
            let time = plan.sort_time(entry.created_at, entry.entered_at);
            if plan.matches(&id, state, entry.entered_at) && plan.is_after(time, &id) {
                rows.push(listed_row(&id, entry, state));
            }
        }
        let by_id = tables
            .instances
            .of_type(M::DEFINITION.name)
            .expect("listed above");
        let unreadable = Mutex::new(unreadable);
        Ok(plan.page::<M>(rows, |row| {
            if let Some(error) = unreadable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&row.id)
            {
                return Err(error);
            }
            Ok(by_id[&row.id].snapshot(&row.id))
        }))
    }

    async fn count_by_state<M: StateMachine>(&self) -> Result<StateCounts<M>> {
        let _span = observe::machine_span("fsm.count_by_state", M::DEFINITION.name).entered();
        let mut tables = self.lock();
        let Some(by_id) = tables.instances.of_type(M::DEFINITION.name) else {
            return Ok(StateCounts::from_stored([]));
        };
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for entry in by_id.values() {
            *counts.entry(entry.state_name()?).or_default() += 1;
        }
        Ok(StateCounts::from_stored(
            counts.into_iter().map(|(name, n)| (name.to_owned(), n)),
        ))
    }

    async fn verify<M: StateMachine>(&self) -> Result<VerifyReport> {
        let _span = observe::machine_span("fsm.verify", M::DEFINITION.name).entered();
        let tables = self.lock();
        let machine = M::DEFINITION.name;
        let definition = M::DEFINITION;
        let mut found: HashMap<(UnknownKind, String), Unknown> = HashMap::new();
        let mut counts = [0u64; 3];
        let mut note = |kind, name: &str, id: &str| {
            let known = match kind {
                UnknownKind::State | UnknownKind::HistoryState => definition.state(name).is_some(),
                UnknownKind::Event => definition.event(name).is_some(),
                UnknownKind::Timer => false,
            };
            if known {
                return;
            }
            let unknown = found
                .entry((kind, name.to_owned()))
                .or_insert_with(|| Unknown {
                    kind,
                    name: name.to_owned(),
                    count: 0,
                    sample_ids: Vec::new(),
                });
            unknown.count += 1;
            // The three smallest ids, as the database stores sample them.
            if !unknown.sample_ids.iter().any(|s| s == id) {
                unknown.sample_ids.push(id.to_owned());
                unknown.sample_ids.sort();
                unknown.sample_ids.truncate(3);
            }
        };
        if let Some((_, by_id)) = tables.instances.by_type.iter().find(|(m, _)| *m == machine) {
            for (id, entry) in by_id {
                counts[0] += 1;
                counts[1] += entry.history.len() as u64;
                note(UnknownKind::State, entry.state_name()?, id);
                for row in &entry.history {
                    note(UnknownKind::HistoryState, row.from, id);
                    if row.to != row.from {
                        note(UnknownKind::HistoryState, row.to, id);
                    }
                    if let Some(event) = row.event {
                        note(UnknownKind::Event, event, id);
                    }
                }
            }
        }
        for ((m, id, _, after), row) in &tables.timers {
            if *m != machine {
                continue;
            }
            counts[2] += 1;
            let after = Duration::from_millis(*after);
            if !definition.has_timer(row.state, after) {
                note(UnknownKind::Timer, &timer_name(row.state, after), id);
            }
        }
        Ok(VerifyReport::of::<M>(counts, found.into_values()))
    }
}

impl DurableStore for MemoryStore {
    fn outbox_wakeup(&self, machine: &'static str) -> Option<OutboxWakeup> {
        Some(self.shared.wakeups.subscribe(machine))
    }

    async fn issue_token<M: StateMachine>(&self, id: &str, ttl: Duration) -> Result<String> {
        check_id::<M>(id)?;
        let expires_at = self.now().saturating_add(millis(ttl));
        let mut tables = self.lock();
        let exists = tables
            .instances
            .of_type(M::DEFINITION.name)
            .is_some_and(|by_id| by_id.contains_key(id));
        if !exists {
            return Err(Error::not_found::<M>(id));
        }
        let token = new_token();
        let slot = (M::DEFINITION.name, id.to_owned(), token.clone());
        tables.tokens.insert(slot, expires_at);
        Ok(token)
    }

    async fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<(String, Transition<M>)>> {
        let now = self.now();
        let mut tables = self.lock();
        let Tables {
            instances,
            outbox,
            timers,
            ..
        } = &mut *tables;
        let machine = M::DEFINITION.name;
        let mut due: Vec<(u64, TimerKey)> = timers
            .iter()
            .filter(|((m, ..), row)| {
                *m == machine
                    && row.due_at <= now
                    && row.lease_until.is_none_or(|until| until <= now)
            })
            .map(|(key, row)| (row.due_at, key.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        let mut fired = Vec::new();
        for (_, key) in due {
            let (_, id, version, after) = &key;
            let after = Duration::from_millis(*after);
            let state = timers[&key].state;
            let entry = match entry::<M>(instances, id) {
                Ok(entry) => entry,
                Err(Error::NotFound { .. }) => {
                    timers.remove(&key);
                    continue;
                }
                // An instance this definition cannot read: kept, and tried again once the
                // lease runs out, as a database store does.
                Err(err) => {
                    tracing::error!(machine, id = %id, error = %err, "timer skipped: its instance does not load");
                    lease_timer(timers, &key, now, lease);
                    continue;
                }
            };
            if entry.version != *version {
                // The instance moved on: the timer can never fire.
                timers.remove(&key);
                continue;
            }
            if !M::DEFINITION.has_timer(state, after) {
                tracing::error!(machine, id = %id, timer = %timer_name(state, after), "timer skipped: the definition has no such timer; kept");
                lease_timer(timers, &key, now, lease);
                continue;
            }
            let prepared = Prepared::<M>::timer(after);
            let due_at = timers[&key].due_at;
            let queued = outbox.len();
            let result = entry.commit(id, &prepared, now, outbox, timers);
            if outbox.len() > queued {
                self.shared.wakeups.notify(machine);
            }
            timers.remove(&key);
            match result {
                Ok(transition) => {
                    observe::timer_fired(
                        machine,
                        Duration::from_millis(now.saturating_sub(due_at)),
                    );
                    fired.push((key.1, transition));
                }
                Err(Error::IllegalTransition { .. } | Error::GuardRejected { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(fired)
    }

    async fn dead_letters<M: StateMachine>(&self) -> Result<Vec<DeadLetter<M::Effect>>> {
        let tables = self.lock();
        let mut dead: Vec<_> = tables
            .outbox
            .iter()
            .filter(|((machine, ..), row)| *machine == M::DEFINITION.name && row.dead)
            .collect();
        dead.sort_by_key(|((_, id, version, seq), row)| (row.available_at, id, *version, *seq));
        Ok(dead
            .into_iter()
            .map(|(key, row)| DeadLetter::of(M::DEFINITION.name, claimed(key, row)))
            .collect())
    }

    async fn requeue(&self, id: &EffectId) -> Result<bool> {
        let now = self.now();
        let mut tables = self.lock();
        let key = (id.machine, id.id.clone(), id.version, id.seq);
        match tables.outbox.get_mut(&key) {
            Some(row) if row.dead => {
                row.dead = false;
                row.attempts = 0;
                row.available_at = now;
                row.last_error = None;
                self.shared.wakeups.notify(id.machine);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn discard(&self, id: &EffectId) -> Result<bool> {
        let mut tables = self.lock();
        let key = (id.machine, id.id.clone(), id.version, id.seq);
        if tables.outbox.get(&key).is_some_and(|row| row.dead) {
            tables.outbox.remove(&key);
            tracing::info!(effect = %id, "dead letter discarded");
            return Ok(true);
        }
        Ok(false)
    }

    async fn prune(&self, retention: &Retention) -> Result<PruneReport> {
        let now = self.now();
        let batch = retention.batch_size();
        let done_before = now.saturating_sub(millis(retention.done_effects));
        let expired_before = now.saturating_sub(millis(retention.expired_tokens));
        let mut tables = self.lock();
        let done: Vec<EffectKey> = tables
            .outbox
            .iter()
            .filter(|(_, row)| row.done_at.is_some_and(|at| at < done_before))
            .map(|(key, _)| key.clone())
            .take(batch)
            .collect();
        for key in &done {
            tables.outbox.remove(key);
        }
        let expired: Vec<_> = tables
            .tokens
            .iter()
            .filter(|(_, expires_at)| **expires_at < expired_before)
            .map(|(slot, _)| slot.clone())
            .take(batch)
            .collect();
        for slot in &expired {
            tables.tokens.remove(slot);
        }
        Ok(PruneReport {
            done_effects: done.len() as u64,
            expired_tokens: expired.len() as u64,
            finished_instances: 0,
        })
    }

    async fn prune_finished<M: StateMachine>(
        &self,
        older_than: Duration,
        batch: usize,
    ) -> Result<u64> {
        let machine = M::DEFINITION.name;
        let entered_before = self.now().saturating_sub(millis(older_than));
        let mut tables = self.lock();
        let Tables {
            instances,
            outbox,
            timers,
            tokens,
        } = &mut *tables;
        let Some(by_id) = instances.of_type(machine) else {
            return Ok(0);
        };
        let unsettled: std::collections::HashSet<&str> = outbox
            .iter()
            .filter(|((m, ..), row)| *m == machine && row.done_at.is_none())
            .map(|((_, id, ..), _)| id.as_str())
            .collect();
        let mut finished: Vec<(u64, String)> = by_id
            .iter()
            .filter(|(id, entry)| {
                entry.entered_at < entered_before
                    && !unsettled.contains(id.as_str())
                    && entry
                        .state_name()
                        .ok()
                        .and_then(|name| M::DEFINITION.state(name))
                        .is_some_and(|state| state.terminal)
            })
            .map(|(id, entry)| (entry.entered_at, id.clone()))
            .collect();
        // Oldest first, as the database stores walk their index.
        finished.sort();
        finished.truncate(batch.max(1));
        for (_, id) in &finished {
            by_id.remove(id);
            outbox.retain(|(m, row_id, ..), _| !(*m == machine && row_id == id));
            timers.retain(|(m, row_id, ..), _| !(*m == machine && row_id == id));
            tokens.retain(|(m, row_id, _), _| !(*m == machine && row_id == id));
        }
        Ok(finished.len() as u64)
    }

    async fn claim_effects(
        &self,
        machine: &'static str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEffect>> {
        let now = self.now();
        let lease_until = now.saturating_add(millis(lease));
        let mut tables = self.lock();
        let mut due: Vec<_> = tables
            .outbox
            .iter_mut()
            .filter(|((m, ..), row)| {
                *m == machine
                    && row.done_at.is_none()
                    && !row.dead
                    && row.available_at <= now
                    && row.lease_until.is_none_or(|until| until <= now)
            })
            .collect();
        due.sort_by_key(|((_, id, version, seq), row)| (row.available_at, id, *version, *seq));
        due.truncate(limit);
        let mut claimed_rows: Vec<ClaimedEffect> = due
            .into_iter()
            .map(|(key, row)| {
                row.lease_until = Some(lease_until);
                row.attempts = row.attempts.saturating_add(1);
                row.claims += 1;
                claimed(key, row)
            })
            .collect();
        claimed_rows.sort_by(|a, b| {
            (&a.machine_id, a.version, a.seq).cmp(&(&b.machine_id, b.version, b.seq))
        });
        Ok(claimed_rows)
    }

    async fn settle_effect(
        &self,
        machine: &'static str,
        effect: &ClaimedEffect,
        settlement: Settlement<'_>,
    ) -> Result<bool> {
        let now = self.now();
        let mut tables = self.lock();
        let key = (
            machine,
            effect.machine_id.clone(),
            effect.version,
            effect.seq,
        );
        let Some(row) = tables.outbox.get_mut(&key) else {
            return Ok(false);
        };
        // The claim's lease token: a worker whose lease expired and was claimed again
        // settles nothing.
        if row.claims != effect.claim {
            return Ok(false);
        }
        row.lease_until = None;
        match settlement {
            Settlement::Done => row.done_at = Some(now),
            Settlement::Retry { delay, error } => {
                row.available_at = now.saturating_add(millis(delay));
                row.last_error = Some(error.to_owned());
            }
            Settlement::Dead { error } => {
                row.dead = true;
                row.last_error = Some(error.to_owned());
            }
            Settlement::Release => row.attempts = row.attempts.saturating_sub(1),
        }
        Ok(true)
    }

    async fn outbox_depth(&self, machine: &'static str) -> Result<OutboxDepth> {
        let tables = self.lock();
        let mut depth = OutboxDepth::default();
        for row in tables
            .outbox
            .iter()
            .filter(|((m, ..), _)| *m == machine)
            .map(|(_, row)| row)
        {
            match (row.dead, row.done_at) {
                (true, _) => depth.dead += 1,
                (false, None) => depth.pending += 1,
                (false, Some(_)) => {}
            }
        }
        Ok(depth)
    }

    async fn pending_timers<M: StateMachine>(&self, id: &str) -> Result<Vec<ArmedTimer>> {
        check_id::<M>(id)?;
        let tables = self.lock();
        let mut armed: Vec<ArmedTimer> = tables
            .timers
            .iter()
            .filter(|((m, i, ..), _)| *m == M::DEFINITION.name && i == id)
            .map(|((_, _, version, after), row)| ArmedTimer {
                state: row.state.to_owned(),
                after: Duration::from_millis(*after),
                version: *version,
                due_at_ms: row.due_at,
            })
            .collect();
        armed.sort_by_key(|t| (t.due_at_ms, t.version, t.after));
        Ok(armed)
    }

    async fn outbox<M: StateMachine>(&self, id: &str) -> Result<Vec<OutboxEntry<M::Effect>>> {
        check_id::<M>(id)?;
        let machine = M::DEFINITION.name;
        let tables = self.lock();
        let from = (machine, id.to_owned(), 0, 0);
        Ok(tables
            .outbox
            .range(from..)
            .take_while(|((m, i, ..), _)| *m == machine && i == id)
            .map(|((_, _, version, seq), row)| OutboxEntry {
                id: EffectId {
                    machine,
                    id: id.to_owned(),
                    version: *version,
                    seq: *seq,
                },
                effect: serde_json::from_str(&row.effect).ok(),
                raw: row.effect.clone(),
                status: match (row.dead, row.done_at) {
                    (true, _) => EffectStatus::Dead,
                    (false, Some(_)) => EffectStatus::Done,
                    (false, None) => EffectStatus::Pending,
                },
                attempts: row.attempts,
                last_error: row.last_error.clone(),
                available_at_ms: row.available_at,
                done_at_ms: row.done_at,
            })
            .collect())
    }
}

/// Keeps a timer that cannot fire now out of the next claims until `lease` has passed.
fn lease_timer(
    timers: &mut BTreeMap<TimerKey, TimerRow>,
    key: &TimerKey,
    now: u64,
    lease: Duration,
) {
    if let Some(row) = timers.get_mut(key) {
        row.lease_until = Some(now.saturating_add(millis(lease)));
    }
}

fn claimed((_, id, version, seq): &EffectKey, row: &OutboxRow) -> ClaimedEffect {
    ClaimedEffect {
        machine_id: id.clone(),
        version: *version,
        seq: *seq,
        effect: row.effect.clone(),
        attempts: row.attempts,
        claim: row.claims,
        last_error: row.last_error.clone(),
        available_at_ms: row.available_at,
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables = self.lock();
        let count: usize = tables
            .instances
            .by_type
            .iter()
            .map(|(_, by_id)| by_id.len())
            .sum();
        f.debug_struct("MemoryStore")
            .field("instances", &count)
            .field("outbox", &tables.outbox.len())
            .field("timers", &tables.timers.len())
            .finish()
    }
}
