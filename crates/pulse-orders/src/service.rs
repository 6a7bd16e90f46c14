//! Placing and reading orders.

use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::{PortError, TenantId};
use pulse_outbox::OutboxEvent;
use pulse_proto::v1::OrderCreatedEvent;
use pulse_proto::Message;
use uuid::Uuid;

use crate::model::{IdempotencyKey, NewOrder, Order, OrderStatus};
use crate::ports::{CreateOutcome, Funds, OrderStore, PriceLocks};
use crate::OrderTopics;

/// The aggregate type of order events (`pulse.aggregate_type`).
pub const AGGREGATE_TYPE: &str = "ORDER";

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
    /// The quote was given to another user.
    #[error("quote {0} was given to another user")]
    QuoteNotYours(Uuid),
    /// Another order already paid with this quote.
    #[error("quote {0} was already used by another order; ask for a new quote")]
    QuoteUsed(Uuid),
    /// The rider's wallet cannot cover the fare (the wallet requires funds).
    #[error("the fare of {fare} exceeds the available balance of {available_minor} in {user_id}'s wallet; top it up first")]
    InsufficientFunds {
        /// The rider.
        user_id: String,
        /// The order's fare.
        fare: pulse_core::money::Money,
        /// What the wallet has available, minor units.
        available_minor: i64,
    },
    /// The idempotency key was used with a different request.
    #[error("Idempotency-Key {0:?} was already used with a different request")]
    IdempotencyConflict(String),
    /// A backend failed; [`PortError::is_retryable`] tells whether a retry may succeed.
    #[error(transparent)]
    Backend(#[from] PortError),
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
    prices: Arc<dyn PriceLocks>,
    clock: SharedClock,
    topics: OrderTopics,
    funds: Option<Arc<dyn Funds>>,
}

impl OrderService {
    /// A service over `store`, honouring the prices `prices` locked, announcing orders on
    /// `topics`.
    pub fn new(
        store: Arc<dyn OrderStore>,
        prices: Arc<dyn PriceLocks>,
        clock: SharedClock,
        topics: OrderTopics,
    ) -> Self {
        Self {
            store,
            prices,
            clock,
            topics,
            funds: None,
        }
    }

    /// The same service refusing an order whose fare `funds` says the rider cannot pay.
    pub fn requiring_funds(self, funds: Arc<dyn Funds>) -> Self {
        Self {
            funds: Some(funds),
            ..self
        }
    }

    /// Places `request`: the order and its `OrderCreatedEvent` are committed together before
    /// this returns. The event carries the current trace context, so the relay and the engine
    /// continue the caller's trace.
    #[tracing::instrument(name = "orders.place", skip_all)]
    pub async fn place(
        &self,
        tenant: &TenantId,
        request: NewOrder,
        key: Option<IdempotencyKey>,
    ) -> Result<Placed, OrderError> {
        // A retry is answered from the stored order, even after its quote expired.
        if let Some(key) = &key {
            if let Some(existing) = self
                .store
                .find_by_idempotency_key(tenant, &request.user_id, key)
                .await?
            {
                return Self::replay(existing, &request, key);
            }
        }
        let pickup_h3 = request.pickup.cell().to_string();
        let price = match request.quote_id {
            Some(quote_id) => {
                let locked = self
                    .prices
                    .locked(tenant, &quote_id)
                    .await?
                    .ok_or(OrderError::QuoteUnavailable(quote_id))?;
                if locked
                    .user_id
                    .as_ref()
                    .is_some_and(|user| *user != request.user_id)
                {
                    return Err(OrderError::QuoteNotYours(quote_id));
                }
                if locked.h3 != pickup_h3 {
                    return Err(OrderError::QuoteMismatch {
                        quote_id,
                        quoted: locked.h3,
                        requested: pickup_h3,
                    });
                }
                locked.price
            }
            None => {
                self.prices
                    .fresh(tenant, request.pickup, request.dropoff)
                    .await
            }
        };
        if let Some(funds) = &self.funds {
            let available_minor = funds
                .available(tenant, &request.user_id, price.total.currency)
                .await?;
            if available_minor < price.total.amount_minor {
                return Err(OrderError::InsufficientFunds {
                    user_id: request.user_id.clone(),
                    fare: price.total,
                    available_minor,
                });
            }
        }
        let order = Order {
            id: Uuid::now_v7(),
            tenant: tenant.clone(),
            user_id: request.user_id.clone(),
            pickup: request.pickup,
            dropoff: request.dropoff,
            pickup_h3,
            dropoff_h3: request.dropoff.cell().to_string(),
            status: OrderStatus::Pending,
            created_at_ms: self.clock.now_ms(),
            quote_id: request.quote_id,
            price: Some(price),
            vehicle_type: request.vehicle_type.clone(),
            driver_id: None,
            no_driver: None,
        };
        let event = OrderCreatedEvent {
            order_id: order.id.to_string(),
            pickup_h3: order.pickup_h3.clone(),
            user_id: order.user_id.clone(),
            timestamp: order.created_at_ms,
        };
        let mut outbox = OutboxEvent::new(
            self.topics.created.clone(),
            AGGREGATE_TYPE,
            order.id,
            Bytes::from(event.encode_to_vec()),
            order.created_at_ms,
        );
        outbox.tenant = tenant.clone();
        let created = match self.store.create(&order, key.as_ref(), &outbox).await {
            Err(PortError::Conflict(_)) if order.quote_id.is_some() => {
                return Err(OrderError::QuoteUsed(
                    order.quote_id.expect("checked just above"),
                ))
            }
            other => other?,
        };
        match created {
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
                Self::replay(*existing, &request, &key)
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

    /// The order `id`, if it exists and belongs to `tenant`.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Order>, OrderError> {
        Ok(self.store.get(tenant, id).await?)
    }
}
