-- What the surge loop needs beyond the seed's columns (issue 3). Nothing of the seed is removed.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS created_at_ms    BIGINT;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS pickup_lat       DOUBLE PRECISION;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS pickup_lng       DOUBLE PRECISION;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS dropoff_lat      DOUBLE PRECISION;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS dropoff_lng      DOUBLE PRECISION;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS idempotency_key  VARCHAR(200);
ALTER TABLE orders ADD COLUMN IF NOT EXISTS quote_id         UUID;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS price_total      BIGINT;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS price_currency   VARCHAR(3);
ALTER TABLE orders ADD COLUMN IF NOT EXISTS multiplier_milli INTEGER;
-- Idempotency keys are scoped per user and kept as long as the order (at least 24 h).
CREATE UNIQUE INDEX IF NOT EXISTS orders_user_idempotency_key
    ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS seq           BIGSERIAL;
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS created_at_ms BIGINT;
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS claimed_by    VARCHAR(100);
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS claimed_until_ms BIGINT;
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS attempts      INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS sent_at_ms    BIGINT;
DROP INDEX IF EXISTS outbox_events_pending;
CREATE INDEX IF NOT EXISTS outbox_events_pending_seq ON outbox_events (seq) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS outbox_events_pending_aggregate
    ON outbox_events (aggregate_id, seq) WHERE status = 'PENDING';
