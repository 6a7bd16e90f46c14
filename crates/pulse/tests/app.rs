//! The application end to end, in process: embedded backends and the real PostgreSQL, Kafka and
//! Redis, through the HTTP surface every process serves.

mod common;

use common::{distributed, TestApp};
use pulse_conformance::services;

async fn assert_operational_endpoints(app: &TestApp) {
    let (status, health) = app.get_json("/healthz").await;
    assert_eq!(
        (status, health),
        (200, serde_json::json!({ "status": "ok" }))
    );

    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    for backend in ["store", "log", "cache"] {
        assert_eq!(ready["checks"][backend], "ok", "{ready}");
    }

    let (status, missing) = app.get_json("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("/nope"));

    let response = common::client()
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("header")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("body");
    assert!(
        text.contains("# TYPE pulse_http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains(r#"route="/healthz""#), "{text}");
    assert!(
        text.contains("pulse_http_request_duration_seconds_bucket"),
        "{text}"
    );

    let declared: Vec<&str> = pulse::backends::declared_topics()
        .iter()
        .map(|topic| topic.name)
        .collect();
    assert_eq!(
        declared,
        [
            "demand.orders",
            "supply.updates",
            "events.ingest",
            "events.processed",
            "rides.events",
            "wallet.transactions",
            "profiles.updates",
            "pulse.dead-letter"
        ],
        "the contract topics, declared by their domains"
    );
    for topic in pulse::backends::declared_topics() {
        let name = topic.named(&common::test_prefix());
        assert!(
            app.log
                .partition_count(&name)
                .await
                .expect("declared topic exists under the run's prefix")
                >= 1,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_serves_health_readiness_and_metrics() {
    let app = TestApp::spawn(|_| {}).await;
    assert_operational_endpoints(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_mode_serves_health_readiness_and_metrics() {
    let store_url = services::fresh_postgres_database().await;
    let app = TestApp::spawn(|config| distributed(config, store_url)).await;
    assert_operational_endpoints(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_backend_that_stops_answering() {
    let store_url = services::fresh_postgres_database().await;
    let database = store_url.rsplit('/').next().expect("db name").to_owned();
    let app = TestApp::spawn(|config| distributed(config, store_url)).await;
    assert_eq!(app.get("/readyz").await.0, 200);

    // The database disappears under the running process.
    let admin = sqlx_admin().await;
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");

    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "unavailable");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("store"),
        "{ready}"
    );
    assert_ne!(ready["checks"]["store"], "ok");
    assert_eq!(ready["checks"]["cache"], "ok");
    assert_eq!(
        app.get("/healthz").await.0,
        200,
        "alive even when not ready"
    );
    app.stop().await;
}

async fn sqlx_admin() -> sqlx::PgPool {
    sqlx::PgPool::connect(&services::postgres_url())
        .await
        .unwrap_or_else(|err| services::missing("PostgreSQL", &services::postgres_url(), err))
}
