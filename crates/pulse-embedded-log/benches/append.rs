//! Append throughput of the embedded log: how group commit turns concurrent single-record
//! appends into shared fsyncs, and what batching by the caller adds.
//!
//! `cargo bench -p pulse-embedded-log --bench append`; figures in docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};

const TOPIC: &str = "bench";
/// Records per measured iteration, whatever the concurrency.
const RECORDS_PER_ITERATION: usize = 2_000;

fn payload(i: usize) -> OutgoingRecord {
    // About the size of an OrderCreatedEvent with a traceparent header.
    OutgoingRecord::keyed(format!("order-{}", i % 1_000), vec![7u8; 96]).with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
}

/// `producers` tasks each append their share one record per call, concurrently.
async fn concurrent_single_appends(log: &EmbeddedLog, producers: usize) -> Duration {
    let per_producer = RECORDS_PER_ITERATION / producers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|producer| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per_producer {
                    log.append(TOPIC, vec![payload(producer * per_producer + i)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer");
    }
    started.elapsed()
}

/// One caller appends batches of `batch` records.
async fn batched_appends(log: &EmbeddedLog, batch: usize) -> Duration {
    let started = Instant::now();
    for chunk in 0..RECORDS_PER_ITERATION / batch {
        let records = (0..batch).map(|i| payload(chunk * batch + i)).collect();
        log.append(TOPIC, records).await.expect("append");
    }
    started.elapsed()
}

fn bench_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = runtime.block_on(async {
        let log = EmbeddedLog::open(dir.path(), EmbeddedLogOptions::default())
            .await
            .expect("open");
        log.create_topic(TOPIC, 6).await.expect("topic");
        log
    });

    let mut group = c.benchmark_group("embedded_log_append");
    group.throughput(Throughput::Elements(RECORDS_PER_ITERATION as u64));
    group.sample_size(10);
    for producers in [1, 16, 128] {
        group.bench_with_input(
            BenchmarkId::new("concurrent_single_record", producers),
            &producers,
            |b, &producers| {
                b.to_async(&runtime).iter_custom(|iterations| {
                    let log = log.clone();
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iterations {
                            total += concurrent_single_appends(&log, producers).await;
                        }
                        total
                    }
                })
            },
        );
    }
    for batch in [100, 1_000] {
        group.bench_with_input(BenchmarkId::new("batched", batch), &batch, |b, &batch| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let log = log.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        total += batched_appends(&log, batch).await;
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
