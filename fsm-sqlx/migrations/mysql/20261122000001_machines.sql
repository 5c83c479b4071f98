-- Every key is led by (machine_type, machine_id) so rows can be sharded by instance.
-- Names, ids and keys are VARBINARY: they compare byte for byte as on the other
-- backends (a *_bin collation is PAD SPACE: 'a' and 'a ' would collide), and 255
-- bytes is exactly fsm's limit for ids and keys.
CREATE TABLE fsm_machines (
    machine_type     VARBINARY(255) NOT NULL,
    machine_id       VARBINARY(255) NOT NULL,
    state            VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
    version          BIGINT NOT NULL,
    context          LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
    init_fingerprint VARBINARY(32) NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id)
) ENGINE = InnoDB;

CREATE TABLE fsm_transitions (
    machine_type VARBINARY(255) NOT NULL,
    machine_id   VARBINARY(255) NOT NULL,
    version      BIGINT NOT NULL,
    from_state   VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
    event        VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
    payload      LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
    to_state     VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
    idem_key     VARBINARY(255) NULL,
    fingerprint  VARBINARY(32) NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id, version),
    UNIQUE KEY fsm_transitions_key (machine_type, machine_id, idem_key)
) ENGINE = InnoDB;

CREATE TABLE fsm_outbox (
    machine_type VARBINARY(255) NOT NULL,
    machine_id   VARBINARY(255) NOT NULL,
    version      BIGINT NOT NULL,
    seq          INT NOT NULL,
    effect       LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    available_at BIGINT NOT NULL,
    lease_until  BIGINT NULL,
    done_at      BIGINT NULL,
    dead         BOOLEAN NOT NULL DEFAULT FALSE,
    last_error   TEXT CHARACTER SET utf8mb4 NULL,
    PRIMARY KEY (machine_type, machine_id, version, seq),
    KEY fsm_outbox_due (done_at, dead, available_at)
) ENGINE = InnoDB;
