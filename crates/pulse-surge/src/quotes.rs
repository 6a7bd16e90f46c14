//! Quotes: the live multiplier of the pickup cell applied to a tariff, optionally locked for a
//! while under a quote id so an order placed with it pays that price.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h3o::CellIndex;
use pulse_core::cache::Cache;
use pulse_core::clock::SharedClock;
use pulse_core::time::millis;
use pulse_core::{PortError, PortResult, TenantId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::Keys;
use crate::pricing::{Price, Tariff};
use crate::SurgeValue;
use pulse_geo::Point;

/// Quotes answered, by surge source.
pub const QUOTES_TOTAL: &str = "pulse_quotes_total";

/// Where a quote's multiplier came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SurgeSource {
    /// A live value computed by the engine.
    Live,
    /// No live value for the cell: multiplier 1.0.
    Default,
    /// The cache failed: multiplier 1.0 so pricing keeps working.
    Fallback,
}

impl SurgeSource {
    fn label(self) -> &'static str {
        match self {
            SurgeSource::Live => "live",
            SurgeSource::Default => "default",
            SurgeSource::Fallback => "fallback",
        }
    }
}

/// The surge in force for a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurrentSurge {
    /// Multiplier to apply.
    pub multiplier: f64,
    /// Where it came from.
    pub source: SurgeSource,
    /// When the engine computed it (Unix seconds), for live values.
    pub updated_at: Option<i64>,
}

/// A quote, as answered to the client and (when locked) stored under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    /// Pickup cell.
    pub h3: String,
    /// Dropoff cell, when a dropoff was given.
    pub dropoff_h3: Option<String>,
    /// Multiplier applied.
    pub multiplier: f64,
    /// Where the multiplier came from.
    pub source: SurgeSource,
    /// When the multiplier was computed (Unix seconds), for live values.
    pub updated_at: Option<i64>,
    /// The price.
    pub price: Price,
    /// Id to place an order at this price; `None` when the quote could not be locked.
    pub quote_id: Option<Uuid>,
    /// Until when the quote id is honoured (Unix milliseconds).
    pub expires_at_ms: Option<i64>,
    /// The user the quote was asked for, if named: only that user may pay with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Quote settings.
#[derive(Debug, Clone)]
pub struct QuoteSettings {
    /// Prices.
    pub tariff: Tariff,
    /// How long a quote id locks its price.
    pub lock: Duration,
    /// Cache key layout (the engine's).
    pub keys: Keys,
}

/// Computes and locks quotes.
#[derive(Debug, Clone)]
pub struct QuoteService {
    cache: Arc<dyn Cache>,
    settings: QuoteSettings,
    clock: SharedClock,
}

impl QuoteService {
    /// A service reading surge from `cache`.
    pub fn new(cache: Arc<dyn Cache>, settings: QuoteSettings, clock: SharedClock) -> Self {
        Self {
            cache,
            settings,
            clock,
        }
    }

    /// The surge in force for `tenant` in `cell`. Never fails: a cache error yields the
    /// fallback.
    pub async fn current_surge(&self, tenant: &TenantId, cell: CellIndex) -> CurrentSurge {
        let key = self.settings.keys.for_tenant(tenant).surge(cell);
        match self.cache.get(&key).await {
            Ok(Some(raw)) => match serde_json::from_slice::<SurgeValue>(&raw) {
                Ok(value) => CurrentSurge {
                    multiplier: value.multiplier,
                    source: SurgeSource::Live,
                    updated_at: Some(value.updated_at),
                },
                Err(err) => {
                    tracing::warn!(%cell, error = %err, "unreadable surge value; using the default");
                    Self::flat(SurgeSource::Default)
                }
            },
            Ok(None) => Self::flat(SurgeSource::Default),
            Err(err) => {
                // Debug, not warn: during an outage this is every quote; the breaker's state
                // changes and the cache error metrics are what an operator watches.
                tracing::debug!(%cell, error = %err, "surge cache unavailable; quoting the fallback");
                Self::flat(SurgeSource::Fallback)
            }
        }
    }

    fn flat(source: SurgeSource) -> CurrentSurge {
        CurrentSurge {
            multiplier: 1.0,
            source,
            updated_at: None,
        }
    }

    /// A quote of the trip with the surge in force, without locking it (no quote id): the
    /// fare of an order placed without a quote.
    pub async fn unlocked(
        &self,
        tenant: &TenantId,
        user_id: Option<&str>,
        pickup: Point,
        dropoff: Option<Point>,
    ) -> Quote {
        let cell = pickup.cell();
        let surge = self.current_surge(tenant, cell).await;
        let distance_m = dropoff.map_or(0.0, |dropoff| pickup.distance_m(&dropoff));
        Quote {
            h3: cell.to_string(),
            dropoff_h3: dropoff.map(|point| point.cell().to_string()),
            multiplier: surge.multiplier,
            source: surge.source,
            updated_at: surge.updated_at,
            price: self.settings.tariff.price(distance_m, surge.multiplier),
            quote_id: None,
            expires_at_ms: None,
            user_id: user_id.map(str::to_owned),
        }
    }

    /// Quotes a trip for `tenant` (and, when named, `user_id`) and locks its price under a new
    /// quote id (when the cache takes it). The lock is the tenant's: no other tenant can
    /// redeem it.
    pub async fn quote(
        &self,
        tenant: &TenantId,
        user_id: Option<&str>,
        pickup: Point,
        dropoff: Option<Point>,
    ) -> Quote {
        let mut quote = self.unlocked(tenant, user_id, pickup, dropoff).await;
        metrics::counter!(QUOTES_TOTAL, "source" => quote.source.label()).increment(1);
        if quote.source == SurgeSource::Fallback {
            // The cache is down, so the lock could not be stored either.
            return quote;
        }
        let quote_id = Uuid::new_v4();
        quote.quote_id = Some(quote_id);
        quote.expires_at_ms = Some(self.clock.now_ms() + millis(self.settings.lock));
        let stored = serde_json::to_vec(&quote).map(Bytes::from);
        let locked = match stored {
            Ok(bytes) => self
                .cache
                .set(
                    &self.settings.keys.for_tenant(tenant).quote(&quote_id),
                    bytes,
                    Some(self.settings.lock),
                )
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = locked {
            tracing::warn!(error = %err, "could not lock the quote; answering it without an id");
            quote.quote_id = None;
            quote.expires_at_ms = None;
        }
        quote
    }

    /// `tenant`'s locked quote `quote_id`, unless unknown (to that tenant) or expired.
    pub async fn locked(&self, tenant: &TenantId, quote_id: &Uuid) -> PortResult<Option<Quote>> {
        let key = self.settings.keys.for_tenant(tenant).quote(quote_id);
        let Some(raw) = self.cache.get(&key).await? else {
            return Ok(None);
        };
        let quote: Quote = serde_json::from_slice(&raw)
            .map_err(|err| PortError::Corrupt(format!("quote {quote_id}: {err}")))?;
        let live = quote
            .expires_at_ms
            .is_some_and(|at| at > self.clock.now_ms());
        Ok(live.then_some(quote))
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::clock::ManualClock;
    use pulse_memory::MemoryCache;

    use super::*;

    fn service(cache: MemoryCache, clock: &ManualClock) -> QuoteService {
        let settings = QuoteSettings {
            tariff: Tariff::default(),
            lock: Duration::from_secs(120),
            keys: Keys::default(),
        };
        QuoteService::new(Arc::new(cache), settings, Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn a_live_value_prices_the_trip_and_the_quote_is_locked() {
        let clock = ManualClock::new(1_700_000_000_000);
        let cache = MemoryCache::new(Arc::new(clock.clone()), 100);
        let pickup = Point::new(37.7793, -122.4192).unwrap();
        let value = SurgeValue {
            multiplier: 2.5,
            updated_at: 1_700_000_000,
            demand: 6,
            supply: 4,
        };
        cache
            .set(
                &Keys::default().surge(pickup.cell()),
                serde_json::to_vec(&value).unwrap().into(),
                None,
            )
            .await
            .unwrap();
        let quotes = service(cache, &clock);
        let default = TenantId::default_tenant();
        let other = TenantId::parse("other").unwrap();
        assert_eq!(
            quotes.quote(&other, None, pickup, None).await.source,
            SurgeSource::Default,
            "another tenant does not see the default tenant's surge"
        );
        let quote = quotes.quote(&default, Some("u1"), pickup, None).await;
        assert_eq!((quote.multiplier, quote.source), (2.5, SurgeSource::Live));
        assert_eq!(quote.price.total.amount_minor, 625);
        let id = quote.quote_id.expect("locked");
        assert_eq!(quote.user_id.as_deref(), Some("u1"));
        assert_eq!(
            quotes.locked(&default, &id).await.unwrap(),
            Some(quote.clone())
        );
        assert_eq!(
            quotes.locked(&other, &id).await.unwrap(),
            None,
            "the lock is the tenant's"
        );
        clock.advance(Duration::from_millis(119_999));
        assert_eq!(
            quotes.locked(&default, &id).await.unwrap(),
            Some(quote),
            "locked until its last millisecond"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            quotes.locked(&default, &id).await.unwrap(),
            None,
            "expired at expires_at"
        );
        assert_eq!(
            quotes.locked(&default, &Uuid::new_v4()).await.unwrap(),
            None,
            "unknown"
        );
    }

    #[tokio::test]
    async fn no_live_value_means_the_default_multiplier() {
        let clock = ManualClock::new(1_700_000_000_000);
        let quotes = service(MemoryCache::new(Arc::new(clock.clone()), 100), &clock);
        let pickup = Point::new(10.0, 10.0).unwrap();
        let dropoff = Point::new(10.01, 10.0).unwrap();
        let quote = quotes
            .quote(&TenantId::default_tenant(), None, pickup, Some(dropoff))
            .await;
        assert_eq!(
            (quote.multiplier, quote.source),
            (1.0, SurgeSource::Default)
        );
        assert_eq!(quote.price.distance_m, 1_112);
        assert_eq!(quote.price.total.amount_minor, 250 + 133);
    }
}
