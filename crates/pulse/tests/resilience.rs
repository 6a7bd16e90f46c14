//! Restarts and outages: no accepted order lost or double-counted across a restart of every role,
//! quotes that keep answering while Redis is down, and poison records dead-lettered.

mod common;

use std::time::Duration;

use common::{
    distributed, free_port, metric_sum, multiplier_at, order_ids, seed_cell, seed_cell_with_ids,
    unique_point, wait_for_quote, wait_until_engine_settled, OwnRedis, TestApp,
};
use pulse_conformance::{services, unique_name};
use pulse_core::log::OutgoingRecord;
use serde_json::json;

/// 3 orders and 4 drivers: 1.75. Counting an order twice would give 2.5; losing one, 1.5.
async fn place_three_orders_and_four_drivers(app: &TestApp, lat: f64, lng: f64) {
    seed_cell(&[app], lat, lng, 4, 3).await;
}

/// The first process consumes, publishes and commits everything before it stops; the second
/// reads the last window again at start-up (always on the in-process cache, by configuration on
/// Redis), so every record reaches an engine twice and must count once.
async fn restart_loses_nothing_and_counts_once(configure: impl Fn(&mut pulse::Config) + Clone) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (lat, lng) = unique_point();
    let (first, watched) = TestApp::spawn_watched(data_dir.path(), configure.clone()).await;
    let (drivers, orders) = seed_cell_with_ids(&[&first], lat, lng, 4, 3).await;
    let keys: Vec<String> = drivers.into_iter().chain(order_ids(&orders)).collect();
    wait_until_engine_settled(&watched, &keys).await;
    assert_eq!(multiplier_at(&first, lat, lng).await, json!(1.75));
    first.stop().await;
    // The watcher holds the first process's log open (and the embedded log's directory lock).
    drop(watched);

    let (second, watched) = TestApp::spawn_watched(data_dir.path(), configure).await;
    // Every record reaches the new engine again and is committed; its effects stay counted once.
    wait_until_engine_settled(&watched, &keys).await;
    assert_eq!(multiplier_at(&second, lat, lng).await, json!(1.75));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_of_every_role_loses_no_order_and_counts_none_twice() {
    let _serial = common::one_at_a_time().await;
    restart_loses_nothing_and_counts_once(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_restart_of_every_role_loses_no_order_and_counts_none_twice() {
    let _serial = common::one_at_a_time().await;
    let store_url = services::fresh_postgres_database().await;
    // With the start-up replay on, too: the restarted engine seeks back a whole window on Kafka
    // and the guards absorb what it had counted.
    restart_loses_nothing_and_counts_once(move |config| {
        distributed(config, store_url.clone());
        config.surge.replay_on_start = true;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_fall_back_while_redis_is_down_and_go_live_when_it_is_back() {
    let _serial = common::one_at_a_time().await;
    let port = free_port();
    let redis = OwnRedis::start(port);
    let app = TestApp::spawn(|config| config.cache_url = format!("redis://127.0.0.1:{port}")).await;
    let (lat, lng) = unique_point();
    place_three_orders_and_four_drivers(&app, lat, lng).await;
    wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;

    let fallbacks = |page: &str| {
        metric_sum(
            page,
            "pulse_rate_limiter_fallbacks_total",
            &["limiter=\"ingress\""],
        )
        .unwrap_or(0.0)
    };
    let before = fallbacks(&app.get("/metrics").await.1);
    let port = redis.stop();
    let down = wait_for_quote(&app, lat, lng, |quote| {
        quote["surge"]["source"] == "fallback"
    })
    .await;
    assert_eq!(down["multiplier"], 1.0);
    // The quotas live in the same Redis: while it is down requests are still answered (the
    // ingress limiter fails open to an in-process limit), and each such answer is counted. The
    // limiter asks Redis once per lease (100 ms at most), so a request or two may still be served
    // from the last lease: keep asking, more than a lease apart.
    let started = std::time::Instant::now();
    while fallbacks(&app.get("/metrics").await.1) <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the ingress limiter's fallbacks are counted"
        );
        let answered = app
            .get_json(&format!("/api/v1/quote?lat={lat}&lng={lng}"))
            .await;
        assert_eq!(
            answered.0, 200,
            "answered while Redis is down: {}",
            answered.1
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(down["price"]["total"]["amount_minor"], 250);
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_ne!(ready["checks"]["cache"], "ok");

    let _redis = OwnRedis::start(port);
    place_three_orders_and_four_drivers(&app, lat, lng).await;
    wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;
    app.stop().await;
}

/// A Redis restarted without persistence (as `scripts/services` runs it) comes back empty: the
/// windows are gone. The engine notices by itself — its state generation vanished — replays the
/// last window from the log and publishes the right surge again, and says so on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_rebuilds_the_windows_a_restarted_redis_lost() {
    let _serial = common::one_at_a_time().await;
    let port = free_port();
    let redis = OwnRedis::start(port);
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (app, watched) = TestApp::spawn_watched(data_dir.path(), |config| {
        config.cache_url = format!("redis://127.0.0.1:{port}");
    })
    .await;
    let losses =
        |page: &str| metric_sum(page, "pulse_surge_state_losses_total", &[]).unwrap_or(0.0);
    let (lat, lng) = unique_point();
    let (drivers, orders) = seed_cell_with_ids(&[&app], lat, lng, 4, 3).await;
    let keys: Vec<String> = drivers.into_iter().chain(order_ids(&orders)).collect();
    wait_until_engine_settled(&watched, &keys).await;
    assert_eq!(multiplier_at(&app, lat, lng).await, json!(1.75));
    let before = losses(&app.get("/metrics").await.1);

    let port = redis.stop();
    let _redis = OwnRedis::start(port);
    // Nothing is placed meanwhile: only a rebuild from the log can bring 1.75 back.
    wait_for_quote(&app, lat, lng, |quote| {
        quote["surge"]["source"] == "live" && quote["multiplier"] == 1.75
    })
    .await;
    let after = losses(&app.get("/metrics").await.1);
    assert!(
        after - before >= 1.0,
        "the loss is counted: {before} → {after}"
    );
    app.stop().await;
}

/// A Kafka broker of this test's own (through `scripts/services`, in its own state directory),
/// so stopping it disturbs no other test.
struct OwnKafka {
    state: tempfile::TempDir,
    port: u16,
}

impl OwnKafka {
    fn start() -> Self {
        // The broker needs its port and the next one (the KRaft controller).
        let port = loop {
            let port = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let kafka = Self {
            state: tempfile::tempdir().expect("state dir"),
            port,
        };
        kafka.services("up");
        kafka
    }

    fn services(&self, action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services");
        let output = std::process::Command::new(script)
            .args([action, "kafka"])
            .env("PULSE_SERVICES_DIR", self.state.path())
            .env("PULSE_KAFKA_PORT", self.port.to_string())
            .output()
            .expect("run scripts/services");
        assert!(
            output.status.success(),
            "scripts/services {action} kafka: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.services("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_while_kafka_is_down_all_arrive_once_it_is_back() {
    let _serial = common::one_at_a_time().await;
    let kafka = OwnKafka::start();
    let store_url = services::fresh_postgres_database().await;
    let log_url = kafka.url();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (app, watched) = TestApp::spawn_watched(data_dir.path(), |config| {
        distributed(config, store_url);
        config.log_url = log_url;
    })
    .await;
    let (lat, lng) = unique_point();
    let (drivers, first_orders) = seed_cell_with_ids(&[&app], lat, lng, 4, 3).await;
    wait_for_quote(&app, lat, lng, |quote| quote["multiplier"] == 1.75).await;

    kafka.services("down");
    // Orders are still accepted: they wait in the outbox.
    let (_, held_orders) = seed_cell_with_ids(&[&app], lat, lng, 0, 3).await;
    // A driver location needs the log: refused within the request deadline, not after Kafka's
    // 30 s delivery timeout. (The producer may still deliver it once Kafka is back, as with any
    // timed-out request, so it reports from another cell than the one measured here.)
    let asked = std::time::Instant::now();
    let (status, answer) = app
        .post_json(
            "/api/v1/drivers/d-outage/location",
            &serde_json::json!({ "lat": lat + 1.0, "lng": lng, "available": true }),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{answer}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    let started = std::time::Instant::now();
    loop {
        let (status, ready) = app.get_json("/readyz").await;
        if status == 503 {
            assert_ne!(ready["checks"]["log"], "ok", "{ready}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz never saw Kafka down"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    kafka.services("up");
    // 6 orders and 4 drivers: 2.5. A lost order would leave 2.25; one counted twice, 2.75.
    let keys: Vec<String> = drivers
        .into_iter()
        .chain(order_ids(&first_orders))
        .chain(order_ids(&held_orders))
        .collect();
    wait_until_engine_settled(&watched, &keys).await;
    assert_eq!(multiplier_at(&app, lat, lng).await, json!(2.5));
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "ready again");
    app.stop().await;
}

/// An offset commit while the broker is away returns within the request timeout, so an engine
/// goes back to polling (which a rebalance needs) instead of waiting on the group coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_while_kafka_is_down_returns_within_the_request_timeout() {
    let _serial = common::one_at_a_time().await;
    use pulse_core::log::EventLog;
    use pulse_kafka::{KafkaLog, KafkaOptions};

    let kafka = OwnKafka::start();
    let request_timeout = Duration::from_secs(3);
    let log = KafkaLog::connect(
        &kafka.url(),
        KafkaOptions {
            request_timeout,
            ..KafkaOptions::default()
        },
    )
    .await
    .expect("kafka");
    let topic = unique_name("commit");
    log.create_topic(&topic, 1).await.expect("topic");
    log.append(&topic, vec![OutgoingRecord::keyed("k", b"v".to_vec())])
        .await
        .expect("append");
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    let started = std::time::Instant::now();
    let record = loop {
        let mut records = consumer
            .poll(1, Duration::from_secs(1))
            .await
            .expect("poll");
        if let Some(record) = records.pop() {
            break record;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no record");
    };
    consumer
        .commit(std::slice::from_ref(&record.position))
        .await
        .expect("commit while the broker is up");

    kafka.services("down");
    for _ in 0..2 {
        let asked = std::time::Instant::now();
        let outcome = consumer
            .commit(std::slice::from_ref(&record.position))
            .await;
        assert!(
            asked.elapsed() < request_timeout + Duration::from_secs(2),
            "a commit took {:?} ({outcome:?})",
            asked.elapsed()
        );
    }
}
