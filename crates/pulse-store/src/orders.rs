//! The orders domain's ports ([`OrderStore`], [`Outbox`]) on PostgreSQL and SQLite.

use async_trait::async_trait;
use bytes::Bytes;
use pulse_geo::Point;
use pulse_orders::{
    CreateOutcome, IdempotencyKey, Order, OrderPrice, OrderStatus, OrderStore, Outbox, OutboxEvent,
    StoreError,
};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::Database;

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

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
               COALESCE(o.created_at_ms, 0), o.traceparent, o.tracestate";

const ORDER_COLUMNS: &str = "id, user_id, pickup_h3, dropoff_h3, status, created_at_ms, \
     pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, quote_id, price_total, price_currency, \
     multiplier_milli";

/// Reads an order row; `id` and `quote_id` are UUIDs on PostgreSQL and text on SQLite, so the
/// caller passes them already parsed.
fn order_from_row<R: Row>(row: &R, id: Uuid, quote_id: Option<Uuid>) -> Result<Order, StoreError>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let get_err = |err: sqlx::Error| corrupt(format!("order {id}: {err}"));
    let point = |lat: usize, lng: usize| -> Result<Point, StoreError> {
        let lat: f64 = row.try_get(lat).map_err(get_err)?;
        let lng: f64 = row.try_get(lng).map_err(get_err)?;
        Point::new(lat, lng).map_err(|err| corrupt(format!("order {id}: {err}")))
    };
    let status: String = row.try_get(4).map_err(get_err)?;
    let total: Option<i64> = row.try_get(11).map_err(get_err)?;
    let currency: Option<String> = row.try_get(12).map_err(get_err)?;
    let multiplier_milli: Option<i32> = row.try_get(13).map_err(get_err)?;
    let price = match (total, currency, multiplier_milli) {
        (Some(total), Some(currency), Some(multiplier_milli)) => Some(OrderPrice {
            total,
            currency,
            multiplier_milli,
        }),
        _ => None,
    };
    Ok(Order {
        id,
        user_id: row.try_get(1).map_err(get_err)?,
        pickup_h3: row.try_get(2).map_err(get_err)?,
        dropoff_h3: row.try_get(3).map_err(get_err)?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?,
        created_at_ms: row.try_get(5).map_err(get_err)?,
        pickup: point(6, 7)?,
        dropoff: point(8, 9)?,
        quote_id,
        price,
    })
}

fn parse_uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|err| corrupt(format!("uuid {text:?}: {err}")))
}

fn sqlite_order(row: &sqlx::sqlite::SqliteRow) -> Result<Order, StoreError> {
    let id: String = row.try_get(0).map_err(unavailable)?;
    let quote_id: Option<String> = row.try_get(10).map_err(unavailable)?;
    let quote_id = quote_id.as_deref().map(parse_uuid).transpose()?;
    order_from_row(row, parse_uuid(&id)?, quote_id)
}

fn postgres_order(row: &sqlx::postgres::PgRow) -> Result<Order, StoreError> {
    let id: Uuid = row.try_get(0).map_err(unavailable)?;
    let quote_id: Option<Uuid> = row.try_get(10).map_err(unavailable)?;
    order_from_row(row, id, quote_id)
}

#[async_trait]
impl OrderStore for Database {
    async fn create(
        &self,
        order: &Order,
        key: Option<&IdempotencyKey>,
        event: &OutboxEvent,
    ) -> Result<CreateOutcome, StoreError> {
        let key_text = key.map(IdempotencyKey::as_str);
        let price = order.price.as_ref();
        let inserted = match self {
            // One statement, hence one round trip and one implicit transaction: the outbox row
            // is written exactly when the order row is (not on an idempotency-key conflict).
            Database::Postgres(pool) => {
                sqlx::query(
                    "WITH inserted AS (
                         INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at,
                             created_at_ms, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng,
                             idempotency_key, quote_id, price_total, price_currency,
                             multiplier_milli)
                         VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0) AT TIME ZONE 'UTC',
                             $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                         ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                         DO NOTHING
                         RETURNING id)
                     INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic,
                         created_at, status, created_at_ms, traceparent, tracestate)
                     SELECT $16, $17, $18, $19, $20, to_timestamp($21 / 1000.0) AT TIME ZONE 'UTC',
                         'PENDING', $21, $22, $23
                     FROM inserted",
                )
                .bind(order.id)
                .bind(&order.user_id)
                .bind(&order.pickup_h3)
                .bind(&order.dropoff_h3)
                .bind(order.status.as_str())
                .bind(order.created_at_ms)
                .bind(order.pickup.lat())
                .bind(order.pickup.lng())
                .bind(order.dropoff.lat())
                .bind(order.dropoff.lng())
                .bind(key_text)
                .bind(order.quote_id)
                .bind(price.map(|p| p.total))
                .bind(price.map(|p| p.currency.as_str()))
                .bind(price.map(|p| p.multiplier_milli))
                .bind(event.id)
                .bind(event.aggregate_id)
                .bind(&event.aggregate_type)
                .bind(event.payload.as_ref())
                .bind(&event.topic)
                .bind(event.created_at_ms)
                .bind(&event.traceparent)
                .bind(&event.tracestate)
                .execute(pool)
                .await
                .map_err(unavailable)?
                .rows_affected()
                    == 1
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                let inserted = sqlx::query(
                    "INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at,
                         created_at_ms, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng,
                         idempotency_key, quote_id, price_total, price_currency, multiplier_milli)
                     VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', ?6 / 1000.0, 'unixepoch'),
                         ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                     DO NOTHING",
                )
                .bind(order.id.to_string())
                .bind(&order.user_id)
                .bind(&order.pickup_h3)
                .bind(&order.dropoff_h3)
                .bind(order.status.as_str())
                .bind(order.created_at_ms)
                .bind(order.pickup.lat())
                .bind(order.pickup.lng())
                .bind(order.dropoff.lat())
                .bind(order.dropoff.lng())
                .bind(key_text)
                .bind(order.quote_id.map(|id| id.to_string()))
                .bind(price.map(|p| p.total))
                .bind(price.map(|p| p.currency.as_str()))
                .bind(price.map(|p| p.multiplier_milli))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected()
                    == 1;
                if inserted {
                    sqlx::query(
                        "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic,
                             created_at, status, created_at_ms, traceparent, tracestate)
                         VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', ?6 / 1000.0, 'unixepoch'),
                             'PENDING', ?6, ?7, ?8)",
                    )
                    .bind(event.id.to_string())
                    .bind(event.aggregate_id.to_string())
                    .bind(&event.aggregate_type)
                    .bind(event.payload.as_ref())
                    .bind(&event.topic)
                    .bind(event.created_at_ms)
                    .bind(&event.traceparent)
                    .bind(&event.tracestate)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    tx.commit().await.map_err(unavailable)?;
                }
                inserted
            }
        };
        if inserted {
            return Ok(CreateOutcome::Created);
        }
        let key = key.ok_or_else(|| corrupt(format!("order {} was not inserted", order.id)))?;
        match self.find_by_idempotency_key(&order.user_id, key).await? {
            Some(existing) => Ok(CreateOutcome::Existing(existing)),
            None => Err(StoreError::Unavailable(
                "the idempotency key's order vanished; retry".to_owned(),
            )),
        }
    }

    async fn find_by_idempotency_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Order>, StoreError> {
        match self {
            Database::Postgres(pool) => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND idempotency_key = $2"
                );
                let row = sqlx::query(&sql)
                    .bind(user_id)
                    .bind(key.as_str())
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.as_ref().map(postgres_order).transpose()
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ?1 AND idempotency_key = ?2"
                );
                let row = sqlx::query(&sql)
                    .bind(user_id)
                    .bind(key.as_str())
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.as_ref().map(sqlite_order).transpose()
            }
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Order>, StoreError> {
        match self {
            Database::Postgres(pool) => {
                let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.as_ref().map(postgres_order).transpose()
            }
            Database::Sqlite(pool) => {
                let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1");
                let row = sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.as_ref().map(sqlite_order).transpose()
            }
        }
    }
}

#[async_trait]
impl Outbox for Database {
    async fn claim(
        &self,
        relay: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let limit = limit.max(1) as i64;
        let mut claimed: Vec<(i64, OutboxEvent)> = match self {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                sqlx::query(POSTGRES_CLAIM_PLANNER_SETTINGS)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                let rows = sqlx::query(POSTGRES_CLAIM)
                    .persistent(false)
                    .bind(relay)
                    .bind(now_ms)
                    .bind(lease_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
                rows.iter()
                    .map(|row| -> Result<(i64, OutboxEvent), sqlx::Error> {
                        let payload: Vec<u8> = row.try_get(5)?;
                        Ok((
                            row.try_get(0)?,
                            OutboxEvent {
                                id: row.try_get(1)?,
                                aggregate_id: row.try_get(2)?,
                                aggregate_type: row.try_get(3)?,
                                topic: row.try_get(4)?,
                                payload: Bytes::from(payload),
                                created_at_ms: row.try_get(6)?,
                                traceparent: row.try_get(7)?,
                                tracestate: row.try_get(8)?,
                            },
                        ))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|err| corrupt(format!("outbox row: {err}")))?
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(
                    "UPDATE outbox_events
                     SET claimed_by = ?1, claimed_until_ms = ?2 + ?3, attempts = attempts + 1
                     WHERE rowid IN (
                         SELECT e.rowid FROM outbox_events e
                         WHERE e.status = 'PENDING'
                           AND (e.claimed_until_ms IS NULL OR e.claimed_until_ms < ?2)
                           AND NOT EXISTS (
                               SELECT 1 FROM outbox_events p
                               WHERE p.aggregate_id = e.aggregate_id
                                 AND p.status = 'PENDING' AND p.rowid < e.rowid)
                         ORDER BY e.rowid
                         LIMIT ?4)
                     RETURNING rowid, id, aggregate_id, aggregate_type, topic, payload,
                               COALESCE(created_at_ms, 0), traceparent, tracestate",
                )
                .bind(relay)
                .bind(now_ms)
                .bind(lease_ms)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
                let mut events = Vec::with_capacity(rows.len());
                for row in &rows {
                    let read = |err: sqlx::Error| corrupt(format!("outbox row: {err}"));
                    let id: String = row.try_get(1).map_err(read)?;
                    let aggregate_id: String = row.try_get(2).map_err(read)?;
                    let payload: Vec<u8> = row.try_get(5).map_err(read)?;
                    events.push((
                        row.try_get(0).map_err(read)?,
                        OutboxEvent {
                            id: parse_uuid(&id)?,
                            aggregate_id: parse_uuid(&aggregate_id)?,
                            aggregate_type: row.try_get(3).map_err(read)?,
                            topic: row.try_get(4).map_err(read)?,
                            payload: Bytes::from(payload),
                            created_at_ms: row.try_get(6).map_err(read)?,
                            traceparent: row.try_get(7).map_err(read)?,
                            tracestate: row.try_get(8).map_err(read)?,
                        },
                    ));
                }
                events
            }
        };
        // RETURNING does not promise an order.
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, event)| event).collect())
    }

    async fn mark_sent(&self, ids: &[Uuid], now_ms: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Database::Postgres(pool) => {
                sqlx::query(
                    "UPDATE outbox_events SET status = 'SENT', sent_at_ms = $2, claimed_by = NULL
                     WHERE id = ANY($1)",
                )
                .persistent(false)
                .bind(ids)
                .bind(now_ms)
                .execute(pool)
                .await
                .map_err(unavailable)?;
            }
            Database::Sqlite(pool) => {
                for chunk in ids.chunks(500) {
                    let mut update = QueryBuilder::<sqlx::Sqlite>::new(
                        "UPDATE outbox_events SET status = 'SENT', claimed_by = NULL, sent_at_ms = ",
                    );
                    update.push_bind(now_ms).push(" WHERE id IN (");
                    let mut separated = update.separated(", ");
                    for id in chunk {
                        separated.push_bind(id.to_string());
                    }
                    separated.push_unseparated(")");
                    update.build().execute(pool).await.map_err(unavailable)?;
                }
            }
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        let sql = "SELECT COUNT(*) FROM outbox_events WHERE status = 'PENDING'";
        let count: i64 = match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .persistent(false)
                    .fetch_one(pool)
                    .await
            }
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .map_err(unavailable)?;
        Ok(count.max(0) as u64)
    }

    async fn purge_sent(&self, before_ms: i64) -> Result<u64, StoreError> {
        let result = match self {
            Database::Postgres(pool) => {
                sqlx::query("DELETE FROM outbox_events WHERE status = 'SENT' AND sent_at_ms < $1")
                    .persistent(false)
                    .bind(before_ms)
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
            }
            Database::Sqlite(pool) => {
                sqlx::query("DELETE FROM outbox_events WHERE status = 'SENT' AND sent_at_ms < ?1")
                    .bind(before_ms)
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
            }
        };
        result.map_err(unavailable)
    }
}
