//! The `[profiles]` section: identity-resolution rules (per tenant, as Segment's identity
//! settings), trait limits, the hot copy's budget and TTL, and the reconciliation's schedule.

use std::collections::BTreeMap;

use pulse_core::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::IdentityKind;

/// Limits on a profile's traits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraitLimits {
    /// Most traits one profile keeps; further new keys are refused (counted on the profile).
    pub max_traits: usize,
    /// Longest trait name, bytes.
    pub max_key_bytes: usize,
    /// Largest trait value, bytes of JSON.
    pub max_value_bytes: usize,
}

impl Default for TraitLimits {
    fn default() -> Self {
        Self {
            max_traits: 200,
            max_key_bytes: 128,
            max_value_bytes: 4_096,
        }
    }
}

impl TraitLimits {
    /// The traits of one event within the per-trait limits (too long a name or too large a
    /// value is left out; the count limit applies per profile, in [`crate::model::Profile`]).
    pub fn admit(&self, traits: Map<String, Value>) -> Map<String, Value> {
        traits
            .into_iter()
            .filter(|(key, value)| {
                !key.is_empty()
                    && key.len() <= self.max_key_bytes
                    && !key.chars().any(char::is_control)
                    && serde_json::to_vec(value).map_or(0, |json| json.len())
                        <= self.max_value_bytes
            })
            .collect()
    }
}

/// How a tenant's identifiers decide and merge profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Whether `traits.email` is an identifier (it merges profiles that share it).
    pub email_is_identifier: bool,
    /// Most user ids one profile may hold (Segment's default: 1). A merge that would exceed a
    /// limit is not made; the event's strongest identifier gets a profile of its own instead.
    pub max_user_ids: usize,
    /// Most e-mail addresses one profile may hold.
    pub max_emails: usize,
    /// Most anonymous ids one profile may hold.
    pub max_anonymous_ids: usize,
    /// Values that never identify anybody (compared without case, after trimming).
    pub blocked_values: Vec<String>,
    /// Longest identifier value, bytes.
    pub max_identifier_bytes: usize,
    /// Limits on traits.
    pub traits: TraitLimits,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            email_is_identifier: true,
            max_user_ids: 1,
            max_emails: 5,
            max_anonymous_ids: 100,
            blocked_values: [
                "null",
                "undefined",
                "0",
                "-1",
                "nil",
                "none",
                "anonymous",
                "unknown",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_identifier_bytes: 256,
            traits: TraitLimits::default(),
        }
    }
}

impl IdentitySettings {
    /// The identifier of `kind` that `raw` holds, unless absent, blocked, too long or
    /// (e-mail) not an identifier here. Numbers are read as their decimal text, as Segment does.
    pub fn accept(&self, kind: IdentityKind, raw: Option<&Value>) -> Option<String> {
        if kind == IdentityKind::Email && !self.email_is_identifier {
            return None;
        }
        let text = match raw? {
            Value::String(text) => text.trim().to_owned(),
            Value::Number(number) => number.to_string(),
            _ => return None,
        };
        let text = if kind == IdentityKind::Email {
            if !text.contains('@') {
                return None;
            }
            text.to_lowercase()
        } else {
            text
        };
        let blocked = text.is_empty()
            || text.len() > self.max_identifier_bytes
            || text.chars().any(char::is_control)
            || self
                .blocked_values
                .iter()
                .any(|value| value.trim().eq_ignore_ascii_case(&text));
        (!blocked).then_some(text)
    }

    /// Most identifiers of `kind` one profile may hold.
    pub fn limit(&self, kind: IdentityKind) -> usize {
        match kind {
            IdentityKind::UserId => self.max_user_ids,
            IdentityKind::Email => self.max_emails,
            IdentityKind::AnonymousId => self.max_anonymous_ids,
        }
    }

    fn validate(&self, section: &str) -> Result<(), String> {
        if self.max_user_ids == 0 || self.max_emails == 0 || self.max_anonymous_ids == 0 {
            return Err(format!(
                "{section}: max_user_ids, max_emails and max_anonymous_ids must be at least 1"
            ));
        }
        if self.max_identifier_bytes == 0 || self.traits.max_traits == 0 {
            return Err(format!(
                "{section}: max_identifier_bytes and traits.max_traits must be positive"
            ));
        }
        Ok(())
    }
}

/// The `[profiles]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSettings {
    /// The rules of every tenant without its own.
    pub identity: IdentitySettings,
    /// Per-tenant rules, by tenant id (`[profiles.tenants.acme]`), replacing `identity` whole.
    pub tenants: BTreeMap<String, IdentitySettings>,
    /// How long a hot copy lives after its last change or read-through, seconds.
    pub hot_ttl_secs: u64,
    /// Entries the in-process hot copy may hold (its own budget, apart from surge values and
    /// quote locks; when full, the entry closest to expiry goes first).
    pub hot_max_entries: usize,
    /// How often the `profiles` processor compares a sample of hot copies with the store, ms.
    pub reconcile_every_ms: u64,
    /// Profiles compared per periodic pass (the most recently changed ones).
    pub reconcile_sample: usize,
    /// Records per batch of the processor.
    pub batch_size: usize,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        Self {
            identity: IdentitySettings::default(),
            tenants: BTreeMap::new(),
            hot_ttl_secs: 86_400,
            hot_max_entries: 200_000,
            reconcile_every_ms: 60_000,
            reconcile_sample: 500,
            batch_size: 2_000,
        }
    }
}

impl ProfileSettings {
    /// The rules `tenant` resolves identities by.
    pub fn identity_for(&self, tenant: &TenantId) -> &IdentitySettings {
        self.tenants.get(tenant.as_str()).unwrap_or(&self.identity)
    }

    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.identity.validate("profiles.identity")?;
        for (tenant, rules) in &self.tenants {
            TenantId::parse(tenant).map_err(|err| format!("profiles.tenants.{tenant}: {err}"))?;
            rules.validate(&format!("profiles.tenants.{tenant}"))?;
        }
        if self.hot_ttl_secs == 0 || self.hot_max_entries == 0 {
            return Err("profiles.hot_ttl_secs and hot_max_entries must be positive".into());
        }
        if self.reconcile_every_ms < 1_000 {
            return Err("profiles.reconcile_every_ms must be at least 1000".into());
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err("profiles.batch_size must be between 1 and 10000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_rules_replace_the_default_and_are_checked() {
        let mut settings = ProfileSettings::default();
        settings.tenants.insert(
            "acme".into(),
            IdentitySettings {
                max_user_ids: 3,
                ..IdentitySettings::default()
            },
        );
        assert!(settings.validate().is_ok());
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(settings.identity_for(&acme).max_user_ids, 3);
        assert_eq!(settings.identity_for(&TenantId::default()).max_user_ids, 1);
        settings
            .tenants
            .insert("Bad Tenant".into(), IdentitySettings::default());
        assert!(settings.validate().unwrap_err().contains("Bad Tenant"));
    }

    #[test]
    fn emails_are_identifiers_only_when_they_look_like_one() {
        let settings = IdentitySettings::default();
        let accept = |raw: &str| settings.accept(IdentityKind::Email, Some(&Value::from(raw)));
        assert_eq!(accept(" Ann@Example.COM "), Some("ann@example.com".into()));
        assert_eq!(accept("not-an-email"), None);
        let off = IdentitySettings {
            email_is_identifier: false,
            ..IdentitySettings::default()
        };
        assert_eq!(
            off.accept(IdentityKind::Email, Some(&Value::from("a@b.c"))),
            None
        );
    }

    #[test]
    fn traits_too_large_are_left_out() {
        let limits = TraitLimits {
            max_value_bytes: 8,
            ..TraitLimits::default()
        };
        let mut traits = Map::new();
        traits.insert("short".into(), Value::from("ok"));
        traits.insert("long".into(), Value::from("x".repeat(20)));
        traits.insert(String::new(), Value::from(1));
        let admitted = limits.admit(traits);
        assert_eq!(admitted.keys().collect::<Vec<_>>(), vec!["short"]);
    }
}
