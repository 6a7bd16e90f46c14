//! The event gateway end to end, on the embedded default and on PostgreSQL + Kafka + Redis:
//! the seed's Quick Start lands in `events_raw`; retries are duplicates across a restart and
//! across two gateway processes; Segment calls (Basic key, `writeKey` in a `text/plain` body,
//! gzip, CORS); the limits; `events.processed` and `kafka_sink`; a webhook sink that fails, is
//! down for a while, or never recovers (dead letters, then a redrive) — each event delivered
//! once, signature verified by the receiver.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::webhook::{delivered_once, receiver, Receiver, WEBHOOK_SECRET};
use common::TestApp;
use pulse::config::Secret;
use pulse::Config;
use pulse_gateway::envelope::CanonicalEvent;
use pulse_store::{Database, Sql, StoreOptions};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "gateway-test-admin-token-0123456789";

fn gateway_config(config: &mut Config) {
    config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
    // The test's receivers listen on loopback.
    config.webhooks.allow_private_targets = true;
    config.gateway.redeliver_interval_ms = 50;
}

fn embedded(config: &mut Config) {
    gateway_config(config);
}

async fn store_of(url: &str) -> Database {
    Database::connect(url, &StoreOptions::default())
        .await
        .expect("store")
}

/// Rows of `events_raw` with this event id: `(tenant, event_type, payload)`.
async fn archived(store: &Database, event_id: &str) -> Vec<(String, String, Value)> {
    let rows = store
        .fetch_all(
            &Sql::new(
                "SELECT tenant_id, event_type, CAST(payload AS TEXT), CAST(plugin_versions AS TEXT) \
                 FROM events_raw WHERE event_id = $1",
            )
            .bind(event_id),
        )
        .await
        .expect("events_raw");
    rows.iter()
        .map(|row| {
            let versions: Value = serde_json::from_str(&row.text(3).unwrap()).unwrap();
            assert_eq!(
                versions["postgres_sink"], "1.0.0",
                "plugin versions recorded"
            );
            (
                row.text(0).unwrap(),
                row.text(1).unwrap(),
                serde_json::from_str(&row.text(2).unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Waits until `event_id` is in `events_raw` (without waiting for repeats).
async fn wait_present(store: &Database, event_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while archived(store, event_id).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{event_id} never reached events_raw"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_archived(store: &Database, event_id: &str) -> Vec<(String, String, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = archived(store, event_id).await;
        if !rows.is_empty() {
            // A repeat arriving later would add a second row: give it the time to.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return archived(store, event_id).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {event_id} never reached events_raw"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = common::client_with_key(key)
        .post(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = common::client()
        .request(method, format!("{}/admin/v1{path}", app.base))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn embedded_events_arrive_once_whatever_the_door() {
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(data.path(), embedded).await;
    let url = format!("sqlite://{}/pulse.db", data.path().display());
    events_arrive_once(&app, &url).await;
    // Across a restart on the same data: the same event id is a duplicate still.
    let (status, first) = send(
        &app,
        &app.api_key,
        "/v1/events",
        json!({"event_type": "restart_probe", "event_id": "restart-1", "user_id": "u"}),
    )
    .await;
    assert_eq!((status, &first["duplicate"]), (202, &json!(false)));
    app.stop().await;
    let app = TestApp::spawn_in(data.path(), embedded).await;
    let (status, again) = send(
        &app,
        &app.api_key,
        "/v1/events",
        json!({"event_type": "restart_probe", "event_id": "restart-1", "user_id": "u"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["received_at"], first["received_at"]);
    assert_eq!(
        wait_archived(&store_of(&url).await, "restart-1")
            .await
            .len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn distributed_events_arrive_once_whatever_the_door() {
    let store_url = pulse_conformance::services::fresh_postgres_database().await;
    let url = store_url.clone();
    let app = TestApp::spawn(|config| {
        gateway_config(config);
        common::distributed(config, url);
    })
    .await;
    events_arrive_once(&app, &store_url).await;
    // A second gateway process on the same store and log: the retry it takes is a duplicate.
    let url = store_url.clone();
    let data = tempfile::tempdir().unwrap();
    let second = TestApp::spawn_roles(data.path(), &[pulse_runtime::Role::Gateway], |config| {
        gateway_config(config);
        common::distributed(config, url);
    })
    .await;
    let body = json!({"event_type": "two_doors", "event_id": "two-doors-1", "user_id": "u"});
    let (status, first) = send(&app, &app.api_key, "/v1/events", body.clone()).await;
    assert_eq!((status, &first["duplicate"]), (202, &json!(false)));
    let (status, again) = send(&second, &app.api_key, "/v1/events", body).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (202, &json!(true)),
        "{again}"
    );
    assert_eq!(
        wait_archived(&store_of(&store_url).await, "two-doors-1")
            .await
            .len(),
        1
    );
    second.stop().await;
    app.stop().await;
}

async fn events_arrive_once(app: &TestApp, store_url: &str) {
    let store = store_of(store_url).await;
    let key = app.api_key.clone();

    // The seed's Quick Start, as is.
    let quick_start = json!({"event_type": "user_sign_up", "user_id": "u_123", "ip": "8.8.8.8",
        "timestamp": "2025-03-01T12:00:00Z"});
    let (status, accepted) = send(app, &key, "/v1/events", quick_start).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["duplicate"], false);
    let event_id = accepted["event_id"]
        .as_str()
        .expect("an event id")
        .to_owned();
    let rows = wait_archived(&store, &event_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "default");
    assert_eq!(rows[0].1, "user_sign_up");
    assert_eq!(rows[0].2, json!({"user_id": "u_123", "ip": "8.8.8.8"}));

    // The same event id twice: one row, the second answer a duplicate with the first's time.
    let id = unique("ev");
    let body = json!({"event_type": "retry_probe", "event_id": id, "user_id": "u"});
    let (_, first) = send(app, &key, "/v1/events", body.clone()).await;
    let (status, second) = send(app, &key, "/v1/events", body).await;
    assert_eq!(status, 202);
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["received_at"], first["received_at"]);
    assert_eq!(wait_archived(&store, &id).await.len(), 1);

    // Only an idempotency key: one derived id, the same on the retry.
    let key_body = json!({"event_type": "keyed", "idempotency_key": unique("key"), "user_id": "u"});
    let (_, keyed) = send(app, &key, "/v1/events", key_body.clone()).await;
    let (_, keyed_again) = send(app, &key, "/v1/events", key_body).await;
    assert_eq!(keyed["event_id"], keyed_again["event_id"]);
    assert_eq!(keyed_again["duplicate"], true);

    // A batch: one result per event, the bad one named, a repeat inside the batch a duplicate.
    let batch_id = unique("batch");
    let (status, batch) = send(
        app,
        &key,
        "/v1/events/batch",
        json!({"events": [
            {"event_type": "page_view", "event_id": batch_id, "user_id": "u"},
            {"user_id": "no type"},
            {"event_type": "page_view", "event_id": batch_id, "user_id": "u"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(
        (
            batch["accepted"].as_u64(),
            batch["duplicates"].as_u64(),
            batch["rejected"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(batch["results"][1]["error"]["code"], "invalid_event");
    assert_eq!(wait_archived(&store, &batch_id).await.len(), 1);

    // Segment: the key as HTTP Basic user name (as the libraries send it).
    let message_id = unique("ajs");
    let response = common::client()
        .post(format!("{}/v1/identify", app.base))
        .basic_auth(&key, Some(""))
        .json(
            &json!({"userId": "u_9", "traits": {"email": "a@example.com"}, "messageId": message_id,
            "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:00:02Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"success": true})
    );
    let rows = wait_archived(&store, &message_id).await;
    assert_eq!(rows[0].1, "identify");
    assert_eq!(rows[0].2["traits"]["email"], "a@example.com");

    // The browser's form: writeKey in a text/plain body, from another origin.
    let page_id = unique("page");
    let response = common::client()
        .post(format!("{}/v1/page", app.base))
        .header("content-type", "text/plain")
        .header("origin", "https://shop.example")
        .body(
            json!({"writeKey": key, "anonymousId": "anon-1", "name": "Home", "messageId": page_id})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let rows = wait_archived(&store, &page_id).await;
    assert!(
        rows[0].2.get("writeKey").is_none(),
        "the write key is not kept: {:?}",
        rows[0].2
    );
    let preflight = common::client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/track", app.base))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    // A gzip batch.
    let tracked = unique("gz");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(
        json!({"batch": [{"type": "track", "userId": "u", "event": "Order Completed",
        "messageId": tracked, "properties": {"total": 9007199254740993_u64}}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let response = common::client()
        .post(format!("{}/v1/batch", app.base))
        .basic_auth(&key, None::<&str>)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rows = wait_archived(&store, &tracked).await;
    assert_eq!(
        rows[0].2["properties"]["total"].as_u64(),
        Some(9_007_199_254_740_993),
        "int64 kept"
    );

    // Limits and keys, each a JSON error naming what is wrong.
    let (status, refused) = send(
        app,
        &key,
        "/v1/events",
        json!({"event_type": "big", "blob": "x".repeat(40 * 1024)}),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (413, Some("event_too_large"))
    );
    let (status, refused) = send(app, &key, "/v1/events", json!({"event_type": "bad type!"})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("invalid_event_type"))
    );
    let (status, refused) = send(
        app,
        &key,
        "/v1/events",
        json!({"event_type": "x", "timestamp": "2200-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("timestamp_out_of_range"))
    );
    let (status, refused) = send(
        app,
        &key,
        "/v1/events",
        json!({"event_type": "x", "tenant_id": "other"}),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("field_reserved"))
    );
    let (status, _) = send(
        app,
        "pk_aaaaaaaaaaaa_0000000000000000000000000000000000000000",
        "/v1/events",
        json!({"event_type": "x"}),
    )
    .await;
    assert_eq!(status, 401);
    let events: Vec<Value> = (0..2_001).map(|_| json!({"event_type": "x"})).collect();
    let (status, refused) = send(app, &key, "/v1/events/batch", json!({"events": events})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("too_many_events"))
    );

    // An ingest key opens the doors and nothing else.
    let (status, created) = admin(
        app,
        reqwest::Method::POST,
        "/keys",
        Some(json!({"tenant_id": "default", "scope": "ingest"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let ingest_key = created["api_key"].as_str().unwrap().to_owned();
    let (status, _) = send(
        app,
        &ingest_key,
        "/v1/events",
        json!({"event_type": "from_the_app"}),
    )
    .await;
    assert_eq!(status, 202);
    let response = common::client_with_key(&ingest_key)
        .get(format!("{}/api/v1/events/dead-letters", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // What the pipeline processed is on events.processed, the envelope intact.
    let processed = format!("{}events.processed", common::test_prefix());
    let mut consumer = app
        .log
        .consumer(&unique("probe"), &[processed.as_str()])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    'find: loop {
        for record in consumer
            .poll(500, Duration::from_millis(500))
            .await
            .unwrap()
        {
            let event = CanonicalEvent::decode(&record.payload).expect("a canonical event");
            if event.event_id == tracked {
                assert_eq!(event.event_type, "track");
                break 'find;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not on events.processed"
        );
    }
}

#[tokio::test]
async fn embedded_a_webhook_that_fails_is_retried_parked_dead_lettered_and_redriven() {
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(data.path(), embedded).await;
    let url = format!("sqlite://{}/pulse.db", data.path().display());
    webhook_delivery(&app, &url).await;
    app.stop().await;
}

#[tokio::test]
async fn distributed_a_webhook_that_fails_is_retried_parked_dead_lettered_and_redriven() {
    let store_url = pulse_conformance::services::fresh_postgres_database().await;
    let url = store_url.clone();
    let app = TestApp::spawn(|config| {
        gateway_config(config);
        common::distributed(config, url);
    })
    .await;
    webhook_delivery(&app, &store_url).await;
    app.stop().await;
}

async fn webhook_delivery(app: &TestApp, store_url: &str) {
    let store = store_of(store_url).await;
    let tenant = unique("hook").replace('-', "_")[..20].to_owned();
    let (status, created) = admin(
        app,
        reqwest::Method::POST,
        "/tenants",
        Some(json!({"tenant_id": tenant})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["api_key"].as_str().unwrap().to_owned();
    let state = Arc::new(Mutex::new(Receiver {
        failures_left: 3,
        failing_status: 503,
        ..Receiver::default()
    }));
    let hook_url = receiver(state.clone()).await;

    // A bad pipeline is refused, naming its field.
    let (status, refused) = admin(app, reqwest::Method::PUT, &format!("/tenants/{tenant}/pipeline"),
        Some(json!({"plugins": {"sinks": [{"name": "webhook_sink", "config": {"secret": WEBHOOK_SECRET}}]}}))).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("plugins.sinks[0].config"),
        "{refused}"
    );
    let (status, _) = admin(
        app,
        reqwest::Method::PUT,
        "/tenants/nobody-here/pipeline",
        Some(json!({"plugins": {"sinks": [{"name": "postgres_sink"}]}})),
    )
    .await;
    assert_eq!(status, 404);

    let pipeline = json!({"plugins": {"transform": [{"name": "passthrough"}], "sinks": [
        {"name": "postgres_sink", "config": {"table": "events_raw"}},
        {"name": "webhook_sink", "id": "hook", "config": {"url": hook_url, "secret": WEBHOOK_SECRET,
            "timeout_ms": 2000},
            "retry": {"max_attempts": 4, "initial_backoff_ms": 300, "max_backoff_ms": 1000}},
        {"name": "kafka_sink", "config": {"topic": "analytics_events"}}]}});
    let (status, stored) = admin(
        app,
        reqwest::Method::PUT,
        &format!("/tenants/{tenant}/pipeline"),
        Some(pipeline),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["origin"], "stored");
    assert_eq!(stored["version"], 1);

    // Fails three times, then takes it: delivered once, signed; postgres and kafka sinks too.
    let first = unique("w");
    let (status, _) = send(
        app,
        &key,
        "/v1/events",
        json!({"event_type": "order_paid", "event_id": first, "user_id": "u1"}),
    )
    .await;
    assert_eq!(status, 202);
    delivered_once(&state, std::slice::from_ref(&first)).await;
    let rows = wait_archived(&store, &first).await;
    assert_eq!(
        rows,
        vec![(
            tenant.clone(),
            "order_paid".to_owned(),
            json!({"user_id": "u1"})
        )]
    );
    let topic = format!("{}analytics_events", common::test_prefix());
    let mut consumer = app
        .log
        .consumer(&unique("probe"), &[topic.as_str()])
        .await
        .unwrap();
    let records = consumer.poll(10, Duration::from_secs(10)).await.unwrap();
    assert!(
        records.iter().any(|record| record.header("pulse.event_id").map(|v| &v[..]) == Some(first.as_bytes())),
        "kafka_sink appended the event"
    );

    // Down for a while (shorter than the retry budget): events wait — the other sinks do not —
    // and then arrive once each.
    state.lock().unwrap().down = true;
    let waiting: Vec<String> = (0..5).map(|_| unique("down")).collect();
    for id in &waiting {
        let (status, _) = send(
            app,
            &key,
            "/v1/events",
            json!({"event_type": "order_paid", "event_id": id, "user_id": "u2"}),
        )
        .await;
        assert_eq!(status, 202);
    }
    for id in &waiting {
        wait_present(&store, id).await;
    }
    assert!(
        waiting.iter().all(|id| !state
            .lock()
            .unwrap()
            .answered
            .get(id)
            .is_some_and(|s| s.contains(&200))),
        "nothing was taken while the receiver was down"
    );
    state.lock().unwrap().down = false;
    delivered_once(&state, &waiting).await;
    assert!(
        dead_letters(app, &key).await.is_empty(),
        "within its budget nothing is dead"
    );

    // Never recovers: the budget runs out, the events are dead letters with their reason.
    state.lock().unwrap().down = true;
    state.lock().unwrap().failing_status = 500;
    let doomed: Vec<String> = (0..3).map(|_| unique("doomed")).collect();
    for id in &doomed {
        send(
            app,
            &key,
            "/v1/events",
            json!({"event_type": "order_refunded", "event_id": id, "user_id": "u3"}),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = dead_letters(app, &key).await;
        if doomed
            .iter()
            .all(|id| letters.iter().any(|letter| &letter["event_id"] == id))
        {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letter = letters
        .iter()
        .find(|letter| letter["event_id"] == doomed[0])
        .unwrap();
    assert_eq!(letter["reason"], "retries_exhausted");
    assert_eq!(letter["sink"], "hook");
    assert_eq!(letter["plugin"], "webhook_sink");
    assert_eq!(letter["attempts"], 4);
    assert!(
        letter["last_error"].as_str().unwrap().contains("500"),
        "{letter}"
    );
    assert_eq!(letter["event"]["event_id"], doomed[0]);
    let response = common::client_with_key(&key)
        .get(format!(
            "{}/api/v1/events/dead-letters?event_type=order_refunded&limit=2",
            app.base
        ))
        .send()
        .await
        .unwrap();
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 2);
    assert!(page["next"].is_i64(), "{page}");
    // Another tenant sees none of them.
    let (status, others) = common::client_with_key(&app.api_key)
        .get(format!("{}/api/v1/events/dead-letters?sink=hook", app.base))
        .send()
        .await
        .map(|response| (response.status().as_u16(), response))
        .unwrap();
    assert_eq!(status, 200);
    assert!(others.json::<Value>().await.unwrap()["dead_letters"]
        .as_array()
        .unwrap()
        .is_empty());

    // Then the receiver recovers and a redrive delivers each once, with its original id.
    state.lock().unwrap().down = false;
    let (status, redriven) = send(
        app,
        &key,
        "/api/v1/events/dead-letters/redrive",
        json!({"event_type": "order_refunded"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(redriven["redriven"].as_u64(), Some(3));
    delivered_once(&state, &doomed).await;
    for id in &doomed {
        assert_eq!(
            wait_archived(&store, id).await.len(),
            1,
            "the redrive reached only the hook"
        );
    }
    assert!(
        dead_letters(app, &key).await.is_empty(),
        "redriven letters leave the list"
    );
}

async fn dead_letters(app: &TestApp, key: &str) -> Vec<Value> {
    let response = common::client_with_key(key)
        .get(format!("{}/api/v1/events/dead-letters", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["dead_letters"].as_array().unwrap().clone()
}
