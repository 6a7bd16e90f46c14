//! The `pulse` binary as a user runs it: start, probe, SIGTERM, and the failures a user meets
//! first (bad flags, unknown schemes, unreachable backends, a data directory in use).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pulse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pulse"));
    command
        .env_remove("RUST_LOG")
        .env("PULSE_LOG_FORMAT", "json")
        .env("PULSE_PREFIX", common::test_prefix());
    command
}

/// The key `pulse up` wrote into its data directory on first start.
fn created_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("api-key"))
        .expect("pulse up writes the default tenant's key into the data directory")
        .trim()
        .to_owned()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn start_up(data_dir: &Path, port: u16) -> Child {
    pulse()
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pulse up")
}

async fn wait_healthy(port: u16, child: &mut Child) {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            if response.status().is_success() {
                return;
            }
        }
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("pulse exited early with {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no /healthz within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("poll child").is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            panic!("pulse did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect output")
}

/// Runs a command that is expected to fail fast and returns its stderr.
fn expect_failure(command: &mut Command, code: i32) -> String {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let output = wait_with_deadline(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(
        !stderr.contains("stack backtrace"),
        "no backtrace: {stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_health_and_metrics_then_exits_zero_on_sigterm() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = start_up(data_dir.path(), port);
    wait_healthy(port, &mut child).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("pulse_http_requests_total"), "{metrics}");
    // Without an OTLP endpoint a trace is still started and named, but not recorded.
    let quote = common::client_with_key(&created_key(data_dir.path()))
        .get(format!("http://127.0.0.1:{port}/api/v1/quote?lat=1&lng=2"))
        .send()
        .await
        .expect("quote");
    let traceparent = quote.headers()["traceparent"].to_str().expect("ascii");
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    // The seed's Quick Start, with the key `pulse up` made: a row in events_raw.
    let accepted: serde_json::Value = common::client_with_key(&created_key(data_dir.path()))
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .json(
            &serde_json::json!({"event_type": "user_sign_up", "user_id": "u_123",
            "ip": "8.8.8.8", "timestamp": "2025-03-01T12:00:00Z"}),
        )
        .send()
        .await
        .expect("ingest")
        .json()
        .await
        .expect("JSON");
    let event_id = accepted["event_id"]
        .as_str()
        .expect("an event id")
        .to_owned();
    let store = pulse_store::Database::connect(
        &format!("sqlite://{}/pulse.db", data_dir.path().display()),
        &pulse_store::StoreOptions::default(),
    )
    .await
    .expect("the store");
    let started = Instant::now();
    loop {
        let row = store
            .fetch_optional(
                &pulse_store::Sql::new("SELECT event_type FROM events_raw WHERE event_id = $1")
                    .bind(event_id.as_str()),
            )
            .await
            .expect("events_raw");
        if let Some(row) = row {
            assert_eq!(row.text(0).expect("text"), "user_sign_up");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no row in events_raw"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    assert!(
        data_dir.path().join("pulse.db").exists(),
        "SQLite store in the data dir"
    );
    assert!(
        data_dir.path().join("log.db").exists(),
        "embedded log in the data dir"
    );

    signal(&child, "TERM");
    let output = wait_with_deadline(child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit status {:?}: {stderr}",
        output.status
    );
    assert!(stderr.contains("pulse stopped"), "{stderr}");
    for line in stderr.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("log lines are JSON: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut first = start_up(data_dir.path(), port);
    wait_healthy(port, &mut first).await;
    let line = expect_failure(
        pulse()
            .args(["up", "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(data_dir.path()),
        1,
    );
    assert!(line.contains("in use by another Pulse process"), "{line}");
    signal(&first, "INT");
    assert!(wait_with_deadline(first, Duration::from_secs(10))
        .status
        .success());
}

#[test]
fn a_bad_flag_is_one_line_and_exit_code_2() {
    let line = expect_failure(pulse().args(["up", "--bogus"]), 2);
    assert!(line.contains("--bogus"), "{line}");
}

#[test]
fn an_unknown_role_is_refused() {
    let line = expect_failure(pulse().args(["serve", "--role", "gateway,pricing"]), 1);
    assert!(line.contains("unknown role \"pricing\""), "{line}");
}

#[test]
fn an_unknown_scheme_is_refused_before_anything_opens() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let line = expect_failure(
        pulse()
            .args(["up", "--cache", "memcached://127.0.0.1:11211"])
            .arg("--data-dir")
            .arg(data_dir.path()),
        1,
    );
    assert!(line.contains("unsupported cache URL"), "{line}");
    assert!(
        !data_dir.path().join("pulse.db").exists(),
        "nothing was opened"
    );
}

#[test]
fn an_unreachable_backend_fails_fast_with_its_name() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let line = expect_failure(
        pulse()
            .args(["up", "--store", "postgres://pulse:secret@127.0.0.1:1/pulse"])
            .arg("--data-dir")
            .arg(data_dir.path()),
        1,
    );
    assert!(
        line.contains("store postgres://pulse:***@127.0.0.1:1/pulse"),
        "{line}"
    );
    assert!(!line.contains("secret"), "password redacted: {line}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let output = pulse()
        .arg("migrate")
        .arg("--data-dir")
        .arg(data_dir.path())
        .output()
        .expect("run migrate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("migrations applied to sqlite://"),
        "{stderr}"
    );
    assert!(data_dir.path().join("pulse.db").exists());
}

/// Waits until the Pulse on `port` has placed an order (the simulator is driving it).
async fn wait_for_placed_orders(port: u16) {
    let started = Instant::now();
    loop {
        let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if common::metric_sum(&page, "orders_placed_total", &[]).is_some_and(|placed| placed > 0.0)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the simulator placed no order within 60 s; orders_placed_total: {:?}",
            common::metric_sum(&page, "orders_placed_total", &[])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_pulse_with_the_simulator_and_stops_with_a_summary_on_ctrl_c() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = pulse()
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--drivers",
            "40",
            "--riders",
            "50",
            "--rate",
            "10",
            "--seed",
            "3",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pulse demo");
    wait_healthy(port, &mut child).await;
    // The map is up while the city runs.
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .expect("map page");
    assert_eq!(page.status(), 200);
    wait_for_placed_orders(port).await;
    signal(&child, "INT");
    let output = wait_with_deadline(child, Duration::from_secs(30));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "Watch the live surge map: http://127.0.0.1:{port}/"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("seed 3") && stdout.contains("errors   none"),
        "{stdout}"
    );
    let orders_line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("orders"))
        .expect("orders line");
    assert!(!orders_line.contains(" 0 sent"), "{orders_line}");
}

#[test]
fn a_bad_simulator_flag_is_one_line_and_exit_code_2() {
    let line = expect_failure(pulse().args(["simulate", "--city", "1,2,3"]), 2);
    assert!(line.contains("four numbers"), "{line}");
    let line = expect_failure(pulse().args(["simulate", "--duration", "soon"]), 2);
    assert!(line.contains("--duration"), "{line}");
    for (flag, value) in [
        ("--concurrency", "0"),
        ("--rate", "1e18"),
        ("--drivers", "1000000"),
        ("--target", "https://pulse.example"),
    ] {
        let line = expect_failure(pulse().args(["simulate", flag, value]), 2);
        assert!(line.contains(flag), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_otlp_endpoint_spans_are_exported_over_http() {
    // A stand-in collector: counts the OTLP/HTTP export requests it receives.
    let (sender, mut exports) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = sender.send((content_type, body.len()));
                ""
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let collector_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = pulse()
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{collector_port}"),
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pulse up");
    wait_healthy(port, &mut child).await;
    let quote = common::client_with_key(&created_key(data_dir.path()))
        .get(format!("http://127.0.0.1:{port}/api/v1/quote?lat=1&lng=2"))
        .send()
        .await
        .expect("quote");
    let traceparent = quote.headers()["traceparent"].to_str().expect("ascii");
    assert!(traceparent.ends_with("-01"), "recorded: {traceparent}");
    // SIGTERM flushes the batch exporter on the way out.
    signal(&child, "TERM");
    let output = wait_with_deadline(child, Duration::from_secs(15));
    assert!(output.status.success());
    let (content_type, size) = tokio::time::timeout(Duration::from_secs(10), exports.recv())
        .await
        .expect("an export within 10 s")
        .expect("collector channel");
    assert_eq!(content_type, "application/x-protobuf");
    assert!(size > 0, "spans in the export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_and_exits_zero_like_sigterm() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = start_up(data_dir.path(), port);
    wait_healthy(port, &mut child).await;
    signal(&child, "HUP");
    let output = wait_with_deadline(child, Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.contains("pulse stopped"), "{stderr}");
}

/// `pulse jobs …` on the data of a running `pulse up`: a job that died (its handler's port is
/// closed; one attempt) is listed, shown with its error, redriven and cancelled from the
/// terminal, each answer the API's JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_commands_list_show_redrive_and_cancel_while_pulse_runs() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = pulse()
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("PULSE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pulse up");
    wait_healthy(port, &mut child).await;
    let client = common::client_with_key(&created_key(data_dir.path()));
    let closed = free_port();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let registered = client
        .put(format!("{base}/handlers/mail.send"))
        .json(&serde_json::json!({"url": format!("http://127.0.0.1:{closed}/run"), "max_attempts": 1}))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), 201);
    let enqueued: serde_json::Value = client
        .post(format!("{base}/jobs"))
        .json(&serde_json::json!({"job_type": "mail.send", "payload": {"to": "a@example.com"}}))
        .send()
        .await
        .expect("enqueue")
        .json()
        .await
        .expect("json");
    let id = enqueued["job_id"].as_str().expect("an id").to_owned();
    let jobs = |args: &[&str]| -> serde_json::Value {
        let output = pulse()
            .arg("jobs")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir.path())
            .output()
            .expect("pulse jobs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON on stdout")
    };
    let started = Instant::now();
    while jobs(&["list", "--state", "dead"]).as_array().map(Vec::len) != Some(1) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job never died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = jobs(&["show", &id]);
    assert_eq!(shown["state"], "dead");
    let error = shown["errors"][0]["error"]
        .as_str()
        .expect("the attempt's error");
    assert!(error.contains("could not connect"), "{error}");
    assert_eq!(
        jobs(&["redrive", "--job-type", "mail.send"]),
        serde_json::json!({"redriven": 1})
    );
    let later: serde_json::Value = client
        .post(format!("{base}/jobs"))
        .json(&serde_json::json!({"job_type": "mail.send", "delay_ms": 3_600_000}))
        .send()
        .await
        .expect("enqueue")
        .json()
        .await
        .expect("json");
    let later = later["job_id"].as_str().expect("an id");
    assert_eq!(jobs(&["cancel", later])["state"], "cancelled");
    signal(&child, "TERM");
    let output = wait_with_deadline(child, Duration::from_secs(15));
    assert!(output.status.success());
}
