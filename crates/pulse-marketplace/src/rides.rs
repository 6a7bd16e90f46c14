//! The ride lifecycle: reading a ride, and moving it (start, finish, cancel; the match is
//! [`crate::dispatch`]'s). The rule of each move is decided here, on the order as the store
//! locked it, and written by the store in one unit of work with its outbox event.

use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::{PortError, TenantId};
use pulse_orders::{Order, OrderStatus, AGGREGATE_TYPE};
use pulse_outbox::OutboxEvent;
use pulse_proto::v1::{ride_event::Kind, wallet_transaction, RideEvent, WalletTransaction};
use pulse_proto::Message;
use uuid::Uuid;

use crate::model::{Answer, RideStep, TrailPoint};
use crate::ports::{
    Decide, Decision, DriverChange, MoneyChange, RidePage, RideParty, RideStore, Transition,
    TransitionOutcome,
};
use crate::RideRules;

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
    /// The rider's wallet cannot cover the fare (`wallet.require_funds`).
    #[error("order {order_id}: the fare of {fare} exceeds the rider's available balance of {available_minor}")]
    InsufficientFunds {
        /// The order.
        order_id: Uuid,
        /// Its fare.
        fare: pulse_core::money::Money,
        /// What the wallet had available, minor units.
        available_minor: i64,
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
    topics: &RideRules,
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

/// The payment a finished ride asks the `wallet` processor for: post its hold.
pub(crate) fn payment_event(rules: &RideRules, order: &Order, at_ms: i64) -> Option<OutboxEvent> {
    let price = order.price.as_ref()?;
    let event = WalletTransaction {
        order_id: order.id.to_string(),
        kind: wallet_transaction::Kind::PostHold as i32,
        user_id: order.user_id.clone(),
        driver_id: order.driver_id.clone().unwrap_or_default(),
        amount_minor: price.total.amount_minor,
        currency: price.total.currency.as_str().to_owned(),
        timestamp: at_ms,
    };
    let mut outbox = OutboxEvent::new(
        rules.payments.clone(),
        AGGREGATE_TYPE,
        order.id,
        Bytes::from(event.encode_to_vec()),
        at_ms,
    );
    outbox.tenant = order.tenant.clone();
    Some(outbox)
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
    topics: &RideRules,
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
    apply(topics, order, to, change, at_ms)
}

/// The rule of a match: a `PENDING` order claims the first available of `candidates`; an order
/// matched already is [`Answer::AlreadyDone`], any other is [`Answer::WrongState`].
pub(crate) fn decide_match(
    topics: &RideRules,
    order: &Order,
    candidates: Vec<String>,
    at_ms: i64,
) -> Decision {
    match order.status {
        OrderStatus::Pending => apply(
            topics,
            order,
            OrderStatus::Matched,
            DriverChange::Claim(candidates),
            at_ms,
        ),
        OrderStatus::Matched => Decision::Answer(Answer::AlreadyDone),
        _ => Decision::Answer(Answer::WrongState),
    }
}

/// The transition of `order` to `to`, announced from the order as it is after it. The money
/// follows the ride: a priced match holds its fare, a cancellation voids any hold, a finish
/// sends its payment.
fn apply(
    rules: &RideRules,
    order: &Order,
    to: OrderStatus,
    driver: DriverChange,
    at_ms: i64,
) -> Decision {
    let rules = rules.clone();
    let money = match to {
        OrderStatus::Matched if order.price.is_some() => MoneyChange::Hold {
            require_funds: rules.require_funds,
        },
        OrderStatus::Cancelled if order.status == OrderStatus::Matched => MoneyChange::Void,
        _ => MoneyChange::Keep,
    };
    Decision::Apply(Transition {
        to,
        at_ms,
        driver,
        money,
        announce: Box::new(move |after: &Order| {
            let mut events = vec![ride_event(
                &rules,
                after,
                kind_of(to),
                after.driver_id.as_deref(),
                at_ms,
            )];
            if to == OrderStatus::Finished {
                events.extend(payment_event(&rules, after, at_ms));
            }
            events
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
    topics: RideRules,
}

impl RideService {
    /// Rides in `store`, announced on `topics`.
    pub fn new(store: Arc<dyn RideStore>, clock: SharedClock, topics: RideRules) -> Self {
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
        TransitionOutcome::InsufficientFunds {
            fare,
            available_minor,
        } => Err(RideError::InsufficientFunds {
            order_id: id,
            fare,
            available_minor,
        }),
        TransitionOutcome::DriverTaken => Err(RideError::NoDriver {
            order_id: id,
            reason: "the driver was taken by another order".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::TenantId;
    use pulse_geo::Point;
    use pulse_orders::{Order, OrderStatus};

    use super::*;

    fn order(status: OrderStatus, driver: Option<&str>) -> Order {
        let point = Point::new(52.52, 13.40).expect("point");
        Order {
            id: Uuid::now_v7(),
            tenant: TenantId::default_tenant(),
            user_id: "rider".into(),
            pickup: point,
            dropoff: point,
            pickup_h3: point.cell().to_string(),
            dropoff_h3: point.cell().to_string(),
            status,
            created_at_ms: 1,
            quote_id: None,
            price: None,
            vehicle_type: None,
            driver_id: driver.map(str::to_owned),
            no_driver: None,
        }
    }

    /// What a rule decided, without its event.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Apply(OrderStatus, DriverChange),
        Answer(Answer),
    }

    fn seen(decision: Decision) -> Seen {
        match decision {
            Decision::Apply(transition) => Seen::Apply(transition.to, transition.driver),
            Decision::Answer(answer) => Seen::Answer(answer),
        }
    }

    fn decide(from: OrderStatus, held: Option<&str>, to: OrderStatus, by: Option<&str>) -> Seen {
        let topics = RideRules::with_prefix("");
        seen(decide_move(&topics, &order(from, held), to, by, 10))
    }

    #[test]
    fn a_driver_starts_and_finishes_only_its_own_ride_and_the_end_frees_it() {
        use OrderStatus::*;
        assert_eq!(
            decide(Matched, Some("d1"), Started, Some("d1")),
            Seen::Apply(Started, DriverChange::Keep)
        );
        assert_eq!(
            decide(Started, Some("d1"), Finished, Some("d1")),
            Seen::Apply(Finished, DriverChange::Release("d1".into()))
        );
        for (from, to) in [(Matched, Started), (Started, Finished)] {
            assert_eq!(
                decide(from, Some("d1"), to, Some("d2")),
                Seen::Answer(Answer::NotTheDriver),
                "{from:?} -> {to:?} by another driver"
            );
            assert_eq!(
                decide(from, Some("d1"), to, None),
                Seen::Answer(Answer::NotTheDriver),
                "{from:?} -> {to:?} by nobody"
            );
        }
    }

    #[test]
    fn a_cancel_frees_a_matched_driver_and_a_pending_order_has_none_to_free() {
        use OrderStatus::*;
        assert_eq!(
            decide(Matched, Some("d1"), Cancelled, None),
            Seen::Apply(Cancelled, DriverChange::Release("d1".into()))
        );
        assert_eq!(
            decide(Pending, None, Cancelled, None),
            Seen::Apply(Cancelled, DriverChange::Keep)
        );
    }

    #[test]
    fn repeating_the_move_just_made_is_already_done_and_any_other_is_refused() {
        use OrderStatus::*;
        assert_eq!(
            decide(Started, Some("d1"), Started, Some("d1")),
            Seen::Answer(Answer::AlreadyDone)
        );
        assert_eq!(
            decide(Started, Some("d1"), Started, Some("d2")),
            Seen::Answer(Answer::NotTheDriver),
            "another driver repeating it is not the repeat"
        );
        assert_eq!(
            decide(Finished, Some("d1"), Finished, Some("d1")),
            Seen::Answer(Answer::AlreadyDone)
        );
        assert_eq!(
            decide(Cancelled, None, Cancelled, None),
            Seen::Answer(Answer::AlreadyDone)
        );
        for (from, to) in [
            (Pending, Started),
            (Pending, Finished),
            (Matched, Finished),
            (Started, Cancelled),
            (Finished, Cancelled),
            (Finished, Started),
            (Cancelled, Started),
        ] {
            assert_eq!(
                decide(from, Some("d1"), to, Some("d1")),
                Seen::Answer(Answer::WrongState),
                "{from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn a_match_claims_its_candidates_only_while_pending() {
        use OrderStatus::*;
        let topics = RideRules::with_prefix("");
        let candidates = vec!["d1".to_owned(), "d2".to_owned()];
        assert_eq!(
            seen(decide_match(
                &topics,
                &order(Pending, None),
                candidates.clone(),
                5
            )),
            Seen::Apply(Matched, DriverChange::Claim(candidates.clone()))
        );
        assert_eq!(
            seen(decide_match(
                &topics,
                &order(Matched, Some("d9")),
                candidates.clone(),
                5
            )),
            Seen::Answer(Answer::AlreadyDone)
        );
        for status in [Started, Finished, Cancelled] {
            assert_eq!(
                seen(decide_match(
                    &topics,
                    &order(status, Some("d9")),
                    candidates.clone(),
                    5
                )),
                Seen::Answer(Answer::WrongState),
                "{status:?}"
            );
        }
    }

    #[test]
    fn the_event_announces_the_order_as_it_is_after_the_move() {
        let topics = RideRules::with_prefix("staging.");
        let before = order(OrderStatus::Pending, None);
        let Decision::Apply(transition) = decide_match(&topics, &before, vec!["d1".to_owned()], 42)
        else {
            panic!("a pending order is matched");
        };
        let after = Order {
            status: OrderStatus::Matched,
            driver_id: Some("d7".into()),
            ..before
        };
        let events = (transition.announce)(&after);
        assert_eq!(events.len(), 1, "a match announces one ride event");
        let event = &events[0];
        assert_eq!(event.topic, "staging.rides.events");
        assert_eq!(event.aggregate_id, after.id);
        let decoded = RideEvent::decode(event.payload.as_ref()).expect("a ride event");
        assert_eq!(decoded.kind, Kind::Matched as i32);
        assert_eq!(decoded.driver_id, "d7", "the driver the claim took");
        assert_eq!(decoded.timestamp, 42);
        assert_eq!(decoded.order_id, after.id.to_string());
    }

    fn priced(status: OrderStatus, driver: Option<&str>) -> Order {
        let usd = pulse_core::money::Currency::parse("USD").expect("USD");
        Order {
            price: Some(pulse_orders::OrderPrice {
                total: pulse_core::money::Money::new(1_250, usd),
                multiplier_milli: 1_000,
            }),
            ..order(status, driver)
        }
    }

    #[test]
    fn the_money_follows_the_ride() {
        let rules = RideRules::with_prefix("").requiring_funds(true);
        let money = |decision: Decision| match decision {
            Decision::Apply(transition) => Some(transition.money),
            Decision::Answer(_) => None,
        };
        let pending = priced(OrderStatus::Pending, None);
        assert_eq!(
            money(decide_match(&rules, &pending, vec!["d1".into()], 5)),
            Some(MoneyChange::Hold {
                require_funds: true
            })
        );
        assert_eq!(
            money(decide_match(
                &rules,
                &order(OrderStatus::Pending, None),
                vec!["d1".into()],
                5
            )),
            Some(MoneyChange::Keep),
            "an order without a fare holds nothing"
        );
        let matched = priced(OrderStatus::Matched, Some("d1"));
        assert_eq!(
            money(decide_move(
                &rules,
                &matched,
                OrderStatus::Cancelled,
                None,
                5
            )),
            Some(MoneyChange::Void)
        );
        assert_eq!(
            money(decide_move(
                &rules,
                &pending,
                OrderStatus::Cancelled,
                None,
                5
            )),
            Some(MoneyChange::Keep),
            "an unmatched order has no hold to void"
        );
        let started = priced(OrderStatus::Started, Some("d1"));
        let Decision::Apply(finish) =
            decide_move(&rules, &started, OrderStatus::Finished, Some("d1"), 9)
        else {
            panic!("the driver finishes a started ride");
        };
        assert_eq!(
            finish.money,
            MoneyChange::Keep,
            "the post is the wallet processor's"
        );
        let after = Order {
            status: OrderStatus::Finished,
            ..started
        };
        let events = (finish.announce)(&after);
        let topics: Vec<&str> = events.iter().map(|event| event.topic.as_str()).collect();
        assert_eq!(topics, ["rides.events", "wallet.transactions"]);
        let payment = WalletTransaction::decode(events[1].payload.as_ref()).expect("a payment");
        assert_eq!(payment.kind, wallet_transaction::Kind::PostHold as i32);
        assert_eq!(payment.amount_minor, 1_250);
        assert_eq!(payment.currency, "USD");
        assert_eq!(payment.driver_id, "d1");
        assert_eq!(payment.order_id, after.id.to_string());
        assert_eq!(events[1].aggregate_id, after.id, "keyed by the order");
    }
}
