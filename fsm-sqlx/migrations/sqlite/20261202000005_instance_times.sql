-- When each instance entered its current state (a self-loop does not re-enter), for
-- "stuck in Paid since yesterday" queries; before this column the last state-changing
-- transition tells, or the creation. Indexes make every listing a range scan:
-- by state and time in state, by creation, and (the primary key) by id.
ALTER TABLE fsm_machines ADD COLUMN entered_at INTEGER NOT NULL DEFAULT 0;
UPDATE fsm_machines SET entered_at = COALESCE(
  (SELECT t.at FROM fsm_transitions t
   WHERE t.machine_type = fsm_machines.machine_type AND t.machine_id = fsm_machines.machine_id
     AND t.from_state <> t.to_state
   ORDER BY t.version DESC LIMIT 1),
  created_at);
CREATE INDEX fsm_machines_state ON fsm_machines (machine_type, state, entered_at, machine_id);
CREATE INDEX fsm_machines_created ON fsm_machines (machine_type, created_at, machine_id);
