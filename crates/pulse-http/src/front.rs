//! The one middleware every request crosses before its route's own layers: the outer body cap
//! ([`crate::limits`]), the server span ([`crate::trace_layer`]), the request metrics
//! ([`crate::metrics_layer`]) and the JSON 405 ([`crate::error`]), in that order from the
//! outside in.
//!
//! One layer rather than four: each axum `from_fn` layer boxes a clone of the service beneath it
//! and the future it returns on every request, and the quote path, a cache read, is short
//! enough for four of them to show in its throughput.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{error, limits, metrics_layer, trace_layer};

pub(crate) async fn front(request: Request, next: Next) -> Response {
    let request = match limits::cap_body(request) {
        Ok(request) => request,
        Err(too_large) => return too_large.into_response(),
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let trace = trace_layer::RequestTrace::start(&request, route.as_ref());
    let started = Instant::now();
    let respond = async {
        let response = next.run(request).await;
        let response = error::json_method_not_allowed(&method, &uri, response);
        metrics_layer::record_request(route.as_ref(), &method, response.status(), started);
        response
    };
    match trace {
        Some(trace) => trace.run(respond).await,
        None => respond.await,
    }
}
