//! Matches per second of the dispatcher (issue 15's target: ≥ 2,000 matches/s on PostgreSQL),
//! in process, without HTTP or the log: what `Dispatcher::attempt` sustains against the store
//! and the geo index of each deployment.
//!
//! Per mode — distributed (a fresh PostgreSQL database, Redis `GEO` under a prefix of its own)
//! and embedded (SQLite in a temporary directory, the in-process H3 index) — and per variant:
//! * [`DRIVERS`] drivers spread uniformly over a city of 30 × 30 km (central Berlin, seeded)
//!   report once, through `RideStore::report_drivers` and `GeoIndex::update` (batches of 1,000,
//!   as the tracker writes them);
//! * [`ORDERS`] pending orders are placed through `OrderStore::create` (32 at once), pickups
//!   uniform over the same city, no vehicle type (so at the end half the fleet is on a ride,
//!   evenly; `PULSE_BENCH_PICKUPS=inner` draws them from the inner 20 × 20 km instead, where
//!   they take nearly every driver there: the index's worst case, searches passing over busy
//!   drivers);
//! * then every order is dispatched as the `dispatch` processor does it — the order read from
//!   the store, then `Dispatcher::attempt` — with 32 attempts in flight (`buffer_unordered`, the
//!   processor's `dispatch.concurrency`), the default `[dispatch]` settings and the system clock.
//!
//! The tracker is not running here, so the geo index does not learn from `rides.events` that a
//! matched driver is busy. Variant `set_busy` calls `GeoIndex::set_busy` right after each match,
//! as the tracker would a few milliseconds later (the realistic one); variant `no_set_busy`
//! leaves the index unaware, so every matched driver keeps being proposed and refused by the
//! store (the worst case of an index lagging the store).
//!
//! Drivers' pings are fresh for `tracker.max_age_ms` (30 s) in Pulse; here the dispatcher accepts
//! pings up to 10 minutes old so that a slow placement phase cannot age the fleet out (the
//! freshness check itself is the same comparison whatever its bound).
//!
//! `cargo bench -p pulse --bench dispatch` (needs `scripts/services up`);
//! `PULSE_BENCH_MODE=distributed|embedded|both` (default both),
//! `PULSE_BENCH_VARIANTS=set_busy,no_set_busy` (default both), `PULSE_BENCH_GEO=memory` (the
//! distributed mode's store with the in-process index instead of Redis, to tell their shares
//! apart). Figures go to docs/BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use pulse_conformance::{services, unique_name};
use pulse_core::clock::{SharedClock, SystemClock};
use pulse_core::geo_index::{DriverPosition, GeoIndex, NearbyDriver, NearbyQuery};
use pulse_core::{PortResult, TenantId};
use pulse_geo::Point;
use pulse_marketplace::dispatch::{DispatchConfig, Dispatched, Dispatcher};
use pulse_marketplace::model::{DriverRecord, DriverReport, RideStep, TrailPoint};
use pulse_marketplace::ports::{Decide, RidePage, RideParty, RideStore, TransitionOutcome};
use pulse_marketplace::RideRules;
use pulse_memory::MemoryGeoIndex;
use pulse_orders::{CreateOutcome, Order, OrderStatus, OrderStore};
use pulse_outbox::OutboxEvent;
use pulse_proto::v1::OrderCreatedEvent;
use pulse_proto::Message;
use pulse_redis::{RedisCache, RedisGeoIndex, RedisOptions};
use pulse_store::{Database, StoreOptions};
use uuid::Uuid;

const DRIVERS: usize = 20_000;
const ORDERS: usize = 10_000;
const CONCURRENCY: usize = 32;
const CENTRE: (f64, f64) = (52.52, 13.405);
const HALF_LAT: f64 = 15_000.0 / 111_195.0;
const HALF_LNG: f64 = HALF_LAT / 0.6085; // cos 52.52°
const SEED: u64 = 20_261_201;

/// Time spent in, and outcomes of, the store's transitions (the claims).
#[derive(Debug, Default)]
struct StoreStats {
    transitions: AtomicU64,
    driver_taken: AtomicU64,
    transition_us: AtomicU64,
    reads: AtomicU64,
    read_us: AtomicU64,
}

/// The store, counting what the dispatcher asks of it.
#[derive(Debug)]
struct Counted {
    inner: Database,
    stats: Arc<StoreStats>,
}

#[async_trait]
impl RideStore for Counted {
    async fn transition(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        decide: Decide,
    ) -> PortResult<TransitionOutcome> {
        let started = Instant::now();
        let outcome = self.inner.transition(tenant, order_id, decide).await;
        let stats = &self.stats;
        stats
            .transition_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.transitions.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Ok(TransitionOutcome::DriverTaken)) {
            stats.driver_taken.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
    async fn order(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Option<Order>> {
        let started = Instant::now();
        let order = self.inner.order(tenant, order_id).await;
        self.stats
            .read_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        order
    }
    async fn steps(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Vec<RideStep>> {
        self.inner.steps(tenant, order_id).await
    }
    async fn rides(
        &self,
        tenant: &TenantId,
        party: RideParty<'_>,
        before: Option<Uuid>,
        limit: usize,
    ) -> PortResult<RidePage> {
        self.inner.rides(tenant, party, before, limit).await
    }
    async fn report_drivers(&self, tenant: &TenantId, reports: &[DriverReport]) -> PortResult<()> {
        self.inner.report_drivers(tenant, reports).await
    }
    async fn driver(&self, tenant: &TenantId, driver_id: &str) -> PortResult<Option<DriverRecord>> {
        self.inner.driver(tenant, driver_id).await
    }
    async fn trail(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        limit: usize,
    ) -> PortResult<Vec<TrailPoint>> {
        self.inner.trail(tenant, order_id, limit).await
    }
    async fn schedule_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        next_ms: i64,
        until_ms: i64,
    ) -> PortResult<()> {
        self.inner
            .schedule_dispatch(tenant, order_id, next_ms, until_ms)
            .await
    }
    async fn take_due_dispatches(
        &self,
        now_ms: i64,
        retry_at_ms: i64,
        limit: usize,
    ) -> PortResult<Vec<(TenantId, Uuid, i64)>> {
        self.inner
            .take_due_dispatches(now_ms, retry_at_ms, limit)
            .await
    }
    async fn give_up_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        reason: &str,
    ) -> PortResult<()> {
        self.inner.give_up_dispatch(tenant, order_id, reason).await
    }
}

/// The geo index, timing its searches.
#[derive(Debug)]
struct TimedGeo {
    inner: Arc<dyn GeoIndex>,
    searches: AtomicU64,
    search_us: AtomicU64,
}

#[async_trait]
impl GeoIndex for TimedGeo {
    async fn update(
        &self,
        tenant: &TenantId,
        positions: &[DriverPosition],
    ) -> PortResult<Vec<bool>> {
        self.inner.update(tenant, positions).await
    }
    async fn set_busy(
        &self,
        tenant: &TenantId,
        driver_id: &str,
        busy: bool,
        at_ms: i64,
    ) -> PortResult<bool> {
        self.inner.set_busy(tenant, driver_id, busy, at_ms).await
    }
    async fn nearest(
        &self,
        tenant: &TenantId,
        query: &NearbyQuery,
    ) -> PortResult<Vec<NearbyDriver>> {
        let started = Instant::now();
        let found = self.inner.nearest(tenant, query).await;
        self.search_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.searches.fetch_add(1, Ordering::Relaxed);
        found
    }
    async fn forget_older_than(&self, tenant: &TenantId, before_ms: i64) -> PortResult<u64> {
        self.inner.forget_older_than(tenant, before_ms).await
    }
    async fn ping(&self) -> PortResult<()> {
        self.inner.ping().await
    }
}

/// One mode's backends, fresh.
struct Backends {
    store: Database,
    geo: Arc<dyn GeoIndex>,
    /// The PostgreSQL database to drop at the end.
    database: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

async fn open(mode: &str) -> Backends {
    if mode == "distributed" {
        let url = services::fresh_postgres_database().await;
        let store = Database::connect(&url, &StoreOptions::default())
            .await
            .expect("PostgreSQL");
        store.migrate().await.expect("migrate");
        let redis_url = services::redis_url();
        let cache = match RedisCache::connect(&redis_url, RedisOptions::default()).await {
            Ok(cache) => cache,
            Err(err) => services::missing("Redis", &redis_url, err),
        };
        let prefix = format!("{}:", unique_name("bench-dispatch"));
        // `PULSE_BENCH_GEO=memory`: PostgreSQL with the in-process index, to tell the store's
        // share from the index's.
        let geo: Arc<dyn GeoIndex> = match std::env::var("PULSE_BENCH_GEO").as_deref() {
            Ok("memory") => Arc::new(MemoryGeoIndex::new()),
            _ => Arc::new(RedisGeoIndex::sharing(&cache, &prefix)),
        };
        Backends {
            store,
            geo,
            database: url.rsplit_once('/').map(|(_, name)| name.to_owned()),
            _dir: None,
        }
    } else {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("pulse.db").display());
        let store = Database::connect(&url, &StoreOptions::default())
            .await
            .expect("SQLite");
        store.migrate().await.expect("migrate");
        Backends {
            store,
            geo: Arc::new(MemoryGeoIndex::new()),
            database: None,
            _dir: Some(dir),
        }
    }
}

async fn drop_database(name: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&services::postgres_url())
        .await
        .expect("admin connection");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the bench database");
}

fn in_city(rng: &mut fastrand::Rng, share: f64) -> (f64, f64) {
    (
        CENTRE.0 + (rng.f64() * 2.0 - 1.0) * HALF_LAT * share,
        CENTRE.1 + (rng.f64() * 2.0 - 1.0) * HALF_LNG * share,
    )
}

/// CPU time so far, in clock ticks (1/100 s on Linux): the machine's busy time and this
/// process's, from `/proc` (zeros elsewhere).
fn cpu_ticks() -> (u64, u64) {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?.to_owned();
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|field| field.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            Some(fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?)
        })
        .unwrap_or(0);
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // After the command's closing parenthesis: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (machine, process)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench(mode: &str, set_busy: bool) {
    let geo_note = match (mode, std::env::var("PULSE_BENCH_GEO").as_deref()) {
        ("distributed", Ok("memory")) => " (in-process index)",
        _ => "",
    };
    let label = format!(
        "[{mode}{geo_note}, {}]",
        if set_busy { "set_busy" } else { "no_set_busy" }
    );
    let backends = open(mode).await;
    let tenant = TenantId::default_tenant();
    let clock: SharedClock = Arc::new(SystemClock);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let pickup_share = match std::env::var("PULSE_BENCH_PICKUPS").as_deref() {
        Ok("inner") => 2.0 / 3.0,
        _ => 1.0,
    };

    // Orders first (placing takes longest on SQLite), then the fleet, then the dispatch.
    let started = Instant::now();
    let orders: Vec<Order> = (0..ORDERS)
        .map(|i| {
            let (lat, lng) = in_city(&mut rng, pickup_share);
            let pickup = Point::new(lat, lng).expect("point");
            let dropoff = Point::new(lat + 0.01, lng + 0.01).expect("point");
            Order {
                id: Uuid::now_v7(),
                tenant: tenant.clone(),
                user_id: format!("rider-{i}"),
                pickup,
                dropoff,
                pickup_h3: pickup.cell().to_string(),
                dropoff_h3: dropoff.cell().to_string(),
                status: OrderStatus::Pending,
                created_at_ms: clock.now_ms(),
                quote_id: None,
                price: None,
                vehicle_type: None,
                driver_id: None,
                no_driver: None,
            }
        })
        .collect();
    {
        let store = &backends.store;
        let mut placing = futures::stream::iter(&orders)
            .map(|order| async move {
                let created = OrderCreatedEvent {
                    order_id: order.id.to_string(),
                    user_id: order.user_id.clone(),
                    pickup_h3: order.pickup_h3.clone(),
                    timestamp: order.created_at_ms,
                };
                let mut event = OutboxEvent::new(
                    "demand.orders",
                    "ORDER",
                    order.id,
                    created.encode_to_vec().into(),
                    order.created_at_ms,
                );
                event.tenant = order.tenant.clone();
                let outcome = OrderStore::create(store, order, None, &event)
                    .await
                    .expect("create");
                assert_eq!(outcome, CreateOutcome::Created);
            })
            .buffer_unordered(CONCURRENCY);
        while placing.next().await.is_some() {}
    }
    println!(
        "{label} placed {ORDERS} orders (32 at once) in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    let positions: Vec<DriverPosition> = (0..DRIVERS)
        .map(|i| {
            let (lat, lng) = in_city(&mut rng, 1.0);
            DriverPosition {
                driver_id: format!("driver-{i:06}"),
                lat,
                lng,
                at_ms: clock.now_ms(),
                available: true,
                vehicle_type: Some("car".into()),
            }
        })
        .collect();
    for batch in positions.chunks(1_000) {
        backends.geo.update(&tenant, batch).await.expect("index");
        let reports: Vec<DriverReport> = batch
            .iter()
            .map(|p| DriverReport {
                driver_id: p.driver_id.clone(),
                available: p.available,
                vehicle_type: p.vehicle_type.clone(),
                at_ms: p.at_ms,
                lat: p.lat,
                lng: p.lng,
            })
            .collect();
        backends
            .store
            .report_drivers(&tenant, &reports)
            .await
            .expect("report");
    }
    println!(
        "{label} reported {DRIVERS} drivers (store and index, batches of 1,000) in {:.1?}",
        started.elapsed()
    );

    let stats = Arc::new(StoreStats::default());
    let geo = Arc::new(TimedGeo {
        inner: backends.geo.clone(),
        searches: AtomicU64::new(0),
        search_us: AtomicU64::new(0),
    });
    let ride_store: Arc<dyn RideStore> = Arc::new(Counted {
        inner: backends.store.clone(),
        stats: stats.clone(),
    });
    let dispatcher = Dispatcher::new(
        ride_store.clone(),
        geo.clone(),
        clock.clone(),
        DispatchConfig::default(),
        Duration::from_secs(600),
        RideRules::with_prefix(""),
    );
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let (dispatcher, ride_store, geo, tenant, clock) =
        (&dispatcher, &ride_store, &geo, &tenant, &clock);
    let mut attempts = futures::stream::iter(&orders)
        .map(|order| async move {
            let began = Instant::now();
            // As `DispatchProcessor::run_one`: the order as stored, then one attempt.
            let stored = ride_store
                .order(tenant, order.id)
                .await
                .expect("read")
                .expect("stored");
            let outcome = dispatcher.attempt(&stored).await.expect("attempt");
            if let (true, Dispatched::Matched(matched)) = (set_busy, &outcome) {
                let driver = matched.driver_id.as_deref().expect("a driver");
                geo.set_busy(tenant, driver, true, clock.now_ms())
                    .await
                    .expect("set_busy");
            }
            (matches!(outcome, Dispatched::Matched(_)), began.elapsed())
        })
        .buffer_unordered(CONCURRENCY);
    let mut latencies = Vec::with_capacity(ORDERS);
    let mut matched = 0;
    let mut half_time = None;
    while let Some((was_matched, took)) = attempts.next().await {
        matched += usize::from(was_matched);
        latencies.push(took);
        if latencies.len() == ORDERS / 2 {
            half_time = Some(started.elapsed());
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_ticks();
    latencies.sort_unstable();
    let half = half_time.expect("half way");
    let per = |us: &AtomicU64, n: &AtomicU64| {
        us.load(Ordering::Relaxed) as f64 / n.load(Ordering::Relaxed).max(1) as f64 / 1_000.0
    };
    println!(
        "{label} dispatched {ORDERS} orders ({CONCURRENCY} in flight) in {elapsed:.2?}: \
         {matched} matched, {} without a driver: {:.0} matches/s \
         (first half {:.0}/s, second half {:.0}/s)",
        ORDERS - matched,
        matched as f64 / elapsed.as_secs_f64(),
        (ORDERS / 2) as f64 / half.as_secs_f64(),
        (ORDERS - ORDERS / 2) as f64 / (elapsed - half).as_secs_f64(),
    );
    println!(
        "{label} per attempt: p50 {:.2?}, p99 {:.2?}, max {:.2?}; {} searches ({:.2} ms each), \
         {} claims of which {} refused (driver taken) ({:.2} ms each), {} reads ({:.2} ms each)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        geo.searches.load(Ordering::Relaxed),
        per(&geo.search_us, &geo.searches),
        stats.transitions.load(Ordering::Relaxed),
        stats.driver_taken.load(Ordering::Relaxed),
        per(&stats.transition_us, &stats.transitions),
        stats.reads.load(Ordering::Relaxed),
        per(&stats.read_us, &stats.reads),
    );
    let cores = |ticks: u64| ticks as f64 / 100.0 / elapsed.as_secs_f64();
    println!(
        "{label} CPU while dispatching: the machine {:.2} cores busy, this process {:.2}",
        cores(cpu_after.0 - cpu_before.0),
        cores(cpu_after.1 - cpu_before.1),
    );

    // Leaves the services as it found them.
    backends
        .geo
        .forget_older_than(tenant, i64::MAX)
        .await
        .expect("clean the index");
    let Backends {
        store, database, ..
    } = backends;
    store.close().await;
    if let Some(name) = database {
        drop_database(&name).await;
    }
}

fn main() {
    let mode = std::env::var("PULSE_BENCH_MODE").unwrap_or_else(|_| "both".into());
    let modes: Vec<&str> = match mode.as_str() {
        "both" => vec!["distributed", "embedded"],
        "distributed" => vec!["distributed"],
        "embedded" => vec!["embedded"],
        other => panic!("PULSE_BENCH_MODE: distributed, embedded or both, not {other:?}"),
    };
    let variants =
        std::env::var("PULSE_BENCH_VARIANTS").unwrap_or_else(|_| "set_busy,no_set_busy".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for mode in modes {
            for variant in variants.split(',') {
                match variant.trim() {
                    "set_busy" => bench(mode, true).await,
                    "no_set_busy" => bench(mode, false).await,
                    other => panic!("PULSE_BENCH_VARIANTS: set_busy, no_set_busy, not {other:?}"),
                }
            }
        }
    });
}
