//! `/admin/v1/profiles/…`: the operator's reconciliation of hot against cold, the rebuild of a
//! tenant's profiles from the archive, and the audit log of repairs. They run in the server,
//! where the hot copy lives (an embedded deployment's is in its memory), and answer as NDJSON
//! lines — progress as it goes, then the result — so `pulse profiles …` can draw a progress bar
//! and a long rebuild outlives the request deadline. A client that goes away does not stop the
//! work half-way.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pulse_core::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::admin::AdminState;
use crate::api::{rfc3339, ApiJson};
use crate::openapi::responses::*;
use crate::ApiError;

/// Records per page of a rebuild.
const REBUILD_PAGE: usize = 1_000;
/// Progress lines buffered for a slow reader before the work waits for it.
const PROGRESS_BUFFER: usize = 64;

fn ndjson(mut lines: mpsc::Receiver<Value>) -> Response {
    let stream = futures::stream::poll_fn(move |cx| {
        lines.poll_recv(cx).map(|line| {
            line.map(|value| {
                let mut text = value.to_string();
                text.push('\n');
                Ok::<_, Infallible>(Bytes::from(text))
            })
        })
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Which reconciliation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReconcileRequest)]
pub(crate) struct ReconcileBody {
    /// Every live profile (default: the sample the periodic pass takes, the most recently
    /// changed `profiles.reconcile_sample`).
    #[serde(default)]
    full: bool,
}

/// Compare the hot copies with the store and repair those that differ (each repair audited).
/// Answers NDJSON: `{"progress": {"checked", "not_cached", "repaired": {reason: n}}}` lines,
/// then `{"done": {…}}` or `{"error": {"code", "message"}}`.
#[utoipa::path(
    post,
    path = "/admin/v1/profiles/reconcile",
    operation_id = "reconcileProfiles",
    tag = "admin",
    request_body(content = ReconcileBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Progress, then the report, one JSON object per line.", content_type = "application/x-ndjson", body = String),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn reconcile(
    axum::extract::State(api): AdminState,
    ApiJson(body): ApiJson<ReconcileBody>,
) -> Response {
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    let service = api.profiles.clone();
    let sample = service.engine().settings().reconcile_sample;
    tokio::spawn(async move {
        let progress = tx.clone();
        let outcome = if body.full {
            service
                .reconcile_all(move |report| {
                    let _ = progress.try_send(json!({ "progress": report }));
                })
                .await
        } else {
            service.reconcile_sample(sample).await
        };
        let last = match outcome {
            Ok(report) => json!({ "done": report }),
            Err(err) => {
                tracing::warn!(error = %err, "profile reconciliation failed");
                json!({ "error": { "code": "reconcile_failed", "message": err.to_string() } })
            }
        };
        let _ = tx.send(last).await;
    });
    ndjson(rx)
}

/// Which tenant to rebuild.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RebuildRequest)]
pub(crate) struct RebuildBody {
    /// One tenant (default: every tenant with archived profile events).
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: Option<String>,
}

/// Recompute profiles from the archive (`events_raw`): each tenant's profile state is reset
/// and every archived identify, track, page, screen, alias and group event applied again, in
/// time order. Answers NDJSON: `{"tenant", "progress": {"events", "total"}}` lines, a
/// `{"tenant", "done": {…}}` per tenant, then `{"done": {"tenants": n}}` or `{"error": …}`.
#[utoipa::path(
    post,
    path = "/admin/v1/profiles/rebuild",
    operation_id = "rebuildProfiles",
    tag = "admin",
    request_body(content = RebuildBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Progress, then each tenant's report, one JSON object per line.", content_type = "application/x-ndjson", body = String),
        (status = 400, response = BadRequest),
        (status = 401, response = AdminUnauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn rebuild(
    axum::extract::State(api): AdminState,
    ApiJson(body): ApiJson<RebuildBody>,
) -> Result<Response, ApiError> {
    let only = body
        .tenant_id
        .map(|raw| TenantId::parse(&raw).map_err(|err| ApiError::bad_request(err.to_string())))
        .transpose()?;
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    let service = api.profiles.clone();
    tokio::spawn(async move {
        let tenants = match only {
            Some(tenant) => Ok(vec![tenant]),
            None => service.engine().store().archived_tenants().await,
        };
        let outcome = async {
            let tenants = tenants?;
            for tenant in &tenants {
                let progress = tx.clone();
                let name = tenant.as_str().to_owned();
                let report = service
                    .rebuild(tenant, REBUILD_PAGE, move |events, total| {
                        let _ = progress.try_send(
                            json!({"tenant": name, "progress": {"events": events, "total": total}}),
                        );
                    })
                    .await?;
                tracing::info!(tenant = %tenant, events = report.events, "profiles rebuilt from the archive");
                let _ = tx.send(json!({"tenant": tenant.as_str(), "done": report})).await;
            }
            Ok::<_, pulse_core::PortError>(tenants.len())
        }
        .await;
        let last = match outcome {
            Ok(count) => json!({"done": {"tenants": count}}),
            Err(err) => {
                tracing::warn!(error = %err, "profile rebuild failed");
                json!({"error": {"code": "rebuild_failed", "message": err.to_string()}})
            }
        };
        let _ = tx.send(last).await;
    });
    Ok(ndjson(rx))
}

/// One repair of the audit log.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileRepair)]
pub(crate) struct RepairBody {
    tenant_id: String,
    profile_id: uuid::Uuid,
    /// The cache key repaired.
    key: String,
    /// `stale`, `corrupt` or `wrong_owner`.
    reason: String,
    /// What the hot copy held (at most 2,000 characters).
    found: String,
    /// RFC 3339.
    repaired_at: String,
}

/// The audit log of repairs.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProfileRepairs)]
pub(crate) struct RepairsBody {
    /// Newest first, at most 200.
    repairs: Vec<RepairBody>,
}

/// The newest repairs the reconciliation made, newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/profiles/repairs",
    operation_id = "listProfileRepairs",
    tag = "admin",
    responses(
        (status = 200, description = "The repairs.", body = RepairsBody),
        (status = 401, response = AdminUnauthorized),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn repairs(
    axum::extract::State(api): AdminState,
) -> Result<Json<RepairsBody>, ApiError> {
    let repairs = api
        .profiles
        .engine()
        .store()
        .repairs(200)
        .await
        .map_err(|err| ApiError::unavailable(format!("repairs could not be read: {err}")))?;
    Ok(Json(RepairsBody {
        repairs: repairs
            .into_iter()
            .map(|repair| RepairBody {
                tenant_id: repair.tenant.as_str().to_owned(),
                profile_id: repair.profile_id,
                key: repair.key,
                reason: repair.reason.to_owned(),
                found: repair.found,
                repaired_at: rfc3339(repair.repaired_at_ms),
            })
            .collect(),
    }))
}
