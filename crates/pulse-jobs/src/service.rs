//! The control plane: validates a job, checks that its type has a handler, enqueues it
//! idempotently, and answers the tenant's questions about its jobs and handlers. Stateless: any
//! number of gateways run it over the same store.

use std::sync::Arc;

use pulse_core::clock::SharedClock;
use pulse_core::{PortError, TenantId};
use uuid::Uuid;

use crate::model::{Enqueued, Job, JobFilter, NewJob, StoredHandler};
use crate::ports::{HandlerStore, JobBook, JobQueue};
use crate::registry::{HandlerRegistry, RESERVED_PREFIX};
use crate::retry::HandlerPolicy;
use crate::wake::Wakeup;

/// Limits and defaults of the control plane (the `[jobs]` section).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobLimits {
    /// Largest payload, bytes (as JSON text).
    pub max_payload_bytes: usize,
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Attempts when neither the job nor its handler says.
    pub default_max_attempts: u32,
    /// Most attempts a job may ask for.
    pub max_attempts: u32,
    /// One attempt's timeout when neither the job nor its handler says, ms.
    pub default_timeout_ms: u64,
    /// The longest timeout a job or handler may ask for, ms.
    pub max_timeout_ms: u64,
    /// How far ahead a job may be scheduled, ms.
    pub max_delay_ms: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_batch: 500,
            default_max_attempts: 25,
            max_attempts: 100,
            default_timeout_ms: 60_000,
            max_timeout_ms: 3_600_000,
            max_delay_ms: 365 * 24 * 3_600_000,
        }
    }
}

/// Longest job type, queue name, idempotency key and version label.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest metadata object, bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 4_096;
/// Priorities run from this (first) …
pub const MIN_PRIORITY: i32 = -100;
/// … to this (last).
pub const MAX_PRIORITY: i32 = 100;

/// A job as a client asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRequest {
    /// Which handler.
    pub job_type: String,
    /// Opaque bytes (JSON text from the API).
    pub payload: Vec<u8>,
    /// Which of the tenant's queues (`default`).
    pub queue: Option<String>,
    /// The same key enqueues once per tenant.
    pub idempotency_key: Option<String>,
    /// Lower runs first.
    pub priority: Option<i32>,
    /// Not before, Unix ms.
    pub run_at_ms: Option<i64>,
    /// Not before now plus this, ms.
    pub delay_ms: Option<u64>,
    /// Attempts before it is dead.
    pub max_attempts: Option<u32>,
    /// One attempt's timeout, ms.
    pub timeout_ms: Option<u64>,
    /// The caller's trace (`traceparent`), from `metadata.trace_id` or the request's headers.
    pub traceparent: Option<String>,
    /// The caller's metadata object, as JSON text.
    pub metadata: Option<String>,
}

/// A handler registration, as a client asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlerRequest {
    /// Where each job is POSTed.
    pub url: String,
    /// Its policy.
    pub policy: HandlerPolicy,
    /// The caller's version label.
    pub version: Option<String>,
    /// The caller's metadata object, as JSON text.
    pub metadata: Option<String>,
}

/// Why the control plane refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// Which (e.g. `jobs[3].priority`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No handler is registered for the job type.
    #[error("{field}: no handler is registered for job type {job_type:?}; register one with PUT /api/v1/handlers/{job_type}")]
    UnknownJobType {
        /// Which field.
        field: String,
        /// The type.
        job_type: String,
    },
    /// No such job of the tenant's.
    #[error("no job {0}")]
    NotFound(Uuid),
    /// The job is not in a state the operation applies to.
    #[error("job {id} is {state}: {message}")]
    WrongState {
        /// The job.
        id: Uuid,
        /// Its state.
        state: &'static str,
        /// What applies.
        message: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] PortError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> JobError {
    JobError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// `value` of `field` within `1..=max`, or the house 400 saying so (`unit` after the bound).
fn within(field: String, value: u64, max: u64, unit: &str) -> Result<(), JobError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, format!("1 to {max}{unit}")))
    }
}

/// `metadata` of `field` within [`MAX_METADATA_BYTES`].
fn metadata_within(field: String, metadata: Option<&String>) -> Result<(), JobError> {
    match metadata {
        Some(metadata) if metadata.len() > MAX_METADATA_BYTES => Err(invalid(
            field,
            format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
        )),
        _ => Ok(()),
    }
}

/// Whether `name` is a job type, queue or label: 1 to 128 of `A-Z a-z 0-9 _ . : -`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct JobService {
    queue: Arc<dyn JobQueue>,
    book: Arc<dyn JobBook>,
    handlers: Arc<dyn HandlerStore>,
    registry: Arc<HandlerRegistry>,
    clock: SharedClock,
    limits: JobLimits,
    wake: Arc<Wakeup>,
}

impl JobService {
    /// A control plane over `queue`, `book` and `handlers`, resolving types through `registry`;
    /// `wake` is told of every enqueue (a worker in the same process starts at once, or at the
    /// job's `run_at`).
    pub fn new(
        queue: Arc<dyn JobQueue>,
        book: Arc<dyn JobBook>,
        handlers: Arc<dyn HandlerStore>,
        registry: Arc<HandlerRegistry>,
        clock: SharedClock,
        limits: JobLimits,
        wake: Arc<Wakeup>,
    ) -> Self {
        Self {
            queue,
            book,
            handlers,
            registry,
            clock,
            limits,
            wake,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &JobLimits {
        &self.limits
    }

    /// Validates and enqueues `requests` for `tenant` in one write; `field` names the body path
    /// of request `i` in errors (`""` for a single job, `jobs[i].` in a batch).
    pub async fn enqueue(
        &self,
        tenant: &TenantId,
        requests: Vec<JobRequest>,
        field: impl Fn(usize) -> String,
    ) -> Result<Vec<Enqueued>, JobError> {
        if requests.len() > self.limits.max_batch {
            return Err(invalid(
                "jobs",
                format!("at most {} jobs in a batch", self.limits.max_batch),
            ));
        }
        let now = self.clock.now_ms();
        let mut jobs = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            jobs.push(self.validate(tenant, request, now, &field(index)).await?);
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let enqueued = self.queue.enqueue(jobs).await?;
        for done in &enqueued {
            if let Enqueued::Created(job) = done {
                metrics::counter!(crate::ENQUEUED_TOTAL, "tenant" => job.tenant.to_string(),
                    "job_type" => job.job_type.clone())
                .increment(1);
                if job.run_at_ms > now {
                    self.wake.due_at(job.run_at_ms);
                }
            }
        }
        self.wake.ready_now();
        Ok(enqueued)
    }

    async fn validate(
        &self,
        tenant: &TenantId,
        request: JobRequest,
        now: i64,
        prefix: &str,
    ) -> Result<NewJob, JobError> {
        let field = |name: &str| format!("{prefix}{name}");
        let limits = &self.limits;
        if !is_name(&request.job_type) {
            return Err(invalid(
                field("job_type"),
                "1 to 128 of A-Z a-z 0-9 _ . : -",
            ));
        }
        let Some(handler) = self.registry.resolve(tenant, &request.job_type).await? else {
            return Err(JobError::UnknownJobType {
                field: field("job_type"),
                job_type: request.job_type,
            });
        };
        if request.payload.len() > limits.max_payload_bytes {
            return Err(invalid(
                field("payload"),
                format!(
                    "{} bytes; at most {} bytes",
                    request.payload.len(),
                    limits.max_payload_bytes
                ),
            ));
        }
        let queue = request.queue.unwrap_or_else(|| "default".to_owned());
        if !is_name(&queue) {
            return Err(invalid(field("queue"), "1 to 128 of A-Z a-z 0-9 _ . : -"));
        }
        if let Some(key) = &request.idempotency_key {
            if key.is_empty()
                || key.chars().count() > MAX_NAME_CHARS
                || key.chars().any(char::is_control)
            {
                return Err(invalid(
                    field("idempotency_key"),
                    "1 to 128 characters, no control characters",
                ));
            }
        }
        let priority = request.priority.unwrap_or(0);
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
            return Err(invalid(
                field("priority"),
                format!("{MIN_PRIORITY} (first) to {MAX_PRIORITY} (last)"),
            ));
        }
        let run_at_ms = match (request.run_at_ms, request.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    field("run_at"),
                    "give run_at or delay_ms, not both",
                ))
            }
            (Some(at), None) => at.max(now),
            (None, Some(delay)) => now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
            (None, None) => now,
        };
        if run_at_ms - now > i64::try_from(limits.max_delay_ms).unwrap_or(i64::MAX) {
            return Err(invalid(
                field(if request.delay_ms.is_some() {
                    "delay_ms"
                } else {
                    "run_at"
                }),
                format!("at most {} ms ahead", limits.max_delay_ms),
            ));
        }
        let max_attempts = request
            .max_attempts
            .or(handler.policy.max_attempts)
            .unwrap_or(limits.default_max_attempts);
        within(
            field("max_attempts"),
            u64::from(max_attempts),
            u64::from(limits.max_attempts),
            "",
        )?;
        let timeout_ms = request
            .timeout_ms
            .or(handler.policy.timeout_ms)
            .unwrap_or(limits.default_timeout_ms);
        within(
            field("timeout_ms"),
            timeout_ms,
            limits.max_timeout_ms,
            " ms",
        )?;
        metadata_within(field("metadata"), request.metadata.as_ref())?;
        Ok(NewJob {
            id: crate::model::job_id_at(now),
            tenant: tenant.clone(),
            job_type: request.job_type,
            queue,
            payload: request.payload,
            priority,
            run_at_ms,
            created_at_ms: now,
            max_attempts,
            timeout_ms,
            idempotency_key: request.idempotency_key,
            traceparent: request.traceparent,
            metadata: request.metadata,
        })
    }

    /// The tenant's job.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Job, JobError> {
        self.book
            .get(tenant, id, self.clock.now_ms())
            .await?
            .ok_or(JobError::NotFound(id))
    }

    /// A page of the tenant's jobs, newest first.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Job>, JobError> {
        Ok(self
            .book
            .list(tenant, filter, after, limit, self.clock.now_ms())
            .await?)
    }

    /// Cancels the job; cancelling a cancelled job is a no-op, a finished one is refused.
    pub async fn cancel(&self, tenant: &TenantId, id: Uuid) -> Result<Job, JobError> {
        let job = self
            .book
            .cancel(tenant, id, self.clock.now_ms())
            .await?
            .ok_or(JobError::NotFound(id))?;
        match job.state {
            crate::model::JobState::Succeeded | crate::model::JobState::Dead => {
                Err(JobError::WrongState {
                    id,
                    state: job.state.as_str(),
                    message: "only a job that has not finished can be cancelled",
                })
            }
            _ => Ok(job),
        }
    }

    /// Queues a dead or cancelled job again; one that is queued or running already is refused.
    pub async fn retry(&self, tenant: &TenantId, id: Uuid) -> Result<Job, JobError> {
        let job = self
            .book
            .retry(tenant, id, self.clock.now_ms())
            .await?
            .ok_or(JobError::NotFound(id))?;
        if job.state == crate::model::JobState::Succeeded {
            return Err(JobError::WrongState {
                id,
                state: job.state.as_str(),
                message: "only a dead or cancelled job can be retried",
            });
        }
        self.wake.ready_now();
        Ok(job)
    }

    /// Queues every dead job matching `filter` again; how many.
    pub async fn redrive(&self, tenant: &TenantId, filter: &JobFilter) -> Result<u64, JobError> {
        let count = self
            .book
            .redrive(tenant, filter, self.clock.now_ms())
            .await?;
        self.wake.ready_now();
        Ok(count)
    }

    /// Registers (or replaces) the tenant's HTTP handler of `job_type`; the stored handler and
    /// whether it is new.
    pub async fn put_handler(
        &self,
        tenant: &TenantId,
        job_type: &str,
        request: HandlerRequest,
    ) -> Result<(StoredHandler, bool), JobError> {
        if !is_name(job_type) {
            return Err(invalid("job_type", "1 to 128 of A-Z a-z 0-9 _ . : -"));
        }
        if job_type.starts_with(RESERVED_PREFIX) || self.registry.is_builtin(job_type) {
            return Err(invalid(
                "job_type",
                format!(
                    "{job_type:?} is built in; names starting with {RESERVED_PREFIX:?} are Pulse's"
                ),
            ));
        }
        self.registry
            .check_url(&request.url)
            .map_err(|message| invalid("url", message))?;
        let policy = request.policy;
        let limits = &self.limits;
        if let Some(timeout) = policy.timeout_ms {
            within("timeout_ms".into(), timeout, limits.max_timeout_ms, " ms")?;
        }
        if let Some(attempts) = policy.max_attempts {
            within(
                "max_attempts".into(),
                u64::from(attempts),
                u64::from(limits.max_attempts),
                "",
            )?;
        }
        if policy.concurrency == Some(0) {
            return Err(invalid("concurrency", "at least 1"));
        }
        if let Some(backoff) = &policy.backoff {
            backoff
                .validate()
                .map_err(|message| invalid("backoff", message))?;
        }
        if let Some(version) = &request.version {
            if !is_name(version) {
                return Err(invalid("version", "1 to 128 of A-Z a-z 0-9 _ . : -"));
            }
        }
        metadata_within("metadata".into(), request.metadata.as_ref())?;
        let now = self.clock.now_ms();
        let stored = StoredHandler {
            tenant: tenant.clone(),
            job_type: job_type.to_owned(),
            url: request.url,
            secret: new_secret(),
            policy: serde_json::to_string(&policy).expect("a policy always serialises"),
            version: request.version,
            metadata: request.metadata,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let stored = self.handlers.put_handler(stored).await?;
        self.registry.forget(tenant, job_type);
        Ok(stored)
    }

    /// The tenant's HTTP handler of `job_type`.
    pub async fn handler(
        &self,
        tenant: &TenantId,
        job_type: &str,
    ) -> Result<Option<StoredHandler>, JobError> {
        Ok(self.handlers.handler(tenant, job_type).await?)
    }
}

/// A signing secret: `whsec_` and 32 random bytes in hex (256 bits, from the operating system's
/// generator).
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator answers");
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("whsec_{hex}")
}
