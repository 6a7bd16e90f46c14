//! What a job is: as enqueued ([`NewJob`]), as stored ([`Job`]), as leased ([`Lease`]), and what a
//! worker reports back ([`Completion`], [`Failure`]).

use std::collections::HashMap;

use pulse_core::TenantId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A new job's id: a UUIDv7 of `now_ms` (the queue's clock), monotonic within the process, so
/// ids sort as the jobs were enqueued and a job finished before a time has an id below that
/// time's (retention walks the primary key).
pub fn job_id_at(now_ms: i64) -> Uuid {
    static CONTEXT: std::sync::Mutex<uuid::ContextV7> =
        std::sync::Mutex::new(uuid::ContextV7::new());
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let context = CONTEXT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Uuid::new_v7(uuid::Timestamp::from_unix(
        &*context,
        ms / 1_000,
        ((ms % 1_000) * 1_000_000) as u32,
    ))
}

/// A job's state as every API shows it.
///
/// `scheduled` waits for its `run_at`; `queued` may run now; `running` is leased by a worker;
/// `retrying` failed an attempt and waits for its next; `succeeded`, `dead` (out of attempts, or
/// failed for good) and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to run.
    Queued,
    /// Leased by a worker.
    Running,
    /// Waiting for its next attempt.
    Retrying,
    /// Done; its result is kept.
    Succeeded,
    /// Out of attempts or failed for good; every attempt's error is kept.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// Its name in the API and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Whether the job will not run again by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

/// A job to enqueue, validated by the control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Its id (UUIDv7: time-ordered), chosen before the write so a retried request can be told
    /// from a new one.
    pub id: Uuid,
    /// Whose.
    pub tenant: TenantId,
    /// Which handler runs it.
    pub job_type: String,
    /// The tenant's queue it waits in (`default` unless named).
    pub queue: String,
    /// Opaque bytes handed to the handler; never inspected.
    pub payload: Vec<u8>,
    /// Lower runs first (−100 to 100, default 0).
    pub priority: i32,
    /// Not before, Unix ms.
    pub run_at_ms: i64,
    /// Enqueued at, Unix ms.
    pub created_at_ms: i64,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout_ms: u64,
    /// The tenant's key: the same key for the same tenant enqueues once.
    pub idempotency_key: Option<String>,
    /// W3C `traceparent` of the enqueue, so every attempt joins its trace.
    pub traceparent: Option<String>,
    /// The caller's metadata object, as JSON text.
    pub metadata: Option<String>,
}

/// One attempt's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptError {
    /// Which attempt (1 is the first).
    pub attempt: u32,
    /// When it failed, Unix ms.
    pub at_ms: i64,
    /// What the handler (or the worker) said.
    pub error: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: Uuid,
    /// Whose.
    pub tenant: TenantId,
    /// Its handler.
    pub job_type: String,
    /// Its queue.
    pub queue: String,
    /// The payload as enqueued.
    pub payload: Vec<u8>,
    /// Lower runs first.
    pub priority: i32,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
    /// When it may run next (or ran last), Unix ms.
    pub run_at_ms: i64,
    /// Enqueued at, Unix ms.
    pub created_at_ms: i64,
    /// Its last attempt started at, Unix ms.
    pub started_at_ms: Option<i64>,
    /// It reached a final state at, Unix ms.
    pub finished_at_ms: Option<i64>,
    /// What the handler answered on success.
    pub result: Option<Vec<u8>>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// The enqueue's idempotency key.
    pub idempotency_key: Option<String>,
    /// The enqueue's trace.
    pub traceparent: Option<String>,
    /// The caller's metadata, as JSON text.
    pub metadata: Option<String>,
}

/// What enqueueing one job did.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// A new job.
    Created(Job),
    /// The tenant already had a job under that idempotency key: that one, unchanged.
    Existing(Job),
}

impl Enqueued {
    /// The job either way.
    pub fn job(&self) -> &Job {
        match self {
            Enqueued::Created(job) | Enqueued::Existing(job) => job,
        }
    }
}

/// A job a worker holds until `locked_until_ms`, under a fencing `token`: every later update
/// names the token, and one from a lease that lapsed (the job leased again since, or rescued)
/// changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job, as leased (its `attempts` counts this attempt).
    pub job: Job,
    /// The fencing token: grows with every lease of the job.
    pub token: i64,
    /// Held until, Unix ms (extended by heartbeats).
    pub locked_until_ms: i64,
}

/// A lease, by id and token: what heartbeats, releases and completions name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The job.
    pub id: Uuid,
    /// Its fencing token.
    pub token: i64,
}

impl Lease {
    /// Its id and token.
    pub fn reference(&self) -> LeaseRef {
        LeaseRef {
            id: self.job.id,
            token: self.token,
        }
    }
}

/// What to lease of one tenant: up to `limit` ready jobs (see [`crate::fair::shares`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantShare {
    /// Whose jobs.
    pub tenant: TenantId,
    /// At most this many.
    pub limit: u32,
}

/// A lease request: up to `limit` jobs, shared fairly among the tenants with ready jobs.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The worker asking (kept in `locked_by`, named when its lease lapses).
    pub worker: String,
    /// Most jobs in all.
    pub limit: u32,
    /// Tenants' weights in the share (absent: 1).
    pub weights: HashMap<TenantId, u32>,
    /// Tenants' room under their concurrency cap in this worker (absent: no cap).
    pub room: HashMap<TenantId, u32>,
    /// Per tenant, job types not to lease (their handlers are at their cap in this worker).
    pub exclude_types: HashMap<TenantId, Vec<String>>,
    /// Which tenant gets the remainder of an uneven split (a counter the worker advances).
    pub rotate: usize,
    /// Now, Unix ms.
    pub now_ms: i64,
    /// How long the lease holds without a heartbeat.
    pub visibility_ms: i64,
}

/// A successful attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The lease it ran under.
    pub lease: LeaseRef,
    /// The handler's answer, kept as the job's result.
    pub result: Option<Vec<u8>>,
    /// When the handler was called, Unix ms (after the lease, once a slot was free).
    pub started_at_ms: i64,
}

/// A failed attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The lease it ran under.
    pub lease: LeaseRef,
    /// Which attempt failed.
    pub attempt: u32,
    /// Why.
    pub error: String,
    /// When to try again, Unix ms; `None`: dead.
    pub retry_at_ms: Option<i64>,
    /// When the handler was called, Unix ms; `None` (a lapsed lease): the lease's time stays.
    pub started_at_ms: Option<i64>,
}

/// A lease that lapsed: its worker stopped heartbeating (it died, or hung).
#[derive(Debug, Clone, PartialEq)]
pub struct Lapsed {
    /// The lease.
    pub lease: LeaseRef,
    /// Whose job.
    pub tenant: TenantId,
    /// Its type (the retry policy is the handler's).
    pub job_type: String,
    /// The attempt that was running.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Which worker held it.
    pub worker: Option<String>,
}

/// Which jobs a listing or a redrive takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// In this state.
    pub state: Option<JobState>,
    /// Of this type.
    pub job_type: Option<String>,
    /// In this queue.
    pub queue: Option<String>,
}

/// One queue's backlog.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    /// Whose queue.
    pub tenant: TenantId,
    /// Its name.
    pub queue: String,
    /// Jobs ready to run now.
    pub ready: u64,
    /// Jobs waiting for their `run_at` (scheduled, or retrying later).
    pub waiting: u64,
    /// When the oldest ready job became ready, Unix ms.
    pub oldest_ready_ms: Option<i64>,
}

/// A tenant's registered HTTP handler of one job type, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHandler {
    /// Whose.
    pub tenant: TenantId,
    /// Which jobs it runs.
    pub job_type: String,
    /// Where each job is POSTed.
    pub url: String,
    /// The signing secret (generated at registration).
    pub secret: String,
    /// The handler's policy, as JSON text of [`crate::retry::HandlerPolicy`].
    pub policy: String,
    /// The caller's version label.
    pub version: Option<String>,
    /// The caller's metadata, as JSON text.
    pub metadata: Option<String>,
    /// Registered at, Unix ms.
    pub created_at_ms: i64,
    /// Last changed at, Unix ms.
    pub updated_at_ms: i64,
}
