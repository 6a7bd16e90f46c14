//! The profiles domain under load (issue 17's targets), in process:
//! * processor: [`EVENTS`] Segment events already on `events.processed` (anonymous page views,
//!   an identify joining each visitor to a user, track calls) consumed by the real
//!   [`ProfilesProcessor`] in batches of its `batch_size` with offsets committed as the runner
//!   commits them, events/s — against the rate at which the same log hands the same records to
//!   a consumer that does nothing with them, measured in the same run;
//! * freshness: a Segment `track` accepted over HTTP (`POST /v1/track`, every role running) →
//!   the profile read over HTTP shows it, p50/p99.
//!
//! Profile reads against the quote path are measured with wrk in `bench/profiles.sh`.
//!
//! `PULSE_BENCH_MODE=embedded|distributed|both cargo bench -p pulse --bench profiles` (default
//! both; distributed needs `scripts/services up`). `PULSE_BENCH_EVENTS` overrides [`EVENTS`].
//! Figures go to docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse::{Application, Config};
use pulse_conformance::{services, unique_name};
use pulse_core::clock::{Clock, SystemClock};
use pulse_core::log::OutgoingRecord;
use pulse_core::TenantId;
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_runtime::processor::{PendingCommits, Processor};
use pulse_runtime::{CancellationToken, Role};
use serde_json::{json, Value};

const EVENTS: usize = 100_000;
/// Each visitor: five anonymous page views, an identify, four track calls.
const PER_VISITOR: usize = 10;
const FRESHNESS_SAMPLES: usize = 200;
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench_config(mode: &str) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: std::env::temp_dir().join(unique_name("pulse-bench")),
        log_level: "warn".into(),
        prefix: format!("{}.", unique_name("bench")),
        ..Config::default()
    };
    if mode == "distributed" {
        config.store_url = Some(services::fresh_postgres_database().await);
        config.log_url = services::kafka_url();
        config.cache_url = services::redis_url();
    }
    config
}

/// Event `n` of visitor `visitor`, as the pipeline writes it to `events.processed`.
fn event(run: &str, visitor: usize, n: usize, now_ms: i64) -> OutgoingRecord {
    let tenant = TenantId::default_tenant();
    let (anon, user) = (format!("{run}-a{visitor}"), format!("{run}-u{visitor}"));
    let agent = if visitor.is_multiple_of(3) {
        DESKTOP
    } else {
        IPHONE
    };
    let at_ms = now_ms - 3_600_000 + (visitor * PER_VISITOR + n) as i64;
    let id = format!("{run}-e{visitor}-{n}");
    let (event_type, payload, identity): (&str, Value, &str) = match n {
        0..=4 => (
            "page",
            json!({"type": "page", "anonymousId": anon, "messageId": id, "name": "Home",
                "context": {"userAgent": agent}}),
            &anon,
        ),
        5 => (
            "identify",
            json!({"type": "identify", "userId": user, "anonymousId": anon, "messageId": id,
                "traits": {"email": format!("{user}@example.com"), "plan": "pro"},
                "context": {"userAgent": agent}}),
            &user,
        ),
        _ => (
            "track",
            json!({"type": "track", "userId": user, "messageId": id, "event": "Order Placed",
                "properties": {"fare": 12.5},
                "context": {"userAgent": agent, "location": {"latitude": 52.52, "longitude": 13.40}}}),
            &user,
        ),
    };
    let event = CanonicalEvent {
        event_id: id,
        tenant: tenant.clone(),
        event_type: event_type.into(),
        occurred_at_ms: at_ms,
        received_at_ms: at_ms,
        payload: Bytes::from(serde_json::to_vec(&payload).expect("json")),
        source: Source::Http,
        trace_id: None,
        idempotency_key: None,
    };
    OutgoingRecord::keyed(
        CanonicalEvent::partition_key(&tenant, identity),
        event.encode(),
    )
}

/// How fast the log hands `total` records of `topic` to a new group that only counts them.
async fn raw_read(app: &Application, topic: &str, total: usize, batch: usize) -> f64 {
    let mut consumer = app
        .backends()
        .log
        .consumer(&unique_name("bench-raw"), &[topic])
        .await
        .expect("consumer");
    let (joining, mut first, mut read) = (Instant::now(), None, 0);
    while read < total {
        let records = consumer
            .poll(batch, Duration::from_secs(1))
            .await
            .expect("poll");
        if records.is_empty() {
            assert!(
                joining.elapsed() < Duration::from_secs(300),
                "raw read stalled at {read}"
            );
            continue;
        }
        first.get_or_insert_with(Instant::now);
        read += records.len();
    }
    read as f64 / first.expect("records").elapsed().as_secs_f64()
}

async fn processor_phase(mode: &str, total: usize) {
    let config = bench_config(mode).await;
    let idle = Application::build(&config, Default::default(), CancellationToken::new())
        .await
        .expect("backends");
    let backends = idle.backends().clone();
    let topic = pulse_gateway::pipeline::PROCESSED.named(&config.prefix);
    let run = unique_name("v");
    let now = SystemClock.now_ms();
    let visitors = total / PER_VISITOR;
    let started = Instant::now();
    // Visitors interleaved as on a real site: the log holds everyone's first page view, then
    // everyone's second, and so on.
    for n in 0..PER_VISITOR {
        for chunk in (0..visitors).collect::<Vec<_>>().chunks(1_000) {
            let records = chunk.iter().map(|v| event(&run, *v, n, now)).collect();
            backends.log.append(&topic, records).await.expect("append");
        }
    }
    let total = visitors * PER_VISITOR;
    println!(
        "[{mode}] appended {total} events for {visitors} visitors in {:?}",
        started.elapsed()
    );

    let (mut processor, consumer_settings) =
        pulse::wiring::profiles::processor(&config, &backends, Arc::new(SystemClock));
    let batch_size = consumer_settings.batch_size;
    let raw = raw_read(&idle, &topic, total, batch_size).await;
    println!("[{mode}] raw log read (a group that only counts): {raw:.0} records/s");

    let mut consumer = backends
        .log
        .consumer(&unique_name("bench-profiles"), &[topic.as_str()])
        .await
        .expect("consumer");
    let joining = Instant::now();
    let (mut first, mut consumed, mut batches) = (None, 0, Vec::new());
    let mut offsets = PendingCommits::default();
    while consumed < total {
        let records = consumer
            .poll(batch_size, Duration::from_secs(1))
            .await
            .expect("poll");
        if records.is_empty() {
            assert!(
                joining.elapsed() < Duration::from_secs(600),
                "stalled at {consumed}"
            );
            continue;
        }
        first.get_or_insert_with(Instant::now);
        let batch_started = Instant::now();
        let poison = processor.handle(&records).await.expect("batch");
        assert!(poison.is_empty(), "no event is poison: {poison:?}");
        batches.push(batch_started.elapsed());
        offsets.applied(&records);
        if offsets.due(consumer_settings.commit_interval) {
            offsets.commit(consumer.as_mut(), "profiles").await;
        }
        consumed += records.len();
    }
    offsets.commit(consumer.as_mut(), "profiles").await;
    let elapsed = first.expect("records").elapsed();
    let rate = consumed as f64 / elapsed.as_secs_f64();
    batches.sort();
    println!(
        "[{mode}] profiles processor applied {consumed} events ({} batches of up to {batch_size}) in {elapsed:?}: {rate:.0} events/s, {:.2}x the raw read; batch p50 {:?}, p99 {:?}",
        batches.len(),
        rate / raw,
        percentile(&batches, 0.5),
        percentile(&batches, 0.99),
    );
    // The work was done: every visitor is one profile with its five page views.
    let service = pulse::wiring::profiles::service(&config, &backends, Arc::new(SystemClock));
    let tenant = TenantId::default_tenant();
    for visitor in [0, visitors / 2, visitors - 1] {
        let id = pulse_profiles::model::Identifier::new(
            pulse_profiles::model::IdentityKind::UserId,
            format!("{run}-u{visitor}"),
        );
        let read = service
            .by_identifier(&tenant, &id)
            .await
            .expect("read")
            .expect("the visitor's profile");
        assert_eq!(read.view.computed.page_views, 5, "{:?}", read.view);
    }
    drop(consumer);
    drop(idle);
}

async fn freshness_phase(mode: &str) {
    let config = bench_config(mode).await;
    let shutdown = CancellationToken::new();
    let app = Application::build(&config, Role::ALL.into_iter().collect(), shutdown.clone())
        .await
        .expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let tenants = pulse::wiring::tenants::service(&app.backends().store, Arc::new(SystemClock));
    let key = tenants
        .create_key("default", pulse_tenants::Scope::Full)
        .await
        .expect("key")
        .api_key;
    let running = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let run = unique_name("f");
    let mut samples = Vec::with_capacity(FRESHNESS_SAMPLES);
    for sample in 0..FRESHNESS_SAMPLES {
        let user = format!("{run}-{sample}");
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/track"))
            .basic_auth(&key, Some(""))
            .json(&json!({"userId": user, "event": "Order Placed",
                "context": {"userAgent": IPHONE}}))
            .send()
            .await
            .expect("track");
        assert_eq!(response.status().as_u16(), 200);
        loop {
            let response = client
                .get(format!("{base}/api/v1/profiles/by-user/{user}"))
                .header("x-api-key", &key)
                .send()
                .await
                .expect("read");
            if response.status().as_u16() == 200 {
                break;
            }
            assert_eq!(response.status().as_u16(), 404, "a miss or the profile");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the profile never appeared"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "[{mode}] ingest-to-profile freshness over {FRESHNESS_SAMPLES} track calls: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    shutdown.cancel();
    running.await.expect("join").expect("clean stop");
}

fn main() {
    let modes = match std::env::var("PULSE_BENCH_MODE").as_deref() {
        Ok("embedded") => vec!["embedded"],
        Ok("distributed") => vec!["distributed"],
        _ => vec!["embedded", "distributed"],
    };
    let total = std::env::var("PULSE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(EVENTS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for mode in modes {
            processor_phase(mode, total).await;
            freshness_phase(mode).await;
        }
    });
}
