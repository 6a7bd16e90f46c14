//! Shared helpers of the end-to-end tests: a Pulse application on port 0 with its own data
//! directory, and HTTP shortcuts.

#![allow(dead_code, unreachable_pub)]

pub mod job_handler;
pub mod webhook;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pulse::backends::Backends;
use pulse::{Application, Config};
use pulse_conformance::faults::FaultyLog;
use pulse_conformance::services;
use pulse_core::log::EventLog;
use pulse_runtime::{CancellationToken, Role};
use serde_json::Value;

/// The prefix of every topic, group and cache key the calling test uses: its own, so a
/// `pulse up` (or another test run, or a benchmark) on the same Kafka and Redis neither joins its
/// groups nor reads its topics — and neither does another test of the same binary running at
/// the same time (two tests' engines in one consumer group would take each other's partitions).
/// The apps one test starts share it (a restart, a split deployment). It is derived from the
/// test's thread (the test harness names it after the test), so call it from the test's body.
pub fn test_prefix() -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        // `scripts/test` names the run, so it can delete the run's topics when it ends.
        let run = std::env::var("PULSE_TEST_RUN")
            .ok()
            .filter(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(|run| format!("{}-", run.to_ascii_lowercase()))
            .unwrap_or_default();
        format!("test-{run}{}-{:04x}", std::process::id(), fastrand::u16(..))
    });
    let test = std::thread::current().name().map_or(0, |name| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        name.hash(&mut hasher);
        hasher.finish() as u32
    });
    format!("{run}-{test:08x}.")
}

/// Holds the other tests of this binary that take it until the guard drops: for tests that stop
/// and start brokers of their own or time a recovery, whose waits a neighbour's broker start-up
/// (a JVM) on two cores can starve.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// The engine's group and topics in this test run.
pub fn names() -> pulse_surge::engine::EngineNames {
    pulse_surge::engine::EngineNames::with_prefix(&test_prefix())
}

/// Every request of a test gives up after this, so a hang fails with a message.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// A client that sends `api_key` with every request.
pub fn client_with_key(api_key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", api_key.parse().expect("header value"));
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .default_headers(headers)
        .build()
        .expect("http client")
}

pub struct TestApp {
    pub base: String,
    /// A `full` key of the `default` tenant, made for this app.
    pub api_key: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub log: std::sync::Arc<dyn EventLog>,
    _data_dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(configure: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut app = Self::spawn_in(data_dir.path(), configure).await;
        app._data_dir = Some(data_dir);
        app
    }

    /// An application on an existing data directory (to restart on the same data).
    pub async fn spawn_in(data_dir: &std::path::Path, configure: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_roles(data_dir, &Role::ALL, configure).await
    }

    /// An application playing only `roles` (a split deployment in one test process).
    pub async fn spawn_roles(
        data_dir: &std::path::Path,
        roles: &[Role],
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_wrapped(data_dir, roles, configure, |backends| backends).await
    }

    /// An application on `data_dir` whose log reports what the engine is handed and commits
    /// (see [`wait_until_engine_settled`]).
    pub async fn spawn_watched(
        data_dir: &std::path::Path,
        configure: impl FnOnce(&mut Config),
    ) -> (Self, FaultyLog) {
        Self::spawn_watched_armed(data_dir, configure, |_| {}).await
    }

    /// [`TestApp::spawn_watched`], with faults armed on the log by `arm` before any role starts
    /// (so the engine's first join or first poll already meets them).
    pub async fn spawn_watched_armed(
        data_dir: &std::path::Path,
        configure: impl FnOnce(&mut Config),
        arm: impl FnOnce(&FaultyLog),
    ) -> (Self, FaultyLog) {
        let mut watched = None;
        let app = Self::spawn_wrapped(data_dir, &Role::ALL, configure, |mut backends| {
            let log = FaultyLog::wrap(backends.log.clone());
            arm(&log);
            backends.log = std::sync::Arc::new(log.clone());
            watched = Some(log);
            backends
        })
        .await;
        (app, watched.expect("the log was wrapped"))
    }

    /// An application whose backends pass through `wrap` first (to put a fault-injecting
    /// adapter of `pulse_conformance::faults` in front of a real one).
    pub async fn spawn_wrapped(
        data_dir: &std::path::Path,
        roles: &[Role],
        configure: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Backends) -> Backends,
    ) -> Self {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.to_owned(),
            prefix: test_prefix(),
            // The seed's surge examples count every driver that pings; a test of rides turns
            // automatic dispatch on (matched drivers leave the supply).
            dispatch: pulse_marketplace::dispatch::DispatchConfig {
                auto: false,
                ..Default::default()
            },
            ..Config::default()
        };
        configure(&mut config);
        // Logs go to the test's captured output, shown when it fails.
        config.log_format = pulse::config::LogFormat::Pretty;
        pulse::telemetry::init(&config).expect("telemetry");
        let shutdown = CancellationToken::new();
        let backends = wrap(Backends::open(&config).await.expect("backends open"));
        let app = Application::build_on(
            &config,
            backends,
            roles.iter().copied().collect(),
            shutdown.clone(),
        )
        .await
        .expect("application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let log = app.backends().log.clone();
        // As an operator would: `pulse keys create --tenant default`.
        let tenants = pulse::wiring::tenants::service(
            &app.backends().store,
            std::sync::Arc::new(pulse_core::clock::SystemClock),
        );
        let api_key = tenants
            .create_key("default", pulse_tenants::Scope::Full)
            .await
            .expect("a key for the default tenant")
            .api_key;
        let running = tokio::spawn(app.run_until_stopped());
        Self {
            base,
            http: client_with_key(&api_key),
            api_key,
            shutdown,
            running,
            log,
            _data_dir: None,
        }
    }

    /// A client that sends this app's key.
    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {path}: {body}")),
        )
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits (30 s at most) for the application to stop by itself, and returns how it ended.
    pub async fn stopped_by_itself(self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("the application stops by itself within 30 s")
            .expect("task joins")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running)
            .await
            .expect("drains within 10 s")
            .expect("task joins")
            .expect("clean stop");
    }
}

pub fn distributed(config: &mut Config, store_url: String) {
    config.store_url = Some(store_url);
    config.log_url = services::kafka_url();
    config.cache_url = services::redis_url();
}

/// A pickup point of its own for every test run, so runs sharing Redis and Kafka never count
/// each other's orders.
pub fn unique_point() -> (f64, f64) {
    let bits = uuid::Uuid::new_v4().as_u128();
    let lat = -40.0 + (bits % 80_000) as f64 / 1_000.0;
    let lng = -170.0 + ((bits >> 32) % 340_000) as f64 / 1_000.0;
    (lat, lng)
}

/// Polls the quote at a point until `want` holds (90 s at most: a Kafka broker coming back, a
/// group rebalancing); quotes must always answer 200.
pub async fn wait_for_quote(
    app: &TestApp,
    lat: f64,
    lng: f64,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (status, quote) = app
            .get_json(&format!("/api/v1/quote?lat={lat}&lng={lng}"))
            .await;
        assert_eq!(status, 200, "quotes never fail: {quote}");
        if want(&quote) {
            return quote;
        }
        if started.elapsed() >= Duration::from_secs(90) {
            // Where along the pipeline the events stopped: placed, relayed, consumed.
            let (_, metrics) = app.get("/metrics").await;
            let pipeline: Vec<&str> = metrics
                .lines()
                .filter(|line| {
                    [
                        "orders_placed_total",
                        "pulse_outbox_backlog",
                        "pulse_relay_",
                        "pulse_engine_",
                        "pulse_consumer_lag",
                    ]
                    .iter()
                    .any(|name| line.starts_with(name))
                })
                .collect();
            panic!(
                "the quote never reached the expected state; last: {quote}\npipeline metrics:\n{}",
                pipeline.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reports `drivers` available drivers at a point, then places `orders` orders picked up there
/// (alternating between `apps`, so several gateways can share the work); returns the orders.
pub async fn seed_cell(
    apps: &[&TestApp],
    lat: f64,
    lng: f64,
    drivers: usize,
    orders: usize,
) -> Vec<Value> {
    seed_cell_with_ids(apps, lat, lng, drivers, orders).await.1
}

/// [`seed_cell`], also returning the drivers' ids: the keys of their pings on the log, as
/// order ids are the keys of the orders' events.
pub async fn seed_cell_with_ids(
    apps: &[&TestApp],
    lat: f64,
    lng: f64,
    drivers: usize,
    orders: usize,
) -> (Vec<String>, Vec<Value>) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let driver_ids: Vec<String> = (0..drivers).map(|n| format!("d-{run}-{n}")).collect();
    for (n, driver) in driver_ids.iter().enumerate() {
        let app = apps[n % apps.len()];
        let path = format!("/api/v1/drivers/{driver}/location");
        let body = serde_json::json!({ "lat": lat, "lng": lng, "available": true });
        let (status, answer) = app.post_json(&path, &body).await;
        assert_eq!(status, 202, "{answer}");
    }
    let mut placed = Vec::with_capacity(orders);
    for rider in 0..orders {
        let app = apps[rider % apps.len()];
        let body = serde_json::json!({
            "user_id": format!("rider-{run}-{rider}"),
            "pickup": { "lat": lat, "lng": lng },
            "dropoff": { "lat": lat, "lng": lng },
        });
        let (status, order) = app.post_json("/api/v1/orders", &body).await;
        assert_eq!(status, 201, "{order}");
        assert_eq!(order["status"], "PENDING");
        placed.push(order);
    }
    (driver_ids, placed)
}

/// The log keys of `orders`' events: their order ids.
pub fn order_ids(orders: &[Value]) -> Vec<String> {
    orders
        .iter()
        .map(|order| order["order_id"].as_str().expect("an order id").to_owned())
        .collect()
}

/// Waits (60 s at most) until `condition` holds, polling every 50 ms; panics naming `what`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the surge engine was handed a record with each of `keys` and committed every
/// delivery of them: their effects are in the cache and the multiplier derived from them is
/// published (the engine publishes before it commits). "It stays at X" is checked after this,
/// not after a sleep.
pub async fn wait_until_engine_settled(log: &FaultyLog, keys: &[String]) {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    wait_until(
        "the engine committed every delivery of the test's records",
        || log.group(&names().group).settled(&keys),
    )
    .await;
}

/// The multiplier quoted at a point now.
pub async fn multiplier_at(app: &TestApp, lat: f64, lng: f64) -> Value {
    let (status, quote) = app
        .get_json(&format!("/api/v1/quote?lat={lat}&lng={lng}"))
        .await;
    assert_eq!(status, 200, "{quote}");
    quote["multiplier"].clone()
}

/// Places an order for `user` at a fresh point through `app`'s API, sending `headers` (trace
/// context, …); expects 201 and returns the response.
pub async fn place_order_with_headers(
    app: &TestApp,
    user: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let (lat, lng) = unique_point();
    let mut request = app.client().post(format!("{}/api/v1/orders", app.base));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .json(&serde_json::json!({
            "user_id": user,
            "pickup": { "lat": lat, "lng": lng },
            "dropoff": { "lat": lat, "lng": lng },
        }))
        .send()
        .await
        .expect("order request");
    assert_eq!(response.status(), 201);
    response
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// A Redis server of this test's own, so stopping it disturbs no other test.
pub struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                services::missing(
                    "redis-server (installed by scripts/services up)",
                    "PATH",
                    err,
                )
            });
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, like a hung
    /// Redis.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        // A paused server would not die of SIGKILL's default handling until resumed.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
    }
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric == name && labels.iter().all(|label| series.contains(label)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

/// A child process killed when dropped, so a failing test leaves none behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `pulse serve --role <role>` process on the distributed backends (`store_url`, the test
/// services' Kafka and Redis) under `prefix`, with the settings `env` adds.
pub fn serve_role(role: &str, store_url: &str, prefix: &str, env: &[(&str, &str)]) -> Killed {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pulse"));
    command
        .args(["serve", "--role", role, "--log-level", "warn"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--store", store_url])
        .args(["--log", &services::kafka_url()])
        .args(["--cache", &services::redis_url()])
        .env_remove("RUST_LOG")
        .env("PULSE_PREFIX", prefix)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Killed(
        command
            .spawn()
            .unwrap_or_else(|err| panic!("a {role} process: {err}")),
    )
}

/// Where a test's Pulse keeps its state: the embedded default, or a fresh PostgreSQL database
/// with the test services' Kafka and Redis.
#[derive(Debug, Clone)]
pub enum Mode {
    Embedded,
    Distributed { store_url: String },
}

impl Mode {
    /// A fresh PostgreSQL database, Kafka and Redis.
    pub async fn distributed() -> Self {
        Mode::Distributed {
            store_url: services::fresh_postgres_database().await,
        }
    }

    /// Points `config` at this mode's backends, and lifts the `api` quota out of the way of a
    /// test's bursts.
    pub fn backends(&self, config: &mut Config) {
        config.quotas.api = pulse_tenants::QuotaSetting {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        if let Mode::Distributed { store_url } = self {
            distributed(config, store_url.clone());
        }
    }
}
