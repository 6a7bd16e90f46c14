//! Whole-pipeline throughput and freshness, in process:
//! * relay: outbox rows → log acknowledgements, events/s;
//! * engine: records consumed from the log and reflected in the cache, events/s;
//! * freshness: order accepted over HTTP → `surge:{h3}` updated, p50/p99.
//!
//! `PULSE_BENCH_MODE=embedded|distributed cargo bench -p pulse --bench pipeline`
//! (distributed needs `scripts/services up`). Figures go to docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse::{Application, Config};
use pulse_conformance::{services, unique_name};
use pulse_core::clock::SystemClock;
use pulse_core::log::OutgoingRecord;
use pulse_geo::Point;
use pulse_orders::NewOrder;
use pulse_outbox::relay::{Relay, RelaySettings};
use pulse_outbox::Outbox;
use pulse_proto::v1::DriverLocationUpdated;
use pulse_proto::Message;
use pulse_runtime::processor::PendingCommits;
use pulse_runtime::{CancellationToken, Role};
use pulse_surge::engine::{EngineSettings, SurgeEngine, DEMAND_TOPIC, SUPPLY_TOPIC};
use pulse_surge::pricing::Tariff;
use pulse_surge::quotes::{QuoteService, QuoteSettings};

const ORDERS: usize = 20_000;
const PINGS: usize = 20_000;
const FRESHNESS_SAMPLES: usize = 200;

fn point(i: usize) -> Point {
    Point::new(
        37.70 + (i % 400) as f64 * 0.0005,
        -122.42 + (i % 7) as f64 * 0.001,
    )
    .expect("point")
}

async fn bench_config(mode: &str) -> Config {
    let data_dir = std::env::temp_dir().join(unique_name("pulse-bench"));
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir,
        log_level: "warn".into(),
        ..Config::default()
    };
    if mode == "distributed" {
        config.store_url = Some(services::fresh_postgres_database().await);
        config.log_url = services::kafka_url();
        config.cache_url = services::redis_url();
    }
    config
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mode = std::env::var("PULSE_BENCH_MODE").unwrap_or_else(|_| "embedded".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Backends only (no roles running) for the relay and engine phases.
        let config = bench_config(&mode).await;
        let idle = Application::build(&config, Default::default(), CancellationToken::new())
            .await
            .expect("backends");
        let backends = idle.backends().clone();
        let clock = Arc::new(SystemClock);
        let quotes = QuoteService::new(
            backends.cache.clone(),
            QuoteSettings { tariff: Tariff::default(), lock: Duration::from_secs(120), keys: Default::default() },
            clock.clone(),
        );
        let orders = pulse::wiring::orders::service(&backends.store, quotes, clock.clone(), "");

        // Fill the outbox.
        let started = Instant::now();
        let writers: Vec<_> = (0..16)
            .map(|writer| {
                let orders = orders.clone();
                tokio::spawn(async move {
                    let tenant = pulse_core::TenantId::default_tenant();
                    for i in (writer..ORDERS).step_by(16) {
                        let request = NewOrder::new(&format!("bench-{i}"), point(i), point(i + 1), None)
                            .expect("order");
                        orders.place(&tenant, request, None).await.expect("place");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        let placing = started.elapsed();
        println!(
            "[{mode}] placed {ORDERS} orders (16 concurrent, in process) in {placing:?}: {:.0} orders/s",
            ORDERS as f64 / placing.as_secs_f64()
        );

        // Relay: until the backlog is empty.
        let mut relay = Relay::new(
            "bench-relay".into(),
            Arc::new(backends.store.clone()),
            backends.log.clone(),
            clock.clone(),
            RelaySettings::default(),
        );
        let started = Instant::now();
        let mut moved = 0;
        while moved < ORDERS {
            moved += relay.relay_once().await.expect("relay round");
        }
        let relaying = started.elapsed();
        assert_eq!(backends.store.backlog().await.expect("backlog"), 0);
        println!(
            "[{mode}] relay moved {moved} events in {relaying:?}: {:.0} events/s",
            moved as f64 / relaying.as_secs_f64()
        );

        // Supply pings straight to the log, then the engine over both topics.
        let now = SystemClock;
        for chunk in (0..PINGS).collect::<Vec<_>>().chunks(1_000) {
            let records = chunk
                .iter()
                .map(|i| {
                    let event = DriverLocationUpdated {
                        driver_id: format!("driver-{}", i % 2_000),
                        h3: point(*i).cell().to_string(),
                        available: true,
                        timestamp: pulse_core::clock::Clock::now_ms(&now) + *i as i64,
                        lat: point(*i).lat(),
                        lng: point(*i).lng(),
                        vehicle_type: String::new(),
                    };
                    OutgoingRecord::keyed(event.driver_id.clone(), event.encode_to_vec())
                })
                .collect();
            backends.log.append(SUPPLY_TOPIC, records).await.expect("append pings");
        }
        // Driven as `SurgeEngine::run` drives it: batches of `batch_size`, publishing every
        // `publish_interval` and committing every `commit_interval` under load.
        let settings = EngineSettings::default();
        let mut engine = SurgeEngine::new(
            backends.log.clone(),
            backends.cache.clone(),
            clock.clone(),
            settings.clone(),
        );
        let mut consumer = backends
            .log
            .consumer(&unique_name("bench-engine"), &[DEMAND_TOPIC, SUPPLY_TOPIC])
            .await
            .expect("consumer");
        let joining = Instant::now();
        let mut first_record: Option<Instant> = None;
        let mut last_flush = Instant::now();
        let mut offsets = PendingCommits::default();
        let mut consumed = 0;
        let total = ORDERS + PINGS;
        while consumed < total {
            let batch = consumer.poll(settings.batch_size, Duration::from_secs(1)).await.expect("poll");
            if batch.is_empty() {
                assert!(joining.elapsed() < Duration::from_secs(300), "engine stalled at {consumed}");
                continue;
            }
            // The clock starts with the first record: joining the group (a rebalance on Kafka)
            // is start-up, reported apart.
            first_record.get_or_insert_with(Instant::now);
            engine.handle_batch(&batch).await.expect("batch");
            offsets.applied(&batch);
            if last_flush.elapsed() >= settings.publish_interval {
                engine.flush().await.expect("flush");
                last_flush = Instant::now();
            }
            if offsets.due(settings.commit_interval) {
                offsets.commit(consumer.as_mut(), "bench").await;
            }
            consumed += batch.len();
        }
        engine.flush().await.expect("flush");
        offsets.commit(consumer.as_mut(), "bench").await;
        let started = first_record.expect("records arrived");
        let processing = started.elapsed();
        println!(
            "[{mode}] engine joined its group and got its first records in {:?}",
            started - joining
        );
        println!(
            "[{mode}] engine consumed and applied {consumed} records in {processing:?}: {:.0} events/s",
            consumed as f64 / processing.as_secs_f64()
        );
        drop(consumer);
        drop(idle);

        // Freshness with every role running.
        let mut config = bench_config(&mode).await;
        config.data_dir = std::env::temp_dir().join(unique_name("pulse-bench"));
        let shutdown = CancellationToken::new();
        let app = Application::build(&config, Role::ALL.into_iter().collect(), shutdown.clone())
            .await
            .expect("app");
        let base = format!("http://127.0.0.1:{}", app.port());
        let cache = app.backends().cache.clone();
        let running = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::new();
        let mut samples = Vec::with_capacity(FRESHNESS_SAMPLES);
        // Cells of this run only: a replayed window must not pre-fill them.
        let base_lng = -170.0 + (uuid::Uuid::new_v4().as_u128() % 300_000) as f64 / 1_000.0;
        for sample in 0..FRESHNESS_SAMPLES {
            let pickup = Point::new(-40.0 + sample as f64 * 0.01, base_lng).expect("point");
            let key = pulse_surge::keys::Keys::default().surge(pickup.cell());
            let body = serde_json::json!({
                "user_id": format!("fresh-{sample}"),
                "pickup": { "lat": pickup.lat(), "lng": pickup.lng() },
                "dropoff": { "lat": pickup.lat(), "lng": pickup.lng() },
            });
            let started = Instant::now();
            let response = client.post(format!("{base}/api/v1/orders")).json(&body).send().await.expect("post");
            assert_eq!(response.status().as_u16(), 201);
            while cache.get(&key).await.expect("cache").is_none() {
                assert!(started.elapsed() < Duration::from_secs(30), "surge never appeared");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(started.elapsed());
        }
        samples.sort();
        println!(
            "[{mode}] event-to-surge freshness over {FRESHNESS_SAMPLES} orders: p50 {:?}, p99 {:?}, max {:?}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
        shutdown.cancel();
        running.await.expect("join").expect("clean stop");
    });
}
