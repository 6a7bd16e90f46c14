//! The `[auth]` and `[quotas]` sections of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthenticatorSettings;
use crate::model::{QuotaClass, QuotaSetting, TenantQuotas};

/// `[auth]`: how keys are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a process trusts a looked-up key: a revoked key stops working everywhere
    /// within this.
    pub key_cache_ttl_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_cache_ttl_ms: 2_000,
        }
    }
}

impl AuthConfig {
    /// Refuses a TTL of zero (every request would hit the store) or over a minute (a revoked
    /// key would live on).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=60_000).contains(&self.key_cache_ttl_ms) {
            return Err(format!(
                "auth.key_cache_ttl_ms must be 1 to 60000, not {}",
                self.key_cache_ttl_ms
            ));
        }
        Ok(())
    }

    /// The authenticator's settings.
    pub fn settings(&self) -> AuthenticatorSettings {
        AuthenticatorSettings {
            cache_ttl: Duration::from_millis(self.key_cache_ttl_ms),
            ..AuthenticatorSettings::default()
        }
    }
}

/// `[quotas]`: each class's quota for a tenant without its own (`pulse tenants set-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// API requests.
    pub api: QuotaSetting,
    /// Ingested events.
    pub events: QuotaSetting,
    /// Enqueued jobs.
    pub jobs: QuotaSetting,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            // The simulator's default city (500 drivers every 3 s, 20 orders/s) needs ~200/s.
            api: QuotaSetting {
                per_second: 2_000,
                burst: 4_000,
            },
            // Segment's own ingest limit is 500 requests/s per source; events come in batches.
            events: QuotaSetting {
                per_second: 5_000,
                burst: 10_000,
            },
            jobs: QuotaSetting {
                per_second: 500,
                burst: 1_000,
            },
        }
    }
}

impl QuotasConfig {
    /// The quota of `class` for a tenant with `own` quotas.
    pub fn effective(&self, own: &TenantQuotas, class: QuotaClass) -> QuotaSetting {
        own.get(class).unwrap_or(match class {
            QuotaClass::Api => self.api,
            QuotaClass::Events => self.events,
            QuotaClass::Jobs => self.jobs,
        })
    }

    /// Refuses any invalid default, naming it.
    pub fn validate(&self) -> Result<(), String> {
        for (class, quota) in [
            (QuotaClass::Api, self.api),
            (QuotaClass::Events, self.events),
            (QuotaClass::Jobs, self.jobs),
        ] {
            quota
                .validate()
                .map_err(|err| format!("quotas.{}: {err}", class.as_str()))?;
        }
        Ok(())
    }
}
