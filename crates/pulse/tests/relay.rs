//! The outbox relay against both stores and both logs: nothing lost, and one aggregate's events
//! never reordered, with several relays racing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_conformance::{services, unique_name};
use pulse_core::clock::{ManualClock, SystemClock};
use pulse_core::log::EventLog;
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};
use pulse_kafka::{KafkaLog, KafkaOptions};
use pulse_orders::relay::{Relay, RelaySettings};
use pulse_orders::Outbox;
use pulse_runtime::CancellationToken;
use pulse_store::{Database, StoreOptions};
use uuid::Uuid;

const AGGREGATES: usize = 12;
const EVENTS_PER_AGGREGATE: usize = 6;

/// Writes the events interleaved across aggregates, in per-aggregate order.
async fn fill_outbox(db: &Database, topic: &str) -> Vec<Uuid> {
    let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::now_v7()).collect();
    for seq in 0..EVENTS_PER_AGGREGATE {
        for aggregate in &aggregates {
            let payload = format!("{aggregate}:{seq}").into_bytes();
            let id = Uuid::now_v7();
            let written = match db {
                Database::Postgres(pool) => sqlx::query(
                    "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic,
                         created_at, status, created_at_ms)
                     VALUES ($1, $2, 'TEST', $3, $4, now(), 'PENDING', 0)",
                )
                .bind(id)
                .bind(aggregate)
                .bind(payload)
                .bind(topic)
                .execute(pool)
                .await
                .map(|_| ()),
                Database::Sqlite(pool) => sqlx::query(
                    "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic,
                         created_at, status, created_at_ms)
                     VALUES (?1, ?2, 'TEST', ?3, ?4, datetime('now'), 'PENDING', 0)",
                )
                .bind(id.to_string())
                .bind(aggregate.to_string())
                .bind(payload)
                .bind(topic)
                .execute(pool)
                .await
                .map(|_| ()),
            };
            written.expect("insert outbox row");
        }
    }
    aggregates
}

async fn racing_relays_keep_per_aggregate_order(db: Database, log: Arc<dyn EventLog>) {
    let topic = unique_name("relay");
    log.create_topic(&topic, 3).await.expect("topic");
    let aggregates = fill_outbox(&db, &topic).await;

    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        batch_size: 5,
        idle_poll: Duration::from_millis(10),
        ..RelaySettings::default()
    };
    let relays: Vec<_> = (0..3)
        .map(|n| {
            let relay = Relay::new(
                format!("test-relay-{n}"),
                Arc::new(db.clone()),
                log.clone(),
                Arc::new(SystemClock),
                settings.clone(),
            );
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();

    assert_each_aggregate_in_order_once(log.as_ref(), &topic, &aggregates).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("relay stops");
    }
    assert_eq!(db.backlog().await.expect("backlog"), 0);
}

/// Reads every event of `topic` from its beginning and checks that each aggregate's events
/// arrived keyed by the aggregate, in order, once each.
async fn assert_each_aggregate_in_order_once(log: &dyn EventLog, topic: &str, aggregates: &[Uuid]) {
    let total = AGGREGATES * EVENTS_PER_AGGREGATE;
    let mut consumer = log
        .consumer(&unique_name("g"), &[topic])
        .await
        .expect("consumer");
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut received = 0;
    let started = Instant::now();
    while received < total {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {received} of {total} arrived"
        );
        for record in consumer
            .poll(total, Duration::from_millis(200))
            .await
            .expect("poll")
        {
            let text = String::from_utf8(record.payload.to_vec()).expect("utf-8");
            let (aggregate, seq) = text.split_once(':').expect("payload shape");
            assert_eq!(
                record.key.as_deref(),
                Some(aggregate.as_bytes()),
                "keyed by aggregate"
            );
            seen.entry(aggregate.to_owned())
                .or_default()
                .push(seq.parse().expect("seq"));
            received += 1;
        }
    }
    let expected: Vec<usize> = (0..EVENTS_PER_AGGREGATE).collect();
    let keys: BTreeSet<String> = aggregates.iter().map(Uuid::to_string).collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), keys);
    for (aggregate, seqs) in seen {
        assert_eq!(seqs, expected, "events of {aggregate} in order, once each");
    }
}

/// A migrated SQLite store and an embedded log in `dir`.
async fn embedded(dir: &std::path::Path) -> (Database, Arc<EmbeddedLog>) {
    let url = format!("sqlite://{}", dir.join("pulse.db").display());
    let db = Database::connect(&url, &StoreOptions::default())
        .await
        .expect("sqlite");
    db.migrate().await.expect("migrate");
    let log = EmbeddedLog::open(&dir.join("log"), EmbeddedLogOptions::default())
        .await
        .expect("log");
    (db, Arc::new(log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_to_embedded_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    racing_relays_keep_per_aggregate_order(db, log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_to_kafka() {
    let url = services::fresh_postgres_database().await;
    let db = Database::connect(&url, &StoreOptions::default())
        .await
        .expect("postgres");
    db.migrate().await.expect("migrate");
    let kafka_url = services::kafka_url();
    let log = KafkaLog::connect(&kafka_url, KafkaOptions::default())
        .await
        .unwrap_or_else(|err| services::missing("Kafka", &kafka_url, err));
    racing_relays_keep_per_aggregate_order(db, Arc::new(log)).await;
}

/// A batch claimed ahead is sent only while most of its lease is left: once half is gone (a
/// stalled send, a backoff) the relay lets it go and it is claimed again, so no event goes out
/// twice or ahead of its aggregate's earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claimed_ahead_is_let_go_when_half_its_lease_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    let topic = unique_name("relay");
    log.create_topic(&topic, 3).await.expect("topic");
    let aggregates = fill_outbox(&db, &topic).await;
    let total = AGGREGATES * EVENTS_PER_AGGREGATE;

    let clock = ManualClock::new(1_700_000_000_000);
    // Half the aggregates per batch, so the batch claimed ahead holds the first events of the
    // other half (their successors wait behind them).
    let settings = RelaySettings {
        batch_size: AGGREGATES / 2,
        lease: Duration::from_secs(30),
        ..RelaySettings::default()
    };
    let mut relay = Relay::new(
        "relay-ahead".into(),
        Arc::new(db.clone()),
        log.clone(),
        Arc::new(clock.clone()),
        settings,
    );
    assert_eq!(relay.relay_once().await.expect("round"), AGGREGATES / 2);
    // The batch claimed ahead outlives its lease (a stalled broker would do this): sending it
    // now would race the claim that takes its rows again.
    clock.advance(Duration::from_secs(31));
    let mut moved = AGGREGATES / 2;
    while db.backlog().await.expect("backlog") > 0 {
        let round = relay.relay_once().await.expect("round");
        assert!(round > 0, "stalled at {moved} of {total}");
        moved += round;
    }
    assert_eq!(moved, total, "every event sent once");
    assert_each_aggregate_in_order_once(log.as_ref(), &topic, &aggregates).await;
}
