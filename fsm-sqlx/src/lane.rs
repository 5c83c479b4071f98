//! SQLite's write lane: a fire's read, decision and write on one connection of the
//! store's own (rusqlite, the same bundled SQLite), run by the caller itself when the
//! lane is idle and by a thread of the lane's otherwise.
//!
//! sqlx's SQLite driver runs every call on a worker thread of its connection and sends
//! each statement's result back as a message, so a fire through it (a read, then a
//! string of writes) cost about fourteen context switches; a profile of one client
//! found half its samples in the kernel's wake-up paths and a fire at a quarter of what
//! C SQLite does with the same statements. On the lane, fsm-core's decision runs where
//! the connection is:
//!
//! * A caller that finds no other fire under way on the lane and no other connection
//!   holding SQLite's write lock runs its fire in its own thread: SQLite's work alone,
//!   about what C SQLite takes for the same statements, which under `synchronous = NORMAL` waits for the disk only for a page
//!   not in the OS cache or when the WAL reached the checkpoint backstop (with `FULL`,
//!   where each commit syncs, every fire goes to the thread).
//! * Otherwise the fire goes to the lane's thread, one message there and one back. The
//!   thread waits for the write lock as the pool's busy timeout allows. The fires that
//!   arrive while a transaction runs go into the next one together (group commit), each
//!   inside a savepoint of its own, so one command's failed guard or error undoes only
//!   its own statements; a store without group commit gives each fire a transaction of
//!   its own.
//!
//! The store's other work goes through sqlx and waits for the write lock in SQLite's
//! busy handler; the lane gives way to it ([`Others`], [`Courtesy`]).
//!
//! Each transaction takes the write lock (`BEGIN IMMEDIATE`) before it reads, so what a
//! command is decided on cannot move before it is written: a fire on the lane never
//! loses a race, in any [`Concurrency`](crate::Concurrency) mode. Commands carrying a
//! token, and stores built with [`from_pool`](crate::SqlStore::from_pool), over an
//! in-memory database or opened read-only, fire through sqlx as before.

use std::any::Any;
use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{ConnectOptions, Connection as _};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use fsm_core::kit::Prepared;
use fsm_core::{Error, Outcome, Result, Snapshot, StateMachine};

use crate::conns::ConnCache;
use crate::dialect::{Arg, OUTBOX_ONE, cas_args, outbox_args, read_args, record_args, timer_args};
use crate::engine::rows::{
    MachineRow, TransitionRow, TransitionWrite, WriteOutcome, decode_machine, undecodable, write_of,
};

/// The read of sqlx's path; the writes are its step-by-step statements (`Steps`).
const READ: &str = crate::dialect::sqlite::READ;

/// Prepared statements the lane's connection keeps: the read, the compare-and-set, the
/// history, outbox and timer inserts, and the transaction and savepoint statements.
const CACHED_STATEMENTS: usize = 16;

/// How long the thread stays awake for the next fire after one is done.
const SPIN: Duration = Duration::from_micros(100);

/// The settings of the store's pooled connections that a write depends on, copied to
/// the lane's connection.
struct PoolSettings {
    synchronous: i64,
    foreign_keys: i64,
    busy_timeout: Duration,
    wal_autocheckpoint: i64,
}

/// A store's lane: the sending end of its thread's queue. The thread ends when the last
/// clone of the store drops this, or when the store's pool closes.
#[derive(Debug)]
pub struct Lane {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Message>,
    _closing: DropGuard,
}

/// What the lane's thread and its callers share.
struct Shared {
    /// The connection; `None` once the pool closed.
    conn: Mutex<Option<Connection>>,
    /// Fires sent to the thread and not yet in a transaction.
    queued: AtomicUsize,
    /// The pool closed.
    closed: AtomicBool,
    /// Fires in [`Lane::fire`] now, run or waiting.
    callers: AtomicUsize,
    /// The store's work through sqlx, which the lane gives way to.
    others: Others,
    /// How long the thread waits for another connection's write lock (the pool's
    /// busy timeout).
    patience: Duration,
    /// Whether a caller that finds the lane idle runs its fire itself: only where a
    /// commit never waits for the disk (`synchronous` `NORMAL` or `OFF` in WAL mode).
    inline: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("queued", &self.queued)
            .field("patience", &self.patience)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

enum Message {
    Fire(Job),
    /// The pool closed: the store is done, and so is its lane.
    Stop,
}

/// One fire in the queue.
struct Job {
    machine: &'static str,
    /// Commits on its own rather than with the fires queued beside it.
    alone: bool,
    /// The most fires the transaction it opens may hold.
    max_batch: usize,
    work: Box<dyn Work>,
}

/// A fire's part on the lane's thread, erased over its machine type.
trait Work: Send {
    /// Reads, decides and writes inside the open transaction; whether it wrote (what
    /// it did not write its savepoint undoes).
    fn run(&mut self, conn: &Connection) -> bool;

    /// Answers the caller once the transaction ended: `ended` is the `COMMIT`'s result
    /// (or why the transaction never began or was undone).
    fn finish(self: Box<Self>, ended: std::result::Result<(), &LaneError>);
}

/// What a fire on the lane tells its caller.
pub(crate) enum Fired<M: StateMachine> {
    /// The outcome (or error) and the instance as stored afterwards; `effects` when it
    /// committed outbox rows.
    Done {
        result: Result<(Outcome<M>, Snapshot<M>)>,
        effects: bool,
    },
    /// An action panicked while deciding: the caller resumes the panic.
    Panicked(Box<dyn Any + Send>),
    /// The lane could not settle the command (it is gone, or the write found a key it
    /// had not read): the caller fires it through sqlx.
    Elsewhere(Prepared<M>),
}

impl Lane {
    /// Starts the lane of a store whose pool is `pool`, on the database file of
    /// `options`, with the settings the pool's connections have; `None` (the store then
    /// fires through sqlx) when the database is not a file in WAL mode or the lane's
    /// connection cannot be opened.
    pub(crate) async fn start(
        options: &SqliteConnectOptions,
        pool: &SqlitePool,
        conns: &ConnCache<sqlx::Sqlite>,
    ) -> Option<Self> {
        // Another VFS may lock the file otherwise than the lane's connection would.
        if options
            .to_url_lossy()
            .query_pairs()
            .any(|(key, _)| key == "vfs")
        {
            tracing::debug!("SQLite write lane not started: a VFS of its own");
            return None;
        }
        let path = options.get_filename().to_owned();
        let settings = match mirrored(pool).await {
            Ok(settings) => settings,
            Err(Refused(why)) => {
                tracing::debug!(why, "SQLite write lane not started");
                return None;
            }
            Err(Failed(e)) => {
                tracing::warn!(error = %e, "SQLite write lane not started");
                return None;
            }
        };
        let conn = match open(&path, &settings) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "SQLite write lane not started");
                return None;
            }
        };
        let shared = Arc::new(Shared {
            conn: Mutex::new(Some(conn)),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            callers: AtomicUsize::new(0),
            others: Others {
                pool: pool.clone(),
                conns: conns.clone(),
            },
            patience: settings.busy_timeout,
            // OFF (0) or NORMAL (1).
            inline: settings.synchronous <= 1,
        });
        let (jobs, queue) = mpsc::channel();
        let served = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("fsm-sqlite-lane".into())
            .spawn(move || serve(&served, &queue));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "SQLite write lane not started");
            return None;
        }
        let closing = CancellationToken::new();
        let (dropped, closed, stop) = (closing.clone(), pool.close_event(), jobs.clone());
        let marked = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::select! {
                () = closed => {
                    marked.closed.store(true, Ordering::Release);
                    drop(stop.send(Message::Stop));
                }
                () = dropped.cancelled() => {}
            }
        });
        Some(Lane {
            shared,
            jobs,
            _closing: closing.drop_guard(),
        })
    }

    /// Fires `prepared` at instance `id` on the lane, in a transaction of its own when
    /// `max_batch` is 1, else with up to `max_batch - 1` others queued beside it. The
    /// fire runs to its end once queued, even if the caller stops waiting.
    pub(crate) async fn fire<M: StateMachine>(
        &self,
        id: &str,
        prepared: Prepared<M>,
        max_batch: usize,
    ) -> Fired<M> {
        let _caller = Caller::count(&self.shared.callers);
        let (reply, answer) = oneshot::channel();
        let work = FireWork::<M> {
            id: id.to_owned(),
            prepared,
            attempt: None,
            reply,
        };
        let job = Job {
            machine: M::DEFINITION.name,
            alone: max_batch <= 1,
            max_batch: max_batch.max(1),
            work: Box::new(work),
        };
        if let Some(job) = self.inline(job) {
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(Message::Fire(job))) = self.jobs.send(Message::Fire(job)) {
                // The thread is gone (the pool closed): the unrun fire answers that
                // sqlx's path should take it.
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                job.work.finish(Ok(()));
            }
        }
        let Ok(fired) = answer.await else {
            // Dropped unanswered, never run: the lane stopped with it queued.
            let machine = M::DEFINITION.name;
            let result = match self.shared.closed.load(Ordering::Acquire) {
                true => Err(Error::database(
                    format!("fire {machine} {id}"),
                    sqlx::Error::PoolClosed,
                )),
                false => Err(Error::WorkerDied {
                    machine,
                    worker: "SQLite write lane",
                    detail: "the lane stopped before running the command".into(),
                }),
            };
            return Fired::Done {
                result,
                effects: false,
            };
        };
        fired
    }
}

impl Lane {
    /// Runs `job` in the caller's thread when no other fire is under way on the lane,
    /// the store has no work under way through sqlx ([`Others`]) and no other
    /// connection holds the write lock: then the fire is SQLite's work alone (no
    /// `fsync`), with no hand-off at all. Hands the job back otherwise, for
    /// the thread, which waits for the lock.
    fn inline(&self, job: Job) -> Option<Job> {
        let shared = &*self.shared;
        // With other fires under way, the thread takes this one into a transaction
        // with theirs: fires run inline under load would each commit alone (measured:
        // 0.75x the thread's throughput at 8 and 32 clients).
        // Nor while the store works through sqlx: the thread gives way to that.
        if !shared.inline
            || shared.callers.load(Ordering::Acquire) > 1
            || shared.queued.load(Ordering::Acquire) > 0
            || shared.others.busy()
        {
            return Some(job);
        }
        let guard = match shared.conn.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(job),
        };
        let Some(conn) = guard.as_ref() else {
            return Some(job);
        };
        if conn.busy_timeout(Duration::ZERO).is_err() {
            return Some(job);
        }
        let left = transact(conn, vec![job], false);
        if let Err(e) = conn.busy_timeout(shared.patience) {
            tracing::warn!(error = %e, "restoring the SQLite lane's busy timeout");
        }
        let mut guard = guard;
        retire_if_stuck(&mut guard);
        left.and_then(|mut jobs| jobs.pop())
    }
}

/// One fire under way on the lane, counted until its caller's future ends (a queued fire
/// whose caller stopped waiting is still counted as queued, until the thread takes it).
struct Caller<'a>(&'a AtomicUsize);

impl<'a> Caller<'a> {
    fn count(callers: &'a AtomicUsize) -> Self {
        callers.fetch_add(1, Ordering::AcqRel);
        Caller(callers)
    }
}

impl Drop for Caller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`mirrored`] gave no settings: a database the lane must not serve, or an error.
enum NoLane {
    Refused(&'static str),
    Failed(sqlx::Error),
}
use NoLane::{Failed, Refused};

impl From<sqlx::Error> for NoLane {
    fn from(e: sqlx::Error) -> Self {
        Failed(e)
    }
}

/// Reads the [`PoolSettings`] from a connection of `pool`, refusing a
/// database that is not in WAL mode (in memory, or configured otherwise), one locked
/// exclusively, or one the pool's connections cannot write (opened read-only): the lane
/// must not write where the store could not.
async fn mirrored(pool: &SqlitePool) -> std::result::Result<PoolSettings, NoLane> {
    let mut conn = pool.acquire().await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Refused("not in WAL mode"));
    }
    let locking: String = sqlx::query_scalar("PRAGMA locking_mode")
        .fetch_one(&mut *conn)
        .await?;
    if !locking.eq_ignore_ascii_case("normal") {
        return Err(Refused("locking_mode is not normal"));
    }
    // A read-only connection takes the write lock but refuses any write, even one of
    // the value already there. The transaction rolls back as it drops, even if this
    // future is dropped first.
    let user_version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    let mut probe = conn.begin_with("BEGIN IMMEDIATE").await?;
    let written = sqlx::query(&format!("PRAGMA user_version = {user_version}"))
        .execute(&mut *probe)
        .await;
    probe.rollback().await?;
    if written.is_err() {
        return Err(Refused("the pool's connections cannot write"));
    }
    let mut values = [0i64; 4];
    for (value, pragma) in values.iter_mut().zip([
        "synchronous",
        "foreign_keys",
        "busy_timeout",
        "wal_autocheckpoint",
    ]) {
        *value = sqlx::query_scalar(&format!("PRAGMA {pragma}"))
            .fetch_one(&mut *conn)
            .await?;
    }
    let [synchronous, foreign_keys, busy_ms, wal_autocheckpoint] = values;
    Ok(PoolSettings {
        synchronous,
        foreign_keys,
        busy_timeout: Duration::from_millis(u64::try_from(busy_ms).unwrap_or(0)),
        wal_autocheckpoint,
    })
}

/// The lane's connection: the database file, read-write, never created (the pool
/// opened it already), with the pool's settings.
fn open(path: &Path, settings: &PoolSettings) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "synchronous", settings.synchronous)?;
    conn.pragma_update(None, "foreign_keys", settings.foreign_keys)?;
    conn.pragma_update(None, "wal_autocheckpoint", settings.wal_autocheckpoint)?;
    conn.busy_timeout(settings.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
    Ok(conn)
}

/// The lane's thread: takes fires in arrival order, as many at once as the first
/// allows, until the store is dropped or its pool closes.
fn serve(shared: &Shared, queue: &mpsc::Receiver<Message>) {
    let mut courtesy = Courtesy::new();
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match next(queue) {
                Ok(Message::Fire(job)) => job,
                Ok(Message::Stop) | Err(_) => break,
            },
        };
        // Before gathering, so that the fires arriving meanwhile join this batch.
        courtesy.give_way(&shared.others);
        let mut batch = vec![first];
        let mut stopping = false;
        if !batch[0].alone {
            while batch.len() < batch[0].max_batch {
                match queue.try_recv() {
                    Ok(Message::Fire(job)) if !job.alone => batch.push(job),
                    Ok(Message::Fire(job)) => {
                        held = Some(job);
                        break;
                    }
                    Ok(Message::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            record_batch(&batch);
        }
        let mut guard = shared.conn.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted as queued until the lock is the thread's, so that no caller runs
        // inline ahead of them meanwhile.
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        // Unanswered, the batch's callers learn that the lane stopped.
        let Some(conn) = guard.as_ref() else { break };
        transact(conn, batch, true);
        if retire_if_stuck(&mut guard) || stopping {
            break;
        }
    }
    // Closes the connection now rather than with the store's last clone.
    drop(
        shared
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
}

/// The store's work through sqlx: a create, a token's fire, the dispatcher's claims and
/// settlements, the timer worker, the intake, but also a read or the application's own
/// use of the pool. A writer among it waits for SQLite's write lock in the busy handler,
/// which sleeps 1, 2, 5 ms and up to 100 ms between tries; a lane committing one
/// transaction after the other would leave it no moment to get in (measured: creates
/// beside 32 firing clients took up to 2.2 s). So the lane gives way while any such work
/// is under way: the thread waits before its next transaction ([`Courtesy`]), and a
/// fire goes to the thread rather than inline.
struct Others {
    pool: SqlitePool,
    conns: ConnCache<sqlx::Sqlite>,
}

impl Others {
    /// Connections out of the pool, but for those the store keeps between fires: some
    /// work through sqlx is under way (or a connection's return, a moment later).
    fn busy(&self) -> bool {
        let out = (self.pool.size() as usize).saturating_sub(self.pool.num_idle());
        out > self.conns.held()
    }
}

/// How long the thread may wait for the store's work through sqlx: [`BUDGET`] in any
/// [`WINDOW`], so that work which holds a connection without writing (steady reads, a
/// connection the application keeps) costs fires half the time at most.
struct Courtesy {
    window: Instant,
    waited: Duration,
}

const WINDOW: Duration = Duration::from_millis(500);
const BUDGET: Duration = Duration::from_millis(250);

impl Courtesy {
    fn new() -> Self {
        Courtesy {
            window: Instant::now(),
            waited: Duration::ZERO,
        }
    }

    /// Waits, before the next transaction, for the store's work through sqlx to end,
    /// within what is left of the budget; polls from 50 us, backing off to 1 ms.
    fn give_way(&mut self, others: &Others) {
        if !others.busy() {
            return;
        }
        if self.window.elapsed() >= WINDOW {
            (self.window, self.waited) = (Instant::now(), Duration::ZERO);
        }
        let left = BUDGET.saturating_sub(self.waited);
        let waiting = Instant::now();
        let mut pause = Duration::from_micros(50);
        while others.busy() && waiting.elapsed() < left {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        self.waited += waiting.elapsed();
    }
}

/// Drops the connection if a transaction is still open on it (its `ROLLBACK` failed):
/// closing it ends the transaction and frees SQLite's write lock, and the store's
/// fires go through sqlx from then on. Whether it did.
fn retire_if_stuck(conn: &mut Option<Connection>) -> bool {
    if conn.as_ref().is_none_or(Connection::is_autocommit) {
        return false;
    }
    tracing::error!("a transaction stayed open on the SQLite write lane; lane closed");
    drop(conn.take());
    true
}

/// The next message, yielding the CPU for a moment before sleeping: a caller that fires
/// again as soon as it is answered finds the thread awake, sparing two wake-ups.
fn next(queue: &mpsc::Receiver<Message>) -> std::result::Result<Message, mpsc::RecvError> {
    let awake = Instant::now();
    while awake.elapsed() < SPIN {
        match queue.try_recv() {
            Ok(message) => return Ok(message),
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
        }
    }
    queue.recv()
}

/// Records a group-commit batch for each machine type in it.
fn record_batch(batch: &[Job]) {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for job in batch {
        match counts
            .iter_mut()
            .find(|(machine, _)| *machine == job.machine)
        {
            Some((_, n)) => *n += 1,
            None => counts.push((job.machine, 1)),
        }
    }
    for (machine, n) in counts {
        fsm_core::observe::group_commit(machine, n);
    }
}

/// One transaction: each fire in a savepoint of its own (a lone fire needs none: its
/// transaction is committed only if it wrote), then `COMMIT`, then every caller's answer.
/// Without `patient`, a write lock held elsewhere hands the batch back untouched.
fn transact(conn: &Connection, batch: Vec<Job>, patient: bool) -> Option<Vec<Job>> {
    if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
        if !patient && is_busy(&e) {
            return Some(batch);
        }
        let e = LaneError::from(&e);
        for job in batch {
            job.work.finish(Err(&e));
        }
        return None;
    }
    let alone = batch.len() == 1;
    let mut ran: Vec<Box<dyn Work>> = Vec::with_capacity(batch.len());
    let mut wrote_any = false;
    let mut failed: Option<LaneError> = None;
    for job in batch {
        let mut work = job.work;
        if failed.is_none() {
            let opened = if alone {
                Ok(())
            } else {
                run(conn, "SAVEPOINT fsm_fire")
            };
            match opened {
                Ok(()) => {
                    // A panic is caught inside `run`; this only keeps the thread alive
                    // should anything else unwind.
                    let wrote = catch_unwind(AssertUnwindSafe(|| work.run(conn))).unwrap_or(false);
                    wrote_any |= wrote;
                    let closed = match (alone, wrote) {
                        (true, _) => Ok(()),
                        (false, true) => run(conn, "RELEASE fsm_fire"),
                        (false, false) => run(conn, "ROLLBACK TO fsm_fire")
                            .and_then(|()| run(conn, "RELEASE fsm_fire")),
                    };
                    if let Err(e) = closed {
                        failed = Some(LaneError::from(&e));
                    }
                }
                Err(e) => failed = Some(LaneError::from(&e)),
            }
            // An error SQLite answers by rolling the whole transaction back (a full
            // disk, say) takes the earlier fires' writes with it.
            if failed.is_none() && conn.is_autocommit() {
                failed = Some(LaneError {
                    message: "SQLite rolled the transaction back at a command's error".into(),
                    code: None,
                });
            }
        }
        ran.push(work);
    }
    let ended = match failed {
        Some(e) => Err(e),
        None if wrote_any => run(conn, "COMMIT").map_err(|e| LaneError::from(&e)),
        None => run(conn, "ROLLBACK").map_err(|e| LaneError::from(&e)),
    };
    if ended.is_err()
        && !conn.is_autocommit()
        && let Err(e) = run(conn, "ROLLBACK")
    {
        tracing::warn!(error = %e, "ROLLBACK of a failed SQLite lane transaction");
    }
    for work in ran {
        // Dropping a caller's values runs their code: it must not end the thread.
        let answered = catch_unwind(AssertUnwindSafe(|| work.finish(ended.as_ref().map(|_| ()))));
        if answered.is_err() {
            tracing::error!("a panic while answering a SQLite lane fire");
        }
    }
    None
}

/// Runs one statement without parameters, prepared once per connection.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// A fire of machine type `M`: its command, what its attempt came to, and its caller.
struct FireWork<M: StateMachine> {
    id: String,
    prepared: Prepared<M>,
    attempt: Option<Attempt<M>>,
    reply: oneshot::Sender<Fired<M>>,
}

/// What the attempt on the lane came to, before the transaction ended.
enum Attempt<M: StateMachine> {
    /// Written: committed if the transaction commits.
    Applied(Outcome<M>, Snapshot<M>, bool),
    /// Settled without a write: a duplicate's recorded outcome, or an error.
    Settled(Result<(Outcome<M>, Snapshot<M>)>),
    Panicked(Box<dyn Any + Send>),
    /// For sqlx's path.
    Elsewhere,
}

impl<M: StateMachine> Work for FireWork<M> {
    fn run(&mut self, conn: &Connection) -> bool {
        let ran = catch_unwind(AssertUnwindSafe(|| attempt(conn, &self.id, &self.prepared)));
        let attempt = match ran {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(e)) => Attempt::Settled(Err(e)),
            Err(panic) => Attempt::Panicked(panic),
        };
        let wrote = matches!(attempt, Attempt::Applied(..));
        self.attempt = Some(attempt);
        wrote
    }

    fn finish(self: Box<Self>, ended: std::result::Result<(), &LaneError>) {
        let FireWork {
            id,
            prepared,
            attempt,
            reply,
        } = *self;
        let done = |result| Fired::Done {
            result,
            effects: false,
        };
        let failed = |e: &LaneError| {
            done(Err(Error::database(
                format!("fire {} {id}", M::DEFINITION.name),
                e.to_sqlx(),
            )))
        };
        let fired = match (attempt, ended) {
            // Never run: sent to a thread that was gone, or the transaction never began.
            (None, Ok(())) => Fired::Elsewhere(prepared),
            (None, Err(e)) => failed(e),
            (Some(Attempt::Applied(outcome, snapshot, effects)), Ok(())) => Fired::Done {
                result: Ok((outcome, snapshot)),
                effects,
            },
            (Some(Attempt::Applied(..)), Err(e)) => failed(e),
            (Some(Attempt::Settled(result)), Ok(())) => done(result),
            // Decided in a transaction that was undone, maybe on another command's
            // write that is gone with it (a duplicate of it, a guard it failed): sqlx's
            // path decides again on what is committed.
            (Some(Attempt::Settled(_)), Err(_)) => Fired::Elsewhere(prepared),
            (Some(Attempt::Panicked(panic)), _) => Fired::Panicked(panic),
            (Some(Attempt::Elsewhere), _) => Fired::Elsewhere(prepared),
        };
        // A caller that stopped waiting needs no answer.
        let _ = reply.send(fired);
    }
}

/// A SQLite error on the lane, as sqlx's SQLite driver reports one (its message and
/// extended result code), so that an [`Error::Database`] keeps a [`sqlx::Error`] as its
/// source whichever path the fire took. Kept by value: one `COMMIT` can fail many fires.
#[derive(Debug, Clone)]
pub(crate) struct LaneError {
    message: String,
    code: Option<i32>,
}

impl LaneError {
    fn to_sqlx(&self) -> sqlx::Error {
        sqlx::Error::Database(Box::new(self.clone()))
    }
}

impl From<&rusqlite::Error> for LaneError {
    fn from(e: &rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(failure, message) => LaneError {
                message: message.clone().unwrap_or_else(|| failure.to_string()),
                code: Some(failure.extended_code),
            },
            other => LaneError {
                message: other.to_string(),
                code: None,
            },
        }
    }
}

impl std::fmt::Display for LaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "(code: {code}) {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for LaneError {}

impl DatabaseError for LaneError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.map(|code| code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// Read, decide and write, under the write lock the transaction holds.
fn attempt<M: StateMachine>(
    conn: &Connection,
    id: &str,
    prepared: &Prepared<M>,
) -> Result<Attempt<M>> {
    let machine = M::DEFINITION.name;
    let (row, recorded) =
        read(conn, machine, id, prepared)?.ok_or_else(|| Error::not_found::<M>(id))?;
    let snapshot = decode_machine::<M>(id, row)?;
    if let Some(row) = recorded {
        let outcome = crate::engine::replay_recorded(prepared, id, row)?;
        return Ok(Attempt::Settled(Ok((outcome, snapshot))));
    }
    let applied = match catch_unwind(AssertUnwindSafe(|| prepared.apply(&snapshot))) {
        Ok(applied) => applied?,
        Err(panic) => return Ok(Attempt::Panicked(panic)),
    };
    let write = write_of(id, prepared, &snapshot, true, &applied)?;
    match write_rows(conn, &write) {
        Ok(WriteOutcome::Committed) => Ok(Attempt::Applied(
            Outcome::Applied(applied.transition),
            applied.snapshot,
            !write.effects.is_empty(),
        )),
        // Under the write lock the version cannot have moved since the read; a key the
        // read did not find is sqlx's path to sort out (it reads and replays).
        Ok(_) => Ok(Attempt::Elsewhere),
        Err(e) => Err(database_error(format!("fire {machine} {id}"), &e)),
    }
}

/// The instance and the transition recorded under the command's key, if any: the read
/// of sqlx's path, decoded alike.
fn read<M: StateMachine>(
    conn: &Connection,
    machine: &'static str,
    id: &str,
    prepared: &Prepared<M>,
) -> Result<Option<(MachineRow, Option<TransitionRow>)>> {
    let args = read_args(machine, id, prepared.stored_key(), prepared.legacy_key());
    let failed = |e: rusqlite::Error| database_error(format!("read {machine} {id}"), &e);
    let mut statement = conn.prepare_cached(READ).map_err(failed)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(args.iter()))
        .map_err(failed)?;
    let Some(row) = rows.next().map_err(failed)? else {
        return Ok(None);
    };
    let machine_row = (|| {
        Ok::<_, rusqlite::Error>(MachineRow {
            state: text(row, 0)?,
            version: row.get(1)?,
            context: text(row, 2)?,
            init_fingerprint: bytes(row, 3)?,
        })
    })()
    .map_err(|e| undecodable(machine, id, "fsm_machines", &e))?;
    let transition = (|| {
        let Some(version) = row.get::<_, Option<i64>>(4)? else {
            return Ok(None);
        };
        Ok::<_, rusqlite::Error>(Some(TransitionRow {
            version,
            from_state: text(row, 5)?,
            trigger: text(row, 6)?,
            to_state: text(row, 7)?,
            idem_key: maybe_text(row, 8)?,
            fingerprint: maybe_bytes(row, 9)?,
            at_ms: row.get(10)?,
        }))
    })()
    // As sqlx's path reports it: the read is of the instance.
    .map_err(|e| undecodable(machine, id, "fsm_machines", &e))?;
    Ok(Some((machine_row, transition)))
}

/// A `TEXT` column (as sqlx decodes one: text only, valid UTF-8).
fn text(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<String> {
    row.get(index)
}

fn maybe_text(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    row.get(index)
}

/// A binary column, which sqlx also reads from text.
fn bytes(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Vec<u8>> {
    maybe_bytes(row, index)?.ok_or(rusqlite::Error::InvalidColumnType(
        index,
        "NULL where bytes were expected".into(),
        rusqlite::types::Type::Null,
    ))
}

fn maybe_bytes(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<Vec<u8>>> {
    match row.get_ref(index)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
        other => Err(rusqlite::Error::InvalidColumnType(
            index,
            "bytes".into(),
            other.data_type(),
        )),
    }
}

/// The transition's rows, as sqlx's step-by-step path writes them: the compare-and-set,
/// the history row, the outbox rows and the timers. A moved version or a key taken by
/// the history row is an outcome; any other failure (a unique violation elsewhere
/// included) an error.
fn write_rows(conn: &Connection, w: &TransitionWrite<'_>) -> rusqlite::Result<WriteOutcome> {
    let steps = crate::dialect::steps::<sqlx::Sqlite>();
    let updated = conn
        .prepare_cached(steps.compare_and_set)?
        .execute(rusqlite::params_from_iter(cas_args(w).iter()))?;
    if updated != 1 {
        return Ok(WriteOutcome::VersionMoved);
    }
    let recorded = conn
        .prepare_cached(steps.record)?
        .execute(rusqlite::params_from_iter(record_args(w).iter()));
    match recorded {
        Err(e) if is_unique_violation(&e) => return Ok(WriteOutcome::KeyTaken),
        other => other?,
    };
    if !w.effects.is_empty() {
        let mut outbox = conn.prepare_cached(OUTBOX_ONE)?;
        for (seq, effect) in (0i32..).zip(&w.effects) {
            outbox.execute(rusqlite::params_from_iter(
                outbox_args(w, seq, effect).iter(),
            ))?;
        }
    }
    if !w.timers.is_empty() {
        let mut arm = conn.prepare_cached(steps.arm_timer)?;
        for timer in &w.timers {
            let args = timer_args(w.machine, w.id, w.version, w.to_state, timer);
            arm.execute(rusqlite::params_from_iter(args.iter()))?;
        }
    }
    Ok(WriteOutcome::Committed)
}

/// Another connection holds the write lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    LaneError::from(e).kind() == ErrorKind::UniqueViolation
}

/// An [`Error::Database`] of `operation` for a SQLite error on the lane.
fn database_error(operation: String, e: &rusqlite::Error) -> Error {
    Error::database(operation, LaneError::from(e).to_sqlx())
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = match *self {
            Arg::Text(s) | Arg::MaybeText(Some(s)) => ValueRef::Text(s.as_bytes()),
            Arg::Int(n) | Arg::MaybeInt(Some(n)) => ValueRef::Integer(n),
            Arg::Small(n) => ValueRef::Integer(i64::from(n)),
            Arg::Bytes(b) | Arg::MaybeBytes(Some(b)) => ValueRef::Blob(b),
            Arg::MaybeText(None) | Arg::MaybeInt(None) | Arg::MaybeBytes(None) => ValueRef::Null,
        };
        Ok(ToSqlOutput::Borrowed(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane counts a connection out of the store's pool as work under way, unless
    /// the store keeps it between fires.
    #[tokio::test]
    async fn work_through_sqlx_is_a_pool_connection_out_but_not_one_kept_between_fires() {
        let path = std::env::temp_dir().join(format!(
            "fsm-lane-others-{}-{}.db",
            std::process::id(),
            fsm_core::kit::now_ms()
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.expect("pool");
        let others = Others {
            pool: pool.clone(),
            conns: ConnCache::default(),
        };
        assert!(!others.busy(), "an idle pool");
        let conn = pool.acquire().await.expect("connection");
        assert!(others.busy(), "a connection out of the pool");
        others.conns.keep(&pool, conn);
        assert_eq!(others.conns.held(), 1);
        assert!(!others.busy(), "a connection kept between fires");
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
