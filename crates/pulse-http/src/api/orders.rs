//! `POST /api/v1/orders` and `GET /api/v1/orders/{id}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_core::Money;
use pulse_orders::{IdempotencyKey, NewOrder, Order, OrderError, ValidationError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{rfc3339, ApiJson, LatLng, OrdersApi};
use crate::auth::Caller;
use crate::{ApiError, ApiPath};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrder {
    user_id: String,
    pickup: LatLng,
    dropoff: LatLng,
    #[serde(default)]
    quote_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct PriceBody {
    total: Money,
    multiplier: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct OrderBody {
    order_id: Uuid,
    user_id: String,
    status: &'static str,
    pickup_h3: String,
    dropoff_h3: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    quote_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<PriceBody>,
}

impl From<Order> for OrderBody {
    fn from(order: Order) -> Self {
        Self {
            order_id: order.id,
            user_id: order.user_id,
            status: order.status.as_str(),
            pickup_h3: order.pickup_h3,
            dropoff_h3: order.dropoff_h3,
            created_at: rfc3339(order.created_at_ms),
            quote_id: order.quote_id,
            price: order.price.map(|price| PriceBody {
                total: price.total,
                multiplier: f64::from(price.multiplier_milli) / 1_000.0,
            }),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        ApiError::bad_request(err.to_string())
    }
}

impl From<OrderError> for ApiError {
    fn from(err: OrderError) -> Self {
        let unprocessable =
            |code| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string());
        match &err {
            OrderError::QuoteUnavailable(_) => unprocessable("quote_unavailable"),
            OrderError::QuoteMismatch { .. } => unprocessable("quote_mismatch"),
            OrderError::QuoteNotYours(_) => unprocessable("quote_not_yours"),
            OrderError::QuoteUsed(_) => {
                ApiError::new(StatusCode::CONFLICT, "quote_used", err.to_string())
            }
            OrderError::IdempotencyConflict(_) => unprocessable("idempotency_key_reused"),
            OrderError::Backend(port) if port.is_retryable() => {
                tracing::warn!(error = %err, "order backend unavailable");
                ApiError::unavailable(
                    "orders are temporarily unavailable; retry with the same Idempotency-Key",
                )
            }
            OrderError::Backend(_) => {
                tracing::error!(error = %err, "order backend failed");
                ApiError::internal("the order could not be stored; this is a bug on our side")
            }
        }
    }
}

pub(crate) async fn place(
    State(state): State<Arc<OrdersApi>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
            Some(IdempotencyKey::parse(text)?)
        }
        None => None,
    };
    let request = NewOrder::new(
        &body.user_id,
        body.pickup.point("pickup")?,
        body.dropoff.point("dropoff")?,
        body.quote_id,
    )?;
    let placed = state.orders.place(&caller.tenant, request, key).await?;
    let mut response = (StatusCode::CREATED, Json(OrderBody::from(placed.order))).into_response();
    if placed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub(crate) async fn get(
    State(state): State<Arc<OrdersApi>>,
    Caller(caller): Caller,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = Uuid::parse_str(&order_id)
        .map_err(|_| ApiError::not_found(format!("no order {order_id:?}")))?;
    match state.orders.get(&caller.tenant, id).await? {
        Some(order) => Ok(Json(OrderBody::from(order))),
        None => Err(ApiError::not_found(format!("no order {id}"))),
    }
}
