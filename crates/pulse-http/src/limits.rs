//! The outer body cap every request passes before any router sees it, answered in the house JSON
//! shape (tower-http's `RequestBodyLimitLayer` answers a text/plain 413).
//!
//! Each router sets its own, lower limit ([`crate::body::BodyLimits`]); this one only bounds what
//! any route may be sent, so the largest router limit must stay below it.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::ApiError;

/// Largest request body accepted anywhere: room for the largest router limit (the event
/// gateway's 500 KB batches); today's routes accept 16 KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// 413 `payload_too_large`, naming the limit.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body exceeds {limit} bytes"),
    )
}

/// Refuses a declared `Content-Length` over [`MAX_BODY_BYTES`] at once (the 413 to answer), and
/// caps a body without one (chunked) while it is read. A request without a body passes as is.
pub(crate) fn cap_body(request: Request) -> Result<Request, ApiError> {
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large(MAX_BODY_BYTES));
    }
    Ok(request.map(|body| {
        axum::body::Body::new(Limited::new(body, MAX_BODY_BYTES).map_err(axum::Error::new))
    }))
}
