//! The buffered intake: [`Intake::submit`] records a keyed command durably and returns
//! at once; an [`IntakeWorker`] applies the recorded commands later, in submission order
//! per instance, in batches, exactly once, and records each outcome under its key for
//! [`Intake::status`] to read.
//!
//! This is the "payment buffer" of the idempotency literature: a synchronous request
//! becomes asynchronous work, for throughput. Concurrent submits are combined into one
//! statement (each caller still gets its own answer), so a submit costs a fraction of a
//! [`fire`](fsm_core::Store::fire); the worker applies commands through the store's own
//! `fire`, so every guarantee of a fire (the transition rule, the compare-and-set, the
//! outbox, the idempotency key) holds for them unchanged.
//!
//! # Semantics
//!
//! * A submission is identified by (machine type, instance id, idempotency key), the
//!   same scope as a key of [`fire`](fsm_core::Store::fire): the same key on another
//!   instance is another submission. The command **must** carry a key; a keyless one is
//!   [`Error::InvalidKey`] with `len: 0`. Keys and ids follow the store's rules
//!   (1..=255 bytes, no NUL; client keys without control characters), else
//!   [`Error::InvalidKey`] / [`Error::InvalidId`].
//! * `submit` of a new key records it [`Status::Pending`] and answers
//!   [`Submitted::New`] once the row is committed. A key recorded before answers
//!   [`Submitted::Recorded`] with whatever is recorded now (pending, applied, duplicate,
//!   failed) when the event's fingerprint is the same; another event under the key is
//!   [`Error::KeyReused`], as `fire` answers (its `version` is the recorded transition's,
//!   or 0 while none is recorded).
//! * The worker applies an instance's submissions one at a time in the order they were
//!   recorded (a submit that returned before another began is applied first; concurrent
//!   submits are ordered by their recording). Different instances are applied
//!   concurrently. A command that fails for good is recorded [`Status::Failed`] with its
//!   typed error, and the instance's next submission is applied after it.
//! * Failures for good: the errors that are not
//!   [`is_transient`](Error::is_transient) ([`Error::IllegalTransition`],
//!   [`Error::GuardRejected`], [`Error::NotFound`], [`Error::KeyReused`],
//!   [`Error::InvalidToken`], ...); an event whose stored JSON no longer decodes as
//!   `M::Event` (a poison row) is [`Error::Corrupt`] naming `fsm_intake`; an action
//!   that panicked is [`Error::WorkerDied`]. None of them stops the worker.
//! * Transient failures ([`Error::Conflict`], [`Error::Database`]) are never recorded:
//!   the row stays pending and is tried again after
//!   [`IntakeOptions::retry_delay`], with the instance's later rows held back behind it.
//!
//! # Crash windows
//!
//! A worker holds its rows under a lease ([`IntakeOptions::lease`]); rows of a worker
//! that died are claimed again once it expires. Every window is covered by the store's
//! idempotency key:
//!
//! * killed before its fire committed: nothing was applied; the next claim applies it;
//! * killed after its fire committed, before the outcome was recorded: the next claim's
//!   fire is a [`Outcome::Duplicate`](fsm_core::Outcome::Duplicate) of the same
//!   transition, never a second application. It is recorded [`Status::Applied`] (the
//!   intake applied it, once) when an earlier attempt of this row may have applied it:
//!   the row was claimed before (`attempts > 1`) and the transition is no older than the
//!   submission. A duplicate on the first attempt, or of a transition older than the
//!   submission, was recorded under the key by someone else (a direct `fire` of the
//!   same command) and is recorded [`Status::Duplicate`]: the intake applied nothing;
//! * a lease that expired while its worker still ran: both workers fire, the store
//!   applies once and the other gets the duplicate; only the latest claim's outcome is
//!   written (the lease token `claims` must match).
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState};
//! use fsm_core::{Command, IdempotencyKey, Store};
//! use fsm_sqlx::intake::Status;
//!
//! let store = fsm_sqlx::SqliteStore::memory().await?;
//! store.migrate().await?;
//! store.create::<Order>("o-1", OrderData::default()).await?;
//!
//! let intake = store.intake::<Order>();
//! let cancel = Command::<Order>::new(OrderEvent::Cancel).with_key("cancel-1");
//! let submitted = intake.submit("o-1", cancel).await?;
//! assert!(submitted.is_new() && submitted.submission().status.is_pending());
//!
//! let report = intake.worker().run_once().await?;
//! assert_eq!(report.applied, 1);
//! let key = IdempotencyKey::client("cancel-1");
//! let recorded = intake.status("o-1", &key).await?.expect("recorded");
//! assert!(matches!(&recorded.status, Status::Applied(t) if t.to == OrderState::Cancelled));
//! # Ok::<(), fsm_core::Error>(()) }).unwrap();
//! ```

mod batch;
mod failure;
mod sql;
mod worker;

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use fsm_core::kit::{Prepared, check_id};
use fsm_core::{Command, Error, IdempotencyKey, MAX_KEY_LEN, Result, StateMachine, Transition};

use crate::SqlStore;
use crate::dialect::Dialect;

pub use worker::{IntakeReport, IntakeWorker};

use batch::Batcher;
use sql::IntakeRow;

impl<D: Dialect> SqlStore<D> {
    /// The buffered intake of machine type `M` on this store (see [`Intake`]). Create it
    /// once and clone it: clones share the task that combines concurrent submits.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = fsm_sqlx::SqliteStore::memory().await?;
    /// store.migrate().await?;
    /// let intake = store.intake::<fsm_core::testing::Order>();
    /// assert_eq!(intake.pending().await?, 0);
    /// # Ok::<(), fsm_core::Error>(()) }).unwrap();
    /// ```
    pub fn intake<M: StateMachine>(&self) -> Intake<D, M> {
        Intake::new(self.clone())
    }
}

/// How an [`Intake`] batches submits and how its [`IntakeWorker`]s claim and retry.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let options = fsm_sqlx::intake::IntakeOptions {
///     lease: Duration::from_secs(5),
///     ..Default::default()
/// };
/// assert_eq!(options.claim_batch, 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeOptions {
    /// Most submits recorded by one statement (at most 512).
    pub submit_batch: usize,
    /// Statements recording submits that may run at once; while they run, further
    /// submits wait and go together in the next.
    pub submits_in_flight: usize,
    /// Rows a worker claims per pass (at most 512).
    pub claim_batch: usize,
    /// How long a claim is exclusive; a worker that died holds its rows this long.
    pub lease: Duration,
    /// When a row whose fire failed transiently is tried again.
    pub retry_delay: Duration,
    /// A worker's pause when nothing is pending; a submit through the same [`Intake`]
    /// (or a clone) wakes it at once, so this is the fallback for other processes.
    pub idle_poll: Duration,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        IntakeOptions {
            submit_batch: 256,
            submits_in_flight: 4,
            claim_batch: 256,
            lease: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            idle_poll: Duration::from_millis(100),
        }
    }
}

/// The buffered intake of machine type `M` on a [`SqlStore<D>`]: see the
/// [module documentation](self) for what it guarantees.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use fsm_core::testing::{Order, OrderEvent};
/// use fsm_core::Command;
/// use fsm_sqlx::intake::{Intake, IntakeOptions};
///
/// let store = fsm_sqlx::SqliteStore::memory().await?;
/// store.migrate().await?;
/// let intake = Intake::<_, Order>::new(store).with_options(IntakeOptions::default());
/// // Nothing checks the instance at submit time: a missing one fails in the worker.
/// intake.submit("o-9", Command::new(OrderEvent::Ship).with_key("ship-9")).await?;
/// assert_eq!(intake.pending().await?, 1);
/// # Ok::<(), fsm_core::Error>(()) }).unwrap();
/// ```
pub struct Intake<D: Dialect, M: StateMachine> {
    store: SqlStore<D>,
    options: IntakeOptions,
    shared: Arc<Shared>,
    machine: PhantomData<fn() -> M>,
}

/// What an intake's clones and workers share.
#[derive(Debug, Default)]
struct Shared {
    /// Started by the first submit, on its runtime.
    batcher: OnceLock<Batcher>,
    /// Notified when submits are recorded, to wake this process's idle workers.
    recorded: Arc<Notify>,
}

impl<D: Dialect, M: StateMachine> Intake<D, M> {
    /// The intake of `M` on `store`, with [`IntakeOptions::default`].
    pub fn new(store: SqlStore<D>) -> Self {
        Intake {
            store,
            options: IntakeOptions::default(),
            shared: Arc::default(),
            machine: PhantomData,
        }
    }

    /// Replaces the options (before the first submit; a started batching task keeps
    /// the batch sizes it started with).
    #[must_use]
    pub fn with_options(mut self, options: IntakeOptions) -> Self {
        self.options = options;
        self
    }

    /// The options.
    pub fn options(&self) -> &IntakeOptions {
        &self.options
    }

    /// The store commands are applied through.
    pub fn store(&self) -> &SqlStore<D> {
        &self.store
    }

    /// Records `command` for instance `id` under its idempotency key and returns once it
    /// is durable, without applying it: [`Submitted::New`] with a pending submission, or
    /// [`Submitted::Recorded`] with whatever the key recorded before. Concurrent submits
    /// are written together, one statement for the lot.
    ///
    /// Nothing about the instance is checked here (it need not exist yet); the worker's
    /// fire decides, and a failure is recorded under the key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a command without a key (`len: 0`) or with a key
    /// outside the store's rules; [`Error::InvalidId`]; [`Error::Serialization`] for
    /// an event that cannot be stored; [`Error::KeyReused`] when the key recorded another
    /// event for this instance; [`Error::Database`] when the row could not be written
    /// (then it may or may not be recorded: submit again, the key makes that safe).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have recorded its command (as a request that timed
    /// out); it never affects other callers' submits.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use fsm_core::testing::{Order, OrderEvent};
    /// use fsm_core::{Command, Error};
    ///
    /// let store = fsm_sqlx::SqliteStore::memory().await?;
    /// store.migrate().await?;
    /// let intake = store.intake::<Order>();
    /// let ship = Command::<Order>::new(OrderEvent::Ship).with_key("s-1");
    /// assert!(intake.submit("o-1", ship.clone()).await?.is_new());
    /// assert!(!intake.submit("o-1", ship).await?.is_new(), "the same request again");
    /// let other = Command::<Order>::new(OrderEvent::Cancel).with_key("s-1");
    /// let err = intake.submit("o-1", other).await.unwrap_err();
    /// assert!(matches!(err, Error::KeyReused { .. }));
    /// let keyless = intake.submit("o-1", Command::new(OrderEvent::Ship)).await.unwrap_err();
    /// assert!(matches!(keyless, Error::InvalidKey { len: 0, .. }));
    /// # Ok::<(), fsm_core::Error>(()) }).unwrap();
    /// ```
    pub async fn submit(&self, id: &str, command: Command<M>) -> Result<Submitted<M>> {
        let machine = M::DEFINITION.name;
        check_id::<M>(id)?;
        if command.key.is_none() {
            return Err(Error::InvalidKey {
                machine,
                id: id.to_owned(),
                len: 0,
            });
        }
        let event = serde_json::to_string(&command.event)
            .map_err(|e| Error::serialization::<M>(id, "event", e))?;
        // The store's own checks and fingerprint, so a submit fails exactly as a fire would.
        let prepared = Prepared::new(id, command)?;
        let (Some(key), Some(fingerprint)) = (prepared.stored_key(), prepared.fingerprint()) else {
            unreachable!("a keyed command is fingerprinted");
        };
        let nonce = rand::random::<i64>();
        let row = sql::NewRow {
            machine_id: id.to_owned(),
            idem_key: key.to_owned(),
            event,
            fingerprint: fingerprint.0,
            nonce,
        };
        let recorded = self.batcher().submit(machine, row).await?;
        let mine = recorded.nonce == nonce;
        if !mine && recorded.fingerprint[..] != fingerprint.0[..] {
            let submission = Submission::<M>::decode(recorded);
            let version = submission
                .as_ref()
                .ok()
                .and_then(|s| s.status.transition())
                .map_or(0, |t| t.version);
            return Err(Error::KeyReused {
                machine,
                id: id.to_owned(),
                key: IdempotencyKey::display_stored(key).to_owned(),
                version,
            });
        }
        let submission = Submission::decode(recorded)?;
        Ok(if mine {
            Submitted::New(submission)
        } else {
            Submitted::Recorded(submission)
        })
    }

    /// What is recorded under `key` for instance `id`, if it was submitted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`], [`Error::InvalidKey`] for arguments no submit could have
    /// recorded; [`Error::Corrupt`] for a row that does not decode (an outcome recorded
    /// by a definition that has changed since); [`Error::Database`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use fsm_core::IdempotencyKey;
    /// let store = fsm_sqlx::SqliteStore::memory().await?;
    /// store.migrate().await?;
    /// let intake = store.intake::<fsm_core::testing::Order>();
    /// assert!(intake.status("o-1", &IdempotencyKey::client("never")).await?.is_none());
    /// # Ok::<(), fsm_core::Error>(()) }).unwrap();
    /// ```
    pub async fn status(&self, id: &str, key: &IdempotencyKey) -> Result<Option<Submission<M>>> {
        check_id::<M>(id)?;
        let stored = key.as_stored();
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
        sql::status(&self.store.pool, M::DEFINITION.name, id, &stored)
            .await?
            .map(Submission::decode)
            .transpose()
    }

    /// How many submissions of `M` wait for a worker.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    ///
    /// # Examples
    ///
    /// See [`Intake`].
    pub async fn pending(&self) -> Result<u64> {
        sql::pending(&self.store.pool, M::DEFINITION.name).await
    }

    /// Deletes up to `limit` submissions of `M` whose outcome was recorded more than
    /// `older_than` ago, oldest first; how many. Pending ones are never deleted.
    ///
    /// Prune only what clients no longer poll or retry: once a row is gone,
    /// [`status`](Self::status) answers `None` for its key, and a submit of the key
    /// records it anew. The store's own key still holds, so its worker's fire is then a
    /// duplicate of the transition it applied (recorded [`Status::Duplicate`]), never a
    /// second application; a command that had failed is tried again.
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let store = fsm_sqlx::SqliteStore::memory().await?;
    /// store.migrate().await?;
    /// let intake = store.intake::<fsm_core::testing::Order>();
    /// assert_eq!(intake.prune_settled(Duration::from_secs(86_400), 1_000).await?, 0);
    /// # Ok::<(), fsm_core::Error>(()) }).unwrap();
    /// ```
    pub async fn prune_settled(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let before = fsm_core::kit::now_ms().saturating_sub(fsm_core::kit::millis(older_than));
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        sql::prune(&self.store.pool, M::DEFINITION.name, before, limit).await
    }

    /// A worker applying this intake's submissions, with its options; run as many as
    /// you like, in this process or others.
    pub fn worker(&self) -> IntakeWorker<D, M> {
        IntakeWorker::new(self.clone())
    }

    fn batcher(&self) -> &Batcher {
        self.shared.batcher.get_or_init(|| {
            Batcher::start(
                self.store.pool.clone(),
                M::DEFINITION.name,
                self.options.submit_batch,
                self.options.submits_in_flight,
                Arc::clone(&self.shared.recorded),
            )
        })
    }
}

impl<D: Dialect, M: StateMachine> Clone for Intake<D, M> {
    fn clone(&self) -> Self {
        Intake {
            store: self.store.clone(),
            options: self.options,
            shared: Arc::clone(&self.shared),
            machine: PhantomData,
        }
    }
}

impl<D: Dialect, M: StateMachine> fmt::Debug for Intake<D, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intake")
            .field("machine", &M::DEFINITION.name)
            .field("store", &self.store)
            .field("options", &self.options)
            .finish()
    }
}

/// What [`Intake::submit`] found: a submission it recorded now, or the one recorded
/// earlier under the same key with the same event (in whatever status it is now).
///
/// # Examples
///
/// See [`Intake::submit`].
pub enum Submitted<M: StateMachine> {
    /// Recorded by this call: pending.
    New(Submission<M>),
    /// Recorded before under this key, with the same event.
    Recorded(Submission<M>),
}

impl<M: StateMachine> Submitted<M> {
    /// Whether this call recorded the submission.
    pub fn is_new(&self) -> bool {
        matches!(self, Submitted::New(_))
    }

    /// The submission as recorded now.
    pub fn submission(&self) -> &Submission<M> {
        match self {
            Submitted::New(s) | Submitted::Recorded(s) => s,
        }
    }

    /// The submission as recorded now, by value.
    pub fn into_submission(self) -> Submission<M> {
        match self {
            Submitted::New(s) | Submitted::Recorded(s) => s,
        }
    }
}

/// One recorded submission.
///
/// # Examples
///
/// See [`Intake`](crate::intake).
pub struct Submission<M: StateMachine> {
    /// The instance the command is for.
    pub id: String,
    /// The idempotency key as shown (the client's string, `source#seq`, `token:<T>`).
    pub key: String,
    /// Its place in the order submissions are applied in (increasing, with gaps).
    pub position: u64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    /// Times a worker claimed it.
    pub attempts: u32,
    /// When its outcome was recorded, once it is.
    pub settled_at_ms: Option<u64>,
    /// Pending, or the outcome.
    pub status: Status<M>,
}

/// Where a submission is: waiting, or what applying it did.
pub enum Status<M: StateMachine> {
    /// Recorded, waiting for a worker (or being applied now).
    Pending,
    /// The intake applied the transition (once, even if a worker was killed meanwhile).
    Applied(Transition<M>),
    /// The key had recorded this transition before the intake applied anything (a
    /// direct fire of the same command): nothing changed.
    Duplicate(Transition<M>),
    /// The command failed for good, with this error; nothing changed.
    Failed(Error),
}

impl<M: StateMachine> Status<M> {
    /// Whether a worker has yet to apply it.
    pub fn is_pending(&self) -> bool {
        matches!(self, Status::Pending)
    }

    /// The transition, if applied now or before.
    pub fn transition(&self) -> Option<&Transition<M>> {
        match self {
            Status::Applied(t) | Status::Duplicate(t) => Some(t),
            _ => None,
        }
    }

    /// The error, if it failed.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Status::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl<M: StateMachine> Submission<M> {
    fn decode(row: IntakeRow) -> Result<Self> {
        let corrupt = |detail: String| Error::Corrupt {
            table: sql::TABLE,
            machine: M::DEFINITION.name,
            id: row.machine_id.clone(),
            detail,
        };
        let transition = |json: &Option<String>| -> Result<Transition<M>> {
            let json = json
                .as_deref()
                .ok_or_else(|| corrupt("a settled row without its outcome".to_owned()))?;
            serde_json::from_str(json)
                .map_err(|e| corrupt(format!("recorded transition does not decode: {e}")))
        };
        let status = match row.status {
            sql::PENDING => Status::Pending,
            sql::APPLIED => Status::Applied(transition(&row.outcome)?),
            sql::DUPLICATE => Status::Duplicate(transition(&row.outcome)?),
            sql::FAILED => Status::Failed(failure::from_json::<M>(
                &row.machine_id,
                row.outcome.as_deref().unwrap_or(""),
            )),
            other => return Err(corrupt(format!("unknown status {other}"))),
        };
        Ok(Submission {
            key: IdempotencyKey::display_stored(&row.idem_key).to_owned(),
            position: u64::try_from(row.seq).unwrap_or(0),
            submitted_at_ms: u64::try_from(row.submitted_at).unwrap_or(0),
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            settled_at_ms: row.settled_at.and_then(|at| u64::try_from(at).ok()),
            id: row.machine_id,
            status,
        })
    }
}

impl<M: StateMachine> fmt::Debug for Submission<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission")
            .field("machine", &M::DEFINITION.name)
            .field("id", &self.id)
            .field("key", &self.key)
            .field("position", &self.position)
            .field("submitted_at_ms", &self.submitted_at_ms)
            .field("attempts", &self.attempts)
            .field("settled_at_ms", &self.settled_at_ms)
            .field("status", &self.status)
            .finish()
    }
}

impl<M: StateMachine> fmt::Debug for Submitted<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Submitted::New(s) => f.debug_tuple("New").field(s).finish(),
            Submitted::Recorded(s) => f.debug_tuple("Recorded").field(s).finish(),
        }
    }
}

impl<M: StateMachine> fmt::Debug for Status<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Pending => f.write_str("Pending"),
            Status::Applied(t) => f.debug_tuple("Applied").field(t).finish(),
            Status::Duplicate(t) => f.debug_tuple("Duplicate").field(t).finish(),
            Status::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// The key a stored key column holds, as [`IdempotencyKey::as_stored`] wrote it.
fn key_from_stored(stored: &str) -> IdempotencyKey {
    if let Some(rest) = stored.strip_prefix("\u{1f}source:")
        && let Some((source, seq)) = rest.rsplit_once('#')
        && let Ok(seq) = seq.parse()
    {
        return IdempotencyKey::from_source(source, seq);
    }
    if let Some(token) = stored.strip_prefix("\u{1f}token:") {
        return IdempotencyKey::Token(token.to_owned());
    }
    IdempotencyKey::client(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_key_reads_back_from_its_stored_form() {
        for key in [
            IdempotencyKey::client("abc#1"),
            IdempotencyKey::from_source("queue#a", 42),
            IdempotencyKey::Token("t-1".into()),
        ] {
            assert_eq!(key_from_stored(&key.as_stored()), key);
        }
    }
}
