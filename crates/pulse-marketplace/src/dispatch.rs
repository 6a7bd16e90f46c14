//! Nearest-driver dispatch: the geo index proposes the nearest fresh, available drivers, widening
//! the radius in steps; the store decides, by claiming the nearest of them still available and
//! matching the order in one unit of work. A candidate the store refuses (a stale proposal: the
//! driver was just taken, or went offline) is passed over for the next; when a whole page was
//! stale, the next page is asked for.
//!
//! The `dispatch` processor runs this for every new order on `demand.orders` (when
//! `dispatch.auto` is on). An order that finds no driver is not retried by sleeping on its
//! partition: its next attempt is written on its row, and the processor's tick takes the attempts
//! that are due — so a restart, or another dispatcher, picks them up — until the retry time is
//! over and the order is marked `no_driver` (it stays `PENDING`; an explicit dispatch may still
//! match it).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pulse_core::clock::SharedClock;
use pulse_core::geo_index::{GeoIndex, NearbyQuery, MAX_NEARBY};
use pulse_core::log::ConsumedRecord;
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::time::millis;
use pulse_core::{PortResult, TenantId};
use pulse_orders::{Order, OrderStatus};
use pulse_proto::v1::OrderCreatedEvent;
use pulse_proto::Message;
use pulse_runtime::processor::{ConsumerSettings, Poison, Processor, Tick};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ports::{Decide, RideStore, TransitionOutcome};
use crate::rides::{decide_match, settle, Moved, RideError};
use crate::RideRules;

/// Consumer group of the `dispatch` processor, before any deployment prefix.
pub const GROUP: &str = "pulse-dispatch-group";
/// Match attempts, by outcome (`matched`, `no_driver`, `stale_candidate`, `decided`).
pub const ATTEMPTS_TOTAL: &str = "pulse_dispatch_attempts_total";
/// Time from an order's placement to its match, seconds.
pub const MATCH_LATENCY: &str = "pulse_dispatch_match_latency_seconds";
/// Orders given up on (`no_driver`).
pub const NO_DRIVER_TOTAL: &str = "pulse_dispatch_no_driver_total";

/// The `[dispatch]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Match every new order as it arrives (`PULSE_DISPATCH__AUTO`); off, orders wait for
    /// `POST /api/v1/orders/{id}/dispatch`.
    pub auto: bool,
    /// The search radii tried in turn, metres.
    pub radii_m: Vec<f64>,
    /// Nearest drivers proposed per radius.
    pub candidates: usize,
    /// How long an unmatched order is retried before it is marked `no_driver`, ms.
    pub retry_for_ms: u64,
    /// Delay between two attempts of an unmatched order, ms.
    pub retry_every_ms: u64,
    /// Orders matched at once by one dispatcher.
    pub concurrency: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            auto: true,
            radii_m: vec![1_000.0, 2_000.0, 5_000.0],
            candidates: 8,
            retry_for_ms: 60_000,
            retry_every_ms: 2_000,
            concurrency: 32,
        }
    }
}

impl DispatchConfig {
    /// Why the section is unusable, if it is.
    pub fn validate(&self) -> Result<(), String> {
        let max = pulse_core::geo_index::MAX_RADIUS_M;
        if self.radii_m.is_empty()
            || self
                .radii_m
                .iter()
                .any(|radius| !(radius.is_finite() && *radius > 0.0 && *radius <= max))
            || self.radii_m.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(format!(
                "dispatch.radii_m must be increasing radii in (0, {max}] metres"
            ));
        }
        if self.candidates == 0 || self.candidates > pulse_core::geo_index::MAX_NEARBY {
            return Err("dispatch.candidates must be 1 to 500".into());
        }
        if self.retry_every_ms == 0 || self.concurrency == 0 {
            return Err("dispatch.retry_every_ms and dispatch.concurrency must be positive".into());
        }
        Ok(())
    }
}

/// What one dispatch attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatched {
    /// Matched now.
    Matched(Order),
    /// No candidate could be claimed.
    NoDriver(String),
    /// The order was already past `PENDING` (matched, cancelled, …): as it is.
    Decided(Order),
    /// The rider's wallet cannot cover the fare (`wallet.require_funds`): not retried.
    Unpayable {
        /// The fare.
        fare: pulse_core::money::Money,
        /// What the wallet had available, minor units.
        available_minor: i64,
    },
}

/// Matches orders to drivers.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Arc<dyn RideStore>,
    geo: Arc<dyn GeoIndex>,
    clock: SharedClock,
    settings: DispatchConfig,
    /// How old a driver's latest ping may be to be proposed.
    max_age: Duration,
    topics: RideRules,
}

impl Dispatcher {
    /// A dispatcher proposing from `geo` drivers whose pings are at most `max_age` old, claiming
    /// in `store`.
    pub fn new(
        store: Arc<dyn RideStore>,
        geo: Arc<dyn GeoIndex>,
        clock: SharedClock,
        settings: DispatchConfig,
        max_age: Duration,
        topics: RideRules,
    ) -> Self {
        Self {
            store,
            geo,
            clock,
            settings,
            max_age,
            topics,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &DispatchConfig {
        &self.settings
    }

    /// One attempt to match `order`: the nearest candidates of each radius in turn, each
    /// claimed in the store until one holds.
    #[tracing::instrument(name = "dispatch.attempt", skip_all, fields(order_id = %order.id))]
    pub async fn attempt(&self, order: &Order) -> PortResult<Dispatched> {
        if order.status != OrderStatus::Pending {
            return Ok(Dispatched::Decided(order.clone()));
        }
        let tenant = &order.tenant;
        let mut tried: HashSet<String> = HashSet::new();
        for radius_m in &self.settings.radii_m {
            // The index may still propose drivers just taken (it follows the store); when a
            // whole page of candidates was stale, the next page is asked for, so a racing
            // dispatch finds the free drivers behind the taken ones.
            let mut limit = self.settings.candidates;
            loop {
                let query = NearbyQuery {
                    lat: order.pickup.lat(),
                    lng: order.pickup.lng(),
                    radius_m: *radius_m,
                    limit,
                    vehicle_type: order.vehicle_type.clone(),
                    fresh_since_ms: self.clock.now_ms() - millis(self.max_age),
                };
                let candidates = self.geo.nearest(tenant, &query).await?;
                let exhausted = candidates.len() < limit;
                let fresh: Vec<String> = candidates
                    .into_iter()
                    .map(|candidate| candidate.driver_id)
                    .filter(|driver| tried.insert(driver.clone()))
                    .collect();
                if fresh.is_empty() {
                    break;
                }
                let offered = fresh.len() as u64;
                let topics = self.topics.clone();
                let at_ms = self.clock.now_ms();
                let decide: Decide =
                    Box::new(move |order: &Order| decide_match(&topics, order, fresh, at_ms));
                match self.store.transition(tenant, order.id, decide).await? {
                    TransitionOutcome::Applied(matched) => {
                        metrics::counter!(ATTEMPTS_TOTAL, "outcome" => "matched").increment(1);
                        let waited = (at_ms - matched.created_at_ms).max(0) as f64 / 1_000.0;
                        metrics::histogram!(MATCH_LATENCY).record(waited);
                        return Ok(Dispatched::Matched(*matched));
                    }
                    TransitionOutcome::DriverTaken => {
                        metrics::counter!(ATTEMPTS_TOTAL, "outcome" => "stale_candidate")
                            .increment(offered);
                    }
                    TransitionOutcome::InsufficientFunds {
                        fare,
                        available_minor,
                    } => {
                        metrics::counter!(ATTEMPTS_TOTAL, "outcome" => "unpayable").increment(1);
                        return Ok(Dispatched::Unpayable {
                            fare,
                            available_minor,
                        });
                    }
                    TransitionOutcome::Answered(_, now) => {
                        metrics::counter!(ATTEMPTS_TOTAL, "outcome" => "decided").increment(1);
                        return Ok(Dispatched::Decided(*now));
                    }
                    TransitionOutcome::NotFound => {
                        return Err(pulse_core::PortError::Invalid(format!(
                            "order {} vanished while being dispatched",
                            order.id
                        )))
                    }
                }
                if exhausted || limit >= MAX_NEARBY {
                    break;
                }
                limit = (tried.len() + self.settings.candidates).min(MAX_NEARBY);
            }
        }
        metrics::counter!(ATTEMPTS_TOTAL, "outcome" => "no_driver").increment(1);
        let widest = self.settings.radii_m.last().copied().unwrap_or_default();
        let vehicle = order
            .vehicle_type
            .as_deref()
            .map(|vehicle| format!(" {vehicle}"))
            .unwrap_or_default();
        Ok(Dispatched::NoDriver(if tried.is_empty() {
            format!("no available{vehicle} driver within {widest} m")
        } else {
            format!(
                "{} available{vehicle} drivers within {widest} m were all taken",
                tried.len()
            )
        }))
    }

    /// `POST /api/v1/orders/{id}/dispatch`: one attempt now, the match or why not.
    pub async fn dispatch_now(&self, tenant: &TenantId, id: Uuid) -> Result<Moved, RideError> {
        let order = self
            .store
            .order(tenant, id)
            .await?
            .ok_or(RideError::NotFound(id))?;
        match self.attempt(&order).await? {
            Dispatched::Matched(order) => Ok(Moved {
                order,
                changed: true,
            }),
            Dispatched::NoDriver(reason) => Err(RideError::NoDriver {
                order_id: id,
                reason,
            }),
            Dispatched::Unpayable {
                fare,
                available_minor,
            } => Err(RideError::InsufficientFunds {
                order_id: id,
                fare,
                available_minor,
            }),
            Dispatched::Decided(order) if order.status == OrderStatus::Matched => Ok(Moved {
                order,
                changed: false,
            }),
            Dispatched::Decided(order) => settle(
                id,
                OrderStatus::Matched,
                None,
                TransitionOutcome::Answered(crate::model::Answer::WrongState, Box::new(order)),
            ),
        }
    }

    /// An attempt for an order the processor took: retried later, or given up on once its
    /// retry time is over.
    async fn attempt_or_reschedule(&self, order: &Order, until_ms: Option<i64>) -> PortResult<()> {
        let reason = match self.attempt(order).await? {
            Dispatched::NoDriver(reason) => reason,
            Dispatched::Unpayable {
                fare,
                available_minor,
            } => {
                let reason = format!(
                    "insufficient funds: the fare of {fare} exceeds the rider's available {available_minor}"
                );
                tracing::info!(order_id = %order.id, %reason, "unpayable; giving up");
                return self
                    .store
                    .give_up_dispatch(&order.tenant, order.id, &reason)
                    .await;
            }
            Dispatched::Matched(_) | Dispatched::Decided(_) => return Ok(()),
        };
        let now_ms = self.clock.now_ms();
        let until_ms = until_ms.unwrap_or(order.created_at_ms + self.settings.retry_for_ms as i64);
        if now_ms >= until_ms {
            metrics::counter!(NO_DRIVER_TOTAL).increment(1);
            tracing::info!(order_id = %order.id, %reason, "no driver; giving up");
            return self
                .store
                .give_up_dispatch(&order.tenant, order.id, &reason)
                .await;
        }
        let next_ms = (now_ms + self.settings.retry_every_ms as i64).min(until_ms);
        self.store
            .schedule_dispatch(&order.tenant, order.id, next_ms, until_ms)
            .await
    }
}

/// The `dispatch` processor: matches new orders as they arrive, and retries the due ones on its
/// tick.
#[derive(Debug)]
pub struct DispatchProcessor {
    dispatcher: Dispatcher,
    store: Arc<dyn RideStore>,
}

/// Most due attempts taken per tick.
const DUE_PER_TICK: usize = 500;

impl DispatchProcessor {
    /// The processor over `dispatcher`.
    pub fn new(dispatcher: Dispatcher, store: Arc<dyn RideStore>) -> Self {
        Self { dispatcher, store }
    }

    /// How it consumes: its own group on `orders_topic`, ticking as often as attempts are
    /// retried (at most every second).
    pub fn consumer(
        &self,
        group: String,
        orders_topic: String,
        dead_letter: String,
    ) -> ConsumerSettings {
        let every = Duration::from_millis(self.dispatcher.settings.retry_every_ms);
        ConsumerSettings {
            batch_size: 1_000,
            tick: every.min(Duration::from_secs(1)),
            dead_letter_topic: dead_letter,
            ..ConsumerSettings::new(group, vec![orders_topic])
        }
    }

    async fn run_one(
        &self,
        tenant: TenantId,
        order_id: Uuid,
        until_ms: Option<i64>,
    ) -> PortResult<()> {
        match self.store.order(&tenant, order_id).await? {
            Some(order) => {
                self.dispatcher
                    .attempt_or_reschedule(&order, until_ms)
                    .await
            }
            // Not visible (yet) to this tenant: nothing to match.
            None => Ok(()),
        }
    }
}

/// The order id and tenant of an `OrderCreatedEvent` record, or why it is poison.
fn decode_order(record: &ConsumedRecord) -> Result<(TenantId, Uuid), String> {
    let tenant = TenantId::from_header(record.header(TENANT_HEADER).map(|raw| raw.as_ref()))
        .map_err(|err| err.to_string())?;
    let event = OrderCreatedEvent::decode(record.payload.as_ref())
        .map_err(|err| format!("undecodable OrderCreatedEvent: {err}"))?;
    let id = Uuid::parse_str(&event.order_id)
        .map_err(|err| format!("order id {:?}: {err}", event.order_id))?;
    Ok((tenant, id))
}

#[async_trait]
impl Processor for DispatchProcessor {
    fn name(&self) -> &'static str {
        "dispatch"
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        let mut poison = Vec::new();
        let mut orders = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match decode_order(record) {
                Ok(order) => orders.push(order),
                Err(reason) => poison.push(Poison { index, reason }),
            }
        }
        if !self.dispatcher.settings.auto {
            return Ok(poison);
        }
        let this = &*self;
        let mut attempts = futures::stream::iter(orders)
            .map(|(tenant, id)| this.run_one(tenant, id, None))
            .buffer_unordered(self.dispatcher.settings.concurrency);
        // Every attempt runs to its end before the batch answers: the first error fails the
        // batch, which is redelivered, and an order matched already is then only read.
        let mut failure = None;
        while let Some(done) = attempts.next().await {
            if let Err(err) = done {
                failure.get_or_insert(err);
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(poison),
        }
    }

    async fn tick(&mut self) -> PortResult<Tick> {
        let now_ms = self.dispatcher.clock.now_ms();
        let retry_at = now_ms + self.dispatcher.settings.retry_every_ms as i64;
        let due = self
            .store
            .take_due_dispatches(now_ms, retry_at, DUE_PER_TICK)
            .await?;
        let this = &*self;
        let mut attempts = futures::stream::iter(due)
            .map(|(tenant, id, until)| this.run_one(tenant, id, Some(until)))
            .buffer_unordered(self.dispatcher.settings.concurrency);
        while let Some(done) = attempts.next().await {
            // A failed retry stays due (its next attempt was pushed, not removed).
            if let Err(err) = done {
                tracing::warn!(error = %err, "dispatch retry failed; it runs again later");
            }
        }
        Ok(Tick::Continue)
    }
}
