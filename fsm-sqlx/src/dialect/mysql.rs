//! MySQL and MariaDB.
//!
//! A transition is one InnoDB transaction: the token's `DELETE ... RETURNING` when the
//! command carries one, the compare-and-set `UPDATE`, the history row, the outbox rows,
//! the new state's timers, `COMMIT`. The server reports found rather than changed rows
//! to sqlx, which does not matter here: the version bump changes every row the
//! compare-and-set finds. Names, ids and keys are `VARBINARY`, so they compare byte for
//! byte as on the other backends. Placeholders are positional: every statement lists
//! its `?`s in the shared bind order.

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlQueryResult, MySqlRow};
use sqlx::{MySql, Pool};

use fsm_core::Result;
use fsm_core::kit::ClaimedEffect;

use super::sealed::Backend;
use super::{Arg, Dialect, Sql, Statements, Steps, claimed_effect, db_error, decodable, timer_row};
use crate::engine::rows::TimerRow;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/mysql");

// SKIP LOCKED: concurrent dispatchers take disjoint batches instead of queueing.
// MariaDB has no UPDATE ... RETURNING, so a claim is a locking read, then an update.
const DUE_EFFECTS: &str = "\
SELECT machine_id, version, seq, effect, attempts, last_error, claims, available_at FROM fsm_outbox
WHERE machine_type = ? AND done_at IS NULL AND NOT dead AND available_at <= ?
  AND (lease_until IS NULL OR lease_until <= ?)
ORDER BY available_at, machine_id, version, seq LIMIT ?
FOR UPDATE SKIP LOCKED";

const LEASE_EFFECT: &str = "\
UPDATE fsm_outbox SET lease_until = ?,
  attempts = CASE WHEN attempts < 2147483647 THEN attempts + 1 ELSE attempts END, claims = claims + 1
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ?";

const DUE_TIMERS: &str = "\
SELECT machine_id, version, from_state, after_ms, due_at FROM fsm_timers
WHERE machine_type = ? AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)
ORDER BY due_at LIMIT ?
FOR UPDATE SKIP LOCKED";

const LEASE_TIMER: &str = "\
UPDATE fsm_timers SET lease_until = ?
WHERE machine_type = ? AND machine_id = ? AND version = ? AND after_ms = ?";

impl Dialect for MySql {}

impl Backend for MySql {
    // sqlx's MySQL driver cannot pipeline, so a batch runs each command's statements in
    // turn on one connection and gains only the shared commit: 0.76x-0.84x and 0.81x-0.97x
    // of lone fires at 8 and 32 clients on MariaDB (`bench --group-commit`), where lone fires
    // run side by side on the pool's connections.
    const GROUP_COMMIT: bool = false;

    const SQL: Statements = Statements {
        begin_write: None,
        read: "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.trigger_json, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = ? OR (t.idem_key = ? AND t.legacy_key))
WHERE m.machine_type = ? AND m.machine_id = ?",
        // Locks first, reads after: the key lookup runs once the lock is held.
        lock: Some("SELECT 1 FROM fsm_machines WHERE machine_type = ? AND machine_id = ? FOR UPDATE"),
        consume_token: "\
DELETE FROM fsm_tokens
WHERE machine_type = ? AND machine_id = ? AND token = ? AND expires_at > ?
RETURNING token",
        steps: Some(Steps {
            // A plain INSERT: a duplicate id is a unique violation. `ON DUPLICATE KEY
            // UPDATE` cannot tell inserted from existing under CLIENT_FOUND_ROWS.
            insert: "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at, entered_at)
VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
            compare_and_set: "\
UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?,
  entered_at = COALESCE(?, entered_at)
WHERE machine_type = ? AND machine_id = ? AND version = ?
  AND (? IS NULL OR (state = ? AND CAST(context AS BINARY) = CAST(? AS BINARY)))",
            record: "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            arm_timer: "\
INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
VALUES (?, ?, ?, ?, ?, ?)",
        }),
        history: "\
SELECT version, from_state, trigger_json, to_state, idem_key, fingerprint, at
FROM fsm_transitions WHERE machine_type = ? AND machine_id = ? ORDER BY version",
        issue_token: "\
INSERT INTO fsm_tokens (machine_type, machine_id, token, expires_at)
SELECT ?, ?, ?, ? FROM DUAL WHERE EXISTS
  (SELECT 1 FROM fsm_machines WHERE machine_type = ? AND machine_id = ?)",
        effect_done: "\
UPDATE fsm_outbox SET done_at = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND claims = ?",
        effect_retry: "\
UPDATE fsm_outbox SET available_at = ?, last_error = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND claims = ?",
        effect_dead: "\
UPDATE fsm_outbox SET dead = TRUE, last_error = ?, lease_until = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND claims = ?",
        effect_release: "\
UPDATE fsm_outbox SET lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND claims = ?",
        dead_effects: "\
SELECT machine_id, version, seq, effect, attempts, last_error, claims, available_at FROM fsm_outbox
WHERE machine_type = ? AND dead ORDER BY available_at, machine_id, version, seq",
        requeue: "\
UPDATE fsm_outbox SET dead = FALSE, attempts = 0, available_at = ?, last_error = NULL
WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND dead",
        discard: "\
DELETE FROM fsm_outbox WHERE machine_type = ? AND machine_id = ? AND version = ? AND seq = ? AND dead",
        // A single-table DELETE takes ORDER BY and LIMIT: one bounded range of an index.
        prune_effects: "\
DELETE FROM fsm_outbox WHERE done_at IS NOT NULL AND done_at < ? ORDER BY done_at LIMIT ?",
        prune_tokens: "\
DELETE FROM fsm_tokens WHERE expires_at < ? ORDER BY expires_at LIMIT ?",
        claim_effects: DUE_EFFECTS,
        claim_timers: DUE_TIMERS,
        delete_timer: "\
DELETE FROM fsm_timers WHERE machine_type = ? AND machine_id = ? AND version = ? AND after_ms = ?",
    };

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn text(row: &MySqlRow, index: usize) -> sqlx::Result<String> {
        utf8(index, MySql::bytes(row, index)?)
    }

    fn maybe_text(row: &MySqlRow, index: usize) -> sqlx::Result<Option<String>> {
        MySql::maybe_bytes(row, index)?
            .map(|bytes| utf8(index, bytes))
            .transpose()
    }

    async fn claim_effects(
        pool: &Pool<MySql>,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedEffect>> {
        let failed = db_error(|| format!("claim {machine} effects"));
        let mut tx = pool.begin().await.map_err(&failed)?;
        let due = [
            Arg::Text(machine),
            Arg::Int(now),
            Arg::Int(now),
            Arg::Int(limit),
        ];
        let rows = MySql::rows(&mut tx, Self::SQL.claim_effects, &due)
            .await
            .map_err(&failed)?;
        let mut effects: Vec<_> = rows
            .iter()
            .filter_map(|row| decodable(claimed_effect::<MySql>(machine, row)))
            .collect();
        for effect in &mut effects {
            let lease = [
                Arg::Int(lease_until),
                Arg::Text(machine),
                Arg::Text(&effect.machine_id),
                Arg::Int(effect.version as i64),
                Arg::Small(effect.seq as i32),
            ];
            MySql::run(&mut tx, LEASE_EFFECT, &lease)
                .await
                .map_err(&failed)?;
            effect.attempts = effect.attempts.saturating_add(1).min(i32::MAX as u32);
            effect.claim += 1;
        }
        tx.commit().await.map_err(&failed)?;
        Ok(effects)
    }

    async fn claim_timers(
        pool: &Pool<MySql>,
        machine: &'static str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<TimerRow>> {
        let failed = db_error(|| format!("claim {machine} timers"));
        let mut tx = pool.begin().await.map_err(&failed)?;
        let due = [
            Arg::Text(machine),
            Arg::Int(now),
            Arg::Int(now),
            Arg::Int(limit),
        ];
        let rows = MySql::rows(&mut tx, Self::SQL.claim_timers, &due)
            .await
            .map_err(&failed)?;
        let timers: Vec<_> = rows
            .iter()
            .filter_map(|row| decodable(timer_row::<MySql>(machine, row)))
            .collect();
        for timer in &timers {
            let lease = [
                Arg::Int(lease_until),
                Arg::Text(machine),
                Arg::Text(&timer.machine_id),
                Arg::Int(timer.version),
                Arg::Int(timer.after_ms),
            ];
            MySql::run(&mut tx, LEASE_TIMER, &lease)
                .await
                .map_err(&failed)?;
        }
        tx.commit().await.map_err(&failed)?;
        Ok(timers)
    }
}

/// A `VARBINARY` column that fsm wrote from a `str`.
fn utf8(index: usize, bytes: Vec<u8>) -> sqlx::Result<String> {
    String::from_utf8(bytes).map_err(|e| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: Box::new(e),
    })
}
