//! The ride lifecycle's routes: an order with its history, its moves (`status`, `cancel`,
//! `dispatch`), its trail, the riders' and drivers' ride histories, and the drivers near a point.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use pulse_core::geo_index::{NearbyQuery, MAX_NEARBY, MAX_RADIUS_M};
use pulse_core::time::millis;
use pulse_marketplace::ports::RideParty;
use pulse_marketplace::rides::{Moved, RideError};
use pulse_orders::{validate_user_id, validate_vehicle_type, OrderStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::json::query_params;
use super::orders::OrderBody;
use super::{rfc3339, to_point, ApiJson, RidesApi};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::{ApiError, ApiPath};

/// Most rides in one page of a history.
pub(crate) const MAX_RIDES_PAGE: usize = 100;
/// Most points one trail read returns.
pub(crate) const MAX_TRAIL_POINTS: usize = 10_000;

impl From<RideError> for ApiError {
    fn from(err: RideError) -> Self {
        let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, err.to_string());
        match &err {
            RideError::NotFound(id) => ApiError::not_found(format!("no order {id}")),
            RideError::WrongState { .. } => conflict("invalid_transition"),
            RideError::NotTheDriver { .. } => conflict("not_the_driver"),
            RideError::NoDriver { .. } => conflict("no_driver"),
            RideError::InsufficientFunds { .. } => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_funds",
                err.to_string(),
            ),
            RideError::Backend(port) if port.is_retryable() => {
                tracing::warn!(error = %err, "ride backend unavailable");
                ApiError::unavailable("rides are temporarily unavailable; retry")
            }
            RideError::Backend(_) => {
                tracing::error!(error = %err, "ride backend failed");
                ApiError::internal("the ride could not be read or moved; this is a bug on our side")
            }
        }
    }
}

/// The order id of a path, or 404 for one that is no UUID.
fn order_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no order {raw:?}")))
}

/// The answer to a move: 200 with the order (a repeat changes nothing and says so).
fn moved(moved: Moved) -> Json<MovedBody> {
    Json(MovedBody {
        changed: moved.changed,
        order: OrderBody::from(moved.order),
    })
}

/// An order after a move.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderMoved)]
pub(crate) struct MovedBody {
    /// `false` when the order already was where the request wanted it (an idempotent repeat:
    /// nothing written, no event sent).
    changed: bool,
    order: OrderBody,
}

/// Read an order of the caller's tenant: its state, driver, fare and history.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{order_id}",
    operation_id = "getOrder",
    tag = "orders",
    params(
        ("order_id" = String, Path, min_length = 1, max_length = 64,
            pattern = "^[A-Za-z0-9_-]{1,64}$",
            description = "The order's id (a UUID); an id that is no UUID is 404, one outside \
                the path charset 400."),
    ),
    responses(
        (status = 200, description = "The order, with its history.", body = OrderBody),
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
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = order_id(&raw)?;
    match state.rides.get(&caller.tenant, id).await? {
        Some(ride) => Ok(Json(OrderBody::with_history(ride.order, ride.steps))),
        None => Err(ApiError::not_found(format!("no order {id}"))),
    }
}

/// A driver's move of its ride.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RideStatusChange)]
pub(crate) struct StatusChange {
    /// `STARTED` (the rider is picked up) or `FINISHED` (the ride ended).
    #[schema(value_type = domain::OrderStatus, example = "STARTED")]
    status: String,
    /// The driver making the move: only the order's driver may.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    driver_id: String,
}

/// Start or finish a ride (by its driver).
///
/// Repeating the move just made answers 200 with `changed: false` and sends no second event.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/status",
    operation_id = "moveRide",
    tag = "orders",
    params(("order_id" = String, Path, description = "The order's id (a UUID).")),
    request_body(content = StatusChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The order, moved (or already there).", body = MovedBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn change_status(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Result<Json<MovedBody>, ApiError> {
    let to = match OrderStatus::parse(&body.status) {
        Some(to @ (OrderStatus::Started | OrderStatus::Finished)) => to,
        _ => {
            return Err(ApiError::bad_request(format!(
                "status {:?}: a driver moves a ride to STARTED or FINISHED (cancel with \
                 POST /api/v1/orders/{{id}}/cancel; match with …/dispatch)",
                body.status
            )))
        }
    };
    crate::path::validate_id("driver_id", &body.driver_id)?;
    let id = order_id(&raw)?;
    let done = state
        .rides
        .move_to(&caller.tenant, id, to, Some(body.driver_id))
        .await?;
    Ok(moved(done))
}

/// Cancel an order that has not started; a matched driver is free again.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/cancel",
    operation_id = "cancelOrder",
    tag = "orders",
    params(("order_id" = String, Path, description = "The order's id (a UUID).")),
    responses(
        (status = 200, description = "The order, cancelled (or already).", body = MovedBody),
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
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<MovedBody>, ApiError> {
    let id = order_id(&raw)?;
    let done = state
        .rides
        .move_to(&caller.tenant, id, OrderStatus::Cancelled, None)
        .await?;
    Ok(moved(done))
}

/// Match a pending order to the nearest available driver now (Atlas's ride request).
///
/// 409 `no_driver` when none could be claimed within the widest radius; an order already
/// matched answers 200 with `changed: false`.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/dispatch",
    operation_id = "dispatchOrder",
    tag = "orders",
    params(("order_id" = String, Path, description = "The order's id (a UUID).")),
    responses(
        (status = 200, description = "The order, matched.", body = MovedBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 402, response = PaymentRequired),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn dispatch(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<MovedBody>, ApiError> {
    let id = order_id(&raw)?;
    Ok(moved(
        state.dispatcher.dispatch_now(&caller.tenant, id).await?,
    ))
}

/// A ride's GPS trail.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RideTrail)]
pub(crate) struct TrailBody {
    order_id: Uuid,
    /// The driver's positions while on the ride, oldest first.
    points: Vec<TrailPointBody>,
}

/// A point of a trail.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TrailPoint)]
pub(crate) struct TrailPointBody {
    lat: f64,
    lng: f64,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    at: String,
}

/// A ride's GPS trail: its driver's pings from the match to the end.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{order_id}/trail",
    operation_id = "getRideTrail",
    tag = "orders",
    params(("order_id" = String, Path, description = "The order's id (a UUID).")),
    responses(
        (status = 200, description = "The trail (at most 10,000 points).", body = TrailBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn trail(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<TrailBody>, ApiError> {
    let id = order_id(&raw)?;
    let points = state
        .rides
        .trail(&caller.tenant, id, MAX_TRAIL_POINTS)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no order {id}")))?;
    Ok(Json(TrailBody {
        order_id: id,
        points: points
            .into_iter()
            .map(|point| TrailPointBody {
                lat: point.lat,
                lng: point.lng,
                at: rfc3339(point.at_ms),
            })
            .collect(),
    }))
}

/// Which page of a ride history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// The `next` of the previous page.
    before: Option<Uuid>,
    /// At most this many (1 to 100, default 20).
    limit: Option<usize>,
}

impl PageQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        let limit = self.limit.unwrap_or(20);
        if (1..=MAX_RIDES_PAGE).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_RIDES_PAGE}"
            )))
        }
    }
}

/// A page of rides, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RidePage)]
pub(crate) struct RidePageBody {
    rides: Vec<OrderBody>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Uuid>,
}

async fn history(
    state: &RidesApi,
    caller: &pulse_tenants::Principal,
    party: RideParty<'_>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RidePageBody>, ApiError> {
    let query = query_params(query, "parameters: before, limit")?;
    let page = state
        .rides
        .rides(&caller.tenant, party, query.before, query.limit()?)
        .await?;
    Ok(Json(RidePageBody {
        rides: page.rides.into_iter().map(OrderBody::from).collect(),
        next: page.next,
    }))
}

/// A rider's rides, newest first (Atlas's history service).
#[utoipa::path(
    get,
    path = "/api/v1/riders/{user_id}/rides",
    operation_id = "listRiderRides",
    tag = "orders",
    params(
        ("user_id" = String, Path, min_length = 1, max_length = 50,
            description = "The rider's user id (percent-encoded)."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of rides.", body = RidePageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn rider_rides(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RidePageBody>, ApiError> {
    // A user id may be any printable text (an e-mail address), so not the strict path charset.
    let Path(user_id) =
        user_id.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    validate_user_id(&user_id)?;
    history(&state, &caller, RideParty::Rider(&user_id), query).await
}

/// A driver's rides, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/drivers/{driver_id}/rides",
    operation_id = "listDriverRides",
    tag = "orders",
    params(
        ("driver_id" = String, Path, min_length = 1, max_length = 64,
            pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver's id."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of rides.", body = RidePageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn driver_rides(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    ApiPath(driver_id): ApiPath<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<RidePageBody>, ApiError> {
    history(&state, &caller, RideParty::Driver(&driver_id), query).await
}

/// Where to look for drivers.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct NearbyParams {
    /// Latitude, degrees.
    lat: f64,
    /// Longitude, degrees.
    lng: f64,
    /// Radius, metres (default 2,000; at most 50,000).
    radius_m: Option<f64>,
    /// At most this many (1 to 500, default 10).
    limit: Option<usize>,
    /// Only drivers of this vehicle.
    vehicle_type: Option<String>,
}

/// A driver near the point.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NearbyDriver)]
pub(crate) struct NearbyBody {
    driver_id: String,
    /// From the point, metres.
    distance_m: f64,
    lat: f64,
    lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle_type: Option<String>,
    /// Its latest ping, RFC 3339, UTC.
    #[schema(format = DateTime)]
    seen_at: String,
}

/// Drivers near a point.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NearbyDrivers)]
pub(crate) struct NearbyPage {
    /// Nearest first: available, not on a ride, pinged within the tracker's freshness.
    drivers: Vec<NearbyBody>,
}

/// The available drivers nearest to a point (none on a ride, none whose latest ping is stale).
#[utoipa::path(
    get,
    path = "/api/v1/drivers/nearby",
    operation_id = "nearbyDrivers",
    tag = "orders",
    params(NearbyParams),
    responses(
        (status = 200, description = "The nearest drivers.", body = NearbyPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn nearby(
    State(state): State<Arc<RidesApi>>,
    Caller(caller): Caller,
    params: Result<Query<NearbyParams>, QueryRejection>,
) -> Result<Json<NearbyPage>, ApiError> {
    let params = query_params(
        params,
        "parameters: lat, lng, radius_m, limit, vehicle_type",
    )?;
    let point = to_point("point", params.lat, params.lng)?;
    let radius_m = params.radius_m.unwrap_or(2_000.0);
    if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= MAX_RADIUS_M) {
        return Err(ApiError::bad_request(format!(
            "radius_m must be above 0 and at most {MAX_RADIUS_M}"
        )));
    }
    let limit = params.limit.unwrap_or(10);
    if !(1..=MAX_NEARBY).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_NEARBY}"
        )));
    }
    if let Some(vehicle_type) = &params.vehicle_type {
        validate_vehicle_type(vehicle_type)?;
    }
    let query = NearbyQuery {
        lat: point.lat(),
        lng: point.lng(),
        radius_m,
        limit,
        vehicle_type: params.vehicle_type,
        fresh_since_ms: state.clock.now_ms() - millis(state.max_age),
    };
    let found = state
        .geo
        .nearest(&caller.tenant, &query)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "geo index unavailable");
            ApiError::unavailable("driver positions are temporarily unavailable; retry")
        })?;
    Ok(Json(NearbyPage {
        drivers: found
            .into_iter()
            .map(|driver| NearbyBody {
                driver_id: driver.driver_id,
                distance_m: (driver.distance_m * 10.0).round() / 10.0,
                lat: driver.lat,
                lng: driver.lng,
                vehicle_type: driver.vehicle_type,
                seen_at: rfc3339(driver.at_ms),
            })
            .collect(),
    }))
}
