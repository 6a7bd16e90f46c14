-- The relay's claim checks each candidate for an unsent earlier event of its aggregate. That
-- probe must stay an index lookup whatever the statistics say: an outbox's statistics are stale
-- by nature (a backlog builds up within seconds of the last ANALYZE), and with the partial index
-- below, a plan made for "no pending rows" scanned the whole backlog once per candidate.
-- A full index on (aggregate_id, seq) is never mistaken for an empty one.
CREATE INDEX IF NOT EXISTS outbox_events_aggregate_seq ON outbox_events (aggregate_id, seq);
DROP INDEX IF EXISTS outbox_events_pending_aggregate;
-- A queue table churns: vacuum and analyze it after a fixed number of changed rows rather than
-- after a fraction of a table that keeps a day of sent rows.
ALTER TABLE outbox_events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
