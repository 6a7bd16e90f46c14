//! Path parameters whose every rejection is a JSON 400, and in which every parameter is an
//! identifier of one strict charset ([`validate_id`]): no `.` or `..`, no percent-decoded
//! control, NUL or bidi characters, no invalid UTF-8, at most [`MAX_ID_CHARS`].

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, Path, RawPathParams};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Longest identifier in a path (driver, order, tenant and key ids).
pub const MAX_ID_CHARS: usize = 64;

/// Checks that `value`, the path parameter `name`, is 1 to [`MAX_ID_CHARS`] of
/// `[A-Za-z0-9_-]`: 400 `invalid_request` naming it otherwise.
pub fn validate_id(name: &str, value: &str) -> Result<(), ApiError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{name} must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9_-]"
        )))
    }
}

/// Like [`axum::extract::Path`], but every parameter is first checked with [`validate_id`], and
/// every rejection is a 4xx `{"error":{…}}` instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| match rejection {
                RawPathParamsRejection::InvalidUtf8InPathParam(invalid) => {
                    ApiError::bad_request(format!(
                        "{}; path identifiers are 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9_-]",
                        invalid.body_text()
                    ))
                }
                other => ApiError::bad_request(other.body_text()),
            })?;
        for (name, value) in &raw {
            validate_id(name, value)?;
        }
        let Path(value) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
        Ok(ApiPath(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_of_the_simulator_and_the_tests_are_valid() {
        let longest = "x".repeat(MAX_ID_CHARS);
        for id in [
            "driver-17",
            "d-0f9c2a4b8e6d4c1a9b3e5f7a2c4d6e8f-3",
            "traced_driver",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            longest.as_str(),
        ] {
            validate_id("driver_id", id).unwrap_or_else(|_| panic!("{id} is valid"));
        }
    }

    #[test]
    fn dots_controls_bidi_and_overlong_identifiers_are_refused() {
        let overlong = "x".repeat(MAX_ID_CHARS + 1);
        for id in [
            "",
            ".",
            "..",
            "a.b",
            "a:b",
            "a b",
            "a\0b",
            "a\nb",
            "a\u{202e}b",
            "a\u{2066}b",
            "é",
            overlong.as_str(),
        ] {
            let err = validate_id("driver_id", id).expect_err(id);
            assert_eq!(err.code(), "invalid_request");
            assert!(
                err.message().starts_with("driver_id must be"),
                "{}",
                err.message()
            );
        }
    }
}
