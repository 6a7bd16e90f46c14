//! Geography shared by every domain: validated WGS84 points, the H3 cells (resolution 9) events
//! and cache keys name, and great-circle distances.
//!
//! Invariants: a [`Point`] is always inside [-90, 90] × [-180, 180]; every cell Pulse writes or
//! accepts is resolution 9 ([`parse_cell`] refuses others). Re-exports [`CellIndex`] so callers
//! need not depend on `h3o` themselves.

pub use h3o::CellIndex;
use h3o::{LatLng, Resolution};

/// The H3 resolution of every cell Pulse uses (~0.1 km² hexagons).
pub const RESOLUTION: Resolution = Resolution::Nine;

/// Why a coordinate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude outside [-90, 90] or not a number.
    #[error("latitude {0} is outside [-90, 90]")]
    Latitude(f64),
    /// Longitude outside [-180, 180] or not a number.
    #[error("longitude {0} is outside [-180, 180]")]
    Longitude(f64),
    /// Not a valid resolution-9 H3 cell.
    #[error("{0:?} is not a resolution-9 H3 cell")]
    Cell(String),
}

/// A validated WGS84 point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point(LatLng);

impl Point {
    /// Validates degrees of latitude and longitude.
    pub fn new(lat: f64, lng: f64) -> Result<Self, GeoError> {
        if !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude(lat));
        }
        if !(-180.0..=180.0).contains(&lng) {
            return Err(GeoError::Longitude(lng));
        }
        LatLng::new(lat, lng)
            .map(Self)
            .map_err(|_| GeoError::Latitude(lat))
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        self.0.lat()
    }

    /// Longitude in degrees.
    pub fn lng(&self) -> f64 {
        self.0.lng()
    }

    /// The resolution-9 cell containing the point.
    pub fn cell(&self) -> CellIndex {
        self.0.to_cell(RESOLUTION)
    }

    /// Great-circle (haversine) distance in metres.
    pub fn distance_m(&self, other: &Point) -> f64 {
        self.0.distance_m(other.0)
    }
}

/// Parses a resolution-9 cell as written in events and cache keys.
pub fn parse_cell(text: &str) -> Result<CellIndex, GeoError> {
    text.parse::<CellIndex>()
        .ok()
        .filter(|cell| cell.resolution() == RESOLUTION)
        .ok_or_else(|| GeoError::Cell(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_known_point_maps_to_its_resolution_9_cell() {
        // San Francisco city hall area.
        let point = Point::new(37.779_3, -122.419_2).unwrap();
        let cell = point.cell();
        assert_eq!(cell.resolution(), RESOLUTION);
        assert_eq!(parse_cell(&cell.to_string()).unwrap(), cell);
        assert_eq!(cell.to_string().len(), 15);
    }

    #[test]
    fn out_of_range_coordinates_are_refused() {
        assert_eq!(Point::new(90.5, 0.0), Err(GeoError::Latitude(90.5)));
        assert_eq!(Point::new(0.0, -180.5), Err(GeoError::Longitude(-180.5)));
        assert!(Point::new(f64::NAN, 0.0).is_err());
        assert!(Point::new(0.0, f64::INFINITY).is_err());
        assert!(parse_cell("8928308280fffff0").is_err());
        assert!(parse_cell("not-a-cell").is_err());
    }

    #[test]
    fn distances_are_haversine_metres() {
        let a = Point::new(0.0, 0.0).unwrap();
        let b = Point::new(0.0, 1.0).unwrap();
        let d = a.distance_m(&b);
        assert!((d - 111_195.0).abs() < 200.0, "{d}");
        assert_eq!(a.distance_m(&a), 0.0);
    }

    proptest! {
        #[test]
        fn every_valid_point_has_a_parseable_cell(lat in -90.0f64..=90.0, lng in -180.0f64..=180.0) {
            let cell = Point::new(lat, lng).unwrap().cell();
            prop_assert_eq!(parse_cell(&cell.to_string()).unwrap(), cell);
        }

        #[test]
        fn invalid_latitudes_never_pass(lat in prop_oneof![-1e9f64..-90.000_001, 90.000_001f64..1e9]) {
            prop_assert!(Point::new(lat, 0.0).is_err());
        }
    }
}
