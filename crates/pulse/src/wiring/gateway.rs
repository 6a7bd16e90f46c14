//! The event gateway, wired: the plugin registry with the sinks of `pulse-sinks`, the tenants'
//! pipelines, the door on the log and the store, its routes, and the `pipeline` processor with
//! its redeliverer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_gateway::book::PipelineBook;
use pulse_gateway::dead_letters::DeadLetters;
use pulse_gateway::ingest::{IngestService, IngestSettings, INGEST};
use pulse_gateway::pipeline::{
    GatewayStores, PipelineProcessor, PipelineSettings, RedeliverSettings, Redeliverer,
    PIPELINE_GROUP, PROCESSED,
};
use pulse_gateway::registry::PluginRegistry;
use pulse_http::api::EventsApi;
use pulse_http::auth::ApiGuard;
use pulse_runtime::processor::ConsumerSettings;

use crate::backends::Backends;
use crate::config::Config;

/// The gateway's tables, all in the store.
pub fn stores(backends: &Backends) -> GatewayStores {
    let store = Arc::new(backends.store.clone());
    GatewayStores {
        dedup: store.clone(),
        ledger: store.clone(),
        parked: store.clone(),
        dead: store,
    }
}

/// Every plugin this build has: the built-in transforms and the I/O sinks.
pub fn registry(config: &Config, backends: &Backends) -> PluginRegistry {
    let mut registry = PluginRegistry::with_builtin_transforms();
    pulse_sinks::register(
        &mut registry,
        pulse_sinks::SinkDeps {
            store: backends.store.clone(),
            log: backends.log.clone(),
            prefix: config.prefix.clone(),
            webhooks: config.webhooks.clone(),
        },
    );
    registry
}

/// The tenants' pipelines: the config file's, then the stored ones over them.
pub async fn book(config: &Config, backends: &Backends) -> anyhow::Result<PipelineBook> {
    let configured = config.gateway.pipelines()?;
    let book = PipelineBook::new(
        Arc::new(registry(config, backends)),
        Arc::new(backends.store.clone()),
        &configured,
    )
    .context("gateway.tenants")?;
    if let Err(err) = book.refresh(true).await {
        tracing::warn!(error = %err, "cannot read the stored pipelines yet; the processor retries");
    }
    Ok(book)
}

/// The door. On SQLite its dedup keys are written behind the answer (one writer there, shared
/// with the pipeline's archive; one process, so keys not yet written are served from memory);
/// on PostgreSQL, before it, so every gateway process sees them at once.
pub fn ingest(config: &Config, backends: &Backends, clock: SharedClock) -> IngestService {
    let store: Arc<dyn pulse_gateway::ports::DedupStore> = Arc::new(backends.store.clone());
    let dedup: Arc<dyn pulse_gateway::ports::DedupStore> = match backends.store.backend() {
        pulse_store::Backend::Sqlite => {
            Arc::new(pulse_gateway::write_behind::WriteBehindDedup::new(store))
        }
        pulse_store::Backend::Postgres => store,
    };
    IngestService::new(
        backends.log.clone(),
        dedup,
        clock,
        IngestSettings {
            topic: INGEST.named(&config.prefix),
            dedup_window: config.gateway.dedup_window(),
            limits: config.gateway.limits.clone(),
        },
    )
}

/// The gateway's routes: the doors under `/v1`, and the dead letters for `/api/v1`.
pub fn routers(
    config: &Config,
    backends: &Backends,
    guard: Arc<ApiGuard>,
    clock: SharedClock,
    backend_timeout: Duration,
) -> (Router, Router) {
    let state = EventsApi {
        ingest: ingest(config, backends, clock.clone()),
        guard,
        dead_letters: DeadLetters::new(
            Arc::new(backends.store.clone()),
            backends.log.clone(),
            INGEST.named(&config.prefix),
            clock,
        ),
    };
    let body = pulse_http::BodyLimits::new(
        config.gateway.limits.max_batch_bytes,
        Duration::from_millis(config.http.body_read_timeout_ms),
    );
    (
        pulse_http::api::ingress_router(state.clone(), backend_timeout, body),
        pulse_http::api::events_router(state, backend_timeout, config.http.api_body_limits()),
    )
}

/// The `pipeline` processor and how it consumes.
pub fn processor(
    config: &Config,
    backends: &Backends,
    book: PipelineBook,
    clock: SharedClock,
) -> (PipelineProcessor, ConsumerSettings) {
    let processor = PipelineProcessor::new(
        book,
        stores(backends),
        backends.log.clone(),
        clock,
        PipelineSettings {
            processed_topic: PROCESSED.named(&config.prefix),
            dedup_window: config.gateway.dedup_window(),
            expire_every: Duration::from_secs(60),
            inline_budget: Duration::from_millis(config.gateway.inline_delivery_ms),
        },
    );
    let settings = ConsumerSettings {
        dead_letter_topic: pulse_runtime::processor::DEAD_LETTER.named(&config.prefix),
        batch_size: 1_000,
        ..ConsumerSettings::new(
            format!("{}{PIPELINE_GROUP}", config.prefix),
            vec![INGEST.named(&config.prefix)],
        )
    };
    (processor, settings)
}

/// The redeliverer of parked events.
pub fn redeliverer(
    config: &Config,
    backends: &Backends,
    book: PipelineBook,
    clock: SharedClock,
) -> Redeliverer {
    Redeliverer::new(
        book,
        stores(backends),
        clock,
        RedeliverSettings {
            interval: Duration::from_millis(config.gateway.redeliver_interval_ms.max(10)),
            dedup_window: config.gateway.dedup_window(),
            ..RedeliverSettings::default()
        },
    )
}
