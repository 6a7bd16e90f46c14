//! The application: backends + roles + HTTP server, with the zero-to-production shape
//! `Application::build(config) → port() → run_until_stopped()`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use pulse_http::OpsState;
use pulse_runtime::{CancellationToken, Role, Supervisor};
use tokio::net::TcpListener;

use crate::backends::{redact, Backends};
use crate::config::Config;

/// How often expired entries are swept from the in-process cache.
const MEMORY_CACHE_SWEEP: Duration = Duration::from_secs(30);

/// A built, not yet running, Pulse process.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    backends: Backends,
    roles: BTreeSet<Role>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
}

impl Application {
    /// Opens the backends, binds the listener and prepares the roles. Fails with a clear error
    /// when a backend does not answer or the address is taken.
    pub async fn build(
        config: &Config,
        roles: BTreeSet<Role>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let metrics = pulse_http::install_metrics_recorder();
        let backends = Backends::open(config).await?;
        let ops = OpsState {
            checks: backends.health_checks(),
            check_timeout: Duration::from_secs(config.backend_timeout_secs),
            metrics,
        };
        // The gateway's API routes arrive with the domain crates; every role serves the
        // operational endpoints so each process can be probed and scraped.
        let api = Router::new();
        let router = pulse_http::router(ops, api);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            store = %redact(&config.store_url()),
            log = %config.log_url,
            cache = %redact(&config.cache_url),
            roles = ?roles.iter().map(|role| role.name()).collect::<Vec<_>>(),
            "pulse started"
        );
        Ok(Self {
            listener,
            router,
            backends,
            roles,
            shutdown,
            drain_timeout: Duration::from_secs(config.shutdown_timeout_secs),
        })
    }

    /// The port the HTTP server listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|addr| addr.port())
            .unwrap_or(0)
    }

    /// The roles this process plays.
    pub fn roles(&self) -> &BTreeSet<Role> {
        &self.roles
    }

    /// The open backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Serves until the shutdown token is cancelled (or a task fails), then drains.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut supervisor = Supervisor::new(self.shutdown.clone());
        let stop = self.shutdown.clone();
        let listener = self.listener;
        let router = self.router;
        supervisor.spawn("http", async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .map_err(Into::into)
        });
        if let Some(cache) = self.backends.memory_cache.clone() {
            let stop = self.shutdown.clone();
            supervisor.spawn("memory-cache-sweeper", async move {
                let mut ticker = tokio::time::interval(MEMORY_CACHE_SWEEP);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        _ = ticker.tick() => {
                            let purged = cache.purge_expired();
                            metrics::gauge!("pulse_memory_cache_entries").set(cache.len() as f64);
                            tracing::debug!(purged, "swept expired cache entries");
                        }
                    }
                }
            });
        }
        let outcome = supervisor.run_until_stopped(self.drain_timeout).await;
        self.backends.store.close().await;
        tracing::info!("pulse stopped");
        outcome.map_err(Into::into)
    }
}
