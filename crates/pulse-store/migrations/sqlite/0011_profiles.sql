-- Customer profiles (seed 001); ids are UUID text. `user_profiles` is the cold copy of each profile (its state as
-- JSON, its traits as TEXT for `?trait.K=V`, a version that grows with every change, and the
-- profile it was merged into, if any); `identities` who holds each identifier (and who it was
-- first given to, where an unmerge sends it back); `identity_merges` the identity graph's edges
-- with their cause; `profile_events` each applied event's mark (applied once per event id) and
-- its profile — the archive itself is `events_raw`, joined in the `tracked_events` view;
-- `profile_blocks` pairs an unmerge split; `profile_repairs` the reconciliation's audit log;
-- `profile_epochs` each tenant's version floor, raised by a rebuild so versions only grow.
CREATE TABLE IF NOT EXISTS user_profiles (
    tenant_id      TEXT NOT NULL,
    profile_id     TEXT NOT NULL,
    state          TEXT NOT NULL,
    traits         TEXT NOT NULL DEFAULT '{}',
    version        INTEGER NOT NULL,
    merged_into    TEXT,
    last_active_ms INTEGER,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, profile_id)
);
CREATE INDEX IF NOT EXISTS user_profiles_recent ON user_profiles (updated_at_ms);

CREATE TABLE IF NOT EXISTS identities (
    tenant_id      TEXT NOT NULL,
    kind           VARCHAR(16) NOT NULL,   -- user_id | email | anonymous_id
    value          TEXT NOT NULL,
    profile_id     TEXT NOT NULL,
    origin_profile TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    linked_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind, value)
);
CREATE INDEX IF NOT EXISTS identities_by_profile ON identities (tenant_id, profile_id);

CREATE TABLE IF NOT EXISTS identity_merges (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    into_profile     TEXT NOT NULL,
    from_profile     TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    identifier_kind  VARCHAR(16) NOT NULL,
    identifier_value TEXT NOT NULL,
    reason           VARCHAR(32) NOT NULL,   -- identify | alias | shared_identifier
    merged_at_ms     INTEGER NOT NULL,
    undone_at_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS identity_merges_into ON identity_merges (tenant_id, into_profile);
CREATE INDEX IF NOT EXISTS identity_merges_from ON identity_merges (tenant_id, from_profile);

CREATE TABLE IF NOT EXISTS profile_events (
    tenant_id      TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    profile_id     TEXT NOT NULL,
    key_kind       VARCHAR(16) NOT NULL,
    key_value      TEXT NOT NULL,
    event_type     VARCHAR(16) NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    applied_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX IF NOT EXISTS profile_events_by_profile
    ON profile_events (tenant_id, profile_id, occurred_at_ms, event_id);

CREATE TABLE IF NOT EXISTS profile_blocks (
    tenant_id     TEXT NOT NULL,
    profile_a     TEXT NOT NULL,
    profile_b     TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, profile_a, profile_b)
);
CREATE INDEX IF NOT EXISTS profile_blocks_b ON profile_blocks (tenant_id, profile_b);

CREATE TABLE IF NOT EXISTS profile_epochs (
    tenant_id     TEXT PRIMARY KEY,
    version_floor INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS profile_repairs (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    profile_id     TEXT NOT NULL,
    cache_key      TEXT NOT NULL,
    reason         VARCHAR(16) NOT NULL,  -- stale | corrupt | wrong_owner
    found          TEXT NOT NULL,
    repaired_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS profile_repairs_recent ON profile_repairs (repaired_at_ms);

CREATE VIEW IF NOT EXISTS tracked_events AS
    SELECT r.*, p.profile_id
    FROM events_raw r
    JOIN profile_events p ON p.tenant_id = r.tenant_id AND p.event_id = r.event_id;
