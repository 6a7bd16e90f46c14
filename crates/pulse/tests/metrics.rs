//! After a scripted run (the simulator against an embedded Pulse), every metric an operator's
//! dashboard reads is on `/metrics` and has moved. Its own test binary: metrics are process-wide.

mod common;

use std::time::{Duration, Instant};

use common::{metric_sum, TestApp};
use pulse_runtime::CancellationToken;
use pulse_sim::city::CityBox;
use pulse_sim::report::Progress;
use pulse_sim::SimSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_metrics_are_present_and_moving_after_a_scripted_run() {
    let app = TestApp::spawn(|_| {}).await;
    let summary = pulse_sim::run(
        SimSettings {
            target: app.base.clone(),
            drivers: 60,
            riders: 100,
            order_rate: 30.0,
            hotspots: 2,
            ping_interval: Duration::from_secs(1),
            ride_speed_mps: 60.0,
            city: CityBox::BERLIN,
            seed: 21,
            duration: Some(Duration::from_secs(4)),
            concurrency: 8,
            api_key: Some(app.api_key.clone()),
            top_up_minor: 50_000,
        },
        CancellationToken::new(),
        Progress::quiet(),
    )
    .await
    .expect("simulation");
    // How many requests the run got through depends on the machine (rates are for
    // benchmarks); that each kind was sent and answered does not.
    for (kind, counts) in [
        ("quotes", &summary.quotes),
        ("orders", &summary.orders),
        ("pings", &summary.pings),
    ] {
        assert!(counts.sent >= 1, "no {kind} sent: {summary}");
        assert_eq!(
            (counts.succeeded, counts.failed),
            (counts.sent, 0),
            "{kind}: {summary}"
        );
    }
    // A few background jobs, run by the worker `pulse up` starts.
    const JOBS: u64 = 5;
    for _ in 0..JOBS {
        let (status, job) = app
            .post_json(
                "/api/v1/jobs",
                &serde_json::json!({"job_type": "pulse.noop"}),
            )
            .await;
        assert_eq!(status, 201, "{job}");
    }
    let waiting = Instant::now();
    loop {
        let (_, page) = app.get_json("/api/v1/jobs?state=succeeded").await;
        if page["jobs"].as_array().map(Vec::len) == Some(JOBS as usize) {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "jobs not run: {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const EXTRA_QUOTES: u64 = 20;
    for _ in 0..EXTRA_QUOTES {
        let (status, quote) = app.get_json("/api/v1/quote?lat=52.52&lng=13.405").await;
        assert_eq!(status, 200, "{quote}");
    }

    // Moving: counters and histogram counts above zero. The lag is measured every 5 s.
    let names = common::names();
    let engine_group = format!("group=\"{}\"", names.group);
    let demand_topic = format!("topic=\"{}\"", names.demand);
    let supply_topic = format!("topic=\"{}\"", names.supply);
    let moving: &[(&str, &[&str])] = &[
        ("orders_placed_total", &[]),
        ("surge_calculation_duration_count", &[]),
        (
            "pulse_http_requests_total",
            &["route=\"/api/v1/orders\"", "status=\"201\""],
        ),
        (
            "pulse_http_requests_total",
            &["route=\"/api/v1/drivers/{driver_id}/location\""],
        ),
        (
            "pulse_http_request_duration_seconds_count",
            &["route=\"/api/v1/quote\""],
        ),
        ("pulse_quotes_total", &[]),
        ("pulse_relay_published_total", &[]),
        ("pulse_relay_lag_seconds_count", &[]),
        (
            "pulse_engine_records_total",
            &[&demand_topic, "outcome=\"applied\""],
        ),
        (
            "pulse_engine_records_total",
            &[&supply_topic, "outcome=\"applied\""],
        ),
        (
            "pulse_cache_operation_duration_seconds_count",
            &["caller=\"engine\""],
        ),
        (
            "pulse_cache_operation_duration_seconds_count",
            &["caller=\"quotes\"", "op=\"get\""],
        ),
        ("pulse_surge_active_cells", &[]),
        ("pulse_surge_multiplier_count", &[]),
        ("pulse_embedded_log_appended_records_total", &[]),
        ("pulse_jobs_enqueued_total", &["job_type=\"pulse.noop\""]),
        ("pulse_jobs_started_total", &["tenant=\"default\""]),
        ("pulse_jobs_succeeded_total", &["job_type=\"pulse.noop\""]),
        ("pulse_jobs_wait_seconds_count", &[]),
        ("pulse_jobs_run_seconds_count", &[]),
    ];
    // Present: gauges whose healthy value is zero.
    let present: &[(&str, &[&str])] = &[
        ("pulse_outbox_backlog", &[]),
        ("pulse_circuit_breaker_state", &["breaker=\"quote_cache\""]),
        ("pulse_consumer_lag", &[&engine_group, &demand_topic]),
        ("pulse_consumer_lag", &[&supply_topic]),
    ];
    let started = Instant::now();
    loop {
        let (status, page) = app.get("/metrics").await;
        assert_eq!(status, 200);
        let missing: Vec<String> = moving
            .iter()
            .filter(|(name, labels)| {
                !metric_sum(&page, name, labels).is_some_and(|total| total > 0.0)
            })
            .chain(
                present
                    .iter()
                    .filter(|(name, labels)| metric_sum(&page, name, labels).is_none()),
            )
            .map(|(name, labels)| format!("{name}{labels:?}"))
            .collect();
        if missing.is_empty() {
            // The counters count what was done, once: the run's orders and quotes (and the
            // extra quotes above), and its driver pings.
            let counted = |name: &str, labels: &[&str]| metric_sum(&page, name, labels);
            assert_eq!(
                counted("orders_placed_total", &[]),
                Some(summary.orders.succeeded as f64),
                "{summary}"
            );
            assert_eq!(
                counted("pulse_jobs_succeeded_total", &[]),
                Some(JOBS as f64)
            );
            assert_eq!(
                counted("pulse_quotes_total", &[]),
                Some((summary.quotes.succeeded + EXTRA_QUOTES) as f64),
                "{summary}"
            );
            assert_eq!(
                counted(
                    "pulse_http_requests_total",
                    &[
                        "route=\"/api/v1/drivers/{driver_id}/location\"",
                        "status=\"202\""
                    ]
                ),
                Some(summary.pings.succeeded as f64),
                "{summary}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not on /metrics or not moving: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    app.stop().await;
}
