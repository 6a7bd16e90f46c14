//! The public API under `/api/v1`, one router per domain: orders ([`orders_router`]); the ride
//! lifecycle, histories and nearby drivers ([`rides_router`]); driver
//! locations, quotes and the live surge map ([`surge_router`]). The binary merges the routers of
//! the domains a process serves.

pub(crate) mod drivers;
pub(crate) mod events;
pub(crate) mod jobs;
mod json;
pub(crate) mod orders;
pub(crate) mod profiles;
pub(crate) mod quotes;
pub(crate) mod rides;
pub(crate) mod surge;
pub(crate) mod wallet;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_core::log::EventLog;
use pulse_geo::{GeoError, Point};
use pulse_orders::OrderService;
use pulse_surge::map::SurgeFeeds;
use pulse_surge::quotes::QuoteService;
use serde::Deserialize;

use crate::body::BodyLimits;
use crate::ApiError;

pub use crate::body::MAX_API_BODY_BYTES;
pub use events::{EventsApi, BACKPRESSURE_TOTAL, INGEST_LATENCY_SECONDS, INGEST_REQUESTS_TOTAL};
pub use jobs::JobsApi;
pub use json::ApiJson;
pub use profiles::READ_SOURCE_HEADER;

/// Where the event gateway's doors are mounted (the seed's `POST /v1/events`, and Segment's
/// paths beside it).
pub const INGRESS_PREFIX: &str = "/v1";

/// Comment lines sent on a quiet live stream, so proxies keep it open and clients notice a dead
/// one (the server's idle timeout must exceed it).
pub const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the orders domain's handlers need.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    /// Order placement.
    pub orders: OrderService,
}

/// What the ride lifecycle's handlers need.
#[derive(Debug, Clone)]
pub struct RidesApi {
    /// Reading and moving rides.
    pub rides: pulse_marketplace::rides::RideService,
    /// Matching on demand.
    pub dispatcher: pulse_marketplace::dispatch::Dispatcher,
    /// Where drivers are.
    pub geo: Arc<dyn pulse_core::geo_index::GeoIndex>,
    /// How old a driver's latest ping may be to be shown or matched.
    pub max_age: Duration,
    /// Time.
    pub clock: SharedClock,
}

/// What the wallet's handlers need.
#[derive(Debug, Clone)]
pub struct WalletApi {
    /// Top-ups, balances, entries.
    pub wallet: pulse_ledger::wallet::WalletService,
}

/// What the profiles' handlers need.
#[derive(Debug, Clone)]
pub struct ProfilesApi {
    /// Reads (hot, then cold), creates, lists, merges and unmerges.
    pub profiles: pulse_profiles::service::ProfileService,
}

/// What the surge domain's handlers need (driver locations, quotes, the live map).
#[derive(Debug, Clone)]
pub struct SurgeApi {
    /// Quotes.
    pub quotes: QuoteService,
    /// The log driver locations are appended to.
    pub log: Arc<dyn EventLog>,
    /// The topic driver locations go to (`supply.updates` behind the deployment's prefix).
    pub supply_topic: String,
    /// Time.
    pub clock: SharedClock,
    /// Live surge cells and drivers for the map, per tenant.
    pub surge: SurgeFeeds,
}

/// The orders domain's routes under `/api/v1`, each request bounded by `timeout` once its body
/// (within `body`) has arrived.
pub fn orders_router(state: OrdersApi, timeout: Duration, body: BodyLimits) -> Router {
    orders_routes(timeout, body).with_state(Arc::new(state))
}

/// [`orders_router`] before it is given its state: what it serves, to list without backends
/// (the OpenAPI document's coverage test).
pub fn orders_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<OrdersApi>> {
    let routes = Router::new().route("/orders", post(orders::place));
    bounded(routes, timeout, body)
}

/// The ride lifecycle's routes under `/api/v1`.
pub fn rides_router(state: RidesApi, timeout: Duration, body: BodyLimits) -> Router {
    rides_routes(timeout, body).with_state(Arc::new(state))
}

/// [`rides_router`] before it is given its state.
pub fn rides_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<RidesApi>> {
    let routes = Router::new()
        .route("/orders/{order_id}", get(rides::get))
        .route("/orders/{order_id}/status", post(rides::change_status))
        .route("/orders/{order_id}/cancel", post(rides::cancel))
        .route("/orders/{order_id}/dispatch", post(rides::dispatch))
        .route("/orders/{order_id}/trail", get(rides::trail))
        .route("/riders/{user_id}/rides", get(rides::rider_rides))
        .route("/drivers/{driver_id}/rides", get(rides::driver_rides))
        .route("/drivers/nearby", get(rides::nearby));
    bounded(routes, timeout, body)
}

/// The wallet's routes under `/api/v1`.
pub fn wallet_router(state: WalletApi, timeout: Duration, body: BodyLimits) -> Router {
    wallet_routes(timeout, body).with_state(Arc::new(state))
}

/// [`wallet_router`] before it is given its state.
pub fn wallet_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<WalletApi>> {
    let routes = Router::new()
        .route("/riders/{user_id}/wallet", get(wallet::rider_wallet))
        .route("/riders/{user_id}/wallet/top-ups", post(wallet::top_up))
        .route(
            "/riders/{user_id}/wallet/entries",
            get(wallet::rider_entries),
        )
        .route("/drivers/{driver_id}/wallet", get(wallet::driver_wallet))
        .route(
            "/drivers/{driver_id}/wallet/entries",
            get(wallet::driver_entries),
        )
        .route("/ledger/totals", get(wallet::totals));
    bounded(routes, timeout, body)
}

/// The profiles' routes, to nest under `/api/v1`.
pub fn profiles_router(state: ProfilesApi, timeout: Duration, body: BodyLimits) -> Router {
    profiles_routes(timeout, body).with_state(Arc::new(state))
}

/// [`profiles_router`] before it is given its state.
pub fn profiles_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<ProfilesApi>> {
    let routes = Router::new()
        .route("/profiles", get(profiles::list).post(profiles::create))
        .route("/profiles/by-user/{user_id}", get(profiles::by_user))
        .route(
            "/profiles/by-anonymous/{anonymous_id}",
            get(profiles::by_anonymous),
        )
        .route("/profiles/{profile_id}", get(profiles::get_profile))
        .route("/profiles/{profile_id}/events", get(profiles::events))
        .route("/profiles/{profile_id}/merges", get(profiles::merges))
        .route("/profiles/{profile_id}/unmerge", post(profiles::unmerge));
    bounded(routes, timeout, body)
}

/// The event gateway's doors, to mount under [`INGRESS_PREFIX`]: `POST /events`,
/// `POST /events/batch` and the Segment calls, bodies within `body` (gzip accepted), each
/// request bounded by `timeout` once its body arrived. They authenticate themselves (scope
/// `ingest`), so they are not put behind [`crate::auth::require`].
pub fn ingress_router(state: EventsApi, timeout: Duration, body: BodyLimits) -> Router {
    ingress_routes(timeout, body).with_state(Arc::new(state))
}

/// [`ingress_router`] before it is given its state.
pub fn ingress_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<EventsApi>> {
    let body = body.with_gzip();
    let native = Router::new()
        .route("/events", post(events::send_event))
        .route("/events/batch", post(events::send_events))
        .layer(axum::middleware::from_fn(|request, next| {
            events::measure("events", request, next)
        }));
    let mut segment = Router::new();
    for call in pulse_gateway::ingress::SegmentCall::ALL {
        segment = segment.route(
            &format!("/{}", call.as_str()),
            post(move |State(state), headers, body| {
                events::segment_call(Some(call), state, headers, body)
            }),
        );
    }
    let segment = segment
        .route(
            "/batch",
            post(|State(state), headers, body| events::segment_call(None, state, headers, body)),
        )
        .layer(axum::middleware::from_fn(|request, next| {
            events::measure("segment", request, next)
        }))
        .layer(axum::middleware::from_fn(events::cors));
    bounded(native.merge(segment), timeout, body)
}

/// The gateway's routes under `/api/v1` (behind the key check): the tenant's dead letters.
pub fn events_router(state: EventsApi, timeout: Duration, body: BodyLimits) -> Router {
    events_routes(timeout, body).with_state(Arc::new(state))
}

/// [`events_router`] before it is given its state.
pub fn events_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<EventsApi>> {
    let routes = Router::new()
        .route("/events/dead-letters", get(events::dead_letters))
        .route("/events/dead-letters/redrive", post(events::redrive));
    bounded(routes, timeout, body)
}

/// A job as the API shows it (`GET /api/v1/jobs/{job_id}`), for the `pulse jobs` commands.
pub fn job_json(job: pulse_jobs::model::Job) -> serde_json::Value {
    serde_json::to_value(jobs::JobView::from(job)).expect("a job view always serialises")
}

/// The jobs' routes under `/api/v1` (behind the key check), bodies within `body`.
pub fn jobs_router(state: JobsApi, timeout: Duration, body: BodyLimits) -> Router {
    jobs_routes(timeout, body).with_state(Arc::new(state))
}

/// [`jobs_router`] before it is given its state.
pub fn jobs_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<JobsApi>> {
    let routes = Router::new()
        .route("/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/jobs/batch", post(jobs::enqueue_batch))
        .route("/jobs/dead-letters", get(jobs::dead_letters))
        .route("/jobs/redrive", post(jobs::redrive))
        .route("/jobs/{job_id}", get(jobs::get))
        .route("/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/jobs/{job_id}/retry", post(jobs::retry))
        .route(
            "/handlers/{job_type}",
            axum::routing::put(jobs::put_handler).get(jobs::get_handler),
        );
    bounded(routes, timeout, body)
}

/// The surge domain's routes under `/api/v1`: every request bounded by `timeout` but the live
/// stream, which is meant to stay open (it ends with the process instead). Bodies within `body`.
pub fn surge_router(state: SurgeApi, timeout: Duration, body: BodyLimits) -> Router {
    // Shared, not cloned per request: a clone of the services is a dozen reference counts.
    surge_routes(timeout, body).with_state(Arc::new(state))
}

/// [`surge_router`] before it is given its state (see [`orders_routes`]).
pub fn surge_routes(timeout: Duration, body: BodyLimits) -> Router<Arc<SurgeApi>> {
    let routes = Router::new()
        .route(
            "/drivers/{driver_id}/location",
            post(drivers::report_location),
        )
        .route("/quote", get(quotes::quote))
        .route("/surge/cells", get(surge::cells));
    let streams = Router::new().route("/surge/stream", get(surge::stream));
    // A fleet's batch of up to 1,000 positions is ~75 KB: it gets a body limit of its own.
    let fleets = Router::new().route("/drivers/locations", post(drivers::report_locations));
    let fleet_body = BodyLimits {
        max_bytes: body.max_bytes.max(drivers::MAX_FLEET_BODY_BYTES),
        ..body
    };
    bounded(routes, timeout, body)
        .merge(bounded(fleets, timeout, fleet_body))
        .merge(with_body_limits(streams, body))
}

/// `routes` reading each body whole within `body` first, then bounded by a deadline of
/// `timeout`: the deadline covers the backend work, not a slow client's upload.
pub fn bounded<S>(routes: Router<S>, timeout: Duration, body: BodyLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    layered(routes, body, Some(timeout))
}

fn with_body_limits<S>(routes: Router<S>, body: BodyLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    layered(routes, body, None)
}

/// One layer for both (each axum `from_fn` layer costs a boxed service and future per request).
fn layered<S>(routes: Router<S>, body: BodyLimits, timeout: Option<Duration>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes
        .layer(axum::middleware::from_fn(
            move |request, next: axum::middleware::Next| async move {
                match crate::body::read_body(body, request).await {
                    Ok(request) => within_deadline(timeout, next.run(request)).await,
                    Err(refused) => refused,
                }
            },
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body.max_bytes))
}

/// Answers 503 when a request outlives `timeout`, so a hung backend (a stopped PostgreSQL, a
/// Kafka that does not acknowledge) costs a client at most that long. The work is dropped: a
/// transaction not yet committed rolls back, and an order that did commit is found again by its
/// `Idempotency-Key` on retry. Without a timeout (the live stream, meant to stay open) it runs
/// as long as it runs.
async fn within_deadline(
    timeout: Option<Duration>,
    respond: impl std::future::Future<Output = axum::response::Response>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(timeout) = timeout else {
        return respond.await;
    };
    match tokio::time::timeout(timeout, respond).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(format!(
            "a backend did not answer within {timeout:?}; retry (with the same Idempotency-Key \
             for orders)"
        ))
        .into_response(),
    }
}

/// A point: `{"lat": .., "lng": ..}` in degrees.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lat": 52.52, "lng": 13.405}))]
pub(crate) struct LatLng {
    /// Latitude, degrees.
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude, degrees.
    #[schema(minimum = -180.0, maximum = 180.0)]
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

/// RFC 3339 (UTC, milliseconds) for a Unix-millisecond time: how every API shows a time.
pub fn rfc3339(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
