//! The geo index port: where drivers are, for "who is near this point?".
//!
//! The index holds, per tenant, each driver's latest position with its report time, whether the
//! driver's own ping said it takes rides (`available`), whether it is on a ride (`busy`, set
//! from the ride lifecycle's events), and its vehicle type. Freshness lives *inside* the index:
//! a search names the oldest report time it accepts, and a driver whose latest report is older is
//! never returned, whatever the index still holds. Positions are ordered by report time: an
//! update older than (or as old as) the one indexed is ignored, so a ping delivered out of order,
//! or twice, never moves a driver back. The busy flag is ordered the same way by the time of the
//! ride event that set it.
//!
//! The index only *proposes* candidates: the store's driver status decides who is matched.

use async_trait::async_trait;

use crate::{PortError, PortResult, TenantId};

/// The widest latitude a position or a search may have: Redis's GEO limit (EPSG:900913), kept by
/// every adapter so they all refuse the same input.
pub const MAX_LATITUDE: f64 = 85.051_128_78;
/// Most drivers one search may return.
pub const MAX_NEARBY: usize = 500;
/// Widest radius one search may cover, metres.
pub const MAX_RADIUS_M: f64 = 50_000.0;

/// A driver's reported position.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverPosition {
    /// The driver (unique within its tenant).
    pub driver_id: String,
    /// Latitude, degrees (within ±[`MAX_LATITUDE`]).
    pub lat: f64,
    /// Longitude, degrees (−180…180).
    pub lng: f64,
    /// Report time, Unix milliseconds: orders the updates of one driver.
    pub at_ms: i64,
    /// Whether the driver's ping says it takes rides now.
    pub available: bool,
    /// The driver's vehicle (`car`, `bike`, …), when reported.
    pub vehicle_type: Option<String>,
}

/// A search around a point.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyQuery {
    /// Latitude of the centre, degrees.
    pub lat: f64,
    /// Longitude of the centre, degrees.
    pub lng: f64,
    /// Radius, metres (at most [`MAX_RADIUS_M`]).
    pub radius_m: f64,
    /// Most drivers returned (at most [`MAX_NEARBY`]).
    pub limit: usize,
    /// Only drivers of this vehicle type, when set.
    pub vehicle_type: Option<String>,
    /// Only drivers whose latest report is at or after this time, Unix milliseconds.
    pub fresh_since_ms: i64,
}

/// A driver a search found: available by its latest ping, not busy, fresh, within the radius.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyDriver {
    /// The driver.
    pub driver_id: String,
    /// Distance from the search's centre, metres.
    pub distance_m: f64,
    /// Its latest position's latitude.
    pub lat: f64,
    /// Its latest position's longitude.
    pub lng: f64,
    /// Its latest report time, Unix milliseconds.
    pub at_ms: i64,
    /// Its vehicle type, when reported.
    pub vehicle_type: Option<String>,
}

/// Whether (`lat`, `lng`) is a point every adapter can hold.
pub fn in_range(lat: f64, lng: f64) -> bool {
    (-MAX_LATITUDE..=MAX_LATITUDE).contains(&lat) && (-180.0..=180.0).contains(&lng)
}

fn out_of_range(what: &str, lat: f64, lng: f64) -> PortError {
    PortError::Invalid(format!(
        "{what} ({lat}, {lng}) is outside latitude ±{MAX_LATITUDE}, longitude ±180"
    ))
}

/// Why an adapter refuses `position`, if it does: an empty driver id, or a point out of range.
pub fn check_position(position: &DriverPosition) -> PortResult<()> {
    if position.driver_id.is_empty() {
        return Err(PortError::Invalid("a driver id is empty".into()));
    }
    if !in_range(position.lat, position.lng) {
        let what = format!("driver {}'s position", position.driver_id);
        return Err(out_of_range(&what, position.lat, position.lng));
    }
    Ok(())
}

/// Why an adapter refuses `query`, if it does: a radius outside 0…[`MAX_RADIUS_M`], a limit above
/// [`MAX_NEARBY`], or a centre out of range.
pub fn check_query(query: &NearbyQuery) -> PortResult<()> {
    if !(0.0..=MAX_RADIUS_M).contains(&query.radius_m) {
        return Err(PortError::Invalid(format!(
            "radius {} m is outside 0…{MAX_RADIUS_M} m",
            query.radius_m
        )));
    }
    if query.limit > MAX_NEARBY {
        return Err(PortError::Invalid(format!(
            "limit {} is above {MAX_NEARBY}",
            query.limit
        )));
    }
    if !in_range(query.lat, query.lng) {
        return Err(out_of_range("the search's centre", query.lat, query.lng));
    }
    Ok(())
}

/// Where drivers are, per tenant. See the module docs for the ordering rules.
#[async_trait]
pub trait GeoIndex: Send + Sync + std::fmt::Debug {
    /// Records `positions` of `tenant`'s drivers, in slice order; returns, per position, whether
    /// it was applied (`false`: not newer than the one indexed, ignored).
    async fn update(
        &self,
        tenant: &TenantId,
        positions: &[DriverPosition],
    ) -> PortResult<Vec<bool>>;

    /// Marks `driver_id` as on a ride (`busy`) or off it, as of the ride event at `at_ms`; an
    /// event older than the one that last set the flag is ignored (returns `false`). A driver
    /// not yet indexed keeps the flag for when its first position arrives.
    async fn set_busy(
        &self,
        tenant: &TenantId,
        driver_id: &str,
        busy: bool,
        at_ms: i64,
    ) -> PortResult<bool>;

    /// The nearest drivers to the query's centre that are available, not busy, fresh enough and
    /// of the vehicle type asked for, nearest first, at most `limit`.
    async fn nearest(
        &self,
        tenant: &TenantId,
        query: &NearbyQuery,
    ) -> PortResult<Vec<NearbyDriver>>;

    /// Forgets `tenant`'s drivers whose latest report is older than `before_ms` (housekeeping:
    /// searches already skip them); returns how many were removed.
    async fn forget_older_than(&self, tenant: &TenantId, before_ms: i64) -> PortResult<u64>;

    /// Whether the backend answers.
    async fn ping(&self) -> PortResult<()>;
}
