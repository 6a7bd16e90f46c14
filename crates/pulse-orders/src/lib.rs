//! Orders domain: placing an order durably with an idempotency key, and the transactional outbox
//! that carries its `OrderCreatedEvent` to the log.
//!
//! This crate defines its storage ports ([`OrderStore`], [`Outbox`]); `pulse-store` implements
//! them for PostgreSQL and SQLite. Invariants:
//! * the order row and its outbox row are written in **one** transaction, and the client hears
//!   about the order only after that commit;
//! * `(user_id, idempotency key)` identifies one order forever: a retry with the same body gets the
//!   original order back, a different body is refused;
//! * the relay marks an outbox row sent only after the log acknowledged it, and never publishes an
//!   aggregate's event while an earlier event of the same aggregate is still pending, so events of
//!   one order are never reordered, whatever the number of relays.

mod model;
mod ports;
pub mod relay;
mod service;

pub use model::{
    IdempotencyKey, NewOrder, Order, OrderPrice, OrderStatus, OutboxEvent, ValidationError,
    MAX_IDEMPOTENCY_KEY_CHARS, MAX_USER_ID_CHARS,
};
pub use ports::{CreateOutcome, OrderStore, Outbox, StoreError};
pub use service::{OrderError, OrderService, Placed, ORDERS_PLACED_TOTAL};
