-- The lease token of an outbox claim: +1 per claim, never reset (requeue resets attempts,
-- which a stale worker could otherwise match again).
ALTER TABLE fsm_outbox ADD COLUMN claims BIGINT NOT NULL DEFAULT 0;
