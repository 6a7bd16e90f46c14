//! The process-wide Prometheus recorder and per-request HTTP metrics.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
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
/// route matched), method (`other` for a method HTTP does not define: clients choose it, and a
/// label must not take unbounded values) and status.
pub(crate) fn record_request(
    route: Option<&MatchedPath>,
    method: &Method,
    status: StatusCode,
    started: Instant,
) {
    let route = route.map_or("unmatched", MatchedPath::as_str);
    let handles = RequestHandles::of(route, method_label(method), status.as_u16());
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The metric handles of one route, method and status, looked up once: the registry's lookup by
/// labels allocates them and hashes them on every call, which showed on the quote path.
#[derive(Clone)]
struct RequestHandles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Route templates live as long as their router, so the text's address names a route; the
/// text itself is kept to tell a reused address apart (routers of tests come and go).
type HandleKey = (usize, &'static str, u16);

type HandleCache = RwLock<HashMap<HandleKey, (Box<str>, RequestHandles)>>;

static HANDLES: OnceLock<HandleCache> = OnceLock::new();

/// Most handle sets kept; past it (routers built and dropped many times over) the cache starts
/// afresh. Route templates × methods × statuses stay far below it in one process.
const MAX_HANDLES: usize = 4_096;

impl RequestHandles {
    fn of(route: &str, method: &'static str, status: u16) -> Self {
        let cache = HANDLES.get_or_init(RwLock::default);
        let key = (route.as_ptr() as usize, method, status);
        if let Some((known, handles)) = cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
        {
            if **known == *route {
                return handles.clone();
            }
        }
        let handles = Self {
            requests: metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route.to_owned(), "method" => method),
        };
        let mut cache = cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_HANDLES {
            cache.clear();
        }
        cache.insert(key, (route.into(), handles.clone()));
        handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_http_does_not_define_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap()),
            "other"
        );
        assert_eq!(method_label(&Method::from_bytes(b"X1").unwrap()), "other");
    }
}
