//! `/admin/v1`: tenants, keys and the tenants' event pipelines, for the operator, behind the
//! admin token (`Authorization: Bearer <token>`). The same tenant and key operations as
//! `pulse tenants …` and `pulse keys …`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pulse_core::TenantId;
use pulse_gateway::book::{ActivePipeline, PipelineBook, PutPipelineError};
use pulse_tenants::{
    AdminToken, IssuedKey, KeyRecord, QuotaClass, QuotaSetting, Scope, Tenant, TenantError,
    TenantQuotas, Tenants,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{rfc3339, ApiJson};
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::{ApiError, ApiPath};

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct AdminApi {
    /// Tenant and key administration.
    pub tenants: Tenants,
    /// The tenants' event pipelines.
    pub pipelines: PipelineBook,
    /// Time, for the stored pipelines' stamps.
    pub clock: pulse_core::clock::SharedClock,
    /// The token that opens these routes.
    pub token: AdminToken,
    /// Customer profiles: their reconciliation and rebuild.
    pub profiles: pulse_profiles::service::ProfileService,
}

/// A tenant as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Tenant)]
pub struct TenantBody {
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: String,
    /// Its own quotas (a class left out uses the deployment's default).
    #[schema(value_type = domain::TenantQuotas)]
    quotas: TenantQuotas,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
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
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Key)]
pub struct KeyBody {
    #[schema(pattern = "^[a-z0-9]{12}$")]
    key_id: String,
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: String,
    #[schema(value_type = domain::Scope)]
    scope: Scope,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    created_at: String,
    /// When it was revoked (RFC 3339, UTC); absent while it works.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
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

/// A tenant to create, with its first key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTenant {
    /// 1 to 32 of `[a-z0-9_-]`.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: String,
    /// The `api` quota, per second.
    #[serde(default)]
    rate: Option<u32>,
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: String,
    /// What it opens; `full` when left out.
    #[serde(default)]
    #[schema(value_type = Option<domain::Scope>)]
    scope: Option<Scope>,
}

/// A quota to set: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetQuota {
    /// Sustained units per second.
    per_second: u32,
    /// Defaults to one second's worth.
    #[serde(default)]
    burst: Option<u32>,
}

/// Every tenant.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TenantList {
    tenants: Vec<TenantBody>,
}

/// A tenant's keys, revoked ones too.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<KeyBody>,
}

pub(crate) type AdminState = State<Arc<AdminApi>>;

/// List the tenants.
#[utoipa::path(get, path = "/admin/v1/tenants", operation_id = "listTenants", tag = "admin",
    responses(
        (status = 200, description = "Every tenant.", body = TenantList),
        (status = 401, response = AdminUnauthorized),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn list_tenants(State(api): AdminState) -> Result<Json<TenantList>, ApiError> {
    let tenants = api.tenants.list().await?;
    Ok(Json(TenantList {
        tenants: tenants.into_iter().map(TenantBody::from).collect(),
    }))
}

/// Create a tenant and its first key (the key's secret is shown only here).
#[utoipa::path(post, path = "/admin/v1/tenants", operation_id = "createTenant", tag = "admin",
    request_body(content = CreateTenant, content_type = "application/json"),
    responses(
        (status = 201, description = "The tenant's first key.", body = domain::IssuedKey),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn create_tenant(
    State(api): AdminState,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let (_, key) = api.tenants.create(&body.tenant_id, body.rate).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Read a tenant.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}", operation_id = "getTenant",
    tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id.")),
    responses(
        (status = 200, description = "The tenant.", body = TenantBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn get_tenant(
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

/// Set a tenant's own quota of a class.
#[utoipa::path(put, path = "/admin/v1/tenants/{tenant_id}/quotas/{class}",
    operation_id = "setTenantQuota", tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id."), ("class" = domain::QuotaClass, Path, description = "The quota class; another name is 404.")),
    request_body(content = SetQuota, content_type = "application/json"),
    responses(
        (status = 200, description = "The tenant, with the quota.", body = TenantBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 408, response = RequestTimeout),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn set_quota(
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

/// Clear a tenant's own quota of a class: the deployment's default applies again.
#[utoipa::path(delete, path = "/admin/v1/tenants/{tenant_id}/quotas/{class}",
    operation_id = "clearTenantQuota", tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id."), ("class" = domain::QuotaClass, Path, description = "The quota class; another name is 404.")),
    responses(
        (status = 200, description = "The tenant, without the quota.", body = TenantBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn clear_quota(
    State(api): AdminState,
    ApiPath((tenant_id, class)): ApiPath<(String, String)>,
) -> Result<Json<TenantBody>, ApiError> {
    let tenant = api
        .tenants
        .set_quota(&tenant_id, quota_class(&class)?, None)
        .await?;
    Ok(Json(tenant.into()))
}

/// List a tenant's keys (never their secrets).
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/keys", operation_id = "listTenantKeys",
    tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id.")),
    responses(
        (status = 200, description = "The tenant's keys.", body = KeyList),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn list_keys(
    State(api): AdminState,
    ApiPath(tenant_id): ApiPath<String>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = api.tenants.keys(&tenant_id).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyBody::from).collect(),
    }))
}

/// Create another key for a tenant (its secret is shown only here).
#[utoipa::path(post, path = "/admin/v1/keys", operation_id = "createKey", tag = "admin",
    request_body(content = CreateKey, content_type = "application/json"),
    responses(
        (status = 201, description = "The key.", body = domain::IssuedKey),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 408, response = RequestTimeout),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn create_key(
    State(api): AdminState,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let key = api
        .tenants
        .create_key(&body.tenant_id, body.scope.unwrap_or(Scope::Full))
        .await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Revoke a key: every process refuses it within the key cache's lifetime.
#[utoipa::path(post, path = "/admin/v1/keys/{key_id}/revoke", operation_id = "revokeKey",
    tag = "admin",
    params(("key_id" = String, Path, min_length = 12, max_length = 12, pattern = "^[a-z0-9]{12}$",
        description = "The key's public id (the part after `pk_`).")),
    responses(
        (status = 200, description = "The key, revoked.", body = KeyBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn revoke_key(
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

/// A tenant's event pipeline, as it runs.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TenantPipeline)]
pub(crate) struct PipelineBody {
    tenant_id: String,
    /// The stored version (0 for a configured or the default pipeline).
    version: i64,
    /// `stored` (this API), `configured` (the config file) or `default` (`postgres_sink` into
    /// `events_raw`).
    origin: String,
    /// The seed's shape: `{"plugins": {"transform": [...], "sinks": [{"name", "id"?,
    /// "config", "retry"?}]}}`.
    #[schema(value_type = Object)]
    pipeline: serde_json::Value,
}

fn pipeline_body(tenant: &TenantId, active: &ActivePipeline) -> PipelineBody {
    PipelineBody {
        tenant_id: tenant.to_string(),
        version: active.version,
        origin: serde_json::to_value(active.origin)
            .ok()
            .and_then(|origin| origin.as_str().map(str::to_owned))
            .unwrap_or_default(),
        pipeline: serde_json::to_value(&active.built.spec).unwrap_or_default(),
    }
}

async fn known_tenant(api: &AdminApi, tenant_id: &str) -> Result<TenantId, ApiError> {
    let tenant = api.tenants.get(tenant_id).await?;
    Ok(tenant.tenant_id)
}

/// Read a tenant's event pipeline.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/pipeline",
    operation_id = "getTenantPipeline", tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id.")),
    responses(
        (status = 200, description = "The pipeline the tenant runs.", body = PipelineBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn get_pipeline(
    State(api): AdminState,
    ApiPath(tenant_id): ApiPath<String>,
) -> Result<Json<PipelineBody>, ApiError> {
    let tenant = known_tenant(&api, &tenant_id).await?;
    Ok(Json(pipeline_body(&tenant, &api.pipelines.get(&tenant))))
}

/// Set a tenant's event pipeline.
///
/// Stored as the tenant's next version and run by every process within seconds. A pipeline
/// that does not build is refused naming its bad field (`plugins.sinks[0].config.url: ...`).
#[utoipa::path(put, path = "/admin/v1/tenants/{tenant_id}/pipeline",
    operation_id = "setTenantPipeline", tag = "admin",
    params(("tenant_id" = String, Path, min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$",
            description = "The tenant's id.")),
    request_body(content = Object, content_type = "application/json",
        example = json!({"plugins": {"transform": [{"name": "passthrough"}], "sinks": [
            {"name": "postgres_sink", "config": {"table": "events_raw"}},
            {"name": "webhook_sink", "config": {"url": "http://hooks.example/pulse",
                "secret": "a-long-shared-secret"}}]}})),
    responses(
        (status = 200, description = "The pipeline, stored and running.", body = PipelineBody),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn put_pipeline(
    State(api): AdminState,
    ApiPath(tenant_id): ApiPath<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<PipelineBody>, ApiError> {
    let tenant = known_tenant(&api, &tenant_id).await?;
    let active = api
        .pipelines
        .put(&tenant, &body, api.clock.now_ms())
        .await
        .map_err(|err| match err {
            PutPipelineError::Invalid(spec) => ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_pipeline",
                spec.to_string(),
            ),
            PutPipelineError::Backend(port) => {
                tracing::warn!(error = %port, "cannot store a pipeline");
                ApiError::unavailable("the pipeline could not be stored; retry")
            }
        })?;
    Ok(Json(pipeline_body(&tenant, &active)))
}

/// The admin routes, to nest under `/admin/v1`: each request bounded by `timeout`, bodies by
/// `body`, all behind the admin token.
pub fn admin_router(
    api: AdminApi,
    timeout: std::time::Duration,
    body: crate::BodyLimits,
) -> Router {
    let api = Arc::new(api);
    crate::api::bounded(admin_routes(), timeout, body)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_admin,
        ))
        .with_state(api)
}

/// What [`admin_router`] serves, before its state, its limits and its token check: to list
/// without a tenant store (the OpenAPI document's coverage test).
pub fn admin_routes() -> Router<Arc<AdminApi>> {
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/{tenant_id}", get(get_tenant))
        .route(
            "/tenants/{tenant_id}/quotas/{class}",
            put(set_quota).delete(clear_quota),
        )
        .route("/tenants/{tenant_id}/keys", get(list_keys))
        .route(
            "/tenants/{tenant_id}/pipeline",
            get(get_pipeline).put(put_pipeline),
        )
        .route("/keys", post(create_key))
        .route("/keys/{key_id}/revoke", post(revoke_key))
        .route(
            "/profiles/reconcile",
            post(crate::admin_profiles::reconcile),
        )
        .route("/profiles/rebuild", post(crate::admin_profiles::rebuild))
        .route("/profiles/repairs", get(crate::admin_profiles::repairs))
}
