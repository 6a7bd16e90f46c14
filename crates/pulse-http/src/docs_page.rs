//! The API reference page at `/docs`: Swagger UI (vendored from the npm package
//! `swagger-ui-dist`, see `assets/docs/README.md`) over [`crate::openapi`]'s document at
//! `/api/v1/openapi.json`. Every asset is compiled into the binary and the page's
//! Content-Security-Policy lets it load nothing from another origin, so it works offline and
//! tells no third party who reads the docs.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../assets/docs/index.html");
const INIT_JS: &str = include_str!("../assets/docs/init.js");
const SWAGGER_UI_JS: &str = include_str!("../assets/docs/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &str = include_str!("../assets/docs/swagger-ui.css");
const FAVICON_PNG: &[u8] = include_bytes!("../assets/docs/favicon-32x32.png");

/// What the page may load: its own scripts, styles and images (Swagger UI sets inline styles
/// and draws icons from `data:` URLs), and requests to this server only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: impl IntoResponse) -> impl IntoResponse {
    // `no-cache` revalidates on every load, so a new binary's page is picked up at once.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `/docs`, `/docs/` and the page's assets under `/docs/`.
pub fn routes() -> Router {
    let page = || async { asset("text/html; charset=utf-8", INDEX_HTML) };
    Router::new()
        .route("/docs", get(page))
        .route("/docs/", get(page))
        .route(
            "/docs/init.js",
            get(|| async { asset("text/javascript; charset=utf-8", INIT_JS) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", SWAGGER_UI_JS) }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset("text/css; charset=utf-8", SWAGGER_UI_CSS) }),
        )
        .route(
            "/docs/favicon-32x32.png",
            get(|| async { asset("image/png", FAVICON_PNG) }),
        )
}
