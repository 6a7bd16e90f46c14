//! `GET /api/v1/quote?lat=..&lng=..[&dropoff_lat=..&dropoff_lng=..]`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use pulse_core::Money;
use pulse_surge::quotes::SurgeSource;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{rfc3339, to_point, SurgeApi};
use crate::auth::Caller;
use crate::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct QuoteParams {
    lat: f64,
    lng: f64,
    dropoff_lat: Option<f64>,
    dropoff_lng: Option<f64>,
    /// The rider the quote is for: when given, only that user's order can pay it.
    user_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct SurgeBody {
    source: SurgeSource,
    updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct PriceBody {
    base: Money,
    distance_m: i64,
    total: Money,
}

#[derive(Debug, Serialize)]
pub(crate) struct QuoteBody {
    h3: String,
    multiplier: f64,
    surge: SurgeBody,
    price: PriceBody,
    quote_id: Option<Uuid>,
    expires_at: Option<String>,
}

pub(crate) async fn quote(
    State(state): State<Arc<SurgeApi>>,
    Caller(caller): Caller,
    params: Result<Query<QuoteParams>, QueryRejection>,
) -> Result<Json<QuoteBody>, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        ApiError::bad_request(format!(
            "{}; expected ?lat=..&lng=..[&dropoff_lat=..&dropoff_lng=..]",
            rejection.body_text()
        ))
    })?;
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
