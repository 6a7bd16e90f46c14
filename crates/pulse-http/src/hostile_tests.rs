//! The shared layers against hostile requests, on a router of test handlers (no backends).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{ApiJson, MAX_API_BODY_BYTES};
use crate::{ApiPath, BodyLimits, OpsState};

/// The backend deadline of the test routes; bodies must arrive well within it.
const DEADLINE: Duration = Duration::from_millis(500);
const BODY_TIMEOUT: Duration = Duration::from_millis(100);

async fn echo(ApiJson(value): ApiJson<Value>) -> Json<Value> {
    Json(value)
}

async fn thing(ApiPath(id): ApiPath<String>) -> String {
    id
}

fn app(limits: BodyLimits) -> Router {
    let api = crate::api::bounded(
        Router::new()
            .route("/echo", post(echo))
            .route("/things/{thing_id}", get(thing)),
        DEADLINE,
        limits,
    );
    let ops = OpsState {
        checks: Vec::new(),
        check_timeout: Duration::from_secs(1),
        metrics: crate::install_metrics_recorder(),
    };
    crate::router(ops, api, Router::new(), None, crate::map_page::routes())
}

fn limits() -> BodyLimits {
    BodyLimits::new(MAX_API_BODY_BYTES, BODY_TIMEOUT)
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = tokio::time::timeout(Duration::from_secs(5), app.oneshot(request))
        .await
        .expect("answers within 5 s")
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_house_error(
    status: StatusCode,
    headers: &axum::http::HeaderMap,
    body: &Value,
    code: &str,
) {
    assert_eq!(
        headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default()),
        Some("application/json"),
        "{status} {body}"
    );
    assert_eq!(body["error"]["code"], code, "{status} {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

#[tokio::test]
async fn a_body_that_stalls_is_a_408_from_the_client_not_a_503_from_a_backend() {
    let started = Bytes::from_static(br#"{"partial":"#);
    let stalled =
        futures::stream::iter([Ok::<_, std::io::Error>(started)]).chain(futures::stream::pending());
    let request = Request::post("/api/v1/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "100")
        .body(Body::from_stream(stalled))
        .expect("request");
    let (status, headers, body) = send(app(limits()), request).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_house_error(status, &headers, &body, "request_timeout");
}

#[tokio::test]
async fn a_body_over_the_router_limit_is_a_json_413() {
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_API_BODY_BYTES));
    let (status, headers, body) = send(app(limits()), post_json("/api/v1/echo", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_house_error(status, &headers, &body, "payload_too_large");
}

#[tokio::test]
async fn a_router_sets_its_own_body_limit() {
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100_000));
    let roomy = BodyLimits::new(500_000, BODY_TIMEOUT);
    let (status, _, echoed) = send(app(roomy), post_json("/api/v1/echo", body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed["pad"].as_str().map(str::len), Some(100_000));
}

#[tokio::test]
async fn a_body_declared_over_the_outer_limit_is_a_json_413() {
    let request = Request::post("/api/v1/echo")
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::CONTENT_LENGTH,
            (crate::MAX_BODY_BYTES + 1).to_string(),
        )
        .body(Body::from("{}"))
        .expect("request");
    let (status, headers, body) = send(app(limits()), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_house_error(status, &headers, &body, "payload_too_large");
}

#[tokio::test]
async fn a_compressed_body_is_a_json_415_where_no_encoding_is_accepted() {
    for encoding in ["gzip", "br", "deflate, gzip"] {
        let request = Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, encoding)
            .body(Body::from("{}"))
            .expect("request");
        let (status, headers, body) = send(app(limits()), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{encoding}");
        assert_house_error(status, &headers, &body, "unsupported_encoding");
    }
}

#[tokio::test]
async fn a_router_accepting_gzip_inflates_within_its_limit() {
    use std::io::Write;
    let gzip = |data: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("in memory");
        encoder.finish().expect("in memory")
    };
    let request = |data: Vec<u8>| {
        Request::post("/api/v1/echo")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(data))
            .expect("request")
    };
    let gzipped = limits().with_gzip();
    let (status, _, echoed) = send(app(gzipped), request(gzip(br#"{"a":1}"#))).await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    assert_eq!(echoed["a"], 1);
    let bomb = format!(r#"{{"pad":"{}"}}"#, " ".repeat(10 * 1024 * 1024));
    let (status, headers, body) = send(app(gzipped), request(gzip(bomb.as_bytes()))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_house_error(status, &headers, &body, "payload_too_large");
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_that_keeps_its_allow_header() {
    for (method, path, allowed) in [
        ("GET", "/api/v1/echo", "POST"),
        ("DELETE", "/api/v1/things/a", "GET,HEAD"),
        ("POST", "/healthz", "GET,HEAD"),
        ("PUT", "/readyz", "GET,HEAD"),
        ("DELETE", "/metrics", "GET,HEAD"),
        ("POST", "/", "GET,HEAD"),
        ("PATCH", "/map", "GET,HEAD"),
        ("POST", "/map/map.js", "GET,HEAD"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let (status, headers, body) = send(app(limits()), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_house_error(status, &headers, &body, "method_not_allowed");
        let allow = headers
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap_or_default());
        assert_eq!(
            allow.map(|a| a.replace(' ', "")),
            Some(allowed.to_owned()),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn path_identifiers_are_strict_and_their_rejections_are_json() {
    for path in [
        "/api/v1/things/%FF",
        "/api/v1/things/%2e%2e",
        "/api/v1/things/..",
        "/api/v1/things/a%00b",
        "/api/v1/things/a%E2%80%AEb",
        "/api/v1/things/a.b",
    ] {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let (status, headers, body) = send(app(limits()), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_house_error(status, &headers, &body, "invalid_request");
    }
    let request = Request::get("/api/v1/things/driver-7")
        .body(Body::empty())
        .expect("request");
    let response = app(limits()).oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}
