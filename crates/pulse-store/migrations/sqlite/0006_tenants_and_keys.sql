-- Tenants and their API keys (issue 12). A key is stored only as the SHA-256 of the whole key;
-- its id is the public part a client's key names. Quotas are the tenant's own overrides, as
-- JSON ({"api": {"per_second": N, "burst": B}, ...}); a class absent uses the configured default.
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id      TEXT PRIMARY KEY,
    quotas         TEXT NOT NULL DEFAULT '{}',
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id         TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (tenant_id),
    scope          TEXT NOT NULL CHECK (scope IN ('full', 'ingest')),
    key_hash       TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    revoked_at_ms  INTEGER
);

CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, created_at_ms);

-- Every order belongs to a tenant; orders placed before tenants existed belong to the default
-- tenant. An idempotency key is the tenant's: two tenants may use the same one.
ALTER TABLE orders ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
DROP INDEX IF EXISTS orders_user_idempotency_key;
CREATE UNIQUE INDEX IF NOT EXISTS orders_tenant_user_idempotency_key
    ON orders (tenant, user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_tenant ON orders (tenant, id);

-- A locked quote pays for one order: its redemption is written in the order's unit of work, and
-- a second order with the same quote fails on this primary key.
CREATE TABLE IF NOT EXISTS quote_redemptions (
    tenant    TEXT NOT NULL,
    quote_id  TEXT NOT NULL,
    order_id  TEXT NOT NULL,
    PRIMARY KEY (tenant, quote_id)
);
