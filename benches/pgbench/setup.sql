-- pgbench fixture for benches/pgbench/fire.sql: a private schema with fsm's tables and
-- one `Order` instance per pgbench client (ids '0'..'255', pgbench's :client_id), in
-- state Paid at version 0, as examples/bench seeds them.
--
--   psql postgres://postgres@127.0.0.1:5432/test -v ON_ERROR_STOP=1 -f benches/pgbench/setup.sql
--
DROP SCHEMA IF EXISTS fsm_pgbench CASCADE;
CREATE SCHEMA fsm_pgbench;
SET search_path TO fsm_pgbench;

-- The store's own migrations, all of them (psql resolves \ir relative to this file).
\ir ../../fsm-sqlx/migrations/postgres/20261122000001_machines.sql
\ir ../../fsm-sqlx/migrations/postgres/20261122000002_timers_tokens.sql
\ir ../../fsm-sqlx/migrations/postgres/20261202000001_trigger_column.sql
\ir ../../fsm-sqlx/migrations/postgres/20261202000002_outbox_claims.sql
\ir ../../fsm-sqlx/migrations/postgres/20261202000003_legacy_keys.sql
\ir ../../fsm-sqlx/migrations/postgres/20261202000004_named_timers.sql
\ir ../../fsm-sqlx/migrations/postgres/20261202000005_instance_times.sql
\ir ../../fsm-sqlx/migrations/postgres/20261203000001_retention.sql

-- Seed: the context examples/bench seeds with (the init fingerprint is a placeholder:
-- only `create` reads it).
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
SELECT 'Order', g::text, 'Paid', 0, '{"total_cents":500,"paid_cents":500,"notes":[]}',
       '\x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a'::bytea,
       1763800000000, 1763800000000
FROM generate_series(0, 255) AS g;
ANALYZE fsm_machines;
