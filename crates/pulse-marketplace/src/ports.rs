//! The ports of the rides: where orders move through their lifecycle, where drivers' statuses
//! are decided, and where a ride's trail is kept.

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};
use pulse_orders::{Order, OrderStatus};
use pulse_outbox::OutboxEvent;
use uuid::Uuid;

use crate::model::{Answer, DriverRecord, DriverReport, RideStep, TrailPoint};

/// What a transition does to the order's driver, in the same unit of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverChange {
    /// Nothing.
    Keep,
    /// Claims the first of these drivers (in order: the nearest first) whose status is
    /// `available`: one conditional write, so no driver is ever claimed by two orders, and a
    /// candidate another order holds or took is passed over.
    Claim(Vec<String>),
    /// Frees the driver the order held (its status back to `available`), only if it still
    /// holds this order.
    Release(String),
}

/// What a transition does with the ride's money, in the same unit of work (the ledger's
/// accounts are in the same store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoneyChange {
    /// Nothing.
    Keep,
    /// Holds the order's fare on the rider's wallet for the claimed driver's payable (a pending
    /// transfer, reference `ride:{order}:hold`). With `require_funds`, a fare above the rider's
    /// available balance writes nothing and the outcome is
    /// [`TransitionOutcome::InsufficientFunds`].
    Hold {
        /// Refuse a fare the wallet cannot cover.
        require_funds: bool,
    },
    /// Voids the order's hold, if it has one that is not resolved yet.
    Void,
}

/// Builds the events announcing a transition from the order as it is after it (with the driver
/// a claim took).
pub type Announce = Box<dyn FnOnce(&Order) -> Vec<OutboxEvent> + Send>;

/// A transition the domain decided, for the store to write in one unit of work: the order's
/// new status (and driver), its history entry, the driver's change and the outbox event.
pub struct Transition {
    /// The status the order moves to.
    pub to: OrderStatus,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The driver change that goes with it.
    pub driver: DriverChange,
    /// The money change that goes with it.
    pub money: MoneyChange,
    /// The events announcing it (on `rides.events`; a finish also on `wallet.transactions`).
    pub announce: Announce,
}

impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transition")
            .field("to", &self.to)
            .field("at_ms", &self.at_ms)
            .field("driver", &self.driver)
            .field("money", &self.money)
            .finish_non_exhaustive()
    }
}

/// What the domain decides after reading the order, inside the unit of work.
#[derive(Debug)]
pub enum Decision {
    /// Write this transition.
    Apply(Transition),
    /// Write nothing and answer so.
    Answer(Answer),
}

/// The domain's rule, run by the store on the order as locked in the unit of work.
pub type Decide = Box<dyn FnOnce(&Order) -> Decision + Send>;

/// What [`RideStore::transition`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum TransitionOutcome {
    /// The transition was committed: the order as it is now.
    Applied(Box<Order>),
    /// The rule answered without writing: the answer and the order as it is.
    Answered(Answer, Box<Order>),
    /// None of the drivers to claim was available (another order has or is taking them, or
    /// they are offline or unknown): nothing was written.
    DriverTaken,
    /// The hold was refused: the rider's available balance does not cover the fare. Nothing
    /// was written.
    InsufficientFunds {
        /// The fare.
        fare: pulse_core::money::Money,
        /// What the rider's wallet had available.
        available_minor: i64,
    },
    /// No such order in the tenant.
    NotFound,
}

/// A page of rides, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RidePage {
    /// The rides.
    pub rides: Vec<Order>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<Uuid>,
}

/// Whose rides a history lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RideParty<'a> {
    /// A rider's (the orders' `user_id`).
    Rider(&'a str),
    /// A driver's.
    Driver(&'a str),
}

/// Where rides live.
#[async_trait]
pub trait RideStore: Send + Sync + std::fmt::Debug {
    /// Reads `order_id` of `tenant` under a lock for the rest of the unit of work, asks
    /// `decide`, and writes what it decided — all in one unit of work. With
    /// [`DriverChange::Claim`] the driver is claimed first; when it is not available nothing is
    /// written and the outcome is [`TransitionOutcome::DriverTaken`]. The [`MoneyChange`] is
    /// written in the same unit.
    async fn transition(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        decide: Decide,
    ) -> PortResult<TransitionOutcome>;

    /// The order `order_id` of `tenant`, if any.
    async fn order(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Option<Order>>;

    /// The order's transitions, oldest first.
    async fn steps(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Vec<RideStep>>;

    /// A page of `party`'s rides older than `before` (newest first), at most `limit`.
    async fn rides(
        &self,
        tenant: &TenantId,
        party: RideParty<'_>,
        before: Option<Uuid>,
        limit: usize,
    ) -> PortResult<RidePage>;

    /// Records drivers' latest reports (one per driver, the batch's newest): a new driver is
    /// `available` or `offline` as its report says; a known one follows its report unless it is
    /// `on_ride`, which only its ride changes. The points of drivers on a ride join that ride's
    /// trail (a point already kept is not kept twice).
    async fn report_drivers(&self, tenant: &TenantId, reports: &[DriverReport]) -> PortResult<()>;

    /// A driver's status as the store decides it, if the driver ever reported.
    async fn driver(&self, tenant: &TenantId, driver_id: &str) -> PortResult<Option<DriverRecord>>;

    /// The ride's trail, oldest first, at most `limit` points.
    async fn trail(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        limit: usize,
    ) -> PortResult<Vec<TrailPoint>>;

    /// Schedules dispatch attempts of a `PENDING` order: the next at `next_ms`, none after
    /// `until_ms` (the first schedule of an order sets its `until_ms`; a later one keeps it).
    async fn schedule_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        next_ms: i64,
        until_ms: i64,
    ) -> PortResult<()>;

    /// Takes up to `limit` `PENDING` orders whose next attempt is due at `now_ms`, pushing their
    /// next attempt to `retry_at_ms` in the same write so that concurrent dispatchers take
    /// different orders. Returns each with its tenant and its `until_ms`.
    async fn take_due_dispatches(
        &self,
        now_ms: i64,
        retry_at_ms: i64,
        limit: usize,
    ) -> PortResult<Vec<(TenantId, Uuid, i64)>>;

    /// Marks a `PENDING` order `no_driver` with `reason` and stops its attempts; an order no
    /// longer pending is left alone.
    async fn give_up_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        reason: &str,
    ) -> PortResult<()>;
}
