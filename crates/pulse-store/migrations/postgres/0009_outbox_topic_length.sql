-- The seed gave `topic VARCHAR(50)`: a deployment prefix (up to 64 characters) in front of
-- `demand.orders` did not fit, and orders failed. Widened to Kafka's own limit on topic names;
-- widening a VARCHAR rewrites nothing.
ALTER TABLE outbox_events ALTER COLUMN topic TYPE VARCHAR(249);
