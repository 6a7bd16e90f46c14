//! Cache key formats of the surge loop, in one place.

use h3o::CellIndex;

/// `surge:{h3}` → [`crate::SurgeValue`] JSON (the seed's contract).
pub fn surge(cell: impl std::fmt::Display) -> String {
    format!("surge:{cell}")
}

/// Index of cells with a published `surge:{h3}`, scored by when that value expires (Unix ms), so
/// readers list live cells without scanning keys.
pub const SURGE_CELLS: &str = "surge:cells";

/// Index of available drivers, scored by their latest ping (Unix ms); their positions are at
/// [`driver`].
pub const AVAILABLE_DRIVERS: &str = "drivers:available";

/// The generation of the engines' state in this cache: a random value without a TTL, written
/// when the state is (re)built. If it vanishes — a Redis restarted without persistence — or
/// changes, the windows were lost, and each engine rebuilds its partitions' from the log.
pub const STATE_GENERATION: &str = "surge:state-generation";

/// Orders in a cell during one window bucket.
pub(crate) fn demand(cell: CellIndex, bucket: i64) -> String {
    format!("demand:{cell}:{bucket}")
}

/// Available drivers whose latest ping fell in a cell during one window bucket.
pub(crate) fn supply(cell: CellIndex, bucket: i64) -> String {
    format!("supply:{cell}:{bucket}")
}

/// A driver's latest ping.
pub fn driver(driver_id: &str) -> String {
    format!("driver:{driver_id}")
}

/// Guard marking an order as counted.
pub(crate) fn seen_order(order_id: &str) -> String {
    format!("seen:order:{order_id}")
}

/// A locked quote.
pub(crate) fn quote(quote_id: &uuid::Uuid) -> String {
    format!("quote:{quote_id}")
}
