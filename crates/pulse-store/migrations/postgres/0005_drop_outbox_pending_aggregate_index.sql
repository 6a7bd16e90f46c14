-- no-transaction
-- Replaced by outbox_events_aggregate_seq (0004). Dropped CONCURRENTLY so writers never wait.
DROP INDEX CONCURRENTLY IF EXISTS outbox_events_pending_aggregate;
