//! Pulse's HTTP surface: the axum router every process serves, the one JSON error shape, and the
//! operational endpoints.
//!
//! * `GET /healthz` — 200 `{"status":"ok"}` while the process is alive;
//! * `GET /readyz` — 200 when every configured backend answers, else 503 naming the ones that
//!   do not;
//! * `GET /metrics` — Prometheus text format.
//!
//! * `GET /api/v1/openapi.json` — the OpenAPI 3.1 document of `/api/v1` and `/admin/v1`
//!   ([`openapi`]), and `GET /docs` — the API reference page drawing it ([`docs_page`]); both
//!   without a key, every asset compiled in.
//!
//! The gateway adds the live surge map page ([`map_page`]). Domain crates contribute routes under
//! `/api/v1`; this crate wraps them with request metrics,
//! tracing, a body size limit, a JSON 404 and a JSON 405, so every error a client sees has the
//! shape `{"error":{"code":"...","message":"..."}}`. Each router reads its bodies whole within
//! its own [`BodyLimits`] ([`body`]); path parameters are strict identifiers ([`path`]); the
//! server loop with its timeouts and connection limit is [`server`].

pub mod admin;
mod admin_profiles;
pub mod api;
pub mod auth;
pub mod body;
pub mod docs_page;
mod error;
mod front;
mod limits;
pub mod map_page;
mod metrics_layer;
mod objects;
pub mod openapi;
mod ops;
pub mod path;
pub mod server;
mod trace_layer;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pulse_core::health::HealthCheck;

pub use error::ApiError;
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use metrics_layer::{install_metrics_recorder, HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION};
pub use path::ApiPath;

pub use body::BodyLimits;
pub use limits::MAX_BODY_BYTES;

/// Where the public API is mounted.
pub const API_PREFIX: &str = "/api/v1";
/// Where the admin API is mounted.
pub const ADMIN_PREFIX: &str = "/admin/v1";

/// What the operational endpoints need.
#[derive(Clone)]
pub struct OpsState {
    /// Backends `/readyz` asks.
    pub checks: Vec<Arc<dyn HealthCheck>>,
    /// How long `/readyz` waits for each backend.
    pub check_timeout: Duration,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|check| check.name()).collect();
        f.debug_struct("OpsState").field("checks", &names).finish()
    }
}

/// The full router: operational endpoints, the OpenAPI document and its reference page,
/// `api` under [`API_PREFIX`] (behind [`auth::require`]), the event gateway's `ingress` under
/// [`api::INGRESS_PREFIX`] (authenticating itself), `admin` under [`ADMIN_PREFIX`],
/// `pages` at the root (the map, on a gateway), and the shared layers. The document is merged
/// beside `api`, not into it, so it answers without a key.
pub fn router(
    ops: OpsState,
    api: Router,
    ingress: Router,
    admin: Option<Router>,
    pages: Router,
) -> Router {
    let mut router = Router::new()
        .merge(ops::routes(ops))
        .merge(openapi::routes())
        .merge(docs_page::routes())
        .merge(pages)
        .nest(API_PREFIX, api)
        .nest(api::INGRESS_PREFIX, ingress);
    if let Some(admin) = admin {
        router = router.nest(ADMIN_PREFIX, admin);
    }
    router
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(front::front))
}

#[cfg(test)]
mod hostile_tests;
