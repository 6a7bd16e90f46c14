//! The outbox on SQL: [`enqueue`], the one way a domain writes its outbox rows (inside its own
//! unit of work), and the [`Outbox`] port the relay claims rows through.

use bytes::Bytes;
use pulse_core::{PortError, PortResult, TenantId};
use pulse_outbox::{Outbox, OutboxEvent};
use uuid::Uuid;

use crate::sql::{PerDialect, Sql, SqlRow};
use crate::{Backend, Database, Tx};

/// The relay's statements on PostgreSQL are not prepared once and cached (`persistent(false)`):
/// PostgreSQL would settle on a generic plan within a few executions, and the first executions
/// of a new deployment see an empty outbox, so that plan scanned the whole table for every
/// claimed row once a backlog built up (2 s per claim of 500 at 20,000 rows). Planned at each
/// execution, they cost a millisecond of planning per batch and follow the table as it grows.
///
/// Set (locally) in the claim's transaction; see [`POSTGRES_CLAIM`].
#[doc(hidden)]
pub const POSTGRES_CLAIM_PLANNER_SETTINGS: &str = "SET LOCAL enable_sort = off";

/// The relay's claim on PostgreSQL: `$1` relay, `$2` now (ms), `$3` lease (ms), `$4` limit.
///
/// Outbox statistics are stale by nature: a backlog builds up within seconds of the last
/// ANALYZE. The plan must not depend on them, so the claim walks the pending index in `seq`
/// order (with sorting disabled: no sort of the whole backlog; the walk stops at the limit),
/// probes each candidate's aggregate through the full (aggregate_id, seq) index (`<> 'SENT'`
/// keeps the partial pending index, which stale statistics call empty, out of that probe), and
/// updates the claimed rows by primary key (`= ANY(ARRAY(…))`; `IN (…)` may hash-join against
/// the whole table). Public for the test that checks this plan.
#[doc(hidden)]
pub const POSTGRES_CLAIM: &str = "UPDATE outbox_events o
     SET claimed_by = $1, claimed_until_ms = $2 + $3, attempts = o.attempts + 1
     WHERE o.id = ANY(ARRAY(
         SELECT e.id FROM outbox_events e
         WHERE e.status = 'PENDING'
           AND (e.claimed_until_ms IS NULL OR e.claimed_until_ms < $2)
           AND NOT EXISTS (
               SELECT 1 FROM outbox_events p
               WHERE p.aggregate_id = e.aggregate_id
                 AND p.seq < e.seq AND p.status <> 'SENT')
         ORDER BY e.seq
         LIMIT $4
         FOR UPDATE SKIP LOCKED))
     RETURNING o.seq, o.id, o.aggregate_id, o.aggregate_type, o.topic, o.payload,
               COALESCE(o.created_at_ms, 0), o.tenant, o.traceparent, o.tracestate";

/// The same claim on SQLite, which has one writer (no `SKIP LOCKED` needed) and orders the
/// outbox by rowid (no sequences). The indexes are named: candidates come from the pending rows
/// in rowid order (never a walk over the sent ones), the probe for an earlier pending event goes
/// by aggregate; without statistics SQLite would pick the pending index for both.
const SQLITE_CLAIM: &str = "UPDATE outbox_events
     SET claimed_by = $1, claimed_until_ms = $2 + $3, attempts = attempts + 1
     WHERE rowid IN (
         SELECT e.rowid FROM outbox_events e INDEXED BY outbox_events_pending_order
         WHERE e.status = 'PENDING'
           AND (e.claimed_until_ms IS NULL OR e.claimed_until_ms < $2)
           AND NOT EXISTS (
               SELECT 1 FROM outbox_events p INDEXED BY outbox_events_pending_aggregate
               WHERE p.aggregate_id = e.aggregate_id
                 AND p.status = 'PENDING' AND p.rowid < e.rowid)
         ORDER BY e.rowid
         LIMIT $4)
     RETURNING rowid, id, aggregate_id, aggregate_type, topic, payload,
               COALESCE(created_at_ms, 0), tenant, traceparent, tracestate";

/// The columns an outbox row is written with.
const COLUMNS: &str = "id, aggregate_id, aggregate_type, payload, topic, created_at, status, \
     created_at_ms, tenant, traceparent, tracestate";

/// The values of [`COLUMNS`], from placeholder `$first` on (see [`bind`] for their order).
fn values(backend: Backend, first: usize) -> String {
    let n = |offset: usize| format!("${}", first + offset);
    format!(
        "{}, {}, {}, {}, {}, {}, 'PENDING', {}, {}, {}, {}",
        n(0),
        n(1),
        n(2),
        n(3),
        n(4),
        backend.timestamp_from_ms(&n(5)),
        n(5),
        n(6),
        n(7),
        n(8)
    )
}

static INSERT: PerDialect = PerDialect::new(|backend| {
    format!(
        "INSERT INTO outbox_events ({COLUMNS}) VALUES ({})",
        values(backend, 1)
    )
});

/// An `INSERT` of one outbox row per row of `from` (a CTE of the same statement), its values
/// bound from `$first` on by [`bind`]: how a PostgreSQL repository writes its business row and
/// its event in one statement, one round trip.
pub fn insert_for_each_row_of(backend: Backend, from: &str, first: usize) -> String {
    format!(
        "INSERT INTO outbox_events ({COLUMNS}) SELECT {} FROM {from}",
        values(backend, first)
    )
}

/// Binds `event`'s values, in the order [`insert_for_each_row_of`] and [`enqueue`] expect them.
pub fn bind(sql: Sql, event: &OutboxEvent) -> Sql {
    sql.bind(event.id)
        .bind(event.aggregate_id)
        .bind(&event.aggregate_type)
        .bind(event.payload.to_vec())
        .bind(&event.topic)
        .bind(event.created_at_ms)
        .bind(event.tenant.as_str())
        .bind(event.traceparent.clone())
        .bind(event.tracestate.clone())
}

/// Writes `events` as pending outbox rows in `tx`: they commit with the caller's business rows,
/// or not at all. Every domain writes its outbox rows through this function (or, in a single
/// PostgreSQL statement, through [`insert_for_each_row_of`]).
pub async fn enqueue(tx: &mut Tx<'_>, events: &[OutboxEvent]) -> PortResult<()> {
    if let [event] = events {
        return tx
            .execute(&bind(Sql::new(INSERT.get(tx.backend())), event))
            .await
            .map(|_| ());
    }
    // Many rows (a processor's batch): one statement per chunk instead of a round trip each.
    const ROWS: usize = 100;
    let backend = tx.backend();
    for chunk in events.chunks(ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|row| format!("({})", values(backend, 1 + row * 9)))
            .collect();
        let mut sql = Sql::new(format!(
            "INSERT INTO outbox_events ({COLUMNS}) VALUES {}",
            rows.join(", ")
        ))
        .planned_each_time();
        for event in chunk {
            sql = bind(sql, event);
        }
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// An event as a claim returns it: `(order column, event)`.
fn event_from_row(row: &SqlRow) -> PortResult<(i64, OutboxEvent)> {
    let tenant = row.text(7)?;
    Ok((
        row.i64(0)?,
        OutboxEvent {
            id: row.uuid(1)?,
            aggregate_id: row.uuid(2)?,
            aggregate_type: row.text(3)?,
            topic: row.text(4)?,
            payload: Bytes::from(row.bytes(5)?),
            created_at_ms: row.i64(6)?,
            tenant: TenantId::parse(&tenant)
                .map_err(|err| PortError::Corrupt(format!("outbox row: {err}")))?,
            traceparent: row.opt_text(8)?,
            tracestate: row.opt_text(9)?,
        },
    ))
}

#[async_trait::async_trait]
impl Outbox for Database {
    async fn claim(
        &self,
        relay: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> PortResult<Vec<OutboxEvent>> {
        let limit = limit.max(1) as i64;
        let relay = relay.to_owned();
        let rows = self
            .write(move |mut tx| {
                Box::pin(async move {
                    let claim = match tx.backend() {
                        Backend::Postgres => {
                            tx.execute(&Sql::new(POSTGRES_CLAIM_PLANNER_SETTINGS))
                                .await?;
                            Sql::new(POSTGRES_CLAIM).planned_each_time()
                        }
                        Backend::Sqlite => Sql::new(SQLITE_CLAIM),
                    };
                    let claim = claim.bind(relay).bind(now_ms).bind(lease_ms).bind(limit);
                    tx.fetch_all(&claim).await
                })
            })
            .await?;
        let mut claimed = rows
            .iter()
            .map(event_from_row)
            .collect::<PortResult<Vec<_>>>()?;
        // RETURNING does not promise an order.
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, event)| event).collect())
    }

    async fn mark_sent(&self, ids: &[Uuid], now_ms: i64) -> PortResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        if self.backend() == Backend::Postgres {
            // One statement: its own transaction, one round trip.
            let mark = Sql::new(
                "UPDATE outbox_events SET status = 'SENT', sent_at_ms = $2, claimed_by = NULL
                 WHERE id = ANY($1)",
            )
            .planned_each_time()
            .bind(ids.to_vec())
            .bind(now_ms);
            return self.execute(mark).await.map(|_| ());
        }
        let ids = ids.to_vec();
        self.write(move |mut tx| {
            Box::pin(async move {
                // No arrays: fixed-size chunks keep the prepared statements few.
                for chunk in ids.chunks(MARK_CHUNK) {
                    let mut mark = Sql::new(SQLITE_MARK_SENT.as_str()).bind(now_ms);
                    for index in 0..MARK_CHUNK {
                        mark = mark.bind(chunk.get(index).copied());
                    }
                    tx.execute(&mark).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn backlog(&self) -> PortResult<u64> {
        let count = Sql::new("SELECT COUNT(*) FROM outbox_events WHERE status = 'PENDING'")
            .planned_each_time();
        let row = self.fetch_optional(&count).await?;
        Ok(row.map(|row| row.i64(0)).transpose()?.unwrap_or(0).max(0) as u64)
    }

    async fn purge_sent(&self, before_ms: i64) -> PortResult<u64> {
        self.execute(
            Sql::new("DELETE FROM outbox_events WHERE status = 'SENT' AND sent_at_ms < $1")
                .planned_each_time()
                .bind(before_ms),
        )
        .await
    }
}

/// Ids marked sent per statement on SQLite (unused slots bind NULL, which matches no id).
const MARK_CHUNK: usize = 100;

static SQLITE_MARK_SENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let slots: Vec<String> = (2..MARK_CHUNK + 2).map(|n| format!("${n}")).collect();
    format!(
        "UPDATE outbox_events SET status = 'SENT', claimed_by = NULL, sent_at_ms = $1
         WHERE id IN ({})",
        slots.join(", ")
    )
});
