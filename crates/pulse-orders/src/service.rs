//! Placing and reading orders.

use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_proto::v1::OrderCreatedEvent;
use pulse_proto::Message;
use pulse_surge::engine::DEMAND_TOPIC;
use pulse_surge::quotes::QuoteService;
use pulse_trace::TraceContext;
use uuid::Uuid;

use crate::model::{IdempotencyKey, NewOrder, Order, OrderPrice, OrderStatus, OutboxEvent};
use crate::ports::{CreateOutcome, OrderStore, StoreError};

/// Orders accepted (seed metric name).
pub const ORDERS_PLACED_TOTAL: &str = "orders_placed_total";

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The quote id is unknown or expired.
    #[error("quote {0} is unknown or expired; ask for a new quote")]
    QuoteUnavailable(Uuid),
    /// The quote was for another pickup cell.
    #[error("quote {quote_id} was given for cell {quoted}, not for this pickup ({requested})")]
    QuoteMismatch {
        /// The quote.
        quote_id: Uuid,
        /// Its cell.
        quoted: String,
        /// The order's pickup cell.
        requested: String,
    },
    /// The idempotency key was used with a different request.
    #[error("Idempotency-Key {0:?} was already used with a different request")]
    IdempotencyConflict(String),
    /// A backend failed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for OrderError {
    fn from(err: StoreError) -> Self {
        OrderError::Unavailable(err.to_string())
    }
}

/// A placed order and whether it was placed earlier under the same idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// `true` when this answers a retry.
    pub replayed: bool,
}

/// Places and reads orders.
#[derive(Debug, Clone)]
pub struct OrderService {
    store: Arc<dyn OrderStore>,
    quotes: QuoteService,
    clock: SharedClock,
}

impl OrderService {
    /// A service over `store`, honouring quotes locked by `quotes`.
    pub fn new(store: Arc<dyn OrderStore>, quotes: QuoteService, clock: SharedClock) -> Self {
        Self {
            store,
            quotes,
            clock,
        }
    }

    /// Places `request`: the order and its `OrderCreatedEvent` are committed together before
    /// this returns. The event carries the current trace context, so the relay and the engine
    /// continue the caller's trace.
    #[tracing::instrument(name = "orders.place", skip_all)]
    pub async fn place(
        &self,
        request: NewOrder,
        key: Option<IdempotencyKey>,
    ) -> Result<Placed, OrderError> {
        // A retry is answered from the stored order, even after its quote expired.
        if let Some(key) = &key {
            if let Some(existing) = self
                .store
                .find_by_idempotency_key(&request.user_id, key)
                .await?
            {
                return Self::replay(existing, &request, key);
            }
        }
        let pickup_h3 = request.pickup.cell().to_string();
        let price = match request.quote_id {
            Some(quote_id) => {
                let quote = self
                    .quotes
                    .locked(&quote_id)
                    .await
                    .map_err(|err| OrderError::Unavailable(err.to_string()))?
                    .ok_or(OrderError::QuoteUnavailable(quote_id))?;
                if quote.h3 != pickup_h3 {
                    return Err(OrderError::QuoteMismatch {
                        quote_id,
                        quoted: quote.h3,
                        requested: pickup_h3,
                    });
                }
                Some(OrderPrice {
                    total: quote.price.total,
                    currency: quote.price.currency,
                    multiplier_milli: (quote.multiplier * 1_000.0).round() as i32,
                })
            }
            None => None,
        };
        let order = Order {
            id: Uuid::now_v7(),
            user_id: request.user_id.clone(),
            pickup: request.pickup,
            dropoff: request.dropoff,
            pickup_h3,
            dropoff_h3: request.dropoff.cell().to_string(),
            status: OrderStatus::Pending,
            created_at_ms: self.clock.now_ms(),
            quote_id: request.quote_id,
            price,
        };
        let event = OrderCreatedEvent {
            order_id: order.id.to_string(),
            pickup_h3: order.pickup_h3.clone(),
            user_id: order.user_id.clone(),
            timestamp: order.created_at_ms,
        };
        let trace = TraceContext::current();
        let outbox = OutboxEvent {
            id: Uuid::now_v7(),
            aggregate_id: order.id,
            aggregate_type: "ORDER".to_owned(),
            topic: DEMAND_TOPIC.to_owned(),
            payload: Bytes::from(event.encode_to_vec()),
            created_at_ms: order.created_at_ms,
            traceparent: trace.as_ref().map(|trace| trace.traceparent.clone()),
            tracestate: trace.and_then(|trace| trace.tracestate),
        };
        match self.store.create(&order, key.as_ref(), &outbox).await? {
            CreateOutcome::Created => {
                metrics::counter!(ORDERS_PLACED_TOTAL).increment(1);
                Ok(Placed {
                    order,
                    replayed: false,
                })
            }
            CreateOutcome::Existing(existing) => {
                // Lost a race with a concurrent retry carrying the same key.
                let key = key.expect("an existing order is only reported for a key");
                Self::replay(existing, &request, &key)
            }
        }
    }

    fn replay(
        existing: Order,
        request: &NewOrder,
        key: &IdempotencyKey,
    ) -> Result<Placed, OrderError> {
        if existing.matches(request) {
            Ok(Placed {
                order: existing,
                replayed: true,
            })
        } else {
            Err(OrderError::IdempotencyConflict(key.as_str().to_owned()))
        }
    }

    /// The order `id`, if it exists.
    pub async fn get(&self, id: Uuid) -> Result<Option<Order>, OrderError> {
        Ok(self.store.get(id).await?)
    }
}
