//! The marketplace's rides, wired: the ride store is the SQL database, the geo index the
//! backends' (in-process, or Redis beside the cache); the `tracker` and `dispatch` processors on
//! the log; the rides' HTTP routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_marketplace::dispatch::{DispatchProcessor, Dispatcher};
use pulse_marketplace::ports::RideStore;
use pulse_marketplace::rides::RideService;
use pulse_marketplace::tracker::{Tracker, TrackerTopics};
use pulse_marketplace::RideRules;
use pulse_runtime::processor::ConsumerSettings;

use crate::backends::Backends;
use crate::config::Config;

/// What this deployment's transitions write besides their rows.
fn rules(config: &Config) -> RideRules {
    RideRules::with_prefix(&config.prefix).requiring_funds(config.wallet.require_funds)
}

fn store(backends: &Backends) -> Arc<dyn RideStore> {
    Arc::new(backends.store.clone())
}

/// The dispatcher of this deployment.
pub fn dispatcher(config: &Config, backends: &Backends, clock: SharedClock) -> Dispatcher {
    Dispatcher::new(
        store(backends),
        backends.geo.clone(),
        clock,
        config.dispatch.clone(),
        config.tracker.max_age(),
        rules(config),
    )
}

/// The rides' `/api/v1` routes.
pub fn router(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
    backend_timeout: Duration,
) -> Router {
    pulse_http::api::rides_router(
        pulse_http::api::RidesApi {
            rides: RideService::new(store(backends), clock.clone(), rules(config)),
            dispatcher: dispatcher(config, backends, clock.clone()),
            geo: backends.geo.clone(),
            max_age: config.tracker.max_age(),
            clock,
        },
        backend_timeout,
        config.http.api_body_limits(),
    )
}

/// The `tracker` processor and how it consumes.
pub fn tracker(config: &Config, backends: &Backends) -> (Tracker, ConsumerSettings) {
    let tracker = Tracker::new(
        backends.geo.clone(),
        store(backends),
        TrackerTopics {
            supply: pulse_surge::engine::EngineNames::with_prefix(&config.prefix).supply,
            rides: rules(config).events,
        },
    );
    let settings = tracker.consumer(
        format!("{}{}", config.prefix, pulse_marketplace::tracker::GROUP),
        pulse_runtime::processor::DEAD_LETTER.named(&config.prefix),
    );
    (tracker, settings)
}

/// The `dispatch` processor and how it consumes.
pub fn dispatch(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
) -> (DispatchProcessor, ConsumerSettings) {
    let processor = DispatchProcessor::new(dispatcher(config, backends, clock), store(backends));
    let settings = processor.consumer(
        format!("{}{}", config.prefix, pulse_marketplace::dispatch::GROUP),
        pulse_orders::ORDER_CREATED.named(&config.prefix),
        pulse_runtime::processor::DEAD_LETTER.named(&config.prefix),
    );
    (processor, settings)
}
