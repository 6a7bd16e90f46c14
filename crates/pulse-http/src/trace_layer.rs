//! One server span per API request (`/api/v1` and the event gateway's `/v1`), continuing the caller's W3C trace (`traceparent`) or starting
//! one, and handing the context back in the response's `traceparent` header so a client can find
//! its trace (also when no tracer is installed and nothing is recorded). The request runs under
//! that context ([`TraceContext::scope`]), so it reaches the outbox row and the records appended
//! whether or not spans are recorded. Operational endpoints (`/healthz`, `/readyz`, `/metrics`)
//! are not traced: probes and scrapes would drown the traces that matter.

use std::future::Future;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use pulse_trace::TraceContext;
use tracing::Instrument;

/// Whether requests on `route` get a server span.
fn traced(route: &str) -> bool {
    route
        .strip_prefix(crate::api::INGRESS_PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
        || route.starts_with("/api/")
}

/// The server span of one request and the trace context it runs under.
pub(crate) struct RequestTrace {
    span: tracing::Span,
    context: TraceContext,
}

impl RequestTrace {
    /// The request's span, continuing the caller's trace, when `route` is traced.
    pub(crate) fn start(request: &Request, route: Option<&MatchedPath>) -> Option<Self> {
        let route = route
            .map(MatchedPath::as_str)
            .filter(|route| traced(route))?;
        let method = request.method();
        let span = tracing::info_span!(
            "http.request",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let incoming = TraceContext::from_headers(|name| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        });
        let span = match &incoming {
            Some(parent) => parent.adopt(span),
            None => span,
        };
        // Without a tracer (no OTLP endpoint) there is no span context: the hop is the caller's
        // trace with a new span id (its flags kept), or a new unrecorded trace, at no cost.
        let context = TraceContext::of(&span).unwrap_or_else(|| match &incoming {
            Some(parent) => parent.next_hop(),
            None => TraceContext::new_unrecorded(),
        });
        // Log lines inside the request carry it, so logs and traces join up.
        span.record("trace_id", context.trace_id());
        Some(Self { span, context })
    }

    /// Runs `respond` (the rest of the request's handling) in the span, with the context as the
    /// task's current one — what `TraceContext::current` hands the outbox row and the records
    /// appended, also when no span carries it — and hands the context back in the response's
    /// `traceparent`.
    pub(crate) async fn run<F>(self, respond: F) -> Response
    where
        F: Future<Output = Response>,
    {
        let Self { span, context } = self;
        let mut response = context
            .clone()
            .scope(respond.instrument(span.clone()))
            .await;
        span.record("http.response.status_code", response.status().as_u16());
        for (name, value) in context.headers() {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
