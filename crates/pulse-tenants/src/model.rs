//! Tenants, their keys and their quotas.

use std::fmt;

use pulse_core::TenantId;
use serde::{Deserialize, Serialize};

use crate::key::KeyId;

/// What a key opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every route of the tenant.
    Full,
    /// Only the event-ingest routes: the write key a mobile app or a web page ships.
    Ingest,
}

impl Scope {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Ingest => "ingest",
        }
    }

    /// From the stored or typed text.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Scope::Full),
            "ingest" => Some(Scope::Ingest),
            _ => None,
        }
    }

    /// Whether a key of this scope may call a route that requires `required`.
    pub fn permits(self, required: Scope) -> bool {
        match self {
            Scope::Full => true,
            Scope::Ingest => required == Scope::Ingest,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classes of work a tenant's quota is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaClass {
    /// Requests to the API routes (orders, quotes, locations, the map, …): one unit each.
    Api,
    /// Ingested events: one unit per event, so a batch costs its length.
    Events,
    /// Enqueued jobs: one unit per job.
    Jobs,
}

impl QuotaClass {
    /// Every class.
    pub const ALL: [QuotaClass; 3] = [QuotaClass::Api, QuotaClass::Events, QuotaClass::Jobs];

    /// As named in config, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaClass::Api => "api",
            QuotaClass::Events => "events",
            QuotaClass::Jobs => "jobs",
        }
    }

    /// From its name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == text)
    }
}

/// Highest rate a quota may be set to, per second.
pub const MAX_QUOTA_PER_SECOND: u32 = 1_000_000;

/// One quota: a sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSetting {
    /// Sustained units per second.
    pub per_second: u32,
    /// Units allowed at once on a full bucket.
    pub burst: u32,
}

impl QuotaSetting {
    /// `per_second` with a burst of one second's worth: what `--rate N` sets.
    pub fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: per_second,
        }
    }

    /// Refuses a zero rate or burst, or a rate above [`MAX_QUOTA_PER_SECOND`].
    pub fn validate(&self) -> Result<(), String> {
        if self.per_second == 0 || self.per_second > MAX_QUOTA_PER_SECOND {
            return Err(format!(
                "per_second must be 1 to {MAX_QUOTA_PER_SECOND}, not {}",
                self.per_second
            ));
        }
        if self.burst == 0 || self.burst > MAX_QUOTA_PER_SECOND {
            return Err(format!(
                "burst must be 1 to {MAX_QUOTA_PER_SECOND}, not {}",
                self.burst
            ));
        }
        Ok(())
    }
}

/// A tenant's own quotas; a class without one uses the configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    /// The `api` class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<QuotaSetting>,
    /// The `events` class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<QuotaSetting>,
    /// The `jobs` class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<QuotaSetting>,
}

impl TenantQuotas {
    /// The tenant's own quota of `class`, if set.
    pub fn get(&self, class: QuotaClass) -> Option<QuotaSetting> {
        match class {
            QuotaClass::Api => self.api,
            QuotaClass::Events => self.events,
            QuotaClass::Jobs => self.jobs,
        }
    }

    /// Sets (or, with `None`, clears) the quota of `class`.
    pub fn set(&mut self, class: QuotaClass, quota: Option<QuotaSetting>) {
        match class {
            QuotaClass::Api => self.api = quota,
            QuotaClass::Events => self.events = quota,
            QuotaClass::Jobs => self.jobs = quota,
        }
    }

    /// Refuses any invalid quota, naming its class.
    pub fn validate(&self) -> Result<(), String> {
        for class in QuotaClass::ALL {
            if let Some(quota) = self.get(class) {
                quota
                    .validate()
                    .map_err(|err| format!("{}: {err}", class.as_str()))?;
            }
        }
        Ok(())
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Its id.
    pub tenant_id: TenantId,
    /// Its own quotas.
    pub quotas: TenantQuotas,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A stored key: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Its id.
    pub key_id: KeyId,
    /// The tenant it acts for.
    pub tenant: TenantId,
    /// What it opens.
    pub scope: Scope,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// When it was created, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_key_opens_every_route_and_an_ingest_key_only_ingest_routes() {
        assert!(Scope::Full.permits(Scope::Full));
        assert!(Scope::Full.permits(Scope::Ingest));
        assert!(Scope::Ingest.permits(Scope::Ingest));
        assert!(!Scope::Ingest.permits(Scope::Full));
        for scope in [Scope::Full, Scope::Ingest] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("admin"), None);
    }

    #[test]
    fn quotas_refuse_zero_and_absurd_rates_naming_the_class() {
        let mut quotas = TenantQuotas::default();
        quotas.set(QuotaClass::Events, Some(QuotaSetting::per_second(0)));
        assert!(quotas.validate().unwrap_err().starts_with("events:"));
        quotas.set(QuotaClass::Events, Some(QuotaSetting::per_second(50)));
        assert_eq!(quotas.validate(), Ok(()));
        assert_eq!(
            quotas.get(QuotaClass::Events),
            Some(QuotaSetting {
                per_second: 50,
                burst: 50
            })
        );
        assert_eq!(quotas.get(QuotaClass::Api), None);
        let json: TenantQuotas =
            serde_json::from_str(r#"{"api":{"per_second":5,"burst":10}}"#).unwrap();
        assert_eq!(json.api.map(|q| q.burst), Some(10));
        assert!(serde_json::from_str::<TenantQuotas>(r#"{"apis":{}}"#).is_err());
    }
}
