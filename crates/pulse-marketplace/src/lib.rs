//! The marketplace's rides (seed 004's tracker, dispatch and order services): where drivers are,
//! who is matched to which order, and the ride lifecycle from the match to the end.
//!
//! * [`tracker::Tracker`] keeps the [`pulse_core::geo_index::GeoIndex`] and the drivers'
//!   statuses from the pings on `supply.updates` and the events on `rides.events`.
//! * [`dispatch::Dispatcher`] matches an order to the nearest fresh, available driver; the
//!   `dispatch` processor does it for every new order, retrying without holding its partition.
//! * [`rides::RideService`] reads rides and moves them: `PENDING` → `MATCHED` → `STARTED` →
//!   `FINISHED`, and `CANCELLED` from `PENDING` or `MATCHED`.
//! * Money moves with the rides (`pulse-ledger`): the match holds the fare on the rider's
//!   wallet in its unit of work, the finish sends the payment on `wallet.transactions`, a
//!   cancellation voids the hold in its unit of work.
//!
//! Invariants:
//! * the store's driver status decides: a match claims its driver with a conditional write in the
//!   same unit of work as the order's move and its outbox event, so no driver is ever matched to
//!   two orders, and a driver on a ride is never matched again until it ends;
//! * every transition writes its row change, its history entry and its `rides.events` event in
//!   one unit of work; repeating the transition just made writes nothing and announces nothing;
//! * the geo index only proposes candidates; a stale one is skipped.
//!
//! No I/O of its own: [`ports::RideStore`] is implemented on SQL by `pulse-store`, the geo index
//! by `pulse-memory` and `pulse-redis`.

pub mod dispatch;
pub mod model;
pub mod ports;
pub mod rides;
pub mod tracker;

use pulse_core::log::TopicSpec;

/// Ride lifecycle events, keyed by order id (Atlas's `ride-dispatch`).
pub const RIDE_EVENTS: TopicSpec = TopicSpec {
    name: "rides.events",
    carries: "RideEvent (matched, started, finished, cancelled), keyed by order id",
};

/// The topics the marketplace writes to.
pub const TOPICS: &[TopicSpec] = &[RIDE_EVENTS];

/// What every transition of a deployment writes besides its row changes: where its events go
/// (prefix applied) and whether a hold must be covered by the rider's wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RideRules {
    /// Where [`RIDE_EVENTS`] goes.
    pub events: String,
    /// Where the payments of finished rides go ([`pulse_ledger::WALLET_TRANSACTIONS`]).
    pub payments: String,
    /// A match whose fare exceeds the rider's available balance is refused (`wallet.require_funds`).
    pub require_funds: bool,
}

impl RideRules {
    /// The topics under `prefix` (empty: the contract names); funds not required.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            events: RIDE_EVENTS.named(prefix),
            payments: pulse_ledger::WALLET_TRANSACTIONS.named(prefix),
            require_funds: false,
        }
    }

    /// The same, refusing matches the rider cannot pay when `require_funds`.
    pub fn requiring_funds(self, require_funds: bool) -> Self {
        Self {
            require_funds,
            ..self
        }
    }
}
