//! `/healthz`, `/readyz` and `/metrics`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::OpsState;

pub(crate) fn routes(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, Json<Value>) {
    let probes = state.checks.iter().map(|check| async {
        let outcome = tokio::time::timeout(state.check_timeout, check.check()).await;
        let verdict = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", state.check_timeout)),
        };
        (check.name().to_owned(), verdict)
    });
    // Concurrently, so one slow backend does not delay the others' verdicts.
    let results = futures::future::join_all(probes).await;
    let mut checks = BTreeMap::new();
    let mut failing = Vec::new();
    for (name, verdict) in results {
        match verdict {
            Ok(()) => {
                checks.insert(name, "ok".to_owned());
            }
            Err(message) => {
                failing.push(name.clone());
                checks.insert(name, message);
            }
        }
    }
    if failing.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        )
    } else {
        let body = json!({
            "status": "unavailable",
            "error": {
                "code": "not_ready",
                "message": format!("not answering: {}", failing.join(", ")),
            },
            "checks": checks,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
