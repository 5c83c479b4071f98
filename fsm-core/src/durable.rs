//! [`DurableStore`]: what a store adds to [`Store`] for workflows: single-use tokens,
//! durable timers and a transactional outbox with dead letters.
//!
//! Actions emit effects; the store writes them in the transition's commit as rows with a
//! stable [`EffectId`] `(machine type, id, version, seq)`, never again for a
//! `Duplicate`. A [`Dispatcher`](crate::Dispatcher) claims due rows under a lease, runs
//! the handler, and settles them; a [`TimerWorker`](crate::TimerWorker) fires due
//! `after(..)` timers as ordinary compare-and-set transitions.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::error::Result;
use crate::machine::StateMachine;
use crate::retention::{PruneReport, Retention};
use crate::store::{Store, Transition};

/// Tokens, timers and the outbox, on top of [`Store`].
///
/// Implemented by [`MemoryStore`](crate::MemoryStore) and by every sqlx store of
/// `fsm-sqlx`; the durable suite of `fsm_core::testing` holds each to the same behaviour.
/// [`claim_effects`](Self::claim_effects) and [`settle_effect`](Self::settle_effect)
/// are the contract the [`Dispatcher`](crate::Dispatcher) uses; applications call the
/// rest.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fsm_core::testing::{Order, OrderData, OrderEvent};
/// use fsm_core::{Command, DurableStore, MemoryStore, Store};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// store.create::<Order>("o-1", OrderData::default()).await?;
/// let token = store.issue_token::<Order>("o-1", Duration::from_secs(60)).await?;
/// let cancel = || Command::<Order>::new(OrderEvent::Cancel).with_token(&token);
/// assert!(!store.fire("o-1", cancel()).await?.is_duplicate());
/// assert!(store.fire("o-1", cancel()).await?.is_duplicate(), "a token is single-use");
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub trait DurableStore: Store + Clone {
    /// Issues a random 128-bit single-use token bound to instance `id`, valid for `ttl`
    /// (`Duration::MAX`: never expires). A command carrying it
    /// ([`Command::with_token`](crate::Command::with_token)) consumes it in the
    /// transition's commit.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when the instance does not exist;
    /// [`Error::InvalidId`](crate::Error::InvalidId); backend errors.
    fn issue_token<M: StateMachine>(
        &self,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Fires up to `limit` due timers of machine type `M`, each as a compare-and-set at
    /// the version it was armed with; returns the transitions that applied (timers of
    /// instances that moved on are dropped). Claimed timers are leased for `lease`.
    ///
    /// A timer is named by its source state and delay. One the current definition does
    /// not know (dropped, or its delay changed) is skipped with an error in the log and
    /// kept, never deleted: an instance of the service still running the old definition
    /// may fire it, and [`Store::verify`](crate::Store::verify) reports it.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn fire_due_timers<M: StateMachine>(
        &self,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<(String, Transition<M>)>>> + Send;

    /// Effects of machine type `M` whose handler failed `max_attempts` times (or that no
    /// longer decode), oldest first.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn dead_letters<M: StateMachine>(
        &self,
    ) -> impl Future<Output = Result<Vec<DeadLetter<M::Effect>>>> + Send;

    /// Makes a dead letter claimable again with a fresh attempt count; `false` when `id`
    /// is not a dead letter.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn requeue(&self, id: &EffectId) -> impl Future<Output = Result<bool>> + Send;

    /// Leases up to `limit` due, unleased outbox rows of `machine` for `lease`, counting
    /// an attempt on each, in emission order per instance; rows leased by another
    /// claimer are skipped.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn claim_effects(
        &self,
        machine: &'static str,
        lease: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ClaimedEffect>>> + Send;

    /// Records how a claimed row ended, unless its lease was lost (the row was claimed
    /// again since): `false` then, and nothing changes.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn settle_effect(
        &self,
        machine: &'static str,
        effect: &ClaimedEffect,
        settlement: Settlement<'_>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// How many outbox rows of `machine` wait for delivery, and how many are dead
    /// letters (the [`Dispatcher`](crate::Dispatcher) reports them as the gauges
    /// `fsm_outbox_pending` and `fsm_outbox_dead`).
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn outbox_depth(
        &self,
        machine: &'static str,
    ) -> impl Future<Output = Result<OutboxDepth>> + Send;

    /// The timers armed for instance `id` that are still pending, soonest first (the
    /// timers of versions the instance has left included: they fire as no-ops).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`](crate::Error::InvalidId); backend errors.
    fn pending_timers<M: StateMachine>(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<ArmedTimer>>> + Send;

    /// Every outbox row of instance `id` (pending, done and dead), in emission order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`](crate::Error::InvalidId); backend errors.
    fn outbox<M: StateMachine>(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<OutboxEntry<M::Effect>>>> + Send;

    /// Deletes a dead letter for good; `false` when `id` is not a dead letter (a pending
    /// or done row is never discarded).
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn discard(&self, id: &EffectId) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes one batch of what `retention` no longer keeps, across every machine type:
    /// at most [`Retention::batch`] done outbox rows whose handler succeeded longer ago
    /// than [`Retention::done_effects`], and at most as many tokens expired longer ago
    /// than [`Retention::expired_tokens`], each kind in one short statement. Pending rows
    /// and dead letters are never touched. Call it until a report is not full, or let a
    /// [`Pruner`](crate::Pruner) do so.
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn prune(&self, retention: &Retention) -> impl Future<Output = Result<PruneReport>> + Send;

    /// Deletes at most `batch` instances of `M` that entered a terminal state longer ago
    /// than `older_than` and have no pending or dead outbox row, each with its history,
    /// timers, tokens and done outbox rows, in one transaction; returns how many. The
    /// only way history is ever pruned: see [`retention`](crate::retention).
    ///
    /// # Errors
    ///
    /// Backend errors.
    fn prune_finished<M: StateMachine>(
        &self,
        older_than: Duration,
        batch: usize,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Marks `effects`, claimed by one worker and all handled, done at once (one
    /// statement on the sqlx stores, where [`settle_effect`](Self::settle_effect) costs
    /// one per row). Returns how many were settled: an effect whose lease was lost to
    /// another worker is not. The default settles each in turn.
    ///
    /// # Errors
    ///
    /// Backend errors; then none, some or all may have been settled, and the rest are
    /// claimed again when their lease runs out.
    fn settle_done(
        &self,
        machine: &'static str,
        effects: &[ClaimedEffect],
    ) -> impl Future<Output = Result<usize>> + Send {
        async move {
            let mut settled = 0;
            for effect in effects {
                settled += usize::from(
                    self.settle_effect(machine, effect, Settlement::Done)
                        .await?,
                );
            }
            Ok(settled)
        }
    }

    /// A wake-up for the dispatchers of `machine`: it fires when effects of `machine`
    /// were committed through this store (its clones included; on PostgreSQL, through
    /// any store on the same schema), so that [`Dispatcher::run`](crate::Dispatcher::run)
    /// hands a new effect over at once instead of at its next poll. `None` (the
    /// default): the store offers none, and dispatchers only poll.
    fn outbox_wakeup(&self, machine: &'static str) -> Option<crate::kit::OutboxWakeup> {
        let _ = machine;
        None
    }
}

/// What [`DurableStore::outbox_depth`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    /// Rows waiting for delivery (leased ones included).
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
}

/// A pending timer of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmedTimer {
    /// The state it was armed in, as stored.
    pub state: String,
    /// Its delay: with `state`, the timer's name.
    pub after: Duration,
    /// The version it was armed at; it fires only while the instance is still there.
    pub version: u64,
    /// When it is due, ms since the Unix epoch.
    pub due_at_ms: u64,
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EffectStatus {
    /// Waiting for (or in) delivery.
    Pending,
    /// Handled.
    Done,
    /// Its handler kept failing: a dead letter.
    Dead,
}

/// One outbox row of an instance.
#[derive(Debug, Clone)]
pub struct OutboxEntry<E> {
    /// The effect's id.
    pub id: EffectId,
    /// The effect, unless its stored JSON no longer decodes.
    pub effect: Option<E>,
    /// The stored JSON.
    pub raw: String,
    /// Where it stands.
    pub status: EffectStatus,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last handler error, if any.
    pub last_error: Option<String>,
    /// When it is (or was) next claimable, ms since the Unix epoch.
    pub available_at_ms: u64,
    /// When it was handled.
    pub done_at_ms: Option<u64>,
}

/// The stable identity of one effect: the transition that emitted it and its position.
///
/// # Examples
///
/// ```
/// let id = fsm_core::EffectId { machine: "Order", id: "o-1".into(), version: 3, seq: 0 };
/// assert_eq!(id.to_string(), "Order/o-1/3/0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectId {
    /// Machine type.
    pub machine: &'static str,
    /// Instance id.
    pub id: String,
    /// Version of the transition that emitted the effect.
    pub version: u64,
    /// Position among that transition's effects, from 0.
    pub seq: u32,
}

impl fmt::Display for EffectId {
    /// `Order/o-1/3/0`: usable as a downstream idempotency key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.machine, self.id, self.version, self.seq
        )
    }
}

/// One effect handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery<E> {
    /// The effect's stable id; the same on every attempt.
    pub id: EffectId,
    /// The effect.
    pub effect: E,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// An effect whose handler kept failing.
#[derive(Debug, Clone)]
pub struct DeadLetter<E> {
    /// The effect's id.
    pub id: EffectId,
    /// The effect, unless its stored JSON no longer decodes.
    pub effect: Option<E>,
    /// The stored JSON.
    pub raw: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last handler error.
    pub last_error: Option<String>,
}

impl<E: serde::de::DeserializeOwned> DeadLetter<E> {
    /// The dead letter of a stored outbox row.
    pub fn of(machine: &'static str, row: ClaimedEffect) -> Self {
        DeadLetter {
            id: row.id(machine),
            effect: serde_json::from_str(&row.effect).ok(),
            attempts: row.attempts,
            last_error: row.last_error,
            raw: row.effect,
        }
    }
}

/// An outbox row as a store hands it to the [`Dispatcher`](crate::Dispatcher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEffect {
    /// Instance id.
    pub machine_id: String,
    /// Version of the transition that emitted it.
    pub version: u64,
    /// Position among that transition's effects, from 0.
    pub seq: u32,
    /// The effect as stored JSON.
    pub effect: String,
    /// Attempts so far, this claim included.
    pub attempts: u32,
    /// Claims of this row so far, this one included: the claim's lease token, which never
    /// repeats (a requeue resets `attempts`, not this).
    pub claim: u64,
    /// The last handler error, if any.
    pub last_error: Option<String>,
    /// When the row became claimable (its emission, or the end of its retry backoff),
    /// ms since the Unix epoch.
    pub available_at_ms: u64,
}

impl ClaimedEffect {
    /// The effect's stable id.
    pub fn id(&self, machine: &'static str) -> EffectId {
        EffectId {
            machine,
            id: self.machine_id.clone(),
            version: self.version,
            seq: self.seq,
        }
    }
}

/// How a claimed outbox row ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement<'a> {
    /// Handled: never claimed again.
    Done,
    /// Failed: claimable again after `delay`.
    Retry {
        /// The backoff before the next attempt.
        delay: Duration,
        /// The handler's error.
        error: &'a str,
    },
    /// Failed for the last time (or undecodable): kept as a dead letter.
    Dead {
        /// Why.
        error: &'a str,
    },
    /// Not started (the worker is shutting down): claimable again at once, the attempt
    /// uncounted.
    Release,
}
