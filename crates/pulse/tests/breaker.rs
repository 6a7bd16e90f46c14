//! The circuit breaker on the quote path against a hung Redis (SIGSTOP): quotes never fail, only
//! the first few wait for the cache, the breaker opens, probes, and closes once Redis answers.
//! Its own test binary, because it reads process-wide metrics.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, seed_cell, unique_point, wait_for_quote, OwnRedis, TestApp};

/// The value of `name{labels}` in a Prometheus text page, if present.
fn metric(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_opens_the_quote_breaker_and_quotes_fall_back_fast() {
    let port = free_port();
    let redis = OwnRedis::start(port);
    let app = TestApp::spawn(|config| {
        config.cache_url = format!("redis://127.0.0.1:{port}");
        config.quote_breaker.call_timeout_ms = 100;
        config.quote_breaker.failure_threshold = 5;
        config.quote_breaker.open_min_ms = 300;
        config.quote_breaker.open_max_ms = 1_000;
    })
    .await;
    let (lat, lng) = unique_point();
    seed_cell(&[&app], lat, lng, 4, 6).await;
    wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;

    redis.pause();
    let path = format!("/api/v1/quote?lat={lat}&lng={lng}");
    let mut waited = 0;
    let outage = Instant::now();
    for _ in 0..200 {
        let started = Instant::now();
        let (status, quote) = app.get_json(&path).await;
        assert_eq!(status, 200, "quotes never fail: {quote}");
        assert_eq!(quote["surge"]["source"], "fallback", "{quote}");
        assert_eq!(quote["multiplier"], 1.0);
        // A call that reached the hung cache waited its whole timeout.
        if started.elapsed() >= Duration::from_millis(90) {
            waited += 1;
        }
    }
    // Only the calls that opened the breaker and one probe per pause reached the cache; the
    // pause doubles from 150–300 ms up to 1 s, so a few probes fit in the outage.
    let probes = outage.elapsed().as_millis() / 150 + 1;
    assert!(
        waited <= 5 + probes,
        "{waited} of 200 quotes waited for the hung cache ({probes} probes possible)"
    );
    let (_, page) = app.get("/metrics").await;
    let state = metric(
        &page,
        "pulse_circuit_breaker_state{breaker=\"quote_cache\"}",
    );
    assert!(
        matches!(state, Some(s) if s >= 1.0),
        "open or probing: {state:?}"
    );
    let opened = metric(
        &page,
        "pulse_circuit_breaker_transitions_total{breaker=\"quote_cache\",state=\"open\"}",
    );
    assert!(opened >= Some(1.0), "{opened:?}");

    redis.resume();
    wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;
    let (_, page) = app.get("/metrics").await;
    assert_eq!(
        metric(
            &page,
            "pulse_circuit_breaker_state{breaker=\"quote_cache\"}"
        ),
        Some(0.0),
        "closed again"
    );
    assert!(page
        .contains("pulse_cache_errors_total{caller=\"quotes\",op=\"get\",kind=\"circuit_open\"}"));
    app.stop().await;
}
