//! `POST /api/v1/drivers/{driver_id}/location` and `POST /api/v1/drivers/locations` (a fleet's
//! batch): drivers' positions, appended to `supply.updates` keyed by the driver, answered once
//! the log holds them.

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
    /// Whether the driver takes rides now (counts as supply, unless on a ride).
    available: bool,
    /// The driver's vehicle (`car`, `bike`, …: 1 to 32 of `a-z0-9_-`); orders may ask for one.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[a-z0-9_-]{1,32}$",
        example = "car"
    )]
    vehicle_type: Option<String>,
}

/// Most positions in one batch.
pub(crate) const MAX_LOCATIONS_PER_BATCH: usize = 1_000;
/// Largest body of a batch: 1,000 positions with long ids and full-precision coordinates fit.
pub(crate) const MAX_FLEET_BODY_BYTES: usize = 160 * 1024;

/// A driver's position in a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FleetLocation)]
pub(crate) struct FleetLocation {
    /// The driver's id.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    driver_id: String,
    /// Latitude, degrees.
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude, degrees.
    #[schema(minimum = -180.0, maximum = 180.0)]
    lng: f64,
    /// Whether the driver takes rides now.
    available: bool,
    /// The driver's vehicle.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[a-z0-9_-]{1,32}$",
        example = "car"
    )]
    vehicle_type: Option<String>,
}

impl FleetLocation {
    fn location(&self) -> Location {
        Location {
            lat: self.lat,
            lng: self.lng,
            available: self.available,
            vehicle_type: self.vehicle_type.clone(),
        }
    }
}

/// Positions of many drivers (a fleet's devices, relayed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FleetLocations)]
pub(crate) struct Locations {
    /// 1 to 1,000 positions.
    #[schema(min_items = 1, max_items = 1000)]
    locations: Vec<FleetLocation>,
}

/// A batch of positions, accepted (durably in the log).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LocationsAccepted)]
pub(crate) struct BatchAccepted {
    /// Positions accepted: all of the batch.
    accepted: usize,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    accepted_at: String,
}

/// The record of one position, or why it is refused.
fn record_of(
    tenant: &pulse_core::TenantId,
    driver_id: &str,
    location: &Location,
    now_ms: i64,
    field: &str,
) -> Result<(OutgoingRecord, String), ApiError> {
    let point = to_point(field, location.lat, location.lng)?;
    if let Some(vehicle_type) = &location.vehicle_type {
        pulse_orders::validate_vehicle_type(vehicle_type)
            .map_err(|err| ApiError::bad_request(format!("{field}: {err}")))?;
    }
    let cell = point.cell().to_string();
    let event = DriverLocationUpdated {
        driver_id: driver_id.to_owned(),
        h3: cell.clone(),
        available: location.available,
        timestamp: now_ms,
        lat: point.lat(),
        lng: point.lng(),
        vehicle_type: location.vehicle_type.clone().unwrap_or_default(),
    };
    let mut record = OutgoingRecord::keyed(driver_id.to_owned(), event.encode_to_vec())
        .with_header(TENANT_HEADER, tenant.to_string());
    // The consumers' spans for this ping join the request's trace (when traces are recorded).
    if let Some(trace) = TraceContext::current() {
        for (name, value) in trace.headers() {
            record = record.with_header(name, value.to_owned());
        }
    }
    Ok((record, cell))
}

/// Appends `records`, answering 503 when the log does not take them.
async fn append(state: &SurgeApi, records: Vec<OutgoingRecord>) -> Result<(), ApiError> {
    state
        .log
        .append(&state.supply_topic, records)
        .await
        .map(drop)
        .map_err(|err| {
            tracing::warn!(error = %err, "supply append failed");
            ApiError::unavailable("driver locations are temporarily unavailable; retry")
        })
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
    let now_ms = state.clock.now_ms();
    let (record, cell) = record_of(&caller.tenant, &driver_id, &body, now_ms, "location")?;
    // Accepted only once the log holds it durably.
    append(&state, vec![record]).await?;
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

/// Report many drivers' positions at once (a fleet's devices, relayed): one append, all or none.
///
/// Its body may be up to 160 KiB (the other routes' 16 KiB would not hold 1,000 positions).
#[utoipa::path(
    post,
    path = "/api/v1/drivers/locations",
    operation_id = "reportDriverLocations",
    tag = "surge",
    request_body(content = Locations, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: all durably in the log.", body = BatchAccepted),
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
pub(crate) async fn report_locations(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<Locations>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let count = body.locations.len();
    if count == 0 || count > MAX_LOCATIONS_PER_BATCH {
        return Err(ApiError::bad_request(format!(
            "locations: 1 to {MAX_LOCATIONS_PER_BATCH} positions per batch (got {count})"
        )));
    }
    let now_ms = state.clock.now_ms();
    let mut records = Vec::with_capacity(count);
    for (index, item) in body.locations.iter().enumerate() {
        crate::path::validate_id(&format!("locations[{index}].driver_id"), &item.driver_id)?;
        let field = format!("locations[{index}]");
        let (record, _) = record_of(
            &caller.tenant,
            &item.driver_id,
            &item.location(),
            now_ms,
            &field,
        )?;
        records.push(record);
    }
    append(&state, records).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            accepted: count,
            accepted_at: rfc3339(now_ms),
        }),
    ))
}
