//! The raw log append rate the batch endpoint `POST /api/v1/drivers/locations` is measured
//! against (issue 15): `DriverLocationUpdated` records shaped as that endpoint shapes them
//! (keyed by the driver, the `pulse.tenant` header, a 6-partition `supply.updates`) appended
//! straight to the log in batches, by one producer and by 32 at once (as `wrk -c32` sends 32
//! batches at once), printing records/s.
//!
//! The embedded log (a fresh directory, the options `pulse up` opens it with), and Kafka when
//! `PULSE_TEST_KAFKA_URL` is set (a topic of its own per run, 6 partitions); `PULSE_BENCH_LOG=
//! embedded|kafka` measures only that one.
//!
//! `cargo bench -p pulse --bench supply_append`; `PULSE_BENCH_BATCHES=100,200,1000` (the
//! default), `PULSE_BENCH_PRODUCERS=1,32` (the default), `PULSE_BENCH_RECORDS=100000` (records
//! per case, the default). `bench/rides.sh` runs it after Pulse stopped. Figures go to
//! docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_conformance::unique_name;
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_core::tenant::TENANT_HEADER;
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};
use pulse_geo::Point;
use pulse_kafka::{KafkaLog, KafkaOptions};
use pulse_proto::v1::DriverLocationUpdated;
use pulse_proto::Message;

/// Partitions of Pulse's topics (`topics.partitions`).
const PARTITIONS: u32 = 6;

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .split(',')
            .map(|item| {
                item.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: {raw}"))
            })
            .collect(),
        _ => default.to_vec(),
    }
}

/// The record the batch endpoint appends for driver `i` (no vehicle type, no trace headers: as
/// `bench/rides.lua` reports them with tracing off).
fn record(i: usize, now_ms: i64) -> OutgoingRecord {
    let lat = 52.38 + (i % 1_000) as f64 * 0.000_27;
    let lng = 13.18 + (i / 1_000 % 1_000) as f64 * 0.000_44;
    let point = Point::new(lat, lng).expect("point");
    let driver_id = format!("bench-{i:07}");
    let event = DriverLocationUpdated {
        driver_id: driver_id.clone(),
        h3: point.cell().to_string(),
        available: true,
        timestamp: now_ms,
        lat: point.lat(),
        lng: point.lng(),
        vehicle_type: String::new(),
    };
    OutgoingRecord::keyed(driver_id, event.encode_to_vec()).with_header(TENANT_HEADER, "default")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// `producers` tasks append `total` records between them in batches of `batch`; the records are
/// built before the clock starts (the HTTP path builds its own inside the measurement).
async fn run(
    log: Arc<dyn EventLog>,
    topic: &str,
    batch: usize,
    producers: usize,
    total: usize,
) -> Duration {
    let batches = (total / batch).max(producers);
    let per_producer = batches / producers;
    let stamp = now_ms();
    let prepared: Vec<Vec<Vec<OutgoingRecord>>> = (0..producers)
        .map(|producer| {
            (0..per_producer)
                .map(|round| {
                    let first = (producer * per_producer + round) * batch;
                    (first..first + batch).map(|i| record(i, stamp)).collect()
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for batches in prepared {
        let (log, topic) = (log.clone(), topic.to_owned());
        tasks.spawn(async move {
            for records in batches {
                log.append(&topic, records).await.expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("producer");
    }
    started.elapsed()
}

async fn measure(label: &str, log: Arc<dyn EventLog>, topic: &str) {
    let batches = list("PULSE_BENCH_BATCHES", &[100, 200, 1_000]);
    let producers = list("PULSE_BENCH_PRODUCERS", &[1, 32]);
    let total = list("PULSE_BENCH_RECORDS", &[100_000])[0];
    log.create_topic(topic, PARTITIONS).await.expect("topic");
    // Warm-up: the first appends open files, fetch metadata, fill caches.
    run(log.clone(), topic, 100, 4, 4_000).await;
    for &batch in &batches {
        for &producers in &producers {
            let records = (total / batch).max(producers) / producers * producers * batch;
            let took = run(log.clone(), topic, batch, producers, total).await;
            println!(
                "supply_append {label:<8} batch {batch:>5}  producers {producers:>3}  \
                 {records:>7} records in {:>8.1?}: {:>9.0} records/s",
                took,
                records as f64 / took.as_secs_f64()
            );
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::var("PULSE_BENCH_LOG").unwrap_or_default();
    runtime.block_on(async {
        if only != "kafka" {
            measure_embedded().await;
        }
        let kafka_url = std::env::var(pulse_conformance::services::KAFKA_VAR)
            .ok()
            .filter(|url| !url.is_empty());
        match (only.as_str(), kafka_url) {
            ("embedded", _) => {}
            (_, Some(url)) => measure_kafka(&url).await,
            ("kafka", None) => panic!(
                "PULSE_BENCH_LOG=kafka needs {}",
                pulse_conformance::services::KAFKA_VAR
            ),
            _ => {}
        }
    });
}

async fn measure_embedded() {
    // A directory on the same file system as `pulse up --data-dir "$(mktemp -d)"` uses.
    let dir = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedLogOptions {
        // As `pulse up` opens it (`embedded_log.retention_hours` = 168).
        retention: Duration::from_secs(168 * 3600),
        ..EmbeddedLogOptions::default()
    };
    let embedded = EmbeddedLog::open(dir.path(), options)
        .await
        .expect("embedded log");
    measure("embedded", Arc::new(embedded), "supply.updates").await;
}

async fn measure_kafka(url: &str) {
    let kafka = match KafkaLog::connect(url, KafkaOptions::default()).await {
        Ok(kafka) => kafka,
        Err(err) => pulse_conformance::services::missing("Kafka", url, err),
    };
    // A topic of this run's own: `PULSE_BENCH_KAFKA_TOPIC`, or a unique name (the test
    // broker keeps it; `bench/rides.sh` names it and deletes it).
    let topic = std::env::var("PULSE_BENCH_KAFKA_TOPIC")
        .ok()
        .filter(|topic| !topic.is_empty())
        .unwrap_or_else(|| format!("{}.supply.updates", unique_name("bench-supply")));
    measure("kafka", Arc::new(kafka), &topic).await;
}
