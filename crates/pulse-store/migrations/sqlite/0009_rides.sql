-- SQLite types: UUIDs as TEXT, BIGINT as INTEGER.
-- The ride lifecycle (seed 004): the order row carries its driver and its dispatch schedule; each
-- transition is kept with its time; drivers have a status the store decides; a ride keeps its
-- driver's GPS trail.
ALTER TABLE orders ADD COLUMN vehicle_type      TEXT;
ALTER TABLE orders ADD COLUMN driver_id         TEXT;
ALTER TABLE orders ADD COLUMN no_driver_reason  TEXT;
-- Next dispatch attempt of a PENDING order, and when dispatch gives up (`no_driver`).
ALTER TABLE orders ADD COLUMN dispatch_next_ms  INTEGER;
ALTER TABLE orders ADD COLUMN dispatch_until_ms INTEGER;
CREATE INDEX IF NOT EXISTS orders_dispatch_due ON orders (dispatch_next_ms)
    WHERE status = 'PENDING' AND dispatch_next_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_rider ON orders (tenant, user_id, id);
CREATE INDEX IF NOT EXISTS orders_by_driver ON orders (tenant, driver_id, id)
    WHERE driver_id IS NOT NULL;

-- One row per status an order reached: the lifecycle never revisits a status, so the key is
-- also the backstop against a transition written twice.
CREATE TABLE IF NOT EXISTS order_transitions (
    order_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    driver_id  TEXT,
    reason     TEXT,
    PRIMARY KEY (order_id, status)
);

-- The store decides availability: `available` and `offline` follow the driver's pings,
-- `on_ride` is set by the match (a conditional write: one order per driver) and cleared when the
-- ride finishes or is cancelled.
CREATE TABLE IF NOT EXISTS drivers (
    tenant        TEXT NOT NULL,
    driver_id     TEXT NOT NULL,
    status        TEXT NOT NULL,
    vehicle_type  TEXT,
    order_id      TEXT,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, driver_id)
);

CREATE TABLE IF NOT EXISTS ride_trail (
    order_id TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    tenant   TEXT NOT NULL,
    lat      REAL NOT NULL,
    lng      REAL NOT NULL,
    PRIMARY KEY (order_id, at_ms)
);
