//! Customer profiles, wired: the cold store is the SQL database, the hot copy the profiles'
//! cache (Redis, or an in-process cache with its own budget) behind a timeout and a breaker;
//! the `profiles` processor on `events.processed`; the profiles' HTTP routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_profiles::engine::ProfileEngine;
use pulse_profiles::hot::HotProfiles;
use pulse_profiles::processor::ProfilesProcessor;
use pulse_profiles::service::ProfileService;
use pulse_runtime::processor::ConsumerSettings;

use crate::backends::Backends;
use crate::config::Config;

/// Name of the breaker on the profiles' hot-copy calls (the `breaker` label of its metrics).
pub const PROFILES_BREAKER: &str = "profiles_cache";

/// The engine that applies events to profiles, for this deployment.
pub fn engine(config: &Config, backends: &Backends, clock: SharedClock) -> ProfileEngine {
    let hot = HotProfiles::new(
        backends.profile_cache.clone(),
        config.prefix.clone(),
        Duration::from_secs(config.profiles.hot_ttl_secs),
    );
    ProfileEngine::new(
        Arc::new(backends.store.clone()),
        hot,
        Arc::new(config.profiles.clone()),
        clock,
        pulse_profiles::PROFILE_UPDATES.named(&config.prefix),
    )
}

/// The profile service of this deployment.
pub fn service(config: &Config, backends: &Backends, clock: SharedClock) -> ProfileService {
    ProfileService::new(engine(config, backends, clock))
}

/// The profiles' `/api/v1` routes.
pub fn router(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
    backend_timeout: Duration,
) -> Router {
    pulse_http::api::profiles_router(
        pulse_http::api::ProfilesApi {
            profiles: service(config, backends, clock),
        },
        backend_timeout,
        config.http.api_body_limits(),
    )
}

/// The `profiles` processor and how it consumes.
pub fn processor(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
) -> (ProfilesProcessor, ConsumerSettings) {
    let processor = ProfilesProcessor::new(engine(config, backends, clock));
    let settings = processor.consumer(
        format!("{}{}", config.prefix, pulse_profiles::processor::GROUP),
        pulse_gateway::pipeline::PROCESSED.named(&config.prefix),
        pulse_runtime::processor::DEAD_LETTER.named(&config.prefix),
    );
    (processor, settings)
}
