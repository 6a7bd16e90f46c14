//! One order, one trace: the caller's `traceparent` is honoured and returned, and the spans of the
//! gateway, the outbox relay and the engine (down to its cache write) share its trace id and chain
//! parent to child, across the embedded log and across Kafka with the roles in separate
//! applications. Spans are caught by an in-memory exporter installed before any application.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{client, distributed, place_order_with_headers, unique_point, TestApp};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pulse::Config;
use pulse_conformance::services;
use pulse_runtime::Role;
use serde_json::json;

fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let config = Config {
            log_format: pulse::config::LogFormat::Pretty,
            ..Config::default()
        };
        pulse::telemetry::install(&config, Some(provider));
        exporter
    })
}

/// A caller's sampled trace context with fresh ids.
fn caller_context() -> (TraceId, SpanId, String) {
    let bits = uuid::Uuid::new_v4().as_u128();
    let trace = TraceId::from_bytes(bits.to_be_bytes());
    let span = SpanId::from_bytes((bits as u64 | 1).to_be_bytes());
    (trace, span, format!("00-{trace}-{span}-01"))
}

/// Places an order under `traceparent` and checks the response continues that trace.
async fn place_traced_order(gateway: &TestApp, trace: TraceId, traceparent: &str) {
    let response =
        place_order_with_headers(gateway, "traced-rider", &[("traceparent", traceparent)]).await;
    let returned = response.headers()["traceparent"].to_str().expect("ascii");
    assert!(returned.starts_with(&format!("00-{trace}-")), "{returned}");
}

/// The spans of `trace` exported so far.
fn finished_spans(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect()
}

/// Waits for the spans of `trace` down to the engine's cache write, and checks the chain.
async fn the_order_is_one_trace(trace: TraceId, caller: SpanId) {
    let started = Instant::now();
    let spans: Vec<SpanData> = loop {
        let spans = finished_spans(trace);
        if spans.iter().any(|span| span.name == "surge window update") {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the trace never reached the engine's cache write; spans so far: {:?}",
            spans.iter().map(|span| &span.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let http = named("POST /api/v1/orders");
    let place = named("orders.place");
    let relay = named(&format!("{} publish", common::names().demand));
    let consume = named(&format!("{} process", common::names().demand));
    let write = named("surge window update");
    assert_eq!(
        http.parent_span_id, caller,
        "the server span continues the caller's"
    );
    assert_eq!(place.parent_span_id, http.span_context.span_id());
    assert_eq!(
        relay.parent_span_id,
        place.span_context.span_id(),
        "relay ← outbox row"
    );
    assert_eq!(
        consume.parent_span_id,
        relay.span_context.span_id(),
        "engine ← record headers"
    );
    assert_eq!(write.parent_span_id, consume.span_context.span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_one_order_is_one_trace_from_http_to_the_cache_write() {
    exporter();
    let app = TestApp::spawn(|_| {}).await;
    let (trace, caller, traceparent) = caller_context();
    place_traced_order(&app, trace, &traceparent).await;
    the_order_is_one_trace(trace, caller).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_one_order_is_one_trace_across_separate_gateway_relay_and_engine() {
    exporter();
    let store_url = services::fresh_postgres_database().await;
    let data = tempfile::tempdir().expect("data dir");
    let mut apps = Vec::new();
    for role in [Role::Gateway, Role::Relay, Role::Engine] {
        let store_url = store_url.clone();
        apps.push(
            TestApp::spawn_roles(data.path(), &[role], |config| {
                distributed(config, store_url)
            })
            .await,
        );
    }
    let (trace, caller, traceparent) = caller_context();
    place_traced_order(&apps[0], trace, &traceparent).await;
    the_order_is_one_trace(trace, caller).await;
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace_and_names_it() {
    exporter();
    let app = TestApp::spawn(|_| {}).await;
    let response = app
        .client()
        .get(format!("{}/api/v1/quote?lat=52.52&lng=13.405", app.base))
        .send()
        .await
        .expect("quote");
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let trace = pulse_trace::TraceContext::from_headers(|_| Some(traceparent.as_str()))
        .expect("a well-formed traceparent");
    assert!(trace.is_sampled());
    let trace_id = TraceId::from_hex(trace.trace_id()).expect("a hex trace id");
    let started = Instant::now();
    let server = loop {
        if let Some(span) = finished_spans(trace_id)
            .into_iter()
            .find(|span| span.span_kind == SpanKind::Server)
        {
            break span;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no server span exported for trace {trace_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        server.name, "GET /api/v1/quote",
        "named by method and route"
    );
    assert_eq!(
        server.parent_span_id,
        SpanId::INVALID,
        "the server span is the trace's root"
    );
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", server.span_context.span_id()),
        "the response names the server span"
    );
    // Probes and scrapes are not traced.
    let health = client()
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("healthz");
    assert!(health.headers().get("traceparent").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_location_is_one_trace_from_http_to_the_engine() {
    exporter();
    let app = TestApp::spawn(|_| {}).await;
    let (trace, caller, traceparent) = caller_context();
    let (lat, lng) = unique_point();
    let response = app
        .client()
        .post(format!(
            "{}/api/v1/drivers/traced-driver/location",
            app.base
        ))
        .header("traceparent", &traceparent)
        .json(&json!({ "lat": lat, "lng": lng, "available": true }))
        .send()
        .await
        .expect("location request");
    assert_eq!(response.status(), 202);
    let started = Instant::now();
    loop {
        let spans = finished_spans(trace);
        let named = |name: &str| spans.iter().find(|span| span.name == name);
        if let (Some(http), Some(consume), Some(write)) = (
            named("POST /api/v1/drivers/{driver_id}/location"),
            named(&format!("{} process", common::names().supply)),
            named("surge window update"),
        ) {
            assert_eq!(http.parent_span_id, caller);
            assert_eq!(consume.parent_span_id, http.span_context.span_id());
            assert_eq!(write.parent_span_id, consume.span_context.span_id());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no engine span for the ping; spans: {:?}",
            spans.iter().map(|span| &span.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// Sends `body` to the ingest door `path` under a fresh caller context, waits for the span
/// `last` of that trace, and checks the chain: the caller ← the door's server span ← `last`
/// (`why` names the hops between).
async fn an_ingest_is_one_trace_down_to(
    path: &str,
    body: serde_json::Value,
    status: u16,
    last: &str,
    why: &str,
) {
    exporter();
    let app = TestApp::spawn(|_| {}).await;
    let (trace, caller, traceparent) = caller_context();
    let response = app
        .client()
        .post(format!("{}{path}", app.base))
        .header("traceparent", &traceparent)
        .json(&body)
        .send()
        .await
        .expect("ingest");
    assert_eq!(response.status(), status);
    let started = Instant::now();
    let spans = loop {
        let spans = finished_spans(trace);
        if spans.iter().any(|span| span.name == last) {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trace never reached {last}; spans so far: {:?}",
            spans.iter().map(|span| &span.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let named = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let http = named(&format!("POST {path}"));
    assert_eq!(
        http.parent_span_id, caller,
        "the server span continues the caller's"
    );
    assert_eq!(
        named(last).parent_span_id,
        http.span_context.span_id(),
        "{why}"
    );
    app.stop().await;
}

/// An event is one trace from the ingest request to its delivery to each sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_one_trace_from_the_ingest_request_to_each_sink() {
    an_ingest_is_one_trace_down_to(
        "/v1/events",
        json!({"event_type": "traced", "user_id": "u"}),
        202,
        "deliver to postgres_sink",
        "sink ← record headers ← ingest request",
    )
    .await;
}

/// A Segment call is one trace from the ingest request to the profile it updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_call_is_one_trace_from_the_ingest_request_to_the_profile_update() {
    an_ingest_is_one_trace_down_to(
        "/v1/identify",
        json!({"userId": "traced-customer", "traits": {"plan": "pro"}}),
        200,
        "apply to profile",
        "profile ← events.processed headers ← ingest request",
    )
    .await;
}
