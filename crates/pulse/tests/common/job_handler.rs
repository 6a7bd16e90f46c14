//! An HTTP job handler for the tests: it verifies every call's signature with the handler's
//! secret, answers as each job's payload tells it (`{"fail": n, "status": s}`: fail the first n
//! calls with s; `{"sleep_ms": t}`: answer after t; `{"hold": true}`: keep the first call open
//! until released), and records every call per job id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use tokio::sync::Notify;

/// One call as the handler saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub attempt: u64,
    pub at: Instant,
    pub traceparent: Option<String>,
    pub tenant: String,
}

#[derive(Debug, Default)]
pub struct Handler {
    /// The signing secret the handler was registered with (set after the PUT).
    pub secrets: Vec<String>,
    pub calls: HashMap<String, Vec<Call>>,
    pub bad_signatures: usize,
    /// Calls being answered now, and the most at once.
    pub in_flight: usize,
    pub most_in_flight: usize,
}

/// The handler and what releases held calls.
#[derive(Debug, Clone, Default)]
pub struct HandlerState {
    pub handler: Arc<Mutex<Handler>>,
    pub release: Arc<Notify>,
}

impl HandlerState {
    pub fn calls_of(&self, job_id: &str) -> Vec<Call> {
        self.handler
            .lock()
            .unwrap()
            .calls
            .get(job_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn total_calls(&self) -> usize {
        self.handler
            .lock()
            .unwrap()
            .calls
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Starts the handler on a loopback port; its URL.
pub async fn start(state: HandlerState) -> String {
    async fn run(
        axum::extract::State(state): axum::extract::State<HandlerState>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        let job: Value = serde_json::from_slice(&body).unwrap();
        let id = job["job_id"].as_str().unwrap().to_owned();
        let calls = {
            let mut handler = state.handler.lock().unwrap();
            let timestamp = headers["pulse-timestamp"].to_str().unwrap();
            let signed = handler.secrets.iter().any(|secret| {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
                mac.update(format!("{timestamp}.").as_bytes());
                mac.update(&body);
                headers["pulse-signature"].to_str().unwrap()
                    == format!("v1={}", hex::encode(mac.finalize().into_bytes()))
            });
            if !signed {
                handler.bad_signatures += 1;
            }
            assert_eq!(headers["idempotency-key"].to_str().unwrap(), id);
            let calls = handler.calls.entry(id.clone()).or_default();
            calls.push(Call {
                attempt: headers["pulse-job-attempt"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                at: Instant::now(),
                traceparent: headers
                    .get("traceparent")
                    .map(|value| value.to_str().unwrap().to_owned()),
                tenant: job["tenant_id"].as_str().unwrap().to_owned(),
            });
            let count = calls.len();
            handler.in_flight += 1;
            handler.most_in_flight = handler.most_in_flight.max(handler.in_flight);
            count
        };
        let answer = answer(&state, &job, calls).await;
        state.handler.lock().unwrap().in_flight -= 1;
        answer
    }
    async fn answer(state: &HandlerState, job: &Value, calls: usize) -> (StatusCode, String) {
        let plan = &job["payload"];
        if plan["hold"].as_bool() == Some(true) && calls == 1 {
            state.release.notified().await;
            return (StatusCode::OK, "\"first\"".into());
        }
        if let Some(sleep) = plan["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        let fail = plan["fail"].as_u64().unwrap_or(0) as usize;
        if calls <= fail {
            let status = plan["status"].as_u64().unwrap_or(500) as u16;
            return (
                StatusCode::from_u16(status).unwrap(),
                "handler says no".into(),
            );
        }
        (StatusCode::OK, format!("{{\"call\":{calls}}}"))
    }
    let app = axum::Router::new()
        .route("/run", axum::routing::post(run))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/run")
}
