//! The OpenAPI document (`pulse_http::openapi`): it names exactly the routes the routers serve,
//! the committed `docs/openapi.json` is the generated one, a real OpenAPI validator accepts it,
//! and it and the reference page at `/docs` answer without a key, loading nothing from another
//! origin.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use pulse_http::openapi::{openapi_json, ADMIN_SCHEME, API_KEY_SCHEMES, OPENAPI_JSON_PATH};
use pulse_http::{BodyLimits, OpsState, ADMIN_PREFIX, API_PREFIX};
use serde_json::Value;
use tower::ServiceExt;

/// `(METHOD, path)`.
type Route = (String, String);

/// The methods the document and the routers are compared on (axum adds HEAD to every GET).
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn document() -> Value {
    serde_json::from_str(&openapi_json()).expect("the document is JSON")
}

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn documented_routes(document: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Walks `text` from `from`, skipping quoted strings (paths hold braces:
/// `"/orders/{order_id}"`), and hands `visit` each other byte with the nesting depth after it;
/// stops at the first byte `visit` returns `true` for and answers its index.
fn scan(text: &str, from: usize, mut visit: impl FnMut(usize, u8, i32) -> bool) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    for (index, &byte) in text.as_bytes().iter().enumerate().skip(from) {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'(' | b'[' => depth += 1,
            b'}' | b')' | b']' => depth -= 1,
            _ => {}
        }
        if byte != b'"' && visit(index, byte, depth) {
            return Some(index);
        }
    }
    None
}

/// The text of the `{…}` block that opens at `text[open]`.
fn block(text: &str, open: usize) -> &str {
    let close = scan(text, open, |_, byte, depth| {
        matches!(byte, b'}' | b')' | b']') && depth == 0
    })
    .unwrap_or_else(|| panic!("unbalanced Debug text from {open}"));
    &text[open + 1..close]
}

/// `name: value` fields of a block, split at its top level.
fn fields(block: &str) -> Vec<(&str, &str)> {
    let mut pieces = Vec::new();
    let mut start = 0;
    scan(block, 0, |index, byte, depth| {
        if byte == b',' && depth == 0 {
            pieces.push(&block[start..index]);
            start = index + 1;
        }
        false
    });
    pieces.push(&block[start..]);
    pieces
        .into_iter()
        .filter_map(|piece| piece.trim().split_once(": "))
        .collect()
}

/// The routes a router serves, read from its `Debug` text: axum lists no routes publicly, but
/// its `PathRouter` shows each route's path (`node: Node { paths: {RouteId(3): "/quote"} }`) and
/// method router (`RouteId(3): MethodRouter(MethodRouter { get: Route(…), post: None, … })`).
/// A route that is a whole service (`route_service`, `nest_service`) serves every method: `ANY`,
/// which no document operation matches.
fn served_routes(router: &impl std::fmt::Debug) -> BTreeSet<Route> {
    let text = format!("{router:?}");
    let start = text
        .find("path_router: PathRouter {")
        .expect("axum's Router Debug shows its path router; has its format changed?");
    let path_router = block(&text, start + "path_router: PathRouter ".len());
    let section = |text: &'static str| {
        let at = path_router
            .find(text)
            .unwrap_or_else(|| panic!("no `{text}` in axum's PathRouter Debug: {path_router}"));
        block(path_router, at + text.len() - 1)
    };
    let endpoints = fields(section("routes: {"));
    let paths = fields(section("paths: {"));
    let mut routes = BTreeSet::new();
    for (id, path) in paths {
        let path = path.trim_matches('"').to_owned();
        let endpoint = endpoints
            .iter()
            .find(|(endpoint_id, _)| *endpoint_id == id)
            .map(|(_, endpoint)| *endpoint)
            .unwrap_or_else(|| panic!("no endpoint for {id} ({path})"));
        match endpoint.strip_prefix("MethodRouter(MethodRouter ") {
            Some(rest) => {
                let methods = fields(block(rest, 0));
                for (method, handler) in methods {
                    if METHODS.contains(&method) && handler != "None" {
                        routes.insert((method.to_ascii_uppercase(), path.clone()));
                    }
                }
            }
            None => {
                routes.insert(("ANY".to_owned(), path));
            }
        }
    }
    routes
}

fn ops() -> OpsState {
    OpsState {
        checks: Vec::new(),
        check_timeout: Duration::from_secs(1),
        metrics: pulse_http::install_metrics_recorder(),
    }
}

/// Every route the binary can serve under the API prefixes: the domain routers as
/// `pulse_http::router` nests them, and what `pulse_http::router` itself adds there.
fn every_served_api_route() -> BTreeSet<Route> {
    let (timeout, body) = (Duration::from_secs(1), BodyLimits::default());
    let mut served = BTreeSet::new();
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::orders_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::rides_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::wallet_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::profiles_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::surge_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::events_routes(timeout, body)),
    ));
    served.extend(served_routes(
        &Router::new().nest(API_PREFIX, pulse_http::api::jobs_routes(timeout, body)),
    ));
    served.extend(served_routes(&Router::new().nest(
        pulse_http::api::INGRESS_PREFIX,
        pulse_http::api::ingress_routes(timeout, body),
    )));
    served.extend(served_routes(
        &Router::new().nest(ADMIN_PREFIX, pulse_http::admin::admin_routes()),
    ));
    let outer = pulse_http::router(ops(), Router::new(), Router::new(), None, Router::new());
    served.extend(served_routes(&outer).into_iter().filter(|(_, path)| {
        path.starts_with(&format!("{API_PREFIX}/")) || path.starts_with(&format!("{ADMIN_PREFIX}/"))
    }));
    served
}

#[test]
fn the_route_listing_reads_axums_routers() {
    let served = served_routes(
        &Router::<()>::new()
            .route(
                "/a/{id}",
                axum::routing::get(|| async {}).delete(|| async {}),
            )
            .nest("/n", Router::new().route("/b", post(|| async {}))),
    );
    let expected: BTreeSet<Route> = [("GET", "/a/{id}"), ("DELETE", "/a/{id}"), ("POST", "/n/b")]
        .into_iter()
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
    assert_eq!(served, expected);
}

#[test]
fn the_document_names_every_route_the_routers_serve_and_no_other() {
    let served = every_served_api_route();
    assert!(
        served.contains(&("POST".to_owned(), "/api/v1/orders".to_owned()))
            && served.contains(&(
                "PUT".to_owned(),
                "/admin/v1/tenants/{tenant_id}/quotas/{class}".to_owned()
            )),
        "the listing missed known routes (has axum's Debug format changed?): {served:?}"
    );
    let documented = documented_routes(&document());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in the OpenAPI document (add #[utoipa::path] to the handler and list it \
         in crates/pulse-http/src/openapi.rs): {undocumented:?}; documented but not served: \
         {unserved:?}"
    );
}

fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                operations.push((method.to_ascii_uppercase(), path.clone(), operation));
            }
        }
    }
    operations
}

fn schemes(operation: &Value) -> Vec<String> {
    operation["security"]
        .as_array()
        .expect("every operation states its security")
        .iter()
        .flat_map(|requirement| {
            requirement
                .as_object()
                .expect("requirement")
                .keys()
                .cloned()
        })
        .collect()
}

fn statuses(operation: &Value) -> BTreeSet<String> {
    operation["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_api_operation_needs_a_key_and_documents_the_gates_errors_and_its_bodys() {
    let document = document();
    for (method, path, operation) in operations(&document) {
        let statuses = statuses(operation);
        let has = |wanted: &[&str]| wanted.iter().all(|status| statuses.contains(*status));
        let label = format!("{method} {path}: {statuses:?}");
        if path == OPENAPI_JSON_PATH {
            assert!(
                schemes(operation).is_empty(),
                "{label}: the document needs no key"
            );
        } else if path.starts_with(API_PREFIX)
            || path.starts_with(&format!("{}/", pulse_http::api::INGRESS_PREFIX))
        {
            assert_eq!(schemes(operation), API_KEY_SCHEMES, "{label}");
            assert!(has(&["401", "403", "429", "500", "503"]), "{label}");
            let retry = &document["components"]["responses"]["TooManyRequests"]["headers"];
            for name in ["Retry-After", "RateLimit-Policy", "RateLimit"] {
                assert!(retry.get(name).is_some(), "429 lacks {name}");
            }
            if operation.get("requestBody").is_some() {
                assert!(has(&["400", "408", "413", "415"]), "{label}");
            }
        } else {
            assert!(path.starts_with(ADMIN_PREFIX), "{label}");
            assert_eq!(schemes(operation), [ADMIN_SCHEME], "{label}");
            assert!(has(&["401", "500", "503"]), "{label}");
            if operation.get("requestBody").is_some() {
                assert!(has(&["400", "408", "413", "415"]), "{label}");
            }
        }
        for (status, response) in operation["responses"].as_object().expect("responses") {
            if status.starts_with('4') || status.starts_with('5') {
                let reference = response["$ref"].as_str().unwrap_or_default();
                let component = reference.rsplit('/').next().unwrap_or_default();
                let body = &document["components"]["responses"][component]["content"]
                    ["application/json"]["schema"]["$ref"];
                assert_eq!(body, "#/components/schemas/Error", "{label}: {status}");
            }
        }
    }
    let info = &document["info"];
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(info["title"], "Pulse");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = openapi_json();
    let path = committed_path();
    if std::env::var_os("PULSE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates; regenerate it with \
         `PULSE_UPDATE_OPENAPI=1 cargo test -p pulse-http --test openapi` and commit it"
    );
}

/// The validator scripts/test installs (`PULSE_OPENAPI_VALIDATOR`), else its default place.
fn validator() -> PathBuf {
    let path = std::env::var_os("PULSE_OPENAPI_VALIDATOR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| {
                PathBuf::from(home).join(".cache/pulse/openapi-venv/bin/openapi-spec-validator")
            })
        })
        .expect("PULSE_OPENAPI_VALIDATOR or HOME is set");
    assert!(
        path.is_file(),
        "no OpenAPI validator at {}: run scripts/openapi-validator (scripts/test does) and set \
         PULSE_OPENAPI_VALIDATOR to the path it prints",
        path.display()
    );
    path
}

/// Whether the validator accepts `file`, and what it said (its first lines: it quotes the whole
/// document on an error).
fn validate(file: &std::path::Path) -> (bool, String) {
    let output = Command::new(validator())
        .arg(file)
        .output()
        .expect("the validator runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said.chars().take(1_000).collect())
}

#[test]
fn a_real_openapi_validator_accepts_the_committed_document_and_refuses_a_broken_one() {
    let (valid, said) = validate(&committed_path());
    assert!(
        valid,
        "openapi-spec-validator refused docs/openapi.json:\n{said}"
    );
    // The same check must be able to fail: a reference to a schema the document lacks (the
    // mistake it caught once, a path parameter's enum left out of the components).
    let mut broken = document();
    broken["components"]["schemas"]
        .as_object_mut()
        .expect("schemas")
        .remove("QuotaClass");
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("broken-openapi.json");
    std::fs::write(&file, broken.to_string()).expect("write the broken document");
    let (valid, said) = validate(&file);
    assert!(!valid, "the validator accepted a broken document: {said}");
}

/// The binary's router with an API behind a stand-in for the key check that refuses everyone.
fn app() -> Router {
    let gate = axum::middleware::from_fn(|_: Request<Body>, _: axum::middleware::Next| async {
        (StatusCode::UNAUTHORIZED, "a key is required").into_response()
    });
    let api = Router::new()
        .route("/orders", post(|| async { "placed" }))
        .layer(gate);
    pulse_http::router(
        ops(),
        api,
        Router::new(),
        None,
        pulse_http::map_page::routes(),
    )
}

async fn get(app: &Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn content_type(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// Every `src="…"` and `href="…"` of a page.
fn references(html: &str) -> Vec<&str> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let end = rest.find('"').expect("closed attribute");
            found.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn the_document_and_the_reference_page_answer_without_a_key_from_this_origin_only() {
    let app = app();
    let request = Request::post("/api/v1/orders")
        .body(Body::empty())
        .expect("request");
    let refused = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the API is behind the gate"
    );

    let (status, headers, body) = get(&app, OPENAPI_JSON_PATH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type(&headers), "application/json");
    assert_eq!(body, openapi_json());

    for page in ["/docs", "/docs/"] {
        let (status, headers, html) = get(&app, page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(content_type(&headers), "text/html; charset=utf-8", "{page}");
        let policy = headers
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|value| value.to_str().ok())
            .expect("the page has a Content-Security-Policy");
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        assert!(
            !policy.contains("http") && !policy.contains('*'),
            "{policy}"
        );
        let assets = references(&html);
        assert!(assets.len() >= 4, "{assets:?}");
        for asset in assets {
            assert!(
                asset.starts_with("/docs/") && !asset.starts_with("//"),
                "{page} loads {asset}, not from this origin's /docs/"
            );
            let (status, headers, _) = get(&app, asset).await;
            assert_eq!(status, StatusCode::OK, "{asset}");
            let expected = match asset.rsplit('.').next() {
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("png") => "image/png",
                other => panic!("unexpected asset kind {other:?}"),
            };
            assert_eq!(content_type(&headers), expected, "{asset}");
        }
    }
    let (_, _, init) = get(&app, "/docs/init.js").await;
    assert!(init.contains("url: \"/api/v1/openapi.json\""), "{init}");
    assert!(
        init.contains("validatorUrl: null"),
        "the online validator badge is off"
    );
    assert!(init.contains("queryConfigEnabled: false"), "{init}");
}
