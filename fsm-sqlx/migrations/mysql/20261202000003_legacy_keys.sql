-- Source and token keys now have a namespace of their own in idem_key; keys recorded
-- before it (as `billing#7`, `token:<T>`) keep their old form and are marked, so a
-- retry spanning the upgrade still finds them and a new client key never matches a new
-- source or token key.
ALTER TABLE fsm_transitions ADD COLUMN legacy_key BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE fsm_transitions SET legacy_key = TRUE WHERE idem_key IS NOT NULL;
