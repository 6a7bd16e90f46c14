//! Applying a tenant's events: load what they name, resolve and apply them in memory, commit
//! the result in one unit of work (again from a fresh read when another writer got there
//! first), then refresh the hot copies. The `profiles` processor, the rebuild and
//! `POST /api/v1/profiles` all go through here, so there is one way an event changes a profile.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::{PortError, PortResult, TenantId};
use pulse_gateway::envelope::CanonicalEvent;
use pulse_outbox::OutboxEvent;
use pulse_proto::v1::{profile_updated, ProfileUpdated};
use pulse_proto::Message;
use pulse_trace::TraceContext;
use uuid::Uuid;

use crate::event::ProfileEvent;
use crate::hot::{HotEntry, HotProfiles};
use crate::model::{Identifier, IdentityKind};
use crate::ports::{Outcome, ProfileStore, StoredProfile};
use crate::resolve::{after_batch, Resolution, Summary, Working};
use crate::settings::ProfileSettings;

/// Profile changes, by tenant and kind (`created`, `updated`, `merged_away`).
pub const UPDATES_TOTAL: &str = "pulse_profiles_updates_total";
/// Events applied or skipped, by tenant and outcome (`applied`, `duplicate`, `skipped`: not a
/// profile event, or naming nobody).
pub const EVENTS_TOTAL: &str = "pulse_profiles_events_total";
/// Merges made, by tenant and reason.
pub const MERGES_TOTAL: &str = "pulse_profiles_merges_total";
/// Identifiers refused because a profile had no room (the tenant's limits), by tenant.
pub const REFUSED_IDENTIFIERS_TOTAL: &str = "pulse_profiles_refused_identifiers_total";
/// Commits retried because another writer changed the same profiles first.
pub const CONFLICTS_TOTAL: &str = "pulse_profiles_commit_conflicts_total";
/// Hot-copy writes that failed after a commit (the reconciliation repairs them).
pub const HOT_WRITE_ERRORS_TOTAL: &str = "pulse_profiles_hot_write_errors_total";
/// Seconds from an event's arrival at the gateway to its profile's commit (live events only,
/// not a rebuild's replay).
pub const FRESHNESS_SECONDS: &str = "pulse_profiles_freshness_seconds";

/// Attempts at a commit before the batch fails (and the processor retries it with backoff).
const COMMIT_ATTEMPTS: usize = 8;

/// One event to apply, with the trace it came in.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The event.
    pub event: CanonicalEvent,
    /// The ingest request's trace context.
    pub trace: Option<TraceContext>,
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Resolution's summary.
    pub summary: Summary,
    /// Events that name nobody (every identifier blocked) or are no profile call.
    pub skipped: u64,
    /// Profiles committed (live or merged away).
    pub profiles: Vec<Uuid>,
}

/// Applies events to profiles.
#[derive(Debug, Clone)]
pub struct ProfileEngine {
    store: Arc<dyn ProfileStore>,
    hot: HotProfiles,
    settings: Arc<ProfileSettings>,
    clock: SharedClock,
    updates_topic: String,
}

impl ProfileEngine {
    /// An engine over `store` and `hot`, publishing on `updates_topic`.
    pub fn new(
        store: Arc<dyn ProfileStore>,
        hot: HotProfiles,
        settings: Arc<ProfileSettings>,
        clock: SharedClock,
        updates_topic: String,
    ) -> Self {
        Self {
            store,
            hot,
            settings,
            clock,
            updates_topic,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ProfileStore> {
        &self.store
    }

    /// The hot copy.
    pub fn hot(&self) -> &HotProfiles {
        &self.hot
    }

    /// The section.
    pub fn settings(&self) -> &ProfileSettings {
        &self.settings
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The `profiles.updates` record of `stored` (live, or merged away when `merged_into`).
    pub fn update_record(
        &self,
        tenant: &TenantId,
        stored: &StoredProfile,
        kind: profile_updated::Kind,
        merged_from: Vec<String>,
        trace: Option<&TraceContext>,
    ) -> OutboxEvent {
        let view = stored.profile.view(stored.version, stored.updated_at_ms);
        let message = ProfileUpdated {
            profile_id: stored.profile.id.to_string(),
            kind: kind as i32,
            version: stored.version,
            merged_from,
            merged_into: stored
                .merged_into
                .map(|id| id.to_string())
                .unwrap_or_default(),
            user_ids: view.user_ids.clone(),
            anonymous_ids: view.anonymous_ids.clone(),
            last_active_at: stored.profile.last_active_ms.unwrap_or_default(),
            timestamp: stored.updated_at_ms,
            profile_json: if stored.merged_into.is_some() {
                Vec::new()
            } else {
                serde_json::to_vec(&view).unwrap_or_default()
            },
        };
        let mut record = OutboxEvent::new(
            self.updates_topic.clone(),
            "PROFILE",
            stored.profile.id,
            Bytes::from(message.encode_to_vec()),
            stored.updated_at_ms,
        )
        .for_tenant(tenant.clone());
        if let Some(trace) = trace {
            record.traceparent = Some(trace.traceparent.clone());
            record.tracestate = trace.tracestate.clone();
        }
        record
    }

    /// Applies `events` of `tenant`: each one's effect once, whatever was applied before.
    pub async fn apply(&self, tenant: &TenantId, events: &[Incoming]) -> PortResult<Report> {
        self.apply_events(tenant, events, true).await
    }

    /// [`ProfileEngine::apply`] for archived events a rebuild replays: their age says nothing
    /// about how fresh live profiles are, so it is kept out of the freshness histogram.
    pub async fn replay(&self, tenant: &TenantId, events: &[Incoming]) -> PortResult<Report> {
        self.apply_events(tenant, events, false).await
    }

    async fn apply_events(
        &self,
        tenant: &TenantId,
        events: &[Incoming],
        live: bool,
    ) -> PortResult<Report> {
        let rules = self.settings.identity_for(tenant);
        let tenant_label = tenant.as_str().to_owned();
        let mut read = Vec::with_capacity(events.len());
        let mut skipped = 0u64;
        for incoming in events {
            match ProfileEvent::read(&incoming.event, rules) {
                Some(event) => read.push((event, incoming)),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            metrics::counter!(EVENTS_TOTAL, "tenant" => tenant_label.clone(), "outcome" => "skipped")
                .increment(skipped);
        }
        if read.is_empty() {
            return Ok(Report {
                skipped,
                ..Report::default()
            });
        }
        let event_ids: Vec<String> = read
            .iter()
            .map(|(event, _)| event.event_id.clone())
            .collect();
        let mut identifiers = BTreeSet::new();
        for (event, _) in &read {
            identifiers.extend(event.identifiers.iter().cloned());
            if let Some(previous) = &event.previous_id {
                identifiers.insert(Identifier::new(IdentityKind::UserId, previous.clone()));
                identifiers.insert(Identifier::new(IdentityKind::AnonymousId, previous.clone()));
            }
        }
        let identifiers: Vec<Identifier> = identifiers.into_iter().collect();
        let spans: Vec<tracing::Span> = read
            .iter()
            .filter_map(|(event, incoming)| {
                let parent = incoming.trace.as_ref().filter(|trace| trace.is_sampled())?;
                Some(parent.adopt(tracing::info_span!(
                    "profile.apply",
                    otel.name = "apply to profile",
                    tenant = %tenant,
                    event_id = %event.event_id,
                )))
            })
            .collect();
        let mut attempt = 0;
        let (summary, outcomes, now) = loop {
            attempt += 1;
            let loaded = self.store.load(tenant, &event_ids, &identifiers).await?;
            let now = self.clock.now_ms();
            let mut working = Working::new(tenant.clone(), rules, loaded, now);
            let mut duplicates = 0u64;
            let mut trace_of = std::collections::HashMap::new();
            for (event, incoming) in &read {
                match working.apply(event, Some(&incoming.event)) {
                    Resolution::Applied(profile) => {
                        if let Some(trace) = &incoming.trace {
                            trace_of.entry(profile).or_insert_with(|| trace.clone());
                        }
                    }
                    Resolution::Duplicate => duplicates += 1,
                }
            }
            let (mut changes, mut summary) = working.finish();
            summary.duplicates = duplicates;
            let merged_from = |into: Uuid| -> Vec<String> {
                changes
                    .merges
                    .iter()
                    .filter(|merge| merge.into == into)
                    .map(|merge| merge.from.to_string())
                    .collect()
            };
            let mut records = Vec::with_capacity(changes.touched.len());
            for touched in &changes.touched {
                let trace = trace_of.get(&touched.id);
                let stored = after_batch(touched, now);
                let from = merged_from(touched.id);
                let kind = match (&touched.outcome, touched.read_version) {
                    (Outcome::MergedInto(_), _) => profile_updated::Kind::MergedAway,
                    (_, None) => profile_updated::Kind::Created,
                    _ if from.is_empty() => profile_updated::Kind::Updated,
                    _ => profile_updated::Kind::Merged,
                };
                records.push(self.update_record(tenant, &stored, kind, from, trace));
            }
            changes.outbox = records;
            if changes.touched.is_empty() && changes.events.is_empty() {
                // Every event was applied before: nothing to write.
                break (summary, Vec::new(), now);
            }
            let merges = changes.merges.clone();
            let outcomes = changes.touched.clone();
            match self.store.commit(tenant, changes).await {
                Ok(()) => {
                    for merge in &merges {
                        metrics::counter!(MERGES_TOTAL, "tenant" => tenant_label.clone(), "reason" => merge.reason.as_str())
                            .increment(1);
                    }
                    break (summary, outcomes, now);
                }
                Err(PortError::Conflict(why)) if attempt < COMMIT_ATTEMPTS => {
                    metrics::counter!(CONFLICTS_TOTAL).increment(1);
                    tracing::debug!(%tenant, attempt, %why, "profiles changed meanwhile; resolving the batch again");
                }
                // Writers racing on the same profiles this long is contention, not a fault of
                // the batch: a later retry (the processor's, the client's) can succeed.
                Err(PortError::Conflict(why)) => {
                    metrics::counter!(CONFLICTS_TOTAL).increment(1);
                    return Err(PortError::Unavailable {
                        backend: "profiles",
                        message: format!(
                            "profiles changed under {COMMIT_ATTEMPTS} attempts in a row: {why}"
                        ),
                    });
                }
                Err(err) => return Err(err),
            }
        };
        drop(spans);
        if live {
            let committed = self.clock.now_ms();
            for (_, incoming) in &read {
                let lag = (committed - incoming.event.received_at_ms).max(0) as f64 / 1_000.0;
                metrics::histogram!(FRESHNESS_SECONDS).record(lag);
            }
        }
        metrics::counter!(EVENTS_TOTAL, "tenant" => tenant_label.clone(), "outcome" => "applied")
            .increment(summary.applied);
        if summary.duplicates > 0 {
            metrics::counter!(EVENTS_TOTAL, "tenant" => tenant_label.clone(), "outcome" => "duplicate")
                .increment(summary.duplicates);
        }
        if summary.refused_identifiers > 0 {
            metrics::counter!(REFUSED_IDENTIFIERS_TOTAL, "tenant" => tenant_label.clone())
                .increment(summary.refused_identifiers);
        }
        let mut writes = Vec::new();
        let mut profiles = Vec::with_capacity(outcomes.len());
        for touched in &outcomes {
            profiles.push(touched.id);
            let stored = after_batch(touched, now);
            let kind = match (&touched.outcome, touched.read_version) {
                (Outcome::MergedInto(into), _) => {
                    writes.push(self.hot.entry_write(
                        tenant,
                        touched.id,
                        &HotEntry::MergedInto(*into),
                    ));
                    "merged_away"
                }
                (Outcome::Live(_), read) => {
                    writes.extend(
                        self.hot
                            .writes_for(tenant, &stored.profile.view(stored.version, now)),
                    );
                    if read.is_none() {
                        "created"
                    } else {
                        "updated"
                    }
                }
            };
            metrics::counter!(UPDATES_TOTAL, "tenant" => tenant_label.clone(), "kind" => kind)
                .increment(1);
        }
        if let Err(err) = self.hot.apply(writes).await {
            metrics::counter!(HOT_WRITE_ERRORS_TOTAL).increment(1);
            tracing::warn!(%tenant, error = %err, "hot profile copies not written; reads fall back to the store and the reconciliation repairs them");
        }
        Ok(Report {
            summary,
            skipped,
            profiles,
        })
    }
}
