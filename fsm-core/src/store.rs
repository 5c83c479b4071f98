//! The [`Store`] trait, what it returns, and the decision every store delegates to
//! ([`Prepared`], documented for implementers in [`kit`](crate::kit)).

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Fingerprint, IdempotencyKey, MAX_KEY_LEN, fingerprint};
use crate::error::{Error, Result};
use crate::kit::{check_id, check_storable, now_ms};
use crate::machine::{Rejection, StateMachine, Trigger, step, step_timer};
use crate::query::{Page, Query, StateCounts, VerifyReport};

/// One machine instance as stored: its state, version and context.
///
/// A store seals the snapshots it hands out: [`Store::fire_with`] trusts a snapshot to
/// save its read only while its fields are exactly as the store left them. A snapshot
/// changed by the caller, built with [`Snapshot::new`] or deserialized is read afresh
/// first, so it can never be forged into a decision.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Snapshot<M: StateMachine> {
    /// The business id.
    pub id: String,
    /// The current state.
    pub state: M::State,
    /// 0 at creation, +1 per applied transition.
    pub version: u64,
    /// The context after the last transition.
    pub context: M::Context,
    /// The issuing store's seal over the fields above, if a store issued it.
    #[serde(skip)]
    pub(crate) seal: Option<[u8; 32]>,
}

impl<M: StateMachine> Snapshot<M> {
    /// A snapshot no store has sealed: `fire_with` reads the instance before deciding.
    pub fn new(id: impl Into<String>, state: M::State, version: u64, context: M::Context) -> Self {
        Snapshot {
            id: id.into(),
            state,
            version,
            context,
            seal: None,
        }
    }
}

/// One applied transition, as kept in history.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Transition<M: StateMachine> {
    /// The version this transition produced (1 for the first).
    pub version: u64,
    /// The state before.
    pub from: M::State,
    /// The event (or timer) that caused it.
    pub event: Trigger<M::Event>,
    /// The state after.
    pub to: M::State,
    /// The idempotency key it was recorded under, as shown: the client's string,
    /// `source#seq` or `token:<T>`.
    pub key: Option<String>,
    /// When it was applied, as milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// What firing a command did.
#[derive(Serialize, Deserialize)]
#[serde(bound = "", rename_all = "snake_case")]
pub enum Outcome<M: StateMachine> {
    /// The transition was applied now.
    Applied(Transition<M>),
    /// The key was seen before with the same request: the original transition, unchanged.
    Duplicate(Transition<M>),
}

impl<M: StateMachine> Outcome<M> {
    /// The transition, applied now or before.
    pub fn transition(&self) -> &Transition<M> {
        match self {
            Outcome::Applied(t) | Outcome::Duplicate(t) => t,
        }
    }

    /// Whether this is a replay of an earlier command.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate(_))
    }
}

/// What [`Store::create`] found: a new instance, or the one created earlier with the
/// same id and the same initial context (in whatever state it is now).
///
/// # Examples
///
/// ```
/// use fsm_core::testing::{Order, OrderData};
/// use fsm_core::{MemoryStore, Store};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// assert!(store.create::<Order>("o-1", OrderData::default()).await?.is_new());
/// let again = store.create::<Order>("o-1", OrderData::default()).await?;
/// assert!(!again.is_new());
/// assert_eq!(again.snapshot().version, 0);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub enum Created<M: StateMachine> {
    /// Created by this call.
    New(Snapshot<M>),
    /// Created before, with the same initial context.
    Existing(Snapshot<M>),
}

impl<M: StateMachine> Created<M> {
    /// Whether this call created the instance.
    pub fn is_new(&self) -> bool {
        matches!(self, Created::New(_))
    }

    /// The instance as stored now.
    pub fn snapshot(&self) -> &Snapshot<M> {
        match self {
            Created::New(s) | Created::Existing(s) => s,
        }
    }

    /// The instance as stored now, by value.
    pub fn into_snapshot(self) -> Snapshot<M> {
        match self {
            Created::New(s) | Created::Existing(s) => s,
        }
    }
}

impl<M: StateMachine> Clone for Created<M> {
    fn clone(&self) -> Self {
        match self {
            Created::New(s) => Created::New(s.clone()),
            Created::Existing(s) => Created::Existing(s.clone()),
        }
    }
}

impl<M: StateMachine> fmt::Debug for Created<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Created::New(s) => f.debug_tuple("New").field(s).finish(),
            Created::Existing(s) => f.debug_tuple("Existing").field(s).finish(),
        }
    }
}

/// Persistence of machine instances with exactly-once transitions.
///
/// One store holds instances of any number of machine types, keyed by
/// (`M::DEFINITION.name`, id). Every implementation passes the conformance suite in
/// `fsm_core::testing`; behaviour never differs between stores.
pub trait Store: Send + Sync + 'static {
    /// Creates an instance in the initial state at version 0.
    ///
    /// Idempotent on the business id: the same id with the same initial context returns
    /// the existing instance (in whatever state it is now) as [`Created::Existing`];
    /// of two simultaneous first calls exactly one gets [`Created::New`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] when the id exists with another initial context;
    /// [`Error::InvalidId`] for an id outside 1..=255 bytes.
    fn create<M: StateMachine>(
        &self,
        id: &str,
        context: M::Context,
    ) -> impl Future<Output = Result<Created<M>>> + Send;

    /// Reads an instance.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::Corrupt`] when the stored row does not parse.
    fn load<M: StateMachine>(&self, id: &str) -> impl Future<Output = Result<Snapshot<M>>> + Send;

    /// Fires a command at an instance: applies the transition once, or returns the
    /// original outcome for a known key.
    ///
    /// # Errors
    ///
    /// [`Error::IllegalTransition`], [`Error::GuardRejected`], [`Error::KeyReused`],
    /// [`Error::InvalidKey`], [`Error::NotFound`], [`Error::Conflict`] after the retry
    /// policy is exhausted, and backend errors.
    fn fire<M: StateMachine>(
        &self,
        id: &str,
        command: Command<M>,
    ) -> impl Future<Output = Result<Outcome<M>>> + Send;

    /// Fires a command starting from a snapshot the caller already holds, saving the read
    /// when it is current; on success the snapshot is advanced to the stored state.
    ///
    /// # Errors
    ///
    /// As [`Store::fire`]. On error the snapshot may have been refreshed from the store,
    /// never advanced past it.
    fn fire_with<M: StateMachine>(
        &self,
        snapshot: &mut Snapshot<M>,
        command: Command<M>,
    ) -> impl Future<Output = Result<Outcome<M>>> + Send;

    /// The instance's applied transitions in version order (1..=n).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::Corrupt`] for a row that does not parse.
    fn history<M: StateMachine>(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<Transition<M>>>> + Send;

    /// One page of the instances of `M` matching `query`, in its order (see [`Query`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for a cursor this store did not issue for this ordering;
    /// backend errors. A row that does not decode is reported in
    /// [`Page::unreadable`](crate::Page::unreadable), not as an error.
    fn list<M: StateMachine>(
        &self,
        query: &Query<M>,
    ) -> impl Future<Output = Result<Page<M>>> + Send;

    /// How many instances of `M` are in each state.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn count_by_state<M: StateMachine>(
        &self,
    ) -> impl Future<Output = Result<StateCounts<M>>> + Send;

    /// Scans everything stored for `M` (instances, history, pending timers) and reports
    /// every state, event and timer the current definition does not know, with counts
    /// and sample ids. Reads only; run it against a copy of production before deploying
    /// a changed definition.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn verify<M: StateMachine>(&self) -> impl Future<Output = Result<VerifyReport>> + Send;
}

/// A command checked and fingerprinted before any I/O.
pub struct Prepared<M: StateMachine> {
    trigger: Trigger<M::Event>,
    key: Option<IdempotencyKey>,
    stored_key: Option<String>,
    legacy_key: Option<String>,
    fingerprint: Option<Fingerprint>,
}

/// What [`Prepared::apply`] decided: the new state and context, the history row and
/// the effects to write in the same commit.
pub struct Applied<M: StateMachine> {
    /// The instance after the transition.
    pub snapshot: Snapshot<M>,
    /// The history row.
    pub transition: Transition<M>,
    /// Effects emitted by the action, in order.
    pub effects: Vec<M::Effect>,
}

impl<M: StateMachine> Prepared<M> {
    /// Validates `id` and the command's key and fingerprints the event if there is a key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`], [`Error::InvalidKey`], [`Error::Serialization`].
    pub fn new(id: &str, command: Command<M>) -> Result<Self> {
        check_id::<M>(id)?;
        let stored_key = match &command.key {
            None => None,
            Some(key) => {
                let stored = key.as_stored().into_owned();
                let client_control =
                    matches!(key, IdempotencyKey::Client(k) if k.contains(char::is_control));
                if stored.is_empty()
                    || stored.len() > MAX_KEY_LEN
                    || stored.contains('\0')
                    || client_control
                {
                    return Err(Error::InvalidKey {
                        machine: M::DEFINITION.name,
                        id: id.to_owned(),
                        len: stored.len(),
                    });
                }
                Some(stored)
            }
        };
        // Every store writes the event into history: refuse what could not be read back.
        check_storable::<M, _>(id, "event", &command.event)?;
        let fingerprint = match stored_key {
            None => None,
            Some(_) => Some(
                fingerprint(&command.event)
                    .map_err(|source| Error::serialization::<M>(id, "event", source))?,
            ),
        };
        let legacy_key = command.key.as_ref().and_then(IdempotencyKey::legacy_stored);
        Ok(Prepared {
            legacy_key,
            trigger: Trigger::Event(command.event),
            key: command.key,
            stored_key,
            fingerprint,
        })
    }

    /// A firing of the timer `after(..)` of the state the instance is in; timers carry
    /// no key, their version stamp makes them idempotent.
    pub fn timer(after: Duration) -> Self {
        Prepared {
            trigger: Trigger::Timer { after },
            key: None,
            stored_key: None,
            legacy_key: None,
            fingerprint: None,
        }
    }

    /// The key in stored form, if the command has one.
    pub fn stored_key(&self) -> Option<&str> {
        self.stored_key.as_deref()
    }

    /// The form fsm 0.1.0 stored this source or token key in, to look up as well.
    pub fn legacy_key(&self) -> Option<&str> {
        self.legacy_key.as_deref()
    }

    /// The key as history shows it.
    fn shown_key(&self) -> Option<String> {
        self.stored_key
            .as_deref()
            .map(|k| IdempotencyKey::display_stored(k).to_owned())
    }

    /// The key as given.
    pub fn key(&self) -> Option<&IdempotencyKey> {
        self.key.as_ref()
    }

    /// The event's fingerprint, if the command has a key.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// The event or timer.
    pub fn trigger(&self) -> &Trigger<M::Event> {
        &self.trigger
    }

    /// The key was recorded before: the same request is a [`Outcome::Duplicate`] of
    /// `recorded`, another one is [`Error::KeyReused`].
    ///
    /// # Errors
    ///
    /// [`Error::KeyReused`] when `recorded_fingerprint` differs from this command's.
    pub fn replay(
        &self,
        id: &str,
        recorded: Transition<M>,
        recorded_fingerprint: &Fingerprint,
    ) -> Result<Outcome<M>> {
        if self.fingerprint.as_ref() == Some(recorded_fingerprint) {
            Ok(Outcome::Duplicate(recorded))
        } else {
            Err(Error::KeyReused {
                machine: M::DEFINITION.name,
                id: id.to_owned(),
                key: self.shown_key().unwrap_or_default(),
                version: recorded.version,
            })
        }
    }

    /// Runs the transition rule from `current`. The store writes the result with a
    /// compare-and-set on `current.version`.
    ///
    /// # Errors
    ///
    /// [`Error::IllegalTransition`] or [`Error::GuardRejected`].
    pub fn apply(&self, current: &Snapshot<M>) -> Result<Applied<M>> {
        let mut context = current.context.clone();
        let version = current.version;
        let (transition, effects) =
            self.apply_in_place(&current.id, current.state, &mut context, version)?;
        Ok(Applied {
            snapshot: Snapshot::new(
                current.id.clone(),
                transition.to,
                transition.version,
                context,
            ),
            transition,
            effects,
        })
    }

    /// [`apply`](Self::apply) on parts a store holds itself, changing `context` in place:
    /// on an error it may be half-changed, so pass a copy unless it is thrown away then.
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply).
    pub fn apply_in_place(
        &self,
        id: &str,
        state: M::State,
        context: &mut M::Context,
        version: u64,
    ) -> Result<(Transition<M>, Vec<M::Effect>)> {
        let taken = match &self.trigger {
            Trigger::Event(event) => step::<M>(state, context, event),
            Trigger::Timer { after } => step_timer::<M>(state, context, *after),
        };
        let taken = taken.map_err(|rejection| self.rejected(id, state, rejection))?;
        check_storable::<M, _>(id, "context", context)?;
        for effect in taken.effects.as_slice() {
            check_storable::<M, _>(id, "effect", effect)?;
        }
        let transition = Transition {
            version: version + 1,
            from: taken.from,
            event: self.trigger.clone(),
            to: taken.to,
            key: self.shown_key(),
            at_ms: now_ms(),
        };
        Ok((transition, taken.effects.into_vec()))
    }

    #[cold]
    fn rejected(&self, id: &str, state: M::State, rejection: Rejection) -> Error {
        let machine = M::DEFINITION.name;
        let event = self.trigger.label();
        let state = M::state_name(state).to_owned();
        match rejection {
            Rejection::Illegal { repeat } => Error::IllegalTransition {
                machine,
                id: id.to_owned(),
                state,
                event,
                repeat,
            },
            Rejection::GuardRejected { guards } => Error::GuardRejected {
                machine,
                id: id.to_owned(),
                state,
                event,
                guards,
            },
        }
    }
}

impl<M: StateMachine> fmt::Debug for Applied<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applied")
            .field("snapshot", &self.snapshot)
            .field("transition", &self.transition)
            .field("effects", &self.effects)
            .finish()
    }
}

impl<M: StateMachine> fmt::Debug for Prepared<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("trigger", &self.trigger)
            .field("key", &self.stored_key)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// How often and how patiently a store retries a lost compare-and-set.
///
/// Delays grow exponentially from `base_delay` up to `max_delay`, with full jitter so
/// that racing writers spread out.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let policy = fsm_core::RetryPolicy { max_attempts: 3, ..Default::default() };
/// assert!(policy.delay(10) <= policy.max_delay);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// Upper bound of the delay before the second attempt.
    pub base_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 16,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// Never retries: the first lost race is [`Error::Conflict`].
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    /// A jittered delay before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // RandomState is seeded per instance: enough entropy for jitter, no extra crate.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Duration::from_nanos(random % nanos)
    }

    /// Called after losing compare-and-set attempt number `attempt` (from 1) at
    /// `version`: sleeps a jittered delay, or gives up once `max_attempts` are spent.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] naming `machine` and `id` when no attempt is left.
    pub async fn pause(
        &self,
        attempt: u32,
        machine: &'static str,
        id: &str,
        version: u64,
    ) -> Result<()> {
        if attempt >= self.max_attempts.max(1) {
            return Err(Error::Conflict {
                machine,
                id: id.to_owned(),
                version,
                attempts: attempt,
            });
        }
        let delay = self.delay(attempt);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

impl<M: StateMachine> Clone for Snapshot<M> {
    fn clone(&self) -> Self {
        Snapshot {
            id: self.id.clone(),
            state: self.state,
            version: self.version,
            context: self.context.clone(),
            seal: self.seal,
        }
    }
}

impl<M: StateMachine> fmt::Debug for Snapshot<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("machine", &M::DEFINITION.name)
            .field("id", &self.id)
            .field("state", &self.state)
            .field("version", &self.version)
            .field("context", &self.context)
            .finish()
    }
}

impl<M: StateMachine> Clone for Transition<M> {
    fn clone(&self) -> Self {
        Transition {
            version: self.version,
            from: self.from,
            event: self.event.clone(),
            to: self.to,
            key: self.key.clone(),
            at_ms: self.at_ms,
        }
    }
}

impl<M: StateMachine> fmt::Debug for Transition<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transition")
            .field("version", &self.version)
            .field("from", &self.from)
            .field("event", &self.event)
            .field("to", &self.to)
            .field("key", &self.key)
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

impl<M: StateMachine> Clone for Outcome<M> {
    fn clone(&self) -> Self {
        match self {
            Outcome::Applied(t) => Outcome::Applied(t.clone()),
            Outcome::Duplicate(t) => Outcome::Duplicate(t.clone()),
        }
    }
}

impl<M: StateMachine> fmt::Debug for Outcome<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied(t) => f.debug_tuple("Applied").field(t).finish(),
            Outcome::Duplicate(t) => f.debug_tuple("Duplicate").field(t).finish(),
        }
    }
}

impl<M: StateMachine> fmt::Display for Transition<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} {} --{}--> {}",
            self.version,
            self.from,
            self.event.label(),
            self.to
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_policy_gives_up_with_a_conflict_naming_the_instance() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.pause(1, "Order", "o-1", 4).await.is_ok());
        assert!(policy.pause(2, "Order", "o-1", 4).await.is_ok());
        let err = policy.pause(3, "Order", "o-1", 5).await.unwrap_err();
        assert!(
            matches!(&err, Error::Conflict { machine: "Order", id, version: 5, attempts: 3 } if id == "o-1"),
            "{err:?}"
        );
        assert!(RetryPolicy::NONE.pause(1, "Order", "o-1", 0).await.is_err());
    }

    #[test]
    fn retry_delays_stay_under_the_exponential_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in 1..40 {
            let ceiling =
                (policy.base_delay * 2u32.pow((attempt - 1).min(16))).min(policy.max_delay);
            assert!(policy.delay(attempt) <= ceiling);
        }
    }
}
