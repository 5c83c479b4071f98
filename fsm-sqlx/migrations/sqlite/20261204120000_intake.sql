-- The buffered intake (`Intake`): commands recorded under their idempotency key by
-- `submit`, applied later by an `IntakeWorker` in `seq` order per instance.
-- status: 0 pending, 1 applied, 2 duplicate, 3 failed. `claims` is the lease token
-- (+1 per claim): a worker whose lease expired settles nothing. AUTOINCREMENT: a
-- deleted row's seq is never handed out again, so the order stays monotonic.
CREATE TABLE fsm_intake (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_type TEXT NOT NULL,
    machine_id   TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    event        TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    nonce        INTEGER NOT NULL,
    status       INTEGER NOT NULL DEFAULT 0,
    outcome      TEXT NULL,
    submitted_at INTEGER NOT NULL,
    lease_until  INTEGER NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    claims       INTEGER NOT NULL DEFAULT 0,
    settled_at   INTEGER NULL,
    UNIQUE (machine_type, machine_id, idem_key)
);
-- The claim walks pending rows in seq order, skipping instances with a leased row; the
-- order check looks for an earlier pending row of the same instance.
CREATE INDEX fsm_intake_pending ON fsm_intake (machine_type, seq) WHERE status = 0;
CREATE INDEX fsm_intake_instance ON fsm_intake (machine_type, machine_id, seq) WHERE status = 0;
CREATE INDEX fsm_intake_leased ON fsm_intake (machine_type, lease_until) WHERE status = 0 AND lease_until IS NOT NULL;
