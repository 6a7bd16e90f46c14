//! The event gateway's doors: the seed's `POST /v1/events` and `POST /v1/events/batch`, the
//! Segment-compatible `/v1/track|identify|page|screen|group|alias|batch`, and the tenant's dead
//! letters under `/api/v1/events/dead-letters`.
//!
//! Every door needs a key of scope `ingest` (or `full`) and charges the tenant's `events`
//! quota one unit per event. An answer of 202 (200 for Segment) comes only after the events
//! are durable on `events.ingest`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_gateway::dead_letters::DeadLetters;
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_gateway::ingest::{Accepted, IngestService};
use pulse_gateway::ingress::{
    check_batch, check_event_size, native_event, segment_event, IncomingEvent, IngressError,
    SegmentCall,
};
use pulse_gateway::ports::{DeadLetter, DeadLetterFilter};
use pulse_gateway::time::{parse_rfc3339, rfc3339};
use pulse_tenants::{Principal, QuotaClass, Scope};
use pulse_trace::TraceContext;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::json::{is_json, query_params};
use crate::auth::{presented_key, ApiGuard, Caller};
use crate::openapi::responses::*;
use crate::ApiError;

/// What the gateway's handlers need.
#[derive(Debug, Clone)]
pub struct EventsApi {
    /// The door.
    pub ingest: IngestService,
    /// Keys and quotas (the doors authenticate themselves: a Segment key may be in the body).
    pub guard: Arc<ApiGuard>,
    /// The tenant's dead letters.
    pub dead_letters: DeadLetters,
}

impl From<IngressError> for ApiError {
    fn from(err: IngressError) -> Self {
        let status = match err.code {
            "event_too_large" | "batch_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, err.code, err.message)
    }
}

fn log_unavailable(err: pulse_core::PortError) -> ApiError {
    tracing::warn!(error = %err, "the ingestion log did not take the events");
    ApiError::unavailable("the events could not be made durable; retry (nothing was accepted)")
}

/// What `POST /v1/events` answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventAccepted)]
pub(crate) struct AcceptedBody {
    /// The event's id: the client's, derived from its idempotency key, or a new UUIDv7; for a
    /// duplicate, the original event's.
    event_id: String,
    /// When the gateway took it (the original time, for a duplicate). RFC 3339, UTC.
    #[schema(format = DateTime)]
    received_at: String,
    /// Whether this repeats an event taken within the dedup window (nothing new was written).
    duplicate: bool,
}

impl From<Accepted> for AcceptedBody {
    fn from(accepted: Accepted) -> Self {
        Self {
            event_id: accepted.event_id,
            received_at: rfc3339(accepted.received_at_ms),
            duplicate: accepted.duplicate,
        }
    }
}

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!(
            "the body is not JSON: {err}"
        ))),
    }
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ))
    }
}

async fn admitted(
    state: &EventsApi,
    presented: Option<&str>,
    events: usize,
) -> Result<Arc<Principal>, Response> {
    let principal = state.guard.admit(presented, Scope::Ingest).await?;
    let cost = u32::try_from(events).unwrap_or(u32::MAX).max(1);
    if let Err(refused) = state
        .guard
        .charge(&principal, QuotaClass::Events, cost)
        .await
    {
        metrics::counter!(BACKPRESSURE_TOTAL, "tenant" => principal.tenant.to_string())
            .increment(1);
        return Err(refused);
    }
    Ok(principal)
}

/// Requests refused because the tenant was over its `events` quota.
pub const BACKPRESSURE_TOTAL: &str = "pulse_tenant_backpressure_total";
/// Ingest requests, by route and status class.
pub const INGEST_REQUESTS_TOTAL: &str = "pulse_ingest_requests_total";
/// Time from a request's arrival to its durable answer, by route.
pub const INGEST_LATENCY_SECONDS: &str = "pulse_ingest_latency_seconds";

/// Counts and times every ingest request, whatever it answered.
pub(crate) async fn measure(route: &'static str, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(INGEST_REQUESTS_TOTAL, "route" => route, "status" => status).increment(1);
    metrics::histogram!(INGEST_LATENCY_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Send one event.
///
/// The seed's Quick Start body: `event_type`, optional `event_id`, `occurred_at` (or
/// `timestamp`) and `idempotency_key`, and every other field goes into the payload (or send one
/// `payload` object instead). 202 once the event is durable; a retry with the same `event_id`
/// or `idempotency_key` within the dedup window answers the original id with `duplicate: true`.
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "sendEvent",
    tag = "events",
    request_body(content = Object, content_type = "application/json",
        example = json!({"event_type": "user_sign_up", "user_id": "u_123", "ip": "8.8.8.8",
            "timestamp": "2025-03-01T12:00:00Z"})),
    responses(
        (status = 202, description = "Durable on the ingestion log.", body = AcceptedBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn send_event(
    State(state): State<Arc<EventsApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = match admitted(&state, presented_key(&headers).as_deref(), 1).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    one_event(&state, &principal, &headers, &body)
        .await
        .map_or_else(IntoResponse::into_response, |accepted| {
            (StatusCode::ACCEPTED, Json(AcceptedBody::from(accepted))).into_response()
        })
}

async fn one_event(
    state: &EventsApi,
    principal: &Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, ApiError> {
    require_json(headers)?;
    let limits = state.ingest.limits();
    check_event_size(body.len(), limits)?;
    let received = state.ingest.now_ms();
    let event = native_event(json_object(body)?, received, limits)?;
    let trace = TraceContext::current();
    let mut answers = state
        .ingest
        .ingest(
            &principal.tenant,
            vec![Ok(event)],
            received,
            Source::Http,
            trace.as_ref(),
        )
        .await
        .map_err(log_unavailable)?;
    Ok(answers.pop().expect("one answer per event")?)
}

#[derive(Debug, Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// One event's answer in a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchResult {
    /// Taken (or a duplicate).
    Accepted(AcceptedBody),
    /// Refused, with why.
    Refused {
        /// The house error's fields.
        error: ItemError,
    },
}

/// Why one event of a batch was refused.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ItemError {
    /// `invalid_event`, `event_too_large`, `invalid_event_type`, `invalid_event_id`,
    /// `timestamp_out_of_range`, `field_reserved`.
    code: &'static str,
    /// For people.
    message: String,
}

/// What `POST /v1/events/batch` answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventBatchAccepted)]
pub(crate) struct BatchAnswer {
    /// Events newly taken.
    accepted: usize,
    /// Events that repeated earlier ones.
    duplicates: usize,
    /// Events refused (see their results).
    rejected: usize,
    /// One result per event, in order.
    results: Vec<BatchResult>,
}

/// Send many events.
///
/// `{"events": [...]}`, each as in `POST /v1/events`; one result per event, in order. The batch
/// is answered 202 once every taken event is durable; refused events are named in their
/// results and cost nothing.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    operation_id = "sendEvents",
    tag = "events",
    request_body(content = Object, content_type = "application/json",
        example = json!({"events": [{"event_type": "page_view", "user_id": "u_1"}]})),
    responses(
        (status = 202, description = "A result per event.", body = BatchAnswer),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn send_events(
    State(state): State<Arc<EventsApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match batch(&state, &headers, &body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn batch(state: &EventsApi, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let presented = presented_key(headers);
    // The key first: an anonymous caller learns nothing about the body's shape.
    state
        .guard
        .admit(presented.as_deref(), Scope::Ingest)
        .await?;
    require_json(headers).map_err(IntoResponse::into_response)?;
    let limits = state.ingest.limits();
    let parsed: BatchBody<'_> = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!("the body must be {{\"events\": [...]}}: {err}"))
            .into_response()
    })?;
    check_batch(body.len(), parsed.events.len(), limits)
        .map_err(|err| ApiError::from(err).into_response())?;
    let principal = admitted(state, presented.as_deref(), parsed.events.len()).await?;
    let received = state.ingest.now_ms();
    let events: Vec<Result<IncomingEvent, IngressError>> = parsed
        .events
        .iter()
        .map(|raw| {
            check_event_size(raw.get().len(), limits)?;
            let map = match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(IngressError {
                        code: "invalid_event",
                        message: "each event must be a JSON object".into(),
                    })
                }
            };
            native_event(map, received, limits)
        })
        .collect();
    let trace = TraceContext::current();
    let answers = state
        .ingest
        .ingest(
            &principal.tenant,
            events,
            received,
            Source::Http,
            trace.as_ref(),
        )
        .await
        .map_err(|err| log_unavailable(err).into_response())?;
    let mut answer = BatchAnswer {
        accepted: 0,
        duplicates: 0,
        rejected: 0,
        results: Vec::with_capacity(answers.len()),
    };
    for result in answers {
        answer.results.push(match result {
            Ok(accepted) => {
                if accepted.duplicate {
                    answer.duplicates += 1;
                } else {
                    answer.accepted += 1;
                }
                BatchResult::Accepted(accepted.into())
            }
            Err(refused) => {
                answer.rejected += 1;
                BatchResult::Refused {
                    error: ItemError {
                        code: refused.code,
                        message: refused.message,
                    },
                }
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The Segment calls' answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = SegmentSuccess)]
pub(crate) struct SegmentSuccess {
    /// Always `true`.
    success: bool,
}

fn segment_ok() -> Response {
    Json(SegmentSuccess { success: true }).into_response()
}

/// The key of a Segment call: a header (HTTP Basic, as the libraries send it), else the body's
/// `writeKey` (as the browser library's `text/plain` beacon does).
fn segment_key<'a>(
    headers: &'a HeaderMap,
    body: &'a Map<String, Value>,
) -> Option<std::borrow::Cow<'a, str>> {
    presented_key(headers).or_else(|| {
        body.get("writeKey")
            .and_then(Value::as_str)
            .map(std::borrow::Cow::Borrowed)
    })
}

/// A Segment call: `text/plain` and `application/json` bodies alike (the browser sends
/// `text/plain` to skip a CORS preflight).
pub(crate) async fn segment_call(
    call: Option<SegmentCall>,
    state: Arc<EventsApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match segment(call, &state, &headers, &body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn segment(
    call: Option<SegmentCall>,
    state: &EventsApi,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let limits = state.ingest.limits();
    // The key before the body's shape: a caller without a valid key learns nothing about it.
    let parsed = json_object(body);
    let key = match &parsed {
        Ok(message) => segment_key(headers, message).map(|key| key.into_owned()),
        Err(_) => presented_key(headers).map(|key| key.into_owned()),
    };
    if parsed.is_err() {
        state.guard.admit(key.as_deref(), Scope::Ingest).await?;
    }
    let message = parsed.map_err(IntoResponse::into_response)?;
    let received = state.ingest.now_ms();
    let events: Vec<Result<IncomingEvent, IngressError>> = match call {
        Some(call) => {
            check_event_size(body.len(), limits)
                .map_err(|err| ApiError::from(err).into_response())?;
            let principal = admitted(state, key.as_deref(), 1).await?;
            let event = segment_event(Some(call), message, received, limits)
                .map_err(|err| ApiError::from(err).into_response())?;
            return ingest_segment(state, &principal, vec![Ok(event)], received).await;
        }
        None => {
            let Some(Value::Array(items)) = message.get("batch") else {
                return Err(
                    ApiError::bad_request("a Segment batch is {\"batch\": [...]}").into_response(),
                );
            };
            check_batch(body.len(), items.len(), limits)
                .map_err(|err| ApiError::from(err).into_response())?;
            items
                .iter()
                .map(|item| {
                    let Value::Object(map) = item else {
                        return Err(IngressError {
                            code: "invalid_event",
                            message: "each batch item must be a JSON object".into(),
                        });
                    };
                    check_event_size(item.to_string().len(), limits)?;
                    segment_event(None, map.clone(), received, limits)
                })
                .collect()
        }
    };
    let principal = admitted(state, key.as_deref(), events.len()).await?;
    ingest_segment(state, &principal, events, received).await
}

async fn ingest_segment(
    state: &EventsApi,
    principal: &Principal,
    events: Vec<Result<IncomingEvent, IngressError>>,
    received: i64,
) -> Result<Response, Response> {
    let trace = TraceContext::current();
    let answers = state
        .ingest
        .ingest(
            &principal.tenant,
            events,
            received,
            Source::Http,
            trace.as_ref(),
        )
        .await
        .map_err(|err| log_unavailable(err).into_response())?;
    // As Segment does: a batch answers success, its invalid items are dropped (counted in
    // `pulse_ingest_events_total{outcome="rejected"}` and logged), never retried forever.
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        tracing::warn!(tenant = %principal.tenant, code = refused.code, reason = %refused.message, "Segment batch item refused");
    }
    Ok(segment_ok())
}

/// CORS for the Segment routes, which browsers call from any site (the write key, not the
/// origin, decides). Hand-written: four headers do not justify tower-http in the tree.
pub(crate) async fn cors(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or(HeaderValue::from_static("*")),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Content-Encoding, Authorization, X-API-Key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

/// Filters of the dead-letter routes.
#[derive(Debug, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadLetterQuery {
    /// Failed at or after (RFC 3339).
    #[serde(default)]
    from: Option<String>,
    /// Failed before (RFC 3339).
    #[serde(default)]
    to: Option<String>,
    /// Of this event type.
    #[serde(default)]
    event_type: Option<String>,
    /// Refused by this sink id.
    #[serde(default)]
    sink: Option<String>,
    /// With this reason code (`transform_error`, `sink_rejected`, `retries_exhausted`,
    /// `sink_removed`, `undecodable`).
    #[serde(default)]
    reason: Option<String>,
    /// The `next` cursor of the previous page.
    #[serde(default)]
    after: Option<i64>,
    /// Page size (1 to 500, default 100); for a redrive, most letters sent (default 1000).
    #[serde(default)]
    limit: Option<usize>,
}

impl DeadLetterQuery {
    fn filter(&self) -> Result<DeadLetterFilter, ApiError> {
        let time = |field: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            value
                .as_deref()
                .map(|text| {
                    parse_rfc3339(text).ok_or_else(|| {
                        ApiError::bad_request(format!("{field} must be an RFC 3339 time"))
                    })
                })
                .transpose()
        };
        Ok(DeadLetterFilter {
            from_ms: time("from", &self.from)?,
            to_ms: time("to", &self.to)?,
            event_type: self.event_type.clone(),
            sink: self.sink.clone(),
            reason: self.reason.clone(),
        })
    }
}

/// A dead letter.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeadLetter)]
pub(crate) struct DeadLetterBody {
    id: i64,
    event_id: String,
    event_type: String,
    /// The sink that refused it; empty when a transform did.
    sink: String,
    plugin: String,
    plugin_version: String,
    /// `transform_error`, `sink_rejected`, `retries_exhausted`, `sink_removed`, `undecodable`.
    reason: String,
    attempts: u32,
    first_error: String,
    last_error: String,
    #[schema(format = DateTime)]
    first_failed_at: String,
    #[schema(format = DateTime)]
    last_failed_at: String,
    /// The original envelope.
    #[schema(value_type = crate::openapi::domain::CanonicalEvent)]
    event: Value,
}

impl From<DeadLetter> for DeadLetterBody {
    fn from(dead: DeadLetter) -> Self {
        let letter = dead.letter;
        let event = CanonicalEvent::decode(&letter.envelope)
            .map(|event| event.to_json())
            .unwrap_or(Value::Null);
        Self {
            id: dead.id,
            event_id: letter.event_id,
            event_type: letter.event_type,
            sink: letter.sink,
            plugin: letter.plugin,
            plugin_version: letter.plugin_version,
            reason: letter.reason,
            attempts: letter.attempts,
            first_error: letter.first_error,
            last_error: letter.last_error,
            first_failed_at: rfc3339(letter.first_failed_at_ms),
            last_failed_at: rfc3339(letter.last_failed_at_ms),
            event,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeadLetterPage)]
pub(crate) struct DeadLetterPage {
    dead_letters: Vec<DeadLetterBody>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<i64>,
}

/// List the tenant's dead letters (not yet redriven), oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/events/dead-letters",
    operation_id = "listEventDeadLetters",
    tag = "events",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn dead_letters(
    State(state): State<Arc<EventsApi>>,
    Caller(caller): Caller,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let query = query_params(
        query,
        "filters: from, to, event_type, sink, reason, after, limit",
    )?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 500"));
    }
    let page = state
        .dead_letters
        .list(&caller.tenant, &query.filter()?, query.after, limit)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot list dead letters");
            ApiError::unavailable("the dead letters cannot be read right now; retry")
        })?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|dead| dead.id))
        .flatten();
    Ok(Json(DeadLetterPage {
        dead_letters: page.into_iter().map(DeadLetterBody::from).collect(),
        next,
    }))
}

/// What a redrive did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Redriven)]
pub(crate) struct Redriven {
    /// Dead letters sent through the pipeline again.
    redriven: usize,
}

/// Redrive dead letters.
///
/// Sends the tenant's dead letters matching the filters (the same as the list's, as JSON) through
/// the same pipeline with their original `event_id`: to the sink that refused them, or the whole
/// pipeline when a transform did. Sinks that already took an event do not take it again.
#[utoipa::path(
    post,
    path = "/api/v1/events/dead-letters/redrive",
    operation_id = "redriveEventDeadLetters",
    tag = "events",
    request_body(content = DeadLetterQuery, content_type = "application/json"),
    responses(
        (status = 202, description = "On the ingestion log again.", body = Redriven),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn redrive(
    State(state): State<Arc<EventsApi>>,
    Caller(caller): Caller,
    super::ApiJson(query): super::ApiJson<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(1_000);
    if !(1..=pulse_gateway::dead_letters::MAX_REDRIVE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            pulse_gateway::dead_letters::MAX_REDRIVE
        )));
    }
    let redriven = state
        .dead_letters
        .redrive(&caller.tenant, &query.filter()?, limit)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "redrive failed");
            ApiError::unavailable(
                "the redrive did not finish; retry (letters already sent are not sent twice)",
            )
        })?;
    Ok((StatusCode::ACCEPTED, Json(Redriven { redriven })).into_response())
}
