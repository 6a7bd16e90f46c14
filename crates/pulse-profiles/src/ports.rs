//! The profiles' cold store: what a batch loads, what it commits (atomically, checked against
//! concurrent writers by version), and the reads, merges, unmerges, repairs and rebuilds the
//! API and the operator's commands need.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};
use pulse_gateway::envelope::CanonicalEvent;
use pulse_outbox::OutboxEvent;
use uuid::Uuid;

use crate::model::{Identifier, Merge, Profile};
use crate::settings::IdentitySettings;

/// A profile as stored, with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    /// The profile.
    pub profile: Profile,
    /// Grows by one with every committed change.
    pub version: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Set when it was merged into another profile (and is no longer live).
    pub merged_into: Option<Uuid>,
}

/// What a batch needs to know before it applies its events.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Event ids already applied (their effect is never applied again).
    pub seen: HashSet<String>,
    /// Who holds each of the batch's identifiers that someone holds.
    pub owners: HashMap<Identifier, Uuid>,
    /// The live profiles of those owners.
    pub profiles: HashMap<Uuid, StoredProfile>,
    /// Pairs of those profiles an unmerge split, which are never merged again (smaller id first).
    pub blocks: HashSet<(Uuid, Uuid)>,
    /// Every version the tenant's profiles had before its last rebuild is at most this.
    pub version_floor: i64,
}

/// How a profile a batch touched ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Live, in this state.
    Live(Box<Profile>),
    /// Merged into this (live) profile.
    MergedInto(Uuid),
}

/// A profile a batch created or changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Touched {
    /// Its id.
    pub id: Uuid,
    /// The version the batch read; `None` for a profile the batch created.
    pub read_version: Option<i64>,
    /// The version it writes: one more than it read, or above the tenant's version floor
    /// when it is new (so a profile rebuilt under an old id still gets newer versions).
    pub version: i64,
    /// How it ends.
    pub outcome: Outcome,
}

/// An identifier a batch gave to a profile for the first time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIdentity {
    /// The identifier.
    pub identifier: Identifier,
    /// Who holds it at the end of the batch.
    pub profile: Uuid,
    /// Who it was first given to (where an unmerge sends it back).
    pub origin: Uuid,
    /// The event that named it first.
    pub event_id: String,
}

/// An event whose effect a batch applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedEvent {
    /// Its id.
    pub event_id: String,
    /// The profile holding it at the end of the batch.
    pub profile: Uuid,
    /// Its strongest identifier (after an unmerge the event follows its holder).
    pub key: Identifier,
    /// Its type.
    pub event_type: String,
    /// When it happened, Unix milliseconds.
    pub occurred_at_ms: i64,
}

/// Everything a batch writes, in one unit of work.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Profiles created or changed. A profile whose version is no longer `read_version` makes
    /// the whole commit fail with `PortError::Conflict` (another writer got there first).
    pub touched: Vec<Touched>,
    /// Identifiers given for the first time; one someone else gave meanwhile is a conflict too.
    pub identities: Vec<NewIdentity>,
    /// Events applied; one applied meanwhile is a conflict.
    pub events: Vec<AppliedEvent>,
    /// Merges made.
    pub merges: Vec<Merge>,
    /// Pairs kept apart from now on: an unmerge's block that a merged profile passed on to
    /// the one it joined (kept as they are when already there).
    pub blocks: Vec<(Uuid, Uuid)>,
    /// Events to archive in `events_raw` (kept as they are when already there).
    pub archive: Vec<CanonicalEvent>,
    /// `profiles.updates` records, written through the outbox.
    pub outbox: Vec<OutboxEvent>,
    /// When, Unix milliseconds.
    pub now_ms: i64,
}

/// An archived event of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEvent {
    /// The event as archived.
    pub event: CanonicalEvent,
    /// Its strongest identifier.
    pub key: Identifier,
}

/// One page of a profile's events, or of the archive: `(occurred_at_ms, event_id)` after
/// which the page starts.
pub type Cursor = (i64, String);

/// A `GET /api/v1/profiles?trait.K=V` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraitFilter {
    /// The trait's name.
    pub key: String,
    /// Its value as text (a string trait, or a number or boolean's JSON).
    pub value: String,
}

/// What an unmerge did.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmerged {
    /// The merge undone.
    pub merge: Merge,
    /// The profile that stays (recomputed from its events).
    pub kept: StoredProfile,
    /// The profile split off (recomputed from its events).
    pub restored: StoredProfile,
}

/// A hot copy found different from the cold one, and repaired.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// Whose.
    pub tenant: TenantId,
    /// Which key.
    pub key: String,
    /// The profile it concerns.
    pub profile_id: Uuid,
    /// `stale`, `corrupt`, `dangling` (no such profile), `wrong_owner`.
    pub reason: &'static str,
    /// What the hot copy held (cut to 2,000 characters).
    pub found: String,
    /// When, Unix milliseconds.
    pub repaired_at_ms: i64,
}

/// Builds the `profiles.updates` record of a profile an unmerge recomputed.
pub type UpdateRecord = Arc<dyn Fn(&StoredProfile) -> OutboxEvent + Send + Sync + 'static>;

/// The profiles' cold store.
#[async_trait]
pub trait ProfileStore: Send + Sync + std::fmt::Debug {
    /// What a batch of `event_ids` naming `identifiers` needs.
    async fn load(
        &self,
        tenant: &TenantId,
        event_ids: &[String],
        identifiers: &[Identifier],
    ) -> PortResult<Loaded>;

    /// Writes `changes` in one unit of work, or nothing (`Conflict` when another writer changed
    /// a profile, gave an identifier or applied an event since [`ProfileStore::load`]).
    async fn commit(&self, tenant: &TenantId, changes: Changes) -> PortResult<()>;

    /// The profile `id`, live or merged.
    async fn profile(&self, tenant: &TenantId, id: Uuid) -> PortResult<Option<StoredProfile>>;

    /// The profile holding `identifier`.
    async fn owner(&self, tenant: &TenantId, identifier: &Identifier) -> PortResult<Option<Uuid>>;

    /// Live profiles in id order after `after`, optionally with a trait.
    async fn list(
        &self,
        tenant: &TenantId,
        filter: Option<&TraitFilter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> PortResult<Vec<StoredProfile>>;

    /// A profile's events in time order after `after`.
    async fn events(
        &self,
        tenant: &TenantId,
        profile: Uuid,
        after: Option<&Cursor>,
        limit: usize,
    ) -> PortResult<Vec<ArchivedEvent>>;

    /// The merges into and out of `profile`, newest first.
    async fn merges(&self, tenant: &TenantId, profile: Uuid) -> PortResult<Vec<Merge>>;

    /// Undoes the newest merge into `profile` still in effect (or `merge`): the merged profile's
    /// identifiers go back to it, each event follows its strongest identifier, both profiles are
    /// recomputed from their archived events, and the pair is blocked from merging again.
    /// `NotFound` when there is no such merge.
    async fn unmerge(
        &self,
        tenant: &TenantId,
        profile: Uuid,
        merge: Option<Uuid>,
        rules: &IdentitySettings,
        outbox: UpdateRecord,
        now_ms: i64,
    ) -> PortResult<Unmerged>;

    /// Profiles changed most recently, over every tenant, merged-away ones included (their hot
    /// copy is a redirect to check too): the periodic reconciliation's sample.
    async fn recently_changed(&self, limit: usize) -> PortResult<Vec<(TenantId, StoredProfile)>>;

    /// Profiles of every tenant, merged-away ones included, in (tenant, id) order after
    /// `after` (a full reconciliation).
    async fn all_live(
        &self,
        after: Option<&(TenantId, Uuid)>,
        limit: usize,
    ) -> PortResult<Vec<(TenantId, StoredProfile)>>;

    /// Appends repairs to the audit log.
    async fn record_repairs(&self, repairs: &[Repair]) -> PortResult<()>;

    /// The newest repairs, newest first.
    async fn repairs(&self, limit: usize) -> PortResult<Vec<Repair>>;

    /// Deletes `tenant`'s profiles, identities, merges and applied-event marks (not its blocks,
    /// an operator's decisions), before a rebuild, raising the tenant's version floor to the
    /// highest version it had; the profiles that went (live or merged away).
    async fn reset(&self, tenant: &TenantId) -> PortResult<Vec<Uuid>>;

    /// Archived events of the profile types, in time order after `after`.
    async fn archive_page(
        &self,
        tenant: &TenantId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> PortResult<Vec<CanonicalEvent>>;

    /// How many archived events of the profile types `tenant` has (a rebuild's progress bar).
    async fn archive_count(&self, tenant: &TenantId) -> PortResult<u64>;

    /// Every tenant with archived events.
    async fn archived_tenants(&self) -> PortResult<Vec<TenantId>>;
}
