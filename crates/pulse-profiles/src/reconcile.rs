//! Hot against cold: read the cold profiles, read their hot copies, and where a hot copy
//! differs (an older version, bytes that are no profile, a pointer to another profile) write
//! the cold one over it and keep an audit row of the repair.
//!
//! A hot copy newer than the cold read can be a commit that landed between the two reads, so
//! a difference is confirmed against a second cold read before anything is repaired.

use std::collections::BTreeMap;

use pulse_core::{PortResult, TenantId};

use crate::engine::ProfileEngine;
use crate::hot::{decode, HotEntry};
use crate::ports::{Repair, StoredProfile};

/// Hot copies found different from the cold store in the last pass.
pub const DRIFT: &str = "pulse_profiles_drift";
/// Hot copies repaired, by reason (`stale`, `corrupt`, `wrong_owner`).
pub const REPAIRS_TOTAL: &str = "pulse_profiles_repairs_total";
/// Profiles compared, by pass (`sample`, `full`).
pub const CHECKED_TOTAL: &str = "pulse_profiles_reconciled_total";
/// When a pass last finished, Unix seconds.
pub const RECONCILED_AT: &str = "pulse_profiles_reconciled_timestamp_seconds";

/// Longest hot value kept in a repair's audit row.
const MAX_FOUND_CHARS: usize = 2_000;

/// What a pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Profiles compared.
    pub checked: u64,
    /// Hot copies that were not cached (not drift: the TTL let them go).
    pub not_cached: u64,
    /// Hot copies repaired, by reason.
    pub repaired: BTreeMap<&'static str, u64>,
}

impl ReconcileReport {
    /// Repairs made.
    pub fn drift(&self) -> u64 {
        self.repaired.values().sum()
    }

    fn add(&mut self, other: ReconcileReport) {
        self.checked += other.checked;
        self.not_cached += other.not_cached;
        for (reason, count) in other.repaired {
            *self.repaired.entry(reason).or_default() += count;
        }
    }
}

fn expected(stored: &StoredProfile) -> HotEntry {
    match stored.merged_into {
        Some(into) => HotEntry::MergedInto(into),
        None => HotEntry::Profile(Box::new(
            stored.profile.view(stored.version, stored.updated_at_ms),
        )),
    }
}

fn cut(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .take(MAX_FOUND_CHARS)
        .collect()
}

/// Compares `profiles` with their hot copies and repairs the copies that differ.
pub async fn reconcile(
    engine: &ProfileEngine,
    profiles: &[(TenantId, StoredProfile)],
) -> PortResult<ReconcileReport> {
    let hot = engine.hot();
    let mut report = ReconcileReport::default();
    let keys: Vec<String> = profiles
        .iter()
        .map(|(tenant, stored)| hot.profile_key(tenant, stored.profile.id))
        .collect();
    let found = hot.raw(&keys).await?;
    let mut repairs = Vec::new();
    let mut writes = Vec::new();
    let now = engine.clock().now_ms();
    for (((tenant, stored), key), raw) in profiles.iter().zip(&keys).zip(found) {
        report.checked += 1;
        let Some(raw) = raw else {
            report.not_cached += 1;
            continue;
        };
        let reason = match decode(key, &raw) {
            Err(_) => "corrupt",
            Ok(entry) if entry == expected(stored) => continue,
            Ok(_) => "stale",
        };
        // Confirm against the store as it is now: the copy may be of a commit made meanwhile.
        let Some(fresh) = engine.store().profile(tenant, stored.profile.id).await? else {
            continue;
        };
        let fresh_entry = expected(&fresh);
        if reason == "stale" && decode(key, &raw).ok().as_ref() == Some(&fresh_entry) {
            continue;
        }
        writes.push(hot.entry_write(tenant, fresh.profile.id, &fresh_entry));
        repairs.push(Repair {
            tenant: tenant.clone(),
            key: key.clone(),
            profile_id: fresh.profile.id,
            reason,
            found: cut(&raw),
            repaired_at_ms: now,
        });
    }
    // Each live profile's identifiers must point at it.
    let mut pointer_keys = Vec::new();
    let mut pointer_of = Vec::new();
    for (tenant, stored) in profiles.iter().filter(|(_, s)| s.merged_into.is_none()) {
        for identifier in &stored.profile.identifiers {
            pointer_keys.push(hot.pointer_key(tenant, identifier));
            pointer_of.push((tenant, stored, identifier));
        }
    }
    if !pointer_keys.is_empty() {
        let pointers = hot.raw(&pointer_keys).await?;
        for ((key, (tenant, stored, identifier)), raw) in
            pointer_keys.iter().zip(pointer_of).zip(pointers)
        {
            let Some(raw) = raw else { continue };
            if raw.as_ref() == stored.profile.id.to_string().as_bytes() {
                continue;
            }
            if engine.store().owner(tenant, identifier).await? != Some(stored.profile.id) {
                continue;
            }
            writes.extend(
                hot.writes_for(
                    tenant,
                    &stored.profile.view(stored.version, stored.updated_at_ms),
                )
                .into_iter()
                .filter(|write| write.key() == key),
            );
            repairs.push(Repair {
                tenant: tenant.clone(),
                key: key.clone(),
                profile_id: stored.profile.id,
                reason: "wrong_owner",
                found: cut(&raw),
                repaired_at_ms: now,
            });
        }
    }
    if !repairs.is_empty() {
        hot.apply(writes).await?;
        engine.store().record_repairs(&repairs).await?;
        for repair in &repairs {
            *report.repaired.entry(repair.reason).or_default() += 1;
            metrics::counter!(REPAIRS_TOTAL, "reason" => repair.reason).increment(1);
            tracing::warn!(tenant = %repair.tenant, key = %repair.key, reason = repair.reason, "hot profile copy repaired from the store");
        }
    }
    Ok(report)
}

/// One periodic pass: the `sample` most recently changed profiles.
pub async fn reconcile_sample(
    engine: &ProfileEngine,
    sample: usize,
) -> PortResult<ReconcileReport> {
    let profiles = engine.store().recently_changed(sample).await?;
    let report = reconcile(engine, &profiles).await?;
    export(&report, "sample", engine);
    Ok(report)
}

/// Every live profile, in pages of `page`; `progress` hears the running report after each.
pub async fn reconcile_all(
    engine: &ProfileEngine,
    page: usize,
    mut progress: impl FnMut(&ReconcileReport),
) -> PortResult<ReconcileReport> {
    let mut report = ReconcileReport::default();
    let mut after: Option<(TenantId, uuid::Uuid)> = None;
    loop {
        let profiles = engine.store().all_live(after.as_ref(), page).await?;
        let Some((tenant, last)) = profiles.last() else {
            break;
        };
        after = Some((tenant.clone(), last.profile.id));
        report.add(reconcile(engine, &profiles).await?);
        progress(&report);
        if profiles.len() < page {
            break;
        }
    }
    export(&report, "full", engine);
    Ok(report)
}

fn export(report: &ReconcileReport, pass: &'static str, engine: &ProfileEngine) {
    metrics::gauge!(DRIFT).set(report.drift() as f64);
    metrics::counter!(CHECKED_TOTAL, "pass" => pass).increment(report.checked);
    metrics::gauge!(RECONCILED_AT).set(engine.clock().now_ms() as f64 / 1_000.0);
}
