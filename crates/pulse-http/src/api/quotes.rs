//! `GET /api/v1/quote?lat=..&lng=..[&dropoff_lat=..&dropoff_lng=..]`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use pulse_core::Money;
use pulse_surge::quotes::SurgeSource;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{rfc3339, to_point, SurgeApi};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QuoteParams {
    /// Pickup latitude, degrees.
    #[param(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Pickup longitude, degrees.
    #[param(minimum = -180.0, maximum = 180.0)]
    lng: f64,
    /// Dropoff latitude, degrees (with `dropoff_lng`, or neither): prices the distance.
    #[param(minimum = -90.0, maximum = 90.0)]
    dropoff_lat: Option<f64>,
    /// Dropoff longitude, degrees (with `dropoff_lat`, or neither).
    #[param(minimum = -180.0, maximum = 180.0)]
    dropoff_lng: Option<f64>,
    /// The rider the quote is for: when given, the quote is locked (it gets a `quote_id` and
    /// an `expires_at`) and only that user's order can pay it.
    #[param(min_length = 1, max_length = 50)]
    user_id: Option<String>,
}

/// The multiplier's origin.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = QuoteSurge)]
struct SurgeBody {
    #[schema(value_type = domain::SurgeSource)]
    source: SurgeSource,
    /// When the live value was computed (RFC 3339, UTC); `null` unless `source` is `live`.
    #[schema(format = DateTime)]
    updated_at: Option<String>,
}

/// The price.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = QuotePrice)]
struct PriceBody {
    /// Before the multiplier.
    #[schema(value_type = domain::Money)]
    base: Money,
    /// Straight-line pickup to dropoff, metres (0 without a dropoff).
    distance_m: i64,
    /// `base` times the multiplier.
    #[schema(value_type = domain::Money)]
    total: Money,
}

/// A quote.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Quote)]
pub(crate) struct QuoteBody {
    /// The pickup's H3 cell (resolution 8).
    h3: String,
    /// The surge multiplier in force there.
    multiplier: f64,
    surge: SurgeBody,
    price: PriceBody,
    /// The locked quote's id, to pay with `POST /api/v1/orders`; `null` unless `user_id` was
    /// given.
    quote_id: Option<Uuid>,
    /// Until when the locked quote can be paid (RFC 3339, UTC).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// Quote a ride: the pickup cell's live multiplier applied to the tariff.
#[utoipa::path(
    get,
    path = "/api/v1/quote",
    operation_id = "getQuote",
    tag = "surge",
    params(QuoteParams),
    responses(
        (status = 200, description = "The quote.", body = QuoteBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn quote(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
    params: Result<Query<QuoteParams>, QueryRejection>,
) -> Result<Json<QuoteBody>, ApiError> {
    let params = super::json::query_params(
        params,
        "expected ?lat=..&lng=..[&dropoff_lat=..&dropoff_lng=..]",
    )?;
    let pickup = to_point("pickup", params.lat, params.lng)?;
    let dropoff = match (params.dropoff_lat, params.dropoff_lng) {
        (Some(lat), Some(lng)) => Some(to_point("dropoff", lat, lng)?),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give both dropoff_lat and dropoff_lng, or neither",
            ))
        }
    };
    if let Some(user_id) = &params.user_id {
        pulse_orders::validate_user_id(user_id)?;
    }
    let quote = state
        .quotes
        .quote(&caller.tenant, params.user_id.as_deref(), pickup, dropoff)
        .await;
    Ok(Json(QuoteBody {
        h3: quote.h3,
        multiplier: quote.multiplier,
        surge: SurgeBody {
            source: quote.source,
            updated_at: quote.updated_at.map(|s| rfc3339(s * 1_000)),
        },
        price: PriceBody {
            base: quote.price.base,
            distance_m: quote.price.distance_m,
            total: quote.price.total,
        },
        quote_id: quote.quote_id,
        expires_at: quote.expires_at_ms.map(rfc3339),
    }))
}
