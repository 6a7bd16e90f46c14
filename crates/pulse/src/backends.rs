//! Opens the backends named by the configuration's URLs and adapts them for readiness checks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pulse_core::cache::Cache;
use pulse_core::geo_index::GeoIndex;
use pulse_core::health::HealthCheck;
use pulse_core::log::{EventLog, TopicSpec};
use pulse_core::rate_limit::RateLimiter;
use pulse_core::PortResult;
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};
use pulse_kafka::{KafkaLog, KafkaOptions};
use pulse_memory::MemoryCache;
use pulse_memory::{MemoryGeoIndex, MemoryRateLimiter};
use pulse_redis::{RedisCache, RedisGeoIndex, RedisOptions, RedisRateLimiter};
use pulse_resilience::cache::GuardedCache;
use pulse_resilience::{Breaker, FailOpenRateLimiter, LeasedRateLimiter};
use pulse_store::{Database, StoreOptions};

use crate::config::{CacheTarget, Config, LogTarget};
use crate::wiring::profiles::PROFILES_BREAKER;

/// The topics the domains declare (and the platform's dead-letter topic), created at start-up
/// when missing. A new domain adds its list here.
pub fn declared_topics() -> Vec<TopicSpec> {
    [
        pulse_orders::TOPICS,
        pulse_surge::engine::TOPICS,
        pulse_gateway::TOPICS,
        pulse_marketplace::TOPICS,
        pulse_ledger::TOPICS,
        pulse_profiles::TOPICS,
        &[pulse_runtime::processor::DEAD_LETTER],
    ]
    .concat()
}

/// The open backends of one process.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Relational store.
    pub store: Database,
    /// Event log.
    pub log: Arc<dyn EventLog>,
    /// Cache / state store.
    pub cache: Arc<dyn Cache>,
    /// Set when the cache is in-process, so its expired entries can be swept.
    pub memory_cache: Option<MemoryCache>,
    /// Where the profiles' hot copies live: Redis beside everything else, or in-process with
    /// its own entry budget (`profiles.hot_max_entries`), so a million profiles never evict a
    /// surge value or a quote lock; behind the profiles' timeout and breaker.
    pub profile_cache: Arc<dyn Cache>,
    /// Set when the profiles' cache is in-process, so its expired entries can be swept.
    pub memory_profile_cache: Option<MemoryCache>,
    /// Per-tenant quotas: in-process beside the in-process cache; on Redis (one count for every
    /// process), falling open to an in-process limit while Redis does not answer.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Where drivers are: in-process beside the in-process cache, on the same Redis otherwise.
    pub geo: Arc<dyn GeoIndex>,
}

/// Name of the ingress limiter (the `limiter` label of `pulse_rate_limiter_fallbacks_total`,
/// and of its breaker's metrics).
pub const INGRESS_LIMITER: &str = "ingress";

/// Most tenants' buckets an in-process limiter holds.
const LOCAL_LIMITER_KEYS: usize = 100_000;

/// Hides the password of a URL before it is logged or printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Backends {
    /// Opens the store only (for `pulse migrate`).
    pub async fn open_store(config: &Config) -> anyhow::Result<Database> {
        let url = config.store_url();
        let options = StoreOptions {
            acquire_timeout: Duration::from_secs(config.backend_timeout_secs),
            ..StoreOptions::default()
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(parent) = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
        }
        Database::connect(&url, &options)
            .await
            .with_context(|| format!("store {}", redact(&url)))
    }

    /// Opens every backend, failing with the first one that does not answer.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let store = Self::open_store(config).await?;
        if config.migrate_on_start {
            store.migrate().await?;
        }
        let timeout = Duration::from_secs(config.backend_timeout_secs);
        let log: Arc<dyn EventLog> = match config.log_target()? {
            LogTarget::Embedded => {
                let options = EmbeddedLogOptions {
                    retention: Duration::from_secs(config.embedded_log.retention_hours * 3600),
                    ..EmbeddedLogOptions::default()
                };
                Arc::new(
                    EmbeddedLog::open(&config.data_dir, options)
                        .await
                        .context("embedded log")?,
                )
            }
            LogTarget::Kafka(url) => {
                let options = KafkaOptions {
                    request_timeout: timeout,
                    replication_factor: config.topics.replication_factor,
                    ..KafkaOptions::default()
                };
                Arc::new(
                    KafkaLog::connect(&url, options)
                        .await
                        .with_context(|| format!("log {url}"))?,
                )
            }
        };
        let mut memory_cache = None;
        let mut memory_profile_cache = None;
        let clock: pulse_core::clock::SharedClock = Arc::new(pulse_core::clock::SystemClock);
        let local_limiter = Arc::new(MemoryRateLimiter::new(clock.clone(), LOCAL_LIMITER_KEYS));
        let (cache, rate_limiter, geo): (Arc<dyn Cache>, Arc<dyn RateLimiter>, Arc<dyn GeoIndex>) =
            match config.cache_target()? {
                CacheTarget::Memory => {
                    let cache = MemoryCache::new(clock.clone(), config.memory_cache.max_entries);
                    memory_cache = Some(cache.clone());
                    memory_profile_cache =
                        Some(MemoryCache::new(clock, config.profiles.hot_max_entries));
                    (
                        Arc::new(cache),
                        local_limiter,
                        Arc::new(MemoryGeoIndex::new()),
                    )
                }
                CacheTarget::Redis(url) => {
                    let options = RedisOptions {
                        connect_timeout: timeout,
                        response_timeout: timeout,
                    };
                    let cache = RedisCache::connect(&url, options)
                        .await
                        .with_context(|| format!("cache {}", redact(&url)))?;
                    // The ingress fails open: a Redis outage must not stop the API. A limit that
                    // must hold globally (a third party's quota) uses the Redis limiter alone.
                    // Leased: Redis is asked once per batch of units, not once per request.
                    let shared = LeasedRateLimiter::new(
                        Arc::new(RedisRateLimiter::sharing(&cache)),
                        clock.clone(),
                    );
                    let limiter = FailOpenRateLimiter::new(
                        INGRESS_LIMITER,
                        Arc::new(shared),
                        local_limiter,
                        timeout,
                    )
                    .with_breaker(Breaker::new(
                        INGRESS_LIMITER,
                        &config.quote_breaker.settings(),
                    ));
                    let geo = RedisGeoIndex::sharing(&cache, &config.prefix);
                    (Arc::new(cache), Arc::new(limiter), Arc::new(geo))
                }
            };
        for topic in declared_topics() {
            let name = topic.named(&config.prefix);
            log.create_topic(&name, config.topics.partitions)
                .await
                .with_context(|| format!("creating topic {name} ({})", topic.carries))?;
        }
        let profile_cache: Arc<dyn Cache> = match &memory_profile_cache {
            Some(profiles) => Arc::new(profiles.clone()),
            None => cache.clone(),
        };
        // One timeout and one breaker for every profiles caller of the process (processor,
        // API, admin), so the breaker's state is the process's view of the hot copy.
        let profile_cache: Arc<dyn Cache> = Arc::new(
            GuardedCache::new(
                profile_cache,
                "profiles",
                config.profiles_breaker.call_timeout(),
            )
            .with_breaker(Breaker::new(
                PROFILES_BREAKER,
                &config.profiles_breaker.settings(),
            )),
        );
        Ok(Self {
            store,
            log,
            cache,
            memory_cache,
            profile_cache,
            memory_profile_cache,
            rate_limiter,
            geo,
        })
    }

    /// Readiness probes for `/readyz`, one per backend.
    pub fn health_checks(&self) -> Vec<Arc<dyn HealthCheck>> {
        vec![
            Arc::new(self.store.clone()),
            Arc::new(PortCheck::Log(self.log.clone())),
            Arc::new(PortCheck::Cache(self.cache.clone())),
        ]
    }
}

/// A readiness probe over a port.
#[derive(Debug)]
enum PortCheck {
    Log(Arc<dyn EventLog>),
    Cache(Arc<dyn Cache>),
}

#[async_trait]
impl HealthCheck for PortCheck {
    fn name(&self) -> &str {
        match self {
            PortCheck::Log(_) => "log",
            PortCheck::Cache(_) => "cache",
        }
    }

    async fn check(&self) -> PortResult<()> {
        match self {
            PortCheck::Log(log) => log.ping().await,
            PortCheck::Cache(cache) => cache.ping().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://pulse:secret@127.0.0.1:5432/pulse"),
            "postgres://pulse:***@127.0.0.1:5432/pulse"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("sqlite://data/pulse.db"), "sqlite://data/pulse.db");
    }
}
