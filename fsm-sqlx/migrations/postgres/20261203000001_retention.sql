-- A pruner deletes done outbox rows and expired tokens oldest first, a batch at a time:
-- each batch reads one range of these indexes, never the whole table.
CREATE INDEX fsm_outbox_done ON fsm_outbox (done_at) WHERE done_at IS NOT NULL;
CREATE INDEX fsm_tokens_expiry ON fsm_tokens (expires_at);
