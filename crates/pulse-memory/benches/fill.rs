//! What growing costs: fills a cache (limit 1,000,000) with 1,000,000 keys one write at a time
//! and prints the slowest write (a shard growing rehashes its keys under its lock), how many
//! writes took over a millisecond, and the resident memory added at 10,000, 100,000 and
//! 1,000,000 keys (room reserved up front would be resident from the first few thousand).
//!
//! `cargo bench -p pulse-memory --bench fill`; figures in docs/BENCHMARKS.md. Not criterion:
//! the worst case is the point, not the mean.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_core::cache::Cache;
use pulse_core::clock::ManualClock;
use pulse_memory::MemoryCache;

const KEYS: u64 = 1_000_000;

/// Resident memory of this process in MiB (Linux `/proc/self/status`), or 0 where unknown.
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let before = resident_mib();
    let cache = MemoryCache::new(Arc::new(ManualClock::new(1_700_000_000_000)), 1_000_000);
    let mut slowest = Duration::ZERO;
    let mut over_a_millisecond = 0;
    let started = Instant::now();
    for i in 0..KEYS {
        if i == 10_000 || i == 100_000 {
            println!("{i} keys: +{} MiB resident", resident_mib() - before);
        }
        let key = format!("quote:{i}");
        let ttl = Some(Duration::from_secs(60 + i % 60));
        let write = Instant::now();
        runtime
            .block_on(cache.set(&key, Bytes::from_static(b"{}"), ttl))
            .expect("room for every key");
        let took = write.elapsed();
        slowest = slowest.max(took);
        if took > Duration::from_millis(1) {
            over_a_millisecond += 1;
        }
    }
    println!(
        "{KEYS} keys: +{} MiB resident, filled in {:?}, slowest write {slowest:?}, \
         {over_a_millisecond} writes over 1 ms",
        resident_mib() - before,
        started.elapsed()
    );
}
