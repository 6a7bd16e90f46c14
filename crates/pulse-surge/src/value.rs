//! The value stored at `surge:{h3}`.

use serde::{Deserialize, Serialize};

/// `{"multiplier": 1.5, "updated_at": <unix s>, "demand": 6, "supply": 4}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SurgeValue {
    /// The multiplier, rounded to three decimals.
    pub multiplier: f64,
    /// When it was computed, Unix seconds.
    pub updated_at: i64,
    /// Orders in the window.
    #[serde(default)]
    pub demand: u64,
    /// Available drivers in the window.
    #[serde(default)]
    pub supply: u64,
}
