-- The event gateway (issue 13). `events_raw` is the archive of every event, one row per
-- (tenant, event id) whatever is redelivered or replayed: the envelope's columns plus the
-- versions of the plugins that touched it. The other tables are the gateway's bookkeeping:
-- dedup keys, delivery records of sinks that are not idempotent, events parked for a retry,
-- dead letters, and the tenants' stored pipelines (versioned).
CREATE TABLE IF NOT EXISTS events_raw (
    tenant_id        TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    occurred_at      TIMESTAMPTZ NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL,
    payload          JSONB NOT NULL,
    source           TEXT NOT NULL,
    trace_id         TEXT,
    idempotency_key  TEXT,
    plugin_versions  JSONB NOT NULL,
    archived_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX IF NOT EXISTS events_raw_by_time ON events_raw (tenant_id, occurred_at);

CREATE TABLE IF NOT EXISTS event_dedup (
    tenant_id       TEXT NOT NULL,
    dedup_key       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, dedup_key)
);
CREATE INDEX IF NOT EXISTS event_dedup_expiry ON event_dedup (expires_at_ms);

CREATE TABLE IF NOT EXISTS sink_deliveries (
    tenant_id        TEXT NOT NULL,
    sink_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    delivered_at_ms  BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, sink_id, event_id)
);
CREATE INDEX IF NOT EXISTS sink_deliveries_expiry ON sink_deliveries (expires_at_ms);

CREATE TABLE IF NOT EXISTS sink_parked (
    id                  BIGSERIAL PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    sink_id             TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    envelope            BYTEA NOT NULL,
    original            BYTEA NOT NULL,
    plugins             TEXT NOT NULL,
    attempts            BIGINT NOT NULL,
    first_error         TEXT NOT NULL,
    last_error          TEXT NOT NULL,
    first_failed_at_ms  BIGINT NOT NULL,
    next_attempt_at_ms  BIGINT NOT NULL,
    UNIQUE (tenant_id, sink_id, event_id)
);
CREATE INDEX IF NOT EXISTS sink_parked_due ON sink_parked (next_attempt_at_ms, id);

CREATE TABLE IF NOT EXISTS event_dead_letters (
    id                  BIGSERIAL PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    sink_id             TEXT NOT NULL,
    plugin              TEXT NOT NULL,
    plugin_version      TEXT NOT NULL,
    reason              TEXT NOT NULL,
    attempts            BIGINT NOT NULL,
    first_error         TEXT NOT NULL,
    last_error          TEXT NOT NULL,
    first_failed_at_ms  BIGINT NOT NULL,
    last_failed_at_ms   BIGINT NOT NULL,
    envelope            BYTEA NOT NULL,
    redriven_at_ms      BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS event_dead_letters_open
    ON event_dead_letters (tenant_id, sink_id, event_id) WHERE redriven_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS event_dead_letters_by_tenant ON event_dead_letters (tenant_id, id);

CREATE TABLE IF NOT EXISTS tenant_pipelines (
    tenant_id      TEXT NOT NULL,
    version        BIGINT NOT NULL,
    spec           TEXT NOT NULL,
    updated_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
