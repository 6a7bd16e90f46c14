//! The orders domain's [`OrderStore`] on SQL: the order row and its outbox row in one unit of
//! work.

use pulse_core::{Currency, Money, PortError, PortResult, TenantId};
use pulse_geo::Point;
use pulse_orders::{CreateOutcome, IdempotencyKey, Order, OrderPrice, OrderStatus, OrderStore};
use pulse_outbox::OutboxEvent;
use uuid::Uuid;

use crate::sql::{PerDialect, Sql, SqlRow};
use crate::{outbox, Backend, Database};

/// The columns [`order_from_row`] reads, in its order.
pub(crate) const ORDER_COLUMNS: &str =
    "id, user_id, pickup_h3, dropoff_h3, status, created_at_ms, \
     pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, quote_id, price_total, price_currency, \
     multiplier_milli, tenant, vehicle_type, driver_id, no_driver_reason";

/// The order's `INSERT` (`$1`…`$17`), doing nothing when the user's idempotency key is taken
/// in the tenant.
fn insert_order(backend: Backend) -> String {
    format!(
        "INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at,
             created_at_ms, pickup_lat, pickup_lng, dropoff_lat, dropoff_lng,
             idempotency_key, quote_id, price_total, price_currency, multiplier_milli, tenant,
             vehicle_type)
         VALUES ($1, $2, $3, $4, $5, {}, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (tenant, user_id, idempotency_key) WHERE idempotency_key IS NOT NULL
         DO NOTHING",
        backend.timestamp_from_ms("$6")
    )
}

/// The redemption of the order's quote (`$1` tenant, `$2` quote, `$3` order): fails on the
/// primary key when another order of the tenant redeemed it.
const REDEEM_QUOTE: &str =
    "INSERT INTO quote_redemptions (tenant, quote_id, order_id) VALUES ($1, $2, $3)";

static INSERT: PerDialect = PerDialect::new(insert_order);

/// On PostgreSQL the order, its quote's redemption and its outbox row go in one statement — one
/// round trip, its own implicit transaction — instead of `BEGIN`, three `INSERT`s, `COMMIT`:
/// the redemption and the outbox row are written for each order row the first `INSERT`
/// returns, none when the key was taken. A redeemed quote fails the whole statement.
static INSERT_WITH_EVENT: PerDialect = PerDialect::new(|backend| {
    format!(
        "WITH inserted AS ({} RETURNING id, tenant, quote_id),
         redeemed AS (INSERT INTO quote_redemptions (tenant, quote_id, order_id)
             SELECT tenant, quote_id, id FROM inserted WHERE quote_id IS NOT NULL)
         {}",
        insert_order(backend),
        outbox::insert_for_each_row_of(backend, "inserted", 18)
    )
});

pub(crate) fn corrupt(id: Uuid, err: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("order {id}: {err}"))
}

/// The order in a row of [`ORDER_COLUMNS`].
pub(crate) fn order_from_row(row: &SqlRow) -> PortResult<Order> {
    let id = row.uuid(0)?;
    let point = |lat: usize, lng: usize| -> PortResult<Point> {
        Point::new(row.f64(lat)?, row.f64(lng)?).map_err(|err| corrupt(id, err))
    };
    let status = row.text(4)?;
    let price = match (row.opt_i64(11)?, row.opt_text(12)?, row.opt_i32(13)?) {
        (Some(total), Some(currency), Some(multiplier_milli)) => Some(OrderPrice {
            total: Money::new(
                total,
                Currency::parse(&currency).map_err(|err| corrupt(id, err))?,
            ),
            multiplier_milli,
        }),
        _ => None,
    };
    Ok(Order {
        id,
        tenant: TenantId::parse(&row.text(14)?).map_err(|err| corrupt(id, err))?,
        user_id: row.text(1)?,
        pickup_h3: row.text(2)?,
        dropoff_h3: row.text(3)?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| corrupt(id, format!("status {status:?}")))?,
        created_at_ms: row.i64(5)?,
        pickup: point(6, 7)?,
        dropoff: point(8, 9)?,
        quote_id: row.opt_uuid(10)?,
        price,
        vehicle_type: row.opt_text(15)?,
        driver_id: row.opt_text(16)?,
        no_driver: row.opt_text(17)?,
    })
}

fn by_idempotency_key(tenant: &TenantId, user_id: &str, key: &str) -> Sql {
    Sql::new(format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE tenant = $1 AND user_id = $2 AND idempotency_key = $3"
    ))
    .bind(tenant.as_str())
    .bind(user_id)
    .bind(key)
}

#[async_trait::async_trait]
impl OrderStore for Database {
    async fn create(
        &self,
        order: &Order,
        key: Option<&IdempotencyKey>,
        event: &OutboxEvent,
    ) -> PortResult<CreateOutcome> {
        let price = order.price.as_ref();
        let insert = Sql::new(INSERT.get(self.backend()))
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
            .bind(key.map(IdempotencyKey::as_str))
            .bind(order.quote_id)
            .bind(price.map(|p| p.total.amount_minor))
            .bind(price.map(|p| p.total.currency.as_str()))
            .bind(price.map(|p| p.multiplier_milli))
            .bind(order.tenant.as_str())
            .bind(order.vehicle_type.as_deref());
        let existing =
            key.map(|key| by_idempotency_key(&order.tenant, &order.user_id, key.as_str()));
        let redeem = order.quote_id.map(|quote_id| {
            Sql::new(REDEEM_QUOTE)
                .bind(order.tenant.as_str())
                .bind(quote_id)
                .bind(order.id)
        });
        if self.backend() == Backend::Postgres {
            let insert = outbox::bind(
                insert.with_text(INSERT_WITH_EVENT.get(Backend::Postgres)),
                event,
            );
            if self.execute(insert).await? == 1 {
                return Ok(CreateOutcome::Created);
            }
            let existing = existing.ok_or_else(|| corrupt(order.id, "not inserted, and no key"))?;
            return match self.fetch_optional(&existing).await? {
                Some(row) => Ok(CreateOutcome::Existing(Box::new(order_from_row(&row)?))),
                None => Err(PortError::unavailable(
                    "store",
                    "the idempotency key's order is not visible yet; retry",
                )),
            };
        }
        let event = event.clone();
        let order_id = order.id;
        self.write(move |mut tx| {
            Box::pin(async move {
                if tx.execute(&insert).await? == 1 {
                    if let Some(redeem) = &redeem {
                        tx.execute(redeem).await?;
                    }
                    outbox::enqueue(&mut tx, std::slice::from_ref(&event)).await?;
                    return Ok(CreateOutcome::Created);
                }
                // The key is taken: its order is committed (the unique index saw it), so it
                // reads back in this same transaction.
                let existing =
                    existing.ok_or_else(|| corrupt(order_id, "not inserted, and no key"))?;
                match tx.fetch_optional(&existing).await? {
                    Some(row) => Ok(CreateOutcome::Existing(Box::new(order_from_row(&row)?))),
                    None => Err(PortError::unavailable(
                        "store",
                        "the idempotency key's order is not visible yet; retry",
                    )),
                }
            })
        })
        .await
    }

    async fn find_by_idempotency_key(
        &self,
        tenant: &TenantId,
        user_id: &str,
        key: &IdempotencyKey,
    ) -> PortResult<Option<Order>> {
        let row = self
            .fetch_optional(&by_idempotency_key(tenant, user_id, key.as_str()))
            .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<Order>> {
        let sql = Sql::new(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant.as_str());
        let row = self.fetch_optional(&sql).await?;
        row.as_ref().map(order_from_row).transpose()
    }
}
