//! Group commit: concurrent fires of one machine type on one store, combined into one
//! transaction (MySQL), one read statement and one write transaction (SQLite) or one
//! read and one write statement (PostgreSQL) per batch.
//!
//! Fires wait in a queue per machine type; one task per queue takes whatever is waiting
//! (up to [`GroupCommit::max_batch`](crate::GroupCommit), one command per instance, the
//! rest in arrival order for the next batch), reads every instance, decides each command
//! with fsm-core as a lone fire would, and writes the applied ones together. Each caller
//! gets its own outcome or error. A command the batch cannot settle by itself (its
//! instance moved since the read, or another writer took a key so the batch had to be
//! abandoned) goes back to its caller, who fires it alone: one command's lost race or
//! failed guard never fails another.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use fsm_core::kit::{Applied, Prepared};
use fsm_core::{Error, Outcome, Result, Snapshot, StateMachine};

use super::{machine_row, transition_row};
use crate::SqlStore;
use crate::dialect::{Dialect, Lookup, begin_write_on, db_error};
use crate::engine::rows::{decode_machine, undecodable, write_of};

/// How a store combines concurrent fires ([`SqlStore::with_group_commit`]).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> fsm_core::Result<()> {
/// use fsm_sqlx::{GroupCommit, SqliteStore};
/// let store = SqliteStore::memory()
///     .await?
///     .with_group_commit(GroupCommit::new().max_batch(128));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    max_batch: usize,
    in_flight: usize,
}

impl GroupCommit {
    /// Batches of up to 64 commands, one batch of a machine type at a time: the
    /// commands that arrive while it runs make the next. A second batch started at once
    /// would take the few commands that arrived meanwhile and make batches smaller
    /// (measured on PostgreSQL: 0.8x at 8 clients, and a p99 of 100 ms at 32).
    pub const fn new() -> Self {
        GroupCommit {
            max_batch: 64,
            in_flight: 1,
        }
    }

    /// How many batches of one machine type may run at once (at least 1). Each holds a
    /// connection while it runs.
    #[must_use]
    pub const fn in_flight(mut self, batches: usize) -> Self {
        self.in_flight = if batches == 0 { 1 } else { batches };
        self
    }

    /// The most commands one batch takes (at least 1; PostgreSQL binds one array per
    /// column, so any size fits one statement).
    #[must_use]
    pub const fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = if commands == 0 { 1 } else { commands };
        self
    }

    /// The most commands one batch takes.
    pub(crate) const fn batch_limit(&self) -> usize {
        self.max_batch
    }
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self::new()
    }
}

/// What a batch tells a caller.
pub(crate) enum Settled<M: StateMachine> {
    /// The command's outcome or error, as a lone fire would have given it.
    Done(Result<Outcome<M>>),
    /// An action panicked while deciding the command: the caller resumes the panic.
    Panicked(Box<dyn Any + Send>),
    /// The batch could not settle the command: the caller fires it alone.
    Alone(Prepared<M>),
    /// Nothing was running or waiting: the caller fires alone at once, so a lone
    /// caller pays nothing for group commit. It holds a slot until its fire is done, so
    /// the commands arriving meanwhile gather into a batch instead of each firing alone
    /// too: the queue's one idle slot (the batch runs beside it), or where writers sleep
    /// to wait (SQLite) a batch's slot (the batch runs after it).
    Idle(Prepared<M>, IdleSlot),
}

/// The slot held by a fire that runs alone because its queue was idle.
pub(crate) type IdleSlot = OwnedSemaphorePermit;

/// One queued fire.
struct Job<M: StateMachine> {
    id: String,
    prepared: Prepared<M>,
    reply: oneshot::Sender<Settled<M>>,
}

/// What a queue's callers and its task share.
struct Lanes {
    /// One permit per batch that may run at once.
    slots: Arc<Semaphore>,
    in_flight: usize,
    /// One permit, for a fire that found nothing running or waiting.
    idle: Arc<Semaphore>,
    /// Commands sent and not yet taken into a batch (nor dropped by their callers).
    queued: AtomicUsize,
}

/// The queue of one machine type: its task holds the receiver and [`Lanes`], never the
/// sender, so the task ends when the store's last clone is dropped.
struct Queue<M: StateMachine> {
    jobs: mpsc::UnboundedSender<Job<M>>,
    lanes: Arc<Lanes>,
}

/// The queues of one store, one per machine type, each drained by its own task.
pub(crate) struct Batchers {
    config: GroupCommit,
    queues: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Where writers sleep to wait (SQLite), the store's batches take turns writing
    /// here instead, while the next one reads and decides.
    writing: Arc<Semaphore>,
}

impl std::fmt::Debug for Batchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batchers")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Batchers {
    pub(crate) fn new(config: GroupCommit) -> Self {
        Batchers {
            config,
            queues: Mutex::default(),
            writing: Arc::new(Semaphore::new(1)),
        }
    }

    pub(crate) fn config(&self) -> GroupCommit {
        self.config
    }

    /// The queue of `M`, started on first use with its task.
    fn queue<D: Dialect, M: StateMachine>(
        &self,
        unbatched: impl FnOnce() -> SqlStore<D>,
    ) -> Option<Arc<Queue<M>>> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(TypeId::of::<M>()).or_insert_with(|| {
            let (jobs, receiver) = mpsc::unbounded_channel::<Job<M>>();
            let lanes = Arc::new(Lanes {
                slots: Arc::new(Semaphore::new(self.config.in_flight)),
                in_flight: self.config.in_flight,
                idle: Arc::new(Semaphore::new(1)),
                queued: AtomicUsize::new(0),
            });
            let task = drain(
                unbatched(),
                receiver,
                Arc::clone(&lanes),
                Arc::clone(&self.writing),
                self.config.max_batch,
            );
            tokio::spawn(task);
            Arc::new(Queue { jobs, lanes })
        });
        Arc::clone(queue).downcast::<Queue<M>>().ok()
    }

    /// Queues `prepared` for the next batch of `store` and waits for it to be settled,
    /// or, when nothing is running or waiting, hands it back to be fired alone at once.
    ///
    /// `store` is the batching store's twin without batches: the queue's task holds it,
    /// so it must not hold the queues (which end the task when the store is dropped).
    pub(crate) async fn fire<D: Dialect, M: StateMachine>(
        &self,
        unbatched: impl FnOnce() -> SqlStore<D>,
        id: &str,
        prepared: Prepared<M>,
    ) -> Settled<M> {
        let Some(queue) = self.queue::<D, M>(unbatched) else {
            return Settled::Alone(prepared);
        };
        let lanes = &queue.lanes;
        // Holding a batch's slot would make every busy round a lone fire and then a
        // batch of the rest, one after the other: half the throughput at 8 clients on
        // PostgreSQL. Where writers sleep to wait (SQLite) that still costs less than
        // a batch sleeping behind the lone fire's write lock.
        let idle = lanes.queued.load(Ordering::Acquire) == 0
            && lanes.slots.available_permits() == lanes.in_flight;
        let slots = match D::WRITERS_SLEEP {
            true => &lanes.slots,
            false => &lanes.idle,
        };
        if idle && let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
            return Settled::Idle(prepared, slot);
        }
        let (reply, settled) = oneshot::channel();
        let job = Job {
            id: id.to_owned(),
            prepared,
            reply,
        };
        lanes.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(job) = queue.jobs.send(job) {
            // The queue's task is gone (its runtime shut down): fire alone.
            lanes.queued.fetch_sub(1, Ordering::AcqRel);
            return Settled::Alone(job.0.prepared);
        }
        match settled.await {
            Ok(settled) => settled,
            Err(_) => Settled::Done(Err(Error::WorkerDied {
                machine: M::DEFINITION.name,
                worker: "group commit",
                detail: "the batch task ended before settling the command".into(),
            })),
        }
    }
}

/// The task of one queue: batches until every store clone (and so the sender) is gone.
/// Up to `in_flight` batches run at once, never two holding commands of one instance.
async fn drain<D: Dialect, M: StateMachine>(
    store: SqlStore<D>,
    mut jobs: mpsc::UnboundedReceiver<Job<M>>,
    lanes: Arc<Lanes>,
    writing: Arc<Semaphore>,
    max_batch: usize,
) {
    // Instances with a command in a running batch.
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let finished = Arc::new(Notify::new());
    // Commands not yet in a batch, oldest first.
    let mut waiting: VecDeque<Job<M>> = VecDeque::new();
    let mut open = true;
    loop {
        if waiting.is_empty() {
            if !open {
                return;
            }
            match jobs.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&lanes.slots).acquire_owned().await else {
            return;
        };
        // Whatever arrived while the slots were taken joins this batch.
        while let Ok(job) = jobs.try_recv() {
            waiting.push_back(job);
        }
        let mut batch = Vec::new();
        {
            let mut busy = busy.lock().unwrap_or_else(PoisonError::into_inner);
            let mut later = VecDeque::new();
            while let Some(job) = waiting.pop_front() {
                if job.reply.is_closed() {
                    // A caller that gave up waiting needs no work done.
                    lanes.queued.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                if batch.len() < max_batch && busy.insert(job.id.clone()) {
                    batch.push(job);
                } else {
                    later.push_back(job);
                }
            }
            waiting = later;
        }
        lanes.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        if batch.is_empty() {
            // Every waiting command's instance is in a running batch: wait for one to
            // end (or for news from callers) and gather again.
            drop(slot);
            if waiting.is_empty() {
                continue;
            }
            tokio::select! {
                () = finished.notified() => {}
                job = jobs.recv(), if open => match job {
                    Some(job) => waiting.push_back(job),
                    None => open = false,
                },
            }
            continue;
        }
        fsm_core::observe::group_commit(M::DEFINITION.name, batch.len());
        let (store, busy, finished) = (store.clone(), Arc::clone(&busy), Arc::clone(&finished));
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let ids: Vec<String> = batch.iter().map(|job| job.id.clone()).collect();
            run(&store, &writing, batch).await;
            let mut running = busy.lock().unwrap_or_else(PoisonError::into_inner);
            for id in &ids {
                running.remove(id);
            }
            drop(running);
            drop(slot);
            finished.notify_one();
        });
    }
}

/// What the batch decided for one command.
enum Decision<M: StateMachine> {
    Settled(Settled<M>),
    /// Applied on the instance as read.
    Write(Snapshot<M>, Applied<M>),
}

/// One batch: read, decide, write, reply.
async fn run<D: Dialect, M: StateMachine>(
    store: &SqlStore<D>,
    writing: &Semaphore,
    jobs: Vec<Job<M>>,
) {
    let machine = M::DEFINITION.name;
    let mut replies: Vec<Option<Settled<M>>> = jobs.iter().map(|_| None).collect();
    if let Err(err) = settle::<D, M>(store, writing, &jobs, &mut replies).await {
        tracing::debug!(error = %err, machine, commands = jobs.len(), "group commit abandoned; each command fires alone");
    }
    for (job, reply) in jobs.into_iter().zip(replies) {
        let _ = job
            .reply
            .send(reply.unwrap_or(Settled::Alone(job.prepared)));
    }
}

/// Reads and decides every job, writes the applied ones, and fills `replies` (`None`:
/// the job fires alone). `Err`: the batch wrote nothing, and every job without a reply
/// or with an `Applied` one fires alone.
async fn settle<D: Dialect, M: StateMachine>(
    store: &SqlStore<D>,
    writing: &Semaphore,
    jobs: &[Job<M>],
    replies: &mut [Option<Settled<M>>],
) -> Result<()> {
    let machine = M::DEFINITION.name;
    let failed = || format!("fire a batch of {} {machine}", jobs.len());
    let mut conn = store
        .conns
        .take(&store.pool)
        .await
        .map_err(db_error(failed))?;
    let mut tx: Option<sqlx::Transaction<'_, D>> = None;
    let exec: &mut D::Connection = if D::BATCH_IN_TRANSACTION {
        tx.insert(begin_write_on::<D>(&mut conn, failed).await?)
    } else {
        &mut conn
    };
    let lookups: Vec<Lookup<'_>> = jobs
        .iter()
        .map(|job| Lookup {
            id: &job.id,
            key: job.prepared.stored_key(),
            legacy: job.prepared.legacy_key(),
        })
        .collect();
    let rows = D::read_many(exec, machine, &lookups)
        .await
        .map_err(db_error(failed))?;
    let mut decided = Vec::with_capacity(jobs.len());
    for (job, row) in jobs.iter().zip(&rows) {
        decided.push(decide::<D, M>(job, row.as_ref()));
    }
    let mut writes = Vec::new();
    let mut written_jobs = Vec::new();
    for (n, (job, decision)) in jobs.iter().zip(decided.iter()).enumerate() {
        if let Decision::Write(snapshot, applied) = decision {
            match write_of(&job.id, &job.prepared, snapshot, true, applied) {
                Ok(write) => {
                    writes.push(write);
                    written_jobs.push(n);
                }
                Err(err) => replies[n] = Some(Settled::Done(Err(err))),
            }
        }
    }
    let turn = match D::WRITERS_SLEEP {
        // Closed never: the semaphore lives as long as the store's batchers.
        true => writing.acquire().await.ok(),
        false => None,
    };
    let written = D::write_many(exec, &writes).await;
    drop(turn);
    let written = match written {
        Ok(Some(written)) => written,
        // A key taken by another writer since the read (the transaction, if any, rolls
        // back as it drops): every applied command fires alone and finds its key.
        Ok(None) => return Err(Error::database(failed(), "a key was taken")),
        Err(err) => return Err(err),
    };
    if let Some(tx) = tx.take() {
        tx.commit().await.map_err(db_error(failed))?;
    }
    drop(tx);
    store.conns.keep(&store.pool, conn);
    let mut effects = false;
    let mut decided: Vec<Option<Decision<M>>> = decided.into_iter().map(Some).collect();
    for (&n, (write, hit)) in written_jobs.iter().zip(writes.iter().zip(&written)) {
        if !*hit {
            // Its instance moved since the read: alone, it reads again (and an adaptive
            // store takes the row lock, as after any lost race).
            store.hot.lost_race(machine, &jobs[n].id);
            continue;
        }
        effects |= !write.effects.is_empty();
        if let Some(Decision::Write(_, applied)) = decided[n].take() {
            replies[n] = Some(Settled::Done(Ok(Outcome::Applied(applied.transition))));
        }
    }
    for (n, decision) in decided.into_iter().enumerate() {
        if let Some(Decision::Settled(settled)) = decision {
            replies[n] = Some(settled);
        }
    }
    if effects {
        store.effects_committed(machine);
    }
    Ok(())
}

/// Decides one job on its read, as [`super::fire`] does on a verified read.
fn decide<D: Dialect, M: StateMachine>(job: &Job<M>, row: Option<&D::Row>) -> Decision<M> {
    let done = |result| Decision::Settled(Settled::Done(result));
    let machine = M::DEFINITION.name;
    let Some(row) = row else {
        return done(Err(Error::not_found::<M>(&job.id)));
    };
    let read = machine_row::<D>(row)
        .and_then(|m| Ok((m, transition_row::<D>(row, 4)?)))
        .map_err(|e| undecodable(machine, &job.id, "fsm_machines", &e));
    let (instance, recorded) = match read {
        Ok(read) => read,
        Err(err) => return done(Err(err)),
    };
    let snapshot = match decode_machine::<M>(&job.id, instance) {
        Ok(snapshot) => snapshot,
        Err(err) => return done(Err(err)),
    };
    if let Some(recorded) = recorded {
        let replayed = super::replay_recorded(&job.prepared, &job.id, recorded);
        return done(replayed);
    }
    // The rules are user code: a panic is the caller's, not the batch's.
    match catch_unwind(AssertUnwindSafe(|| job.prepared.apply(&snapshot))) {
        Ok(Ok(applied)) => Decision::Write(snapshot, applied),
        Ok(Err(err)) => done(Err(err)),
        Err(panic) => Decision::Settled(Settled::Panicked(panic)),
    }
}
