//! Authentication of the API routes: the key a request presents decides its tenant.
//!
//! A key is read from `X-API-Key`, `Authorization: Bearer <key>`, or HTTP Basic with the key as
//! the user name (how Segment's libraries send a write key). The [`Caller`] extractor hands the
//! authenticated [`Principal`] to handlers; a route outside the gate cannot name a tenant at all.
//!
//! After the key, the tenant's quota of the router's class is charged one unit; over it the
//! answer is 429 with `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers-10 (e.g. `RateLimit-Policy: "api";q=4000;w=2` and
//! `RateLimit: "api";r=0;t=1`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use pulse_core::rate_limit::{Quota, RateDecision, RateLimiter};
use pulse_core::TenantId;
use pulse_tenants::config::QuotasConfig;
use pulse_tenants::{AuthError, Authenticator, Principal, QuotaClass, QuotaSetting, Scope};

use crate::ApiError;

/// Requests refused at the gate, by reason (`missing_key`, `invalid_key`, `forbidden`,
/// `unavailable`).
pub const AUTH_FAILURES_TOTAL: &str = "pulse_auth_failures_total";

/// Requests answered through the gate, by tenant and outcome (`allowed`, `rate_limited`).
/// The tenant label is bounded: tenants are created by the operator, never by clients, and
/// refused keys name no tenant (they are counted in [`AUTH_FAILURES_TOTAL`]).
pub const TENANT_REQUESTS_TOTAL: &str = "pulse_tenant_requests_total";

/// What the gate in front of a router checks.
#[derive(Debug, Clone)]
pub struct ApiGuard {
    authenticator: Authenticator,
    limiter: Arc<dyn RateLimiter>,
    quotas: QuotasConfig,
    key_prefix: String,
    /// What charging a tenant's class needs, built once per tenant, class and quota: the hot
    /// path formats no key and looks up no metric.
    charges: Arc<Mutex<Charges>>,
}

/// Per tenant, one slot per quota class (indexed by [`class_slot`]).
type Charges = HashMap<TenantId, [Option<Arc<Charge>>; 3]>;

fn class_slot(class: QuotaClass) -> usize {
    match class {
        QuotaClass::Api => 0,
        QuotaClass::Events => 1,
        QuotaClass::Jobs => 2,
    }
}

#[derive(Debug)]
struct Charge {
    setting: QuotaSetting,
    quota: Option<Quota>,
    key: String,
    allowed: metrics::Counter,
    limited: metrics::Counter,
}

impl ApiGuard {
    /// A gate checking keys with `authenticator` and charging quotas (`quotas` for tenants
    /// without their own) to `limiter`, under the deployment's `key_prefix`.
    pub fn new(
        authenticator: Authenticator,
        limiter: Arc<dyn RateLimiter>,
        quotas: QuotasConfig,
        key_prefix: &str,
    ) -> Self {
        Self {
            authenticator,
            limiter,
            quotas,
            key_prefix: key_prefix.to_owned(),
            charges: Arc::default(),
        }
    }

    fn charge_of(&self, principal: &Principal, class: QuotaClass) -> Arc<Charge> {
        let setting = self.quotas.effective(&principal.quotas, class);
        let mut charges = self
            .charges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = class_slot(class);
        if let Some(charge) = charges
            .get(&principal.tenant)
            .and_then(|slots| slots[slot].as_ref())
            .filter(|charge| charge.setting == setting)
        {
            return charge.clone();
        }
        let counter = |outcome: &'static str| {
            metrics::counter!(
                TENANT_REQUESTS_TOTAL,
                "tenant" => principal.tenant.to_string(),
                "class" => class.as_str(),
                "outcome" => outcome
            )
        };
        let quota = Quota::new(f64::from(setting.per_second), setting.burst)
            .inspect_err(|err| {
                tracing::error!(tenant = %principal.tenant, error = %err, "unusable quota; not limiting");
            })
            .ok();
        let charge = Arc::new(Charge {
            setting,
            quota,
            // `{prefix}{tenant namespace}quota:{class}`, e.g. `t:acme:quota:api`.
            key: format!(
                "{}{}quota:{}",
                self.key_prefix,
                principal.tenant.key_namespace(),
                class.as_str()
            ),
            allowed: counter("allowed"),
            limited: counter("rate_limited"),
        });
        charges.entry(principal.tenant.clone()).or_default()[slot] = Some(charge.clone());
        charge
    }

    /// Charges `cost` units of `class` to the caller's tenant: `Err` is the 429 to answer.
    /// A limiter error lets the request through (the ingress fails open; the limiter's own
    /// fallback already answered if it could).
    pub async fn charge(
        &self,
        principal: &Principal,
        class: QuotaClass,
        cost: u32,
    ) -> Result<(), Response> {
        let charge = self.charge_of(principal, class);
        let Some(quota) = &charge.quota else {
            return Ok(());
        };
        let decision = match self.limiter.check(&charge.key, quota, cost).await {
            Ok(decision) => decision,
            Err(err) => {
                tracing::debug!(tenant = %principal.tenant, error = %err, "rate limiter failed; letting the request through");
                return Ok(());
            }
        };
        if decision.allowed {
            charge.allowed.increment(1);
            return Ok(());
        }
        charge.limited.increment(1);
        let setting = charge.setting;
        Err(rate_limited(
            principal,
            class,
            setting.per_second,
            setting.burst,
            &decision,
        ))
    }
}

/// Whole seconds, rounded up, at least `min`.
fn ceil_secs(duration: std::time::Duration, min: u64) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(min)
}

/// The 429: the house JSON error with `Retry-After`, `RateLimit-Policy` and `RateLimit`.
fn rate_limited(
    principal: &Principal,
    class: QuotaClass,
    per_second: u32,
    burst: u32,
    decision: &RateDecision,
) -> Response {
    let retry_after = ceil_secs(decision.retry_after, 1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "tenant {} is over its {} quota ({per_second}/s, burst {burst}); retry after \
             {retry_after} s",
            principal.tenant,
            class.as_str()
        ),
    )
    .into_response();
    // The bucket refills completely in burst / rate seconds: the policy's window.
    let window = u64::from(burst)
        .div_ceil(u64::from(per_second.max(1)))
        .max(1);
    let headers = response.headers_mut();
    for (name, value) in [
        ("retry-after", retry_after.to_string()),
        (
            "ratelimit-policy",
            format!("\"{}\";q={burst};w={window}", class.as_str()),
        ),
        (
            "ratelimit",
            format!(
                "\"{}\";r={};t={}",
                class.as_str(),
                decision.remaining,
                ceil_secs(decision.reset, 0)
            ),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The `Authorization: Bearer` token of a request, if any (how the admin token is sent).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The key a request presents, if any: `X-API-Key`, else `Authorization` (Bearer, or Basic with
/// the key as user name).
pub fn presented_key(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok().map(|key| Cow::Borrowed(key.trim()));
    }
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Cow::Borrowed(credentials));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let user = decoded
            .split_once(':')
            .map_or(decoded.as_str(), |(user, _)| user);
        return Some(Cow::Owned(user.to_owned()));
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

/// `routes` behind the gate: every request must present a key whose scope permits `scope`,
/// and is charged one unit of its tenant's `class` quota (a route whose cost is its batch's
/// length passes [`QuotaClass`] `None` here and calls [`ApiGuard::charge`] itself).
pub fn require(
    routes: Router,
    guard: Arc<ApiGuard>,
    scope: Scope,
    class: Option<QuotaClass>,
) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(
        (guard, scope, class),
        authenticate,
    ))
}

async fn authenticate(
    State((guard, scope, class)): State<(Arc<ApiGuard>, Scope, Option<QuotaClass>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = presented_key(request.headers());
    let principal = match guard.admit(presented.as_deref(), scope).await {
        Ok(principal) => principal,
        Err(refused) => return refused,
    };
    if let Some(class) = class {
        if let Err(refused) = guard.charge(&principal, class, 1).await {
            return refused;
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

impl ApiGuard {
    /// Checks a presented key (from wherever the route reads it: headers, or a Segment body's
    /// `writeKey`) for `scope`: the principal, or the 401 / 403 / 503 to answer, counted in
    /// [`AUTH_FAILURES_TOTAL`].
    pub async fn admit(
        &self,
        presented: Option<&str>,
        scope: Scope,
    ) -> Result<Arc<Principal>, Response> {
        self.authenticator
            .authenticate(presented, scope)
            .await
            .map_err(|err| {
                metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => failure_reason(&err))
                    .increment(1);
                let unauthorized = matches!(err, AuthError::Missing | AuthError::Invalid);
                let mut response = ApiError::from(err).into_response();
                if unauthorized {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"pulse\", Basic realm=\"pulse\""),
                    );
                }
                response
            })
    }
}

/// The authenticated caller of a route behind [`require`].
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Principal>>()
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
