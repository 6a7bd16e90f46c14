//! The hot copy: each live profile's view in the cache under `profile:{id}`, a merged profile's
//! redirect to the one it joined, and a pointer per identifier (`profile:user:{id}`,
//! `profile:anon:{id}`, `profile:email:{address}`), every key under the tenant's namespace and
//! with the section's TTL. Written after the cold commit; the cold store stays the truth, and
//! the reconciliation repairs whatever a failed or lost cache write left behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite};
use pulse_core::{PortError, PortResult, TenantId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Identifier, IdentityKind, ProfileView};

/// What `profile:{id}` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HotEntry {
    /// A live profile.
    Profile(Box<ProfileView>),
    /// A profile merged into another.
    MergedInto(Uuid),
}

/// The hot copy's keys and codec over a cache.
#[derive(Debug, Clone)]
pub struct HotProfiles {
    cache: Arc<dyn Cache>,
    prefix: String,
    ttl: Duration,
}

impl HotProfiles {
    /// Profiles in `cache` under the deployment's `prefix`, living `ttl`.
    pub fn new(cache: Arc<dyn Cache>, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            cache,
            prefix: prefix.into(),
            ttl,
        }
    }

    /// The key of profile `id`.
    pub fn profile_key(&self, tenant: &TenantId, id: Uuid) -> String {
        format!("{}{}profile:{id}", self.prefix, tenant.key_namespace())
    }

    /// The key of `identifier`'s pointer.
    pub fn pointer_key(&self, tenant: &TenantId, identifier: &Identifier) -> String {
        let kind = match identifier.kind {
            IdentityKind::UserId => "user",
            IdentityKind::AnonymousId => "anon",
            IdentityKind::Email => "email",
        };
        format!(
            "{}{}profile:{kind}:{}",
            self.prefix,
            tenant.key_namespace(),
            identifier.value
        )
    }

    /// The writes that make `view` hot, with a pointer for each of its identifiers.
    pub fn writes_for(&self, tenant: &TenantId, view: &ProfileView) -> Vec<CacheWrite> {
        let mut writes = vec![self.entry_write(
            tenant,
            view.profile_id,
            &HotEntry::Profile(Box::new(view.clone())),
        )];
        let ids = [
            (IdentityKind::UserId, &view.user_ids),
            (IdentityKind::Email, &view.emails),
            (IdentityKind::AnonymousId, &view.anonymous_ids),
        ];
        for (kind, values) in ids {
            for value in values {
                writes.push(CacheWrite::Set {
                    key: self.pointer_key(tenant, &Identifier::new(kind, value.clone())),
                    value: Bytes::from(view.profile_id.to_string()),
                    ttl: Some(self.ttl),
                });
            }
        }
        writes
    }

    /// The write of `entry` under profile `id`'s key.
    pub fn entry_write(&self, tenant: &TenantId, id: Uuid, entry: &HotEntry) -> CacheWrite {
        CacheWrite::Set {
            key: self.profile_key(tenant, id),
            value: Bytes::from(serde_json::to_vec(entry).unwrap_or_default()),
            ttl: Some(self.ttl),
        }
    }

    /// Applies `writes` as one batch.
    pub async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.cache.apply(writes).await
    }

    /// What `profile:{id}` holds (`Corrupt` when it holds something else).
    pub async fn entry(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<HotEntry>> {
        let key = self.profile_key(tenant, id);
        self.cache
            .get(&key)
            .await?
            .map(|raw| decode(&key, &raw))
            .transpose()
    }

    /// The raw values of `keys`.
    pub async fn raw(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        self.cache.get_many(keys).await
    }

    /// The profile `identifier`'s pointer names.
    pub async fn pointer(
        &self,
        tenant: &TenantId,
        identifier: &Identifier,
    ) -> PortResult<Option<Uuid>> {
        let key = self.pointer_key(tenant, identifier);
        match self.cache.get(&key).await? {
            None => Ok(None),
            Some(raw) => std::str::from_utf8(&raw)
                .ok()
                .and_then(|text| Uuid::parse_str(text).ok())
                .map(Some)
                .ok_or_else(|| PortError::Corrupt(format!("{key}: not a profile id"))),
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> PortResult<()> {
        self.cache.delete(key).await.map(|_| ())
    }
}

/// The entry in `raw` (stored under `key`).
pub fn decode(key: &str, raw: &[u8]) -> PortResult<HotEntry> {
    serde_json::from_slice(raw).map_err(|err| PortError::Corrupt(format!("{key}: {err}")))
}
