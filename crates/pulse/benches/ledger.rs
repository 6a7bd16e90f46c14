//! Holds posted per second by the wallet (issue 16's target: ≥ 5,000 posted transfers/s on
//! PostgreSQL, the hot revenue account handled), in process, without the log: what
//! `Ledger::post_holds` sustains, called as the `wallet` processor calls it — one batch of
//! [`BATCH`] payments per unit of work, one revenue shard per batch.
//!
//! Per mode — distributed (a fresh PostgreSQL database) and embedded (SQLite in a temporary
//! directory) — [`RIDES`] rides are readied first, each as Pulse readies it: its driver reports,
//! the order is placed with a fare, and the match claims the driver and holds the fare in one
//! transition (32 at once). Then every hold is posted, per variant:
//! * `one`: one batch at a time (one wallet processor on one partition);
//! * `four`: four batches at once (four partitions or processes), each on a revenue shard of its
//!   own (16 shards, the default);
//! * `four_hot`: four at once, all crediting one revenue row (`wallet.platform_shards = 1`) —
//!   the hot account the shards exist for.
//!
//! Each posted hold is two transfers (the post, the commission) and six entries.
//!
//! `cargo bench -p pulse --bench ledger` (needs `scripts/services up`);
//! `PULSE_BENCH_MODE=distributed|embedded|both` (default both),
//! `PULSE_BENCH_VARIANTS=one,four,four_hot` (default all). Figures go to docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pulse_conformance::services;
use pulse_core::money::{Currency, Money};
use pulse_core::TenantId;
use pulse_geo::Point;
use pulse_ledger::ports::{Ledger, PostHold, Posted};
use pulse_marketplace::model::{Answer, DriverReport};
use pulse_marketplace::ports::{
    Decision, DriverChange, MoneyChange, RideStore, Transition, TransitionOutcome,
};
use pulse_orders::{CreateOutcome, Order, OrderPrice, OrderStatus, OrderStore};
use pulse_outbox::OutboxEvent;
use pulse_store::{Database, StoreOptions};
use uuid::Uuid;

const RIDES: usize = 20_000;
const BATCH: usize = 1_000;
const CONCURRENCY: usize = 32;
const FARE: i64 = 1_250;

fn now_ms() -> i64 {
    use pulse_core::clock::Clock;
    pulse_core::clock::SystemClock.now_ms()
}

async fn open(mode: &str) -> (Database, Option<tempfile::TempDir>) {
    let (url, dir) = match mode {
        "distributed" => (services::fresh_postgres_database().await, None),
        _ => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("pulse.db").display());
            (url, Some(dir))
        }
    };
    let db = Database::connect(&url, &StoreOptions::default())
        .await
        .expect("store");
    db.migrate().await.expect("migrate");
    (db, dir)
}

/// [`RIDES`] rides matched with their fares held, under `label`.
async fn ready(db: &Database, tenant: &TenantId, label: &str) -> Vec<Order> {
    let started = Instant::now();
    let usd = Currency::parse("USD").expect("USD");
    let now = now_ms();
    for chunk in (0..RIDES).collect::<Vec<_>>().chunks(1_000) {
        let reports: Vec<DriverReport> = chunk
            .iter()
            .map(|i| DriverReport {
                driver_id: format!("{label}-d{i}"),
                available: true,
                vehicle_type: None,
                at_ms: now,
                lat: 52.52,
                lng: 13.40,
            })
            .collect();
        db.report_drivers(tenant, &reports).await.expect("report");
    }
    let point = Point::new(52.52, 13.40).expect("point");
    let orders: Vec<Order> = (0..RIDES)
        .map(|i| Order {
            id: Uuid::now_v7(),
            tenant: tenant.clone(),
            user_id: format!("{label}-r{}", i % 5_000),
            pickup: point,
            dropoff: point,
            pickup_h3: point.cell().to_string(),
            dropoff_h3: point.cell().to_string(),
            status: OrderStatus::Pending,
            created_at_ms: now,
            quote_id: None,
            price: Some(OrderPrice {
                total: Money::new(FARE, usd),
                multiplier_milli: 1_000,
            }),
            vehicle_type: None,
            driver_id: None,
            no_driver: None,
        })
        .collect();
    let mut readying = futures::stream::iter(orders.iter().enumerate())
        .map(|(i, order)| async move {
            let event =
                OutboxEvent::new("demand.orders", "ORDER", order.id, Vec::new().into(), now);
            let created = OrderStore::create(db, order, None, &event)
                .await
                .expect("place");
            assert_eq!(created, CreateOutcome::Created);
            let driver = format!("{label}-d{i}");
            let decide = Box::new(move |order: &Order| {
                if order.status != OrderStatus::Pending {
                    return Decision::Answer(Answer::WrongState);
                }
                Decision::Apply(Transition {
                    to: OrderStatus::Matched,
                    at_ms: now,
                    driver: DriverChange::Claim(vec![driver]),
                    money: MoneyChange::Hold {
                        require_funds: false,
                    },
                    announce: Box::new(|_| Vec::new()),
                })
            });
            let outcome = db
                .transition(tenant, order.id, decide)
                .await
                .expect("match");
            assert!(
                matches!(outcome, TransitionOutcome::Applied(_)),
                "{outcome:?}"
            );
        })
        .buffer_unordered(CONCURRENCY);
    while readying.next().await.is_some() {}
    drop(readying);
    println!(
        "{label}: {RIDES} rides placed and matched with their fares held in {:.1?}",
        started.elapsed()
    );
    orders
}

async fn bench(mode: &str, variant: &str) {
    let (db, _dir) = open(mode).await;
    let tenant = TenantId::default_tenant();
    let label = format!("{mode}-{variant}");
    let orders = ready(&db, &tenant, &label).await;
    let (parallel, shards) = match variant {
        "one" => (1, 16),
        "four" => (4, 16),
        "four_hot" => (4, 1),
        other => panic!("PULSE_BENCH_VARIANTS: one, four, four_hot, not {other:?}"),
    };
    let usd = Currency::parse("USD").expect("USD");
    let batches: Vec<Vec<PostHold>> = orders
        .chunks(BATCH)
        .enumerate()
        .map(|(n, chunk)| {
            chunk
                .iter()
                .map(|order| PostHold {
                    tenant: tenant.clone(),
                    order_id: order.id,
                    amount: Money::new(FARE, usd),
                    commission_bp: 2_000,
                    revenue_shard: (n % shards) as i32,
                    at_ms: now_ms(),
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let db = &db;
    let mut posting = futures::stream::iter(&batches)
        .map(|batch| async move {
            let began = Instant::now();
            let outcomes = db.post_holds(batch).await.expect("post");
            assert!(outcomes.iter().all(|o| matches!(o, Posted::Now(_))));
            began.elapsed()
        })
        .buffer_unordered(parallel);
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(took) = posting.next().await {
        latencies.push(took);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    db.analyze_ledger().await.expect("analyze");
    let violations = db.verify(now_ms(), 0, 10).await.expect("verify");
    assert!(violations.is_empty(), "{violations:?}");
    println!(
        "{label}: {RIDES} holds posted in batches of {BATCH}, {parallel} at once, {shards} revenue \
         shard(s): {:.0} holds/s ({:.0} transfers/s) in {elapsed:.1?}; batch p50 {:.1?} p99 {:.1?}; \
         ledger verified",
        RIDES as f64 / elapsed.as_secs_f64(),
        2.0 * RIDES as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99),
    );
    db.close().await;
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
        std::env::var("PULSE_BENCH_VARIANTS").unwrap_or_else(|_| "one,four,four_hot".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for mode in &modes {
            for variant in variants.split(',') {
                bench(mode, variant.trim()).await;
            }
        }
    });
}
