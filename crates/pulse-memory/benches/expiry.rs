//! What expiry costs the memory cache's callers: a write into a cache that is full of live
//! entries (each one evicts the entry closest to expiry), and a sweep that purges expired ones.
//!
//! `cargo bench -p pulse-memory --bench expiry`; figures in docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use pulse_core::cache::Cache;
use pulse_core::clock::ManualClock;
use pulse_memory::MemoryCache;

/// A cache of `entries` live entries, full, with TTLs spread over a minute.
fn full_cache(entries: usize, runtime: &tokio::runtime::Runtime) -> (MemoryCache, ManualClock) {
    let clock = ManualClock::new(1_700_000_000_000);
    let cache = MemoryCache::new(Arc::new(clock.clone()), entries);
    runtime.block_on(async {
        for i in 0..entries {
            let ttl = Duration::from_millis(60_000 + (i as u64 * 7_919) % 60_000);
            cache
                .set(&format!("quote:{i}"), Bytes::from_static(b"{}"), Some(ttl))
                .await
                .expect("fill");
        }
    });
    (cache, clock)
}

fn writes_into_a_full_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("write_into_full_cache");
    group.sample_size(20);
    for entries in [10_000, 100_000] {
        let (cache, _clock) = full_cache(entries, &runtime);
        let mut next = 0_u64;
        group.bench_with_input(BenchmarkId::from_parameter(entries), &entries, |b, _| {
            b.to_async(&runtime).iter(|| {
                next += 1;
                let key = format!("new:{next}");
                let cache = cache.clone();
                async move {
                    cache
                        .set(
                            &key,
                            Bytes::from_static(b"{}"),
                            Some(Duration::from_secs(120)),
                        )
                        .await
                        .expect("set");
                }
            })
        });
    }
    group.finish();
}

fn sweeping_expired_entries(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("sweep");
    group.sample_size(10);
    // Half of the entries expired, half live: the sweep's work is the expired half.
    let entries = 100_000;
    group.bench_function(BenchmarkId::new("half_expired", entries), |b| {
        b.iter_batched(
            || {
                let (cache, clock) = full_cache(entries, &runtime);
                clock.advance(Duration::from_secs(90));
                cache
            },
            |cache| cache.purge_expired(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, writes_into_a_full_cache, sweeping_expired_entries);
criterion_main!(benches);
