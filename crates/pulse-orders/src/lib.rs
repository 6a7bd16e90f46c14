//! Orders domain: placing an order durably with an idempotency key, announced on the log through
//! the shared transactional outbox (`pulse-outbox`).
//!
//! This crate defines its ports ([`OrderStore`], [`PriceLocks`]); `pulse-store` implements the
//! store for PostgreSQL and SQLite, and the binary adapts the surge domain's quotes as the price
//! locks. Invariants:
//! * the order row and its outbox row are written in **one** transaction, and the client hears
//!   about the order only after that commit;
//! * `(user_id, idempotency key)` identifies one order forever: a retry with the same body gets the
//!   original order back, a different body is refused;
//! * every order gets its fare at placement: the locked quote's price when it names a quote, else
//!   a fresh quote's. The ride lifecycle after placement is the marketplace's
//!   (`pulse-marketplace`); [`OrderStatus`] states which moves it may make.

mod model;
mod ports;
mod service;

use pulse_core::log::TopicSpec;

pub use model::{
    is_hidden_or_control, validate_user_id, validate_vehicle_type, IdempotencyKey, NewOrder, Order,
    OrderPrice, OrderStatus, ValidationError, MAX_IDEMPOTENCY_KEY_CHARS, MAX_USER_ID_CHARS,
    MAX_VEHICLE_TYPE_CHARS,
};
pub use ports::{CreateOutcome, Funds, LockedPrice, OrderStore, PriceLocks};
pub use service::{OrderError, OrderService, Placed, AGGREGATE_TYPE, ORDERS_PLACED_TOTAL};

/// `OrderCreatedEvent`s, one per accepted order, keyed by order id (the seed's contract).
pub const ORDER_CREATED: TopicSpec = TopicSpec {
    name: "demand.orders",
    carries: "OrderCreatedEvent, one per accepted order, keyed by order id",
};

/// The topics the orders domain writes to.
pub const TOPICS: &[TopicSpec] = &[ORDER_CREATED];

/// The topic names of one deployment (prefix applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTopics {
    /// Where [`ORDER_CREATED`] goes.
    pub created: String,
}

impl OrderTopics {
    /// The topics under `prefix` (empty: the contract names).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            created: ORDER_CREATED.named(prefix),
        }
    }
}
