//! [`MemoryStore`]: a thread-safe in-process [`Store`], for tests and single-process
//! services that need no durability.
//!
//! # Examples
//!
//! ```ignore
//! let store = fsm::MemoryStore::new();
//! store.create::<Order>("o-1", OrderData::default()).await?;
//! let outcome = store.fire("o-1", Command::<Order>::new(OrderEvent::Ship).with_key("k1")).await?;
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::command::{Command, Fingerprint, fingerprint};
use crate::error::{Error, Result};
use crate::machine::StateMachine;
use crate::store::{Outcome, Prepared, Snapshot, Store, Transition, check_id};

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

/// Machines held in memory behind one lock.
///
/// Each `fire` reads, decides and writes under the lock, so its compare-and-set never
/// loses; [`Store::fire_with`] with a stale snapshot re-decides from the stored version,
/// exactly as a database store does after a lost race.
#[derive(Default)]
pub struct MemoryStore {
    instances: Mutex<Instances>,
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

    fn lock(&self) -> MutexGuard<'_, Instances> {
        // A panic in another thread cannot leave an instance half-written: every
        // mutation below happens after all fallible steps.
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_instance<M: StateMachine, T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Instance<M>) -> Result<T>,
    ) -> Result<T> {
        let mut instances = self.lock();
        let instance = instances
            .of_type(M::DEFINITION.name)
            .and_then(|by_id| by_id.get_mut(id))
            .ok_or_else(|| Error::NotFound {
                machine: M::DEFINITION.name,
                id: id.to_owned(),
            })?;
        let instance = downcast::<M>(instance.as_mut(), id)?;
        f(instance)
    }

    /// Reads, decides and writes under the lock; `snapshot` asks for the instance as
    /// stored afterwards (for `fire_with`), which plain `fire` does not pay for.
    fn fire_from<M: StateMachine>(
        &self,
        id: &str,
        prepared: &Prepared<M>,
        snapshot: bool,
    ) -> Result<(Outcome<M>, Option<Snapshot<M>>)> {
        self.with_instance::<M, _>(id, |instance| {
            if let Some((index, recorded)) =
                prepared.stored_key().and_then(|key| instance.keys.get(key))
            {
                let original = instance.history[*index].clone();
                let outcome = prepared.replay(id, original, recorded)?;
                return Ok((outcome, snapshot.then(|| instance.snapshot(id))));
            }
            // Under the lock the stored version is the one decided from; a caller's stale
            // snapshot is superseded, as after a lost database race.
            let (transition, _effects) = prepared.apply_in_place(
                id,
                instance.state,
                &mut instance.context,
                instance.version,
            )?;
            instance.state = transition.to;
            instance.version = transition.version;
            if let (Some(key), Some(fingerprint)) = (prepared.stored_key(), prepared.fingerprint())
            {
                instance
                    .keys
                    .insert(key.to_owned(), (instance.history.len(), *fingerprint));
            }
            instance.history.push(transition.clone());
            Ok((
                Outcome::Applied(transition),
                snapshot.then(|| instance.snapshot(id)),
            ))
        })
    }
}

impl<M: StateMachine> Instance<M> {
    fn snapshot(&self, id: &str) -> Snapshot<M> {
        Snapshot {
            id: id.to_owned(),
            state: self.state,
            version: self.version,
            context: self.context.clone(),
        }
    }
}

fn downcast<'a, M: StateMachine>(
    instance: &'a mut (dyn Any + Send),
    id: &str,
) -> Result<&'a mut Instance<M>> {
    instance
        .downcast_mut::<Instance<M>>()
        .ok_or_else(|| Error::Corrupt {
            table: "memory",
            machine: M::DEFINITION.name,
            id: id.to_owned(),
            detail: "instance was created by another machine type of the same name".into(),
        })
}

fn context_fingerprint<M: StateMachine>(id: &str, context: &M::Context) -> Result<Fingerprint> {
    fingerprint(context).map_err(|source| Error::Serialization {
        machine: M::DEFINITION.name,
        id: id.to_owned(),
        what: "context",
        source,
    })
}

impl Store for MemoryStore {
    async fn create<M: StateMachine>(&self, id: &str, context: M::Context) -> Result<Snapshot<M>> {
        check_id::<M>(id)?;
        let initial = context_fingerprint::<M>(id, &context)?;
        let mut instances = self.lock();
        let by_id = instances.of_type_or_new(M::DEFINITION.name);
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
            return Ok(existing.snapshot(id));
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
        Ok(snapshot)
    }

    async fn load<M: StateMachine>(&self, id: &str) -> Result<Snapshot<M>> {
        self.with_instance::<M, _>(id, |instance| Ok(instance.snapshot(id)))
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
        self.with_instance::<M, _>(id, |instance| Ok(instance.history.clone()))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let instances = self.lock();
        let count: usize = instances.by_type.iter().map(|(_, by_id)| by_id.len()).sum();
        f.debug_struct("MemoryStore")
            .field("instances", &count)
            .finish()
    }
}
