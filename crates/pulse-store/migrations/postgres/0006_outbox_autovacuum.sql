-- A queue table churns: vacuum and analyze it after a fixed number of changed rows rather than
-- after a fraction of a table that keeps a day of sent rows.
ALTER TABLE outbox_events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
