//! Background jobs under `/api/v1`: enqueue one or many, read, list, cancel, retry, the dead
//! jobs and their redrive, and the tenant's HTTP handlers. Each enqueued job costs one unit of
//! the tenant's `jobs` quota (on top of the request's `api` unit).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_jobs::model::{Enqueued, Job, JobFilter, JobState, StoredHandler};
use pulse_jobs::retry::{Backoff, HandlerPolicy};
use pulse_jobs::service::{is_name, HandlerRequest, JobError, JobRequest, JobService};
use pulse_tenants::QuotaClass;
use pulse_trace::TraceContext;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::json::query_params;
use super::{rfc3339, ApiJson};
use crate::auth::{ApiGuard, Caller};
use crate::openapi::responses::*;
use crate::ApiError;

/// Most jobs one page lists.
pub(crate) const MAX_PAGE: u32 = 500;

/// What the jobs handlers need.
#[derive(Debug, Clone)]
pub struct JobsApi {
    /// The control plane.
    pub jobs: JobService,
    /// Quotas (the `jobs` class is charged per job).
    pub guard: Arc<ApiGuard>,
}

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        match &err {
            JobError::Invalid { .. } => ApiError::bad_request(err.to_string()),
            JobError::UnknownJobType { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_job_type",
                err.to_string(),
            ),
            JobError::NotFound(_) => ApiError::not_found(err.to_string()),
            JobError::WrongState { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_state", err.to_string())
            }
            JobError::Store(port) => {
                tracing::warn!(error = %port, "the job store failed");
                ApiError::unavailable(
                    "the job store did not answer; retry (with the same idempotency_key)",
                )
            }
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"job_type": "send_receipt", "payload": {"order_id": "o-1"},
    "idempotency_key": "receipt-o-1", "delay_ms": 5000, "max_attempts": 5}))]
pub(crate) struct JobBody {
    /// Which handler runs it: a registered HTTP handler's type, or a built-in (`pulse.noop`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    job_type: String,
    /// Any JSON; handed to the handler as is, never inspected. At most 256 KiB by default.
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Option<Box<RawValue>>,
    /// The tenant's queue (`default`).
    #[schema(min_length = 1, max_length = 128)]
    queue: Option<String>,
    /// The same key enqueues once per tenant: a repeat answers 200 with the original job.
    #[schema(min_length = 1, max_length = 128)]
    idempotency_key: Option<String>,
    /// −100 (first) to 100 (last); 0 by default.
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i32>,
    /// Not before this time (RFC 3339, or Unix milliseconds).
    #[schema(value_type = Option<String>, format = DateTime)]
    run_at: Option<Value>,
    /// Not before this many milliseconds from now (instead of `run_at`).
    delay_ms: Option<u64>,
    /// Attempts before the job is dead (the handler's, else 25).
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
    /// One attempt's timeout (the handler's, else 60 000).
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// The caller's object, kept with the job; `trace_id` (a W3C `traceparent`, or a 32-hex trace
    /// id) joins every attempt to the caller's trace.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
}

fn time_of(field: &str, value: &Value) -> Result<i64, ApiError> {
    match value {
        Value::Number(number) => number.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("{field}: Unix milliseconds, an integer"))
        }),
        Value::String(text) => pulse_gateway::time::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: not an RFC 3339 time (e.g. 2026-12-01T20:00:00Z)"
            ))
        }),
        _ => Err(ApiError::bad_request(format!(
            "{field}: an RFC 3339 time or Unix milliseconds"
        ))),
    }
}

/// The trace a job joins: `metadata.trace_id` (a `traceparent`, or a bare trace id), else the
/// request's own.
fn trace_of(metadata: Option<&Value>) -> Option<String> {
    let given = metadata
        .and_then(|metadata| metadata.get("trace_id"))
        .and_then(Value::as_str);
    if let Some(given) = given {
        if let Some(trace) =
            TraceContext::from_headers(|name| (name == pulse_trace::TRACEPARENT).then_some(given))
        {
            return Some(trace.traceparent);
        }
        let bare = given.len() == 32
            && given
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && given.bytes().any(|b| b != b'0');
        if bare {
            return Some(format!("00-{given}-{:016x}-01", fastrand::u64(1..)));
        }
    }
    TraceContext::current().map(|trace| trace.traceparent)
}

impl JobBody {
    fn into_request(
        self,
        prefix: &str,
        fallback_key: Option<String>,
    ) -> Result<JobRequest, ApiError> {
        let metadata: Option<Value> = match &self.metadata {
            Some(raw) => {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|err| ApiError::bad_request(format!("{prefix}metadata: {err}")))?;
                if !value.is_object() {
                    return Err(ApiError::bad_request(format!(
                        "{prefix}metadata: an object"
                    )));
                }
                Some(value)
            }
            None => None,
        };
        Ok(JobRequest {
            job_type: self.job_type,
            payload: self
                .payload
                .map_or_else(|| b"null".to_vec(), |raw| raw.get().as_bytes().to_vec()),
            queue: self.queue,
            idempotency_key: self.idempotency_key.or(fallback_key),
            priority: self.priority,
            run_at_ms: self
                .run_at
                .as_ref()
                .map(|value| time_of(&format!("{prefix}run_at"), value))
                .transpose()?,
            delay_ms: self.delay_ms,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            traceparent: trace_of(metadata.as_ref()),
            metadata: self.metadata.map(|raw| raw.get().to_owned()),
        })
    }
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobView {
    job_id: Uuid,
    job_type: String,
    queue: String,
    /// `scheduled`, `queued`, `running`, `retrying`, `succeeded`, `dead` or `cancelled`.
    state: &'static str,
    priority: i32,
    /// Attempts started so far.
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    #[schema(value_type = Object)]
    payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// When it may run next (or last ran), RFC 3339.
    #[schema(format = DateTime)]
    run_at: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// When its last attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// The handler's answer (JSON when it answered JSON, else text).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Every failed attempt's error, oldest first.
    errors: Vec<AttemptErrorView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The trace every attempt joins.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

/// One failed attempt.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AttemptError)]
pub(crate) struct AttemptErrorView {
    attempt: u32,
    #[schema(format = DateTime)]
    at: String,
    error: String,
}

fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            job_id: job.id,
            job_type: job.job_type,
            queue: job.queue,
            state: job.state.as_str(),
            priority: job.priority,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            timeout_ms: job.timeout_ms,
            payload: json_or_text(&job.payload),
            idempotency_key: job.idempotency_key,
            run_at: rfc3339(job.run_at_ms),
            created_at: rfc3339(job.created_at_ms),
            started_at: job.started_at_ms.map(rfc3339),
            finished_at: job.finished_at_ms.map(rfc3339),
            result: job.result.as_deref().map(json_or_text),
            errors: job
                .errors
                .into_iter()
                .map(|error| AttemptErrorView {
                    attempt: error.attempt,
                    at: rfc3339(error.at_ms),
                    error: error.error,
                })
                .collect(),
            metadata: job
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            trace_id: job
                .traceparent
                .as_deref()
                .and_then(|traceparent| traceparent.get(3..35))
                .map(str::to_owned),
        }
    }
}

/// A new job's id and state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobEnqueued)]
pub(crate) struct EnqueuedView {
    job_id: Uuid,
    /// `scheduled` or `queued`.
    state: &'static str,
}

async fn charge(
    state: &JobsApi,
    caller: &pulse_tenants::Principal,
    jobs: usize,
) -> Result<(), Response> {
    let cost = u32::try_from(jobs).unwrap_or(u32::MAX).max(1);
    state.guard.charge(caller, QuotaClass::Jobs, cost).await
}

fn idempotency_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
}

/// Enqueue a job.
///
/// `201` with the new job's id and state; with an `idempotency_key` (or `Idempotency-Key`
/// header) the tenant already used, `200` with that job as it is now (its state and result).
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    operation_id = "enqueueJob",
    tag = "jobs",
    request_body = JobBody,
    responses(
        (status = 201, description = "Enqueued.", body = EnqueuedView),
        (status = 200, description = "The job enqueued before under this idempotency key.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn enqueue(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<JobBody>,
) -> Result<Response, ApiError> {
    let request = body.into_request("", idempotency_header(&headers))?;
    if let Err(refused) = charge(&state, &caller, 1).await {
        return Ok(refused);
    }
    let mut done = state
        .jobs
        .enqueue(&caller.tenant, vec![request], |_| String::new())
        .await?;
    Ok(match done.remove(0) {
        Enqueued::Created(job) => (
            StatusCode::CREATED,
            Json(EnqueuedView {
                job_id: job.id,
                state: job.state.as_str(),
            }),
        )
            .into_response(),
        Enqueued::Existing(job) => (StatusCode::OK, Json(JobView::from(job))).into_response(),
    })
}

/// Many jobs to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsBody {
    /// At most 500 (by default); enqueued in one write, all or none.
    jobs: Vec<JobBody>,
}

/// One job of a batch.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BatchJobResult)]
pub(crate) struct BatchResult {
    job_id: Uuid,
    state: &'static str,
    /// Whether the tenant had this idempotency key already (nothing new was enqueued).
    duplicate: bool,
}

/// What a batch enqueued, in order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BatchEnqueued)]
pub(crate) struct BatchView {
    results: Vec<BatchResult>,
}

/// Enqueue many jobs.
///
/// One write: every job is enqueued, or (on a 4xx naming `jobs[i]`) none. Costs one unit of the
/// `jobs` quota per job.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/batch",
    operation_id = "enqueueJobs",
    tag = "jobs",
    request_body = JobsBody,
    responses(
        (status = 201, description = "Enqueued (some may be duplicates).", body = BatchView),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn enqueue_batch(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<JobsBody>,
) -> Result<Response, ApiError> {
    let max = state.jobs.limits().max_batch;
    if body.jobs.is_empty() || body.jobs.len() > max {
        return Err(ApiError::bad_request(format!("jobs: 1 to {max} jobs")));
    }
    let requests = body
        .jobs
        .into_iter()
        .enumerate()
        .map(|(index, job)| job.into_request(&format!("jobs[{index}]."), None))
        .collect::<Result<Vec<_>, _>>()?;
    if let Err(refused) = charge(&state, &caller, requests.len()).await {
        return Ok(refused);
    }
    let done = state
        .jobs
        .enqueue(&caller.tenant, requests, |index| format!("jobs[{index}]."))
        .await?;
    let results = done
        .iter()
        .map(|answer| BatchResult {
            job_id: answer.job().id,
            state: answer.job().state.as_str(),
            duplicate: matches!(answer, Enqueued::Existing(_)),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(BatchView { results })).into_response())
}

fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no job {raw:?}")))
}

/// Read a job: its state, attempts and each attempt's error, timings and result.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}",
    operation_id = "getJob",
    tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id (a UUID).")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn get(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    crate::ApiPath(id): crate::ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.jobs.get(&caller.tenant, job_id(&id)?).await?;
    Ok(Json(JobView::from(job)))
}

/// Which jobs to list or redrive.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobQuery {
    /// `scheduled`, `queued`, `running`, `retrying`, `succeeded`, `dead` or `cancelled`.
    state: Option<String>,
    /// Of this type.
    job_type: Option<String>,
    /// In this queue.
    queue: Option<String>,
    /// The `next` of the previous page.
    after: Option<Uuid>,
    /// At most this many (1 to 500, default 100).
    limit: Option<u32>,
}

impl JobQuery {
    fn filter(&self) -> Result<JobFilter, ApiError> {
        let state = self
            .state
            .as_deref()
            .map(|name| {
                JobState::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state {name:?}: one of scheduled, queued, running, retrying, succeeded, dead, cancelled"
                    ))
                })
            })
            .transpose()?;
        for (field, value) in [("job_type", &self.job_type), ("queue", &self.queue)] {
            if value.as_deref().is_some_and(|value| !is_name(value)) {
                return Err(ApiError::bad_request(format!(
                    "{field}: 1 to 128 of A-Z a-z 0-9 _ . : -"
                )));
            }
        }
        Ok(JobFilter {
            state,
            job_type: self.job_type.clone(),
            queue: self.queue.clone(),
        })
    }

    fn limit(&self) -> Result<u32, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if (1..=MAX_PAGE).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_PAGE}"
            )))
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobPage)]
pub(crate) struct JobPage {
    jobs: Vec<JobView>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Uuid>,
}

async fn page(
    state: &JobsApi,
    caller: &pulse_tenants::Principal,
    query: &JobQuery,
    filter: JobFilter,
) -> Result<Json<JobPage>, ApiError> {
    let limit = query.limit()?;
    let jobs = state
        .jobs
        .list(&caller.tenant, &filter, query.after, limit)
        .await?;
    let next = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|job| job.id))
        .flatten();
    Ok(Json(JobPage {
        jobs: jobs.into_iter().map(JobView::from).collect(),
        next,
    }))
}

/// List the tenant's jobs, newest first (errors are shown by `GET /api/v1/jobs/{job_id}`).
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    params(JobQuery),
    responses(
        (status = 200, description = "A page of jobs.", body = JobPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let query = query_params(query, "filters: state, job_type, queue, after, limit")?;
    let filter = query.filter()?;
    page(&state, &caller, &query, filter).await
}

/// List the tenant's dead jobs (out of attempts, or failed for good), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/dead-letters",
    operation_id = "listDeadJobs",
    tag = "jobs",
    params(JobQuery),
    responses(
        (status = 200, description = "A page of dead jobs.", body = JobPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn dead_letters(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let query = query_params(query, "filters: job_type, queue, after, limit")?;
    if query.state.as_deref().is_some_and(|state| state != "dead") {
        return Err(ApiError::bad_request(
            "dead letters are the dead jobs: no other state",
        ));
    }
    let filter = JobFilter {
        state: Some(JobState::Dead),
        ..query.filter()?
    };
    page(&state, &caller, &query, filter).await
}

/// Cancel a job that has not finished (a running attempt's outcome is then refused).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/cancel",
    operation_id = "cancelJob",
    tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job, cancelled.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn cancel(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    crate::ApiPath(id): crate::ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.jobs.cancel(&caller.tenant, job_id(&id)?).await?;
    Ok(Json(JobView::from(job)))
}

/// Run a dead or cancelled job again (its attempts kept; one more allowed if none is left).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/retry",
    operation_id = "retryJob",
    tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job, queued again.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn retry(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    crate::ApiPath(id): crate::ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.jobs.retry(&caller.tenant, job_id(&id)?).await?;
    if !matches!(job.state, JobState::Queued | JobState::Scheduled) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!(
                "job {} is {}: only a dead or cancelled job can be retried",
                job.id,
                job.state.as_str()
            ),
        ));
    }
    Ok(Json(JobView::from(job)))
}

/// Which dead jobs to redrive.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveBody {
    /// Only of this type.
    job_type: Option<String>,
    /// Only in this queue.
    queue: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobsRedriven)]
pub(crate) struct RedrivenView {
    /// Dead jobs queued again.
    redriven: u64,
}

/// Queue the tenant's dead jobs again, all or by type and queue.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/redrive",
    operation_id = "redriveJobs",
    tag = "jobs",
    request_body = RedriveBody,
    responses(
        (status = 200, description = "How many were queued again.", body = RedrivenView),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn redrive(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<RedriveBody>,
) -> Result<Json<RedrivenView>, ApiError> {
    let query = JobQuery {
        job_type: body.job_type,
        queue: body.queue,
        ..JobQuery::default()
    };
    let redriven = state.jobs.redrive(&caller.tenant, &query.filter()?).await?;
    Ok(Json(RedrivenView { redriven }))
}

/// A handler registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "http://jobs.example.com/run", "timeout_ms": 30000,
    "concurrency": 8, "max_attempts": 10, "backoff": {"base_ms": 1000, "max_ms": 600000}}))]
pub(crate) struct HandlerBody {
    /// Where each job is POSTed (http://; loopback, private and link-local targets are refused
    /// unless the operator allows them).
    url: String,
    /// One attempt's timeout for jobs that set none.
    timeout_ms: Option<u64>,
    /// Most attempts of this type running at once in one worker.
    concurrency: Option<u32>,
    /// Attempts for jobs that set none.
    max_attempts: Option<u32>,
    /// The retry backoff: `shape` (`polynomial`: base × n^exponent, the default, or
    /// `exponential`: base × exponent^(n−1)), `base_ms`, `exponent`, `max_ms`, `jitter`.
    #[schema(value_type = Option<Object>)]
    backoff: Option<Backoff>,
    /// Your label for the handler's version.
    version: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
}

/// A registered handler.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobHandler)]
pub(crate) struct HandlerView {
    job_type: String,
    url: String,
    /// The key each call's `Pulse-Signature` is made with (see the webhooks guide): generated at
    /// the first registration, kept when the handler is replaced.
    signing_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    backoff: Option<Backoff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<StoredHandler> for HandlerView {
    fn from(stored: StoredHandler) -> Self {
        let policy: HandlerPolicy = serde_json::from_str(&stored.policy).unwrap_or_default();
        Self {
            job_type: stored.job_type,
            url: stored.url,
            signing_secret: stored.secret,
            timeout_ms: policy.timeout_ms,
            concurrency: policy.concurrency,
            max_attempts: policy.max_attempts,
            backoff: policy.backoff,
            version: stored.version,
            metadata: stored
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            created_at: rfc3339(stored.created_at_ms),
            updated_at: rfc3339(stored.updated_at_ms),
        }
    }
}

/// A job type in a path: the job type charset (dots allowed, unlike other path identifiers),
/// never `.` or `..`.
fn job_type_in_path(raw: &str) -> Result<&str, ApiError> {
    if is_name(raw) && raw.bytes().any(|b| b != b'.') {
        Ok(raw)
    } else {
        Err(ApiError::bad_request(
            "job_type must be 1 to 128 characters of [A-Za-z0-9_.:-], not only dots",
        ))
    }
}

/// Register (or replace) the tenant's HTTP handler of a job type.
///
/// Every process knows it within seconds. Each attempt is POSTed to `url` with the job as JSON,
/// `Pulse-Signature`/`Pulse-Timestamp` (the webhooks' scheme, with this handler's
/// `signing_secret`), `Idempotency-Key` and `Pulse-Job-Id` (the job id), `Pulse-Job-Attempt`, and
/// `traceparent`. 2xx: done (the body is kept as the result); 408, 429, 5xx or a timeout: retried
/// with backoff; any other answer: the job is dead.
#[utoipa::path(
    put,
    path = "/api/v1/handlers/{job_type}",
    operation_id = "putJobHandler",
    tag = "jobs",
    params(("job_type" = String, Path, description = "The job type it runs.")),
    request_body = HandlerBody,
    responses(
        (status = 201, description = "Registered.", body = HandlerView),
        (status = 200, description = "Replaced (the signing secret is kept).", body = HandlerView),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn put_handler(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    Path(job_type): Path<String>,
    ApiJson(body): ApiJson<HandlerBody>,
) -> Result<Response, ApiError> {
    let job_type = job_type_in_path(&job_type)?;
    if let Some(raw) = &body.metadata {
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|err| ApiError::bad_request(format!("metadata: {err}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("metadata: an object"));
        }
    }
    let request = HandlerRequest {
        url: body.url,
        policy: HandlerPolicy {
            timeout_ms: body.timeout_ms,
            concurrency: body.concurrency,
            max_attempts: body.max_attempts,
            backoff: body.backoff,
        },
        version: body.version,
        metadata: body.metadata.map(|raw| raw.get().to_owned()),
    };
    let (stored, created) = state
        .jobs
        .put_handler(&caller.tenant, job_type, request)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(HandlerView::from(stored))).into_response())
}

/// Read the tenant's HTTP handler of a job type.
#[utoipa::path(
    get,
    path = "/api/v1/handlers/{job_type}",
    operation_id = "getJobHandler",
    tag = "jobs",
    params(("job_type" = String, Path, description = "The job type it runs.")),
    responses(
        (status = 200, description = "The handler.", body = HandlerView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn get_handler(
    State(state): State<Arc<JobsApi>>,
    Caller(caller): Caller,
    Path(job_type): Path<String>,
) -> Result<Json<HandlerView>, ApiError> {
    let job_type = job_type_in_path(&job_type)?;
    match state.jobs.handler(&caller.tenant, job_type).await? {
        Some(stored) => Ok(Json(HandlerView::from(stored))),
        None => Err(ApiError::not_found(format!(
            "no handler of job type {job_type:?}"
        ))),
    }
}
