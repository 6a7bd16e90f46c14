//! `POST /api/v1/orders`, and the order as every orders and rides route shows it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_core::Money;
use pulse_orders::{IdempotencyKey, NewOrder, Order, OrderError, ValidationError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{rfc3339, ApiJson, LatLng, OrdersApi};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::ApiError;

/// An order to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrder {
    /// Who orders: 1 to 50 characters, no surrounding spaces, no control or bidi characters.
    #[schema(min_length = 1, max_length = 50, example = "rider-17")]
    user_id: String,
    /// Where to pick up.
    pickup: LatLng,
    /// Where to drop off.
    dropoff: LatLng,
    /// A locked quote (`GET /api/v1/quote?...&user_id=`) to pay: the order then costs its price.
    /// Without one, the order pays a fresh quote's price.
    #[serde(default)]
    quote_id: Option<Uuid>,
    /// Only drivers of this vehicle are matched (`car`, `bike`, …: 1 to 32 of `a-z0-9_-`).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[a-z0-9_-]{1,32}$",
        example = "car"
    )]
    vehicle_type: Option<String>,
}

/// What the order costs: its locked quote's price, else a fresh quote's at placement.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderPrice)]
struct PriceBody {
    #[schema(value_type = domain::Money)]
    total: Money,
    /// The surge multiplier applied.
    multiplier: f64,
}

/// An order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
pub(crate) struct OrderBody {
    order_id: Uuid,
    user_id: String,
    #[schema(value_type = domain::OrderStatus)]
    status: &'static str,
    /// The pickup's H3 cell (resolution 8).
    pickup_h3: String,
    /// The dropoff's H3 cell (resolution 8).
    dropoff_h3: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    created_at: String,
    /// The quote it paid, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    quote_id: Option<Uuid>,
    /// Its fare, fixed at placement (`total` is what the rider pays).
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<PriceBody>,
    /// The vehicle asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle_type: Option<String>,
    /// The matched driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<String>,
    /// Why dispatch gave up, while the order waits unmatched (still `PENDING`).
    #[serde(skip_serializing_if = "Option::is_none")]
    no_driver: Option<String>,
    /// The statuses it went through, oldest first (on reads of one order).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<StepBody>>,
}

/// A status an order reached.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderStep)]
pub(crate) struct StepBody {
    #[schema(value_type = domain::OrderStatus)]
    status: &'static str,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    at: String,
    /// The driver, for the steps that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<String>,
}

impl OrderBody {
    /// The order with its history: `PENDING` at placement, then each step kept.
    pub(crate) fn with_history(
        order: Order,
        steps: Vec<pulse_marketplace::model::RideStep>,
    ) -> Self {
        let placed = StepBody {
            status: pulse_orders::OrderStatus::Pending.as_str(),
            at: rfc3339(order.created_at_ms),
            driver_id: None,
        };
        let steps = std::iter::once(placed).chain(steps.into_iter().map(|step| StepBody {
            status: step.status.as_str(),
            at: rfc3339(step.at_ms),
            driver_id: step.driver_id,
        }));
        Self {
            history: Some(steps.collect()),
            ..Self::from(order)
        }
    }
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
            vehicle_type: order.vehicle_type,
            driver_id: order.driver_id,
            no_driver: order.no_driver,
            history: None,
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
            OrderError::InsufficientFunds { .. } => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_funds",
                err.to_string(),
            ),
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

/// Place an order.
///
/// With an `Idempotency-Key`, a retry of the same order returns the order first placed (201
/// with `Idempotent-Replayed: true`) instead of placing another.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    operation_id = "placeOrder",
    tag = "orders",
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200,
            pattern = "^[!-~]{1,200}$",
            description = "1 to 200 printable ASCII characters; the same key with the same \
                order returns the first one, with another order is 422."),
    ),
    request_body(content = PlaceOrder, content_type = "application/json"),
    responses(
        (status = 201, description = "The order, placed (or, on a replay, as first placed).",
            body = OrderBody,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this answers a retry with an earlier order.")),
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 402, response = PaymentRequired),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
    let request = match &body.vehicle_type {
        Some(vehicle_type) => request.with_vehicle_type(vehicle_type)?,
        None => request,
    };
    let placed = state.orders.place(&caller.tenant, request, key).await?;
    let mut response = (StatusCode::CREATED, Json(OrderBody::from(placed.order))).into_response();
    if placed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
