//! The public API under `/api/v1`: orders, driver locations, quotes and the live surge map.

mod drivers;
mod json;
mod orders;
mod quotes;
mod surge;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_core::log::EventLog;
use pulse_geo::{GeoError, Point};
use pulse_orders::OrderService;
use pulse_surge::map::SurgeFeed;
use pulse_surge::quotes::QuoteService;
use serde::Deserialize;

use crate::ApiError;

pub use json::ApiJson;

/// Largest JSON body the API accepts.
pub const MAX_API_BODY_BYTES: usize = 16 * 1024;

/// What the API handlers need.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Order placement.
    pub orders: OrderService,
    /// Quotes.
    pub quotes: QuoteService,
    /// The log driver locations are appended to.
    pub log: Arc<dyn EventLog>,
    /// The topic driver locations go to (`supply.updates` behind the deployment's prefix).
    pub supply_topic: String,
    /// Time.
    pub clock: SharedClock,
    /// Live surge cells and drivers for the map.
    pub surge: SurgeFeed,
    /// Longest an API request may take (the live stream excepted): past it the client gets
    /// 503, whatever backend is slow.
    pub request_timeout: Duration,
}

/// The `/api/v1` routes.
pub fn routes(state: ApiState) -> Router {
    let timeout = state.request_timeout;
    let bounded = Router::new()
        .route("/orders", post(orders::place))
        .route("/orders/{order_id}", get(orders::get))
        .route(
            "/drivers/{driver_id}/location",
            post(drivers::report_location),
        )
        .route("/quote", get(quotes::quote))
        .route("/surge/cells", get(surge::cells))
        .layer(axum::middleware::from_fn(move |request, next| {
            deadline(timeout, request, next)
        }));
    // The stream is meant to stay open; it ends with the process instead.
    let streams = Router::new().route("/surge/stream", get(surge::stream));
    bounded
        .merge(streams)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        // Shared, not cloned per request: a clone of the services is a dozen reference counts.
        .with_state(Arc::new(state))
}

/// Answers 503 when a request outlives `timeout`, so a hung backend (a stopped PostgreSQL, a
/// Kafka that does not acknowledge) costs a client at most that long. The work is dropped: a
/// transaction not yet committed rolls back, and an order that did commit is found again by its
/// `Idempotency-Key` on retry.
async fn deadline(
    timeout: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(format!(
            "a backend did not answer within {timeout:?}; retry (with the same Idempotency-Key \
             for orders)"
        ))
        .into_response(),
    }
}

/// `{"lat": .., "lng": ..}` in a request body.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatLng {
    lat: f64,
    lng: f64,
}

impl LatLng {
    pub(crate) fn point(self, field: &str) -> Result<Point, ApiError> {
        to_point(field, self.lat, self.lng)
    }
}

pub(crate) fn to_point(field: &str, lat: f64, lng: f64) -> Result<Point, ApiError> {
    Point::new(lat, lng).map_err(|err| match err {
        GeoError::Latitude(_) | GeoError::Longitude(_) | GeoError::Cell(_) => {
            ApiError::bad_request(format!("{field}: {err}"))
        }
    })
}

/// RFC 3339 (UTC, milliseconds) for a Unix-millisecond time.
pub(crate) fn rfc3339(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
