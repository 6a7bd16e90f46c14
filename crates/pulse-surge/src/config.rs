//! The surge domain's sections of the configuration file (`[surge]`, `[pricing]`, `[map]`): their
//! keys, defaults and checks, and the settings the domain's services are built from. The binary
//! composes these sections; it does not restate them.

use std::time::Duration;

use pulse_core::Currency;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineNames, EngineSettings};
use crate::keys::Keys;
use crate::map::MapSettings;
use crate::pricing::Tariff;
use crate::quotes::QuoteSettings;

/// `[surge]`: the engine's windows and multiplier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurgeConfig {
    /// Length of the sliding window, seconds.
    pub window_secs: u64,
    /// Width of one window bucket, seconds (the window's resolution).
    pub bucket_secs: u64,
    /// `elasticity` in `1 + min(2.5, demand / (supply × elasticity))`.
    pub elasticity: f64,
    /// TTL of `surge:{h3}`, seconds.
    pub surge_ttl_secs: u64,
    /// How often active cells are recomputed without new events, milliseconds.
    pub tick_ms: u64,
    /// Re-read the last window of both topics whenever an engine starts. An engine on the
    /// in-process cache always does; one on Redis does by itself when Redis lost its state (its
    /// state generation is gone), so this is for rebuilding on purpose.
    pub replay_on_start: bool,
}

impl Default for SurgeConfig {
    fn default() -> Self {
        let engine = EngineSettings::default();
        Self {
            window_secs: engine.window.as_secs(),
            bucket_secs: engine.bucket.as_secs(),
            elasticity: engine.elasticity,
            surge_ttl_secs: engine.surge_ttl.as_secs(),
            tick_ms: engine.tick.as_millis() as u64,
            replay_on_start: false,
        }
    }
}

impl SurgeConfig {
    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket_secs == 0 || self.window_secs < self.bucket_secs {
            return Err(
                "surge.bucket_secs must be at least 1 and at most surge.window_secs".into(),
            );
        }
        if !(self.elasticity.is_finite() && self.elasticity > 0.0) {
            return Err("surge.elasticity must be a positive number".into());
        }
        if self.surge_ttl_secs == 0 || self.tick_ms == 0 {
            return Err("surge.surge_ttl_secs and surge.tick_ms must be positive".into());
        }
        Ok(())
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// The engine's settings under `names`; `state_is_local` (an in-process cache, empty after
    /// every restart) makes it replay the window at every start.
    pub fn engine_settings(&self, names: EngineNames, state_is_local: bool) -> EngineSettings {
        EngineSettings {
            window: self.window(),
            bucket: Duration::from_secs(self.bucket_secs),
            elasticity: self.elasticity,
            surge_ttl: Duration::from_secs(self.surge_ttl_secs),
            tick: Duration::from_millis(self.tick_ms),
            replay_window_on_start: self.replay_on_start || state_is_local,
            names,
            ..EngineSettings::default()
        }
    }
}

/// `[pricing]`: the tariff and how long a quote locks its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// Base fare, minor units.
    pub base_minor: i64,
    /// Price per kilometre, minor units.
    pub per_km_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// How long a quote id locks its price, seconds.
    pub quote_lock_secs: u64,
}

impl Default for PricingConfig {
    fn default() -> Self {
        let tariff = Tariff::default();
        Self {
            base_minor: tariff.base_minor,
            per_km_minor: tariff.per_km_minor,
            currency: tariff.currency.to_string(),
            quote_lock_secs: 120,
        }
    }
}

impl PricingConfig {
    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if Currency::parse(&self.currency).is_err() {
            return Err("pricing.currency must be an ISO 4217 code such as USD".into());
        }
        if self.base_minor < 0 || self.per_km_minor < 0 {
            return Err("pricing.base_minor and pricing.per_km_minor must not be negative".into());
        }
        Ok(())
    }

    /// The quote service's settings, reading and locking under `keys`.
    pub fn quote_settings(&self, keys: Keys) -> QuoteSettings {
        QuoteSettings {
            tariff: Tariff {
                base_minor: self.base_minor,
                per_km_minor: self.per_km_minor,
                // Checked by `validate`; an unchecked bad code prices in the default currency.
                currency: Currency::parse(&self.currency).unwrap_or(Tariff::default().currency),
            },
            lock: Duration::from_secs(self.quote_lock_secs),
            keys,
        }
    }
}

/// `[map]`: the live surge map (`/` and `/api/v1/surge/*`, served by the gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// How often the map's stream reads the cache while a browser watches, milliseconds.
    pub refresh_ms: u64,
    /// Most cells one snapshot carries.
    pub max_cells: usize,
    /// Most driver dots one snapshot carries.
    pub max_drivers: usize,
}

impl Default for MapConfig {
    fn default() -> Self {
        let map = MapSettings::default();
        Self {
            refresh_ms: 1_000,
            max_cells: map.max_cells,
            max_drivers: map.max_drivers,
        }
    }
}

impl MapConfig {
    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.refresh_ms == 0 || self.max_cells == 0 {
            return Err("map.refresh_ms and map.max_cells must be positive".into());
        }
        Ok(())
    }

    /// The map's settings, counting drivers over the engine's `window`, reading under `keys`.
    pub fn map_settings(&self, window: Duration, keys: Keys) -> MapSettings {
        MapSettings {
            max_cells: self.max_cells,
            max_drivers: self.max_drivers,
            window,
            keys,
        }
    }

    /// How often the stream refreshes.
    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_services_defaults_and_valid() {
        let surge = SurgeConfig::default();
        surge.validate().expect("valid");
        assert_eq!(
            surge.engine_settings(EngineNames::default(), false).window,
            EngineSettings::default().window
        );
        PricingConfig::default().validate().expect("valid");
        MapConfig::default().validate().expect("valid");
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_key() {
        let surge = SurgeConfig {
            bucket_secs: 0,
            ..SurgeConfig::default()
        };
        assert!(surge.validate().unwrap_err().contains("surge.bucket_secs"));
        let pricing = PricingConfig {
            currency: "usd".into(),
            ..PricingConfig::default()
        };
        assert!(pricing.validate().unwrap_err().contains("pricing.currency"));
    }
}
