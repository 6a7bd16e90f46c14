//! Background jobs, wired: the handler registry (the built-ins and the tenants' HTTP handlers in
//! the store), the control plane and its routes, the `worker` role, and the queue's readiness
//! check. The queue is the relational store (`pulse-store`'s `JobQueue`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_core::health::HealthCheck;
use pulse_core::PortResult;
use pulse_http::api::JobsApi;
use pulse_http::auth::ApiGuard;
use pulse_job_http::{HttpHandlerSettings, HttpHandlers};
use pulse_jobs::registry::HandlerRegistry;
use pulse_jobs::service::JobService;
use pulse_jobs::wake::Wakeup;
use pulse_jobs::worker::Worker;
use pulse_store::{Database, Sql};

use crate::backends::Backends;
use crate::config::Config;

/// What the jobs domain shares within a process: the registry, and the signal a local enqueue
/// gives a local worker.
#[derive(Debug, Clone)]
pub struct JobsWiring {
    /// Job types and their handlers.
    pub registry: Arc<HandlerRegistry>,
    /// Notified after every enqueue in this process.
    pub wake: Arc<Wakeup>,
}

/// The registry and the wake signal of one process.
pub fn wiring(config: &Config, backends: &Backends) -> JobsWiring {
    let registry = HandlerRegistry::new(
        Arc::new(backends.store.clone()),
        http_handlers(config),
        Duration::from_millis(config.jobs.handler_refresh_ms),
    );
    JobsWiring {
        registry: Arc::new(registry),
        wake: Arc::new(Wakeup::default()),
    }
}

/// The control plane.
pub fn service(
    config: &Config,
    backends: &Backends,
    jobs: &JobsWiring,
    clock: SharedClock,
) -> JobService {
    let store = Arc::new(backends.store.clone());
    JobService::new(
        store.clone(),
        store.clone(),
        store,
        jobs.registry.clone(),
        clock,
        config.jobs.limits.clone(),
        jobs.wake.clone(),
    )
}

/// The control plane on `store` alone, for the `pulse jobs` commands (no worker runs in that
/// process: nothing is woken).
pub fn service_on(store: &Database, config: &Config) -> JobService {
    let shared = Arc::new(store.clone());
    let registry = HandlerRegistry::new(
        shared.clone(),
        http_handlers(config),
        Duration::from_millis(config.jobs.handler_refresh_ms),
    );
    JobService::new(
        shared.clone(),
        shared.clone(),
        shared,
        Arc::new(registry),
        Arc::new(pulse_core::clock::SystemClock),
        config.jobs.limits.clone(),
        Arc::new(Wakeup::default()),
    )
}

fn http_handlers(config: &Config) -> Arc<HttpHandlers> {
    Arc::new(HttpHandlers {
        settings: HttpHandlerSettings {
            allow_private_targets: config.webhooks.allow_private_targets,
            user_agent: concat!("pulse-jobs/", env!("CARGO_PKG_VERSION")).to_owned(),
        },
    })
}

/// The jobs' routes for `/api/v1` (behind the key check).
pub fn router(
    config: &Config,
    backends: &Backends,
    jobs: &JobsWiring,
    guard: Arc<ApiGuard>,
    clock: SharedClock,
    backend_timeout: Duration,
) -> Router {
    let body = pulse_http::BodyLimits::new(
        config.jobs.max_body_bytes,
        Duration::from_millis(config.http.body_read_timeout_ms),
    );
    pulse_http::api::jobs_router(
        JobsApi {
            jobs: service(config, backends, jobs, clock),
            guard,
        },
        backend_timeout,
        body,
    )
}

/// The `worker` role.
pub fn worker(
    config: &Config,
    backends: &Backends,
    jobs: &JobsWiring,
    clock: SharedClock,
) -> Worker {
    let store = Arc::new(backends.store.clone());
    Worker::new(
        store.clone(),
        store,
        jobs.registry.clone(),
        clock,
        config
            .jobs
            .worker_settings(format!("worker-{}", uuid::Uuid::new_v4())),
        jobs.wake.clone(),
    )
}

/// `/readyz`'s check of the job queue: its table answers (the store is up and migrated).
#[derive(Debug)]
pub struct JobQueueHealth(pub Database);

#[async_trait]
impl HealthCheck for JobQueueHealth {
    fn name(&self) -> &str {
        "job_queue"
    }

    async fn check(&self) -> PortResult<()> {
        self.0
            .fetch_optional(&Sql::new("SELECT id FROM jobs LIMIT 1"))
            .await
            .map(|_| ())
    }
}
