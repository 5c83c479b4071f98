-- The history column holds the whole serialized trigger (an event with its payload, or
-- a timer), not only a payload: name it so.
ALTER TABLE fsm_transitions RENAME COLUMN payload TO trigger_json;
