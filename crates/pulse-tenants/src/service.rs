//! What an operator does with tenants and keys (the CLI and `/admin/v1` call this).

use std::sync::Arc;

use pulse_core::clock::SharedClock;
use pulse_core::tenant::InvalidTenantId;
use pulse_core::{PortError, TenantId};
use serde::Serialize;

use crate::key::{ApiKey, InvalidKeyId, KeyId};
use crate::model::{KeyRecord, QuotaClass, QuotaSetting, Scope, Tenant, TenantQuotas};
use crate::ports::TenantStore;

/// Why an operation on tenants or keys was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The tenant id is malformed.
    #[error(transparent)]
    InvalidTenant(#[from] InvalidTenantId),
    /// `default` cannot be created by hand.
    #[error("tenant id \"default\" is reserved: Pulse creates it on an empty store")]
    Reserved,
    /// The tenant exists already.
    #[error("tenant {0} exists already")]
    Exists(TenantId),
    /// No such tenant.
    #[error("no tenant {0}")]
    UnknownTenant(TenantId),
    /// The key id is malformed.
    #[error(transparent)]
    InvalidKeyId(#[from] InvalidKeyId),
    /// No such key.
    #[error("no key {0}")]
    UnknownKey(KeyId),
    /// A quota is out of range.
    #[error("invalid quota: {0}")]
    InvalidQuota(String),
    /// The store failed.
    #[error(transparent)]
    Backend(#[from] PortError),
}

/// A key just created: the only time its secret is seen.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKey {
    /// The tenant it acts for.
    pub tenant_id: TenantId,
    /// The whole key, to hand to the client.
    pub api_key: String,
    /// Its public id (to revoke it).
    pub key_id: KeyId,
    /// What it opens.
    pub scope: Scope,
}

/// Tenant and key administration over a [`TenantStore`].
#[derive(Debug, Clone)]
pub struct Tenants {
    store: Arc<dyn TenantStore>,
    clock: SharedClock,
}

impl Tenants {
    /// Administration over `store`.
    pub fn new(store: Arc<dyn TenantStore>, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// The store (for the [`crate::Authenticator`]).
    pub fn store(&self) -> &Arc<dyn TenantStore> {
        &self.store
    }

    fn new_key(&self, tenant: &TenantId, scope: Scope) -> (ApiKey, KeyRecord) {
        let key = ApiKey::generate();
        let record = KeyRecord {
            key_id: key.key_id().expect("a generated key has the key shape"),
            tenant: tenant.clone(),
            scope,
            hash: key.hash(),
            created_at_ms: self.clock.now_ms(),
            revoked_at_ms: None,
        };
        (key, record)
    }

    fn issued(key: ApiKey, record: KeyRecord) -> IssuedKey {
        IssuedKey {
            tenant_id: record.tenant,
            api_key: key.expose().to_owned(),
            key_id: record.key_id,
            scope: record.scope,
        }
    }

    async fn create_unchecked(
        &self,
        tenant_id: TenantId,
        quotas: TenantQuotas,
    ) -> Result<Option<(Tenant, IssuedKey)>, TenantError> {
        let tenant = Tenant {
            tenant_id,
            quotas,
            created_at_ms: self.clock.now_ms(),
        };
        let (key, record) = self.new_key(&tenant.tenant_id, Scope::Full);
        if !self.store.create_tenant(&tenant, &record).await? {
            return Ok(None);
        }
        tracing::info!(tenant = %tenant.tenant_id, key_id = %record.key_id, "tenant created");
        Ok(Some((tenant, Self::issued(key, record))))
    }

    /// Creates tenant `id` with a `full` key; `api_rate` sets its `api` quota (per second,
    /// burst of one second's worth).
    pub async fn create(
        &self,
        id: &str,
        api_rate: Option<u32>,
    ) -> Result<(Tenant, IssuedKey), TenantError> {
        let tenant_id = TenantId::parse(id)?;
        if tenant_id.is_default() {
            return Err(TenantError::Reserved);
        }
        let quotas = TenantQuotas {
            api: api_rate.map(QuotaSetting::per_second),
            ..TenantQuotas::default()
        };
        quotas.validate().map_err(TenantError::InvalidQuota)?;
        self.create_unchecked(tenant_id.clone(), quotas)
            .await?
            .ok_or(TenantError::Exists(tenant_id))
    }

    /// Creates the `default` tenant with a `full` key unless it exists: what `pulse up` does on
    /// an empty store. The key, when one was made.
    pub async fn ensure_default(&self) -> Result<Option<IssuedKey>, TenantError> {
        let default = TenantId::default_tenant();
        if self.store.tenant(&default).await?.is_some() {
            return Ok(None);
        }
        // Two processes starting at once: the store's primary key lets one of them create it.
        Ok(self
            .create_unchecked(default, TenantQuotas::default())
            .await?
            .map(|(_, key)| key))
    }

    /// Every tenant.
    pub async fn list(&self) -> Result<Vec<Tenant>, TenantError> {
        Ok(self.store.tenants().await?)
    }

    /// The tenant `id`.
    pub async fn get(&self, id: &str) -> Result<Tenant, TenantError> {
        let tenant_id = TenantId::parse(id)?;
        self.store
            .tenant(&tenant_id)
            .await?
            .ok_or(TenantError::UnknownTenant(tenant_id))
    }

    /// Sets (or with `None` clears, back to the configured default) the tenant's quota of
    /// `class`.
    pub async fn set_quota(
        &self,
        id: &str,
        class: QuotaClass,
        quota: Option<QuotaSetting>,
    ) -> Result<Tenant, TenantError> {
        let mut tenant = self.get(id).await?;
        tenant.quotas.set(class, quota);
        tenant
            .quotas
            .validate()
            .map_err(TenantError::InvalidQuota)?;
        if !self
            .store
            .set_quotas(&tenant.tenant_id, &tenant.quotas)
            .await?
        {
            return Err(TenantError::UnknownTenant(tenant.tenant_id));
        }
        tracing::info!(tenant = %tenant.tenant_id, class = class.as_str(), ?quota, "quota set");
        Ok(tenant)
    }

    /// A new key for tenant `id`.
    pub async fn create_key(&self, id: &str, scope: Scope) -> Result<IssuedKey, TenantError> {
        let tenant_id = TenantId::parse(id)?;
        let (key, record) = self.new_key(&tenant_id, scope);
        if !self.store.add_key(&record).await? {
            return Err(TenantError::UnknownTenant(tenant_id));
        }
        tracing::info!(tenant = %record.tenant, key_id = %record.key_id, scope = %scope, "key created");
        Ok(Self::issued(key, record))
    }

    /// Revokes key `id`: it stops working on every process within the authenticators' cache
    /// TTL. Revoking a revoked key is not an error.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, TenantError> {
        let key_id = KeyId::parse(id)?;
        let record = self
            .store
            .revoke_key(&key_id, self.clock.now_ms())
            .await?
            .ok_or(TenantError::UnknownKey(key_id))?;
        tracing::info!(tenant = %record.tenant, key_id = %record.key_id, "key revoked");
        Ok(record)
    }

    /// The keys of tenant `id`.
    pub async fn keys(&self, id: &str) -> Result<Vec<KeyRecord>, TenantError> {
        let tenant = self.get(id).await?;
        Ok(self.store.keys_of(&tenant.tenant_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::clock::ManualClock;

    use super::*;
    use crate::auth::tests::MemoryStore;
    use crate::{Authenticator, AuthenticatorSettings};

    #[tokio::test]
    async fn an_empty_store_gets_the_default_tenant_and_one_full_key_that_works() {
        let store = Arc::new(MemoryStore::default());
        let clock: SharedClock = Arc::new(ManualClock::new(1_764_000_000_000));
        let tenants = Tenants::new(store.clone(), clock.clone());

        let issued = tenants
            .ensure_default()
            .await
            .expect("ensure_default")
            .expect("a key for the new default tenant");
        assert!(issued.tenant_id.is_default());
        assert_eq!(issued.scope, Scope::Full);
        assert_eq!(
            ApiKey::presented(&issued.api_key).key_id(),
            Some(issued.key_id.clone())
        );
        let default = tenants
            .get("default")
            .await
            .expect("the default tenant exists");
        assert_eq!(default.quotas, TenantQuotas::default());

        let auth = Authenticator::new(store.clone(), clock, AuthenticatorSettings::default());
        let principal = auth
            .authenticate(Some(&issued.api_key), Scope::Full)
            .await
            .expect("the bootstrap key opens the default tenant");
        assert!(principal.tenant.is_default());

        assert!(
            tenants
                .ensure_default()
                .await
                .expect("ensure_default")
                .is_none(),
            "a second start makes no key"
        );
        assert_eq!(store.keys().len(), 1);
    }
}
