//! The orders domain, wired: its store is the SQL database, and the prices it honours are the
//! ones the surge domain's quotes locked.

use std::sync::Arc;

use async_trait::async_trait;
use pulse_core::clock::SharedClock;
use pulse_core::{PortResult, TenantId};
use pulse_geo::Point;
use pulse_orders::{LockedPrice, OrderPrice, OrderService, OrderTopics, PriceLocks};
use pulse_store::Database;
use pulse_surge::quotes::{Quote, QuoteService};
use uuid::Uuid;

/// The surge domain's quotes, as the price locks orders pay.
#[derive(Debug, Clone)]
pub struct QuotedPrices(pub QuoteService);

#[async_trait]
impl PriceLocks for QuotedPrices {
    async fn locked(&self, tenant: &TenantId, quote_id: &Uuid) -> PortResult<Option<LockedPrice>> {
        let quote = self.0.locked(tenant, quote_id).await?;
        Ok(quote.map(|quote| LockedPrice {
            price: price_of(&quote),
            h3: quote.h3,
            user_id: quote.user_id,
        }))
    }

    async fn fresh(&self, tenant: &TenantId, pickup: Point, dropoff: Point) -> OrderPrice {
        price_of(&self.0.unlocked(tenant, None, pickup, Some(dropoff)).await)
    }
}

/// What an order pays for `quote`.
fn price_of(quote: &Quote) -> OrderPrice {
    OrderPrice {
        total: quote.price.total,
        multiplier_milli: (quote.multiplier * 1_000.0).round() as i32,
    }
}

/// The orders domain's `/api/v1` routes, bodies within `body`.
pub fn router(
    orders: OrderService,
    backend_timeout: std::time::Duration,
    body: pulse_http::BodyLimits,
) -> axum::Router {
    pulse_http::api::orders_router(pulse_http::api::OrdersApi { orders }, backend_timeout, body)
}

/// The order service on `store`, paying prices `quotes` locked, announcing orders on the
/// topics under `prefix`.
pub fn service(
    store: &Database,
    quotes: QuoteService,
    clock: SharedClock,
    prefix: &str,
) -> OrderService {
    OrderService::new(
        Arc::new(store.clone()),
        Arc::new(QuotedPrices(quotes)),
        clock,
        OrderTopics::with_prefix(prefix),
    )
}
