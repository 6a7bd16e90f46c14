//! What the gateway keeps durably, as ports the relational store implements: the dedup
//! entries, the delivery records of sinks that are not idempotent, events parked for a retry,
//! dead letters, and the tenants' stored pipelines.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};

/// A dedup key taken by an event: `k:{idempotency key}` or `e:{client event id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    /// The key.
    pub key: String,
    /// The event that took it.
    pub event_id: String,
    /// When that event was received.
    pub received_at_ms: i64,
    /// When the key may be taken again (received + the dedup window).
    pub expires_at_ms: i64,
}

/// What a dedup key answers: the event first taken under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its id.
    pub event_id: String,
    /// When it was received.
    pub received_at_ms: i64,
}

/// The gateway's exact dedup window, per tenant.
#[async_trait]
pub trait DedupStore: Send + Sync + std::fmt::Debug {
    /// Which of `keys` of `tenant` are taken and not expired at `now_ms`.
    async fn recorded(
        &self,
        tenant: &TenantId,
        keys: &[String],
        now_ms: i64,
    ) -> PortResult<HashMap<String, Recorded>>;

    /// Takes `entries` (a key already taken keeps its first event).
    async fn record(&self, tenant: &TenantId, entries: &[DedupEntry]) -> PortResult<()>;

    /// Forgets keys and delivery records that expired before `now_ms`; how many.
    async fn expire(&self, now_ms: i64) -> PortResult<u64>;
}

/// Which events a sink that is not idempotent already took.
#[async_trait]
pub trait DeliveryLedger: Send + Sync + std::fmt::Debug {
    /// Of `event_ids`, those `sink` of `tenant` took.
    async fn delivered(
        &self,
        tenant: &TenantId,
        sink: &str,
        event_ids: &[String],
    ) -> PortResult<HashSet<String>>;

    /// Notes that `sink` of `tenant` took `event_ids`, until `expires_at_ms`.
    async fn mark_delivered(
        &self,
        tenant: &TenantId,
        sink: &str,
        event_ids: &[String],
        at_ms: i64,
        expires_at_ms: i64,
    ) -> PortResult<()>;
}

/// An event to park for a later delivery to one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPark {
    /// Whose.
    pub tenant: TenantId,
    /// Which sink (its id in the tenant's pipeline).
    pub sink: String,
    /// The event's id.
    pub event_id: String,
    /// The envelope to deliver (after the transforms), encoded.
    pub envelope: Vec<u8>,
    /// The envelope as it came from the door, for its dead letter.
    pub original: Vec<u8>,
    /// The plugins that touched it, as JSON.
    pub plugins: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why it is parked.
    pub error: String,
    /// Now.
    pub at_ms: i64,
    /// When to try again.
    pub next_attempt_at_ms: i64,
}

/// A parked event, claimed for a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Row id; later ids were parked later.
    pub id: i64,
    /// Whose.
    pub tenant: TenantId,
    /// Which sink.
    pub sink: String,
    /// The event's id.
    pub event_id: String,
    /// The envelope to deliver, encoded.
    pub envelope: Vec<u8>,
    /// The envelope as it came from the door.
    pub original: Vec<u8>,
    /// The plugins that touched it, as JSON.
    pub plugins: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The first error.
    pub first_error: String,
    /// The latest error.
    pub last_error: String,
    /// When it was first parked.
    pub first_failed_at_ms: i64,
}

/// A dead letter to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// Whose.
    pub tenant: TenantId,
    /// The event's id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The sink that refused it; empty when a transform did.
    pub sink: String,
    /// The plugin that refused it.
    pub plugin: String,
    /// That plugin's version.
    pub plugin_version: String,
    /// Why, as a code: `transform_error`, `sink_rejected`, `retries_exhausted`, `sink_removed`,
    /// `undecodable`.
    pub reason: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The first error.
    pub first_error: String,
    /// The latest error.
    pub last_error: String,
    /// When it first failed.
    pub first_failed_at_ms: i64,
    /// When it last failed (now).
    pub last_failed_at_ms: i64,
    /// The original envelope, encoded.
    pub envelope: Vec<u8>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id: the page cursor.
    pub id: i64,
    /// What was written.
    pub letter: NewDeadLetter,
}

/// Which dead letters to list or redrive (every filter optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Failed at or after, Unix ms.
    pub from_ms: Option<i64>,
    /// Failed before, Unix ms.
    pub to_ms: Option<i64>,
    /// Of this event type.
    pub event_type: Option<String>,
    /// Refused by this sink.
    pub sink: Option<String>,
    /// With this reason code.
    pub reason: Option<String>,
}

/// Events parked for a retry, per (tenant, sink).
#[async_trait]
pub trait ParkedDeliveries: Send + Sync + std::fmt::Debug {
    /// Parks `items` (an event already parked for that sink stays as it is).
    async fn park(&self, items: &[ToPark]) -> PortResult<()>;

    /// Whether `sink` of `tenant` has events waiting (new ones then wait behind them).
    async fn backlogged(&self, tenant: &TenantId, sink: &str) -> PortResult<bool>;

    /// Claims up to `limit` events due at `now_ms`, oldest first, for `lease_ms` (another
    /// process does not take them meanwhile).
    async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: usize) -> PortResult<Vec<Parked>>;

    /// The sink took these: forget them.
    async fn delivered(&self, ids: &[i64]) -> PortResult<()>;

    /// Not yet: try again at `next_attempt_at_ms`.
    async fn retry_later(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        next_attempt_at_ms: i64,
    ) -> PortResult<()>;

    /// Gives up on `id`: writes its dead letter and forgets it, in one unit of work.
    async fn bury(&self, id: i64, letter: &NewDeadLetter) -> PortResult<()>;

    /// How many events wait, per (tenant, sink).
    async fn backlog(&self) -> PortResult<Vec<(TenantId, String, u64)>>;
}

/// The per-tenant dead-letter store.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + std::fmt::Debug {
    /// Writes `letters` (an event already dead for that sink and not redriven is kept once).
    async fn put(&self, letters: &[NewDeadLetter]) -> PortResult<()>;

    /// Dead letters of `tenant` not redriven, matching `filter`, with ids after `after`,
    /// oldest first, at most `limit`.
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeadLetterFilter,
        after: Option<i64>,
        limit: usize,
    ) -> PortResult<Vec<DeadLetter>>;

    /// Marks `ids` of `tenant` redriven at `at_ms`.
    async fn mark_redriven(&self, tenant: &TenantId, ids: &[i64], at_ms: i64) -> PortResult<()>;
}

/// A tenant's pipeline as stored through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPipeline {
    /// Whose.
    pub tenant: TenantId,
    /// Increases with every change.
    pub version: i64,
    /// The spec, as JSON.
    pub spec: serde_json::Value,
    /// When it was stored.
    pub updated_at_ms: i64,
}

/// The tenants' stored pipelines, versioned.
#[async_trait]
pub trait PipelineStore: Send + Sync + std::fmt::Debug {
    /// Stores `spec` as the tenant's next version; returns it.
    async fn put_pipeline(
        &self,
        tenant: &TenantId,
        spec: &serde_json::Value,
        at_ms: i64,
    ) -> PortResult<i64>;

    /// The latest version of every tenant's stored pipeline.
    async fn current_pipelines(&self) -> PortResult<Vec<StoredPipeline>>;
}
