-- What the surge loop needs beyond the seed's columns (issue 3). Nothing of the seed is removed.
ALTER TABLE orders ADD COLUMN created_at_ms    INTEGER;
ALTER TABLE orders ADD COLUMN pickup_lat       REAL;
ALTER TABLE orders ADD COLUMN pickup_lng       REAL;
ALTER TABLE orders ADD COLUMN dropoff_lat      REAL;
ALTER TABLE orders ADD COLUMN dropoff_lng      REAL;
ALTER TABLE orders ADD COLUMN idempotency_key  TEXT;
ALTER TABLE orders ADD COLUMN quote_id         TEXT;
ALTER TABLE orders ADD COLUMN price_total      INTEGER;
ALTER TABLE orders ADD COLUMN price_currency   TEXT;
ALTER TABLE orders ADD COLUMN multiplier_milli INTEGER;
CREATE UNIQUE INDEX IF NOT EXISTS orders_user_idempotency_key
    ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- SQLite has no sequences: the rowid orders the outbox. A new rowid is always above every
-- existing one, so pending rows keep their insertion order even after sent rows are purged.
ALTER TABLE outbox_events ADD COLUMN created_at_ms    INTEGER;
ALTER TABLE outbox_events ADD COLUMN claimed_by       TEXT;
ALTER TABLE outbox_events ADD COLUMN claimed_until_ms INTEGER;
ALTER TABLE outbox_events ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox_events ADD COLUMN sent_at_ms       INTEGER;
DROP INDEX IF EXISTS outbox_events_pending;
CREATE INDEX IF NOT EXISTS outbox_events_pending_aggregate
    ON outbox_events (aggregate_id) WHERE status = 'PENDING';
