//! The event gateway's tables on SQL: the `events_raw` archive (what `postgres_sink` writes),
//! dedup keys, delivery records, parked events, dead letters and stored pipelines — the
//! gateway's ports implemented for [`Database`].

use std::collections::{HashMap, HashSet};

use pulse_core::{PortError, PortResult, TenantId};
use pulse_gateway::envelope::CanonicalEvent;
use pulse_gateway::ports::{
    DeadLetter, DeadLetterFilter, DeadLetterStore, DedupEntry, DedupStore, DeliveryLedger,
    NewDeadLetter, Parked, ParkedDeliveries, PipelineStore, Recorded, StoredPipeline, ToPark,
};

use crate::sql::{placeholders, truncated, u32_of, value_rows, PerDialect, Sql, SqlRow};
use crate::{Backend, Database};

/// Rows per multi-row statement: far below both engines' bound-parameter limits.
const CHUNK: usize = 400;
/// Most expired rows one expiry statement deletes (the next tick goes on).
const EXPIRE_BATCH: i64 = 10_000;

impl Database {
    /// Runs `statements` as one unit of work.
    async fn write_all(&self, statements: Vec<Sql>) -> PortResult<()> {
        self.write(move |mut tx| {
            Box::pin(async move {
                for sql in &statements {
                    tx.execute(sql).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Archives `events` in `events_raw` with the plugin versions that touched them; an event
    /// already archived for its tenant keeps its row and gains these versions. How many rows
    /// are new or newly stamped (an event archived again by the same writer counts 0).
    pub async fn archive_events(
        &self,
        events: &[CanonicalEvent],
        plugin_versions: &str,
    ) -> PortResult<u64> {
        let statements = archive_statements(self.backend(), events, plugin_versions)?;
        self.write(move |mut tx| {
            Box::pin(async move {
                let mut inserted = 0;
                for sql in &statements {
                    inserted += tx.execute(sql).await?;
                }
                Ok(inserted)
            })
        })
        .await
    }
}

/// The statements archiving `events` in `events_raw` (an event already there keeps its row and
/// gains `plugin_versions`),
/// for a unit of work of the caller's: the sink's, or the profiles' batch.
pub(crate) fn archive_statements(
    backend: Backend,
    events: &[CanonicalEvent],
    plugin_versions: &str,
) -> PortResult<Vec<Sql>> {
    // One row per event in a statement: the same event twice would be an upsert of a row the
    // statement itself wrote.
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&CanonicalEvent> = events
        .iter()
        .filter(|event| seen.insert((event.tenant.as_str(), event.event_id.as_str())))
        .collect();
    // An event already archived keeps its row, and gains the versions of this writer (the sink
    // and the profiles both archive; whichever comes second is recorded too).
    let stamp = match backend {
        Backend::Postgres => {
            "DO UPDATE SET plugin_versions = events_raw.plugin_versions || excluded.plugin_versions \
             WHERE NOT events_raw.plugin_versions @> excluded.plugin_versions"
        }
        Backend::Sqlite => {
            "DO UPDATE SET plugin_versions = json_patch(events_raw.plugin_versions, excluded.plugin_versions) \
             WHERE events_raw.plugin_versions <> json_patch(events_raw.plugin_versions, excluded.plugin_versions)"
        }
    };
    let mut statements = Vec::new();
    for chunk in events.chunks(CHUNK) {
        let rows = value_rows(chunk.len(), 10, |column, placeholder| {
            match (backend, column) {
                (Backend::Postgres, 3 | 4) => format!("to_timestamp({placeholder} / 1000.0)"),
                (Backend::Sqlite, 3 | 4) => {
                    format!("strftime('%Y-%m-%dT%H:%M:%fZ', {placeholder} / 1000.0, 'unixepoch')")
                }
                (Backend::Postgres, 5 | 9) => format!("CAST({placeholder} AS JSONB)"),
                _ => placeholder,
            }
        });
        let mut sql = Sql::new(format!(
            "INSERT INTO events_raw (tenant_id, event_id, event_type, occurred_at, \
             received_at, payload, source, trace_id, idempotency_key, plugin_versions) \
             VALUES {rows} ON CONFLICT (tenant_id, event_id) {stamp}"
        ))
        .planned_each_time();
        for event in chunk {
            let payload = std::str::from_utf8(&event.payload)
                .map_err(|err| PortError::Invalid(format!("payload: {err}")))?;
            sql = sql
                .bind(event.tenant.as_str())
                .bind(event.event_id.as_str())
                .bind(event.event_type.as_str())
                .bind(event.occurred_at_ms)
                .bind(event.received_at_ms)
                .bind(payload)
                .bind(event.source.as_str())
                .bind(event.trace_id.clone())
                .bind(event.idempotency_key.clone())
                .bind(plugin_versions);
        }
        statements.push(sql);
    }
    Ok(statements)
}

#[async_trait::async_trait]
impl DedupStore for Database {
    async fn recorded(
        &self,
        tenant: &TenantId,
        keys: &[String],
        now_ms: i64,
    ) -> PortResult<HashMap<String, Recorded>> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(CHUNK) {
            let mut sql = Sql::new(format!(
                "SELECT dedup_key, event_id, received_at_ms FROM event_dedup \
                 WHERE tenant_id = $1 AND expires_at_ms > $2 AND dedup_key IN ({})",
                placeholders(3, chunk.len())
            ))
            .bind(tenant.as_str())
            .bind(now_ms);
            if chunk.len() > 2 {
                sql = sql.planned_each_time();
            }
            for key in chunk {
                sql = sql.bind(key.as_str());
            }
            for row in self.fetch_all(&sql).await? {
                found.insert(
                    row.text(0)?,
                    Recorded {
                        event_id: row.text(1)?,
                        received_at_ms: row.i64(2)?,
                    },
                );
            }
        }
        Ok(found)
    }

    async fn record(&self, tenant: &TenantId, entries: &[DedupEntry]) -> PortResult<()> {
        let mut statements = Vec::new();
        for chunk in entries.chunks(CHUNK) {
            // An expired key is taken over; a live one keeps its first event.
            let mut sql = Sql::new(format!(
                "INSERT INTO event_dedup (tenant_id, dedup_key, event_id, received_at_ms, \
                 expires_at_ms) VALUES {} ON CONFLICT (tenant_id, dedup_key) DO UPDATE SET \
                 event_id = excluded.event_id, received_at_ms = excluded.received_at_ms, \
                 expires_at_ms = excluded.expires_at_ms \
                 WHERE event_dedup.expires_at_ms <= excluded.received_at_ms",
                value_rows(chunk.len(), 5, |_, placeholder| placeholder)
            ));
            if chunk.len() > 2 {
                sql = sql.planned_each_time();
            }
            for entry in chunk {
                sql = sql
                    .bind(tenant.as_str())
                    .bind(entry.key.as_str())
                    .bind(entry.event_id.as_str())
                    .bind(entry.received_at_ms)
                    .bind(entry.expires_at_ms);
            }
            statements.push(sql);
        }
        self.write_all(statements).await
    }

    async fn expire(&self, now_ms: i64) -> PortResult<u64> {
        let dedup = Sql::new(
            "DELETE FROM event_dedup WHERE (tenant_id, dedup_key) IN (SELECT tenant_id, \
             dedup_key FROM event_dedup WHERE expires_at_ms <= $1 LIMIT $2)",
        )
        .bind(now_ms)
        .bind(EXPIRE_BATCH);
        let deliveries = Sql::new(
            "DELETE FROM sink_deliveries WHERE (tenant_id, sink_id, event_id) IN (SELECT \
             tenant_id, sink_id, event_id FROM sink_deliveries WHERE expires_at_ms <= $1 LIMIT $2)",
        )
        .bind(now_ms)
        .bind(EXPIRE_BATCH);
        Ok(self.execute(dedup).await? + self.execute(deliveries).await?)
    }
}

#[async_trait::async_trait]
impl DeliveryLedger for Database {
    async fn delivered(
        &self,
        tenant: &TenantId,
        sink: &str,
        event_ids: &[String],
    ) -> PortResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in event_ids.chunks(CHUNK) {
            let mut sql = Sql::new(format!(
                "SELECT event_id FROM sink_deliveries WHERE tenant_id = $1 AND sink_id = $2 \
                 AND event_id IN ({})",
                placeholders(3, chunk.len())
            ))
            .bind(tenant.as_str())
            .bind(sink)
            .planned_each_time();
            for id in chunk {
                sql = sql.bind(id.as_str());
            }
            for row in self.fetch_all(&sql).await? {
                found.insert(row.text(0)?);
            }
        }
        Ok(found)
    }

    async fn mark_delivered(
        &self,
        tenant: &TenantId,
        sink: &str,
        event_ids: &[String],
        at_ms: i64,
        expires_at_ms: i64,
    ) -> PortResult<()> {
        let mut statements = Vec::new();
        for chunk in event_ids.chunks(CHUNK) {
            let mut sql = Sql::new(format!(
                "INSERT INTO sink_deliveries (tenant_id, sink_id, event_id, delivered_at_ms, \
                 expires_at_ms) VALUES {} ON CONFLICT (tenant_id, sink_id, event_id) DO NOTHING",
                value_rows(chunk.len(), 5, |_, placeholder| placeholder)
            ))
            .planned_each_time();
            for id in chunk {
                sql = sql
                    .bind(tenant.as_str())
                    .bind(sink)
                    .bind(id.as_str())
                    .bind(at_ms)
                    .bind(expires_at_ms);
            }
            statements.push(sql);
        }
        self.write_all(statements).await
    }
}

const PARKED_COLUMNS: &str = "id, tenant_id, sink_id, event_id, envelope, original, plugins, \
     attempts, first_error, last_error, first_failed_at_ms";

fn parked_from_row(row: &SqlRow) -> PortResult<Parked> {
    Ok(Parked {
        id: row.i64(0)?,
        tenant: TenantId::parse(&row.text(1)?)
            .map_err(|err| PortError::Corrupt(format!("parked event tenant: {err}")))?,
        sink: row.text(2)?,
        event_id: row.text(3)?,
        envelope: row.bytes(4)?,
        original: row.bytes(5)?,
        plugins: row.text(6)?,
        attempts: u32_of(row, 7)?,
        first_error: row.text(8)?,
        last_error: row.text(9)?,
        first_failed_at_ms: row.i64(10)?,
    })
}

static CLAIM_DUE: PerDialect = PerDialect::new(|backend| {
    // SKIP LOCKED: two redeliverers claim different events instead of waiting for each other.
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    format!(
        "UPDATE sink_parked SET next_attempt_at_ms = $2 WHERE id IN (SELECT id FROM sink_parked \
         WHERE next_attempt_at_ms <= $1 ORDER BY next_attempt_at_ms, id LIMIT $3{lock}) \
         RETURNING {PARKED_COLUMNS}"
    )
});

fn insert_dead_letter(letter: &NewDeadLetter) -> Sql {
    Sql::new(
        "INSERT INTO event_dead_letters (tenant_id, event_id, event_type, sink_id, plugin, \
         plugin_version, reason, attempts, first_error, last_error, first_failed_at_ms, \
         last_failed_at_ms, envelope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13) ON CONFLICT (tenant_id, sink_id, event_id) WHERE redriven_at_ms IS NULL DO NOTHING",
    )
    .bind(letter.tenant.as_str())
    .bind(letter.event_id.as_str())
    .bind(letter.event_type.as_str())
    .bind(letter.sink.as_str())
    .bind(letter.plugin.as_str())
    .bind(letter.plugin_version.as_str())
    .bind(letter.reason.as_str())
    .bind(i64::from(letter.attempts))
    .bind(truncated(&letter.first_error))
    .bind(truncated(&letter.last_error))
    .bind(letter.first_failed_at_ms)
    .bind(letter.last_failed_at_ms)
    .bind(letter.envelope.clone())
}

fn ids_in(ids: &[i64], from: usize) -> String {
    placeholders(from, ids.len())
}

#[async_trait::async_trait]
impl ParkedDeliveries for Database {
    async fn park(&self, items: &[ToPark]) -> PortResult<()> {
        let statements: Vec<Sql> = items
            .iter()
            .map(|item| {
                Sql::new(
                    "INSERT INTO sink_parked (tenant_id, sink_id, event_id, envelope, original, \
                     plugins, attempts, first_error, last_error, first_failed_at_ms, \
                     next_attempt_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10) \
                     ON CONFLICT (tenant_id, sink_id, event_id) DO NOTHING",
                )
                .bind(item.tenant.as_str())
                .bind(item.sink.as_str())
                .bind(item.event_id.as_str())
                .bind(item.envelope.clone())
                .bind(item.original.clone())
                .bind(item.plugins.as_str())
                .bind(i64::from(item.attempts))
                .bind(truncated(&item.error))
                .bind(item.at_ms)
                .bind(item.next_attempt_at_ms)
            })
            .collect();
        self.write_all(statements).await
    }

    async fn backlogged(&self, tenant: &TenantId, sink: &str) -> PortResult<bool> {
        let sql =
            Sql::new("SELECT 1 FROM sink_parked WHERE tenant_id = $1 AND sink_id = $2 LIMIT 1")
                .bind(tenant.as_str())
                .bind(sink);
        Ok(self.fetch_optional(&sql).await?.is_some())
    }

    async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: usize) -> PortResult<Vec<Parked>> {
        let sql = Sql::new(CLAIM_DUE.get(self.backend()))
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .write(move |mut tx| Box::pin(async move { tx.fetch_all(&sql).await }))
            .await?;
        let mut parked = rows
            .iter()
            .map(parked_from_row)
            .collect::<PortResult<Vec<_>>>()?;
        // RETURNING keeps no order; parking order is delivery order.
        parked.sort_by_key(|item| item.id);
        Ok(parked)
    }

    async fn delivered(&self, ids: &[i64]) -> PortResult<()> {
        for chunk in ids.chunks(CHUNK) {
            let mut sql = Sql::new(format!(
                "DELETE FROM sink_parked WHERE id IN ({})",
                ids_in(chunk, 1)
            ))
            .planned_each_time();
            for id in chunk {
                sql = sql.bind(*id);
            }
            self.execute(sql).await?;
        }
        Ok(())
    }

    async fn retry_later(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> PortResult<()> {
        let sql = Sql::new(
            "UPDATE sink_parked SET attempts = $2, last_error = $3, next_attempt_at_ms = $4, \
             first_error = CASE WHEN first_error = '' THEN $3 ELSE first_error END WHERE id = $1",
        )
        .bind(id)
        .bind(i64::from(attempts))
        .bind(truncated(error))
        .bind(next_attempt_at_ms);
        self.execute(sql).await.map(|_| ())
    }

    async fn bury(&self, id: i64, letter: &NewDeadLetter) -> PortResult<()> {
        let insert = insert_dead_letter(letter);
        let forget = Sql::new("DELETE FROM sink_parked WHERE id = $1").bind(id);
        self.write(move |mut tx| {
            Box::pin(async move {
                tx.execute(&insert).await?;
                tx.execute(&forget).await?;
                Ok(())
            })
        })
        .await
    }

    async fn backlog(&self) -> PortResult<Vec<(TenantId, String, u64)>> {
        let sql = Sql::new(
            "SELECT tenant_id, sink_id, COUNT(*) FROM sink_parked GROUP BY tenant_id, sink_id",
        );
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    TenantId::parse(&row.text(0)?)
                        .map_err(|err| PortError::Corrupt(format!("parked tenant: {err}")))?,
                    row.text(1)?,
                    u64::try_from(row.i64(2)?).unwrap_or(0),
                ))
            })
            .collect()
    }
}

const DEAD_COLUMNS: &str = "id, tenant_id, event_id, event_type, sink_id, plugin, plugin_version, \
     reason, attempts, first_error, last_error, first_failed_at_ms, last_failed_at_ms, envelope";

fn dead_from_row(row: &SqlRow) -> PortResult<DeadLetter> {
    Ok(DeadLetter {
        id: row.i64(0)?,
        letter: NewDeadLetter {
            tenant: TenantId::parse(&row.text(1)?)
                .map_err(|err| PortError::Corrupt(format!("dead letter tenant: {err}")))?,
            event_id: row.text(2)?,
            event_type: row.text(3)?,
            sink: row.text(4)?,
            plugin: row.text(5)?,
            plugin_version: row.text(6)?,
            reason: row.text(7)?,
            attempts: u32_of(row, 8)?,
            first_error: row.text(9)?,
            last_error: row.text(10)?,
            first_failed_at_ms: row.i64(11)?,
            last_failed_at_ms: row.i64(12)?,
            envelope: row.bytes(13)?,
        },
    })
}

#[async_trait::async_trait]
impl DeadLetterStore for Database {
    async fn put(&self, letters: &[NewDeadLetter]) -> PortResult<()> {
        let statements: Vec<Sql> = letters.iter().map(insert_dead_letter).collect();
        self.write_all(statements).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeadLetterFilter,
        after: Option<i64>,
        limit: usize,
    ) -> PortResult<Vec<DeadLetter>> {
        let mut text = format!(
            "SELECT {DEAD_COLUMNS} FROM event_dead_letters WHERE tenant_id = $1 AND \
             redriven_at_ms IS NULL AND id > $2"
        );
        let mut sql = Sql::new("").bind(tenant.as_str()).bind(after.unwrap_or(0));
        let mut next = 3;
        let mut condition = |column: &str, op: &str, sql: Sql, value: crate::sql::Value| {
            text.push_str(&format!(" AND {column} {op} ${next}"));
            next += 1;
            sql.bind(value)
        };
        if let Some(from) = filter.from_ms {
            sql = condition("last_failed_at_ms", ">=", sql, from.into());
        }
        if let Some(to) = filter.to_ms {
            sql = condition("last_failed_at_ms", "<", sql, to.into());
        }
        if let Some(event_type) = &filter.event_type {
            sql = condition("event_type", "=", sql, event_type.into());
        }
        if let Some(sink) = &filter.sink {
            sql = condition("sink_id", "=", sql, sink.into());
        }
        if let Some(reason) = &filter.reason {
            sql = condition("reason", "=", sql, reason.into());
        }
        text.push_str(&format!(" ORDER BY id LIMIT ${next}"));
        let sql = sql
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_text(text)
            .planned_each_time();
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(dead_from_row)
            .collect()
    }

    async fn mark_redriven(&self, tenant: &TenantId, ids: &[i64], at_ms: i64) -> PortResult<()> {
        for chunk in ids.chunks(CHUNK) {
            let mut sql = Sql::new(format!(
                "UPDATE event_dead_letters SET redriven_at_ms = $2 WHERE tenant_id = $1 AND id IN ({})",
                ids_in(chunk, 3)
            ))
            .bind(tenant.as_str())
            .bind(at_ms)
            .planned_each_time();
            for id in chunk {
                sql = sql.bind(*id);
            }
            self.execute(sql).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl PipelineStore for Database {
    async fn put_pipeline(
        &self,
        tenant: &TenantId,
        spec: &serde_json::Value,
        at_ms: i64,
    ) -> PortResult<i64> {
        let next = Sql::new(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM tenant_pipelines WHERE tenant_id = $1",
        )
        .bind(tenant.as_str());
        let tenant = tenant.as_str().to_owned();
        let spec = spec.to_string();
        self.write(move |mut tx| {
            Box::pin(async move {
                let version = match tx.fetch_optional(&next).await? {
                    Some(row) => row.i64(0)?,
                    None => 1,
                };
                let insert = Sql::new(
                    "INSERT INTO tenant_pipelines (tenant_id, version, spec, updated_at_ms) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(tenant.as_str())
                .bind(version)
                .bind(spec.as_str())
                .bind(at_ms);
                tx.execute(&insert).await?;
                Ok(version)
            })
        })
        .await
    }

    async fn current_pipelines(&self) -> PortResult<Vec<StoredPipeline>> {
        let sql = Sql::new(
            "SELECT p.tenant_id, p.version, p.spec, p.updated_at_ms FROM tenant_pipelines p \
             WHERE p.version = (SELECT MAX(q.version) FROM tenant_pipelines q \
             WHERE q.tenant_id = p.tenant_id) ORDER BY p.tenant_id",
        );
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| {
                let tenant = TenantId::parse(&row.text(0)?)
                    .map_err(|err| PortError::Corrupt(format!("pipeline tenant: {err}")))?;
                let spec = serde_json::from_str(&row.text(2)?)
                    .map_err(|err| PortError::Corrupt(format!("pipeline of {tenant}: {err}")))?;
                Ok(StoredPipeline {
                    tenant,
                    version: row.i64(1)?,
                    spec,
                    updated_at_ms: row.i64(3)?,
                })
            })
            .collect()
    }
}
