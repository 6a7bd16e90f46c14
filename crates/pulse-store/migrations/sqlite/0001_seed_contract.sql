-- The tables fixed by the seed contract (DESIGN.md §4), in SQLite's types: UUIDs as TEXT,
-- BYTEA as BLOB, TIMESTAMP as ISO-8601 TEXT.
CREATE TABLE IF NOT EXISTS orders (
    id          TEXT PRIMARY KEY,
    user_id     TEXT,
    pickup_h3   TEXT,
    dropoff_h3  TEXT,
    status      TEXT,
    created_at  TEXT
);

CREATE TABLE IF NOT EXISTS outbox_events (
    id              TEXT PRIMARY KEY,
    aggregate_id    TEXT,
    aggregate_type  TEXT,
    payload         BLOB,
    topic           TEXT,
    created_at      TEXT,
    status          TEXT DEFAULT 'PENDING'
);

CREATE INDEX IF NOT EXISTS outbox_events_pending ON outbox_events (created_at) WHERE status = 'PENDING';
