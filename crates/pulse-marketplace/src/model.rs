//! The rides' values: drivers' statuses and reports, transitions as kept, trail points.

use pulse_orders::OrderStatus;
use serde::{Deserialize, Serialize};

/// A driver's status as the store decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverStatus {
    /// Takes rides: its pings say so and it is on none.
    Available,
    /// On a ride: unavailable everywhere, whatever its pings say.
    OnRide,
    /// Its pings say it takes no rides.
    Offline,
}

impl DriverStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverStatus::Available => "available",
            DriverStatus::OnRide => "on_ride",
            DriverStatus::Offline => "offline",
        }
    }

    /// From the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "available" => Some(DriverStatus::Available),
            "on_ride" => Some(DriverStatus::OnRide),
            "offline" => Some(DriverStatus::Offline),
            _ => None,
        }
    }
}

/// A driver's latest report, as the tracker records it.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverReport {
    /// The driver.
    pub driver_id: String,
    /// Whether its ping says it takes rides.
    pub available: bool,
    /// Its vehicle, when reported.
    pub vehicle_type: Option<String>,
    /// Report time, Unix milliseconds.
    pub at_ms: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lng: f64,
}

/// A driver as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverRecord {
    /// The driver.
    pub driver_id: String,
    /// Its status.
    pub status: DriverStatus,
    /// Its vehicle, when reported.
    pub vehicle_type: Option<String>,
    /// The order it is on, when on a ride.
    pub order_id: Option<uuid::Uuid>,
    /// When the status last changed, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// One status an order reached, as kept in its history.
#[derive(Debug, Clone, PartialEq)]
pub struct RideStep {
    /// The status.
    pub status: OrderStatus,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The driver, for the steps that have one.
    pub driver_id: Option<String>,
}

/// A point of a ride's GPS trail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrailPoint {
    /// Report time, Unix milliseconds.
    pub at_ms: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lng: f64,
}

/// Why a transition was not written, though the order exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The order is already in the status asked for, by the same hand: nothing to do (an
    /// idempotent repeat).
    AlreadyDone,
    /// The order's status does not allow the move.
    WrongState,
    /// The driver named is not the order's driver.
    NotTheDriver,
}
