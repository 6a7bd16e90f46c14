//! The profiles' [`ProfileStore`] on SQL: profiles, identities, merges and applied-event marks
//! (see the migration for the tables), the archive in the gateway's `events_raw`.
//!
//! A batch commits in one unit of work, checked against concurrent writers: a profile is
//! updated only at the version the batch read (`UPDATE … FROM (VALUES …) WHERE version = …`,
//! all rows or a conflict), and identities and applied marks are inserted `ON CONFLICT DO
//! NOTHING` and counted — a row someone else wrote meanwhile is a conflict, and the engine
//! resolves the batch again from a fresh read. So two processors (after a rebalance, or a
//! rebuild beside the live path) never lose each other's changes nor apply an event twice.

use std::collections::HashSet;

use pulse_core::{PortError, PortResult, TenantId};
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_profiles::event::{EventKind, ProfileEvent};
use pulse_profiles::model::{Identifier, IdentityKind, Merge, MergeReason, Profile};
use pulse_profiles::ports::{
    ArchivedEvent, Changes, Cursor, Loaded, Outcome, ProfileStore, Repair, StoredProfile, Touched,
    TraitFilter, Unmerged, UpdateRecord,
};
use pulse_profiles::settings::IdentitySettings;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::gateway::archive_statements;
use crate::sql::{placeholders, value_rows_after, Sql, SqlRow};
use crate::unit_of_work::Tx;
use crate::{outbox, Backend, Database};

/// Rows per multi-row statement: far below both engines' bound-parameter limits.
const CHUNK: usize = 400;
/// What the profiles write as the plugin versions of an event they archive.
const ARCHIVED_BY: &str = r#"{"profiles": "1.0.0"}"#;

fn corrupt(what: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("profiles: {what}"))
}

fn conflict(what: impl std::fmt::Display) -> PortError {
    PortError::Conflict(format!("profiles: {what}"))
}

const PROFILE_COLUMNS: &str = "profile_id, state, version, updated_at_ms, merged_into";

fn profile_from_row(row: &SqlRow, at: usize) -> PortResult<StoredProfile> {
    let state = row.text(at + 1)?;
    let profile: Profile = serde_json::from_str(&state).map_err(corrupt)?;
    let id = row.uuid(at)?;
    if profile.id != id {
        return Err(corrupt(format!(
            "row {id} holds the state of {}",
            profile.id
        )));
    }
    Ok(StoredProfile {
        profile,
        version: row.i64(at + 2)?,
        updated_at_ms: row.i64(at + 3)?,
        merged_into: row.opt_uuid(at + 4)?,
    })
}

fn traits_json(profile: &Profile) -> String {
    let traits: Map<String, Json> = profile
        .traits
        .iter()
        .map(|(key, value)| (key.clone(), value.value.clone()))
        .collect();
    Json::Object(traits).to_string()
}

fn identifier_of(kind: &str, value: String) -> PortResult<Identifier> {
    let kind =
        IdentityKind::parse(kind).ok_or_else(|| corrupt(format!("identity kind {kind:?}")))?;
    Ok(Identifier { kind, value })
}

/// `CAST($n AS JSONB)` on PostgreSQL, `$n` on SQLite.
fn jsonb(backend: Backend, placeholder: String) -> String {
    match backend {
        Backend::Postgres => format!("CAST({placeholder} AS JSONB)"),
        Backend::Sqlite => placeholder,
    }
}

/// Typed `VALUES` cells on PostgreSQL (its `VALUES` rows carry no column types).
fn typed(backend: Backend, placeholder: String, pg_type: &str) -> String {
    match backend {
        Backend::Postgres => format!("CAST({placeholder} AS {pg_type})"),
        Backend::Sqlite => placeholder,
    }
}

fn merge_from_row(row: &SqlRow) -> PortResult<Merge> {
    let reason = row.text(6)?;
    Ok(Merge {
        id: row.uuid(0)?,
        into: row.uuid(1)?,
        from: row.uuid(2)?,
        event_id: row.text(3)?,
        identifier: identifier_of(&row.text(4)?, row.text(5)?)?,
        reason: MergeReason::parse(&reason)
            .ok_or_else(|| corrupt(format!("merge reason {reason:?}")))?,
        merged_at_ms: row.i64(7)?,
        undone_at_ms: row.opt_i64(8)?,
    })
}

const MERGE_COLUMNS: &str = "id, into_profile, from_profile, event_id, identifier_kind, \
     identifier_value, reason, merged_at_ms, undone_at_ms";

/// Unix milliseconds of a timestamp column of `events_raw`.
fn ms_of(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Postgres => format!("CAST(EXTRACT(EPOCH FROM {column}) * 1000 AS BIGINT)"),
        Backend::Sqlite => {
            format!("CAST(ROUND((julianday({column}) - 2440587.5) * 86400000.0) AS INTEGER)")
        }
    }
}

/// The payload column of `events_raw` as text.
fn payload_text(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(r.payload AS TEXT)",
        Backend::Sqlite => "r.payload",
    }
}

/// `events_raw` columns making a [`CanonicalEvent`], from table alias `r`.
fn archived_columns(backend: Backend) -> String {
    format!(
        "r.event_id, r.event_type, {}, {}, {}, r.source, r.trace_id, r.idempotency_key",
        ms_of(backend, "r.occurred_at"),
        ms_of(backend, "r.received_at"),
        payload_text(backend)
    )
}

fn archived_from_row(tenant: &TenantId, row: &SqlRow) -> PortResult<CanonicalEvent> {
    let source = row.text(5)?;
    Ok(CanonicalEvent {
        event_id: row.text(0)?,
        tenant: tenant.clone(),
        event_type: row.text(1)?,
        occurred_at_ms: row.i64(2)?,
        received_at_ms: row.i64(3)?,
        payload: row.text(4)?.into_bytes().into(),
        source: match source.as_str() {
            "grpc" => Source::Grpc,
            "kafka" => Source::Kafka,
            _ => Source::Http,
        },
        trace_id: row.opt_text(6)?,
        idempotency_key: row.opt_text(7)?,
    })
}

fn profile_types() -> String {
    EventKind::EVENT_TYPES
        .iter()
        .map(|kind| format!("'{kind}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Database {
    async fn fetch_chunks<T>(
        &self,
        items: &[T],
        build: impl Fn(&[T]) -> Sql,
    ) -> PortResult<Vec<SqlRow>> {
        let mut rows = Vec::new();
        for chunk in items.chunks(CHUNK) {
            rows.extend(self.fetch_all(&build(chunk)).await?);
        }
        Ok(rows)
    }

    async fn load_profiles(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
    ) -> PortResult<Vec<StoredProfile>> {
        let rows = self
            .fetch_chunks(ids, |chunk| {
                let mut sql = Sql::new(format!(
                    "SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE tenant_id = $1 \
                     AND profile_id IN ({})",
                    placeholders(2, chunk.len())
                ))
                .planned_each_time()
                .bind(tenant.as_str());
                for id in chunk {
                    sql = sql.bind(*id);
                }
                sql
            })
            .await?;
        rows.iter().map(|row| profile_from_row(row, 0)).collect()
    }
}

/// The columns a touched profile writes: its state and traits (none when merged away, which
/// keeps the last ones), its last activity, and the profile it was merged into.
struct Columns {
    state: Option<String>,
    traits: Option<String>,
    last_active: Option<i64>,
    merged_into: Option<Uuid>,
}

fn columns_of(touched: &Touched) -> PortResult<Columns> {
    Ok(match &touched.outcome {
        Outcome::Live(profile) => Columns {
            state: Some(serde_json::to_string(profile.as_ref()).map_err(corrupt)?),
            traits: Some(traits_json(profile)),
            last_active: profile.last_active_ms,
            merged_into: None,
        },
        Outcome::MergedInto(into) => Columns {
            state: None,
            traits: None,
            last_active: None,
            merged_into: Some(*into),
        },
    })
}

/// Writes one batch's `changes` in `tx`.
async fn write_changes(tx: &mut Tx<'_>, tenant: &TenantId, changes: &Changes) -> PortResult<()> {
    let backend = tx.backend();
    let now = changes.now_ms;
    // Profiles: new ones inserted, read ones updated at the version read.
    let (created, updated): (Vec<_>, Vec<_>) = changes
        .touched
        .iter()
        .partition(|touched| touched.read_version.is_none());
    for chunk in created.chunks(CHUNK / 2) {
        let rows = value_rows_after(1, chunk.len(), 7, |column, placeholder| match column {
            0 | 4 => typed(backend, placeholder, "UUID"),
            2 => jsonb(backend, placeholder),
            3 | 5 | 6 => typed(backend, placeholder, "BIGINT"),
            _ => placeholder,
        });
        let mut sql = Sql::new(format!(
            "INSERT INTO user_profiles (profile_id, state, traits, version, merged_into, \
             last_active_ms, created_at_ms, tenant_id, updated_at_ms) \
             SELECT v.*, $1, {now} FROM (VALUES {rows}) AS v \
             ON CONFLICT (tenant_id, profile_id) DO NOTHING"
        ))
        .planned_each_time()
        .bind(tenant.as_str());
        if backend == Backend::Sqlite {
            // SQLite's `INSERT … SELECT … ON CONFLICT` needs a WHERE to parse the upsert.
            sql = sql.with_text(format!(
                "INSERT INTO user_profiles (profile_id, state, traits, version, merged_into, \
                 last_active_ms, created_at_ms, tenant_id, updated_at_ms) \
                 SELECT v.*, $1, {now} FROM (VALUES {rows}) AS v WHERE true \
                 ON CONFLICT (tenant_id, profile_id) DO NOTHING"
            ));
        }
        for touched in chunk {
            let Columns {
                state,
                traits,
                last_active,
                merged_into,
            } = columns_of(touched)?;
            let created_at = match &touched.outcome {
                Outcome::Live(profile) => profile.created_at_ms,
                Outcome::MergedInto(_) => now,
            };
            let state = match state {
                Some(state) => state,
                None => {
                    serde_json::to_string(&Profile::new(touched.id, created_at)).map_err(corrupt)?
                }
            };
            sql = sql
                .bind(touched.id)
                .bind(state)
                .bind(traits.unwrap_or_else(|| "{}".into()))
                .bind(touched.version)
                .bind(merged_into)
                .bind(last_active)
                .bind(created_at);
        }
        let inserted = tx.execute(&sql).await?;
        if inserted != chunk.len() as u64 {
            return Err(conflict("a profile created meanwhile"));
        }
    }
    for chunk in updated.chunks(CHUNK / 2) {
        let rows = value_rows_after(1, chunk.len(), 6, |column, placeholder| match column {
            0 => typed(backend, placeholder, "UUID"),
            1 | 4 => typed(backend, placeholder, "BIGINT"),
            2 => typed(backend, placeholder, "TEXT"),
            3 => typed(backend, placeholder, "TEXT"),
            5 => typed(backend, placeholder, "UUID"),
            _ => placeholder,
        });
        let traits = match backend {
            Backend::Postgres => "CAST(v.traits AS JSONB)",
            Backend::Sqlite => "v.traits",
        };
        let mut sql = Sql::new(format!(
            "WITH v(id, read_version, state, traits, last_active, merged_into) AS (VALUES {rows}) \
             UPDATE user_profiles SET state = COALESCE(v.state, user_profiles.state), \
             traits = COALESCE({traits}, user_profiles.traits), version = user_profiles.version + 1, \
             merged_into = v.merged_into, \
             last_active_ms = COALESCE(v.last_active, user_profiles.last_active_ms), \
             updated_at_ms = {now} \
             FROM v WHERE user_profiles.tenant_id = $1 AND user_profiles.profile_id = v.id \
             AND user_profiles.version = v.read_version"
        ))
        .planned_each_time()
        .bind(tenant.as_str());
        for touched in chunk {
            let Columns {
                state,
                traits,
                last_active,
                merged_into,
            } = columns_of(touched)?;
            sql = sql
                .bind(touched.id)
                .bind(touched.read_version)
                .bind(state)
                .bind(traits)
                .bind(last_active)
                .bind(merged_into);
        }
        let changed = tx.execute(&sql).await?;
        if changed != chunk.len() as u64 {
            return Err(conflict("a profile changed meanwhile"));
        }
    }
    // A merged profile's stored identities and applied events follow it.
    for touched in &updated {
        if let Outcome::MergedInto(into) = touched.outcome {
            for table in ["identities", "profile_events"] {
                tx.execute(
                    &Sql::new(format!(
                        "UPDATE {table} SET profile_id = $3 WHERE tenant_id = $1 AND profile_id = $2"
                    ))
                    .bind(tenant.as_str())
                    .bind(touched.id)
                    .bind(into),
                )
                .await?;
            }
        }
    }
    for chunk in changes.identities.chunks(CHUNK / 2) {
        let rows = value_rows_after(2, chunk.len(), 5, |column, placeholder| match column {
            2 | 3 => typed(backend, placeholder, "UUID"),
            _ => placeholder,
        });
        let mut sql = Sql::new(format!(
            "INSERT INTO identities (kind, value, profile_id, origin_profile, event_id, \
             tenant_id, linked_at_ms) SELECT v.*, $1, $2 FROM (VALUES {rows}) AS v{} \
             ON CONFLICT (tenant_id, kind, value) DO NOTHING",
            if backend == Backend::Sqlite {
                " WHERE true"
            } else {
                ""
            }
        ))
        .planned_each_time()
        .bind(tenant.as_str())
        .bind(now);
        for identity in chunk {
            sql = sql
                .bind(identity.identifier.kind.as_str())
                .bind(identity.identifier.value.as_str())
                .bind(identity.profile)
                .bind(identity.origin)
                .bind(identity.event_id.as_str());
        }
        let inserted = tx.execute(&sql).await?;
        if inserted != chunk.len() as u64 {
            return Err(conflict("an identifier given meanwhile"));
        }
    }
    for chunk in changes.events.chunks(CHUNK / 2) {
        let rows = value_rows_after(2, chunk.len(), 6, |column, placeholder| match column {
            1 => typed(backend, placeholder, "UUID"),
            5 => typed(backend, placeholder, "BIGINT"),
            _ => placeholder,
        });
        let mut sql = Sql::new(format!(
            "INSERT INTO profile_events (event_id, profile_id, key_kind, key_value, event_type, \
             occurred_at_ms, tenant_id, applied_at_ms) SELECT v.*, $1, $2 FROM (VALUES {rows}) AS v{} \
             ON CONFLICT (tenant_id, event_id) DO NOTHING",
            if backend == Backend::Sqlite { " WHERE true" } else { "" }
        ))
        .planned_each_time()
        .bind(tenant.as_str())
        .bind(now);
        for event in chunk {
            sql = sql
                .bind(event.event_id.as_str())
                .bind(event.profile)
                .bind(event.key.kind.as_str())
                .bind(event.key.value.as_str())
                .bind(event.event_type.as_str())
                .bind(event.occurred_at_ms);
        }
        let inserted = tx.execute(&sql).await?;
        if inserted != chunk.len() as u64 {
            return Err(conflict("an event applied meanwhile"));
        }
    }
    for merge in &changes.merges {
        tx.execute(
            &Sql::new(format!(
                "INSERT INTO identity_merges ({MERGE_COLUMNS}, tenant_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(merge.id)
            .bind(merge.into)
            .bind(merge.from)
            .bind(merge.event_id.as_str())
            .bind(merge.identifier.kind.as_str())
            .bind(merge.identifier.value.as_str())
            .bind(merge.reason.as_str())
            .bind(merge.merged_at_ms)
            .bind(merge.undone_at_ms)
            .bind(tenant.as_str()),
        )
        .await?;
    }
    for &(a, b) in &changes.blocks {
        insert_block(tx, tenant, a, b, changes.now_ms).await?;
    }
    for sql in archive_statements(backend, &changes.archive, ARCHIVED_BY)? {
        tx.execute(&sql).await?;
    }
    outbox::enqueue(tx, &changes.outbox).await
}

/// Keeps `a` and `b` apart (an unmerge's block); the pair in id order, once.
async fn insert_block(
    tx: &mut Tx<'_>,
    tenant: &TenantId,
    a: Uuid,
    b: Uuid,
    now_ms: i64,
) -> PortResult<()> {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    tx.execute(
        &Sql::new(
            "INSERT INTO profile_blocks (tenant_id, profile_a, profile_b, created_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, profile_a, profile_b) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(a)
        .bind(b)
        .bind(now_ms),
    )
    .await?;
    Ok(())
}

/// A profile recomputed from its identities and its archived events (in time order).
async fn recompute(
    tx: &mut Tx<'_>,
    tenant: &TenantId,
    id: Uuid,
    created_at_ms: i64,
    rules: &IdentitySettings,
) -> PortResult<Profile> {
    let backend = tx.backend();
    let mut profile = Profile::new(id, created_at_ms);
    for row in tx
        .fetch_all(
            &Sql::new(
                "SELECT kind, value FROM identities WHERE tenant_id = $1 AND profile_id = $2",
            )
            .bind(tenant.as_str())
            .bind(id),
        )
        .await?
    {
        profile
            .identifiers
            .insert(identifier_of(&row.text(0)?, row.text(1)?)?);
    }
    let rows = tx
        .fetch_all(
            &Sql::new(format!(
                "SELECT p.event_id, p.event_type, p.occurred_at_ms, {} FROM profile_events p \
                 JOIN events_raw r ON r.tenant_id = p.tenant_id AND r.event_id = p.event_id \
                 WHERE p.tenant_id = $1 AND p.profile_id = $2 \
                 ORDER BY p.occurred_at_ms, p.event_id",
                payload_text(backend)
            ))
            .bind(tenant.as_str())
            .bind(id),
        )
        .await?;
    for row in rows {
        let event_type = row.text(1)?;
        let kind = EventKind::parse(&event_type)
            .ok_or_else(|| corrupt(format!("applied event of type {event_type:?}")))?;
        let payload: Map<String, Json> = serde_json::from_str(&row.text(3)?).map_err(corrupt)?;
        let event = ProfileEvent::from_payload(row.text(0)?, kind, row.i64(2)?, &payload, rules);
        profile.apply(&event, &rules.traits);
    }
    Ok(profile)
}

#[async_trait::async_trait]
impl ProfileStore for Database {
    async fn load(
        &self,
        tenant: &TenantId,
        event_ids: &[String],
        identifiers: &[Identifier],
    ) -> PortResult<Loaded> {
        let mut loaded = Loaded::default();
        if let Some(row) = self
            .fetch_optional(
                &Sql::new("SELECT version_floor FROM profile_epochs WHERE tenant_id = $1")
                    .bind(tenant.as_str()),
            )
            .await?
        {
            loaded.version_floor = row.i64(0)?;
        }
        for row in self
            .fetch_chunks(event_ids, |chunk| {
                let mut sql = Sql::new(format!(
                    "SELECT event_id FROM profile_events WHERE tenant_id = $1 AND event_id IN ({})",
                    placeholders(2, chunk.len())
                ))
                .planned_each_time()
                .bind(tenant.as_str());
                for id in chunk {
                    sql = sql.bind(id.as_str());
                }
                sql
            })
            .await?
        {
            loaded.seen.insert(row.text(0)?);
        }
        for row in self
            .fetch_chunks(identifiers, |chunk| {
                let pairs: Vec<String> = (0..chunk.len())
                    .map(|n| format!("(${}, ${})", 2 + n * 2, 3 + n * 2))
                    .collect();
                let mut sql = Sql::new(format!(
                    "SELECT kind, value, profile_id FROM identities WHERE tenant_id = $1 \
                     AND (kind, value) IN ({})",
                    pairs.join(", ")
                ))
                .planned_each_time()
                .bind(tenant.as_str());
                for id in chunk {
                    sql = sql.bind(id.kind.as_str()).bind(id.value.as_str());
                }
                sql
            })
            .await?
        {
            loaded
                .owners
                .insert(identifier_of(&row.text(0)?, row.text(1)?)?, row.uuid(2)?);
        }
        let mut wanted: Vec<Uuid> = loaded
            .owners
            .values()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Identities always name live profiles; a merged one read here was merged after the
        // identities were read, and its target is loaded too (the commit then conflicts).
        for _ in 0..4 {
            if wanted.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for stored in self.load_profiles(tenant, &wanted).await? {
                if let Some(into) = stored.merged_into {
                    if !loaded.profiles.contains_key(&into) {
                        next.push(into);
                    }
                }
                loaded.profiles.insert(stored.profile.id, stored);
            }
            wanted = next;
        }
        let ids: Vec<Uuid> = loaded.profiles.keys().copied().collect();
        for row in self
            .fetch_chunks(&ids, |chunk| {
                let list = placeholders(2, chunk.len());
                let mut sql = Sql::new(format!(
                    "SELECT profile_a, profile_b FROM profile_blocks WHERE tenant_id = $1 \
                     AND (profile_a IN ({list}) OR profile_b IN ({list}))"
                ))
                .planned_each_time()
                .bind(tenant.as_str());
                for id in chunk {
                    sql = sql.bind(*id);
                }
                sql
            })
            .await?
        {
            loaded.blocks.insert((row.uuid(0)?, row.uuid(1)?));
        }
        Ok(loaded)
    }

    async fn commit(&self, tenant: &TenantId, changes: Changes) -> PortResult<()> {
        let tenant = tenant.clone();
        self.write(move |mut tx| {
            Box::pin(async move { write_changes(&mut tx, &tenant, &changes).await })
        })
        .await
    }

    async fn profile(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<StoredProfile>> {
        self.fetch_optional(
            &Sql::new(format!(
                "SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE tenant_id = $1 AND profile_id = $2"
            ))
            .bind(tenant.as_str())
            .bind(id),
        )
        .await?
        .map(|row| profile_from_row(&row, 0))
        .transpose()
    }

    async fn owner(&self, tenant: &TenantId, identifier: &Identifier) -> PortResult<Option<Uuid>> {
        self.fetch_optional(
            &Sql::new(
                "SELECT profile_id FROM identities WHERE tenant_id = $1 AND kind = $2 AND value = $3",
            )
            .bind(tenant.as_str())
            .bind(identifier.kind.as_str())
            .bind(identifier.value.as_str()),
        )
        .await?
        .map(|row| row.uuid(0))
        .transpose()
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: Option<&TraitFilter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> PortResult<Vec<StoredProfile>> {
        let backend = self.backend();
        let mut text = format!(
            "SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE tenant_id = $1 \
             AND merged_into IS NULL AND ($2 IS NULL OR profile_id > $3)"
        );
        let mut sql = Sql::new(String::new())
            .bind(tenant.as_str())
            .bind(after.map(|id| id.to_string()))
            .bind(after);
        if let Some(filter) = filter {
            let compared = match backend {
                Backend::Postgres => "(traits ->> $4)".to_owned(),
                Backend::Sqlite => "(CASE json_type(traits, '$.\"' || $4 || '\"') \
                     WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' \
                     ELSE CAST(json_extract(traits, '$.\"' || $4 || '\"') AS TEXT) END)"
                    .to_owned(),
            };
            text.push_str(&format!(" AND {compared} = $5"));
            sql = sql.bind(filter.key.as_str()).bind(filter.value.as_str());
        }
        text.push_str(&format!(" ORDER BY profile_id LIMIT {}", limit.min(1_000)));
        let rows = self.fetch_all(&sql.with_text(text)).await?;
        rows.iter().map(|row| profile_from_row(row, 0)).collect()
    }

    async fn events(
        &self,
        tenant: &TenantId,
        profile: Uuid,
        after: Option<&Cursor>,
        limit: usize,
    ) -> PortResult<Vec<ArchivedEvent>> {
        let backend = self.backend();
        let rows = self
            .fetch_all(
                &Sql::new(format!(
                    "SELECT {}, p.key_kind, p.key_value FROM profile_events p \
                     JOIN events_raw r ON r.tenant_id = p.tenant_id AND r.event_id = p.event_id \
                     WHERE p.tenant_id = $1 AND p.profile_id = $2 \
                     AND ($3 IS NULL OR p.occurred_at_ms > $4 OR (p.occurred_at_ms = $4 AND p.event_id > $5)) \
                     ORDER BY p.occurred_at_ms, p.event_id LIMIT {}",
                    archived_columns(backend),
                    limit.min(1_000)
                ))
                .bind(tenant.as_str())
                .bind(profile)
                .bind(after.map(|(at, _)| *at))
                .bind(after.map(|(at, _)| *at))
                .bind(after.map(|(_, id)| id.clone())),
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ArchivedEvent {
                    event: archived_from_row(tenant, row)?,
                    key: identifier_of(&row.text(8)?, row.text(9)?)?,
                })
            })
            .collect()
    }

    async fn merges(&self, tenant: &TenantId, profile: Uuid) -> PortResult<Vec<Merge>> {
        let rows = self
            .fetch_all(
                &Sql::new(format!(
                    "SELECT {MERGE_COLUMNS} FROM identity_merges WHERE tenant_id = $1 \
                     AND (into_profile = $2 OR from_profile = $2) ORDER BY merged_at_ms DESC, id DESC"
                ))
                .bind(tenant.as_str())
                .bind(profile),
            )
            .await?;
        rows.iter().map(merge_from_row).collect()
    }

    async fn unmerge(
        &self,
        tenant: &TenantId,
        profile: Uuid,
        merge: Option<Uuid>,
        rules: &IdentitySettings,
        outbox_record: UpdateRecord,
        now_ms: i64,
    ) -> PortResult<Unmerged> {
        let tenant = tenant.clone();
        let rules = rules.clone();
        self
            .write(move |mut tx| {
                Box::pin(async move {
                    let t = tenant.as_str();
                    // A profile merged away holds no identities or events any more: what it
                    // took in moved on with it, so only its live profile can give it back.
                    let live = tx
                        .fetch_optional(
                            &Sql::new(
                                "SELECT merged_into FROM user_profiles \
                                 WHERE tenant_id = $1 AND profile_id = $2",
                            )
                            .bind(t)
                            .bind(profile),
                        )
                        .await?
                        .ok_or_else(|| PortError::NotFound(format!("no profile {profile}")))?;
                    if let Some(into) = live.opt_uuid(0)? {
                        return Err(PortError::Invalid(format!(
                            "profile {profile} was merged into {into}: undo that merge, or \
                             unmerge from the profile it lives on"
                        )));
                    }
                    let found = tx
                        .fetch_optional(
                            &Sql::new(format!(
                                "SELECT {MERGE_COLUMNS} FROM identity_merges WHERE tenant_id = $1 \
                                 AND into_profile = $2 AND undone_at_ms IS NULL \
                                 AND ($3 IS NULL OR id = $4) ORDER BY merged_at_ms DESC, id DESC LIMIT 1"
                            ))
                            .bind(t)
                            .bind(profile)
                            .bind(merge.map(|id| id.to_string()))
                            .bind(merge),
                        )
                        .await?
                        .ok_or_else(|| {
                            PortError::NotFound(format!(
                                "no merge into profile {profile} to undo{}",
                                merge.map(|id| format!(" with id {id}")).unwrap_or_default()
                            ))
                        })?;
                    let undone = merge_from_row(&found)?;
                    let restored_id = undone.from;
                    // The merged profile and every profile merged into it (still in effect).
                    let mut subtree = vec![restored_id];
                    let mut frontier = vec![restored_id];
                    while !frontier.is_empty() {
                        let mut sql = Sql::new(format!(
                            "SELECT from_profile FROM identity_merges WHERE tenant_id = $1 \
                             AND undone_at_ms IS NULL AND into_profile IN ({})",
                            placeholders(2, frontier.len())
                        ))
                        .planned_each_time()
                        .bind(t);
                        for id in &frontier {
                            sql = sql.bind(*id);
                        }
                        frontier = Vec::new();
                        for row in tx.fetch_all(&sql).await? {
                            let id = row.uuid(0)?;
                            if !subtree.contains(&id) {
                                subtree.push(id);
                                frontier.push(id);
                            }
                        }
                    }
                    let mut sql = Sql::new(format!(
                        "UPDATE identities SET profile_id = $3 WHERE tenant_id = $1 AND profile_id = $2 \
                         AND origin_profile IN ({})",
                        placeholders(4, subtree.len())
                    ))
                    .planned_each_time()
                    .bind(t)
                    .bind(profile)
                    .bind(restored_id);
                    for id in &subtree {
                        sql = sql.bind(*id);
                    }
                    tx.execute(&sql).await?;
                    tx.execute(
                        &Sql::new(
                            "UPDATE profile_events SET profile_id = $3 WHERE tenant_id = $1 \
                             AND profile_id = $2 AND (key_kind, key_value) IN \
                             (SELECT kind, value FROM identities WHERE tenant_id = $1 AND profile_id = $3)",
                        )
                        .bind(t)
                        .bind(profile)
                        .bind(restored_id),
                    )
                    .await?;
                    let mut stored = Vec::new();
                    for id in [profile, restored_id] {
                        let row = tx
                            .fetch_optional(
                                &Sql::new(format!(
                                    "SELECT {PROFILE_COLUMNS} FROM user_profiles \
                                     WHERE tenant_id = $1 AND profile_id = $2"
                                ))
                                .bind(t)
                                .bind(id),
                            )
                            .await?
                            .ok_or_else(|| corrupt(format!("merge names missing profile {id}")))?;
                        let before = profile_from_row(&row, 0)?;
                        let recomputed =
                            recompute(&mut tx, &tenant, id, before.profile.created_at_ms, &rules)
                                .await?;
                        let state = serde_json::to_string(&recomputed).map_err(corrupt)?;
                        let traits = traits_json(&recomputed);
                        let traits_value = match tx.backend() {
                            Backend::Postgres => "CAST($4 AS JSONB)",
                            Backend::Sqlite => "$4",
                        };
                        tx.execute(
                            &Sql::new(format!(
                                "UPDATE user_profiles SET state = $3, traits = {traits_value}, \
                                 version = version + 1, merged_into = NULL, last_active_ms = $5, \
                                 updated_at_ms = $6 WHERE tenant_id = $1 AND profile_id = $2"
                            ))
                            .bind(t)
                            .bind(id)
                            .bind(state)
                            .bind(traits)
                            .bind(recomputed.last_active_ms)
                            .bind(now_ms),
                        )
                        .await?;
                        stored.push(StoredProfile {
                            profile: recomputed,
                            version: before.version + 1,
                            updated_at_ms: now_ms,
                            merged_into: None,
                        });
                    }
                    tx.execute(
                        &Sql::new("UPDATE identity_merges SET undone_at_ms = $2 WHERE id = $1")
                            .bind(undone.id)
                            .bind(now_ms),
                    )
                    .await?;
                    insert_block(&mut tx, &tenant, profile, restored_id, now_ms).await?;
                    let restored = stored.pop().expect("two profiles");
                    let kept = stored.pop().expect("two profiles");
                    outbox::enqueue(&mut tx, &[outbox_record(&kept), outbox_record(&restored)])
                        .await?;
                    let mut merge = undone;
                    merge.undone_at_ms = Some(now_ms);
                    Ok(Unmerged {
                        merge,
                        kept,
                        restored,
                    })
                })
            })
            .await
    }

    async fn recently_changed(&self, limit: usize) -> PortResult<Vec<(TenantId, StoredProfile)>> {
        let rows = self
            .fetch_all(&Sql::new(format!(
                "SELECT tenant_id, {PROFILE_COLUMNS} FROM user_profiles \
                 ORDER BY updated_at_ms DESC LIMIT {}",
                limit.min(10_000)
            )))
            .await?;
        rows.iter()
            .map(|row| {
                let tenant = TenantId::parse(&row.text(0)?).map_err(corrupt)?;
                Ok((tenant, profile_from_row(row, 1)?))
            })
            .collect()
    }

    async fn all_live(
        &self,
        after: Option<&(TenantId, Uuid)>,
        limit: usize,
    ) -> PortResult<Vec<(TenantId, StoredProfile)>> {
        let rows = self
            .fetch_all(
                &Sql::new(format!(
                    "SELECT tenant_id, {PROFILE_COLUMNS} FROM user_profiles \
                     WHERE ($1 IS NULL OR tenant_id > $1 OR (tenant_id = $1 AND profile_id > $2)) \
                     ORDER BY tenant_id, profile_id LIMIT {}",
                    limit.min(10_000)
                ))
                .bind(after.map(|(tenant, _)| tenant.as_str().to_owned()))
                .bind(after.map(|(_, id)| *id)),
            )
            .await?;
        rows.iter()
            .map(|row| {
                let tenant = TenantId::parse(&row.text(0)?).map_err(corrupt)?;
                Ok((tenant, profile_from_row(row, 1)?))
            })
            .collect()
    }

    async fn record_repairs(&self, repairs: &[Repair]) -> PortResult<()> {
        let repairs = repairs.to_vec();
        self.write(move |mut tx| {
            Box::pin(async move {
                for repair in &repairs {
                    tx.execute(
                        &Sql::new(
                            "INSERT INTO profile_repairs (id, tenant_id, profile_id, cache_key, \
                             reason, found, repaired_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(repair.tenant.as_str())
                        .bind(repair.profile_id)
                        .bind(repair.key.as_str())
                        .bind(repair.reason)
                        .bind(repair.found.as_str())
                        .bind(repair.repaired_at_ms),
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn repairs(&self, limit: usize) -> PortResult<Vec<Repair>> {
        let rows = self
            .fetch_all(&Sql::new(format!(
                "SELECT tenant_id, cache_key, profile_id, reason, found, repaired_at_ms \
                 FROM profile_repairs ORDER BY repaired_at_ms DESC, id DESC LIMIT {}",
                limit.min(10_000)
            )))
            .await?;
        rows.iter()
            .map(|row| {
                let reason = row.text(3)?;
                Ok(Repair {
                    tenant: TenantId::parse(&row.text(0)?).map_err(corrupt)?,
                    key: row.text(1)?,
                    profile_id: row.uuid(2)?,
                    reason: ["stale", "corrupt", "wrong_owner"]
                        .into_iter()
                        .find(|known| *known == reason)
                        .ok_or_else(|| corrupt(format!("repair reason {reason:?}")))?,
                    found: row.text(4)?,
                    repaired_at_ms: row.i64(5)?,
                })
            })
            .collect()
    }

    async fn reset(&self, tenant: &TenantId) -> PortResult<Vec<Uuid>> {
        let tenant = tenant.as_str().to_owned();
        self.write(move |mut tx| {
            Box::pin(async move {
                tx.execute(
                    &Sql::new(
                        "INSERT INTO profile_epochs (tenant_id, version_floor) \
                         SELECT $1, COALESCE(MAX(version), 0) FROM user_profiles WHERE tenant_id = $1 \
                         ON CONFLICT (tenant_id) DO UPDATE SET version_floor = CASE \
                         WHEN excluded.version_floor > profile_epochs.version_floor \
                         THEN excluded.version_floor ELSE profile_epochs.version_floor END",
                    )
                    .bind(tenant.as_str()),
                )
                .await?;
                let mut profiles = Vec::new();
                for row in tx
                    .fetch_all(
                        &Sql::new("SELECT profile_id FROM user_profiles WHERE tenant_id = $1")
                            .bind(tenant.as_str()),
                    )
                    .await?
                {
                    profiles.push(row.uuid(0)?);
                }
                for table in [
                    "user_profiles",
                    "identities",
                    "identity_merges",
                    "profile_events",
                ] {
                    tx.execute(
                        &Sql::new(format!("DELETE FROM {table} WHERE tenant_id = $1"))
                            .bind(tenant.as_str()),
                    )
                    .await?;
                }
                Ok(profiles)
            })
        })
        .await
    }

    async fn archive_page(
        &self,
        tenant: &TenantId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> PortResult<Vec<CanonicalEvent>> {
        let backend = self.backend();
        let rows = self
            .fetch_all(
                &Sql::new(format!(
                    "SELECT {} FROM events_raw r WHERE r.tenant_id = $1 \
                     AND r.event_type IN ({}) \
                     AND ($2 IS NULL OR r.occurred_at > {} OR (r.occurred_at = {} AND r.event_id > $4)) \
                     ORDER BY r.occurred_at, r.event_id LIMIT {}",
                    archived_columns(backend),
                    profile_types(),
                    backend_time(backend, "$3"),
                    backend_time(backend, "$3"),
                    limit.min(10_000)
                ))
                .bind(tenant.as_str())
                .bind(after.map(|(at, _)| *at))
                .bind(after.map(|(at, _)| *at))
                .bind(after.map(|(_, id)| id.clone())),
            )
            .await?;
        rows.iter()
            .map(|row| archived_from_row(tenant, row))
            .collect()
    }

    async fn archive_count(&self, tenant: &TenantId) -> PortResult<u64> {
        let row = self
            .fetch_optional(
                &Sql::new(format!(
                    "SELECT COUNT(*) FROM events_raw WHERE tenant_id = $1 AND event_type IN ({})",
                    profile_types()
                ))
                .bind(tenant.as_str()),
            )
            .await?;
        Ok(row.map(|row| row.i64(0)).transpose()?.unwrap_or(0).max(0) as u64)
    }

    async fn archived_tenants(&self) -> PortResult<Vec<TenantId>> {
        let rows = self
            .fetch_all(&Sql::new(format!(
                "SELECT DISTINCT tenant_id FROM events_raw WHERE event_type IN ({}) ORDER BY tenant_id",
                profile_types()
            )))
            .await?;
        rows.iter()
            .map(|row| TenantId::parse(&row.text(0)?).map_err(corrupt))
            .collect()
    }
}

/// The `events_raw` timestamp of Unix milliseconds `ms` (as the sink writes it).
fn backend_time(backend: Backend, ms: &str) -> String {
    match backend {
        Backend::Postgres => format!("to_timestamp(CAST({ms} AS BIGINT) / 1000.0)"),
        Backend::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')"),
    }
}
