//! The application end to end, in process: embedded backends and the real PostgreSQL, Kafka and
//! Redis, through the HTTP surface every process serves.

use std::time::Duration;

use pulse::{Application, Config};
use pulse_conformance::services;
use pulse_core::log::EventLog;
use pulse_runtime::{CancellationToken, Role};
use serde_json::Value;

struct TestApp {
    base: String,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
    log: std::sync::Arc<dyn EventLog>,
    _data_dir: tempfile::TempDir,
}

impl TestApp {
    async fn spawn(configure: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.path().to_owned(),
            ..Config::default()
        };
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let app = Application::build(&config, Role::ALL.into_iter().collect(), shutdown.clone())
            .await
            .expect("application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let log = app.backends().log.clone();
        let running = tokio::spawn(app.run_until_stopped());
        Self {
            base,
            shutdown,
            running,
            log,
            _data_dir: data_dir,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {path}: {body}")),
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("drains within 10 s")
            .expect("task joins")
            .expect("clean stop");
    }
}

fn distributed(config: &mut Config, store_url: String) {
    config.store_url = Some(store_url);
    config.log_url = services::kafka_url();
    config.cache_url = services::redis_url();
}

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

    let response = reqwest::get(format!("{}/metrics", app.base))
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

    for topic in pulse::backends::CONTRACT_TOPICS {
        assert!(
            app.log
                .partition_count(topic)
                .await
                .expect("contract topic exists")
                >= 1
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
