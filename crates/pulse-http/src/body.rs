//! Request bodies read whole, within a size limit and a deadline of their own, before a handler
//! runs: a client that stalls its upload gets 408 `request_timeout` (its fault, not a backend's)
//! instead of holding the handler until the backend deadline answers 503.
//!
//! Invariants: no handler behind [`read_body`] sees a body larger than its router's
//! [`BodyLimits::max_bytes`] (after inflation, where a router accepts gzip); reading never takes
//! longer than [`BodyLimits::read_timeout`]; an unsupported `Content-Encoding` is 415.

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::limits::too_large;
use crate::ApiError;

/// Largest body today's API routes accept (one order, one driver location).
pub const MAX_API_BODY_BYTES: usize = 16 * 1024;

/// Default [`BodyLimits::read_timeout`]: a JSON body of a few KiB arrives in milliseconds.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one router accepts as a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Most bytes of a body (inflated, when compressed).
    pub max_bytes: usize,
    /// Longest the whole body may take to arrive.
    pub read_timeout: Duration,
    /// Whether `Content-Encoding: gzip` bodies are accepted (inflated within `max_bytes`).
    pub accept_gzip: bool,
}

impl BodyLimits {
    /// `max_bytes`, read within `read_timeout`, not compressed.
    pub fn new(max_bytes: usize, read_timeout: Duration) -> Self {
        Self {
            max_bytes,
            read_timeout,
            accept_gzip: false,
        }
    }

    /// The API's limits: [`MAX_API_BODY_BYTES`] within `read_timeout`.
    pub fn api(read_timeout: Duration) -> Self {
        Self::new(MAX_API_BODY_BYTES, read_timeout)
    }

    /// These limits, accepting gzip bodies too.
    pub fn with_gzip(self) -> Self {
        Self {
            accept_gzip: true,
            ..self
        }
    }
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self::api(DEFAULT_BODY_READ_TIMEOUT)
    }
}

/// 408 `request_timeout`: the client did not send its body in time.
fn too_slow(timeout: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the request body did not arrive within {timeout:?}"),
    )
    .into_response();
    // The rest of the body may still come; the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn unsupported_encoding(encoding: &str, limits: &BodyLimits) -> ApiError {
    let accepted = if limits.accept_gzip {
        "identity or gzip"
    } else {
        "identity"
    };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_encoding",
        format!("Content-Encoding {encoding:?} is not accepted here; send {accepted}"),
    )
}

/// `request` with its body read whole under `limits` and held in memory, or the error to
/// answer. A request without a body (most reads: quotes, the map) passes as is: nothing to wait
/// for or to cap.
pub async fn read_body(limits: BodyLimits, request: Request) -> Result<Request, Response> {
    if axum::body::HttpBody::is_end_stream(request.body())
        && !request.headers().contains_key(header::CONTENT_ENCODING)
    {
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let gzip = match parts.headers.get(header::CONTENT_ENCODING) {
        None => false,
        Some(value) => {
            let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
            match value.as_str() {
                "identity" => false,
                "gzip" | "x-gzip" if limits.accept_gzip => true,
                _ => return Err(unsupported_encoding(&value, &limits).into_response()),
            }
        }
    };
    let read = Limited::new(body, limits.max_bytes).collect();
    let bytes = match tokio::time::timeout(limits.read_timeout, read).await {
        Err(_) => return Err(too_slow(limits.read_timeout)),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if is_length_limit(&*err) => {
            return Err(too_large(limits.max_bytes).into_response())
        }
        Ok(Err(err)) => {
            return Err(
                ApiError::bad_request(format!("the request body could not be read: {err}"))
                    .into_response(),
            )
        }
    };
    let bytes = if gzip {
        match inflate_gzip(&bytes, limits.max_bytes) {
            Ok(inflated) => {
                parts.headers.remove(header::CONTENT_ENCODING);
                parts.headers.remove(header::CONTENT_LENGTH);
                inflated
            }
            Err(err) => return Err(err.into_response()),
        }
    } else {
        bytes
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Whether a body error is (or wraps) a size limit, ours or the outer layer's.
fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<LengthLimitError>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Inflates a gzip body, stopping as soon as it would exceed `max_bytes` (a few KiB of gzip can
/// inflate to gigabytes): 413 `payload_too_large` past the cap, 400 when it is not gzip.
pub fn inflate_gzip(compressed: &[u8], max_bytes: usize) -> Result<Bytes, ApiError> {
    let cap = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(cap)
        .read_to_end(&mut inflated)
        .map_err(|err| ApiError::bad_request(format!("the gzip body is corrupt: {err}")))?;
    if inflated.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(Bytes::from(inflated))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).expect("in memory");
        encoder.finish().expect("in memory")
    }

    #[test]
    fn a_gzip_body_within_the_cap_inflates_to_what_was_sent() {
        let body = br#"{"event":"signup"}"#.repeat(100);
        let inflated = inflate_gzip(&gzip(&body), body.len()).expect("within the cap");
        assert_eq!(&inflated[..], &body[..]);
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_cap_without_inflating_it_whole() {
        // 64 MiB of zeros compress to about 64 KiB; the cap stops inflation at 16 KiB + 1.
        let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());
        let err = inflate_gzip(&bomb, MAX_API_BODY_BYTES).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code(), "payload_too_large");
    }

    #[test]
    fn a_body_that_is_not_gzip_is_a_bad_request() {
        let err = inflate_gzip(b"not gzip at all", MAX_API_BODY_BYTES).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
