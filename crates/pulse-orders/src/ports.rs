//! The ports of the orders domain: where orders are stored, and where locked quote prices are
//! looked up.

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};
use pulse_geo::Point;
use pulse_outbox::OutboxEvent;
use uuid::Uuid;

use crate::model::{IdempotencyKey, Order, OrderPrice};

/// Result of [`OrderStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The order and its event were committed.
    Created,
    /// The user already placed an order with this idempotency key: here it is.
    Existing(Box<Order>),
}

/// Where orders live.
#[async_trait]
pub trait OrderStore: Send + Sync + std::fmt::Debug {
    /// Inserts `order` and `event` in one transaction — unless `(order.tenant, order.user_id,
    /// key)` is taken, in which case nothing is written and the existing order is returned.
    /// An order with a quote redeems it in the same transaction: a quote already redeemed by
    /// another order of the tenant fails with [`pulse_core::PortError::Conflict`] and writes
    /// nothing.
    async fn create(
        &self,
        order: &Order,
        key: Option<&IdempotencyKey>,
        event: &OutboxEvent,
    ) -> PortResult<CreateOutcome>;

    /// The order `user_id` of `tenant` placed with idempotency key `key`, if any.
    async fn find_by_idempotency_key(
        &self,
        tenant: &TenantId,
        user_id: &str,
        key: &IdempotencyKey,
    ) -> PortResult<Option<Order>>;

    /// The order with `id`, if it belongs to `tenant`.
    async fn get(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<Order>>;
}

/// A price locked by a quote, as an order pays it.
#[derive(Debug, Clone, PartialEq)]
pub struct LockedPrice {
    /// The pickup cell the quote was given for.
    pub h3: String,
    /// What the order pays.
    pub price: OrderPrice,
    /// The user the quote was given to, when the quote named one: only that user may pay it.
    pub user_id: Option<String>,
}

/// Where prices locked by quotes are looked up, and fresh ones made (the surge domain's quotes,
/// in the binary).
#[async_trait]
pub trait PriceLocks: Send + Sync + std::fmt::Debug {
    /// The price `quote_id` locked for `tenant`, unless it is unknown (to that tenant) or
    /// expired.
    async fn locked(&self, tenant: &TenantId, quote_id: &Uuid) -> PortResult<Option<LockedPrice>>;

    /// The price of a trip from `pickup` to `dropoff` for `tenant` now, with the surge in force
    /// (an order placed without a quote pays it).
    async fn fresh(&self, tenant: &TenantId, pickup: Point, dropoff: Point) -> OrderPrice;
}

/// What a rider can spend (the wallet's available balance), for placement to refuse a fare the
/// wallet cannot cover. The hold at the match is what guarantees it; this only answers early.
#[async_trait]
pub trait Funds: Send + Sync + std::fmt::Debug {
    /// `user_id`'s available balance in `currency`, minor units (0 for a rider without a wallet).
    async fn available(
        &self,
        tenant: &TenantId,
        user_id: &str,
        currency: pulse_core::money::Currency,
    ) -> PortResult<i64>;
}
