//! The live surge map page at `/` and `/map`: static assets compiled into the binary, so the map
//! works offline (no CDN, no tiles). It draws from `/api/v1/surge/stream`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../assets/map/index.html");
const MAP_JS: &str = include_str!("../assets/map/map.js");
const MAP_CSS: &str = include_str!("../assets/map/map.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // `no-cache` revalidates on every load, so a new binary's map is picked up at once.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/`, `/map`, `/map/map.js` and `/map/map.css`.
pub fn routes() -> Router {
    let page = || async { asset("text/html; charset=utf-8", INDEX_HTML) };
    Router::new()
        .route("/", get(page))
        .route("/map", get(page))
        .route(
            "/map/map.js",
            get(|| async { asset("text/javascript; charset=utf-8", MAP_JS) }),
        )
        .route(
            "/map/map.css",
            get(|| async { asset("text/css; charset=utf-8", MAP_CSS) }),
        )
}
