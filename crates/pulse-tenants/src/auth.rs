//! Deciding who a request is from the key it presents, without a store round trip per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pulse_core::clock::SharedClock;
use pulse_core::time::millis;
use pulse_core::{PortError, TenantId};

use crate::key::{ApiKey, KeyId};
use crate::model::{KeyRecord, Scope, Tenant, TenantQuotas};
use crate::ports::TenantStore;

/// Who a request is: the tenant its key acts for, and what the key opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant: the only one whose data the request can reach.
    pub tenant: TenantId,
    /// The key's scope.
    pub scope: Scope,
    /// The key's id (for logs; never the secret).
    pub key_id: KeyId,
    /// The tenant's own quotas.
    pub quotas: TenantQuotas,
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error(
        "an API key is required: send X-API-Key, Authorization: Bearer, or HTTP Basic with the \
         key as user name"
    )]
    Missing,
    /// The key is malformed, unknown or revoked (told apart only in logs).
    #[error("the API key is not valid")]
    Invalid,
    /// The key is valid but does not open this route.
    #[error("this key's scope {scope} does not open this route (it needs a {required} key)")]
    Forbidden {
        /// The key's scope.
        scope: Scope,
        /// What the route needs.
        required: Scope,
    },
    /// The store did not answer and the key was not cached.
    #[error("cannot check the API key: {0}")]
    Backend(PortError),
}

/// How keys are cached.
#[derive(Debug, Clone, Copy)]
pub struct AuthenticatorSettings {
    /// How long a looked-up key (or its absence) is trusted: a revocation takes effect on every
    /// process within this.
    pub cache_ttl: Duration,
    /// Most keys cached at once; unknown keys are not cached past this, so random keys cannot
    /// grow the cache.
    pub max_cached: usize,
}

impl Default for AuthenticatorSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(2),
            max_cached: 100_000,
        }
    }
}

/// A looked-up key, ready for the hot path: its digest decoded, its principal built.
#[derive(Debug)]
struct Known {
    record: KeyRecord,
    digest: Option<[u8; 32]>,
    principal: Arc<Principal>,
}

impl Known {
    fn new(record: KeyRecord, tenant: Tenant) -> Self {
        let digest = hex::decode(&record.hash)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        let principal = Arc::new(Principal {
            tenant: record.tenant.clone(),
            scope: record.scope,
            key_id: record.key_id.clone(),
            quotas: tenant.quotas,
        });
        Self {
            record,
            digest,
            principal,
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    /// Shared: a hit copies a pointer, not the strings.
    found: Option<Arc<Known>>,
    fetched_at_ms: i64,
}

/// Checks presented keys against the store, through a short-lived cache.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Arc<dyn TenantStore>,
    clock: SharedClock,
    settings: AuthenticatorSettings,
    cache: Arc<Mutex<HashMap<KeyId, Cached>>>,
}

impl Authenticator {
    /// An authenticator over `store`.
    pub fn new(
        store: Arc<dyn TenantStore>,
        clock: SharedClock,
        settings: AuthenticatorSettings,
    ) -> Self {
        Self {
            store,
            clock,
            settings,
            cache: Arc::default(),
        }
    }

    /// The principal of `presented` if it is a live key whose scope permits `required`.
    pub async fn authenticate(
        &self,
        presented: Option<&str>,
        required: Scope,
    ) -> Result<Arc<Principal>, AuthError> {
        let presented = presented.ok_or(AuthError::Missing)?;
        let key_id = crate::key::id_of(presented).ok_or(AuthError::Invalid)?;
        let found = self.lookup(key_id).await?.ok_or_else(|| {
            tracing::debug!(%key_id, "unknown API key");
            AuthError::Invalid
        })?;
        let record = &found.record;
        let matches = found
            .digest
            .is_some_and(|digest| ApiKey::digest_matches(presented, &digest));
        if !matches {
            tracing::debug!(%key_id, "API key with a wrong secret");
            return Err(AuthError::Invalid);
        }
        if record.revoked_at_ms.is_some() {
            tracing::debug!(%key_id, "revoked API key");
            return Err(AuthError::Invalid);
        }
        if !record.scope.permits(required) {
            return Err(AuthError::Forbidden {
                scope: record.scope,
                required,
            });
        }
        Ok(found.principal.clone())
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<Known>>, AuthError> {
        let now_ms = self.clock.now_ms();
        let ttl_ms = millis(self.settings.cache_ttl);
        let cached = self.cached(key_id);
        if let Some(cached) = &cached {
            if now_ms - cached.fetched_at_ms < ttl_ms {
                return Ok(cached.found.clone());
            }
        }
        let key_id = KeyId::parse(key_id).map_err(|_| AuthError::Invalid)?;
        match self.store.key(&key_id).await {
            Ok(found) => {
                let found = found.map(|(record, tenant)| Arc::new(Known::new(record, tenant)));
                self.remember(&key_id, found.clone(), now_ms, ttl_ms);
                Ok(found)
            }
            // A store outage does not lock out keys seen recently: their last known state is
            // kept until the store answers again.
            Err(err) => match cached {
                Some(cached) => {
                    tracing::debug!(%key_id, error = %err, "key store unavailable; using the cached key");
                    Ok(cached.found)
                }
                None => Err(AuthError::Backend(err)),
            },
        }
    }

    fn cached(&self, key_id: &str) -> Option<Cached> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(key_id).cloned()
    }

    fn remember(&self, key_id: &KeyId, found: Option<Arc<Known>>, now_ms: i64, ttl_ms: i64) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= self.settings.max_cached && !cache.contains_key(key_id) {
            cache.retain(|_, cached| now_ms - cached.fetched_at_ms < ttl_ms);
            if cache.len() >= self.settings.max_cached && found.is_none() {
                return;
            }
            if cache.len() >= self.settings.max_cached {
                cache.clear();
            }
        }
        cache.insert(
            key_id.clone(),
            Cached {
                found,
                fetched_at_ms: now_ms,
            },
        );
    }
}
