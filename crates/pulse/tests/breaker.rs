//! The circuit breaker on the quote path against a hung Redis (SIGSTOP): quotes never fail, only
//! the first few wait for the cache, the breaker opens, probes, and closes once Redis answers.
//! Its own test binary, because it reads process-wide metrics.

mod common;

use std::time::Instant;

use common::{free_port, metric_sum, seed_cell, unique_point, wait_for_quote, OwnRedis, TestApp};

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
    let outage = Instant::now();
    for _ in 0..200 {
        let (status, quote) = app.get_json(&path).await;
        assert_eq!(status, 200, "quotes never fail: {quote}");
        assert_eq!(quote["surge"]["source"], "fallback", "{quote}");
        assert_eq!(quote["multiplier"], 1.0);
    }
    // Only the calls that opened the breaker and one probe per pause reached the hung cache (and
    // timed out); the others were refused without calling it. The pause doubles from 150–300 ms
    // up to 1 s, so a few probes fit in the outage.
    let (_, page) = app.get("/metrics").await;
    let quotes = ["caller=\"quotes\"", "op=\"get\""];
    let timed_out = metric_sum(
        &page,
        "pulse_cache_errors_total",
        &[&quotes[..], &["kind=\"timeout\""]].concat(),
    );
    let refused = metric_sum(
        &page,
        "pulse_cache_errors_total",
        &[&quotes[..], &["kind=\"circuit_open\""]].concat(),
    );
    let probes = (outage.elapsed().as_millis() / 150 + 1) as f64;
    assert!(
        timed_out.unwrap_or(0.0) <= 5.0 + probes,
        "{timed_out:?} quotes waited for the hung cache ({probes} probes possible)"
    );
    assert!(
        refused >= Some(150.0),
        "refused without calling Redis: {refused:?}"
    );
    let breaker = ["breaker=\"quote_cache\""];
    let state = metric_sum(&page, "pulse_circuit_breaker_state", &breaker);
    assert!(
        matches!(state, Some(s) if s >= 1.0),
        "open or probing: {state:?}"
    );
    let opened = metric_sum(
        &page,
        "pulse_circuit_breaker_transitions_total",
        &[breaker[0], "state=\"open\""],
    );
    assert!(opened >= Some(1.0), "{opened:?}");

    redis.resume();
    wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;
    let (_, page) = app.get("/metrics").await;
    assert_eq!(
        metric_sum(&page, "pulse_circuit_breaker_state", &breaker),
        Some(0.0),
        "closed again"
    );
    app.stop().await;
}
