//! The event log suite: what every [`EventLog`] adapter must do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_core::log::{ConsumedRecord, EventLog, LogConsumer, OutgoingRecord, TopicPartition};

use crate::unique_name;

/// How long a case waits for records to arrive (a Kafka group join takes a few seconds).
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(200);

async fn new_topic<L: EventLog + ?Sized>(log: &L, partitions: u32) -> String {
    let topic = unique_name("conformance");
    log.create_topic(&topic, partitions)
        .await
        .expect("create topic");
    topic
}

fn record(key: &str, payload: &str) -> OutgoingRecord {
    OutgoingRecord::keyed(key.to_owned(), payload.to_owned())
}

/// Polls until `count` records arrived (failing after [`ARRIVAL_DEADLINE`]), then once more
/// for [`POLL`], failing if anything beyond them arrives (a duplicate delivery, a record that
/// should not be there).
pub async fn poll_exactly(consumer: &mut dyn LogConsumer, count: usize) -> Vec<ConsumedRecord> {
    let started = Instant::now();
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            started.elapsed() < ARRIVAL_DEADLINE,
            "only {} of {count} records arrived within {ARRIVAL_DEADLINE:?}",
            records.len()
        );
        records.extend(
            consumer
                .poll(count - records.len(), POLL)
                .await
                .expect("poll"),
        );
    }
    let extra = consumer.poll(count.max(1), POLL).await.expect("poll");
    assert!(
        extra.is_empty(),
        "{} records beyond the expected {count} arrived: {:?}",
        extra.len(),
        extra
            .iter()
            .map(|record| (&record.position, String::from_utf8_lossy(&record.payload)))
            .collect::<Vec<_>>()
    );
    records
}

fn payloads(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|record| String::from_utf8(record.payload.to_vec()).expect("utf-8 payload"))
        .collect()
}

/// Creating a topic twice succeeds and keeps the partition count.
pub async fn create_topic_is_idempotent_and_reports_partitions<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 3).await;
    log.create_topic(&topic, 3).await.expect("second create");
    assert_eq!(
        log.partition_count(&topic).await.expect("partition count"),
        3
    );
    assert!(log.partition_count(&unique_name("missing")).await.is_err());
    log.ping().await.expect("ping");
}

/// Appended records come back with their keys, payloads, headers and positions.
pub async fn append_returns_positions_and_consumer_reads_records_back<L: EventLog + ?Sized>(
    log: &L,
) {
    let topic = new_topic(log, 1).await;
    let records = vec![
        record("order-1", "first").with_header("traceparent", "00-aa-bb-01"),
        record("order-1", "second"),
        OutgoingRecord {
            key: None,
            payload: Bytes::from_static(&[0, 159, 146, 150]),
            headers: vec![],
        },
    ];
    let positions = log.append(&topic, records.clone()).await.expect("append");
    assert_eq!(positions.len(), 3);
    assert!(positions
        .windows(2)
        .all(|pair| pair[0].offset < pair[1].offset));
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    let read = poll_exactly(consumer.as_mut(), 3).await;
    for ((got, sent), position) in read.iter().zip(&records).zip(&positions) {
        assert_eq!(&got.position, position);
        assert_eq!(got.key, sent.key);
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.headers, sent.headers);
        assert!(
            got.timestamp_ms > 1_577_836_800_000,
            "timestamp is epoch milliseconds"
        );
    }
    assert_eq!(
        read[0].header("traceparent").map(|v| v.as_ref()),
        Some(&b"00-aa-bb-01"[..])
    );
}

/// Concurrent producers on several keys: each key's records are read in append order.
pub async fn append_keeps_per_key_order_under_concurrency<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 4).await;
    const KEYS: usize = 8;
    const PER_KEY: usize = 25;
    let producers = (0..KEYS).map(|key| {
        let topic = topic.clone();
        async move {
            for seq in 0..PER_KEY {
                let batch = vec![record(&format!("key-{key}"), &format!("{key}:{seq}"))];
                log.append(&topic, batch).await.expect("append");
            }
        }
    });
    futures::future::join_all(producers).await;
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    let read = poll_exactly(consumer.as_mut(), KEYS * PER_KEY).await;
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut partition_of_key: HashMap<String, u32> = HashMap::new();
    for (record, payload) in read.iter().zip(payloads(&read)) {
        let (key, seq) = payload.split_once(':').expect("payload shape");
        seen.entry(key.to_owned())
            .or_default()
            .push(seq.parse().expect("seq"));
        let partition = partition_of_key
            .entry(key.to_owned())
            .or_insert(record.position.partition);
        assert_eq!(
            *partition, record.position.partition,
            "one key, one partition"
        );
    }
    assert_eq!(seen.len(), KEYS);
    for (key, seqs) in seen {
        assert_eq!(seqs, (0..PER_KEY).collect::<Vec<_>>(), "order of key {key}");
    }
}

/// A poll with nothing to read returns an empty batch after roughly its timeout.
pub async fn poll_returns_empty_after_timeout_when_idle<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 1).await;
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    let started = Instant::now();
    let batch = consumer
        .poll(10, Duration::from_millis(300))
        .await
        .expect("poll");
    assert!(batch.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// A new member of a group starts right after the last committed record.
pub async fn group_resumes_after_last_commit<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 1).await;
    let group = unique_name("g");
    let batch = (0..10).map(|i| record("k", &i.to_string())).collect();
    log.append(&topic, batch).await.expect("append");
    let mut first = log.consumer(&group, &[&topic]).await.expect("consumer");
    let read = poll_exactly(first.as_mut(), 10).await;
    first
        .commit(&[read[4].position.clone()])
        .await
        .expect("commit");
    first.close().await.expect("close");
    let mut second = log.consumer(&group, &[&topic]).await.expect("consumer");
    let resumed = poll_exactly(second.as_mut(), 5).await;
    assert_eq!(payloads(&resumed), ["5", "6", "7", "8", "9"]);
}

/// Records read but never committed are delivered again to the next member.
pub async fn uncommitted_records_are_redelivered<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 1).await;
    let group = unique_name("g");
    log.append(&topic, vec![record("k", "a"), record("k", "b")])
        .await
        .expect("append");
    let mut first = log.consumer(&group, &[&topic]).await.expect("consumer");
    poll_exactly(first.as_mut(), 2).await;
    first.close().await.expect("close");
    let mut second = log.consumer(&group, &[&topic]).await.expect("consumer");
    assert_eq!(
        payloads(&poll_exactly(second.as_mut(), 2).await),
        ["a", "b"]
    );
}

/// Two groups each see every record.
pub async fn groups_consume_independently<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 2).await;
    let batch = (0..6)
        .map(|i| record(&format!("k{i}"), &i.to_string()))
        .collect();
    log.append(&topic, batch).await.expect("append");
    for _ in 0..2 {
        let mut consumer = log
            .consumer(&unique_name("g"), &[&topic])
            .await
            .expect("consumer");
        let mut got = payloads(&poll_exactly(consumer.as_mut(), 6).await);
        got.sort();
        assert_eq!(got, ["0", "1", "2", "3", "4", "5"]);
        consumer.close().await.expect("close");
    }
}

/// Two members of one group split the partitions and together read every record once.
pub async fn members_of_one_group_share_partitions<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 4).await;
    let group = unique_name("g");
    let mut a = log.consumer(&group, &[&topic]).await.expect("consumer a");
    let mut b = log.consumer(&group, &[&topic]).await.expect("consumer b");
    // Wait for a stable split (Kafka rebalances during polls).
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < ARRIVAL_DEADLINE,
            "the group never split its partitions"
        );
        assert!(a.poll(1, POLL).await.expect("poll a").is_empty());
        assert!(b.poll(1, POLL).await.expect("poll b").is_empty());
        let mine: BTreeSet<TopicPartition> = a.assignment().await.expect("a").into_iter().collect();
        let theirs: BTreeSet<TopicPartition> =
            b.assignment().await.expect("b").into_iter().collect();
        if mine.len() + theirs.len() == 4
            && mine.is_disjoint(&theirs)
            && !mine.is_empty()
            && !theirs.is_empty()
        {
            break;
        }
    }
    let batch: Vec<OutgoingRecord> = (0..40)
        .map(|i| record(&format!("k{i}"), &i.to_string()))
        .collect();
    log.append(&topic, batch).await.expect("append");
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    while got.values().sum::<usize>() < 40 && started.elapsed() < ARRIVAL_DEADLINE {
        for consumer in [&mut a, &mut b] {
            for payload in payloads(&consumer.poll(40, POLL).await.expect("poll")) {
                *got.entry(payload).or_default() += 1;
            }
        }
    }
    // Once more, so a record delivered again after the last one arrived counts too.
    for consumer in [&mut a, &mut b] {
        for payload in payloads(&consumer.poll(40, POLL).await.expect("poll")) {
            *got.entry(payload).or_default() += 1;
        }
    }
    assert_eq!(got.len(), 40, "every record arrives");
    assert!(
        got.values().all(|count| *count == 1),
        "no record arrives twice: {got:?}"
    );
}

/// Seeking back to an offset replays from there.
pub async fn seek_to_offset_replays<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 1).await;
    let batch = (0..10).map(|i| record("k", &i.to_string())).collect();
    let positions = log.append(&topic, batch).await.expect("append");
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    poll_exactly(consumer.as_mut(), 10).await;
    consumer
        .seek(&topic, 0, positions[7].offset)
        .await
        .expect("seek");
    assert_eq!(
        payloads(&poll_exactly(consumer.as_mut(), 3).await),
        ["7", "8", "9"]
    );
}

/// Seeking to a time replays every record appended from that time on.
pub async fn seek_to_timestamp_replays_from_that_time<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 2).await;
    let early = (0..4)
        .map(|i| record(&format!("k{i}"), &format!("early{i}")))
        .collect();
    log.append(&topic, early).await.expect("append early");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = (0..4)
        .map(|i| record(&format!("k{i}"), &format!("late{i}")))
        .collect();
    log.append(&topic, late).await.expect("append late");
    let mut consumer = log
        .consumer(&unique_name("g"), &[&topic])
        .await
        .expect("consumer");
    let all = poll_exactly(consumer.as_mut(), 8).await;
    let boundary = all
        .iter()
        .filter(|record| record.payload.starts_with(b"late"))
        .map(|record| record.timestamp_ms)
        .min()
        .expect("late records");
    consumer
        .seek_to_timestamp(&topic, boundary)
        .await
        .expect("seek to time");
    let mut replayed = payloads(&poll_exactly(consumer.as_mut(), 4).await);
    replayed.sort();
    assert_eq!(replayed, ["late0", "late1", "late2", "late3"]);
}

/// Lag counts the records between a member's position and the end of its partitions.
pub async fn lag_counts_the_records_behind_the_position<L: EventLog + ?Sized>(log: &L) {
    let topic = new_topic(log, 2).await;
    let group = unique_name("g");
    let batch = (0..10)
        .map(|i| record(&format!("k{i}"), &i.to_string()))
        .collect();
    log.append(&topic, batch).await.expect("append");
    let mut consumer = log.consumer(&group, &[&topic]).await.expect("consumer");
    let total_lag = |lag: Vec<(TopicPartition, u64)>| -> u64 {
        assert!(lag.iter().all(|(tp, _)| tp.topic == topic), "{lag:?}");
        lag.into_iter().map(|(_, behind)| behind).sum()
    };
    poll_exactly(consumer.as_mut(), 10).await;
    assert_eq!(total_lag(consumer.lag().await.expect("lag")), 0);
    let more = (0..4).map(|i| record(&format!("k{i}"), "late")).collect();
    log.append(&topic, more).await.expect("append more");
    assert_eq!(total_lag(consumer.lag().await.expect("lag")), 4);
    poll_exactly(consumer.as_mut(), 4).await;
    assert_eq!(total_lag(consumer.lag().await.expect("lag")), 0);
}
