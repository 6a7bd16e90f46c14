//! Configuration: defaults → `pulse.toml` (`--config`) → `PULSE_*` environment → flags.
//!
//! Top-level keys map to `PULSE_<KEY>` (`PULSE_STORE_URL`, `PULSE_LISTEN`, …); nested keys use a
//! double underscore (`PULSE_EMBEDDED_LOG__RETENTION_HOURS`). The README's configuration table lists them.

use pulse_gateway::config::GatewayConfig;
use pulse_jobs::config::JobsConfig;
use pulse_ledger::model::LedgerSettings;
use pulse_marketplace::dispatch::DispatchConfig;
use pulse_marketplace::tracker::TrackerConfig;
use pulse_profiles::settings::ProfileSettings;
use pulse_sinks::WebhookSettings;
use pulse_tenants::config::{AuthConfig, QuotasConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use pulse_http::server::HttpConfig;
use pulse_outbox::relay::RelayConfig;
use pulse_resilience::BreakerConfig;
use pulse_surge::config::{MapConfig, PricingConfig, SurgeConfig};
use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

/// Settings of the embedded log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// Records older than this many hours are deleted.
    pub retention_hours: u64,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        Self {
            retention_hours: 168,
        }
    }
}

/// Settings of the in-process cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryCacheConfig {
    /// Most live entries held.
    pub max_entries: usize,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: pulse_memory::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Settings of the topics Pulse creates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of each topic Pulse creates (existing topics keep theirs).
    pub partitions: u32,
    /// Replication factor on Kafka (`-1` = the broker's default).
    pub replication_factor: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication_factor: -1,
        }
    }
}

/// Everything a Pulse process can be told. The domains' sections are theirs (keys, defaults,
/// checks); this only composes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Where embedded backends keep their files.
    pub data_dir: PathBuf,
    /// Relational store: `sqlite://path` or `postgres://…`; default `sqlite://<data_dir>/pulse.db`.
    pub store_url: Option<String>,
    /// Event log: `embedded` or `kafka://host:port[,host:port]`.
    pub log_url: String,
    /// Cache: `memory://` or `redis://host:port[/db]`.
    pub cache_url: String,
    /// Apply pending schema migrations when a process starts.
    pub migrate_on_start: bool,
    /// Most seconds a graceful shutdown may take before tasks are aborted.
    pub shutdown_timeout_secs: u64,
    /// Timeout, in seconds, of every backend call made at start-up and by `/readyz`.
    pub backend_timeout_secs: u64,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `pulse=debug,info` (`RUST_LOG` wins when set).
    pub log_level: String,
    /// OTLP/HTTP collector traces are exported to (`None`: nothing is exported).
    pub otlp_endpoint: Option<String>,
    /// Put before every topic, consumer group and cache key this deployment uses (empty: the
    /// contract names, `demand.orders`, `pulse-engine-group`, `surge:{h3}`, …), so deployments
    /// or test runs sharing one Kafka and one Redis stay apart.
    pub prefix: String,
    /// Embedded log settings.
    pub embedded_log: EmbeddedLogConfig,
    /// In-process cache settings.
    pub memory_cache: MemoryCacheConfig,
    /// Topic settings.
    pub topics: TopicsConfig,
    /// Surge engine settings.
    pub surge: SurgeConfig,
    /// Prices and quotes.
    pub pricing: PricingConfig,
    /// Outbox relay settings.
    pub relay: RelayConfig,
    /// Live surge map settings.
    pub map: MapConfig,
    /// Circuit breaker on the quote path.
    pub quote_breaker: BreakerConfig,
    /// HTTP server: timeouts and the connection limit.
    pub http: HttpConfig,
    /// The token of `/admin/v1` (`PULSE_ADMIN_TOKEN`); unset: one generated on first start into
    /// `<data_dir>/admin-token`.
    pub admin_token: Option<Secret>,
    /// How API keys are checked.
    pub auth: AuthConfig,
    /// Each quota class's default per tenant.
    pub quotas: QuotasConfig,
    /// The event gateway: dedup window, limits, tenant pipelines.
    pub gateway: GatewayConfig,
    /// Outbound HTTP of `webhook_sink` and of the jobs' HTTP handlers (which targets are
    /// allowed, timeouts).
    pub webhooks: WebhookSettings,
    /// Background jobs: limits, the worker, retention, tenants' weights.
    pub jobs: JobsConfig,
    /// The tracker: how fresh a driver's ping must be to count.
    pub tracker: TrackerConfig,
    /// Dispatch: automatic matching, radii, retries.
    pub dispatch: DispatchConfig,
    /// The wallet: funds required or not, the commission, the ledger's checks.
    pub wallet: LedgerSettings,
    /// Customer profiles: identity rules (per tenant), trait limits, the hot copy, the
    /// reconciliation.
    pub profiles: ProfileSettings,
    /// Circuit breaker on the profiles' hot-copy reads.
    pub profiles_breaker: BreakerConfig,
}

/// A setting that must never reach a log: its `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            store_url: None,
            log_url: "embedded".to_owned(),
            cache_url: "memory://".to_owned(),
            migrate_on_start: true,
            shutdown_timeout_secs: 10,
            backend_timeout_secs: 5,
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            otlp_endpoint: None,
            prefix: String::new(),
            embedded_log: EmbeddedLogConfig::default(),
            memory_cache: MemoryCacheConfig::default(),
            topics: TopicsConfig::default(),
            surge: SurgeConfig::default(),
            pricing: PricingConfig::default(),
            relay: RelayConfig::default(),
            map: MapConfig::default(),
            quote_breaker: BreakerConfig::default(),
            admin_token: None,
            auth: AuthConfig::default(),
            quotas: QuotasConfig::default(),
            gateway: GatewayConfig::default(),
            webhooks: WebhookSettings::default(),
            jobs: JobsConfig::default(),
            tracker: TrackerConfig::default(),
            dispatch: DispatchConfig::default(),
            wallet: LedgerSettings::default(),
            profiles: ProfileSettings::default(),
            profiles_breaker: BreakerConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// Longest [`Config::prefix`]: it must leave room for the topic names in Kafka's 249.
const MAX_PREFIX_CHARS: usize = 64;

/// Values given as command-line flags; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct FlagOverrides {
    /// Address to listen on [env: PULSE_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded backends [env: PULSE_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Relational store: sqlite://PATH or postgres://… [env: PULSE_STORE_URL]
    #[arg(long = "store", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// Event log: embedded or kafka://HOST:PORT[,HOST:PORT] [env: PULSE_LOG_URL]
    #[arg(long = "log", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// Cache: memory:// or redis://HOST:PORT [env: PULSE_CACHE_URL]
    #[arg(long = "cache", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_url: Option<String>,
    /// Log format [env: PULSE_LOG_FORMAT] [default: json]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter such as info or pulse=debug [env: PULSE_LOG_LEVEL]
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Export traces over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318
    /// [env: PULSE_OTLP_ENDPOINT] [default: none, nothing is exported]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// The event log a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// The embedded log in the data directory.
    Embedded,
    /// Apache Kafka at this `kafka://` URL.
    Kafka(String),
}

/// The cache a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTarget {
    /// The in-process TTL store.
    Memory,
    /// Redis at this `redis://` (or `rediss://`) URL.
    Redis(String),
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type or an unknown key was given.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A backend URL has a scheme Pulse does not support.
    #[error("unsupported {what} URL {url:?}: expected {expected}")]
    UnsupportedScheme {
        /// Which backend.
        what: &'static str,
        /// The URL given.
        url: String,
        /// The accepted forms.
        expected: &'static str,
    },
}

/// The names of the top-level keys (settings and sections).
fn top_level_keys() -> Vec<String> {
    match Serialized::defaults(Config::default()).data() {
        Ok(data) => data
            .into_values()
            .flat_map(|dict| dict.into_keys())
            .collect(),
        Err(_) => Vec::new(),
    }
}

impl Config {
    /// Loads the layered configuration.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        let config = Self::figment(file, flags)?
            .extract::<Config>()
            .map_err(|err| ConfigError::Invalid(err.to_string().replace('\n', " ")))?;
        config.validate()?;
        Ok(config)
    }

    fn figment(file: Option<&Path>, flags: &FlagOverrides) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables that name a setting: `PULSE_TEST_*`, `PULSE_BENCH_*` and the like belong
        // to the tooling, and the file's unknown keys are refused, not the environment's.
        let known = top_level_keys();
        let env = Env::prefixed("PULSE_").split("__").filter(move |key| {
            // Keys keep the variable's case (`LISTEN`); settings are matched without it.
            let top = key.as_str().split('.').next().unwrap_or_default();
            known.iter().any(|name| name.eq_ignore_ascii_case(top))
        });
        Ok(figment.merge(env).merge(Serialized::defaults(flags)))
    }

    /// Checks every backend URL's scheme, so a typo fails before anything is opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let store = self.store_url();
        let known_store = ["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| store.starts_with(scheme));
        if !known_store {
            return Err(ConfigError::UnsupportedScheme {
                what: "store",
                url: store,
                expected: "sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB",
            });
        }
        self.log_target()?;
        self.cache_target()?;
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        let sections = [
            self.surge.validate(),
            self.pricing.validate(),
            self.relay.validate(),
            self.map.validate(),
            self.quote_breaker.validate("quote_breaker"),
            self.auth.validate(),
            self.quotas.validate(),
            self.webhooks.validate(),
            self.gateway.validate(),
            self.jobs.validate(),
            self.tracker.validate(),
            self.dispatch.validate(),
            self.wallet.validate(),
            self.profiles.validate(),
            self.profiles_breaker.validate("profiles_breaker"),
            (self.jobs.worker.drain_timeout_ms < self.shutdown_timeout_secs.saturating_mul(1_000))
                .then_some(())
                .ok_or_else(|| {
                    "jobs.worker.drain_timeout_ms must be below shutdown_timeout_secs (the \
                     process's whole drain)"
                        .to_owned()
                }),
            self.admin_token.as_ref().map_or(Ok(()), |token| {
                pulse_tenants::AdminToken::new(&token.0)
                    .map(|_| ())
                    .map_err(|err| format!("admin_token: {err}"))
            }),
            self.http
                .validate(std::time::Duration::from_secs(self.backend_timeout_secs)),
        ];
        for section in sections {
            section.map_err(ConfigError::Invalid)?;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            if !endpoint.starts_with("http://") {
                return invalid(
                    "otlp_endpoint must be an http:// URL of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318)",
                );
            }
        }
        let prefix_ok = self.prefix.len() <= MAX_PREFIX_CHARS
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !prefix_ok {
            return invalid(
                "prefix must be at most 64 characters of a-z, 0-9, '.', '_' or '-' (Kafka topic names)",
            );
        }
        Ok(())
    }

    /// The event log named by `log_url`.
    pub fn log_target(&self) -> Result<LogTarget, ConfigError> {
        match self.log_url.as_str() {
            "embedded" | "embedded://" => Ok(LogTarget::Embedded),
            url if url.starts_with("kafka://") => Ok(LogTarget::Kafka(url.to_owned())),
            url => Err(ConfigError::UnsupportedScheme {
                what: "log",
                url: url.to_owned(),
                expected: "embedded or kafka://HOST:PORT[,HOST:PORT]",
            }),
        }
    }

    /// The cache named by `cache_url`.
    pub fn cache_target(&self) -> Result<CacheTarget, ConfigError> {
        match self.cache_url.as_str() {
            "memory" | "memory://" => Ok(CacheTarget::Memory),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(CacheTarget::Redis(url.to_owned()))
            }
            url => Err(ConfigError::UnsupportedScheme {
                what: "cache",
                url: url.to_owned(),
                expected: "memory:// or redis://HOST:PORT[/DB]",
            }),
        }
    }

    /// The store URL, defaulting to an SQLite file in the data directory.
    pub fn store_url(&self) -> String {
        self.store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("pulse.db").display()))
    }
}

#[cfg(test)]
// figment::Jail fixes the closure's error type, which is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_backends_on_loopback() {
        figment::Jail::expect_with(|_jail| {
            let config = Config::load(None, &FlagOverrides::default()).expect("defaults load");
            assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(config.log_url, "embedded");
            assert_eq!(config.cache_url, "memory://");
            assert_eq!(config.store_url(), "sqlite://data/pulse.db");
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_then_flags_take_precedence() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pulse.toml",
                r#"
                listen = "127.0.0.1:9000"
                cache_url = "redis://file:6379"
                log_url = "kafka://file:9092"
                [embedded_log]
                retention_hours = 1
                "#,
            )?;
            jail.set_env("PULSE_CACHE_URL", "redis://env:6379");
            jail.set_env("PULSE_LOG_URL", "kafka://env:9092");
            jail.set_env("PULSE_EMBEDDED_LOG__RETENTION_HOURS", "2");
            jail.set_env("PULSE_TEST_POSTGRES_URL", "postgres://ignored");
            let flags = FlagOverrides {
                log_url: Some("kafka://flag:9092".into()),
                ..FlagOverrides::default()
            };
            let config = Config::load(Some(Path::new("pulse.toml")), &flags).expect("load");
            assert_eq!(
                config.listen.to_string(),
                "127.0.0.1:9000",
                "file beats default"
            );
            assert_eq!(config.cache_url, "redis://env:6379", "env beats file");
            assert_eq!(config.log_url, "kafka://flag:9092", "flag beats env");
            assert_eq!(config.embedded_log.retention_hours, 2);
            Ok(())
        });
    }

    #[test]
    fn the_example_file_in_the_repository_loads_with_default_values() {
        figment::Jail::expect_with(|_jail| {
            let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pulse.example.toml");
            let config = Config::load(Some(&example), &FlagOverrides::default()).expect("load");
            assert_eq!(
                config,
                Config::default(),
                "the example documents the defaults"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_schemes_are_refused_before_anything_opens() {
        let mut config = Config::default();
        config.validate().expect("defaults are valid");
        config.cache_url = "memcached://x".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("unsupported cache URL") && err.contains("redis://"),
            "{err}"
        );
        config.cache_url = "redis://127.0.0.1:6379".into();
        config.log_url = "pulsar://x".into();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unsupported log URL"));
        config.log_url = "kafka://a:1".into();
        config.store_url = Some("mysql://db".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unsupported store URL"));
    }

    #[test]
    fn http_timeouts_must_outlast_the_backend_timeout_and_the_body_read() {
        let mut config = Config::default();
        config.http.idle_timeout_ms = 5_000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.idle_timeout_ms"), "{err}");
        config.http = pulse_http::server::HttpConfig {
            max_connections: 0,
            ..Default::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.max_connections"));
        config.http = pulse_http::server::HttpConfig {
            header_read_timeout_ms: 0,
            ..Default::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_naming_its_path() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[surge]\nwindow_sec = 60\n")?;
            let err = Config::load(Some(Path::new("typo.toml")), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("window_sec") && err.contains("surge"),
                "names the key and its section: {err}"
            );
            jail.create_file("top.toml", "listen_addr = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("top.toml")), &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_addr"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn environment_variables_of_the_tooling_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PULSE_BENCH_PORT", "18490");
            jail.set_env("PULSE_TEST_POSTGRES_URL", "postgres://ignored");
            jail.set_env("PULSE_SURGE__WINDOW_SECS", "120");
            let config = Config::load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(
                config.surge.window_secs, 120,
                "a setting's variable is read"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_and_missing_files_are_reported_plainly() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PULSE_LISTEN", "not-an-address");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("listen"), "{err}");
            let err =
                Config::load(Some(Path::new("nope.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(matches!(err, ConfigError::MissingFile(_)));
            Ok(())
        });
    }
}
