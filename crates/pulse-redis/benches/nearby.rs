//! What "who is near this point?" costs with 100,000 drivers in a city of about 30 × 30 km
//! (central Berlin), placed by a seeded generator so every run indexes the same city: the Redis
//! adapter's `nearest` (one Lua script: `GEOSEARCH`, `HMGET` of the meta, filtering), the bare
//! `GEOSEARCH … ASC COUNT 10 WITHDIST` it is built on, on the same key through a plain
//! connection, and the in-process adapter's `nearest` — each a 2 km search for the 10 nearest,
//! around centres drawn from the inner 20 × 20 km.
//!
//! Every driver is available, not busy and fresh, so the adapter's script keeps the first ten
//! candidates and the difference to the bare search is the script's own cost (meta reads and
//! the reply), not filtering.
//!
//! Criterion reports means; a matcher cares about the tail, so after criterion each target also
//! runs 5,000 queries one after another, timed with `Instant`, and prints their p50 and p99 —
//! and so do both adapters for the widest search the port allows (50 km, 500 drivers).
//!
//! Needs the Redis of `scripts/services up` (or `PULSE_TEST_REDIS_URL`).
//! `cargo bench -p pulse-redis --bench nearby [-- --warm-up-time 1 --measurement-time 3]`.

use std::time::{Duration, Instant};

use criterion::Criterion;
use pulse_conformance::{services, unique_name};
use pulse_core::geo_index::{DriverPosition, GeoIndex, NearbyQuery, MAX_NEARBY, MAX_RADIUS_M};
use pulse_core::TenantId;
use pulse_memory::MemoryGeoIndex;
use pulse_redis::{RedisCache, RedisGeoIndex, RedisOptions};

const DRIVERS: usize = 100_000;
/// The city's centre and half its width in degrees (15 km north–south and east–west).
const CENTRE: (f64, f64) = (52.52, 13.405);
const HALF_LAT: f64 = 15_000.0 / 111_195.0;
const HALF_LNG: f64 = HALF_LAT / 0.6085; // cos 52.52°
const RADIUS_M: f64 = 2_000.0;
const LIMIT: usize = 10;
const AT_MS: i64 = 1_700_000_000_000;
const TAIL_QUERIES: usize = 5_000;
const SEED: u64 = 20_240_601;

fn city(rng: &mut fastrand::Rng) -> Vec<DriverPosition> {
    (0..DRIVERS)
        .map(|i| DriverPosition {
            driver_id: format!("driver-{i:06}"),
            lat: CENTRE.0 + (rng.f64() * 2.0 - 1.0) * HALF_LAT,
            lng: CENTRE.1 + (rng.f64() * 2.0 - 1.0) * HALF_LNG,
            at_ms: AT_MS,
            available: true,
            vehicle_type: Some("car".to_owned()),
        })
        .collect()
}

/// Search centres in the inner 20 × 20 km, so a 2 km search never leaves the city.
fn centres(rng: &mut fastrand::Rng) -> Vec<(f64, f64)> {
    let inner = 2.0 / 3.0;
    (0..1_024)
        .map(|_| {
            (
                CENTRE.0 + (rng.f64() * 2.0 - 1.0) * HALF_LAT * inner,
                CENTRE.1 + (rng.f64() * 2.0 - 1.0) * HALF_LNG * inner,
            )
        })
        .collect()
}

fn query((lat, lng): (f64, f64)) -> NearbyQuery {
    NearbyQuery {
        lat,
        lng,
        radius_m: RADIUS_M,
        limit: LIMIT,
        vehicle_type: None,
        fresh_since_ms: AT_MS - 60_000,
    }
}

/// The widest search the port allows: 50 km, 500 drivers.
fn widest(centre: (f64, f64)) -> NearbyQuery {
    NearbyQuery {
        radius_m: MAX_RADIUS_M,
        limit: MAX_NEARBY,
        ..query(centre)
    }
}

fn raw_geosearch(key: &str, (lat, lng): (f64, f64)) -> redis::Cmd {
    let mut cmd = redis::cmd("GEOSEARCH");
    cmd.arg(key)
        .arg("FROMLONLAT")
        .arg(lng)
        .arg(lat)
        .arg("BYRADIUS")
        .arg(RADIUS_M)
        .arg("m")
        .arg("ASC")
        .arg("COUNT")
        .arg(LIMIT)
        .arg("WITHDIST");
    cmd
}

/// Runs `one` over [`TAIL_QUERIES`] centres in turn and prints p50, p99 and the slowest.
fn print_tail(label: &str, centres: &[(f64, f64)], mut one: impl FnMut((f64, f64)) -> usize) {
    let mut took = Vec::with_capacity(TAIL_QUERIES);
    let mut found = 0;
    for i in 0..TAIL_QUERIES {
        let started = Instant::now();
        found += one(centres[i % centres.len()]);
        took.push(started.elapsed());
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "tail (Instant, {TAIL_QUERIES} sequential queries, not criterion) {label:<26} \
         p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  ({:.1} drivers per answer)",
        at(0.50),
        at(0.99),
        took[took.len() - 1],
        found as f64 / TAIL_QUERIES as f64
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(SEED);
    let drivers = city(&mut rng);
    let centres = centres(&mut rng);
    let tenant = TenantId::default_tenant();

    let url = services::redis_url();
    let cache = match runtime.block_on(RedisCache::connect(&url, RedisOptions::default())) {
        Ok(cache) => cache,
        Err(err) => services::missing("Redis", &url, err),
    };
    let prefix = format!("{}:", unique_name("bench-nearby"));
    let redis_index = RedisGeoIndex::sharing(&cache, &prefix);
    let key = redis_index.geo_key(&tenant);
    let started = Instant::now();
    for batch in drivers.chunks(1_000) {
        runtime
            .block_on(redis_index.update(&tenant, batch))
            .expect("index in Redis");
    }
    println!(
        "indexed {DRIVERS} drivers in Redis in {:?} (batches of 1,000)",
        started.elapsed()
    );
    let mut raw = runtime
        .block_on(async {
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
        })
        .expect("a plain connection");

    let memory_index = MemoryGeoIndex::new();
    let started = Instant::now();
    runtime
        .block_on(memory_index.update(&tenant, &drivers))
        .expect("index in memory");
    println!(
        "indexed {DRIVERS} drivers in memory in {:?} (one batch)",
        started.elapsed()
    );

    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("nearby_100k_2km_10");
        let mut next = 0;
        group.bench_function("redis_geo_index_nearest", |b| {
            b.to_async(&runtime).iter(|| {
                next += 1;
                let q = query(centres[next % centres.len()]);
                let (index, tenant) = (&redis_index, &tenant);
                async move { index.nearest(tenant, &q).await.expect("nearest") }
            })
        });
        group.bench_function("redis_raw_geosearch", |b| {
            b.to_async(&runtime).iter(|| {
                next += 1;
                let cmd = raw_geosearch(&key, centres[next % centres.len()]);
                let mut conn = raw.clone();
                async move {
                    let found: Vec<(String, f64)> =
                        cmd.query_async(&mut conn).await.expect("GEOSEARCH");
                    found
                }
            })
        });
        group.bench_function("memory_geo_index_nearest", |b| {
            b.to_async(&runtime).iter(|| {
                next += 1;
                let q = query(centres[next % centres.len()]);
                let (index, tenant) = (&memory_index, &tenant);
                async move { index.nearest(tenant, &q).await.expect("nearest") }
            })
        });
        group.finish();
    }
    criterion.final_summary();

    print_tail("redis_geo_index_nearest", &centres, |centre| {
        runtime
            .block_on(redis_index.nearest(&tenant, &query(centre)))
            .expect("nearest")
            .len()
    });
    print_tail("redis_raw_geosearch", &centres, |centre| {
        let found: Vec<(String, f64)> = runtime
            .block_on(raw_geosearch(&key, centre).query_async(&mut raw))
            .expect("GEOSEARCH");
        found.len()
    });
    print_tail("memory_geo_index_nearest", &centres, |centre| {
        runtime
            .block_on(memory_index.nearest(&tenant, &query(centre)))
            .expect("nearest")
            .len()
    });

    // Not criterion's subject, only a bound to know: the widest search the port allows.
    print_tail("redis 50 km, limit 500", &centres, |centre| {
        runtime
            .block_on(redis_index.nearest(&tenant, &widest(centre)))
            .expect("nearest")
            .len()
    });
    print_tail("memory 50 km, limit 500", &centres, |centre| {
        runtime
            .block_on(memory_index.nearest(&tenant, &widest(centre)))
            .expect("nearest")
            .len()
    });

    // Leaves the test Redis as it found it.
    runtime
        .block_on(redis_index.forget_older_than(&tenant, i64::MAX))
        .expect("clean up");
}
