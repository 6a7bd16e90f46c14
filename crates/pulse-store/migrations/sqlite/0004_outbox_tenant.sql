-- The tenant whose data an outbox row carries; the relay sends it as the `pulse.tenant` header.
-- Rows written before tenants existed belong to the default tenant.
ALTER TABLE outbox_events ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
