//! The ports of the orders domain: where orders are stored, and where locked quote prices are
//! looked up.

use async_trait::async_trait;
use pulse_core::PortResult;
use pulse_outbox::OutboxEvent;
use uuid::Uuid;

use crate::model::{IdempotencyKey, Order, OrderPrice};

/// Result of [`OrderStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The order and its event were committed.
    Created,
    /// The user already placed an order with this idempotency key: here it is.
    Existing(Order),
}

/// Where orders live.
#[async_trait]
pub trait OrderStore: Send + Sync + std::fmt::Debug {
    /// Inserts `order` and `event` in one transaction — unless `(order.user_id, key)` is taken,
    /// in which case nothing is written and the existing order is returned.
    async fn create(
        &self,
        order: &Order,
        key: Option<&IdempotencyKey>,
        event: &OutboxEvent,
    ) -> PortResult<CreateOutcome>;

    /// The order `user_id` placed with idempotency key `key`, if any.
    async fn find_by_idempotency_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
    ) -> PortResult<Option<Order>>;

    /// The order with `id`.
    async fn get(&self, id: Uuid) -> PortResult<Option<Order>>;
}

/// A price locked by a quote, as an order pays it.
#[derive(Debug, Clone, PartialEq)]
pub struct LockedPrice {
    /// The pickup cell the quote was given for.
    pub h3: String,
    /// What the order pays.
    pub price: OrderPrice,
}

/// Where prices locked by quotes are looked up (the surge domain's quotes, in the binary).
#[async_trait]
pub trait PriceLocks: Send + Sync + std::fmt::Debug {
    /// The price `quote_id` locked, unless it is unknown or expired.
    async fn locked(&self, quote_id: &Uuid) -> PortResult<Option<LockedPrice>>;
}
