-- SQLite types: UUIDs as TEXT, BIGINT as INTEGER.
-- The wallet (seed 004): a double-entry ledger. `wallets` keeps one row per account (and per
-- shard of the platform's accounts) with its balance as integer minor units; `transactions`
-- the append-only entries (the seed's audit trail, `reference_id` linking the ride);
-- `transfers` what the seed lacks: one debit and one credit account, an amount, a reference
-- unique per tenant, and the pending transfer a post or void resolves.
CREATE TABLE IF NOT EXISTS wallets (
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,   -- rider | driver | revenue | top_ups
    user_id       TEXT NOT NULL,   -- the rider, the driver, or `platform`
    currency      TEXT NOT NULL,
    shard         INTEGER NOT NULL DEFAULT 0,
    balance       INTEGER NOT NULL DEFAULT 0,  -- the sum of its posted entries
    pending       INTEGER NOT NULL DEFAULT 0,  -- the sum of its pending entries
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, user_id, currency, shard)
);

CREATE TABLE IF NOT EXISTS transfers (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    reference     TEXT NOT NULL,
    kind          TEXT NOT NULL,   -- single | pending | post | void
    debit_kind    TEXT NOT NULL,
    debit_user    TEXT NOT NULL,
    credit_kind   TEXT NOT NULL,
    credit_user   TEXT NOT NULL,
    currency      TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor > 0),
    pending_id    TEXT,
    order_id      TEXT,
    created_at_ms INTEGER NOT NULL,
    CHECK (debit_kind <> credit_kind OR debit_user <> credit_user)
);
-- "Exists is ok": a reference is written once per tenant.
CREATE UNIQUE INDEX IF NOT EXISTS transfers_reference ON transfers (tenant, reference);
-- A pending transfer is resolved (posted or voided) at most once: never both, never twice.
CREATE UNIQUE INDEX IF NOT EXISTS transfers_resolve_once ON transfers (pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS transfers_by_order ON transfers (order_id, kind) WHERE order_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS transactions (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    transfer_id   TEXT NOT NULL,            -- its transfer (checked by `pulse ledger verify`, not by a foreign key the hot path would pay per entry)
    kind          TEXT NOT NULL,
    wallet_id     TEXT NOT NULL,   -- the account's user_id
    currency      TEXT NOT NULL,
    shard         INTEGER NOT NULL DEFAULT 0,
    amount        INTEGER NOT NULL,        -- negative = debit
    phase         TEXT NOT NULL,    -- pending | posted
    description   TEXT,
    reference_id  TEXT,           -- the transfer's reference
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_by_account
    ON transactions (tenant, kind, wallet_id, currency, id);
