//! The intake's statements and the few round trips that run them, written once for
//! every [`Dialect`] with the crate's bind order and helpers.
//!
//! Statements whose length depends on a batch (multi-row `VALUES`, `IN` lists) are
//! built for power-of-two sizes only and padded by repeating the last element (a
//! repeated row conflicts with itself and is skipped; a repeated `IN` item matches
//! nothing new), so the statement cache sees a handful of texts. PostgreSQL records a
//! batch and settles one in a single statement each, over `unnest` arrays.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use sqlx::Pool;

use fsm_core::Result;

use crate::dialect::sealed::Backend;
use crate::dialect::{Arg, Dialect, begin_write, db_error, execute, fetch, retrying};

/// The table's name in errors.
pub(crate) const TABLE: &str = "fsm_intake";

/// `status` of a row: waiting for a worker.
pub(crate) const PENDING: i32 = 0;
/// `status`: the command's transition was applied (`outcome`: the transition's JSON).
pub(crate) const APPLIED: i32 = 1;
/// `status`: the key had recorded the transition before (`outcome`: its JSON).
pub(crate) const DUPLICATE: i32 = 2;
/// `status`: the command failed for good (`outcome`: the error's JSON).
pub(crate) const FAILED: i32 = 3;

/// The largest batch one statement carries (7 binds a row: far under every server's
/// limit).
pub(crate) const MAX_ROWS: usize = 512;

/// A command to record.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub(crate) machine_id: String,
    pub(crate) idem_key: String,
    pub(crate) event: String,
    pub(crate) fingerprint: [u8; 32],
    /// Random per submit: the row is this submit's own when the nonce read back is its.
    pub(crate) nonce: i64,
}

/// A recorded row, as `submit` and `status` read it.
#[derive(Debug, Clone)]
pub(crate) struct IntakeRow {
    pub(crate) seq: i64,
    pub(crate) machine_id: String,
    pub(crate) idem_key: String,
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) nonce: i64,
    pub(crate) status: i32,
    pub(crate) outcome: Option<String>,
    pub(crate) submitted_at: i64,
    pub(crate) attempts: i32,
    pub(crate) settled_at: Option<i64>,
}

/// A row a worker leased, with its attempt and lease token counted.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRow {
    pub(crate) seq: i64,
    pub(crate) machine_id: String,
    pub(crate) idem_key: String,
    pub(crate) event: String,
    pub(crate) submitted_at: i64,
    pub(crate) attempts: i32,
    pub(crate) claims: i64,
}

/// A claimed row's outcome, written with its lease token.
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    pub(crate) seq: i64,
    pub(crate) claims: i64,
    pub(crate) status: i32,
    pub(crate) outcome: String,
}

const ROW_COLUMNS: &str = "seq, machine_id, idem_key, fingerprint, nonce, status, outcome, submitted_at, attempts, settled_at";

/// A statement built for `D` at run time, kept for the process: the statement cache
/// needs a `'static` text.
fn built<D: Dialect>(
    what: &'static str,
    rows: usize,
    build: impl FnOnce() -> String,
) -> &'static str {
    type Built = HashMap<(&'static str, &'static str, usize), &'static str>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let mut cache = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    cache
        .entry((<D as sqlx::Database>::NAME, what, rows))
        .or_insert_with(|| Box::leak(build().into_boxed_str()))
}

/// Placeholders `from..from + n` joined by `, `.
fn list<D: Dialect>(from: usize, n: usize) -> String {
    (from..from + n)
        .map(D::placeholder)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` rounded up to a power of two (at least 1).
pub(crate) fn padded(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

fn is_mysql<D: Dialect>() -> bool {
    <D as sqlx::Database>::NAME == "MySQL"
}

fn insert_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("insert", rows, || {
        let p = D::placeholder;
        let values: Vec<String> = (0..rows)
            .map(|row| {
                let at = 1 + row * 7;
                format!(
                    "({}, {}, {}, {}, {}, {}, {})",
                    p(at),
                    p(at + 1),
                    p(at + 2),
                    p(at + 3),
                    p(at + 4),
                    p(at + 5),
                    p(at + 6)
                )
            })
            .collect();
        // A key recorded before (or twice in this batch) keeps its first row.
        let conflict = if is_mysql::<D>() {
            " ON DUPLICATE KEY UPDATE seq = seq"
        } else {
            " ON CONFLICT (machine_type, machine_id, idem_key) DO NOTHING"
        };
        format!(
            "INSERT INTO fsm_intake (machine_type, machine_id, idem_key, event, fingerprint, nonce, submitted_at) VALUES {}{conflict}",
            values.join(", ")
        )
    })
}

/// The rows of `rows` keys; each term matches the whole unique key, so every dialect
/// answers it from the index.
fn select_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("select", rows, || {
        let p = D::placeholder;
        let terms: Vec<String> = (0..rows)
            .map(|row| {
                let at = 1 + row * 3;
                format!(
                    "(machine_type = {} AND machine_id = {} AND idem_key = {})",
                    p(at),
                    p(at + 1),
                    p(at + 2)
                )
            })
            .collect();
        format!(
            "SELECT {ROW_COLUMNS} FROM fsm_intake WHERE {}",
            terms.join(" OR ")
        )
    })
}

/// Due rows in seq order, of instances none of whose rows another worker holds under
/// an unexpired lease. The leased rows are few (the workers' batches) and read once
/// from their own index, so the claim never depends on the planner turning a
/// correlated subquery into an index lookup (without statistics PostgreSQL does not).
/// Binds: machine, now, machine, now, limit.
fn claim_sql<D: Dialect>() -> &'static str {
    built::<D>("claim", 0, || {
        let p = D::placeholder;
        format!(
            "SELECT c.seq, c.machine_id, c.idem_key, c.event, c.submitted_at, c.attempts, c.claims \
             FROM fsm_intake c \
             WHERE c.machine_type = {} AND c.status = 0 AND (c.lease_until IS NULL OR c.lease_until <= {}) \
               AND c.machine_id NOT IN (SELECT e.machine_id FROM fsm_intake e \
                 WHERE e.machine_type = {} AND e.status = 0 AND e.lease_until > {}) \
             ORDER BY c.seq LIMIT {}{}",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            D::LOCK_SKIP_LOCKED
        )
    })
}

fn lease_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("lease", rows, || {
        format!(
            "UPDATE fsm_intake SET lease_until = {}, attempts = attempts + 1, claims = claims + 1 \
             WHERE seq IN ({})",
            D::placeholder(1),
            list::<D>(2, rows)
        )
    })
}

/// The pending rows (instance id, seq) of `rows` instances below a seq: range scans of
/// the instance index, nothing correlated for a planner to get wrong. Binds: machine,
/// below, the ids.
fn earlier_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("earlier", rows, || {
        format!(
            "SELECT machine_id, seq FROM fsm_intake WHERE machine_type = {} AND status = 0 \
             AND seq < {} AND machine_id IN ({})",
            D::placeholder(1),
            D::placeholder(2),
            list::<D>(3, rows)
        )
    })
}

fn release_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("release", rows, || {
        let p = D::placeholder;
        let matches: Vec<String> = (0..rows)
            .map(|row| format!("(seq = {} AND claims = {})", p(1 + row * 2), p(2 + row * 2)))
            .collect();
        format!(
            "UPDATE fsm_intake SET lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
             WHERE status = 0 AND ({})",
            matches.join(" OR ")
        )
    })
}

fn retry_sql<D: Dialect>() -> &'static str {
    built::<D>("retry", 0, || {
        format!(
            "UPDATE fsm_intake SET lease_until = {} WHERE seq = {} AND claims = {} AND status = 0",
            D::placeholder(1),
            D::placeholder(2),
            D::placeholder(3)
        )
    })
}

/// The outcomes of `rows` claimed rows in one statement, each written only while its
/// lease token is current. Binds: (seq, status) per row, (seq, outcome) per row, the
/// time, (seq, claims) per row.
fn settle_sql<D: Dialect>(rows: usize) -> &'static str {
    built::<D>("settle", rows, || {
        let p = D::placeholder;
        let cases = |from: usize| -> String {
            (0..rows)
                .map(|row| format!("WHEN {} THEN {}", p(from + row * 2), p(from + row * 2 + 1)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let at = 1 + rows * 4;
        let matches: Vec<String> = (0..rows)
            .map(|row| {
                format!(
                    "(seq = {} AND claims = {})",
                    p(at + 1 + row * 2),
                    p(at + 2 + row * 2)
                )
            })
            .collect();
        format!(
            "UPDATE fsm_intake SET status = CASE seq {} END, outcome = CASE seq {} END, \
             settled_at = {}, lease_until = NULL WHERE status = 0 AND ({})",
            cases(1),
            cases(1 + rows * 2),
            p(at),
            matches.join(" OR ")
        )
    })
}

fn status_sql<D: Dialect>() -> &'static str {
    built::<D>("status", 0, || {
        format!(
            "SELECT {ROW_COLUMNS} FROM fsm_intake WHERE machine_type = {} AND machine_id = {} AND idem_key = {}",
            D::placeholder(1),
            D::placeholder(2),
            D::placeholder(3)
        )
    })
}

fn pending_sql<D: Dialect>() -> &'static str {
    built::<D>("pending", 0, || {
        format!(
            "SELECT count(*) FROM fsm_intake WHERE machine_type = {} AND status = 0",
            D::placeholder(1)
        )
    })
}

/// Deletes up to `limit` settled rows settled before `before`, oldest first. Binds:
/// machine, before, limit.
fn prune_sql<D: Dialect>() -> &'static str {
    built::<D>("prune", 0, || {
        let p = D::placeholder;
        if is_mysql::<D>() {
            // MySQL takes no LIMIT in an IN subquery, but a DELETE of its own.
            "DELETE FROM fsm_intake WHERE machine_type = ? AND status <> 0 AND settled_at < ? \
             ORDER BY seq LIMIT ?"
                .to_owned()
        } else {
            format!(
                "DELETE FROM fsm_intake WHERE seq IN (SELECT seq FROM fsm_intake \
                 WHERE machine_type = {} AND status <> 0 AND settled_at < {} ORDER BY seq LIMIT {})",
                p(1),
                p(2),
                p(3)
            )
        }
    })
}

/// Deletes up to `limit` rows of `machine` settled before `before`; how many.
pub(crate) async fn prune<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    before: i64,
    limit: usize,
) -> Result<u64> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let args = [Arg::Text(machine), Arg::Int(before), Arg::Int(limit)];
    execute(pool, prune_sql::<D>(), &args, || {
        format!("prune settled {machine} submissions")
    })
    .await
}

/// A row that does not decode as the table's columns.
fn undecodable(
    machine: &'static str,
    id: &str,
    table: &'static str,
    err: &dyn std::fmt::Display,
) -> fsm_core::Error {
    fsm_core::Error::Corrupt {
        table,
        machine,
        id: id.to_owned(),
        detail: format!("row does not decode: {err}"),
    }
}

/// A row of [`ROW_COLUMNS`].
fn intake_row<D: Backend>(machine: &'static str, row: &D::Row) -> Result<IntakeRow> {
    let decode = || -> sqlx::Result<IntakeRow> {
        Ok(IntakeRow {
            seq: D::int(row, 0)?,
            machine_id: D::text(row, 1)?,
            idem_key: D::text(row, 2)?,
            fingerprint: D::bytes(row, 3)?,
            nonce: D::int(row, 4)?,
            status: D::small(row, 5)?,
            outcome: D::maybe_string(row, 6)?,
            submitted_at: D::int(row, 7)?,
            attempts: D::small(row, 8)?,
            settled_at: D::maybe_int(row, 9)?,
        })
    };
    decode().map_err(|e| undecodable(machine, "-", TABLE, &e))
}

fn claimed_row<D: Backend>(machine: &'static str, row: &D::Row) -> Result<ClaimedRow> {
    let decode = || -> sqlx::Result<ClaimedRow> {
        Ok(ClaimedRow {
            seq: D::int(row, 0)?,
            machine_id: D::text(row, 1)?,
            idem_key: D::text(row, 2)?,
            event: D::string(row, 3)?,
            submitted_at: D::int(row, 4)?,
            attempts: D::small(row, 5)?,
            claims: D::int(row, 6)?,
        })
    };
    decode().map_err(|e| undecodable(machine, "-", TABLE, &e))
}

/// Records `rows` (unless their key is recorded already) and reads back the row of each
/// key, the new and the earlier ones alike.
pub(crate) async fn record<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    rows: &[NewRow],
    now: i64,
) -> Result<Vec<IntakeRow>> {
    #[cfg(feature = "postgres")]
    if let Some(pg) = (pool as &dyn std::any::Any).downcast_ref::<Pool<sqlx::Postgres>>() {
        return postgres::record(pg, machine, rows, now).await;
    }
    let padded_rows = padded(rows.len());
    let last = rows.last().expect("a batch holds one row at least");
    let mut args = Vec::with_capacity(padded_rows * 7);
    for row in rows
        .iter()
        .chain(std::iter::repeat_n(last, padded_rows - rows.len()))
    {
        args.extend([
            Arg::Text(machine),
            Arg::Text(&row.machine_id),
            Arg::Text(&row.idem_key),
            Arg::Text(&row.event),
            Arg::Bytes(&row.fingerprint),
            Arg::Int(row.nonce),
            Arg::Int(now),
        ]);
    }
    execute(pool, insert_sql::<D>(padded_rows), &args, || {
        format!("submit {} {machine} commands", rows.len())
    })
    .await?;
    let keys: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.machine_id.as_str(), r.idem_key.as_str()))
        .collect();
    select(pool, machine, &keys).await
}

/// The recorded rows of `keys` (instance id, stored key).
pub(crate) async fn select<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    keys: &[(&str, &str)],
) -> Result<Vec<IntakeRow>> {
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(MAX_ROWS) {
        let size = padded(chunk.len());
        let last = chunk.last().expect("chunks are never empty");
        let mut args = Vec::with_capacity(size * 3);
        for (id, key) in chunk
            .iter()
            .chain(std::iter::repeat_n(last, size - chunk.len()))
        {
            args.extend([Arg::Text(machine), Arg::Text(id), Arg::Text(key)]);
        }
        let rows = fetch(pool, select_sql::<D>(size), &args, || {
            format!("read {} {machine} submissions", chunk.len())
        })
        .await?;
        for row in &rows {
            found.push(intake_row::<D>(machine, row)?);
        }
    }
    Ok(found)
}

/// The row recorded under `key` for instance `id`, if any.
pub(crate) async fn status<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    id: &str,
    key: &str,
) -> Result<Option<IntakeRow>> {
    let args = [Arg::Text(machine), Arg::Text(id), Arg::Text(key)];
    let rows = fetch(pool, status_sql::<D>(), &args, || {
        format!("read {machine} {id} submission")
    })
    .await?;
    rows.first()
        .map(|row| intake_row::<D>(machine, row))
        .transpose()
}

/// Submissions of `machine` waiting for a worker.
pub(crate) async fn pending<D: Dialect>(pool: &Pool<D>, machine: &'static str) -> Result<u64> {
    let rows = fetch(pool, pending_sql::<D>(), &[Arg::Text(machine)], || {
        format!("count pending {machine} submissions")
    })
    .await?;
    let count = rows
        .first()
        .map(|row| D::int(row, 0))
        .transpose()
        .map_err(|e| undecodable(machine, "-", TABLE, &e))?
        .unwrap_or(0);
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Leases up to `limit` due rows until `lease_until`, in seq order, counting an attempt
/// and a claim on each. One write transaction: a locking read that skips rows another
/// claimer holds, then the lease.
pub(crate) async fn claim<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> Result<Vec<ClaimedRow>> {
    let limit = i64::try_from(limit.clamp(1, MAX_ROWS)).unwrap_or(1);
    retrying(|| async {
        let failed = db_error(|| format!("claim {machine} submissions"));
        let mut tx = begin_write(pool, || format!("claim {machine} submissions")).await?;
        let args = [
            Arg::Text(machine),
            Arg::Int(now),
            Arg::Text(machine),
            Arg::Int(now),
            Arg::Int(limit),
        ];
        let rows = D::rows(&mut tx, claim_sql::<D>(), &args)
            .await
            .map_err(&failed)?;
        if rows.is_empty() {
            tx.rollback().await.map_err(&failed)?;
            return Ok(Vec::new());
        }
        let mut claimed = rows
            .iter()
            .map(|row| claimed_row::<D>(machine, row))
            .collect::<Result<Vec<_>>>()?;
        let size = padded(claimed.len());
        let mut args = vec![Arg::Int(lease_until)];
        let last = claimed.last().map_or(0, |c| c.seq);
        args.extend(claimed.iter().map(|c| Arg::Int(c.seq)));
        args.extend(std::iter::repeat_n(Arg::Int(last), size - claimed.len()));
        D::run(&mut tx, lease_sql::<D>(size), &args)
            .await
            .map_err(&failed)?;
        tx.commit().await.map_err(&failed)?;
        for row in &mut claimed {
            row.attempts = row.attempts.saturating_add(1);
            row.claims += 1;
        }
        Ok(claimed)
    })
    .await
}

/// The claimed rows that wait behind an earlier pending row of their instance which
/// this claim does not hold (a concurrent claimer skipped it while locked, or it
/// committed late): applying them now would overtake it. Their seqs.
pub(crate) async fn behind<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    claimed: &[ClaimedRow],
) -> Result<Vec<i64>> {
    let Some(top) = claimed.iter().map(|row| row.seq).max() else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<&str> = claimed.iter().map(|row| row.machine_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mine: std::collections::HashSet<i64> = claimed.iter().map(|row| row.seq).collect();
    // Per instance, the lowest earlier pending seq this claim does not hold.
    let mut first_other: HashMap<String, i64> = HashMap::new();
    for chunk in ids.chunks(MAX_ROWS) {
        let size = padded(chunk.len());
        let last = chunk.last().expect("chunks are never empty");
        let mut args = vec![Arg::Text(machine), Arg::Int(top)];
        args.extend(
            chunk
                .iter()
                .chain(std::iter::repeat_n(last, size - chunk.len()))
                .map(|id| Arg::Text(id)),
        );
        let rows = fetch(pool, earlier_sql::<D>(size), &args, || {
            format!("check the order of {machine} submissions")
        })
        .await?;
        for row in &rows {
            let decode =
                || -> sqlx::Result<(String, i64)> { Ok((D::text(row, 0)?, D::int(row, 1)?)) };
            let (id, seq) = decode().map_err(|e| undecodable(machine, "-", TABLE, &e))?;
            if !mine.contains(&seq) {
                let first = first_other.entry(id).or_insert(seq);
                *first = (*first).min(seq);
            }
        }
    }
    Ok(claimed
        .iter()
        .filter(|row| {
            first_other
                .get(&row.machine_id)
                .is_some_and(|&other| other < row.seq)
        })
        .map(|row| row.seq)
        .collect())
}

/// Gives claimed rows back unapplied, uncounting their attempt; one statement per
/// chunk (a claim that raced another may give most of its rows back).
pub(crate) async fn release<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    rows: &[&ClaimedRow],
) -> Result<()> {
    for chunk in rows.chunks(MAX_ROWS) {
        let size = padded(chunk.len());
        let last = chunk.last().expect("chunks are never empty");
        let args: Vec<Arg<'_>> = chunk
            .iter()
            .chain(std::iter::repeat_n(last, size - chunk.len()))
            .flat_map(|row| [Arg::Int(row.seq), Arg::Int(row.claims)])
            .collect();
        execute(pool, release_sql::<D>(size), &args, || {
            format!("release {} {machine} submissions", chunk.len())
        })
        .await?;
    }
    Ok(())
}

/// Keeps a claimed row leased until `at`, when a worker may try it again.
pub(crate) async fn retry_at<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    row: &ClaimedRow,
    at: i64,
) -> Result<()> {
    let args = [Arg::Int(at), Arg::Int(row.seq), Arg::Int(row.claims)];
    execute(pool, retry_sql::<D>(), &args, || {
        format!("defer {machine} {} submission", row.machine_id)
    })
    .await
    .map(drop)
}

/// Writes the outcomes of claimed rows, each only while its lease token is current;
/// how many were written.
pub(crate) async fn settle<D: Dialect>(
    pool: &Pool<D>,
    machine: &'static str,
    settled: &[Settled],
    now: i64,
) -> Result<u64> {
    if settled.is_empty() {
        return Ok(0);
    }
    #[cfg(feature = "postgres")]
    if let Some(pg) = (pool as &dyn std::any::Any).downcast_ref::<Pool<sqlx::Postgres>>() {
        return postgres::settle(pg, machine, settled, now).await;
    }
    let mut written = 0;
    for chunk in settled.chunks(MAX_ROWS / 2) {
        let size = padded(chunk.len());
        let last = chunk.last().expect("chunks are never empty");
        let rows: Vec<&Settled> = chunk
            .iter()
            .chain(std::iter::repeat_n(last, size - chunk.len()))
            .collect();
        let mut args = Vec::with_capacity(size * 6 + 1);
        args.extend(
            rows.iter()
                .flat_map(|r| [Arg::Int(r.seq), Arg::Small(r.status)]),
        );
        args.extend(
            rows.iter()
                .flat_map(|r| [Arg::Int(r.seq), Arg::Text(&r.outcome)]),
        );
        args.push(Arg::Int(now));
        args.extend(
            rows.iter()
                .flat_map(|r| [Arg::Int(r.seq), Arg::Int(r.claims)]),
        );
        written += execute(pool, settle_sql::<D>(size), &args, || {
            format!("settle {} {machine} submissions", chunk.len())
        })
        .await?;
    }
    Ok(written)
}

/// PostgreSQL's one-statement batches over `unnest` arrays.
#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::{Pool, Postgres};

    use super::*;

    /// Inserts the batch and returns the inserted rows; a key recorded before is read
    /// afterwards.
    const RECORD: &str = "\
INSERT INTO fsm_intake (machine_type, machine_id, idem_key, event, fingerprint, nonce, submitted_at)
SELECT $1, v.machine_id, v.idem_key, v.event, v.fingerprint, v.nonce, $7
FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[])
  AS v(machine_id, idem_key, event, fingerprint, nonce)
ON CONFLICT (machine_type, machine_id, idem_key) DO NOTHING
RETURNING seq, machine_id, idem_key, fingerprint, nonce, status, outcome, submitted_at, attempts, settled_at";

    const SETTLE: &str = "\
UPDATE fsm_intake i SET status = v.status, outcome = v.outcome, settled_at = $1, lease_until = NULL
FROM unnest($2::int8[], $3::int8[], $4::int4[], $5::text[]) AS v(seq, claims, status, outcome)
WHERE i.seq = v.seq AND i.claims = v.claims AND i.status = 0";

    pub(super) async fn record(
        pool: &Pool<Postgres>,
        machine: &'static str,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<IntakeRow>> {
        let ids: Vec<&str> = rows.iter().map(|r| r.machine_id.as_str()).collect();
        let keys: Vec<&str> = rows.iter().map(|r| r.idem_key.as_str()).collect();
        let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
        let prints: Vec<&[u8]> = rows.iter().map(|r| &r.fingerprint[..]).collect();
        let nonces: Vec<i64> = rows.iter().map(|r| r.nonce).collect();
        let found = retrying(|| async {
            sqlx::query(RECORD)
                .bind(machine)
                .bind(&ids)
                .bind(&keys)
                .bind(&events)
                .bind(&prints)
                .bind(&nonces)
                .bind(now)
                .fetch_all(pool)
                .await
                .map_err(db_error(|| {
                    format!("submit {} {machine} commands", rows.len())
                }))
        })
        .await?;
        let mut found = found
            .iter()
            .map(|row| intake_row::<Postgres>(machine, row))
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<(&str, &str)> = rows
            .iter()
            .filter(|r| {
                !found
                    .iter()
                    .any(|f| f.machine_id == r.machine_id && f.idem_key == r.idem_key)
            })
            .map(|r| (r.machine_id.as_str(), r.idem_key.as_str()))
            .collect();
        if !missing.is_empty() {
            found.extend(select(pool, machine, &missing).await?);
        }
        Ok(found)
    }

    pub(super) async fn settle(
        pool: &Pool<Postgres>,
        machine: &'static str,
        settled: &[Settled],
        now: i64,
    ) -> Result<u64> {
        let seqs: Vec<i64> = settled.iter().map(|s| s.seq).collect();
        let claims: Vec<i64> = settled.iter().map(|s| s.claims).collect();
        let statuses: Vec<i32> = settled.iter().map(|s| s.status).collect();
        let outcomes: Vec<&str> = settled.iter().map(|s| s.outcome.as_str()).collect();
        retrying(|| async {
            sqlx::query(SETTLE)
                .bind(now)
                .bind(&seqs)
                .bind(&claims)
                .bind(&statuses)
                .bind(&outcomes)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(db_error(|| {
                    format!("settle {} {machine} submissions", settled.len())
                }))
        })
        .await
    }
}
