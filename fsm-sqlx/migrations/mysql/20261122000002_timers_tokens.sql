-- Durable timers: armed when a machine enters a state with `after(..)` edges, stamped
-- with the version it entered at; firing is a compare-and-set at that version.
CREATE TABLE fsm_timers (
    machine_type VARBINARY(255) NOT NULL,
    machine_id   VARBINARY(255) NOT NULL,
    version      BIGINT NOT NULL,
    edge         INT NOT NULL,
    due_at       BIGINT NOT NULL,
    lease_until  BIGINT NULL,
    PRIMARY KEY (machine_type, machine_id, version, edge),
    KEY fsm_timers_due (machine_type, due_at)
) ENGINE = InnoDB;

-- Single-use tokens bound to one instance; consumed by the transition that carries one.
CREATE TABLE fsm_tokens (
    machine_type VARBINARY(255) NOT NULL,
    machine_id   VARBINARY(255) NOT NULL,
    token        VARBINARY(64)  NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (machine_type, machine_id, token)
) ENGINE = InnoDB;
