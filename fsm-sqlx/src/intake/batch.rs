//! Concurrent submits combined into one statement: a task per [`Intake`](super::Intake)
//! takes whatever submits are waiting, records them together, and answers each.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Pool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use fsm_core::kit::now_ms;
use fsm_core::{Error, Result};

use super::sql::{self, IntakeRow, NewRow};
use crate::dialect::Dialect;

/// One waiting submit.
struct Request {
    row: NewRow,
    reply: oneshot::Sender<Result<IntakeRow>>,
}

/// The sending side of a batching task; the task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("row", &self.row).finish()
    }
}

impl Batcher {
    /// Spawns the batching task on the current runtime: at most `in_flight` batches of
    /// at most `max_rows` are written at once; while they are, new submits queue up and
    /// go together in the next. `recorded` is notified after each batch.
    pub(crate) fn start<D: Dialect>(
        pool: Pool<D>,
        machine: &'static str,
        max_rows: usize,
        in_flight: usize,
        recorded: Arc<Notify>,
    ) -> Self {
        let (requests, mut queue) = mpsc::unbounded_channel::<Request>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let max_rows = max_rows.clamp(1, sql::MAX_ROWS);
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                // Wait for a slot before taking the rest, so a batch grows while the
                // slots are busy.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max_rows {
                    match queue.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (pool, recorded) = (pool.clone(), Arc::clone(&recorded));
                // A task per batch: it runs to the end whoever stops waiting for it.
                tokio::spawn(async move {
                    write(&pool, machine, batch).await;
                    recorded.notify_waiters();
                    recorded.notify_one();
                    drop(slot);
                });
            }
        });
        Batcher { requests }
    }

    /// Records `row` with whatever else is waiting; the row now recorded under its key.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the row was handed over does not take it back: it is
    /// recorded (or not) with its batch, and nobody else's answer changes.
    pub(crate) async fn submit(&self, machine: &'static str, row: NewRow) -> Result<IntakeRow> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { row, reply })
            .map_err(|_| stopped(machine))?;
        answer.await.map_err(|_| stopped(machine))?
    }
}

fn stopped(machine: &'static str) -> Error {
    Error::WorkerDied {
        machine,
        worker: "intake",
        detail: "the intake's batching task stopped (its runtime shut down?)".to_owned(),
    }
}

/// Records one batch and answers each request with its key's row.
async fn write<D: Dialect>(pool: &Pool<D>, machine: &'static str, batch: Vec<Request>) {
    // One order for every batch, so two batches sharing keys cannot deadlock.
    let mut rows: Vec<NewRow> = batch.iter().map(|r| r.row.clone()).collect();
    rows.sort_by(|a, b| (&a.machine_id, &a.idem_key).cmp(&(&b.machine_id, &b.idem_key)));
    rows.dedup_by(|a, b| a.machine_id == b.machine_id && a.idem_key == b.idem_key);
    let recorded = sql::record(pool, machine, &rows, now_ms() as i64).await;
    let operation = || format!("submit {machine} commands");
    match recorded {
        Ok(found) => {
            let by_key: HashMap<(&str, &str), &IntakeRow> = found
                .iter()
                .map(|row| ((row.machine_id.as_str(), row.idem_key.as_str()), row))
                .collect();
            for request in batch {
                let key = (
                    request.row.machine_id.as_str(),
                    request.row.idem_key.as_str(),
                );
                let answer = by_key.get(&key).map(|row| (*row).clone()).ok_or_else(|| {
                    Error::database(operation(), "the submission was not found once recorded")
                });
                // A caller that stopped waiting just does not hear back.
                let _ = request.reply.send(answer);
            }
        }
        Err(err) => {
            let message = err.to_string();
            let mut first = Some(err);
            for request in batch {
                let err = first
                    .take()
                    .unwrap_or_else(|| Error::database(operation(), message.clone()));
                let _ = request.reply.send(Err(err));
            }
        }
    }
}
