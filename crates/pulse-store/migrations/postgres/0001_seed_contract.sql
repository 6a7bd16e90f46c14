-- The tables fixed by the seed contract (DESIGN.md §4). Later migrations may add columns, never
-- remove these.
CREATE TABLE IF NOT EXISTS orders (
    id          UUID PRIMARY KEY,
    user_id     VARCHAR(50),
    pickup_h3   VARCHAR(15),
    dropoff_h3  VARCHAR(15),
    status      VARCHAR(20),
    created_at  TIMESTAMP
);

CREATE TABLE IF NOT EXISTS outbox_events (
    id              UUID PRIMARY KEY,
    aggregate_id    UUID,
    aggregate_type  VARCHAR(50),
    payload         BYTEA,
    topic           VARCHAR(50),
    created_at      TIMESTAMP,
    status          VARCHAR(20) DEFAULT 'PENDING'
);

CREATE INDEX IF NOT EXISTS outbox_events_pending ON outbox_events (created_at) WHERE status = 'PENDING';
