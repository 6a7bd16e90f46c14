//! The event gateway's promises under faults, each test injecting the fault it claims to
//! survive: an append that fails (nothing acknowledged, nothing recorded: the retry lands), an
//! append whose acknowledgement is lost (the retry appends again; each sink takes the event
//! once), batches handed to the pipeline twice (each sink once), and an `events.processed`
//! append that fails mid-batch (the batch is retried before any sink saw it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::webhook::{delivered_once, receiver, Receiver, WEBHOOK_SECRET};
use common::TestApp;
use pulse::config::Secret;
use pulse::Config;
use pulse_conformance::faults::{AppendFault, FaultyLog, Redelivery};
use pulse_runtime::Role;
use pulse_store::{Database, Sql, StoreOptions};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "gateway-faults-admin-token-0123456789";

struct Setup {
    app: TestApp,
    log: FaultyLog,
    store: Database,
    key: String,
    hook: Arc<Mutex<Receiver>>,
    _dir: tempfile::TempDir,
}

/// An embedded app whose log is `FaultyLog`-wrapped (with `arm` applied before any role
/// starts), and a tenant whose pipeline archives into `events_raw` and calls a webhook.
async fn setup(arm: impl FnOnce(&FaultyLog)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut wrapped = None;
    let configure = |config: &mut Config| {
        config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
        config.webhooks.allow_private_targets = true;
        config.gateway.redeliver_interval_ms = 50;
        config.backend_timeout_secs = 1;
        config.gateway.inline_delivery_ms = 300;
    };
    let app = TestApp::spawn_wrapped(dir.path(), &Role::ALL, configure, |mut backends| {
        let log = FaultyLog::wrap(backends.log.clone());
        arm(&log);
        backends.log = Arc::new(log.clone());
        wrapped = Some(log);
        backends
    })
    .await;
    let log = wrapped.expect("wrapped");
    let store = Database::connect(
        &format!("sqlite://{}/pulse.db", dir.path().display()),
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        common::client()
            .request(method, format!("{}/admin/v1{path}", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let created: Value = admin(
        reqwest::Method::POST,
        "/tenants",
        json!({"tenant_id": "faults"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key = created["api_key"].as_str().expect("a key").to_owned();
    let hook = Arc::new(Mutex::new(Receiver::default()));
    let url = receiver(hook.clone()).await;
    let response = admin(
        reqwest::Method::PUT,
        "/tenants/faults/pipeline",
        json!({"plugins": {"sinks": [
            {"name": "postgres_sink"},
            {"name": "webhook_sink", "id": "hook", "config": {"url": url, "secret": WEBHOOK_SECRET},
                "retry": {"max_attempts": 20, "initial_backoff_ms": 50, "max_backoff_ms": 200}}]}}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    Setup {
        app,
        log,
        store,
        key,
        hook,
        _dir: dir,
    }
}

async fn send(setup: &Setup, body: Value) -> (u16, Value) {
    let response = common::client_with_key(&setup.key)
        .post(format!("{}/v1/events", setup.app.base))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn rows(store: &Database, event_id: &str) -> i64 {
    store
        .fetch_optional(
            &Sql::new(
                "SELECT COUNT(*) FROM events_raw WHERE tenant_id = 'faults' AND event_id = $1",
            )
            .bind(event_id),
        )
        .await
        .unwrap()
        .map(|row| row.i64(0).unwrap())
        .unwrap_or(0)
}

fn is_ingest(topic: &str) -> bool {
    topic.ends_with("events.ingest")
}

#[tokio::test]
async fn a_failed_append_acknowledges_nothing_and_records_no_key() {
    let setup = setup(|_| {}).await;
    setup.log.fail_appends_when(|topic, _| is_ingest(topic));
    let body = json!({"event_type": "paid", "event_id": "failed-append-1", "user_id": "u"});
    let (status, refused) = send(&setup, body.clone()).await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "unavailable");
    setup.log.heal();
    // Had the key been recorded before the append, this would be a "duplicate" of nothing.
    let (status, accepted) = send(&setup, body).await;
    assert_eq!(status, 202);
    assert_eq!(accepted["duplicate"], false, "{accepted}");
    delivered_once(&setup.hook, &["failed-append-1".to_owned()]).await;
    assert_eq!(rows(&setup.store, "failed-append-1").await, 1);
    setup.app.stop().await;
}

#[tokio::test]
async fn a_lost_acknowledgement_and_the_retry_reach_each_sink_once() {
    let setup = setup(|_| {}).await;
    // Written, but the answer never comes: the client sees a 503 and retries; the event is on
    // the log twice.
    setup.log.inject(AppendFault::LoseAck, 1);
    let body = json!({"event_type": "paid", "event_id": "lost-ack-1", "user_id": "u"});
    let (status, _) = send(&setup, body.clone()).await;
    assert_eq!(status, 503);
    setup.log.release();
    let (status, accepted) = send(&setup, body).await;
    assert_eq!(status, 202);
    assert_eq!(accepted["duplicate"], false);
    delivered_once(&setup.hook, &["lost-ack-1".to_owned()]).await;
    assert_eq!(rows(&setup.store, "lost-ack-1").await, 1);
    setup.app.stop().await;
}

#[tokio::test]
async fn batches_handed_over_twice_reach_each_sink_once() {
    let setup = setup(|log| log.redeliver(Redelivery::EveryBatchTwice)).await;
    let ids: Vec<String> = (0..5).map(|n| format!("twice-{n}")).collect();
    for id in &ids {
        let (status, _) = send(
            &setup,
            json!({"event_type": "paid", "event_id": id, "user_id": id}),
        )
        .await;
        assert_eq!(status, 202);
    }
    delivered_once(&setup.hook, &ids).await;
    let group = setup
        .log
        .group(&format!("{}pulse-pipeline-group", common::test_prefix()));
    assert!(
        group.delivered_on(&format!("{}events.ingest", common::test_prefix())) >= 2 * ids.len(),
        "the fault was armed"
    );
    for id in &ids {
        assert_eq!(rows(&setup.store, id).await, 1, "{id}");
    }
    setup.app.stop().await;
}

#[tokio::test]
async fn a_batch_whose_processed_append_fails_is_retried_before_any_sink_sees_it() {
    let setup = setup(|_| {}).await;
    let failing = Arc::new(std::sync::atomic::AtomicUsize::new(3));
    let left = failing.clone();
    setup.log.fail_appends_when(move |topic, _| {
        topic.ends_with("events.processed")
            && left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
    });
    let (status, _) = send(
        &setup,
        json!({"event_type": "paid", "event_id": "processed-1", "user_id": "u"}),
    )
    .await;
    assert_eq!(status, 202);
    delivered_once(&setup.hook, &["processed-1".to_owned()]).await;
    assert_eq!(
        failing.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the fault was met"
    );
    assert_eq!(rows(&setup.store, "processed-1").await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    setup.app.stop().await;
}

#[tokio::test]
async fn a_slow_sink_holds_up_the_other_sinks_for_the_inline_budget_at_most() {
    let setup = setup(|_| {}).await;
    setup.hook.lock().unwrap().delay = Duration::from_secs(4);
    let (status, _) = send(
        &setup,
        json!({"event_type": "paid", "event_id": "slow-1", "user_id": "u"}),
    )
    .await;
    assert_eq!(status, 202);
    // The pipeline's pass over that batch is now waiting for the slow receiver; the next event's
    // batch must not wait the 4 s with it.
    let waiting = std::time::Instant::now();
    while setup.hook.lock().unwrap().received == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the webhook was never called"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let (status, _) = send(
        &setup,
        json!({"event_type": "paid", "event_id": "slow-2", "user_id": "v"}),
    )
    .await;
    assert_eq!(status, 202);
    while rows(&setup.store, "slow-2").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never archived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the next batch waited for the slow webhook: {:?}",
        started.elapsed()
    );
    // The webhook still gets both, once each, from the redeliverer with its whole timeout.
    setup.hook.lock().unwrap().delay = Duration::from_millis(100);
    delivered_once(&setup.hook, &["slow-1".to_owned(), "slow-2".to_owned()]).await;
    setup.app.stop().await;
}
