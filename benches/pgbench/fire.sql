-- One fsm transition as PgStore::fire issues it (fsm-sqlx/src/dialect/postgres.rs, READ then
-- WRITE) and as the baseline of examples/bench replays it: `Annotate` fired with a
-- fresh idempotency key at the client's own instance (id = :client_id, seeded by
-- setup.sql). Run with -M prepared: like sqlx, every statement is prepared once per
-- connection and every :variable is sent as a bound parameter.
--
-- Same statements, same parameter order; the per-fire values are variables (id, key,
-- version, next version, context, time), the constant ones (machine type, states, event
-- name, payload, fingerprint, one outbox effect, no timers) are written as literals,
-- since pgbench variables hold no strings. pgbench cannot edit text, so the context is
-- written back unchanged (same size) rather than with the note appended.

\set key random(1, 9223372036854775806)
\set at 1763800000000

SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version AS t_version, t.from_state AS t_from_state, t.trigger_json AS t_trigger_json,
       t.to_state AS t_to_state, t.idem_key AS t_idem_key, t.fingerprint AS t_fingerprint,
       t.at AS t_at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND (t.idem_key = :key OR (t.idem_key = :key AND t.legacy_key))
WHERE m.machine_type = 'Order' AND m.machine_id = :client_id
\gset

\set next :version + 1

WITH updated AS (
    UPDATE fsm_machines SET state = 'Paid', version = :next, context = :context, updated_at = :at,
      entered_at = COALESCE(NULL::int8, entered_at)
    WHERE machine_type = 'Order' AND machine_id = :client_id AND version = :version
      AND (NULL::text IS NULL OR (state = NULL AND context = NULL))
    RETURNING machine_type, machine_id, version, state, updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, trigger_json, to_state, idem_key, fingerprint, at)
    SELECT machine_type, machine_id, version, 'Paid', 'Annotate', '{"event":{"Annotate":"n0000001"}}', state, :key,
           '\x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a'::bytea, updated_at
    FROM updated
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq - 1, e.effect, u.updated_at
    FROM updated u, unnest('{"{\"Noted\":\"n0000001\"}"}'::text[]) WITH ORDINALITY AS e(effect, seq)
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, from_state, after_ms, due_at)
    SELECT u.machine_type, u.machine_id, u.version, u.state, t.after_ms, t.due_at
    FROM updated u, unnest('{}'::int8[], '{}'::int8[]) AS t(after_ms, due_at)
)
SELECT count(*) FROM updated;
