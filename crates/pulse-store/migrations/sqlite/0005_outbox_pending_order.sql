-- The relay's claim walks pending rows in rowid order. Without an index of its own that walk
-- started at the oldest row, sent or not, so every claim scanned every sent row still kept for
-- retention (24 h of them under load); the claim then took most of the single writer's time.
-- Entries of this partial index are (status, rowid): the pending rows, in rowid order.
CREATE INDEX IF NOT EXISTS outbox_events_pending_order ON outbox_events (status) WHERE status = 'PENDING';
-- The relay's purge deletes sent rows past their retention every few seconds; on the writer, a
-- scan of the table for it would hold every other write. Sent rows by the time they were sent:
CREATE INDEX IF NOT EXISTS outbox_events_sent_at ON outbox_events (sent_at_ms) WHERE status = 'SENT';
