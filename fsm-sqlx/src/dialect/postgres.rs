//! PostgreSQL, for services that share one database server.
//!
//! A transition is written by one statement: data-modifying CTEs chain the
//! compare-and-set `UPDATE`, the history row, the outbox rows and the timers of the new
//! state, so those rows exist only if the compare-and-set hit, and a unique violation on
//! the idempotency key aborts the whole statement. `fire` costs two round trips (read,
//! write); `fire_with` with a current snapshot costs one. A command carrying a token
//! adds a transaction around its `DELETE ... RETURNING` and the write.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::{Connection as _, PgConnection, Pool, Postgres, Row, Transaction};

use fsm_core::Result;
use fsm_core::kit::OutboxWakeups;

use super::sealed::Backend;
use super::{Dialect, Lookup, Statements, consume_token, db_error, is_unique_violation};
use crate::engine::rows::{NewMachine, PendingTimer, TransitionWrite, WriteOutcome, undecodable};
use crate::notify::PeerWakeups;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = $1 OR (t.idem_key = $2 AND t.legacy_key))
WHERE m.machine_type = $3 AND m.machine_id = $4";

// The timers of the initial state are armed only if the row was inserted.
const INSERT: &str = "\
WITH inserted AS (
    INSERT INTO fsm_machines
      (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
    VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $7)
    ON CONFLICT (machine_type, machine_id) DO NOTHING
    RETURNING machine_type, machine_id, state
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
    SELECT i.machine_type, i.machine_id, 0, i.state, t.after_ms, t.due_at
    FROM inserted i, unnest($8::int8[], $9::int8[]) AS t(after_ms, due_at)
)
SELECT count(*) FROM inserted";

// Every sub-statement runs exactly once; the INSERTs read `updated`, so they write
// nothing when the compare-and-set missed. The result is the number of rows updated.
const WRITE: &str = "\
WITH updated AS (
    UPDATE fsm_machines SET state = $4, version = $5, context = $6, updated_at = $7,
      entered_at = COALESCE($18, entered_at)
    WHERE machine_type = $1 AND machine_id = $2 AND version = $3
      AND ($16::text IS NULL OR (state = $16 AND context = $17))
    RETURNING machine_type, machine_id, version, state, updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
    SELECT machine_type, machine_id, version, $8, $9, $10, state, $11, $12, updated_at
    FROM updated
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq - 1, e.effect, u.updated_at
    FROM updated u, unnest($13::text[]) WITH ORDINALITY AS e(effect, seq)
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
    SELECT u.machine_type, u.machine_id, u.version, u.state, t.after_ms, t.due_at
    FROM updated u, unnest($14::int8[], $15::int8[]) AS t(after_ms, due_at)
)
SELECT count(*) FROM updated";

// Group commit's read: `READ` for many instances at once, the lookup's position last.
const READ_MANY: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at, i.n
FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS i(id, idem_key, legacy, n)
JOIN fsm_machines m ON m.machine_type = $1 AND m.machine_id = i.id
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = i.idem_key OR (t.idem_key = i.legacy AND t.legacy_key))";

// Group commit's write: `WRITE` for many instances, one array per column (the batch has
// distinct instances, decided on reads, so it claims nothing). A taken key aborts the
// whole statement. The result is the ids updated.
const WRITE_MANY: &str = "\
WITH input AS (
    SELECT * FROM unnest($2::text[], $3::int8[], $4::text[], $5::int8[], $6::text[], $7::int8[],
      $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::int8[])
      AS i(id, expected, to_state, version, context, at, from_state, event, trigger_json, idem_key, fingerprint, entered_at)
), updated AS (
    UPDATE fsm_machines m SET state = i.to_state, version = i.version, context = i.context,
      updated_at = i.at, entered_at = COALESCE(i.entered_at, m.entered_at)
    FROM input i
    WHERE m.machine_type = $1 AND m.machine_id = i.id AND m.version = i.expected
    RETURNING m.machine_type, m.machine_id, m.version, m.state, m.updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
    SELECT u.machine_type, u.machine_id, u.version, i.from_state, i.event, i.trigger_json, u.state,
      i.idem_key, i.fingerprint, u.updated_at
    FROM updated u JOIN input i ON i.id = u.machine_id
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq, e.effect, u.updated_at
    FROM updated u JOIN unnest($14::text[], $15::int4[], $16::text[]) AS e(id, seq, effect)
      ON e.id = u.machine_id
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
    SELECT u.machine_type, u.machine_id, u.version, u.state, t.after_ms, t.due_at
    FROM updated u JOIN unnest($17::text[], $18::int8[], $19::int8[]) AS t(id, after_ms, due_at)
      ON t.id = u.machine_id
)
SELECT machine_id FROM updated";

// SKIP LOCKED: concurrent dispatchers take disjoint batches instead of queueing.
const CLAIM_EFFECTS: &str = "\
UPDATE fsm_outbox o SET lease_until = $3,
  attempts = CASE WHEN o.attempts < 2147483647 THEN o.attempts + 1 ELSE o.attempts END,
  claims = o.claims + 1
FROM (
  SELECT machine_type, machine_id, version, seq FROM fsm_outbox
  WHERE machine_type = $1 AND done_at IS NULL AND NOT dead AND available_at <= $2
    AND (lease_until IS NULL OR lease_until <= $2)
  ORDER BY available_at, machine_id, version, seq LIMIT $4
  FOR UPDATE SKIP LOCKED) due
WHERE o.machine_type = due.machine_type AND o.machine_id = due.machine_id
  AND o.version = due.version AND o.seq = due.seq
RETURNING o.machine_id, o.version, o.seq, o.effect, o.attempts, o.last_error, o.claims, o.available_at";

const CLAIM_TIMERS: &str = "\
UPDATE fsm_timers o SET lease_until = $3
FROM (
  SELECT machine_type, machine_id, version, after_ms FROM fsm_timers
  WHERE machine_type = $1 AND due_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)
  ORDER BY due_at LIMIT $4
  FOR UPDATE SKIP LOCKED) due
WHERE o.machine_type = due.machine_type AND o.machine_id = due.machine_id
  AND o.version = due.version AND o.after_ms = due.after_ms
RETURNING o.machine_id, o.version, o.from_state, o.after_ms, o.due_at";

impl Dialect for Postgres {}

impl Backend for Postgres {
    fn announce_effects(pool: &Pool<Self>, peers: &PeerWakeups, machine: &'static str) {
        crate::notify::announce(pool, peers, machine);
    }

    fn listen_for_effects(pool: &Pool<Self>, peers: &PeerWakeups, wakeups: &OutboxWakeups) {
        crate::notify::listen(pool, peers, wakeups);
    }

    const SQL: Statements = Statements {
        begin_write: None,
        read: READ,
        // Locks first, reads after: a statement that waited for the lock sees only the
        // locked row re-checked, so the key lookup must be a fresh statement.
        lock: Some(
            "SELECT 1 FROM fsm_machines WHERE machine_type = $1 AND machine_id = $2 FOR UPDATE",
        ),
        consume_token: "\
DELETE FROM fsm_tokens
WHERE machine_type = $1 AND machine_id = $2 AND token = $3 AND expires_at > $4
RETURNING token",
        // One statement per transition: `insert` and `write` are overridden below.
        steps: None,
        history: "\
SELECT version, from_state, trigger_json, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = $1 AND machine_id = $2 ORDER BY version",
        issue_token: "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT $1, $2, $3, $4 WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = $5 AND machine_id = $6)",
        effect_done: "\
UPDATE fsm_outbox SET done_at = $1, lease_until = NULL
WHERE machine_type = $2 AND machine_id = $3 AND version = $4 AND seq = $5 AND claims = $6",
        effect_retry: "\
UPDATE fsm_outbox SET available_at = $1, lease_until = NULL, last_error = $2
WHERE machine_type = $3 AND machine_id = $4 AND version = $5 AND seq = $6 AND claims = $7",
        effect_dead: "\
UPDATE fsm_outbox SET dead = TRUE, lease_until = NULL, last_error = $1
WHERE machine_type = $2 AND machine_id = $3 AND version = $4 AND seq = $5 AND claims = $6",
        effect_release: "\
UPDATE fsm_outbox SET lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND claims = $5",
        dead_effects: "\
SELECT machine_id, version, seq, effect, attempts, last_error, claims, available_at FROM fsm_outbox
WHERE machine_type = $1 AND dead ORDER BY available_at, machine_id, version, seq",
        requeue: "\
UPDATE fsm_outbox SET dead = FALSE, attempts = 0, available_at = $1, last_error = NULL
WHERE machine_type = $2 AND machine_id = $3 AND version = $4 AND seq = $5 AND dead",
        discard: "\
DELETE FROM fsm_outbox WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND seq = $4 AND dead",
        // SKIP LOCKED: a row a dispatcher holds is not waited for (done rows never are).
        prune_effects: "\
DELETE FROM fsm_outbox WHERE (machine_type, machine_id, version, seq) IN (
  SELECT machine_type, machine_id, version, seq FROM fsm_outbox
  WHERE done_at IS NOT NULL AND done_at < $1 ORDER BY done_at LIMIT $2
  FOR UPDATE SKIP LOCKED)",
        prune_tokens: "\
DELETE FROM fsm_tokens WHERE (machine_type, machine_id, token) IN (
  SELECT machine_type, machine_id, token FROM fsm_tokens
  WHERE expires_at < $1 ORDER BY expires_at LIMIT $2
  FOR UPDATE SKIP LOCKED)",
        claim_effects: CLAIM_EFFECTS,
        claim_timers: CLAIM_TIMERS,
        delete_timer: "\
DELETE FROM fsm_timers WHERE machine_type = $1 AND machine_id = $2 AND version = $3 AND after_ms = $4",
    };

    // The listing indexes collate ids "C"; comparing under the same collation uses them.
    const BYTE_ORDERED_ID: &'static str = "machine_id COLLATE \"C\"";

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    const BATCH_IN_TRANSACTION: bool = false;

    async fn read_many<'c>(
        conn: &'c mut PgConnection,
        machine: &'c str,
        lookups: &'c [Lookup<'c>],
    ) -> sqlx::Result<Vec<Option<PgRow>>> {
        read_many(conn, machine, lookups).await
    }

    async fn write_many<'c>(
        conn: &'c mut PgConnection,
        writes: &'c [TransitionWrite<'c>],
    ) -> Result<Option<Vec<bool>>> {
        write_many(conn, writes).await
    }

    async fn insert(pool: &Pool<Postgres>, new: &NewMachine<'_>) -> Result<bool> {
        let (edges, due) = timer_columns(&new.timers);
        let row = sqlx::query(INSERT)
            .bind(new.machine)
            .bind(new.id)
            .bind(new.state)
            .bind(&new.context)
            .bind(&new.init_fingerprint[..])
            .bind(new.at_ms)
            .bind(new.at_ms)
            .bind(&edges)
            .bind(&due)
            .fetch_one(pool)
            .await
            .map_err(db_error(|| format!("create {} {}", new.machine, new.id)))?;
        let inserted: i64 = row
            .try_get(0)
            .map_err(|e| undecodable(new.machine, new.id, "fsm_machines", &e))?;
        Ok(inserted == 1)
    }

    async fn write(conn: &mut PgConnection, w: &TransitionWrite<'_>) -> Result<WriteOutcome> {
        if w.token.is_some() {
            let tx = conn
                .begin()
                .await
                .map_err(db_error(|| format!("fire {} {}", w.machine, w.id)))?;
            return Self::write_locked(tx, w).await;
        }
        write_on(conn, w).await
    }

    async fn write_locked(
        mut tx: Transaction<'_, Postgres>,
        w: &TransitionWrite<'_>,
    ) -> Result<WriteOutcome> {
        if let Some(token) = w.token
            && !consume_token::<Postgres>(&mut tx, w, token).await?
        {
            return Ok(WriteOutcome::TokenRejected);
        }
        let written = write_on(&mut tx, w).await?;
        if written == WriteOutcome::Committed {
            tx.commit()
                .await
                .map_err(db_error(|| format!("commit {} {}", w.machine, w.id)))?;
        }
        Ok(written)
    }
}

/// [`READ_MANY`]'s rows put back in the lookups' order.
async fn read_many(
    conn: &mut PgConnection,
    machine: &str,
    lookups: &[Lookup<'_>],
) -> sqlx::Result<Vec<Option<PgRow>>> {
    let ids: Vec<&str> = lookups.iter().map(|l| l.id).collect();
    let keys: Vec<Option<&str>> = lookups.iter().map(|l| l.key).collect();
    let legacy: Vec<Option<&str>> = lookups.iter().map(|l| l.legacy.or(l.key)).collect();
    let rows = sqlx::query(READ_MANY)
        .bind(machine)
        .bind(&ids)
        .bind(&keys)
        .bind(&legacy)
        .fetch_all(&mut *conn)
        .await?;
    let mut ordered: Vec<Option<PgRow>> = lookups.iter().map(|_| None).collect();
    for row in rows {
        let n: i64 = row.try_get(11)?;
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| ordered.get_mut(i)) {
            *slot = Some(row);
        }
    }
    Ok(ordered)
}

/// [`WRITE_MANY`]: which of `writes` were written.
async fn write_many(
    conn: &mut PgConnection,
    writes: &[TransitionWrite<'_>],
) -> Result<Option<Vec<bool>>> {
    let Some(first) = writes.first() else {
        return Ok(Some(Vec::new()));
    };
    let (mut effect_ids, mut seqs, mut effects) = (Vec::new(), Vec::new(), Vec::new());
    let (mut timer_ids, mut afters, mut dues) = (Vec::new(), Vec::new(), Vec::new());
    for w in writes {
        for (seq, effect) in (0i32..).zip(&w.effects) {
            effect_ids.push(w.id);
            seqs.push(seq);
            effects.push(effect.as_str());
        }
        for timer in &w.timers {
            timer_ids.push(w.id);
            afters.push(timer.after_ms);
            dues.push(timer.due_at);
        }
    }
    let updated = sqlx::query(WRITE_MANY)
        .bind(first.machine)
        .bind(writes.iter().map(|w| w.id).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.expected).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.to_state).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.version).collect::<Vec<_>>())
        .bind(
            writes
                .iter()
                .map(|w| w.context.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(writes.iter().map(|w| w.at_ms).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.from_state).collect::<Vec<_>>())
        .bind(writes.iter().map(|w| w.event.as_str()).collect::<Vec<_>>())
        .bind(
            writes
                .iter()
                .map(|w| w.trigger.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(writes.iter().map(|w| w.idem_key).collect::<Vec<_>>())
        .bind(
            writes
                .iter()
                .map(|w| w.fingerprint.as_ref().map(|f| &f[..]))
                .collect::<Vec<_>>(),
        )
        .bind(writes.iter().map(|w| w.entered_at).collect::<Vec<_>>())
        .bind(&effect_ids)
        .bind(&seqs)
        .bind(&effects)
        .bind(&timer_ids)
        .bind(&afters)
        .bind(&dues)
        .fetch_all(conn)
        .await;
    let updated = match updated {
        Ok(rows) => rows,
        // The statement is atomic: a taken key left nothing of the batch behind.
        Err(e) if is_unique_violation(&e) => return Ok(None),
        Err(e) => return Err(db_error(|| format!("fire a batch of {}", first.machine))(e)),
    };
    let mut ids = std::collections::HashSet::with_capacity(updated.len());
    for row in &updated {
        let id: String = row
            .try_get(0)
            .map_err(|e| undecodable(first.machine, "-", "fsm_machines", &e))?;
        ids.insert(id);
    }
    Ok(Some(writes.iter().map(|w| ids.contains(w.id)).collect()))
}

fn timer_columns(timers: &[PendingTimer]) -> (Vec<i64>, Vec<i64>) {
    timers.iter().map(|t| (t.after_ms, t.due_at)).unzip()
}

/// Runs the write statement on `conn`: the compare-and-set and everything it implies.
async fn write_on(conn: &mut PgConnection, w: &TransitionWrite<'_>) -> Result<WriteOutcome> {
    let timers = timer_columns(&w.timers);
    let written = sqlx::query(WRITE)
        .bind(w.machine)
        .bind(w.id)
        .bind(w.expected)
        .bind(w.to_state)
        .bind(w.version)
        .bind(&w.context)
        .bind(w.at_ms)
        .bind(w.from_state)
        .bind(&w.event)
        .bind(&w.trigger)
        .bind(w.idem_key)
        .bind(w.fingerprint.as_ref().map(|f| &f[..]))
        .bind(&w.effects)
        .bind(&timers.0)
        .bind(&timers.1)
        .bind(w.claimed.as_ref().map(|c| c.state))
        .bind(w.claimed.as_ref().map(|c| c.context.as_str()))
        .bind(w.entered_at)
        .fetch_one(conn)
        .await;
    match written {
        Ok(row) => {
            let updated: i64 = row
                .try_get(0)
                .map_err(|e| undecodable(w.machine, w.id, "fsm_machines", &e))?;
            Ok(if updated == 0 {
                WriteOutcome::VersionMoved
            } else {
                WriteOutcome::Committed
            })
        }
        // The statement is atomic: a taken key left nothing behind.
        Err(e) if is_unique_violation(&e) => Ok(WriteOutcome::KeyTaken),
        Err(e) => Err(db_error(|| format!("fire {} {}", w.machine, w.id))(e)),
    }
}
