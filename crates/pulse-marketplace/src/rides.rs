//! The ride lifecycle: reading a ride, and moving it (start, finish, cancel; the match is
//! [`crate::dispatch`]'s). The rule of each move is decided here, on the order as the store
//! locked it, and written by the store in one unit of work with its outbox event.

use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::{PortError, TenantId};
use pulse_orders::{Order, OrderStatus, AGGREGATE_TYPE};
use pulse_outbox::OutboxEvent;
use pulse_proto::v1::{ride_event::Kind, RideEvent};
use pulse_proto::Message;
use uuid::Uuid;

use crate::model::{Answer, RideStep, TrailPoint};
use crate::ports::{
    Decide, Decision, DriverChange, RidePage, RideParty, RideStore, Transition, TransitionOutcome,
};
use crate::RideTopics;

/// Transitions committed, by the status reached (`to`).
pub const TRANSITIONS_TOTAL: &str = "pulse_ride_transitions_total";

/// Why a ride did not move.
#[derive(Debug, thiserror::Error)]
pub enum RideError {
    /// No such order in the tenant.
    #[error("order {0} not found")]
    NotFound(Uuid),
    /// The order's status does not allow the move.
    #[error("order {order_id} is {}; it cannot become {}", current.as_str(), wanted.as_str())]
    WrongState {
        /// The order.
        order_id: Uuid,
        /// Its status.
        current: OrderStatus,
        /// The status asked for.
        wanted: OrderStatus,
    },
    /// The driver named is not the order's.
    #[error("driver {driver_id} is not the driver of order {order_id}")]
    NotTheDriver {
        /// The order.
        order_id: Uuid,
        /// The driver named.
        driver_id: String,
    },
    /// Dispatch found no available driver.
    #[error("no available driver for order {order_id}: {reason}")]
    NoDriver {
        /// The order.
        order_id: Uuid,
        /// What was tried.
        reason: String,
    },
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] PortError),
}

/// A ride moved, or found where the request wanted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// The order as it is now.
    pub order: Order,
    /// `false` for an idempotent repeat: nothing was written, no event sent.
    pub changed: bool,
}

/// The ride event a transition announces.
pub(crate) fn ride_event(
    topics: &RideTopics,
    order: &Order,
    kind: Kind,
    driver_id: Option<&str>,
    at_ms: i64,
) -> OutboxEvent {
    let price = order.price.as_ref();
    let event = RideEvent {
        order_id: order.id.to_string(),
        kind: kind as i32,
        driver_id: driver_id.unwrap_or_default().to_owned(),
        user_id: order.user_id.clone(),
        timestamp: at_ms,
        fare_minor: price.map_or(0, |price| price.total.amount_minor),
        currency: price.map_or_else(String::new, |price| {
            price.total.currency.as_str().to_owned()
        }),
        pickup_h3: order.pickup_h3.clone(),
    };
    let mut outbox = OutboxEvent::new(
        topics.events.clone(),
        AGGREGATE_TYPE,
        order.id,
        Bytes::from(event.encode_to_vec()),
        at_ms,
    );
    outbox.tenant = order.tenant.clone();
    outbox
}

/// The kind of event announcing a move to `to`.
fn kind_of(to: OrderStatus) -> Kind {
    match to {
        OrderStatus::Matched => Kind::Matched,
        OrderStatus::Started => Kind::Started,
        OrderStatus::Finished => Kind::Finished,
        OrderStatus::Cancelled => Kind::Cancelled,
        OrderStatus::Pending => Kind::Unspecified,
    }
}

/// The rule of every move: `order` may go to `to` (by `driver`, for the moves a driver makes)?
/// A match names its candidates instead (see [`decide_match`]).
/// Repeating the move just made is [`Answer::AlreadyDone`]; only the order's driver may start or
/// finish it; a match claims its driver, and the end of a ride (finished, or cancelled once
/// matched) frees it.
pub(crate) fn decide_move(
    topics: &RideTopics,
    order: &Order,
    to: OrderStatus,
    driver: Option<&str>,
    at_ms: i64,
) -> Decision {
    let drives_it = |driver: Option<&str>| driver.is_some() && driver == order.driver_id.as_deref();
    let by_driver = matches!(to, OrderStatus::Started | OrderStatus::Finished);
    if order.status == to {
        let same_hand = match to {
            OrderStatus::Matched => drives_it(driver),
            _ if by_driver => drives_it(driver),
            _ => true,
        };
        return Decision::Answer(if same_hand {
            Answer::AlreadyDone
        } else if by_driver {
            Answer::NotTheDriver
        } else {
            Answer::WrongState
        });
    }
    if !order.status.can_move_to(to) {
        return Decision::Answer(Answer::WrongState);
    }
    if by_driver && !drives_it(driver) {
        return Decision::Answer(Answer::NotTheDriver);
    }
    let change = match (to, &order.driver_id) {
        (OrderStatus::Matched, _) => match driver {
            Some(driver) => DriverChange::Claim(vec![driver.to_owned()]),
            None => return Decision::Answer(Answer::NotTheDriver),
        },
        (OrderStatus::Finished | OrderStatus::Cancelled, Some(held)) => {
            DriverChange::Release(held.clone())
        }
        _ => DriverChange::Keep,
    };
    apply(topics, to, change, at_ms)
}

/// The rule of a match: a `PENDING` order claims the first available of `candidates`; an order
/// matched already is [`Answer::AlreadyDone`], any other is [`Answer::WrongState`].
pub(crate) fn decide_match(
    topics: &RideTopics,
    order: &Order,
    candidates: Vec<String>,
    at_ms: i64,
) -> Decision {
    match order.status {
        OrderStatus::Pending => apply(
            topics,
            OrderStatus::Matched,
            DriverChange::Claim(candidates),
            at_ms,
        ),
        OrderStatus::Matched => Decision::Answer(Answer::AlreadyDone),
        _ => Decision::Answer(Answer::WrongState),
    }
}

/// The transition to `to`, announced from the order as it is after it.
fn apply(topics: &RideTopics, to: OrderStatus, driver: DriverChange, at_ms: i64) -> Decision {
    let topics = topics.clone();
    Decision::Apply(Transition {
        to,
        at_ms,
        driver,
        announce: Box::new(move |after: &Order| {
            ride_event(
                &topics,
                after,
                kind_of(to),
                after.driver_id.as_deref(),
                at_ms,
            )
        }),
    })
}

/// A ride as the API shows it: the order and the steps it went through.
#[derive(Debug, Clone, PartialEq)]
pub struct Ride {
    /// The order.
    pub order: Order,
    /// Its history, oldest first.
    pub steps: Vec<RideStep>,
}

/// Reads and moves rides.
#[derive(Debug, Clone)]
pub struct RideService {
    store: Arc<dyn RideStore>,
    clock: SharedClock,
    topics: RideTopics,
}

impl RideService {
    /// Rides in `store`, announced on `topics`.
    pub fn new(store: Arc<dyn RideStore>, clock: SharedClock, topics: RideTopics) -> Self {
        Self {
            store,
            clock,
            topics,
        }
    }

    /// The ride `id` of `tenant`, with its history.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Ride>, RideError> {
        let Some(order) = self.store.order(tenant, id).await? else {
            return Ok(None);
        };
        let steps = self.store.steps(tenant, id).await?;
        Ok(Some(Ride { order, steps }))
    }

    /// Moves the ride to `to` (`STARTED` or `FINISHED`, by its driver; `CANCELLED`).
    #[tracing::instrument(name = "rides.move", skip(self, tenant), fields(to = to.as_str()))]
    pub async fn move_to(
        &self,
        tenant: &TenantId,
        id: Uuid,
        to: OrderStatus,
        driver: Option<String>,
    ) -> Result<Moved, RideError> {
        let topics = self.topics.clone();
        let at_ms = self.clock.now_ms();
        let wanted_driver = driver.clone();
        let decide: Decide = Box::new(move |order: &Order| {
            decide_move(&topics, order, to, wanted_driver.as_deref(), at_ms)
        });
        let outcome = self.store.transition(tenant, id, decide).await?;
        settle(id, to, driver, outcome)
    }

    /// A page of `party`'s rides, newest first.
    pub async fn rides(
        &self,
        tenant: &TenantId,
        party: RideParty<'_>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<RidePage, RideError> {
        Ok(self.store.rides(tenant, party, before, limit).await?)
    }

    /// The ride's GPS trail (its driver's pings while on it), oldest first.
    pub async fn trail(
        &self,
        tenant: &TenantId,
        id: Uuid,
        limit: usize,
    ) -> Result<Option<Vec<TrailPoint>>, RideError> {
        if self.store.order(tenant, id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.store.trail(tenant, id, limit).await?))
    }
}

/// A transition's outcome as the caller hears it.
pub(crate) fn settle(
    id: Uuid,
    to: OrderStatus,
    driver: Option<String>,
    outcome: TransitionOutcome,
) -> Result<Moved, RideError> {
    match outcome {
        TransitionOutcome::Applied(order) => {
            metrics::counter!(TRANSITIONS_TOTAL, "to" => to.as_str()).increment(1);
            Ok(Moved {
                order: *order,
                changed: true,
            })
        }
        TransitionOutcome::Answered(Answer::AlreadyDone, order) => Ok(Moved {
            order: *order,
            changed: false,
        }),
        TransitionOutcome::Answered(Answer::WrongState, order) => Err(RideError::WrongState {
            order_id: id,
            current: order.status,
            wanted: to,
        }),
        TransitionOutcome::Answered(Answer::NotTheDriver, _) => Err(RideError::NotTheDriver {
            order_id: id,
            driver_id: driver.unwrap_or_default(),
        }),
        TransitionOutcome::NotFound => Err(RideError::NotFound(id)),
        TransitionOutcome::DriverTaken => Err(RideError::NoDriver {
            order_id: id,
            reason: "the driver was taken by another order".into(),
        }),
    }
}
