//! `POST /api/v1/drivers/{driver_id}/location`: a driver's position, appended to
//! `supply.updates` keyed by the driver.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pulse_core::log::OutgoingRecord;
use pulse_core::tenant::TENANT_HEADER;
use pulse_proto::v1::DriverLocationUpdated;
use pulse_proto::Message;
use pulse_trace::TraceContext;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{rfc3339, to_point, ApiJson, SurgeApi};
use crate::auth::Caller;
use crate::openapi::responses::*;
use crate::{ApiError, ApiPath};

/// A driver's position.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DriverLocation)]
pub(crate) struct Location {
    /// Latitude, degrees.
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude, degrees.
    #[schema(minimum = -180.0, maximum = 180.0)]
    lng: f64,
    /// Whether the driver takes rides now (counts as supply).
    available: bool,
}

/// A position, accepted (durably in the log; the engine counts it shortly).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LocationAccepted)]
pub(crate) struct Accepted {
    driver_id: String,
    /// The position's H3 cell (resolution 8).
    h3: String,
    available: bool,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    accepted_at: String,
}

/// Report a driver's position.
#[utoipa::path(
    post,
    path = "/api/v1/drivers/{driver_id}/location",
    operation_id = "reportDriverLocation",
    tag = "surge",
    params(
        ("driver_id" = String, Path, min_length = 1, max_length = 64,
            pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver's id."),
    ),
    request_body(content = Location, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: durably in the log.", body = Accepted),
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
pub(crate) async fn report_location(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
    ApiPath(driver_id): ApiPath<String>,
    ApiJson(body): ApiJson<Location>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let point = to_point("location", body.lat, body.lng)?;
    let cell = point.cell().to_string();
    let now_ms = state.clock.now_ms();
    let event = DriverLocationUpdated {
        driver_id: driver_id.clone(),
        h3: cell.clone(),
        available: body.available,
        timestamp: now_ms,
        lat: point.lat(),
        lng: point.lng(),
    };
    let mut record = OutgoingRecord::keyed(driver_id.clone(), event.encode_to_vec())
        .with_header(TENANT_HEADER, caller.tenant.to_string());
    // The engine's span for this ping joins the request's trace (when traces are recorded).
    if let Some(trace) = TraceContext::current() {
        for (name, value) in trace.headers() {
            record = record.with_header(name, value.to_owned());
        }
    }
    // Accepted only once the log holds it durably.
    state
        .log
        .append(&state.supply_topic, vec![record])
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "supply append failed");
            ApiError::unavailable("driver locations are temporarily unavailable; retry")
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            driver_id,
            h3: cell,
            available: body.available,
            accepted_at: rfc3339(now_ms),
        }),
    ))
}
