//! The outbox relay against both stores and both logs: nothing lost, and one aggregate's events
//! never reordered, with several relays racing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_conformance::faults::{AppendFault, FaultyLog};
use pulse_conformance::{services, unique_name};
use pulse_core::clock::{ManualClock, SystemClock};
use pulse_core::log::EventLog;
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};
use pulse_kafka::{KafkaLog, KafkaOptions};
use pulse_outbox::relay::{Relay, RelaySettings};
use pulse_outbox::{Outbox, OutboxEvent};
use pulse_runtime::CancellationToken;
use pulse_store::{Database, Sql, StoreOptions};
use uuid::Uuid;

const AGGREGATES: usize = 12;
const EVENTS_PER_AGGREGATE: usize = 6;

/// Writes the events interleaved across aggregates, in per-aggregate order.
async fn fill_outbox(db: &Database, topic: &str) -> Vec<Uuid> {
    let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::now_v7()).collect();
    for seq in 0..EVENTS_PER_AGGREGATE {
        for aggregate in &aggregates {
            insert_event(db, topic, *aggregate, seq).await;
        }
    }
    aggregates
}

/// Writes one pending event of `aggregate` with payload `{aggregate}:{seq}`.
async fn insert_event(db: &Database, topic: &str, aggregate: Uuid, seq: usize) {
    let payload = format!("{aggregate}:{seq}").into_bytes();
    let event = OutboxEvent::new(topic, "TEST", aggregate, payload.into(), 0);
    pulse_conformance::outbox::enqueue(db, vec![event]).await;
}

/// A count over the outbox.
async fn count(db: &Database, sql: Sql) -> i64 {
    db.fetch_optional(&sql)
        .await
        .expect("count")
        .expect("a row")
        .i64(0)
        .expect("an integer")
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

/// Reads `topic` from its beginning until `at_least` events arrived and a short poll finds no
/// more; returns each aggregate's sequence numbers in arrival order, checking every event is
/// keyed by its aggregate.
async fn read_per_aggregate(
    log: &dyn EventLog,
    topic: &str,
    at_least: usize,
) -> BTreeMap<String, Vec<usize>> {
    let mut consumer = log
        .consumer(&unique_name("g"), &[topic])
        .await
        .expect("consumer");
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut received = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {received} of {at_least} arrived"
        );
        let wait = if received < at_least { 200 } else { 500 };
        let batch = consumer
            .poll(at_least.max(1), Duration::from_millis(wait))
            .await
            .expect("poll");
        if batch.is_empty() && received >= at_least {
            return seen;
        }
        for record in batch {
            let text = String::from_utf8(record.payload.to_vec()).expect("utf-8");
            let (aggregate, seq) = text.split_once(':').expect("payload shape");
            assert_eq!(
                record.key.as_deref(),
                Some(aggregate.as_bytes()),
                "keyed by aggregate"
            );
            assert_eq!(
                record.header("pulse.tenant").map(|value| value.as_ref()),
                Some(&b"default"[..]),
                "every record names its tenant"
            );
            seen.entry(aggregate.to_owned())
                .or_default()
                .push(seq.parse().expect("seq"));
            received += 1;
        }
    }
}

/// Reads every event of `topic` from its beginning and checks that each aggregate's events
/// arrived keyed by the aggregate, in order, once each (and nothing more).
async fn assert_each_aggregate_in_order_once(log: &dyn EventLog, topic: &str, aggregates: &[Uuid]) {
    let seen = read_per_aggregate(log, topic, AGGREGATES * EVENTS_PER_AGGREGATE).await;
    let expected: Vec<usize> = (0..EVENTS_PER_AGGREGATE).collect();
    let keys: BTreeSet<String> = aggregates.iter().map(Uuid::to_string).collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), keys);
    for (aggregate, seqs) in seen {
        assert_eq!(seqs, expected, "events of {aggregate} in order, once each");
    }
}

/// A migrated PostgreSQL store (a fresh database) and the shared Kafka.
async fn distributed() -> (Database, Arc<dyn EventLog>) {
    let url = services::fresh_postgres_database().await;
    let db = Database::connect(&url, &StoreOptions::default())
        .await
        .expect("postgres");
    db.migrate().await.expect("migrate");
    let kafka_url = services::kafka_url();
    let log = KafkaLog::connect(&kafka_url, KafkaOptions::default())
        .await
        .unwrap_or_else(|err| services::missing("Kafka", &kafka_url, err));
    (db, Arc::new(log))
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
    let (db, log) = distributed().await;
    racing_relays_keep_per_aggregate_order(db, log).await;
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
    assert_eq!(
        pending_leased_by(&db, "relay-ahead").await,
        (AGGREGATES / 2) as i64,
        "the next batch was claimed while the first was sent"
    );
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

/// A relay on `db` and `log` driven by hand, with time that moves only when the test says.
fn hand_driven_relay(
    id: &str,
    db: &Database,
    log: Arc<dyn EventLog>,
    clock: &ManualClock,
) -> Relay {
    let settings = RelaySettings {
        batch_size: AGGREGATES / 2,
        lease: Duration::from_secs(30),
        // Generous: a healthy first append to a new Kafka topic can take a while, and one that
        // timed out might still land (a duplicate the tests would count).
        append_timeout: Duration::from_secs(2),
        ..RelaySettings::default()
    };
    Relay::new(
        id.into(),
        Arc::new(db.clone()),
        log,
        Arc::new(clock.clone()),
        settings,
    )
}

/// Drives `relay` until the outbox is empty, moving the clock past a lease whenever a round
/// finds nothing claimable (rows leased by a relay that failed or died).
async fn relay_until_empty(relay: &mut Relay, db: &Database, clock: &ManualClock) {
    let started = Instant::now();
    while db.backlog().await.expect("backlog") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the outbox never drained"
        );
        match relay.relay_once().await {
            Ok(0) => clock.advance(Duration::from_secs(31)),
            Ok(_) => {}
            Err(stage) => panic!("relay round failed at {stage} with the log healthy"),
        }
    }
}

/// An append that fails (`Fail`) or never answers (`Hang`) leaves every row pending and nothing
/// on the log; once the log is back each event arrives once, in order.
async fn rows_stay_pending_through_an_append_fault(
    db: Database,
    inner: Arc<dyn EventLog>,
    fault: AppendFault,
) {
    let topic = unique_name("relay");
    inner.create_topic(&topic, 3).await.expect("topic");
    let aggregates = fill_outbox(&db, &topic).await;
    let total = (AGGREGATES * EVENTS_PER_AGGREGATE) as u64;
    let log = FaultyLog::wrap(inner.clone());
    log.inject(fault, 2);
    let clock = ManualClock::new(1_700_000_000_000);
    let mut relay = hand_driven_relay("relay-faulted", &db, Arc::new(log.clone()), &clock);

    for _ in 0..2 {
        assert_eq!(relay.relay_once().await, Err("append"));
        assert_eq!(
            db.backlog().await.expect("backlog"),
            total,
            "every row pending"
        );
        clock.advance(Duration::from_secs(31));
    }
    assert_eq!(log.faults_injected(), 2);
    assert_eq!(log.appends_written(), 0, "nothing reached the log");
    relay_until_empty(&mut relay, &db, &clock).await;
    assert_each_aggregate_in_order_once(inner.as_ref(), &topic, &aggregates).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rows_stay_pending_after_a_failed_append_and_arrive_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    rows_stay_pending_through_an_append_fault(db, log, AppendFault::Fail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_rows_stay_pending_after_a_hung_append_and_arrive_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    rows_stay_pending_through_an_append_fault(db, log, AppendFault::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_rows_stay_pending_after_a_failed_or_hung_append_and_arrive_once() {
    for fault in [AppendFault::Fail, AppendFault::Hang] {
        let (db, log) = distributed().await;
        rows_stay_pending_through_an_append_fault(db, log, fault).await;
    }
}

/// A relay dies after the log took its batch and before it marked the rows sent. Another relay
/// sends them again once their lease lapses: nothing is lost, and each aggregate's events still
/// arrive in order (some twice, which consumers absorb), never an event before an earlier one.
async fn a_crash_between_append_and_mark_resends_in_order(db: Database, inner: Arc<dyn EventLog>) {
    let topic = unique_name("relay");
    inner.create_topic(&topic, 3).await.expect("topic");
    let aggregates = fill_outbox(&db, &topic).await;
    let log = FaultyLog::wrap(inner.clone());
    log.inject(AppendFault::LoseAck, 1);
    let clock = ManualClock::new(1_700_000_000_000);
    let mut doomed = hand_driven_relay("relay-doomed", &db, Arc::new(log.clone()), &clock);
    // The relay times out waiting for the lost acknowledgement; dropping it there is the crash.
    assert_eq!(doomed.relay_once().await, Err("append"));
    assert_eq!(log.appends_written(), 1, "the batch reached the log");
    drop(doomed);

    clock.advance(Duration::from_secs(31));
    let mut successor = hand_driven_relay("relay-successor", &db, inner.clone(), &clock);
    relay_until_empty(&mut successor, &db, &clock).await;

    let per_aggregate =
        read_per_aggregate(inner.as_ref(), &topic, AGGREGATES * EVENTS_PER_AGGREGATE).await;
    let expected: Vec<usize> = (0..EVENTS_PER_AGGREGATE).collect();
    let mut resent = 0;
    for aggregate in &aggregates {
        let seqs = &per_aggregate[&aggregate.to_string()];
        assert!(
            seqs.windows(2).all(|pair| pair[0] <= pair[1]),
            "events of {aggregate} in order: {seqs:?}"
        );
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert_eq!(distinct, expected, "every event of {aggregate} arrived");
        resent += seqs.len() - distinct.len();
    }
    assert_eq!(
        resent,
        AGGREGATES / 2,
        "the lost batch, and only it, went out twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_crash_between_append_and_mark_resends_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    a_crash_between_append_and_mark_resends_in_order(db, log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_a_crash_between_append_and_mark_resends_in_order() {
    let (db, log) = distributed().await;
    a_crash_between_append_and_mark_resends_in_order(db, log).await;
}

/// Rows in the outbox, sent or not.
async fn outbox_rows(db: &Database) -> i64 {
    count(db, Sql::new("SELECT COUNT(*) FROM outbox_events")).await
}

/// Sent rows are kept for `sent_retention` and deleted after it, by the running relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_rows_are_kept_for_their_retention_then_purged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = embedded(dir.path()).await;
    let topic = unique_name("relay");
    log.create_topic(&topic, 3).await.expect("topic");
    fill_outbox(&db, &topic).await;
    let total = (AGGREGATES * EVENTS_PER_AGGREGATE) as i64;
    let clock = ManualClock::new(1_700_000_000_000);
    relay_until_empty(
        &mut hand_driven_relay("relay-first", &db, log.clone(), &clock),
        &db,
        &clock,
    )
    .await;

    let retention = Duration::from_secs(24 * 3600);
    clock.advance(retention / 2);
    let settings = RelaySettings {
        sent_retention: retention,
        housekeeping_every: Duration::from_millis(10),
        idle_poll: Duration::from_millis(10),
        ..RelaySettings::default()
    };
    let relay = Relay::new(
        "relay-keeper".into(),
        Arc::new(db.clone()),
        log.clone(),
        Arc::new(clock.clone()),
        settings,
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // A round runs after each housekeeping: once a new row is sent, the relay has looked at the
    // old ones half-way through their retention.
    insert_event(&db, &topic, Uuid::now_v7(), 0).await;
    eventually("the new row is sent", || async {
        db.backlog().await.expect("backlog") == 0
    })
    .await;
    assert_eq!(
        outbox_rows(&db).await,
        total + 1,
        "sent rows kept within their retention"
    );

    clock.advance(retention / 2 + Duration::from_secs(1));
    eventually("the old rows are purged", || async {
        outbox_rows(&db).await == 1
    })
    .await;
    shutdown.cancel();
    running.await.expect("relay stops");
}

/// Waits (30 s at most) until `condition` holds.
async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While the log refuses every append the relay retries with growing pauses, not in a busy
/// loop (and its rows stay pending). Leases of 1 ms make every round claim and append again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_log_is_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, inner) = embedded(dir.path()).await;
    let topic = unique_name("relay");
    inner.create_topic(&topic, 3).await.expect("topic");
    fill_outbox(&db, &topic).await;
    let log = FaultyLog::wrap(inner.clone());
    log.fail_appends_when(|_, _| true);
    let settings = RelaySettings {
        lease: Duration::from_millis(1),
        idle_poll: Duration::from_millis(1),
        ..RelaySettings::default()
    };
    let relay = Relay::new(
        "relay-backing-off".into(),
        Arc::new(db.clone()),
        Arc::new(log.clone()),
        Arc::new(SystemClock),
        settings,
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // Pauses from 100 ms, doubling (with jitter): a handful of attempts in 1.5 s, where a
    // relay without backoff makes hundreds.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    shutdown.cancel();
    running.await.expect("relay stops");
    let attempts = log.faults_injected();
    assert!(
        (2..=12).contains(&attempts),
        "{attempts} appends in 1.5 s: retried, with backoff"
    );
    assert_eq!(
        db.backlog().await.expect("backlog"),
        (AGGREGATES * EVENTS_PER_AGGREGATE) as u64
    );
}

/// Pending rows leased by `relay`.
async fn pending_leased_by(db: &Database, relay: &str) -> i64 {
    let leased = "SELECT COUNT(*) FROM outbox_events WHERE status = 'PENDING' AND claimed_by = $1";
    count(db, Sql::new(leased).bind(relay)).await
}
