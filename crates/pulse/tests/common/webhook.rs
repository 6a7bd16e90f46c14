//! A webhook receiver for the tests: it verifies every signature, answers as told (fail N
//! times, be down, recover) and records what it answered per event id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;

/// The secret the tests configure their webhook sinks with.
pub const WEBHOOK_SECRET: &str = "a-webhook-secret-of-some-length";

/// What a webhook receiver saw: per event id, the statuses it answered.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Answer this many requests with `failing_status` before succeeding.
    pub failures_left: usize,
    pub failing_status: u16,
    /// Always fail (a sink that never recovers) while set.
    pub down: bool,
    /// Take this long before answering (a slow receiver).
    pub delay: Duration,
    /// Requests received so far (counted before the delay).
    pub received: usize,
    pub answered: HashMap<String, Vec<u16>>,
    pub bad_signatures: usize,
}

pub async fn receiver(state: Arc<Mutex<Receiver>>) -> String {
    async fn hook(
        axum::extract::State(state): axum::extract::State<Arc<Mutex<Receiver>>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let delay = {
            let mut state = state.lock().unwrap();
            state.received += 1;
            state.delay
        };
        tokio::time::sleep(delay).await;
        let mut state = state.lock().unwrap();
        let timestamp = headers["pulse-timestamp"].to_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&body);
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        if headers["pulse-signature"].to_str().unwrap() != expected {
            state.bad_signatures += 1;
        }
        let event: Value = serde_json::from_slice(&body).unwrap();
        let id = event["event_id"].as_str().unwrap().to_owned();
        assert_eq!(headers["idempotency-key"].to_str().unwrap(), id);
        let status = if state.down {
            state.failing_status
        } else if state.failures_left > 0 {
            state.failures_left -= 1;
            state.failing_status
        } else {
            200
        };
        state.answered.entry(id).or_default().push(status);
        StatusCode::from_u16(status).unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// Waits until every one of `ids` got exactly one 2xx, then a little more for any repeat.
pub async fn delivered_once(state: &Arc<Mutex<Receiver>>, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let done = {
            let state = state.lock().unwrap();
            ids.iter().all(|id| {
                state
                    .answered
                    .get(id)
                    .is_some_and(|statuses| statuses.contains(&200))
            })
        };
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {:?}",
            state.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = state.lock().unwrap();
    for id in ids {
        let successes = state.answered[id]
            .iter()
            .filter(|status| **status == 200)
            .count();
        assert_eq!(
            successes, 1,
            "{id} delivered {successes} times: {:?}",
            state.answered[id]
        );
    }
    assert_eq!(state.bad_signatures, 0, "every signature verifies");
}
