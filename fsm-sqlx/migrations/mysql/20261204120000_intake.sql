-- The buffered intake (`Intake`): commands recorded under their idempotency key by
-- `submit`, applied later by an `IntakeWorker` in `seq` order per instance.
-- status: 0 pending, 1 applied, 2 duplicate, 3 failed. `claims` is the lease token
-- (+1 per claim): a worker whose lease expired settles nothing. Names, ids and keys
-- are VARBINARY, as in fsm_transitions.
CREATE TABLE fsm_intake (
    seq          BIGINT NOT NULL AUTO_INCREMENT,
    machine_type VARBINARY(255) NOT NULL,
    machine_id   VARBINARY(255) NOT NULL,
    idem_key     VARBINARY(255) NOT NULL,
    event        LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
    fingerprint  VARBINARY(32) NOT NULL,
    nonce        BIGINT NOT NULL,
    status       INT NOT NULL DEFAULT 0,
    outcome      LONGTEXT CHARACTER SET utf8mb4 NULL,
    submitted_at BIGINT NOT NULL,
    lease_until  BIGINT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    claims       BIGINT NOT NULL DEFAULT 0,
    settled_at   BIGINT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY fsm_intake_key (machine_type, machine_id, idem_key),
    -- The claim walks pending rows in seq order, skipping instances with a leased row;
    -- the order check looks for an earlier pending row of the same instance.
    KEY fsm_intake_pending (machine_type, status, seq),
    KEY fsm_intake_leased (machine_type, status, lease_until),
    KEY fsm_intake_instance (machine_type, machine_id, status, seq)
) ENGINE = InnoDB;
