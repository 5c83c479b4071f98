-- pgbench fixture for benches/pgbench/fire.sql: a private schema with fsm's tables and
-- one `Order` instance per pgbench client (ids '0'..'255', pgbench's :client_id), in
-- state Paid at version 0, as examples/bench.rs seeds them.
--
--   psql postgres://postgres@127.0.0.1:5432/test -v ON_ERROR_STOP=1 -f benches/pgbench/setup.sql
--
-- The tables are a copy of fsm-sqlx/migrations/postgres/*.sql (keep them in step).
DROP SCHEMA IF EXISTS fsm_pgbench CASCADE;
CREATE SCHEMA fsm_pgbench;
SET search_path TO fsm_pgbench;

-- 20261122000001_machines.sql
-- Every key is led by (machine_type, machine_id) so rows can be sharded by instance.
CREATE TABLE fsm_machines (
    machine_type     TEXT   NOT NULL,
    machine_id       TEXT   NOT NULL,
    state            TEXT   NOT NULL,
    version          BIGINT NOT NULL,
    context          TEXT   NOT NULL,
    init_fingerprint BYTEA  NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id)
);

CREATE TABLE fsm_transitions (
    machine_type TEXT   NOT NULL,
    machine_id   TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    from_state   TEXT   NOT NULL,
    event        TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    to_state     TEXT   NOT NULL,
    idem_key     TEXT,
    fingerprint  BYTEA,
    at           BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id, version),
    UNIQUE (machine_type, machine_id, idem_key)
);

CREATE TABLE fsm_outbox (
    machine_type TEXT    NOT NULL,
    machine_id   TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    seq          INTEGER NOT NULL,
    effect       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at BIGINT  NOT NULL,
    lease_until  BIGINT,
    done_at      BIGINT,
    dead         BOOLEAN NOT NULL DEFAULT FALSE,
    last_error   TEXT,
    PRIMARY KEY (machine_type, machine_id, version, seq)
);
CREATE INDEX fsm_outbox_due ON fsm_outbox (available_at) WHERE done_at IS NULL AND NOT dead;

-- 20261122000002_timers_tokens.sql
-- Durable timers: armed when a machine enters a state with `after(..)` edges, stamped
-- with the version it entered at; firing is a compare-and-set at that version.
CREATE TABLE fsm_timers (
    machine_type TEXT    NOT NULL,
    machine_id   TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    edge         INTEGER NOT NULL,
    due_at       BIGINT  NOT NULL,
    lease_until  BIGINT,
    PRIMARY KEY (machine_type, machine_id, version, edge)
);
CREATE INDEX fsm_timers_due ON fsm_timers (machine_type, due_at);

-- Single-use tokens bound to one instance; consumed by the transition that carries one.
CREATE TABLE fsm_tokens (
    machine_type TEXT   NOT NULL,
    machine_id   TEXT   NOT NULL,
    token        TEXT   NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id, token)
);

-- Seed: the context examples/bench.rs seeds with (the init fingerprint is a placeholder:
-- only `create` reads it).
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
SELECT 'Order', g::text, 'Paid', 0, '{"total_cents":500,"paid_cents":500,"notes":[]}',
       '\x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a'::bytea,
       1763800000000, 1763800000000
FROM generate_series(0, 255) AS g;
ANALYZE fsm_machines;
