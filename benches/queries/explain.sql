-- The plans of fsm's listing statements, as `PgStore::list` builds them (values inlined).
-- Run against a schema seeded by `cargo run --release --example query_bench --features
-- postgres -- --keep`:  psql "$FSM_POSTGRES_URL" -v schema=fsm_query_bench_N -f explain.sql
SET search_path = :schema;
\echo '== in state Paid, oldest first, first page'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT machine_id, state, version, context, created_at, entered_at, updated_at FROM fsm_machines
WHERE machine_type = 'Order' AND state = 'Paid'
ORDER BY entered_at ASC, machine_id COLLATE "C" ASC LIMIT 51;
\echo '== in state Paid, oldest first, after a cursor'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT machine_id, state, version, context, created_at, entered_at, updated_at FROM fsm_machines
WHERE machine_type = 'Order' AND state = 'Paid'
  AND entered_at >= 1764000000000 AND (entered_at > 1764000000000 OR machine_id COLLATE "C" > 'o-0500000')
ORDER BY entered_at ASC, machine_id COLLATE "C" ASC LIMIT 51;
\echo '== in state Paid for more than 20 days (entered before T), oldest first'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT machine_id, state, version, context, created_at, entered_at, updated_at FROM fsm_machines
WHERE machine_type = 'Order' AND state = 'Paid' AND entered_at < (extract(epoch from now()) * 1000 - 20 * 86400000)::bigint
ORDER BY entered_at ASC, machine_id COLLATE "C" ASC LIMIT 51;
\echo '== id prefix o-00042'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT machine_id, state, version, context, created_at, entered_at, updated_at FROM fsm_machines
WHERE machine_type = 'Order' AND machine_id COLLATE "C" >= 'o-00042'
  AND machine_id COLLATE "C" < 'o-00042' || repeat(chr(1114111), 64)
ORDER BY machine_id COLLATE "C" ASC LIMIT 51;
\echo '== every instance, newest first, after a cursor'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT machine_id, state, version, context, created_at, entered_at, updated_at FROM fsm_machines
WHERE machine_type = 'Order'
  AND created_at <= 1764000000000 AND (created_at < 1764000000000 OR machine_id COLLATE "C" < 'o-0500000')
ORDER BY created_at DESC, machine_id COLLATE "C" DESC LIMIT 51;
\echo '== count per state: a loose index scan over the states, one index-only count each'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH RECURSIVE states (state) AS (SELECT MIN(state) FROM fsm_machines WHERE machine_type = 'Order' UNION ALL SELECT (SELECT MIN(m.state) FROM fsm_machines m WHERE m.machine_type = 'Order' AND m.state > s.state) FROM states s WHERE s.state IS NOT NULL) SELECT s.state, (SELECT COUNT(*) FROM fsm_machines m WHERE m.machine_type = 'Order' AND m.state = s.state) FROM states s WHERE s.state IS NOT NULL;
