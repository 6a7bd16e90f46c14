//! What the API and the operator's commands ask of profiles: reads from the hot copy that fall
//! back to the cold store (a miss, or the cache down behind its breaker), profiles created from
//! traits, lists, a profile's events and merges, the unmerge, the reconciliation and the
//! rebuild from the archive.

use bytes::Bytes;
use pulse_core::{PortError, PortResult, TenantId};
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_proto::v1::profile_updated;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::engine::{Incoming, ProfileEngine};
use crate::hot::HotEntry;
use crate::model::{profile_id_for, Identifier, IdentityKind, Merge, ProfileView};
use crate::ports::{ArchivedEvent, Cursor, StoredProfile, TraitFilter, Unmerged};
use crate::reconcile::{reconcile_all, reconcile_sample, ReconcileReport};

/// Profile reads, by source (`hot`, `cold`) and outcome (`found`, `missing`); `cold` reads
/// with `fallback="cache_error"` are the ones the cache could not answer.
pub const READS_TOTAL: &str = "pulse_profiles_reads_total";
/// Unmerges, by tenant.
pub const UNMERGES_TOTAL: &str = "pulse_profiles_unmerges_total";

/// Most merge redirects a read follows (a chain longer than this is corrupt data).
const MAX_REDIRECTS: usize = 16;

/// A profile read, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The live profile.
    pub view: ProfileView,
    /// `hot` or `cold`.
    pub source: &'static str,
}

/// A profile to create (`POST /api/v1/profiles`): an identify the API makes on the caller's
/// behalf, archived and applied like any other.
#[derive(Debug, Clone, Default)]
pub struct NewProfile {
    /// Its user id.
    pub user_id: Option<String>,
    /// Its anonymous id.
    pub anonymous_id: Option<String>,
    /// Its traits (`email` among them makes an e-mail identifier).
    pub traits: Map<String, Value>,
    /// The caller's idempotency key: the same key names the same identify.
    pub idempotency_key: Option<String>,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The profile the identify applied to.
    pub view: ProfileView,
    /// Whether it is new.
    pub created: bool,
}

/// Profiles, as the API sees them.
#[derive(Debug, Clone)]
pub struct ProfileService {
    engine: ProfileEngine,
}

impl ProfileService {
    /// The service over `engine`.
    pub fn new(engine: ProfileEngine) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &ProfileEngine {
        &self.engine
    }

    async fn cold(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<StoredProfile>> {
        let mut id = id;
        for _ in 0..MAX_REDIRECTS {
            match self.engine.store().profile(tenant, id).await? {
                None => return Ok(None),
                Some(stored) => match stored.merged_into {
                    Some(into) => id = into,
                    None => return Ok(Some(stored)),
                },
            }
        }
        Err(PortError::Corrupt(format!(
            "profile {id}: merge chain longer than {MAX_REDIRECTS}"
        )))
    }

    /// The live profile `id` is or was merged into.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<Read>> {
        let hot = self.engine.hot();
        let mut current = id;
        let mut fallback = "miss";
        for _ in 0..MAX_REDIRECTS {
            match hot.entry(tenant, current).await {
                Ok(Some(HotEntry::Profile(view))) => {
                    metrics::counter!(READS_TOTAL, "source" => "hot", "outcome" => "found")
                        .increment(1);
                    return Ok(Some(Read {
                        view: *view,
                        source: "hot",
                    }));
                }
                Ok(Some(HotEntry::MergedInto(into))) => current = into,
                Ok(None) => break,
                Err(err) => {
                    fallback = "cache_error";
                    tracing::debug!(error = %err, "hot profile read failed; reading the store");
                    break;
                }
            }
        }
        let stored = self.cold(tenant, current).await?;
        let outcome = if stored.is_some() { "found" } else { "missing" };
        metrics::counter!(READS_TOTAL, "source" => "cold", "outcome" => outcome, "fallback" => fallback)
            .increment(1);
        let Some(stored) = stored else {
            return Ok(None);
        };
        let view = stored.profile.view(stored.version, stored.updated_at_ms);
        if fallback == "miss" {
            // Read-through: the next read is hot. A failure here only costs the next read.
            let _ = hot.apply(hot.writes_for(tenant, &view)).await;
        }
        Ok(Some(Read {
            view,
            source: "cold",
        }))
    }

    /// The live profile holding `identifier`.
    pub async fn by_identifier(
        &self,
        tenant: &TenantId,
        identifier: &Identifier,
    ) -> PortResult<Option<Read>> {
        let id = match self.engine.hot().pointer(tenant, identifier).await {
            Ok(Some(id)) => Some(id),
            Ok(None) | Err(_) => self.engine.store().owner(tenant, identifier).await?,
        };
        match id {
            Some(id) => self.get(tenant, id).await,
            None => Ok(None),
        }
    }

    /// Creates (or, when its identifiers are known, updates) a profile from `new`.
    pub async fn create(&self, tenant: &TenantId, new: NewProfile) -> PortResult<Created> {
        // An identifier the caller named but the rules refuse is an error, not silently
        // dropped in favour of the other one.
        let rules = self.engine.settings().identity_for(tenant);
        for (kind, value) in [
            (IdentityKind::UserId, &new.user_id),
            (IdentityKind::AnonymousId, &new.anonymous_id),
        ] {
            if let Some(value) = value {
                if rules
                    .accept(kind, Some(&Value::from(value.clone())))
                    .is_none()
                {
                    return Err(PortError::Invalid(format!(
                        "{} {value:?} identifies nobody here: empty, blocked, longer than {} bytes or with control characters",
                        kind.as_str(),
                        rules.max_identifier_bytes
                    )));
                }
            }
        }
        let mut payload = Map::new();
        if let Some(user) = &new.user_id {
            payload.insert("userId".into(), Value::from(user.clone()));
        }
        if let Some(anon) = &new.anonymous_id {
            payload.insert("anonymousId".into(), Value::from(anon.clone()));
        }
        payload.insert("traits".into(), Value::Object(new.traits.clone()));
        let now = self.engine.clock().now_ms();
        let event_id = match &new.idempotency_key {
            Some(key) => profile_id_for(tenant.as_str(), &format!("api:{key}")).to_string(),
            None => Uuid::now_v7().to_string(),
        };
        let event = CanonicalEvent {
            event_id: event_id.clone(),
            tenant: tenant.clone(),
            event_type: "identify".into(),
            occurred_at_ms: now,
            received_at_ms: now,
            payload: Bytes::from(serde_json::to_vec(&payload).unwrap_or_default()),
            source: Source::Http,
            trace_id: pulse_trace::TraceContext::current().map(|t| t.trace_id().to_owned()),
            idempotency_key: new.idempotency_key.clone(),
        };
        let incoming = Incoming {
            event,
            trace: pulse_trace::TraceContext::current(),
        };
        let report = self.engine.apply(tenant, &[incoming]).await?;
        if report.skipped > 0 {
            return Err(PortError::Invalid(
                "a profile needs a user_id, an anonymous_id or traits.email that identifies somebody"
                    .into(),
            ));
        }
        let key = [
            (
                IdentityKind::UserId,
                new.user_id.as_ref().map(|v| Value::from(v.clone())),
            ),
            (IdentityKind::Email, new.traits.get("email").cloned()),
            (
                IdentityKind::AnonymousId,
                new.anonymous_id.as_ref().map(|v| Value::from(v.clone())),
            ),
        ]
        .into_iter()
        .find_map(|(kind, raw)| {
            rules
                .accept(kind, raw.as_ref())
                .map(|value| Identifier::new(kind, value))
        })
        .ok_or_else(|| PortError::Invalid("no identifier".into()))?;
        let owner = self
            .engine
            .store()
            .owner(tenant, &key)
            .await?
            .ok_or_else(|| PortError::NotFound(format!("profile of {}", key.value)))?;
        let stored = self
            .cold(tenant, owner)
            .await?
            .ok_or_else(|| PortError::NotFound(format!("profile {owner}")))?;
        Ok(Created {
            created: report.summary.created > 0,
            view: stored.profile.view(stored.version, stored.updated_at_ms),
        })
    }

    /// Live profiles in id order after `after`, optionally with a trait.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: Option<&TraitFilter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> PortResult<Vec<ProfileView>> {
        Ok(self
            .engine
            .store()
            .list(tenant, filter, after, limit)
            .await?
            .into_iter()
            .map(|stored| stored.profile.view(stored.version, stored.updated_at_ms))
            .collect())
    }

    /// The events of the live profile `id` is or was merged into.
    pub async fn events(
        &self,
        tenant: &TenantId,
        id: Uuid,
        after: Option<&Cursor>,
        limit: usize,
    ) -> PortResult<Option<(Uuid, Vec<ArchivedEvent>)>> {
        let Some(stored) = self.cold(tenant, id).await? else {
            return Ok(None);
        };
        let events = self
            .engine
            .store()
            .events(tenant, stored.profile.id, after, limit)
            .await?;
        Ok(Some((stored.profile.id, events)))
    }

    /// The merges into and out of `id`, newest first; `None` when there is no such profile.
    pub async fn merges(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<Vec<Merge>>> {
        if self.engine.store().profile(tenant, id).await?.is_none() {
            return Ok(None);
        }
        self.engine.store().merges(tenant, id).await.map(Some)
    }

    /// Undoes the newest merge into `id` still in effect (or `merge`).
    pub async fn unmerge(
        &self,
        tenant: &TenantId,
        id: Uuid,
        merge: Option<Uuid>,
    ) -> PortResult<Unmerged> {
        let rules = self.engine.settings().identity_for(tenant).clone();
        let engine = self.engine.clone();
        let outbox_tenant = tenant.clone();
        let trace = pulse_trace::TraceContext::current();
        let record = std::sync::Arc::new(move |stored: &StoredProfile| {
            engine.update_record(
                &outbox_tenant,
                stored,
                profile_updated::Kind::Unmerged,
                Vec::new(),
                trace.as_ref(),
            )
        });
        let now = self.engine.clock().now_ms();
        let unmerged = self
            .engine
            .store()
            .unmerge(tenant, id, merge, &rules, record, now)
            .await?;
        metrics::counter!(UNMERGES_TOTAL, "tenant" => tenant.as_str().to_owned()).increment(1);
        let hot = self.engine.hot();
        let mut writes = Vec::new();
        for stored in [&unmerged.kept, &unmerged.restored] {
            writes.extend(hot.writes_for(
                tenant,
                &stored.profile.view(stored.version, stored.updated_at_ms),
            ));
        }
        if let Err(err) = hot.apply(writes).await {
            metrics::counter!(crate::engine::HOT_WRITE_ERRORS_TOTAL).increment(1);
            tracing::warn!(error = %err, "hot copies of an unmerge not written; the reconciliation repairs them");
        }
        Ok(unmerged)
    }

    /// A pass over the most recently changed profiles.
    pub async fn reconcile_sample(&self, sample: usize) -> PortResult<ReconcileReport> {
        reconcile_sample(&self.engine, sample).await
    }

    /// A pass over every live profile.
    pub async fn reconcile_all(
        &self,
        progress: impl FnMut(&ReconcileReport),
    ) -> PortResult<ReconcileReport> {
        reconcile_all(&self.engine, 500, progress).await
    }

    /// Recomputes `tenant`'s profiles from the archive: the tenant's profile state is reset,
    /// then every archived profile event is applied again, in time order, in pages of `page`;
    /// `progress` hears (events done, events in all) after each page. Events the live path
    /// applies meanwhile are applied once: whichever gets there first marks them applied.
    pub async fn rebuild(
        &self,
        tenant: &TenantId,
        page: usize,
        mut progress: impl FnMut(u64, u64),
    ) -> PortResult<RebuildReport> {
        let total = self.engine.store().archive_count(tenant).await?;
        let reset = self.engine.store().reset(tenant).await?;
        let mut report = RebuildReport {
            profiles_reset: reset.len() as u64,
            ..RebuildReport::default()
        };
        let mut rebuilt = std::collections::HashSet::new();
        let mut after: Option<Cursor> = None;
        loop {
            let events = self
                .engine
                .store()
                .archive_page(tenant, after.as_ref(), page)
                .await?;
            let Some(last) = events.last() else { break };
            after = Some((last.occurred_at_ms, last.event_id.clone()));
            let incoming: Vec<Incoming> = events
                .iter()
                .map(|event| Incoming {
                    event: event.clone(),
                    trace: None,
                })
                .collect();
            let applied = self.engine.replay(tenant, &incoming).await?;
            rebuilt.extend(applied.profiles.iter().copied());
            report.events += events.len() as u64;
            report.applied += applied.summary.applied;
            report.merges += applied.summary.merges;
            progress(report.events, total.max(report.events));
            if events.len() < page {
                break;
            }
        }
        // A profile the archive no longer makes (its id came from an order of events the
        // replay does not repeat) must not keep answering from its hot copy until the TTL.
        let hot = self.engine.hot();
        for gone in reset.into_iter().filter(|id| !rebuilt.contains(id)) {
            match hot.delete(&hot.profile_key(tenant, gone)).await {
                Ok(()) => report.hot_copies_dropped += 1,
                // The cold store is rebuilt; a copy left behind expires with its TTL.
                Err(err) => {
                    metrics::counter!(crate::engine::HOT_WRITE_ERRORS_TOTAL).increment(1);
                    tracing::warn!(%tenant, profile = %gone, error = %err, "hot copy of a profile the rebuild did not make again is left to expire");
                }
            }
        }
        Ok(report)
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// Profiles deleted before the replay.
    pub profiles_reset: u64,
    /// Archived events read.
    pub events: u64,
    /// Events applied (the others were applied by the live path meanwhile, or name nobody).
    pub applied: u64,
    /// Merges made.
    pub merges: u64,
    /// Hot copies of profiles the replay did not make again, deleted.
    pub hot_copies_dropped: u64,
}
