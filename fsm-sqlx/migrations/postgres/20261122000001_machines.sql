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
