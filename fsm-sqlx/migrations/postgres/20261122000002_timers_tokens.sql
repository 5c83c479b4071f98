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
