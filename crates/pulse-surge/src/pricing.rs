//! The surge multiplier and prices in integer minor units.

use pulse_core::{Currency, Money};
use serde::{Deserialize, Serialize};

/// Largest surcharge: the multiplier never exceeds `1 + MAX_SURCHARGE`.
pub const MAX_SURCHARGE: f64 = 2.5;

/// `1 + min(2.5, demand / (supply × elasticity))`: 1.0 without demand, the cap (3.5) when there is
/// demand and no supply.
pub fn multiplier(demand: u64, supply: u64, elasticity: f64) -> f64 {
    if demand == 0 {
        return 1.0;
    }
    let capacity = supply as f64 * elasticity;
    if capacity <= 0.0 {
        return 1.0 + MAX_SURCHARGE;
    }
    1.0 + (demand as f64 / capacity).min(MAX_SURCHARGE)
}

/// Tariff: `total = (base + distance × rate) × multiplier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tariff {
    /// Base fare in minor units.
    pub base_minor: i64,
    /// Price per kilometre in minor units.
    pub per_km_minor: i64,
    /// The currency of both.
    pub currency: Currency,
}

impl Default for Tariff {
    fn default() -> Self {
        Self {
            base_minor: 250,
            per_km_minor: 120,
            currency: Currency::parse("USD").expect("a valid code"),
        }
    }
}

/// A priced trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Base fare.
    pub base: Money,
    /// Trip distance in whole metres.
    pub distance_m: i64,
    /// Total, surge included.
    pub total: Money,
}

impl Tariff {
    /// Prices a trip of `distance_m` metres under `multiplier`, rounding half up to the minor unit.
    ///
    /// Integer arithmetic throughout: the multiplier is taken in thousandths, as the cache stores
    /// it with at most three decimals.
    pub fn price(&self, distance_m: f64, multiplier: f64) -> Price {
        let distance_m = distance_m.max(0.0).round() as i64;
        let distance_part = (distance_m * self.per_km_minor + 500) / 1_000;
        let subtotal = self.base_minor + distance_part;
        let multiplier_milli = (multiplier * 1_000.0).round() as i64;
        let total = (subtotal * multiplier_milli + 500) / 1_000;
        Price {
            base: Money::new(self.base_minor, self.currency),
            distance_m,
            total: Money::new(total, self.currency),
        }
    }
}

/// Rounds a multiplier to the three decimals it is stored and priced with.
pub fn round_multiplier(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_seed_formula_with_its_edges() {
        assert_eq!(multiplier(0, 0, 1.0), 1.0);
        assert_eq!(multiplier(0, 10, 1.0), 1.0);
        assert_eq!(multiplier(6, 0, 1.0), 3.5);
        assert_eq!(multiplier(6, 4, 1.0), 2.5);
        assert_eq!(multiplier(2, 4, 1.0), 1.5);
        assert_eq!(multiplier(100, 1, 1.0), 3.5);
        assert_eq!(multiplier(6, 4, 2.0), 1.75);
    }

    #[test]
    fn prices_are_integer_minor_units() {
        let tariff = Tariff::default();
        let flat = tariff.price(0.0, 1.0);
        assert_eq!((flat.total.amount_minor, flat.distance_m), (250, 0));
        // 250 + 5.5 km × 120 = 910; × 1.5 = 1365.
        assert_eq!(tariff.price(5_500.0, 1.5).total.amount_minor, 1_365);
        // 250 + 1 m × 0.12 rounds to 250; × 3.5 = 875.
        assert_eq!(tariff.price(1.0, 3.5).total.amount_minor, 875);
    }

    proptest! {
        #[test]
        fn the_multiplier_stays_within_its_bounds(demand in 0u64..10_000, supply in 0u64..10_000, elasticity in 0.1f64..10.0) {
            let m = multiplier(demand, supply, elasticity);
            prop_assert!((1.0..=3.5).contains(&m));
        }

        #[test]
        fn surge_never_lowers_a_price(distance in 0.0f64..100_000.0, m in 1.0f64..3.5) {
            let tariff = Tariff::default();
            prop_assert!(tariff.price(distance, m).total.amount_minor >= tariff.price(distance, 1.0).total.amount_minor);
        }
    }
}
