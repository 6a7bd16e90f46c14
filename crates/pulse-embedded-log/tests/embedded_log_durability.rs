//! Durability of the embedded log: restart, `kill -9`, retention and the directory lock.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pulse_conformance::event_log::poll_exactly;
use pulse_core::clock::ManualClock;
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_embedded_log::{CommitGate, EmbeddedLog, EmbeddedLogOptions};

const CHILD_DIR_VAR: &str = "PULSE_CRASH_TEST_CHILD_DIR";
const TOPIC: &str = "crash.test";

async fn open(dir: &std::path::Path) -> EmbeddedLog {
    EmbeddedLog::open(dir, EmbeddedLogOptions::default())
        .await
        .expect("open embedded log")
}

/// Appends forever from four concurrent producers, printing `ACK <payload>` after each append
/// returns. Run only as the child of `acknowledged_appends_survive_kill_9`.
async fn crash_child(dir: &str) {
    let log = open(std::path::Path::new(dir)).await;
    log.create_topic(TOPIC, 4).await.expect("create topic");
    let producers = (0..4).map(|producer| {
        let log = log.clone();
        tokio::spawn(async move {
            for seq in 0.. {
                let payload = format!("p{producer}-{seq}");
                let record = OutgoingRecord::keyed(format!("key-{}", seq % 7), payload.clone());
                log.append(TOPIC, vec![record]).await.expect("append");
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {payload}").expect("stdout");
                out.flush().expect("flush");
            }
        })
    });
    futures_wait(producers.collect()).await;
}

async fn futures_wait(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_DIR_VAR) {
        return crash_child(&dir).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "acknowledged_appends_survive_kill_9",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acknowledged = BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        if let Some(payload) = line.strip_prefix("ACK ") {
            acknowledged.insert(payload.to_owned());
            if acknowledged.len() == 400 {
                break;
            }
        }
    }
    child.kill().expect("kill -9 the child"); // SIGKILL on Unix: no destructor, no flush.
    child.wait().expect("reap child");
    assert_eq!(
        acknowledged.len(),
        400,
        "the child acknowledged appends before dying"
    );

    let log = open(dir.path()).await;
    let mut consumer = log.consumer("verify", &[TOPIC]).await.expect("consumer");
    let mut stored = BTreeSet::new();
    let mut offsets_per_partition = std::collections::BTreeMap::<u32, Vec<i64>>::new();
    loop {
        let batch = consumer
            .poll(1_000, Duration::from_millis(300))
            .await
            .expect("poll");
        if batch.is_empty() {
            break;
        }
        for record in batch {
            stored.insert(String::from_utf8(record.payload.to_vec()).expect("utf-8"));
            offsets_per_partition
                .entry(record.position.partition)
                .or_default()
                .push(record.position.offset);
        }
    }
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged records lost after kill -9: {lost:?}"
    );
    for (partition, offsets) in &offsets_per_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &expected,
            "partition {partition} offsets are dense from 0"
        );
    }
    // Appending after recovery continues the offsets instead of reusing them.
    let next = log
        .append(TOPIC, vec![OutgoingRecord::keyed("key-0", "after")])
        .await
        .expect("append after recovery");
    let partition = next[0].partition;
    let before = offsets_per_partition.get(&partition).map_or(0, Vec::len) as i64;
    assert_eq!(next[0].offset, before);
}

#[tokio::test]
async fn records_and_committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = open(dir.path()).await;
        log.create_topic("restart", 2).await.expect("create");
        let batch = (0..6)
            .map(|i| OutgoingRecord::keyed(format!("k{i}"), i.to_string()))
            .collect();
        log.append("restart", batch).await.expect("append");
        let mut consumer = log.consumer("g", &["restart"]).await.expect("consumer");
        let read = poll_exactly(consumer.as_mut(), 6).await;
        let positions: Vec<_> = read.iter().map(|record| record.position.clone()).collect();
        consumer.commit(&positions[..]).await.expect("commit");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = open(dir.path()).await;
    assert_eq!(
        log.partition_count("restart")
            .await
            .expect("topic survives"),
        2
    );
    log.append("restart", vec![OutgoingRecord::keyed("k0", "new")])
        .await
        .expect("append");
    let mut consumer = log.consumer("g", &["restart"]).await.expect("consumer");
    let read = poll_exactly(consumer.as_mut(), 1).await;
    assert_eq!(
        read[0].payload.as_ref(),
        b"new",
        "the group resumes after its commits"
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = open(dir.path()).await;
    let err = EmbeddedLog::open(dir.path(), EmbeddedLogOptions::default())
        .await
        .expect_err("the directory is locked");
    assert!(
        err.to_string().contains("in use by another Pulse process"),
        "{err}"
    );
}

#[tokio::test]
async fn retention_deletes_old_records_without_reusing_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(1_700_000_000_000);
    let options = EmbeddedLogOptions {
        retention: Duration::from_secs(3600),
        clock: Arc::new(clock.clone()),
        ..EmbeddedLogOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), options).await.expect("open");
    log.create_topic("retained", 1).await.expect("create");
    log.append(
        "retained",
        vec![
            OutgoingRecord::keyed("k", "old1"),
            OutgoingRecord::keyed("k", "old2"),
        ],
    )
    .await
    .expect("append old");
    clock.advance(Duration::from_secs(2 * 3600));
    let fresh = log
        .append("retained", vec![OutgoingRecord::keyed("k", "fresh")])
        .await
        .expect("append");
    assert_eq!(log.enforce_retention().await.expect("retention"), 2);
    assert_eq!(fresh[0].offset, 2);
    let mut consumer = log.consumer("g", &["retained"]).await.expect("consumer");
    let read = poll_exactly(consumer.as_mut(), 1).await;
    assert_eq!(read[0].payload.as_ref(), b"fresh");
    assert_eq!(read[0].position.offset, 2);
}

#[tokio::test]
async fn bad_topics_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(dir.path()).await;
    assert!(log.create_topic("bad topic!", 1).await.is_err());
    assert!(log.create_topic("zero", 0).await.is_err());
    let err = log
        .append("missing", vec![OutgoingRecord::keyed("k", "v")])
        .await
        .expect_err("no topic");
    assert!(err.to_string().contains("not found"), "{err}");
    log.create_topic("big", 1).await.expect("create");
    let largest = OutgoingRecord::keyed("k", vec![0u8; pulse_embedded_log::MAX_PAYLOAD_BYTES]);
    log.append("big", vec![largest])
        .await
        .expect("a record of exactly the limit is accepted");
    let huge = OutgoingRecord::keyed("k", vec![0u8; pulse_embedded_log::MAX_PAYLOAD_BYTES + 1]);
    assert!(log.append("big", vec![huge]).await.is_err());
}

/// `kill -9` keeps the page cache, so only the settings SQLite reports can show that a commit
/// is fsynced: WAL with `synchronous = FULL` on the writer's own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_connection_is_in_wal_mode_with_synchronous_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(dir.path()).await;
    let durability = log.durability().await.expect("durability settings");
    assert_eq!(
        (
            durability.journal_mode.as_str(),
            durability.synchronous.as_str()
        ),
        ("wal", "full"),
        "{durability:?}"
    );
}

/// An append whose transaction does not commit (every write of it succeeded, the commit itself
/// fails) is answered with an error, its records are never read, and its offsets are not used
/// up: nothing is acknowledged before it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_commit_fails_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = refuse.clone();
    let options = EmbeddedLogOptions {
        commit_gate: Some(CommitGate(Arc::new(move || {
            !gate.load(std::sync::atomic::Ordering::SeqCst)
        }))),
        ..EmbeddedLogOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), options)
        .await
        .expect("open embedded log");
    log.create_topic(TOPIC, 1).await.expect("create topic");
    let first = log
        .append(TOPIC, vec![OutgoingRecord::keyed("k", "committed")])
        .await
        .expect("a committed append");
    assert_eq!(first[0].offset, 0);

    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = log
        .append(TOPIC, vec![OutgoingRecord::keyed("k", "rolled back")])
        .await;
    assert!(
        refused.is_err(),
        "an append whose commit failed was acknowledged: {refused:?}"
    );

    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let next = log
        .append(TOPIC, vec![OutgoingRecord::keyed("k", "after")])
        .await
        .expect("an append after the failed one");
    assert_eq!(next[0].offset, 1, "the failed commit used up no offset");
    let mut consumer = log.consumer("reader", &[TOPIC]).await.expect("consumer");
    let payloads: Vec<Vec<u8>> = poll_exactly(consumer.as_mut(), 2)
        .await
        .into_iter()
        .map(|record| record.payload.to_vec())
        .collect();
    assert_eq!(payloads, vec![b"committed".to_vec(), b"after".to_vec()]);
}
