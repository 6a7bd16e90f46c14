-- Background jobs (issue 14). Times are Unix milliseconds (BIGINT) in both dialects, so one SQL
-- body serves both. `lease_token` is the fencing token: it grows with every lease, and every
-- update after a lease names it. `state` is one of the API's states; a `scheduled` job whose
-- `run_at` has come is shown as `queued`.
CREATE TABLE IF NOT EXISTS jobs (
    id               UUID PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    job_type         TEXT NOT NULL,
    queue            TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    priority         BIGINT NOT NULL DEFAULT 0,
    state            TEXT NOT NULL CHECK (state IN
                         ('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    attempt          BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    run_at           BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_token      BIGINT NOT NULL DEFAULT 0,
    locked_by        TEXT,
    locked_until     BIGINT,
    idempotency_key  TEXT,
    result           BYTEA,
    trace_parent     TEXT,
    metadata         TEXT
);
-- Idempotent enqueue; partial, so the many jobs without a key cost it nothing. (Every update of
-- a job changes its state, which partial indexes read, so none is HOT: each index is paid per
-- update, and the table keeps only the indexes it needs.)
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- What a lease reads: per tenant, by priority then time (and the loose scan over tenants).
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (tenant_id, priority, run_at, id)
    WHERE state IN ('scheduled', 'queued', 'retrying');
-- Lapsed leases.
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (locked_until) WHERE state = 'running';
-- A tenant's listing, newest first (ids are UUIDv7: time-ordered). Retention walks the primary
-- key: a job finished before a time was enqueued before it.
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant_id, id);

-- Every failed attempt's error, kept until the job is purged.
CREATE TABLE IF NOT EXISTS job_errors (
    job_id   UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt  BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    error    TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

-- Tenants' HTTP handlers, one per (tenant, job type).
CREATE TABLE IF NOT EXISTS job_handlers (
    tenant_id   TEXT NOT NULL,
    job_type    TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    policy      TEXT NOT NULL,
    version     TEXT,
    metadata    TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, job_type)
);
