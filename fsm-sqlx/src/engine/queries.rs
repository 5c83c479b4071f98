//! Listings, counts, the stored-names check, and one instance's timers and outbox:
//! read-only statements, built for the query at hand with every value bound.
//!
//! A listing by state runs one index range scan per stored name of each state asked
//! for (its current name and the names it was renamed from) and merges them, so each
//! scan is the `(machine_type, state, entered_at, machine_id)` index read in order from
//! the cursor; ids compare as bytes on every backend.

use std::time::Duration;

use sqlx::Pool;

use fsm_core::kit::{ListedRow, Order, Plan, timer_name};
use fsm_core::{
    ArmedTimer, EffectId, EffectStatus, OutboxDepth, OutboxEntry, Page, Query, Result, StateCounts,
    StateMachine, Unknown, UnknownKind, VerifyReport,
};

use super::rows::{MachineRow, decode_machine, undecodable};
use crate::dialect::{Arg, Dialect, db_error, retrying};

/// A statement under construction: text with placeholders as `D` numbers them, and its
/// arguments in order.
pub(super) struct Statement<'a, D> {
    sql: String,
    args: Vec<Arg<'a>>,
    dialect: std::marker::PhantomData<fn() -> D>,
}

impl<'a, D: Dialect> Statement<'a, D> {
    pub(super) fn new(sql: &str) -> Self {
        Statement {
            sql: sql.to_owned(),
            args: Vec::new(),
            dialect: std::marker::PhantomData,
        }
    }

    /// Appends `text`.
    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(super) fn bind(&mut self, arg: Arg<'a>) -> &mut Self {
        self.args.push(arg);
        self.sql.push_str(&D::placeholder(self.args.len()));
        self
    }

    /// Appends `(?, ?, ...)` bound to `args`.
    pub(super) fn bind_list(&mut self, args: impl IntoIterator<Item = Arg<'a>>) -> &mut Self {
        self.push("(");
        for (n, arg) in args.into_iter().enumerate() {
            if n > 0 {
                self.push(", ");
            }
            self.bind(arg);
        }
        self.push(")")
    }

    /// Its rows, on `conn`.
    pub(super) async fn rows_on(
        &self,
        conn: &mut D::Connection,
        operation: impl Fn() -> String,
    ) -> Result<Vec<D::Row>> {
        D::rows(conn, &self.sql, &self.args)
            .await
            .map_err(db_error(operation))
    }

    /// Runs it on `conn`; rows changed.
    pub(super) async fn execute_on(
        &self,
        conn: &mut D::Connection,
        operation: impl Fn() -> String,
    ) -> Result<u64> {
        let result = D::run(conn, &self.sql, &self.args)
            .await
            .map_err(db_error(operation))?;
        Ok(D::rows_affected(&result))
    }

    pub(super) async fn rows(
        &self,
        pool: &Pool<D>,
        operation: impl Fn() -> String,
    ) -> Result<Vec<D::Row>> {
        let failed = db_error(operation);
        // Even a read can be a lost race at SERIALIZABLE: run it again.
        retrying(|| async {
            let mut conn = pool.acquire().await.map_err(&failed)?;
            D::rows(&mut conn, &self.sql, &self.args)
                .await
                .map_err(&failed)
        })
        .await
    }
}

fn time(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `list`: one range scan per stored state name (or one in all), merged into a page.
pub(crate) async fn list<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    query: &Query<M>,
    now_ms: u64,
) -> Result<Page<M>> {
    let plan = query.plan(now_ms)?;
    let mut rows = Vec::new();
    if plan.states.is_empty() {
        rows = scan::<D>(pool, &plan, None).await?;
    } else {
        for &state in &plan.states {
            rows.extend(scan::<D>(pool, &plan, Some(state)).await?);
        }
    }
    Ok(plan.page::<M>(rows, |row| {
        decode_machine::<M>(
            &row.id,
            MachineRow {
                state: row.state.clone(),
                version: row.version,
                context: row.context.clone(),
                init_fingerprint: Vec::new(),
            },
        )
    }))
}

/// The rows of one index range, in order from the cursor, one more than a page.
async fn scan<D: Dialect>(
    pool: &Pool<D>,
    plan: &Plan,
    state: Option<&'static str>,
) -> Result<Vec<ListedRow>> {
    let id = D::BYTE_ORDERED_ID;
    let end = plan.id_prefix_end();
    let mut s = Statement::<D>::new(
        "SELECT machine_id, state, version, context, created_at, entered_at, updated_at \
         FROM fsm_machines WHERE machine_type = ",
    );
    s.bind(Arg::Text(plan.machine));
    if let Some(state) = state {
        s.push(" AND state = ").bind(Arg::Text(state));
    }
    if let Some(before) = plan.entered_before_ms {
        s.push(" AND entered_at < ").bind(Arg::Int(time(before)));
    }
    if let (Some(prefix), Some(end)) = (plan.id_prefix.as_deref(), end.as_deref()) {
        s.push(&format!(" AND {id} >= ")).bind(Arg::Text(prefix));
        s.push(&format!(" AND {id} < ")).bind(Arg::Text(end));
    }
    let (op, direction) = match plan.newest_first {
        false => (">", "ASC"),
        true => ("<", "DESC"),
    };
    let column = match plan.order {
        Order::Entered => Some("entered_at"),
        Order::Created => Some("created_at"),
        Order::Id => None,
    };
    if let Some((after_time, after_id)) = &plan.after {
        match column {
            // The first bound is a range on the index; the second cuts ties by id.
            Some(column) => {
                s.push(&format!(" AND {column} {op}= "))
                    .bind(Arg::Int(time(*after_time)));
                s.push(&format!(" AND ({column} {op} "))
                    .bind(Arg::Int(time(*after_time)));
                s.push(&format!(" OR {id} {op} "))
                    .bind(Arg::Text(after_id))
                    .push(")");
            }
            None => {
                s.push(&format!(" AND {id} {op} "))
                    .bind(Arg::Text(after_id));
            }
        }
    }
    match column {
        Some(column) => s.push(&format!(" ORDER BY {column} {direction}, {id} {direction}")),
        None => s.push(&format!(" ORDER BY {id} {direction}")),
    };
    s.push(" LIMIT ").bind(Arg::Int(plan.limit as i64 + 1));
    let machine = plan.machine;
    let rows = s.rows(pool, || format!("list {machine}")).await?;
    rows.iter()
        .map(|row| {
            let decode = || -> sqlx::Result<ListedRow> {
                Ok(ListedRow {
                    id: D::text(row, 0)?,
                    state: D::string(row, 1)?,
                    version: D::int(row, 2)?,
                    context: D::string(row, 3)?,
                    created_at_ms: u64::try_from(D::int(row, 4)?).unwrap_or(0),
                    entered_at_ms: u64::try_from(D::int(row, 5)?).unwrap_or(0),
                    updated_at_ms: u64::try_from(D::int(row, 6)?).unwrap_or(0),
                })
            };
            decode().map_err(|e| undecodable(machine, "-", "fsm_machines", &e))
        })
        .collect()
}

/// `count_by_state`: the distinct states found by skipping through the state index (one
/// probe per state, a "loose index scan"), then one index-only count per state; never a
/// scan of the table.
pub(crate) async fn count_by_state<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
) -> Result<StateCounts<M>> {
    let machine = M::DEFINITION.name;
    let mut s = Statement::<D>::new(
        "WITH RECURSIVE states (state) AS (\
         SELECT MIN(state) FROM fsm_machines WHERE machine_type = ",
    );
    s.bind(Arg::Text(machine))
        .push(
            " UNION ALL SELECT (SELECT MIN(m.state) FROM fsm_machines m \
             WHERE m.machine_type = ",
        )
        .bind(Arg::Text(machine))
        .push(
            " AND m.state > s.state) FROM states s WHERE s.state IS NOT NULL) \
             SELECT s.state, (SELECT COUNT(*) FROM fsm_machines m WHERE m.machine_type = ",
        )
        .bind(Arg::Text(machine))
        .push(" AND m.state = s.state) FROM states s WHERE s.state IS NOT NULL");
    let rows = s.rows(pool, || format!("count {machine} by state")).await?;
    let counts = rows
        .iter()
        .map(|row| {
            Ok((
                D::string(row, 0)?,
                u64::try_from(D::int(row, 1)?).unwrap_or(0),
            ))
        })
        .collect::<sqlx::Result<Vec<_>>>()
        .map_err(|e| undecodable(machine, "-", "fsm_machines", &e))?;
    Ok(StateCounts::from_stored(counts))
}

/// What `verify` groups: the names in one column of one table, and how to find
/// instances holding one.
struct Scan {
    kind: UnknownKind,
    table: &'static str,
    column: &'static str,
    /// An extra condition (history rows whose `to` differs from `from`).
    only: &'static str,
}

const SCANS: [Scan; 4] = [
    Scan {
        kind: UnknownKind::State,
        table: "fsm_machines",
        column: "state",
        only: "",
    },
    Scan {
        kind: UnknownKind::HistoryState,
        table: "fsm_transitions",
        column: "from_state",
        only: "",
    },
    Scan {
        kind: UnknownKind::HistoryState,
        table: "fsm_transitions",
        column: "to_state",
        only: " AND to_state <> from_state",
    },
    Scan {
        kind: UnknownKind::Event,
        table: "fsm_transitions",
        column: "event",
        only: "",
    },
];

/// `verify`: grouped scans of every stored name, then up to three ids per unknown one.
pub(crate) async fn verify<D: Dialect, M: StateMachine>(pool: &Pool<D>) -> Result<VerifyReport> {
    let machine = M::DEFINITION.name;
    let definition = M::DEFINITION;
    let operation = || format!("verify {machine}");
    let mut counts = [0u64; 3];
    for (n, table) in ["fsm_machines", "fsm_transitions", "fsm_timers"]
        .into_iter()
        .enumerate()
    {
        let mut s = Statement::<D>::new(&format!(
            "SELECT COUNT(*) FROM {table} WHERE machine_type = "
        ));
        s.bind(Arg::Text(machine));
        let rows = s.rows(pool, operation).await?;
        counts[n] = rows
            .first()
            .map(|row| D::int(row, 0))
            .transpose()
            .map_err(|e| undecodable(machine, "-", table, &e))?
            .map_or(0, |n| u64::try_from(n).unwrap_or(0));
    }
    let mut found = Vec::new();
    for scan in &SCANS {
        let column = scan.column;
        let mut s = Statement::<D>::new(&format!(
            "SELECT {column}, COUNT(*) FROM {} WHERE machine_type = ",
            scan.table
        ));
        s.bind(Arg::Text(machine))
            .push(scan.only)
            .push(&format!(" GROUP BY {column}"));
        for row in s.rows(pool, operation).await? {
            let name = D::string(&row, 0).map_err(|e| undecodable(machine, "-", scan.table, &e))?;
            let count = D::int(&row, 1).map_err(|e| undecodable(machine, "-", scan.table, &e))?;
            let known = match scan.kind {
                UnknownKind::Event => {
                    // Timers are recorded under their label, `after(..)`; their names are
                    // checked where they are pending.
                    name.starts_with("after(") || definition.event(&name).is_some()
                }
                _ => definition.state(&name).is_some(),
            };
            if known {
                continue;
            }
            let mut samples = Statement::<D>::new(&format!(
                "SELECT DISTINCT machine_id FROM {} WHERE machine_type = ",
                scan.table
            ));
            samples
                .bind(Arg::Text(machine))
                .push(&format!(" AND {column} = "))
                .bind(Arg::Text(&name))
                .push(scan.only)
                .push(" ORDER BY machine_id LIMIT 3");
            found.push(Unknown {
                kind: scan.kind,
                count: u64::try_from(count).unwrap_or(0),
                sample_ids: sample_ids::<D>(pool, &samples, machine, scan.table).await?,
                name,
            });
        }
    }
    let mut s = Statement::<D>::new(
        "SELECT from_state, after_ms, COUNT(*) FROM fsm_timers WHERE machine_type = ",
    );
    s.bind(Arg::Text(machine))
        .push(" GROUP BY from_state, after_ms");
    for row in s.rows(pool, operation).await? {
        let decode = || -> sqlx::Result<(String, i64, i64)> {
            Ok((D::string(&row, 0)?, D::int(&row, 1)?, D::int(&row, 2)?))
        };
        let (state, after_ms, count) =
            decode().map_err(|e| undecodable(machine, "-", "fsm_timers", &e))?;
        let after = Duration::from_millis(u64::try_from(after_ms).unwrap_or(0));
        if after_ms >= 0 && definition.has_timer(&state, after) {
            continue;
        }
        let mut samples =
            Statement::<D>::new("SELECT DISTINCT machine_id FROM fsm_timers WHERE machine_type = ");
        samples
            .bind(Arg::Text(machine))
            .push(" AND from_state = ")
            .bind(Arg::Text(&state))
            .push(" AND after_ms = ")
            .bind(Arg::Int(after_ms))
            .push(" ORDER BY machine_id LIMIT 3");
        found.push(Unknown {
            kind: UnknownKind::Timer,
            name: timer_name(&state, after),
            count: u64::try_from(count).unwrap_or(0),
            sample_ids: sample_ids::<D>(pool, &samples, machine, "fsm_timers").await?,
        });
    }
    Ok(VerifyReport::of::<M>(counts, found))
}

async fn sample_ids<D: Dialect>(
    pool: &Pool<D>,
    statement: &Statement<'_, D>,
    machine: &'static str,
    table: &'static str,
) -> Result<Vec<String>> {
    let rows = statement
        .rows(pool, || format!("verify {machine}: sample {table} ids"))
        .await?;
    rows.iter()
        .map(|row| D::text(row, 0))
        .collect::<sqlx::Result<_>>()
        .map_err(|e| undecodable(machine, "-", table, &e))
}

/// `outbox_depth`: two counts, the pending one over the outbox's due index.
pub(crate) async fn outbox_depth<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
) -> Result<OutboxDepth> {
    let mut counts = [0u64; 2];
    for (n, condition) in [" AND done_at IS NULL AND NOT dead", " AND dead"]
        .into_iter()
        .enumerate()
    {
        let mut s = Statement::<D>::new("SELECT COUNT(*) FROM fsm_outbox WHERE machine_type = ");
        s.bind(Arg::Text(machine)).push(condition);
        let rows = s.rows(pool, || format!("count {machine} outbox")).await?;
        counts[n] = rows
            .first()
            .map(|row| D::int(row, 0))
            .transpose()
            .map_err(|e| undecodable(machine, "-", "fsm_outbox", &e))?
            .map_or(0, |c| u64::try_from(c).unwrap_or(0));
    }
    Ok(OutboxDepth {
        pending: counts[0],
        dead: counts[1],
    })
}

/// `pending_timers`.
pub(crate) async fn pending_timers<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    id: &str,
) -> Result<Vec<ArmedTimer>> {
    let machine = M::DEFINITION.name;
    let mut s = Statement::<D>::new(
        "SELECT version, from_state, after_ms, due_at FROM fsm_timers WHERE machine_type = ",
    );
    s.bind(Arg::Text(machine))
        .push(" AND machine_id = ")
        .bind(Arg::Text(id))
        .push(" ORDER BY due_at, version, after_ms");
    let rows = s.rows(pool, || format!("timers of {machine} {id}")).await?;
    rows.iter()
        .map(|row| {
            let decode = || -> sqlx::Result<ArmedTimer> {
                Ok(ArmedTimer {
                    version: u64::try_from(D::int(row, 0)?).unwrap_or(0),
                    state: D::string(row, 1)?,
                    after: Duration::from_millis(u64::try_from(D::int(row, 2)?).unwrap_or(0)),
                    due_at_ms: u64::try_from(D::int(row, 3)?).unwrap_or(0),
                })
            };
            decode().map_err(|e| undecodable(machine, id, "fsm_timers", &e))
        })
        .collect()
}

/// `outbox`.
pub(crate) async fn outbox<D: Dialect, M: StateMachine>(
    pool: &Pool<D>,
    id: &str,
) -> Result<Vec<OutboxEntry<M::Effect>>> {
    let machine = M::DEFINITION.name;
    let mut s = Statement::<D>::new(
        "SELECT version, seq, effect, \
         CASE WHEN dead THEN 'dead' WHEN done_at IS NOT NULL THEN 'done' ELSE 'pending' END, \
         attempts, last_error, available_at, done_at FROM fsm_outbox WHERE machine_type = ",
    );
    s.bind(Arg::Text(machine))
        .push(" AND machine_id = ")
        .bind(Arg::Text(id))
        .push(" ORDER BY version, seq");
    let rows = s.rows(pool, || format!("outbox of {machine} {id}")).await?;
    rows.iter()
        .map(|row| {
            let decode = || -> sqlx::Result<OutboxEntry<M::Effect>> {
                let raw = D::string(row, 2)?;
                Ok(OutboxEntry {
                    id: EffectId {
                        machine,
                        id: id.to_owned(),
                        version: u64::try_from(D::int(row, 0)?).unwrap_or(0),
                        seq: u32::try_from(D::small(row, 1)?).unwrap_or(0),
                    },
                    effect: serde_json::from_str(&raw).ok(),
                    raw,
                    status: match D::string(row, 3)?.as_str() {
                        "dead" => EffectStatus::Dead,
                        "done" => EffectStatus::Done,
                        _ => EffectStatus::Pending,
                    },
                    attempts: u32::try_from(D::small(row, 4)?).unwrap_or(0),
                    last_error: D::maybe_string(row, 5)?,
                    available_at_ms: u64::try_from(D::int(row, 6)?).unwrap_or(0),
                    done_at_ms: D::maybe_int(row, 7)?.and_then(|t| u64::try_from(t).ok()),
                })
            };
            decode().map_err(|e| undecodable(machine, id, "fsm_outbox", &e))
        })
        .collect()
}
