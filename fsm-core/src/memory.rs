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

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::command::{Command, Fingerprint, fingerprint};
use crate::durable::{ClaimedEffect, DeadLetter, DurableStore, EffectId, Settlement};
use crate::error::{Error, Result};
use crate::kit::{check_id, check_storable, millis, new_token, now_ms, timer_delay};
use crate::machine::{EdgeIndex, StateMachine};
use crate::store::{Created, Outcome, Prepared, Snapshot, Store, Transition};

/// Instances by machine type, then id. Few machine types per store: a scan beats hashing
/// the type name on every call.
#[derive(Default)]
struct Instances {
    by_type: Vec<(&'static str, ById)>,
}

/// The instances of one machine type; each is an `Instance<M>` behind `Any`.
type ById = HashMap<String, Box<dyn Any + Send>>;

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

/// (machine type, id, version, seq), ordered as the outbox table's key.
type EffectKey = (&'static str, String, u64, u32);

struct OutboxRow {
    effect: String,
    attempts: u32,
    claims: u64,
    available_at: u64,
    lease_until: Option<u64>,
    done: bool,
    dead: bool,
    last_error: Option<String>,
}

/// (machine type, id, version armed at, edge).
type TimerKey = (&'static str, String, u64, EdgeIndex);

/// (machine type, id, token) -> expiry in ms.
type Tokens = HashMap<(&'static str, String, String), u64>;

/// Everything behind the store's one lock.
#[derive(Default)]
struct Tables {
    instances: Instances,
    outbox: BTreeMap<EffectKey, OutboxRow>,
    /// Due time of each armed timer.
    timers: BTreeMap<TimerKey, u64>,
    tokens: Tokens,
}

#[derive(Default)]
struct Shared {
    tables: Mutex<Tables>,
    /// How far [`MemoryStore::advance_clock`] moved this store's clock ahead, in ms.
    clock_offset_ms: AtomicU64,
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

struct Instance<M: StateMachine> {
    state: M::State,
    version: u64,
    context: M::Context,
    initial: Fingerprint,
    history: Vec<Transition<M>>,
    /// Stored key -> (index in `history`, fingerprint of the request).
    keys: HashMap<String, (usize, Fingerprint)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this store's clock ahead by `by`, for every clone: timers, token expiry,
    /// leases and retry backoff then see the later time. Lets a unit test fire a
    /// 30-minute timer without waiting (the history's `at_ms` stays wall-clock time).
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
        let instance = instance::<M>(instances, id)?;
        if let Some((index, recorded)) =
            prepared.stored_key().and_then(|key| instance.keys.get(key))
        {
            let original = instance.history[*index].clone();
            let outcome = prepared.replay(id, original, recorded)?;
            return Ok((outcome, snapshot.then(|| instance.snapshot(id))));
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
        let transition = instance.commit(id, prepared, now, outbox, timers)?;
        if let Some(slot) = token {
            tokens.remove(&slot);
        }
        Ok((
            Outcome::Applied(transition),
            snapshot.then(|| instance.snapshot(id)),
        ))
    }

    fn with_instance<M: StateMachine, T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Instance<M>) -> T,
    ) -> Result<T> {
        check_id::<M>(id)?;
        let mut tables = self.lock();
        instance::<M>(&mut tables.instances, id).map(f)
    }
}

fn instance<'a, M: StateMachine>(
    instances: &'a mut Instances,
    id: &str,
) -> Result<&'a mut Instance<M>> {
    let instance = instances
        .of_type(M::DEFINITION.name)
        .and_then(|by_id| by_id.get_mut(id))
        .ok_or_else(|| Error::not_found::<M>(id))?;
    downcast::<M>(instance.as_mut(), id)
}

impl<M: StateMachine> Instance<M> {
    fn snapshot(&self, id: &str) -> Snapshot<M> {
        Snapshot::new(id, self.state, self.version, self.context.clone())
    }

    /// Decides from the stored state and records the result: state, version, key,
    /// history, the effects in the outbox and the timers of the target state.
    fn commit(
        &mut self,
        id: &str,
        prepared: &Prepared<M>,
        now: u64,
        outbox: &mut BTreeMap<EffectKey, OutboxRow>,
        timers: &mut BTreeMap<TimerKey, u64>,
    ) -> Result<Transition<M>> {
        // Decided on a copy: an action that panics or leaves an unstorable context changes
        // nothing, as a rolled-back database transaction would not.
        let mut context = self.context.clone();
        let (transition, effects) =
            prepared.apply_in_place(id, self.state, &mut context, self.version)?;
        let effects = effects
            .iter()
            .map(|e| {
                serde_json::to_string(e).map_err(|s| Error::serialization::<M>(id, "effect", s))
            })
            .collect::<Result<Vec<_>>>()?;
        self.context = context;
        self.state = transition.to;
        self.version = transition.version;
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
                    done: false,
                    dead: false,
                    last_error: None,
                },
            );
        }
        arm::<M>(timers, id, transition.to, transition.version, now);
        self.history.push(transition.clone());
        Ok(transition)
    }
}

/// Arms the timers of `state`, entered at `version`.
fn arm<M: StateMachine>(
    timers: &mut BTreeMap<TimerKey, u64>,
    id: &str,
    state: M::State,
    version: u64,
    now: u64,
) {
    for &edge in M::timer_edges(state) {
        let due = now.saturating_add(millis(timer_delay::<M>(edge).unwrap_or_default()));
        timers.insert((M::DEFINITION.name, id.to_owned(), version, edge), due);
    }
}

fn downcast<'a, M: StateMachine>(
    instance: &'a mut (dyn Any + Send),
    id: &str,
) -> Result<&'a mut Instance<M>> {
    instance.downcast_mut::<Instance<M>>().ok_or_else(|| {
        Error::corrupt::<M>(
            "memory",
            id,
            "instance was created by another machine type of the same name".into(),
        )
    })
}

impl Store for MemoryStore {
    async fn create<M: StateMachine>(&self, id: &str, context: M::Context) -> Result<Created<M>> {
        check_id::<M>(id)?;
        check_storable::<M, _>(id, "context", &context)?;
        let initial =
            fingerprint(&context).map_err(|s| Error::serialization::<M>(id, "context", s))?;
        let now = self.now();
        let mut tables = self.lock();
        let by_id = tables.instances.of_type_or_new(M::DEFINITION.name);
        if let Some(existing) = by_id.get_mut(id) {
            let existing = downcast::<M>(existing.as_mut(), id)?;
            if existing.initial != initial {
                return Err(Error::AlreadyExists {
                    machine: M::DEFINITION.name,
                    id: id.to_owned(),
                    state: M::state_name(existing.state).to_owned(),
                    version: existing.version,
                });
            }
            return Ok(Created::Existing(existing.snapshot(id)));
        }
        let instance = Instance::<M> {
            state: M::INITIAL,
            version: 0,
            context,
            initial,
            history: Vec::new(),
            keys: HashMap::new(),
        };
        let snapshot = instance.snapshot(id);
        by_id.insert(id.to_owned(), Box::new(instance));
        arm::<M>(&mut tables.timers, id, M::INITIAL, 0, now);
        Ok(Created::New(snapshot))
    }

    async fn load<M: StateMachine>(&self, id: &str) -> Result<Snapshot<M>> {
        self.with_instance::<M, _>(id, |instance| instance.snapshot(id))
    }

    async fn fire<M: StateMachine>(&self, id: &str, command: Command<M>) -> Result<Outcome<M>> {
        let prepared = Prepared::new(id, command)?;
        self.fire_from(id, &prepared, false)
            .map(|(outcome, _)| outcome)
    }

    async fn fire_with<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> Result<Outcome<M>> {
        let prepared = Prepared::new(&snapshot.id, command)?;
        let (outcome, current) = self.fire_from(&snapshot.id, &prepared, true)?;
        if let Some(current) = current {
            *snapshot = current;
        }
        Ok(outcome)
    }

    async fn history<M: StateMachine>(&self, id: &str) -> Result<Vec<Transition<M>>> {
        self.with_instance::<M, _>(id, |instance| instance.history.clone())
    }
}

impl DurableStore for MemoryStore {
    async fn issue_token<M: StateMachine>(&self, id: &str, ttl: Duration) -> Result<String> {
        check_id::<M>(id)?;
        let expires_at = self.now().saturating_add(millis(ttl));
        let mut tables = self.lock();
        instance::<M>(&mut tables.instances, id)?;
        let token = new_token();
        let slot = (M::DEFINITION.name, id.to_owned(), token.clone());
        tables.tokens.insert(slot, expires_at);
        Ok(token)
    }

    async fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        _lease: Duration,
    ) -> Result<Vec<(String, Transition<M>)>> {
        // Claiming and firing happen under one lock, so no other claimer can see the
        // batch: the lease has nothing to protect here.
        let now = self.now();
        let mut tables = self.lock();
        let Tables {
            instances,
            outbox,
            timers,
            ..
        } = &mut *tables;
        let mut due: Vec<(u64, TimerKey)> = timers
            .iter()
            .filter(|((machine, ..), due_at)| *machine == M::DEFINITION.name && **due_at <= now)
            .map(|(key, &due_at)| (due_at, key.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        let mut fired = Vec::new();
        for (_, key) in due {
            timers.remove(&key);
            let (_, id, version, edge) = key;
            let Ok(instance) = instance::<M>(instances, &id) else {
                continue;
            };
            if instance.version != version {
                continue;
            }
            let prepared = Prepared::<M>::timer(edge);
            match instance.commit(&id, &prepared, now, outbox, timers) {
                Ok(transition) => fired.push((id, transition)),
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
                Ok(true)
            }
            _ => Ok(false),
        }
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
                    && !row.done
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
            Settlement::Done => row.done = true,
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
