//! Retention: done outbox rows and expired tokens in bounded batches, and, where the
//! service asks for it, whole finished instances with their history.

use std::time::Duration;

use sqlx::Pool;

use fsm_core::kit::{millis, now_ms};
use fsm_core::{PruneReport, Result, Retention, StateMachine};

use super::queries::Statement;
use super::rows::undecodable;
use crate::dialect::{Arg, Dialect, begin_write, db_error, execute};

fn time(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `prune`: one statement per table, each at most a batch.
pub(crate) async fn prune<D: Dialect>(
    pool: &Pool<D>,
    retention: &Retention,
) -> Result<PruneReport> {
    let now = now_ms();
    let limit = Arg::Int(time(retention.batch_size() as u64));
    let done_before = Arg::Int(time(now.saturating_sub(millis(retention.done_effects))));
    let expired_before = Arg::Int(time(now.saturating_sub(millis(retention.expired_tokens))));
    let done_effects = execute(pool, D::SQL.prune_effects, &[done_before, limit], || {
        "prune done outbox rows".to_owned()
    })
    .await?;
    let expired_tokens = execute(pool, D::SQL.prune_tokens, &[expired_before, limit], || {
        "prune expired tokens".to_owned()
    })
    .await?;
    Ok(PruneReport {
        done_effects,
        expired_tokens,
        finished_instances: 0,
    })
}

/// The tables that hold an instance's rows besides `fsm_machines`, and what of them goes
/// with it: everything but an outbox row that is not done (there is none: the instance
/// was chosen for having none, and a terminal instance emits nothing more).
const DEPENDENT_ROWS: [(&str, &str); 4] = [
    ("fsm_transitions", ""),
    ("fsm_timers", ""),
    ("fsm_tokens", ""),
    ("fsm_outbox", " AND done_at IS NOT NULL"),
];

/// `prune_finished`: in one write transaction, locks up to `batch` instances of `M` in a
/// terminal state since before the cutoff with nothing unsettled in the outbox, then
/// deletes them and their rows.
pub(crate) async fn prune_finished<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    older_than: Duration,
    batch: usize,
) -> Result<u64> {
    let machine = M::DEFINITION.name;
    let terminal: Vec<&'static str> = M::DEFINITION
        .states
        .iter()
        .filter(|state| state.terminal)
        .flat_map(|state| state.stored_names())
        .collect();
    if terminal.is_empty() {
        return Ok(0);
    }
    let entered_before = time(now_ms().saturating_sub(millis(older_than)));
    let operation = || format!("prune finished {machine} instances");
    let mut tx = begin_write::<D>(pool, operation).await?;
    let mut select =
        Statement::<D>::new("SELECT m.machine_id FROM fsm_machines m WHERE m.machine_type = ");
    select
        .bind(Arg::Text(machine))
        .push(" AND m.state IN ")
        .bind_list(terminal.iter().map(|&name| Arg::Text(name)))
        .push(" AND m.entered_at < ")
        .bind(Arg::Int(entered_before))
        .push(
            " AND NOT EXISTS (SELECT 1 FROM fsm_outbox o WHERE o.machine_type = m.machine_type \
             AND o.machine_id = m.machine_id AND o.done_at IS NULL) ORDER BY m.entered_at LIMIT ",
        )
        .bind(Arg::Int(time(batch.max(1) as u64)))
        .push(D::LOCK_SKIP_LOCKED);
    let rows = select.rows_on(&mut tx, operation).await?;
    let ids = rows
        .iter()
        .map(|row| D::text(row, 0))
        .collect::<sqlx::Result<Vec<String>>>()
        .map_err(|e| undecodable(machine, "-", "fsm_machines", &e))?;
    if ids.is_empty() {
        return Ok(0);
    }
    let id_list = || ids.iter().map(|id| Arg::Text(id.as_str()));
    for (table, condition) in DEPENDENT_ROWS {
        let mut delete = Statement::<D>::new(&format!("DELETE FROM {table} WHERE machine_type = "));
        delete
            .bind(Arg::Text(machine))
            .push(" AND machine_id IN ")
            .bind_list(id_list())
            .push(condition);
        delete.execute_on(&mut tx, operation).await?;
    }
    let mut delete = Statement::<D>::new("DELETE FROM fsm_machines WHERE machine_type = ");
    delete
        .bind(Arg::Text(machine))
        .push(" AND machine_id IN ")
        .bind_list(id_list());
    let pruned = delete.execute_on(&mut tx, operation).await?;
    tx.commit().await.map_err(db_error(operation))?;
    Ok(pruned)
}
