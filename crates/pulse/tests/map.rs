//! The live surge map: the page and its assets, the snapshot endpoint and the SSE stream, in the
//! embedded default and on PostgreSQL + Kafka + Redis.

mod common;

use std::time::{Duration, Instant};

use common::{client, distributed, seed_cell, unique_point, TestApp};
use pulse_conformance::services;
use serde_json::Value;

/// One Server-Sent Events stream, read frame by frame.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(app: &TestApp) -> Self {
        // No overall timeout: the stream is meant to stay open; each read has its own below.
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/surge/stream", app.base))
            .header("x-api-key", &app.api_key)
            .send()
            .await
            .expect("stream request");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().expect("ascii");
        assert_eq!(content_type, "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and JSON data (keep-alive comments are skipped).
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if name.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return (name, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .expect("an event within 60 s")
                .expect("stream read")
                .expect("stream stays open");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

fn cell_in<'a>(cells: &'a Value, h3: &str) -> Option<&'a Value> {
    cells.as_array()?.iter().find(|cell| cell["h3"] == h3)
}

async fn the_map_follows_a_surging_cell(app: &TestApp) {
    let mut stream = EventStream::open(app).await;
    let (name, snapshot) = stream.next().await;
    assert_eq!(name, "snapshot");
    assert!(snapshot["cells"].is_array() && snapshot["totals"]["cells"].is_u64());

    let (lat, lng) = unique_point();
    let orders = seed_cell(&[app], lat, lng, 4, 6).await;
    let h3 = orders[0]["pickup_h3"]
        .as_str()
        .expect("pickup cell")
        .to_owned();

    // The stream delivers the cell as it reaches 2.5, with its counts and geometry.
    let started = Instant::now();
    let cell = loop {
        let (name, update) = stream.next().await;
        assert_eq!(name, "update", "only the first event is a snapshot");
        if let Some(cell) = cell_in(&update["cells"], &h3).filter(|c| c["multiplier"] == 2.5) {
            break cell.clone();
        }
        // Generous: on Kafka a fresh engine joins its group first, with the suite sharing 2 cores.
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no 2.5 for {h3}"
        );
    };
    assert_eq!(
        (cell["demand"].as_u64(), cell["supply"].as_u64()),
        (Some(6), Some(4))
    );
    assert_eq!(cell["boundary"].as_array().map(Vec::len), Some(6));
    let center = &cell["center"];
    assert!((center[0].as_f64().unwrap() - lat).abs() < 0.01, "{center}");
    assert!((center[1].as_f64().unwrap() - lng).abs() < 0.01, "{center}");

    // The snapshot endpoint agrees, and lists the four drivers where they reported.
    let (status, snapshot) = app.get_json("/api/v1/surge/cells").await;
    assert_eq!(status, 200);
    assert_eq!(
        cell_in(&snapshot["cells"], &h3).map(|c| &c["multiplier"]),
        Some(&2.5.into())
    );
    let here = snapshot["drivers"]
        .as_array()
        .expect("drivers")
        .iter()
        .filter(|d| {
            // serde_json parses floats to within an ulp, not always exactly.
            let near =
                |got: &Value, want: f64| got.as_f64().is_some_and(|v| (v - want).abs() < 1e-9);
            near(&d["lat"], lat) && near(&d["lng"], lng)
        })
        .count();
    assert_eq!(here, 4, "{}", snapshot["drivers"]);
    assert!(snapshot["totals"]["surging_cells"].as_u64() >= Some(1));
    assert!(snapshot["totals"]["max_multiplier"].as_f64() >= Some(2.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_map_follows_a_surging_cell() {
    let app = TestApp::spawn(|_| {}).await;
    the_map_follows_a_surging_cell(&app).await;
    // An open stream does not hold up a graceful stop.
    let _open = EventStream::open(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_the_map_follows_a_surging_cell() {
    let store_url = services::fresh_postgres_database().await;
    let app = TestApp::spawn(|config| distributed(config, store_url)).await;
    the_map_follows_a_surging_cell(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn(|_| {}).await;
    for (path, content_type, needle) in [
        ("/", "text/html", "/map/map.js"),
        ("/map", "text/html", "/map/map.css"),
        ("/map/map.js", "text/javascript", "text/event-stream"),
        ("/map/map.css", "text/css", "{"),
    ] {
        let response = client()
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let got = response.headers()["content-type"].to_str().expect("ascii");
        assert!(got.starts_with(content_type), "{path}: {got}");
        let body = response.text().await.expect("body");
        assert!(body.contains(needle), "{path} lacks {needle}");
        // Offline: no address of another origin, apart from XML namespace names (never fetched).
        for (at, _) in body.match_indices("://") {
            let scheme_start = body[..at]
                .rfind(|c: char| !c.is_ascii_alphanumeric())
                .map_or(0, |i| i + 1);
            let address = &body[scheme_start..(at + 40).min(body.len())];
            assert!(
                address.starts_with("http://www.w3.org/"),
                "{path}: {address}"
            );
        }
    }
    app.stop().await;
}
