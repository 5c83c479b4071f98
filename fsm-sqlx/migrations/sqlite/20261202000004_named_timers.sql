-- A pending timer is named by the state it was armed in and its delay, never by the
-- position of its edge in the definition: an edge inserted above it, or a state renamed
-- with #[renamed_from], leaves it firing the right edge.
--
-- A timer armed at version v was armed on entering the state the instance is in at v,
-- at that version's updated_at, so its delay is exactly due_at - updated_at. A timer of
-- a version the instance has left can never fire (it would be deleted as a no-op when
-- due) and is not carried over. Two edges with one delay from one state become one
-- timer, which tries their guards in order as an event does.
CREATE TABLE fsm_timers_named (
    machine_type TEXT    NOT NULL,
    machine_id   TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    from_state   TEXT    NOT NULL,
    after_ms     INTEGER NOT NULL,
    due_at       INTEGER NOT NULL,
    lease_until  INTEGER,
    PRIMARY KEY (machine_type, machine_id, version, after_ms)
);
INSERT INTO fsm_timers_named
  (machine_type, machine_id, version, from_state, after_ms, due_at, lease_until)
SELECT t.machine_type, t.machine_id, t.version, m.state, t.due_at - m.updated_at,
       MAX(t.due_at), MAX(t.lease_until)
FROM fsm_timers t
JOIN fsm_machines m
  ON m.machine_type = t.machine_type AND m.machine_id = t.machine_id AND m.version = t.version
GROUP BY t.machine_type, t.machine_id, t.version, m.state, t.due_at - m.updated_at;
DROP TABLE fsm_timers;
ALTER TABLE fsm_timers_named RENAME TO fsm_timers;
CREATE INDEX fsm_timers_due ON fsm_timers (machine_type, due_at);
