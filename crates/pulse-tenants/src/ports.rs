//! The port the tenants domain needs from a store.

use pulse_core::{PortResult, TenantId};

use crate::key::KeyId;
use crate::model::{KeyRecord, Tenant, TenantQuotas};

/// Where tenants and their keys are kept.
#[async_trait::async_trait]
pub trait TenantStore: Send + Sync + std::fmt::Debug {
    /// Creates `tenant` and its first key in one unit of work; `false` (and nothing written)
    /// when the tenant exists.
    async fn create_tenant(&self, tenant: &Tenant, first_key: &KeyRecord) -> PortResult<bool>;

    /// The tenant `id`, if it exists.
    async fn tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>>;

    /// Every tenant, by id.
    async fn tenants(&self) -> PortResult<Vec<Tenant>>;

    /// Replaces the tenant's quotas; `false` when it does not exist.
    async fn set_quotas(&self, id: &TenantId, quotas: &TenantQuotas) -> PortResult<bool>;

    /// Adds a key to an existing tenant; `false` when the tenant does not exist.
    async fn add_key(&self, key: &KeyRecord) -> PortResult<bool>;

    /// Marks the key revoked at `at_ms` (a second revocation keeps the first time); the key
    /// after the change, `None` when it does not exist.
    async fn revoke_key(&self, id: &KeyId, at_ms: i64) -> PortResult<Option<KeyRecord>>;

    /// The key `id` and its tenant, if the key exists (revoked or not).
    async fn key(&self, id: &KeyId) -> PortResult<Option<(KeyRecord, Tenant)>>;

    /// The keys of a tenant, oldest first.
    async fn keys_of(&self, tenant: &TenantId) -> PortResult<Vec<KeyRecord>>;
}
