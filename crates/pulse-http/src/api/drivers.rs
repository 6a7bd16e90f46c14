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

use super::{rfc3339, to_point, ApiJson, SurgeApi};
use crate::auth::Caller;
use crate::{ApiError, ApiPath};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Location {
    lat: f64,
    lng: f64,
    available: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    driver_id: String,
    h3: String,
    available: bool,
    accepted_at: String,
}

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
