//! The ports the jobs domain needs: the queue ([`JobQueue`]), a tenant-facing view of it
//! ([`JobBook`]), and where HTTP handlers are registered ([`HandlerStore`]). The relational
//! store implements all three (`pulse-store`); a Redis queue joins the same suite later.

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};
use uuid::Uuid;

use crate::model::{
    Completion, Enqueued, Failure, Job, JobFilter, Lapsed, Lease, LeaseRef, LeaseRequest, NewJob,
    QueueDepth, StoredHandler,
};

/// The queue workers lease from. Every update after a lease names its [`LeaseRef`]: one whose
/// token is no longer the job's (the lease lapsed and the job was rescued or leased again), or
/// whose job is no longer running (cancelled), changes nothing and is left out of the answer.
#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// Enqueues `jobs` in one write, in order. A job whose tenant already has its idempotency key
    /// is not written: the answer is the stored one.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> PortResult<Vec<Enqueued>>;

    /// Leases up to `request.limit` ready jobs, shared among the tenants with ready jobs as
    /// [`crate::fair::shares`] says; within a tenant, lowest priority first, then oldest
    /// `run_at`. Each lease counts an attempt and takes a new fencing token. Two workers never
    /// hold the same job.
    async fn lease(&self, request: &LeaseRequest) -> PortResult<Vec<Lease>>;

    /// Extends `leases` to `until_ms`; the ones still held.
    async fn heartbeat(&self, leases: &[LeaseRef], until_ms: i64) -> PortResult<Vec<Uuid>>;

    /// Records successes at `now_ms`; the ones recorded.
    async fn complete(&self, done: &[Completion], now_ms: i64) -> PortResult<Vec<Uuid>>;

    /// Records failed attempts at `now_ms` (retrying at their time, or dead); the ones recorded.
    async fn fail(&self, failed: &[Failure], now_ms: i64) -> PortResult<Vec<Uuid>>;

    /// Hands `leases` back without counting their attempt (a worker shutting down); the ones
    /// released.
    async fn release(&self, leases: &[LeaseRef]) -> PortResult<Vec<Uuid>>;

    /// Up to `limit` leases that lapsed before `now_ms`, for the caller to [`JobQueue::fail`].
    async fn lapsed(&self, now_ms: i64, limit: u32) -> PortResult<Vec<Lapsed>>;
}

/// The tenant's view of its jobs: the control plane's reads and corrections.
#[async_trait]
pub trait JobBook: Send + Sync + std::fmt::Debug {
    /// The job, with every attempt's error; `None` when the tenant has no such job.
    async fn get(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>>;

    /// The tenant's jobs matching `filter`, newest first, after the job `after` (a page's last),
    /// at most `limit`. Errors are not loaded (see [`JobBook::get`]).
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
        after: Option<Uuid>,
        limit: u32,
        now_ms: i64,
    ) -> PortResult<Vec<Job>>;

    /// Cancels the job unless it is final; the job as it is afterwards (`None`: no such job).
    async fn cancel(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>>;

    /// Queues a dead or cancelled job again at `now_ms` (attempts are kept; one more is allowed
    /// when it has none left); the job afterwards.
    async fn retry(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>>;

    /// [`JobBook::retry`] for every dead job matching `filter` (its state is ignored); how many.
    async fn redrive(&self, tenant: &TenantId, filter: &JobFilter, now_ms: i64) -> PortResult<u64>;

    /// Every queue's backlog at `now_ms`.
    async fn depths(&self, now_ms: i64) -> PortResult<Vec<QueueDepth>>;

    /// Deletes up to `limit` jobs that succeeded or were cancelled before `finished_before_ms`,
    /// or died before `dead_before_ms`; how many.
    async fn purge(
        &self,
        finished_before_ms: i64,
        dead_before_ms: i64,
        limit: u32,
    ) -> PortResult<u64>;
}

/// Where tenants' HTTP handlers are registered.
#[async_trait]
pub trait HandlerStore: Send + Sync + std::fmt::Debug {
    /// Registers or replaces the handler (its secret and creation time stay those of the first
    /// registration); the stored handler and whether it is new.
    async fn put_handler(&self, handler: StoredHandler) -> PortResult<(StoredHandler, bool)>;

    /// The tenant's handler of `job_type`.
    async fn handler(&self, tenant: &TenantId, job_type: &str)
        -> PortResult<Option<StoredHandler>>;

    /// Every registered handler.
    async fn handlers(&self) -> PortResult<Vec<StoredHandler>>;
}
