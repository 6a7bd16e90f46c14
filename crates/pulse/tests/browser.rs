//! The surge map in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver (both installed by `scripts/test`), loads the map while the simulator runs and
//! must draw hexagons in more than one colour from SSE updates. A screenshot is saved as a test
//! artifact.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, TestApp};
use pulse_runtime::CancellationToken;
use pulse_sim::city::CityBox;
use pulse_sim::report::Progress;
use pulse_sim::SimSettings;
use serde_json::{json, Value};

/// A chromedriver process, stopped when dropped.
struct ChromeDriver {
    _child: tokio::process::Child,
    base: String,
}

impl ChromeDriver {
    async fn start() -> Self {
        let binary = std::env::var("PULSE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start {binary} ({err}): install Debian's chromium and chromium-driver \
                     (scripts/test does) or point PULSE_CHROMEDRIVER at a chromedriver"
                )
            });
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = client()
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .filter(|response| response.status().is_success());
            if ready.is_some() {
                return Self {
                    _child: child,
                    base,
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A WebDriver command; answers the `value` of its response.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = client().request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("webdriver request");
        let status = response.status();
        let answer: Value = response.json().await.expect("webdriver JSON");
        assert!(status.is_success(), "webdriver {path}: {status} {answer}");
        answer["value"].clone()
    }
}

fn chromium_binary() -> String {
    std::env::var("PULSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn artifact_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_draws_live_surge_in_headless_chromium() {
    // Rides run, so the map shows drivers on a ride apart and draws a ride's trail.
    let app = TestApp::spawn(|config| config.dispatch.auto = true).await;
    let stop = CancellationToken::new();
    let simulation = tokio::spawn(pulse_sim::run(
        SimSettings {
            target: app.base.clone(),
            drivers: 150,
            riders: 300,
            order_rate: 40.0,
            hotspots: 2,
            ping_interval: Duration::from_secs(2),
            // Fast enough that rides finish (and are charged) while the page is watched.
            ride_speed_mps: 300.0,
            city: CityBox::BERLIN,
            seed: 11,
            duration: Some(Duration::from_secs(60)),
            concurrency: 16,
            api_key: Some(app.api_key.clone()),
            top_up_minor: 50_000,
        },
        stop.clone(),
        Progress::quiet(),
    ));

    let driver = ChromeDriver::start().await;
    let session = driver
        .command(
            reqwest::Method::POST,
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium_binary(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,800"]
                }
            }}})),
        )
        .await;
    let id = session["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    driver
        .command(
            reqwest::Method::POST,
            &format!("/session/{id}/url"),
            Some(json!({ "url": format!("{}/#key={}", app.base, app.api_key) })),
        )
        .await;

    // Hexagons in several colours, and at least one update after the opening snapshot.
    let probe = json!({
        "script": "const m = window.pulseMap; return m ? {hexagons: m.hexagons, colours: m.colours.length, \
                   sseEvents: m.sseEvents, drivers: m.drivers, polygons: document.querySelectorAll('polygon.cell').length} : null",
        "args": []
    });
    let started = Instant::now();
    let state = loop {
        let state = driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{id}/execute/sync"),
                Some(probe.clone()),
            )
            .await;
        let ready = state["hexagons"].as_u64() > Some(0)
            && state["colours"].as_u64() > Some(1)
            && state["sseEvents"].as_u64() >= Some(2);
        if ready {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "the map never showed surge in several colours; last state {state}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(state["polygons"], state["hexagons"], "{state}");
    assert!(state["drivers"].as_u64() > Some(0), "driver dots: {state}");

    // A driver on a ride is drawn apart; clicking it draws its ride's trail from the API.
    let click_a_rider = json!({
        "script": "const m = window.pulseMap; const dot = document.querySelector('#riding circle.rider'); \
                   if (dot && m.trailPoints === 0) dot.dispatchEvent(new MouseEvent('click', {bubbles: true})); \
                   const trail = document.getElementById('trail'); \
                   return {riding: m.riding, trailPoints: m.trailPoints, trailShown: !trail.hidden, \
                           riderDots: document.querySelectorAll('#riding circle.rider').length};",
        "args": []
    });
    let started = Instant::now();
    loop {
        let state = driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{id}/execute/sync"),
                Some(click_a_rider.clone()),
            )
            .await;
        if state["trailPoints"].as_u64() > Some(0) && state["trailShown"] == json!(true) {
            assert_eq!(state["riding"], state["riderDots"], "{state}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no ride's trail was drawn; last state {state}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The ledger strip shows what the city's rides were charged, as the API reports it.
    let ledger = json!({
        "script": "const m = window.pulseMap; return {ledger: m.ledger, \
                   charged: document.getElementById('t-charged').textContent, \
                   revenue: document.getElementById('t-revenue').textContent};",
        "args": []
    });
    let started = Instant::now();
    loop {
        let state = driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{id}/execute/sync"),
                Some(ledger.clone()),
            )
            .await;
        let charged = state["ledger"]["rides_charged"].as_u64().unwrap_or(0);
        if charged > 0 {
            assert_ne!(state["charged"], "–", "{state}");
            assert_ne!(state["revenue"], "–", "{state}");
            let (_, totals) = app.get_json("/api/v1/ledger/totals").await;
            assert!(
                totals["rides_charged"].as_u64() >= Some(charged),
                "{totals} vs {state}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the map never showed a charged ride; last state {state}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let a few more updates land so the screenshot shows a lively city.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let screenshot = driver
        .command(
            reqwest::Method::GET,
            &format!("/session/{id}/screenshot"),
            None,
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().expect("base64 screenshot"))
        .expect("screenshot decodes");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = artifact_dir().join("surge-map.png");
    std::fs::write(&path, png).expect("save screenshot");
    eprintln!("screenshot saved to {}", path.display());

    driver
        .command(reqwest::Method::DELETE, &format!("/session/{id}"), None)
        .await;
    drop(driver);
    stop.cancel();
    let summary = simulation
        .await
        .expect("simulation task")
        .expect("simulation runs");
    assert!(summary.orders.succeeded > 0, "{summary}");
    app.stop().await;
}
