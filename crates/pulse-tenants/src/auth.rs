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

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use pulse_core::clock::ManualClock;
    use pulse_core::PortResult;

    use super::*;

    /// Tenants and keys in memory; every call fails while it is down; key lookups are counted,
    /// so a test sees which answers came from the authenticator's cache.
    #[derive(Debug, Default)]
    pub(crate) struct MemoryStore {
        tenants: Mutex<Vec<Tenant>>,
        keys: Mutex<Vec<KeyRecord>>,
        down: AtomicBool,
        key_lookups: AtomicUsize,
    }

    impl MemoryStore {
        pub(crate) fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        pub(crate) fn key_lookups(&self) -> usize {
            self.key_lookups.load(Ordering::SeqCst)
        }

        pub(crate) fn keys(&self) -> Vec<KeyRecord> {
            self.keys.lock().expect("lock").clone()
        }

        fn up(&self) -> PortResult<()> {
            if self.down.load(Ordering::SeqCst) {
                Err(PortError::unavailable(
                    "tenant store",
                    "stopped by the test",
                ))
            } else {
                Ok(())
            }
        }

        /// A `full` key of a new tenant `tenant`.
        fn issue(&self, tenant: &str) -> ApiKey {
            let tenant = Tenant {
                tenant_id: TenantId::parse(tenant).expect("tenant id"),
                quotas: TenantQuotas::default(),
                created_at_ms: 0,
            };
            let key = ApiKey::generate();
            let record = KeyRecord {
                key_id: key.key_id().expect("key shape"),
                tenant: tenant.tenant_id.clone(),
                scope: Scope::Full,
                hash: key.hash(),
                created_at_ms: 0,
                revoked_at_ms: None,
            };
            self.tenants.lock().expect("lock").push(tenant);
            self.keys.lock().expect("lock").push(record);
            key
        }
    }

    #[async_trait::async_trait]
    impl TenantStore for MemoryStore {
        async fn create_tenant(&self, tenant: &Tenant, first_key: &KeyRecord) -> PortResult<bool> {
            self.up()?;
            let mut tenants = self.tenants.lock().expect("lock");
            if tenants.iter().any(|t| t.tenant_id == tenant.tenant_id) {
                return Ok(false);
            }
            tenants.push(tenant.clone());
            self.keys.lock().expect("lock").push(first_key.clone());
            Ok(true)
        }

        async fn tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
            self.up()?;
            let tenants = self.tenants.lock().expect("lock");
            Ok(tenants.iter().find(|t| &t.tenant_id == id).cloned())
        }

        async fn tenants(&self) -> PortResult<Vec<Tenant>> {
            self.up()?;
            Ok(self.tenants.lock().expect("lock").clone())
        }

        async fn set_quotas(&self, id: &TenantId, quotas: &TenantQuotas) -> PortResult<bool> {
            self.up()?;
            let mut tenants = self.tenants.lock().expect("lock");
            let found = tenants.iter_mut().find(|t| &t.tenant_id == id);
            Ok(found.map(|t| t.quotas = *quotas).is_some())
        }

        async fn add_key(&self, key: &KeyRecord) -> PortResult<bool> {
            if self.tenant(&key.tenant).await?.is_none() {
                return Ok(false);
            }
            self.keys.lock().expect("lock").push(key.clone());
            Ok(true)
        }

        async fn revoke_key(&self, id: &KeyId, at_ms: i64) -> PortResult<Option<KeyRecord>> {
            self.up()?;
            let mut keys = self.keys.lock().expect("lock");
            Ok(keys.iter_mut().find(|k| &k.key_id == id).map(|k| {
                k.revoked_at_ms.get_or_insert(at_ms);
                k.clone()
            }))
        }

        async fn key(&self, id: &KeyId) -> PortResult<Option<(KeyRecord, Tenant)>> {
            self.key_lookups.fetch_add(1, Ordering::SeqCst);
            self.up()?;
            let record = self
                .keys
                .lock()
                .expect("lock")
                .iter()
                .find(|k| &k.key_id == id)
                .cloned();
            let Some(record) = record else {
                return Ok(None);
            };
            let tenant = self
                .tenant(&record.tenant)
                .await?
                .expect("the key's tenant");
            Ok(Some((record, tenant)))
        }

        async fn keys_of(&self, tenant: &TenantId) -> PortResult<Vec<KeyRecord>> {
            self.up()?;
            let keys = self.keys.lock().expect("lock");
            Ok(keys
                .iter()
                .filter(|k| &k.tenant == tenant)
                .cloned()
                .collect())
        }
    }

    const TTL: Duration = Duration::from_secs(2);

    fn setup(max_cached: usize) -> (Authenticator, Arc<MemoryStore>, ManualClock) {
        let clock = ManualClock::new(1_764_000_000_000);
        let store = Arc::new(MemoryStore::default());
        let auth = Authenticator::new(
            store.clone(),
            Arc::new(clock.clone()),
            AuthenticatorSettings {
                cache_ttl: TTL,
                max_cached,
            },
        );
        (auth, store, clock)
    }

    /// A key of the right shape that the store does not know.
    fn unknown_key() -> String {
        ApiKey::generate().expose().to_owned()
    }

    async fn check(auth: &Authenticator, key: &str) -> Result<Arc<Principal>, AuthError> {
        auth.authenticate(Some(key), Scope::Full).await
    }

    /// Whether `key` is answered from the cache: authenticating it asks the store nothing.
    async fn answered_from_cache(auth: &Authenticator, store: &MemoryStore, key: &str) -> bool {
        let before = store.key_lookups();
        let _ = check(auth, key).await;
        store.key_lookups() == before
    }

    fn cached_entries(auth: &Authenticator) -> usize {
        auth.cache.lock().expect("lock").len()
    }

    #[tokio::test]
    async fn a_key_is_trusted_from_the_cache_for_the_ttl_so_a_revocation_takes_effect_at_its_end() {
        let (auth, store, clock) = setup(100);
        let key = store.issue("acme");
        let principal = check(&auth, key.expose()).await.expect("a live key");
        assert_eq!(principal.tenant.as_str(), "acme");
        assert_eq!(principal.scope, Scope::Full);
        assert_eq!(Some(principal.key_id.clone()), key.key_id());
        assert_eq!(store.key_lookups(), 1);

        let key_id = key.key_id().expect("key shape");
        store.revoke_key(&key_id, 0).await.expect("revoke");
        clock.advance(TTL - Duration::from_millis(1));
        assert!(
            check(&auth, key.expose()).await.is_ok(),
            "still cached: the revocation is not seen yet"
        );
        assert_eq!(store.key_lookups(), 1, "answered from the cache");

        clock.advance(Duration::from_millis(1));
        assert!(
            matches!(check(&auth, key.expose()).await, Err(AuthError::Invalid)),
            "at the TTL the store is asked again and the revocation holds"
        );
        assert_eq!(store.key_lookups(), 2);
    }

    #[tokio::test]
    async fn a_store_outage_keeps_the_last_known_state_of_the_keys_seen_and_fails_the_others() {
        let (auth, store, clock) = setup(100);
        let key = store.issue("acme");
        let stranger = unknown_key();
        check(&auth, key.expose()).await.expect("a live key");
        assert!(matches!(
            check(&auth, &stranger).await,
            Err(AuthError::Invalid)
        ));

        // Other keys looked up after these expired do not push them out while there is room.
        clock.advance(TTL * 5);
        check(&auth, &unknown_key()).await.expect_err("unknown");

        store.set_down(true);
        clock.advance(TTL * 5);
        let principal = check(&auth, key.expose())
            .await
            .expect("the cached key still works while the store is down");
        assert_eq!(principal.tenant.as_str(), "acme");
        assert!(
            matches!(check(&auth, &stranger).await, Err(AuthError::Invalid)),
            "a key known to be unknown stays refused"
        );
        assert!(
            matches!(
                check(&auth, &unknown_key()).await,
                Err(AuthError::Backend(_))
            ),
            "a key never seen cannot be checked"
        );

        store.set_down(false);
        assert!(check(&auth, key.expose()).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_only_while_there_is_room() {
        let (auth, store, _clock) = setup(2);
        let (first, second, third) = (unknown_key(), unknown_key(), unknown_key());
        for key in [&first, &second, &third] {
            assert!(matches!(check(&auth, key).await, Err(AuthError::Invalid)));
        }
        assert_eq!(store.key_lookups(), 3);
        assert!(
            !answered_from_cache(&auth, &store, &third).await,
            "the cache was full of live entries: the third unknown key was not kept"
        );
        assert!(answered_from_cache(&auth, &store, &first).await);
        assert!(answered_from_cache(&auth, &store, &second).await);
        assert_eq!(cached_entries(&auth), 2);
    }

    #[tokio::test]
    async fn a_real_key_is_cached_even_when_the_cache_is_full_of_live_entries() {
        let (auth, store, _clock) = setup(2);
        for _ in 0..2 {
            check(&auth, &unknown_key()).await.expect_err("unknown");
        }
        let key = store.issue("acme");
        check(&auth, key.expose()).await.expect("a live key");
        assert!(answered_from_cache(&auth, &store, key.expose()).await);
        assert!(
            cached_entries(&auth) <= 2,
            "the cache holds at most max_cached keys: {}",
            cached_entries(&auth)
        );
    }

    #[tokio::test]
    async fn a_full_cache_drops_only_its_expired_entries_to_make_room() {
        let (auth, store, clock) = setup(2);
        let (old, recent, new) = (unknown_key(), unknown_key(), unknown_key());
        check(&auth, &old).await.expect_err("unknown");
        clock.advance(TTL / 2);
        check(&auth, &recent).await.expect_err("unknown");
        // `old` is expired from this instant on; `recent` is live for another half TTL.
        clock.advance(TTL / 2);
        check(&auth, &new).await.expect_err("unknown");
        assert!(
            answered_from_cache(&auth, &store, &new).await,
            "the expired entry made room for the new key"
        );
        assert!(
            answered_from_cache(&auth, &store, &recent).await,
            "the live entry was kept"
        );
        assert_eq!(cached_entries(&auth), 2);
    }
}
