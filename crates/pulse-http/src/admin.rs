//! `/admin/v1`: tenants and keys, for the operator, behind the admin token (`Authorization:
//! Bearer <token>`). The same operations as `pulse tenants …` and `pulse keys …`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pulse_tenants::{
    AdminToken, IssuedKey, KeyRecord, QuotaClass, QuotaSetting, Scope, Tenant, TenantError,
    TenantQuotas, Tenants,
};
use serde::{Deserialize, Serialize};

use crate::api::{rfc3339, ApiJson};
use crate::{ApiError, ApiPath};

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Tenant and key administration.
    pub tenants: Tenants,
    /// The token that opens these routes.
    pub token: AdminToken,
}

/// A tenant as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct TenantBody {
    tenant_id: String,
    quotas: TenantQuotas,
    created_at: String,
}

impl From<Tenant> for TenantBody {
    fn from(tenant: Tenant) -> Self {
        Self {
            tenant_id: tenant.tenant_id.to_string(),
            quotas: tenant.quotas,
            created_at: rfc3339(tenant.created_at_ms),
        }
    }
}

/// A key as the admin API shows it (never its secret, which only creation shows).
#[derive(Debug, Serialize)]
pub struct KeyBody {
    key_id: String,
    tenant_id: String,
    scope: Scope,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
}

impl From<KeyRecord> for KeyBody {
    fn from(key: KeyRecord) -> Self {
        Self {
            key_id: key.key_id.to_string(),
            tenant_id: key.tenant.to_string(),
            scope: key.scope,
            created_at: rfc3339(key.created_at_ms),
            revoked_at: key.revoked_at_ms.map(rfc3339),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        match &err {
            TenantError::InvalidTenant(_)
            | TenantError::InvalidKeyId(_)
            | TenantError::InvalidQuota(_) => ApiError::bad_request(err.to_string()),
            TenantError::Reserved | TenantError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            TenantError::UnknownTenant(_) | TenantError::UnknownKey(_) => {
                ApiError::not_found(err.to_string())
            }
            TenantError::Backend(port) if port.is_retryable() => {
                tracing::warn!(error = %port, "tenant store unavailable");
                ApiError::unavailable("the tenant store is unavailable; retry")
            }
            TenantError::Backend(port) => {
                tracing::error!(error = %port, "tenant store failed");
                ApiError::internal("the tenant store failed; this is a bug on our side")
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    tenant_id: String,
    /// The `api` quota, per second.
    #[serde(default)]
    rate: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant_id: String,
    #[serde(default)]
    scope: Option<Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuota {
    per_second: u32,
    /// Defaults to one second's worth.
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Serialize)]
struct TenantList {
    tenants: Vec<TenantBody>,
}

#[derive(Debug, Serialize)]
struct KeyList {
    keys: Vec<KeyBody>,
}

type AdminState = State<Arc<AdminApi>>;

async fn list_tenants(State(api): AdminState) -> Result<Json<TenantList>, ApiError> {
    let tenants = api.tenants.list().await?;
    Ok(Json(TenantList {
        tenants: tenants.into_iter().map(TenantBody::from).collect(),
    }))
}

async fn create_tenant(
    State(api): AdminState,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let (_, key) = api.tenants.create(&body.tenant_id, body.rate).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

async fn get_tenant(
    State(api): AdminState,
    ApiPath(tenant_id): ApiPath<String>,
) -> Result<Json<TenantBody>, ApiError> {
    Ok(Json(api.tenants.get(&tenant_id).await?.into()))
}

fn quota_class(name: &str) -> Result<QuotaClass, ApiError> {
    QuotaClass::parse(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no quota class {name:?}; the classes are api, events and jobs"
        ))
    })
}

async fn set_quota(
    State(api): AdminState,
    ApiPath((tenant_id, class)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SetQuota>,
) -> Result<Json<TenantBody>, ApiError> {
    let quota = QuotaSetting {
        per_second: body.per_second,
        burst: body.burst.unwrap_or(body.per_second),
    };
    let tenant = api
        .tenants
        .set_quota(&tenant_id, quota_class(&class)?, Some(quota))
        .await?;
    Ok(Json(tenant.into()))
}

async fn clear_quota(
    State(api): AdminState,
    ApiPath((tenant_id, class)): ApiPath<(String, String)>,
) -> Result<Json<TenantBody>, ApiError> {
    let tenant = api
        .tenants
        .set_quota(&tenant_id, quota_class(&class)?, None)
        .await?;
    Ok(Json(tenant.into()))
}

async fn list_keys(
    State(api): AdminState,
    ApiPath(tenant_id): ApiPath<String>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = api.tenants.keys(&tenant_id).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyBody::from).collect(),
    }))
}

async fn create_key(
    State(api): AdminState,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let key = api
        .tenants
        .create_key(&body.tenant_id, body.scope.unwrap_or(Scope::Full))
        .await?;
    Ok((StatusCode::CREATED, Json(key)))
}

async fn revoke_key(
    State(api): AdminState,
    ApiPath(key_id): ApiPath<String>,
) -> Result<Json<KeyBody>, ApiError> {
    Ok(Json(api.tenants.revoke_key(&key_id).await?.into()))
}

/// Lets through only requests bearing the admin token.
async fn require_admin(State(api): AdminState, request: Request, next: Next) -> Response {
    let presented = crate::auth::bearer_token(request.headers());
    if presented.is_some_and(|token| api.token.matches(token)) {
        return next.run(request).await;
    }
    metrics::counter!(crate::auth::AUTH_FAILURES_TOTAL, "reason" => "admin_token").increment(1);
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs the admin token: Authorization: Bearer <token> (PULSE_ADMIN_TOKEN, \
         or the admin-token file in the data directory)",
    )
    .into_response()
}

/// The admin routes, to nest under `/admin/v1`: each request bounded by `timeout`, bodies by
/// `body`, all behind the admin token.
pub fn admin_router(
    api: AdminApi,
    timeout: std::time::Duration,
    body: crate::BodyLimits,
) -> Router {
    let api = Arc::new(api);
    let routes = Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/{tenant_id}", get(get_tenant))
        .route(
            "/tenants/{tenant_id}/quotas/{class}",
            put(set_quota).delete(clear_quota),
        )
        .route("/tenants/{tenant_id}/keys", get(list_keys))
        .route("/keys", post(create_key))
        .route("/keys/{key_id}/revoke", post(revoke_key))
        .with_state(api.clone());
    crate::api::bounded(routes, timeout, body)
        .layer(axum::middleware::from_fn_with_state(api, require_admin))
}
