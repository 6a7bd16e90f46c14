-- The tenant whose data an outbox row carries; the relay sends it as the `pulse.tenant` header.
-- Rows written before tenants existed belong to the default tenant. A constant default makes this
-- a catalogue-only change: no table rewrite.
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS tenant VARCHAR(32) NOT NULL DEFAULT 'default';
