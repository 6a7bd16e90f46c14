//! The surge domain, wired: quotes on the cache behind the quote breaker, the live map's feed,
//! the domain's HTTP routes, and the engine processor on the log and the cache.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_http::api::SurgeApi;
use pulse_resilience::{Breaker, GuardedCache};
use pulse_runtime::CancellationToken;
use pulse_surge::engine::{EngineNames, EngineSettings, SurgeEngine};
use pulse_surge::map::{SurgeFeeds, SurgeMap};
use pulse_surge::quotes::QuoteService;

use crate::backends::Backends;
use crate::config::{CacheTarget, Config};

/// Name of the breaker on the quote path (the `breaker` label of its metrics).
pub const QUOTE_BREAKER: &str = "quote_cache";

/// Quotes, with every cache call bounded and the quote breaker in front.
pub fn quotes(config: &Config, backends: &Backends, clock: SharedClock) -> QuoteService {
    let cache = GuardedCache::new(
        backends.cache.clone(),
        "quotes",
        config.quote_breaker.call_timeout(),
    )
    .with_breaker(Breaker::new(
        QUOTE_BREAKER,
        &config.quote_breaker.settings(),
    ));
    let keys = EngineNames::with_prefix(&config.prefix).keys;
    QuoteService::new(Arc::new(cache), config.pricing.quote_settings(keys), clock)
}

/// The live map's feeds, one per tenant watching (each reads only while a browser watches).
pub fn feed(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
    backend_timeout: Duration,
    shutdown: CancellationToken,
) -> SurgeFeeds {
    let cache = GuardedCache::new(backends.cache.clone(), "map", backend_timeout);
    let map = SurgeMap::new(
        Arc::new(cache),
        clock,
        config.map.map_settings(
            config.surge.window(),
            EngineNames::with_prefix(&config.prefix).keys,
        ),
    );
    SurgeFeeds::new(map, config.map.refresh(), shutdown)
}

/// The surge domain's `/api/v1` routes.
pub fn router(
    config: &Config,
    backends: &Backends,
    quotes: QuoteService,
    feed: SurgeFeeds,
    clock: SharedClock,
    backend_timeout: Duration,
) -> Router {
    pulse_http::api::surge_router(
        SurgeApi {
            quotes,
            log: backends.log.clone(),
            supply_topic: EngineNames::with_prefix(&config.prefix).supply,
            clock,
            surge: feed,
        },
        backend_timeout,
        config.http.api_body_limits(),
    )
}

/// The engine's settings for this deployment.
pub fn engine_settings(config: &Config) -> EngineSettings {
    // Only an in-process cache loses the windows on a restart by design; Redis keeps them (and
    // the engine notices by itself when it did not).
    let state_is_local = matches!(config.cache_target(), Ok(CacheTarget::Memory));
    config
        .surge
        .engine_settings(EngineNames::with_prefix(&config.prefix), state_is_local)
}

/// The engine processor, its cache calls bounded by `backend_timeout`.
pub fn engine(
    backends: &Backends,
    settings: EngineSettings,
    clock: SharedClock,
    backend_timeout: Duration,
) -> SurgeEngine {
    let cache = GuardedCache::new(backends.cache.clone(), "engine", backend_timeout);
    SurgeEngine::new(backends.log.clone(), Arc::new(cache), clock, settings)
}
