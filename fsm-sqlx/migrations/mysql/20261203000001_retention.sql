-- A pruner deletes done outbox rows and expired tokens oldest first, a batch at a time:
-- each batch reads one range of an index, never the whole table. Done rows are a range
-- of fsm_outbox_due (done_at, dead, available_at) already.
CREATE INDEX fsm_tokens_expiry ON fsm_tokens (expires_at);
