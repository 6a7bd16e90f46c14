//! Authentication of the API routes: the key a request presents decides its tenant.
//!
//! A key is read from `X-API-Key`, `Authorization: Bearer <key>`, or HTTP Basic with the key as
//! the user name (how Segment's libraries send a write key). The [`Caller`] extractor hands the
//! authenticated [`Principal`] to handlers; a route outside the gate cannot name a tenant at all.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use pulse_tenants::{AuthError, Authenticator, Principal, Scope};

use crate::ApiError;

/// Requests refused at the gate, by reason (`missing_key`, `invalid_key`, `forbidden`,
/// `unavailable`).
pub const AUTH_FAILURES_TOTAL: &str = "pulse_auth_failures_total";

/// What the gate in front of a router checks.
#[derive(Debug, Clone)]
pub struct ApiGuard {
    /// Checks keys (cached).
    pub authenticator: Authenticator,
}

/// The key a request presents, if any: `X-API-Key`, else `Authorization` (Bearer, or Basic with
/// the key as user name).
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok().map(|key| key.trim().to_owned());
    }
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let user = decoded
            .split_once(':')
            .map_or(decoded.as_str(), |(user, _)| user);
        return Some(user.to_owned());
    }
    None
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match &err {
            AuthError::Missing | AuthError::Invalid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string())
            }
            AuthError::Forbidden { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", err.to_string())
            }
            AuthError::Backend(port) => {
                tracing::warn!(error = %port, "cannot check an API key");
                ApiError::unavailable("cannot check the API key right now; retry")
            }
        }
    }
}

fn failure_reason(err: &AuthError) -> &'static str {
    match err {
        AuthError::Missing => "missing_key",
        AuthError::Invalid => "invalid_key",
        AuthError::Forbidden { .. } => "forbidden",
        AuthError::Backend(_) => "unavailable",
    }
}

/// `routes` behind the gate: every request must present a key whose scope permits `scope`.
pub fn require(routes: Router, guard: Arc<ApiGuard>, scope: Scope) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(
        (guard, scope),
        authenticate,
    ))
}

async fn authenticate(
    State((guard, scope)): State<(Arc<ApiGuard>, Scope)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = presented_key(request.headers());
    match guard
        .authenticator
        .authenticate(presented.as_deref(), scope)
        .await
    {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => {
            metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => failure_reason(&err)).increment(1);
            let unauthorized = matches!(err, AuthError::Missing | AuthError::Invalid);
            let mut response = ApiError::from(err).into_response();
            if unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pulse\", Basic realm=\"pulse\""),
                );
            }
            response
        }
    }
}

/// The authenticated caller of a route behind [`require`].
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                tracing::error!(path = %parts.uri.path(), "a tenant route is not behind the key check");
                ApiError::internal("this route is not behind the key check; this is a bug on our side")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_read_from_x_api_key_bearer_or_basic_user_name() {
        let basic = base64::engine::general_purpose::STANDARD.encode("pk_key:");
        let basic_no_colon = base64::engine::general_purpose::STANDARD.encode("pk_key");
        for (pairs, expected) in [
            (vec![("x-api-key", "pk_key")], Some("pk_key")),
            (vec![("authorization", "Bearer pk_key")], Some("pk_key")),
            (vec![("authorization", "bearer  pk_key ")], Some("pk_key")),
            (
                vec![("authorization", format!("Basic {basic}").leak() as &str)],
                Some("pk_key"),
            ),
            (
                vec![(
                    "authorization",
                    format!("Basic {basic_no_colon}").leak() as &str,
                )],
                Some("pk_key"),
            ),
            (vec![("authorization", "Basic !!!")], None),
            (vec![("authorization", "Digest pk_key")], None),
            (vec![], None),
        ] {
            assert_eq!(
                presented_key(&headers(&pairs)).as_deref(),
                expected,
                "{pairs:?}"
            );
        }
    }
}
