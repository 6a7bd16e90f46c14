//! Storage ports of the orders domain.

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{IdempotencyKey, Order, OutboxEvent};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is down or timed out; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

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
    ) -> Result<CreateOutcome, StoreError>;

    /// The order `user_id` placed with idempotency key `key`, if any.
    async fn find_by_idempotency_key(
        &self,
        user_id: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Order>, StoreError>;

    /// The order with `id`.
    async fn get(&self, id: Uuid) -> Result<Option<Order>, StoreError>;
}

/// The outbox, as the relay sees it.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Leases up to `limit` pending events to `relay` for `lease_ms`, oldest first. An event is
    /// leased only if it is the oldest pending event of its aggregate and no live lease holds it,
    /// so a crashed relay's events are retried after the lease and never overtaken.
    async fn claim(
        &self,
        relay: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks events sent (after the log acknowledged them).
    async fn mark_sent(&self, ids: &[Uuid], now_ms: i64) -> Result<(), StoreError>;

    /// Number of events not yet sent.
    async fn backlog(&self) -> Result<u64, StoreError>;

    /// Deletes sent events older than `before_ms`; returns how many.
    async fn purge_sent(&self, before_ms: i64) -> Result<u64, StoreError>;
}
