-- no-transaction
-- The relay's claim checks each candidate for an unsent earlier event of its aggregate. That
-- probe must stay an index lookup whatever the statistics say: an outbox's statistics are stale
-- by nature (a backlog builds up within seconds of the last ANALYZE), and with the partial
-- pending index (dropped by 0005) a plan made for "no pending rows" scanned the whole backlog once
-- per candidate. A full index on (aggregate_id, seq) is never mistaken for an empty one.
--
-- Built CONCURRENTLY (outside a transaction, hence one statement per file) so order placement
-- keeps writing to the table meanwhile. If the build fails, PostgreSQL leaves an INVALID index
-- under this name that IF NOT EXISTS would accept: drop it (DROP INDEX CONCURRENTLY
-- outbox_events_aggregate_seq) and start Pulse again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_events_aggregate_seq
    ON outbox_events (aggregate_id, seq);
