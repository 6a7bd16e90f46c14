//! `pulse simulate` against an embedded Pulse: the city's orders are all recorded and run as rides
//! (matched, started, finished), surge appears where the hotspots are, and the summary's counts
//! match what the server stored.

mod common;

use std::time::{Duration, Instant};

use common::{metric_sum, TestApp};
use serde_json::Value;

/// Metres between two points (equirectangular; fine within a city).
fn distance_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let dy = (a[0] - b[0]) * 111_320.0;
    let dx = (a[1] - b[1]) * 111_320.0 * a[0].to_radians().cos();
    dx.hypot(dy)
}

fn pair(value: &Value) -> [f64; 2] {
    [
        value[0].as_f64().expect("lat"),
        value[1].as_f64().expect("lng"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_fills_the_city_and_its_summary_matches_the_server() {
    let data = tempfile::tempdir().expect("data dir");
    let app = TestApp::spawn_in(data.path(), |config| config.dispatch.auto = true).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "simulate",
            "--target",
            &app.base,
            "--duration",
            "8s",
            "--seed",
            "5",
        ])
        .args([
            "--drivers",
            "120",
            "--riders",
            "200",
            "--rate",
            "25",
            "--hotspots",
            "2",
            // Rides within the 8 s of the run.
            "--ride-speed",
            "5000",
        ])
        .arg("--json")
        // The key `pulse up` wrote into its data directory, found without --api-key.
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("PULSE_API_KEY")
        .output()
        .await
        .expect("pulse simulate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulate failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).expect("JSON summary on stdout");
    assert!(stderr.contains("orders"), "progress on stderr: {stderr}");

    // Every request answered, and each kind sent at least once. How many depends on how fast
    // this machine is (rates are for benchmarks), but never more orders than 25/s for 8 s.
    for kind in ["quotes", "orders", "pings"] {
        let counts = &summary[kind];
        assert_eq!(counts["failed"], 0, "{kind}: {summary}");
        assert_eq!(counts["failed"], 0, "{kind}: {summary}");
        assert_eq!(counts["succeeded"], counts["sent"], "{kind}: {summary}");
        assert!(counts["sent"].as_u64() >= Some(1), "{kind}: {summary}");
    }
    let orders = &summary["orders"];
    let placed = orders["succeeded"].as_u64().expect("orders");
    assert!(placed <= 225, "the city outran its rate: {summary}");
    assert_eq!(summary["errors"], serde_json::json!({}));
    // Every rider asked for a quote first.
    assert_eq!(summary["quotes"]["succeeded"], orders["sent"], "{summary}");
    assert_eq!(summary["seed"], 5);

    // The orders ran as rides: matched by Pulse, driven, started and finished by their drivers.
    let rides = &summary["rides"];
    for count in ["matched", "started", "finished"] {
        assert!(rides[count].as_u64() >= Some(1), "{count}: {summary}");
    }
    assert_eq!(rides["moves"]["failed"], 0, "{summary}");
    assert!(rides["matched"].as_u64() <= Some(placed), "{summary}");
    assert!(
        rides["match_latency_ms"]["p99"].as_f64() > Some(0.0),
        "{summary}"
    );

    // The city pays: every rider who ordered was topped up once, the rides finished were
    // charged, and the platform kept its commission.
    let top_ups = &summary["top_ups"];
    assert_eq!(top_ups["failed"], 0, "{summary}");
    assert!(top_ups["succeeded"].as_u64() >= Some(1), "{summary}");
    assert!(
        top_ups["succeeded"].as_u64() <= Some(200),
        "one per rider at most: {summary}"
    );
    let ledger = &summary["ledger"];
    assert_eq!(
        ledger["topped_up_minor"].as_i64(),
        top_ups["succeeded"].as_i64().map(|n| n * 50_000),
        "{summary}"
    );
    assert!(ledger["revenue_minor"].as_i64() >= Some(0), "{summary}");
    assert!(
        ledger["rides_charged"].as_u64() <= rides["finished"].as_u64(),
        "{summary}"
    );

    // The server answered exactly the requests the summary counts (nothing else in this test
    // binary talks to it, and metrics are process-wide).
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for (kind, route, status) in [
        ("quotes", "/api/v1/quote", "200"),
        ("orders", "/api/v1/orders", "201"),
        ("pings", "/api/v1/drivers/{driver_id}/location", "202"),
    ] {
        let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
        let answered = metric_sum(&metrics, "pulse_http_requests_total", &[&route, &status]);
        assert_eq!(
            answered,
            summary[kind]["succeeded"].as_f64(),
            "{kind} answered {status} by the server vs the summary: {summary}"
        );
    }
    assert_eq!(
        metric_sum(&metrics, "orders_placed_total", &[]),
        Some(placed as f64),
        "{summary}"
    );
    let moved = metric_sum(
        &metrics,
        "pulse_http_requests_total",
        &[
            "route=\"/api/v1/orders/{order_id}/status\"",
            "status=\"200\"",
        ],
    );
    assert_eq!(moved, rides["moves"]["succeeded"].as_f64(), "{summary}");
    for (to, count) in [("FINISHED", "finished"), ("STARTED", "started")] {
        let label = format!("to=\"{to}\"");
        assert_eq!(
            metric_sum(&metrics, "pulse_ride_transitions_total", &[&label]),
            rides[count].as_f64(),
            "{to}: {summary}"
        );
    }

    // The server recorded exactly the orders the summary counts.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        data.path().join("pulse.db").display()
    ))
    .await
    .expect("open the store");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count orders");
    assert_eq!(stored as u64, placed);
    // …each at the price its quote locked.
    let priced: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE quote_id IS NOT NULL AND price_total IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("count priced orders");
    assert_eq!(priced as u64, placed);
    pool.close().await;

    // Surge shows up near every hotspot (demand outruns the few drivers there).
    let hotspots: Vec<[f64; 2]> = summary["hotspots"]
        .as_array()
        .expect("hotspots")
        .iter()
        .map(pair)
        .collect();
    assert_eq!(hotspots.len(), 2);
    let started = Instant::now();
    loop {
        let (status, snapshot) = app.get_json("/api/v1/surge/cells").await;
        assert_eq!(status, 200);
        let surging: Vec<[f64; 2]> = snapshot["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .filter(|cell| cell["multiplier"].as_f64() > Some(1.0))
            .map(|cell| pair(&cell["center"]))
            .collect();
        let covered = hotspots.iter().all(|hotspot| {
            surging
                .iter()
                .any(|cell| distance_m(*hotspot, *cell) < 1_000.0)
        });
        if covered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no surge near the hotspots {hotspots:?}; surging cells at {surging:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every finished ride is charged once the wallet caught up, and the ledger verifies.
    let finished = rides["finished"].as_i64().expect("finished");
    let started = Instant::now();
    loop {
        let (_, totals) = app.get_json("/api/v1/ledger/totals").await;
        if totals["rides_charged"].as_i64() == Some(finished) {
            assert!(totals["revenue_minor"].as_i64() > Some(0), "{totals}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{finished} rides finished, charged: {totals}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
    let verified = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["ledger", "verify", "--log-level", "warn", "--data-dir"])
        .arg(data.path())
        .output()
        .await
        .expect("pulse ledger verify runs");
    assert!(
        verified.status.success(),
        "pulse ledger verify after a run: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[tokio::test]
async fn the_simulator_says_when_pulse_is_not_there() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "simulate",
            "--target",
            "http://127.0.0.1:9",
            "--duration",
            "1s",
            "--api-key",
            "pk_unused",
        ])
        .output()
        .await
        .expect("pulse simulate runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach Pulse at http://127.0.0.1:9"),
        "{stderr}"
    );
}
