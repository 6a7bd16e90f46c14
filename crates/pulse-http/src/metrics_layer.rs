//! The process-wide Prometheus recorder and per-request HTTP metrics.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests served, by route template, method and status.
pub const HTTP_REQUESTS_TOTAL: &str = "pulse_http_requests_total";
/// Request latency in seconds, by route template and method.
pub const HTTP_REQUEST_DURATION: &str = "pulse_http_request_duration_seconds";

/// Histogram buckets (seconds) for every `*_seconds` and `*_duration` metric: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the global metrics recorder once and returns a handle that renders it.
///
/// Later calls (several apps in one test process) return the same handle.
pub fn install_metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Suffix("_duration".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .expect("static, non-empty bucket lists");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case ours stays
            // unused and /metrics shows nothing: say so loudly.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::error!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Counts one answered request and records its latency, by route template (`unmatched` when no
/// route matched), method and status.
pub(crate) fn record_request(
    route: Option<&MatchedPath>,
    method: &Method,
    status: StatusCode,
    started: Instant,
) {
    let route = route.map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method.as_str().to_owned();
    let status = status.as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
}
