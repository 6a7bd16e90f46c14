//! The application: backends + roles + HTTP server, with the zero-to-production shape
//! `Application::build(config) → port() → run_until_stopped()`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use pulse_http::OpsState;
use pulse_runtime::{CancellationToken, Role, Supervisor};
use tokio::net::TcpListener;

use std::sync::Arc;

use pulse_core::clock::{SharedClock, SystemClock};
use pulse_gateway::book::PipelineBook;
use pulse_outbox::relay::{Relay, RelaySettings};
use pulse_surge::engine::EngineSettings;
use pulse_tenants::{IssuedKey, QuotaClass, Scope};

use crate::backends::{redact, Backends};
use crate::config::Config;
use crate::wiring;

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
    clock: SharedClock,
    engine: EngineSettings,
    relay: RelaySettings,
    backend_timeout: Duration,
    created_key: Option<IssuedKey>,
    http: pulse_http::server::HttpConfig,
    /// The tenants' event pipelines, when this process runs the `pipeline` role.
    pipelines: Option<PipelineBook>,
    /// The jobs' registry and wake signal, when this process runs the gateway or a worker.
    jobs: Option<wiring::jobs::JobsWiring>,
    config: Config,
}

/// Name of the breaker on the quote path (the `breaker` label of its metrics).
pub use crate::wiring::surge::QUOTE_BREAKER;

impl Application {
    /// Opens the backends, binds the listener and prepares the roles. Fails with a clear error
    /// when a backend does not answer or the address is taken.
    pub async fn build(
        config: &Config,
        roles: BTreeSet<Role>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        pulse_http::install_metrics_recorder();
        let backends = Backends::open(config).await?;
        Self::build_on(config, backends, roles, shutdown).await
    }

    /// [`Application::build`] on backends already open: how a test puts a fault-injecting
    /// adapter in front of a real one and runs the rest of Pulse unchanged.
    pub async fn build_on(
        config: &Config,
        backends: Backends,
        roles: BTreeSet<Role>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let metrics = pulse_http::install_metrics_recorder();
        let jobs = (roles.contains(&Role::Gateway) || roles.contains(&Role::Worker))
            .then(|| wiring::jobs::wiring(config, &backends));
        let mut checks = backends.health_checks();
        if jobs.is_some() {
            checks.push(Arc::new(wiring::jobs::JobQueueHealth(
                backends.store.clone(),
            )));
        }
        let ops = OpsState {
            checks,
            check_timeout: Duration::from_secs(config.backend_timeout_secs),
            metrics,
        };
        let clock: SharedClock = Arc::new(SystemClock);
        let backend_timeout = Duration::from_secs(config.backend_timeout_secs);
        let quotes = wiring::surge::quotes(config, &backends, clock.clone());
        // Every role serves the operational endpoints so each process can be probed and
        // scraped; only the gateway serves the API, each domain its router.
        let mut created_key = None;
        let pipelines = if roles.contains(&Role::Gateway) || roles.contains(&Role::Pipeline) {
            Some(wiring::gateway::book(config, &backends).await?)
        } else {
            None
        };
        let (api, ingress, admin, pages) = if roles.contains(&Role::Gateway) {
            let tenants = wiring::tenants::service(&backends.store, clock.clone());
            created_key = wiring::tenants::bootstrap(config, &tenants).await?;
            let guard = wiring::tenants::guard(
                config,
                &tenants,
                backends.rate_limiter.clone(),
                clock.clone(),
            );
            let book = pipelines.clone().expect("built for the gateway role");
            let admin = wiring::tenants::admin_router(
                config,
                tenants,
                book,
                wiring::profiles::service(config, &backends, clock.clone()),
                clock.clone(),
            )?;
            let (ingress, events) = wiring::gateway::routers(
                config,
                &backends,
                guard.clone(),
                clock.clone(),
                backend_timeout,
            );
            let mut orders = wiring::orders::service(
                &backends.store,
                quotes.clone(),
                clock.clone(),
                &config.prefix,
            );
            if let Some(funds) = wiring::wallet::funds(config, &backends) {
                orders = orders.requiring_funds(funds);
            }
            let feed = wiring::surge::feed(
                config,
                &backends,
                clock.clone(),
                backend_timeout,
                shutdown.clone(),
            );
            let body = config.http.api_body_limits();
            let api =
                wiring::orders::router(orders, backend_timeout, body).merge(wiring::surge::router(
                    config,
                    &backends,
                    quotes,
                    feed,
                    clock.clone(),
                    backend_timeout,
                ));
            let rides = wiring::rides::router(config, &backends, clock.clone(), backend_timeout)
                .merge(wiring::wallet::router(
                    config,
                    &backends,
                    clock.clone(),
                    backend_timeout,
                ))
                .merge(wiring::profiles::router(
                    config,
                    &backends,
                    clock.clone(),
                    backend_timeout,
                ));
            let jobs_api = wiring::jobs::router(
                config,
                &backends,
                jobs.as_ref().expect("built for the gateway role"),
                guard.clone(),
                clock.clone(),
                backend_timeout,
            );
            let api = pulse_http::auth::require(
                api.merge(rides).merge(events).merge(jobs_api),
                guard,
                Scope::Full,
                Some(QuotaClass::Api),
            );
            (api, ingress, Some(admin), pulse_http::map_page::routes())
        } else {
            (Router::new(), Router::new(), None, Router::new())
        };
        let router = pulse_http::router(ops, api, ingress, admin, pages);
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
            clock,
            engine: wiring::surge::engine_settings(config),
            relay: config.relay.settings(),
            backend_timeout,
            created_key,
            http: config.http.clone(),
            pipelines,
            jobs,
            config: config.clone(),
        })
    }

    /// The port the HTTP server listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|addr| addr.port())
            .unwrap_or(0)
    }

    /// The key of the `default` tenant, when this start created it (an empty store).
    pub fn created_key(&self) -> Option<&IssuedKey> {
        self.created_key.as_ref()
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
        let http = self.http;
        supervisor.spawn("http", async move {
            pulse_http::server::serve(listener, router, http, stop)
                .await
                .map_err(Into::into)
        });
        let memory_caches: Vec<(&'static str, pulse_memory::MemoryCache)> = [
            ("shared", self.backends.memory_cache.clone()),
            ("profiles", self.backends.memory_profile_cache.clone()),
        ]
        .into_iter()
        .filter_map(|(name, cache)| cache.map(|cache| (name, cache)))
        .collect();
        if !memory_caches.is_empty() {
            let stop = self.shutdown.clone();
            supervisor.spawn("memory-cache-sweeper", async move {
                let mut ticker = tokio::time::interval(MEMORY_CACHE_SWEEP);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        _ = ticker.tick() => {
                            for (name, cache) in &memory_caches {
                                let purged = cache.purge_expired();
                                metrics::gauge!(pulse_memory::ENTRIES, "cache" => *name)
                                    .set(cache.len() as f64);
                                tracing::debug!(cache = name, purged, "swept expired cache entries");
                            }
                        }
                    }
                }
            });
        }
        if self.roles.contains(&Role::Relay) {
            let relay = Relay::new(
                format!("relay-{}", uuid::Uuid::new_v4()),
                Arc::new(self.backends.store.clone()),
                self.backends.log.clone(),
                self.clock.clone(),
                self.relay.clone(),
            );
            let stop = self.shutdown.clone();
            supervisor.spawn("relay", async move {
                relay.run(stop).await;
                Ok(())
            });
        }
        if self.roles.contains(&Role::Engine) {
            let engine = wiring::surge::engine(
                &self.backends,
                self.engine.clone(),
                self.clock.clone(),
                self.backend_timeout,
            );
            let stop = self.shutdown.clone();
            supervisor.spawn("engine", async move {
                engine.run(stop).await.map_err(Into::into)
            });
        }
        if let (true, Some(book)) = (self.roles.contains(&Role::Pipeline), self.pipelines.clone()) {
            let (processor, settings) = wiring::gateway::processor(
                &self.config,
                &self.backends,
                book.clone(),
                self.clock.clone(),
            );
            let log = self.backends.log.clone();
            let stop = self.shutdown.clone();
            supervisor.spawn("pipeline", async move {
                pulse_runtime::processor::run(log, processor, settings, stop)
                    .await
                    .map_err(Into::into)
            });
            let redeliverer = wiring::gateway::redeliverer(
                &self.config,
                &self.backends,
                book,
                self.clock.clone(),
            );
            let stop = self.shutdown.clone();
            supervisor.spawn("redeliverer", async move {
                redeliverer.run(stop).await;
                Ok(())
            });
        }
        if self.roles.contains(&Role::Tracker) {
            let (tracker, settings) = wiring::rides::tracker(&self.config, &self.backends);
            let log = self.backends.log.clone();
            let stop = self.shutdown.clone();
            supervisor.spawn("tracker", async move {
                pulse_runtime::processor::run(log, tracker, settings, stop)
                    .await
                    .map_err(Into::into)
            });
        }
        if self.roles.contains(&Role::Dispatch) {
            let (dispatch, settings) =
                wiring::rides::dispatch(&self.config, &self.backends, self.clock.clone());
            let log = self.backends.log.clone();
            let stop = self.shutdown.clone();
            supervisor.spawn("dispatch", async move {
                pulse_runtime::processor::run(log, dispatch, settings, stop)
                    .await
                    .map_err(Into::into)
            });
        }
        if self.roles.contains(&Role::Wallet) {
            let (wallet, settings) =
                wiring::wallet::processor(&self.config, &self.backends, self.clock.clone());
            let log = self.backends.log.clone();
            let stop = self.shutdown.clone();
            supervisor.spawn("wallet", async move {
                pulse_runtime::processor::run(log, wallet, settings, stop)
                    .await
                    .map_err(Into::into)
            });
        }
        if self.roles.contains(&Role::Profiles) {
            let (profiles, settings) =
                wiring::profiles::processor(&self.config, &self.backends, self.clock.clone());
            let log = self.backends.log.clone();
            let stop = self.shutdown.clone();
            supervisor.spawn("profiles", async move {
                pulse_runtime::processor::run(log, profiles, settings, stop)
                    .await
                    .map_err(Into::into)
            });
        }
        if let (true, Some(jobs)) = (self.roles.contains(&Role::Worker), self.jobs.as_ref()) {
            let worker =
                wiring::jobs::worker(&self.config, &self.backends, jobs, self.clock.clone());
            let stop = self.shutdown.clone();
            supervisor.spawn("worker", async move {
                worker.run(stop).await.map_err(Into::into)
            });
            if self.backends.store.backend() == pulse_store::Backend::Postgres {
                let store = self.backends.store.clone();
                let wake = jobs.wake.clone();
                let clock = self.clock.clone();
                let stop = self.shutdown.clone();
                supervisor.spawn("jobs-listener", async move {
                    store
                        .listen_for_jobs(
                            move |due| {
                                if due <= clock.now_ms() {
                                    wake.ready_now();
                                } else {
                                    wake.due_at(due);
                                }
                            },
                            stop.cancelled_owned(),
                        )
                        .await;
                    Ok(())
                });
            }
        }
        let outcome = supervisor.run_until_stopped(self.drain_timeout).await;
        // Bounded: a connection stuck in a dead database must not keep the process alive.
        if tokio::time::timeout(Duration::from_secs(5), self.backends.store.close())
            .await
            .is_err()
        {
            tracing::warn!("store connections did not close within 5 s");
        }
        tracing::info!("pulse stopped");
        outcome.map_err(Into::into)
    }
}
