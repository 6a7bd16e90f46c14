//! Trace context travels even when nothing is exported: with no OTLP endpoint (and no
//! OpenTelemetry layer at all: this test binary is its own process and installs none), the
//! caller's `traceparent` and `tracestate` reach the order's record on `demand.orders`, on the
//! embedded log and across Kafka with the gateway and the relay in separate applications.

mod common;

use std::time::{Duration, Instant};

use common::{distributed, place_order_with_headers, TestApp};
use pulse::Config;
use pulse_conformance::{services, unique_name};
use pulse_core::log::{ConsumedRecord, EventLog};
use pulse_runtime::Role;
use pulse_trace::TraceContext;
use serde_json::Value;

const TRACESTATE: &str = "pulse-test=unexported";

fn no_exporter(config: &mut Config) {
    config.otlp_endpoint = None;
}

/// A caller's context with fresh ids and `flags`.
fn caller_context(flags: &str) -> TraceContext {
    let bits = uuid::Uuid::new_v4().as_u128();
    TraceContext {
        traceparent: format!("00-{bits:032x}-{:016x}-{flags}", bits as u64 | 1),
        tracestate: Some(TRACESTATE.to_owned()),
    }
}

/// No OpenTelemetry layer is behind this process's spans: they have no context.
fn assert_nothing_is_traced() {
    assert_eq!(
        TraceContext::of(&tracing::info_span!("probe")),
        None,
        "this test needs a process without an OpenTelemetry layer"
    );
}

/// Places an order under `caller`; the order id and the context the response hands back, which
/// continues the caller's trace with a new span id and the caller's flags.
async fn place_order(gateway: &TestApp, caller: &TraceContext) -> (String, TraceContext) {
    let response = place_order_with_headers(gateway, "unexported-rider", &caller.headers()).await;
    let returned = TraceContext::from_headers(|name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    })
    .expect("a well-formed traceparent in the response");
    assert_eq!(returned.trace_id(), caller.trace_id(), "{returned:?}");
    assert_ne!(returned.traceparent, caller.traceparent, "a hop of its own");
    assert_eq!(returned.is_sampled(), caller.is_sampled(), "{returned:?}");
    let order: Value = response.json().await.expect("order json");
    let order_id = order["order_id"].as_str().expect("order_id").to_owned();
    (order_id, returned)
}

/// The record of `order_id` on `demand.orders`, read by a group of its own from the start.
async fn record_of(log: &dyn EventLog, order_id: &str) -> ConsumedRecord {
    let mut consumer = log
        .consumer(
            &unique_name("trace-reader"),
            &[common::names().demand.as_str()],
        )
        .await
        .expect("consumer");
    let started = Instant::now();
    loop {
        let batch = consumer
            .poll(500, Duration::from_millis(500))
            .await
            .expect("poll");
        if let Some(record) = batch
            .into_iter()
            .find(|record| record.key.as_deref() == Some(order_id.as_bytes()))
        {
            return record;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the order's record never reached {}",
            common::names().demand
        );
    }
}

fn header(record: &ConsumedRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// The record carries the context the gateway handed back: the caller's trace, flags and state.
async fn the_record_continues_the_callers_trace(
    gateway: &TestApp,
    log: &dyn EventLog,
    flags: &str,
) {
    let caller = caller_context(flags);
    let (order_id, returned) = place_order(gateway, &caller).await;
    let record = record_of(log, &order_id).await;
    let carried = TraceContext::from_headers(|name| {
        record
            .header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    })
    .unwrap_or_else(|| {
        panic!(
            "no well-formed traceparent on the record: {:?}",
            header(&record, pulse_trace::TRACEPARENT)
        )
    });
    assert_eq!(carried.trace_id(), caller.trace_id(), "{carried:?}");
    assert_eq!(carried, returned, "the hop the response named");
    assert_eq!(carried.tracestate.as_deref(), Some(TRACESTATE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_without_an_exporter_the_record_carries_the_callers_trace() {
    let app = TestApp::spawn(no_exporter).await;
    assert_nothing_is_traced();
    for flags in ["01", "00"] {
        the_record_continues_the_callers_trace(&app, app.log.as_ref(), flags).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_without_an_exporter_the_record_carries_the_callers_trace() {
    let store_url = services::fresh_postgres_database().await;
    let data = tempfile::tempdir().expect("data dir");
    let mut apps = Vec::new();
    for role in [Role::Gateway, Role::Relay] {
        let store_url = store_url.clone();
        apps.push(
            TestApp::spawn_roles(data.path(), &[role], |config| {
                no_exporter(config);
                distributed(config, store_url);
            })
            .await,
        );
    }
    assert_nothing_is_traced();
    the_record_continues_the_callers_trace(&apps[0], apps[1].log.as_ref(), "01").await;
    for app in apps {
        app.stop().await;
    }
}
