//! The consumer loop every processor shares: join a group (retrying while the log is away),
//! poll batches, let the [`Processor`] apply them, dead-letter what it refuses, and commit
//! offsets only after the effects are durable — with the pending commits, lag, backoff and
//! shutdown handling written once.
//!
//! A processor only says what a batch *does* ([`Processor::handle`]), what it derives from its
//! state now and then ([`Processor::flush`], [`Processor::tick`]) and how it starts
//! ([`Processor::start`], e.g. seeking back to rebuild lost state). Invariants the loop keeps:
//! * an offset is committed only after `handle` returned `Ok` for its record and any record it
//!   refused is on the dead-letter topic; a batch whose `handle` fails is retried (backoff with
//!   jitter) until it succeeds or shutdown interrupts it — then it is not committed, so it is
//!   redelivered, and `handle` must be idempotent;
//! * under load, commits happen at most every `commit_interval`, flushes every
//!   `flush_interval`; a caught-up loop (a short batch) commits and flushes after every batch;
//! * a partition that moved to another member is never committed from here;
//! * every wait (join retry, poll error, batch retry) ends at once on shutdown; on shutdown the
//!   loop flushes, commits what was applied and leaves the group cleanly.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulse_core::log::{
    ConsumedRecord, EventLog, LogConsumer, OutgoingRecord, RecordPosition, TopicSpec,
};
use pulse_core::retry::backoff;
use pulse_core::PortResult;
use tokio_util::sync::CancellationToken;

/// Where records a processor cannot handle go, with the reason in `pulse.dlq.*` headers.
pub const DEAD_LETTER: TopicSpec = TopicSpec {
    name: "pulse.dead-letter",
    carries:
        "records a processor refused, with pulse.dlq.reason/topic/partition/offset/group headers",
};
/// Batches whose handling failed and was retried, by processor.
pub const BATCH_FAILURES_TOTAL: &str = "pulse_processor_batch_failures_total";
/// Offset commits that failed (retried with the next commit), by processor.
pub const COMMIT_FAILURES_TOTAL: &str = "pulse_processor_commit_failures_total";
/// Records sent to the dead-letter topic, by processor and source topic.
pub const DEAD_LETTERS_TOTAL: &str = "pulse_processor_dead_letters_total";
/// Replays a processor asked for (its state was lost), by processor and reason.
pub const REPLAYS_TOTAL: &str = "pulse_processor_replays_total";
/// Records between a group member's position and the end of each partition it owns.
pub const CONSUMER_LAG: &str = "pulse_consumer_lag";
/// How often the consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest the loop waits for one lag measurement.
const LAG_BUDGET: Duration = Duration::from_secs(1);
/// Longest one poll waits for records.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts of a processor's start-up step (e.g. the engine's seek back for its replay).
const START_ATTEMPTS: u32 = 5;

/// A record of a batch the processor refuses for good (undecodable, invalid): it goes to the
/// dead-letter topic instead of stalling its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Index of the record in the batch.
    pub index: usize,
    /// Why, for the `pulse.dlq.reason` header.
    pub reason: String,
}

/// What a processor does with the records of its group.
#[async_trait]
pub trait Processor: Send + std::fmt::Debug {
    /// The processor's name: its role on the command line and its `processor` metrics label.
    fn name(&self) -> &'static str;

    /// Called once the consumer joined its group, before the first poll.
    async fn start(&mut self, _consumer: &mut dyn LogConsumer) -> PortResult<()> {
        Ok(())
    }

    /// Applies `records` (in offset order per partition) durably, returning those it refuses
    /// for good. An error fails the whole batch, which is retried: effects must be idempotent.
    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>>;

    /// Publishes what the applied records changed (a derived view), after every batch when
    /// caught up and at most every `flush_interval` under load. A failure is retried then.
    async fn flush(&mut self) -> PortResult<()> {
        Ok(())
    }

    /// Periodic work independent of new records (refreshing or expiring derived state). A
    /// processor whose state lives outside it (a cache) checks here that the state is still
    /// there, and asks for a replay when it is gone.
    async fn tick(&mut self) -> PortResult<Tick> {
        Ok(Tick::Continue)
    }
}

/// What the loop does after a [`Processor::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Go on consuming.
    Continue,
    /// The processor's state was lost: read every topic again from the first record at or after
    /// `from_ms`, dropping the offsets applied but not committed (their effects went with the
    /// state).
    Replay {
        /// Unix milliseconds to resume from.
        from_ms: i64,
        /// Why, for the log and the `reason` label of the replay counter.
        reason: &'static str,
    },
}

/// How a processor consumes.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Consumer group.
    pub group: String,
    /// Topics read.
    pub topics: Vec<String>,
    /// Where refused records go.
    pub dead_letter_topic: String,
    /// Most records per batch.
    pub batch_size: usize,
    /// Under load, the longest delay between applying a record and flushing.
    pub flush_interval: Duration,
    /// Under load, the longest delay between applying a record and committing its offset.
    pub commit_interval: Duration,
    /// How often [`Processor::tick`] runs.
    pub tick: Duration,
    /// First retry delay after an error (joins, polls, batches); doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl ConsumerSettings {
    /// Settings for `group` reading `topics`, with the loop's defaults.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            group: group.into(),
            topics,
            dead_letter_topic: DEAD_LETTER.name.to_owned(),
            batch_size: 5_000,
            flush_interval: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            tick: Duration::from_secs(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Sleeps `delay` unless shutdown comes first; `false` when it did.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Consumes for `processor` until `shutdown`. Returns an error only when the group cannot be
/// joined for good (a non-retryable refusal), so the process stops instead of idling.
pub async fn run<P: Processor>(
    log: Arc<dyn EventLog>,
    mut processor: P,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> PortResult<()> {
    let name = processor.name();
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let mut delays = backoff(settings.retry_min, settings.retry_max);
    let mut consumer = loop {
        match log.consumer(&settings.group, &topics).await {
            Ok(consumer) => break consumer,
            Err(err) if err.is_retryable() => {
                let delay = delays.next().unwrap_or(settings.retry_max);
                tracing::warn!(processor = name, error = %err, ?delay, "cannot join the consumer group; retrying");
                if !pause(delay, &shutdown).await {
                    return Ok(());
                }
            }
            Err(err) => return Err(err),
        }
    };
    // A start-up step that meets a busy broker (a seek by timestamp timing out) is tried again:
    // giving up at once would skip a replay the processor asked for. A refusal retrying cannot
    // mend, or one that outlasts the attempts, leaves it consuming from the committed offsets.
    let mut start_delays = backoff(settings.retry_min, settings.retry_max);
    for attempt in 1..=START_ATTEMPTS {
        match processor.start(consumer.as_mut()).await {
            Ok(()) => break,
            Err(err) if err.is_retryable() && attempt < START_ATTEMPTS => {
                let delay = start_delays.next().unwrap_or(settings.retry_max);
                tracing::warn!(processor = name, error = %err, attempt, ?delay, "processor start-up step failed; retrying");
                if !pause(delay, &shutdown).await {
                    return consumer.close().await;
                }
            }
            Err(err) => {
                tracing::warn!(processor = name, error = %err, "processor start-up step failed; consuming from the committed offsets");
                break;
            }
        }
    }
    let mut state = LoopState::new(&settings);
    let mut poll_delays = backoff(settings.retry_min, settings.retry_max);
    while !shutdown.is_cancelled() {
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            polled = consumer.poll(settings.batch_size, POLL_TIMEOUT.min(settings.flush_interval)) => polled,
        };
        // Caught up (a short batch): flush and commit now. Under load: at most every interval.
        let mut caught_up = false;
        match polled {
            Ok(records) if !records.is_empty() => {
                caught_up = records.len() < settings.batch_size;
                if !handle_with_retry(&log, &mut processor, &records, &settings, &shutdown).await {
                    break;
                }
                state.offsets.applied(&records);
                poll_delays = backoff(settings.retry_min, settings.retry_max);
            }
            Ok(_) => {}
            Err(err) => {
                let delay = poll_delays.next().unwrap_or(settings.retry_max);
                tracing::warn!(processor = name, error = %err, ?delay, "poll failed; retrying");
                if !pause(delay, &shutdown).await {
                    break;
                }
            }
        }
        if caught_up || state.last_flush.elapsed() >= settings.flush_interval {
            state.last_flush = Instant::now();
            if let Err(err) = processor.flush().await {
                tracing::warn!(processor = name, error = %err, "flush failed; will retry");
            }
        }
        if caught_up || state.offsets.due(settings.commit_interval) {
            state.offsets.commit(consumer.as_mut(), name).await;
        }
        if Instant::now() >= state.next_tick {
            state.next_tick = Instant::now() + settings.tick;
            match processor.tick().await {
                Ok(Tick::Continue) => {}
                Ok(Tick::Replay { from_ms, reason }) => {
                    replay(consumer.as_mut(), &settings.topics, from_ms, name, reason).await;
                    state.offsets.forget();
                }
                Err(err) => {
                    tracing::warn!(processor = name, error = %err, "tick failed; will retry");
                }
            }
        }
        if Instant::now() >= state.next_lag {
            state.next_lag = Instant::now() + LAG_INTERVAL;
            // Measuring asks the broker; a slow or absent one must not hold up consuming.
            let measured = report_lag(consumer.as_mut(), &settings.group, &mut state.lag_reported);
            if tokio::time::timeout(LAG_BUDGET, measured).await.is_err() {
                tracing::debug!(
                    processor = name,
                    "consumer lag not measured within {LAG_BUDGET:?}"
                );
            }
        }
    }
    if let Err(err) = processor.flush().await {
        tracing::warn!(processor = name, error = %err, "final flush failed; the next member redoes it");
    }
    state.offsets.commit(consumer.as_mut(), name).await;
    consumer.close().await
}

struct LoopState {
    offsets: PendingCommits,
    last_flush: Instant,
    next_tick: Instant,
    next_lag: Instant,
    lag_reported: BTreeSet<(String, u32)>,
}

impl LoopState {
    fn new(settings: &ConsumerSettings) -> Self {
        Self {
            offsets: PendingCommits::default(),
            last_flush: Instant::now(),
            next_tick: Instant::now() + settings.tick,
            next_lag: Instant::now(),
            lag_reported: BTreeSet::new(),
        }
    }
}

/// Makes every partition of `topics` this member owns resume at `from_ms`.
async fn replay(
    consumer: &mut dyn LogConsumer,
    topics: &[String],
    from_ms: i64,
    processor: &'static str,
    reason: &'static str,
) {
    tracing::warn!(
        processor,
        reason,
        from_ms,
        "state lost; replaying the log to rebuild it"
    );
    metrics::counter!(REPLAYS_TOTAL, "processor" => processor, "reason" => reason).increment(1);
    for topic in topics {
        if let Err(err) = consumer.seek_to_timestamp(topic, from_ms).await {
            tracing::warn!(processor, error = %err, topic, "cannot seek back to replay");
        }
    }
}

/// Applies a batch (and dead-letters what the processor refused) until both succeed (`true`)
/// or shutdown interrupts (`false`: the batch is not committed, so it is redelivered).
async fn handle_with_retry<P: Processor>(
    log: &Arc<dyn EventLog>,
    processor: &mut P,
    records: &[ConsumedRecord],
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
) -> bool {
    let name = processor.name();
    let mut delays = backoff(settings.retry_min, settings.retry_max);
    // Refused records whose dead-lettering failed: the batch's effects are applied, so only
    // the dead-lettering is retried.
    let mut refused: Option<Vec<Poison>> = None;
    loop {
        let handled = match refused.take() {
            Some(poison) => Ok(poison),
            None => processor.handle(records).await,
        };
        let failure = match handled {
            Ok(poison) if poison.is_empty() => return true,
            Ok(poison) => match dead_letter(log.as_ref(), records, &poison, settings, name).await {
                Ok(()) => return true,
                Err(err) => {
                    refused = Some(poison);
                    err
                }
            },
            Err(err) => err,
        };
        metrics::counter!(BATCH_FAILURES_TOTAL, "processor" => name).increment(1);
        let delay = delays.next().unwrap_or(settings.retry_max);
        tracing::warn!(processor = name, error = %failure, ?delay, "batch failed; retrying");
        if !pause(delay, shutdown).await {
            return false;
        }
    }
}

/// Appends the refused records of `records` to the dead-letter topic with their reasons.
async fn dead_letter(
    log: &dyn EventLog,
    records: &[ConsumedRecord],
    refused: &[Poison],
    settings: &ConsumerSettings,
    processor: &'static str,
) -> PortResult<()> {
    let letters: Vec<OutgoingRecord> = refused
        .iter()
        .filter_map(|poison| Some((records.get(poison.index)?, &poison.reason)))
        .map(|(record, reason)| {
            tracing::warn!(
                processor,
                topic = %record.position.topic,
                partition = record.position.partition,
                offset = record.position.offset,
                reason,
                "dead-lettering a record"
            );
            OutgoingRecord {
                key: record.key.clone(),
                payload: record.payload.clone(),
                headers: record.headers.clone(),
            }
            .with_header("pulse.dlq.reason", reason.clone())
            .with_header("pulse.dlq.topic", record.position.topic.clone())
            .with_header("pulse.dlq.partition", record.position.partition.to_string())
            .with_header("pulse.dlq.offset", record.position.offset.to_string())
            .with_header("pulse.dlq.group", settings.group.clone())
        })
        .collect();
    let count = letters.len() as u64;
    log.append(&settings.dead_letter_topic, letters).await?;
    metrics::counter!(DEAD_LETTERS_TOTAL, "processor" => processor).increment(count);
    Ok(())
}

/// Publishes the consumer's lag per partition; partitions it no longer owns drop to 0 (their new
/// owner reports them).
async fn report_lag(
    consumer: &mut dyn LogConsumer,
    group: &str,
    reported: &mut BTreeSet<(String, u32)>,
) {
    let lag = match consumer.lag().await {
        Ok(lag) => lag,
        Err(err) => {
            tracing::debug!(error = %err, "cannot measure the consumer lag");
            return;
        }
    };
    let mut now = BTreeSet::new();
    for (tp, behind) in lag {
        metrics::gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
            .set(behind as f64);
        now.insert((tp.topic, tp.partition));
    }
    for (topic, partition) in reported.difference(&now) {
        metrics::gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => topic.clone(), "partition" => partition.to_string())
            .set(0.0);
    }
    *reported = now;
}

/// Offsets of records applied but not yet committed: the latest position per partition.
/// Committing is a broker round trip, so under load it happens once per interval rather than
/// once per batch.
#[derive(Debug)]
pub struct PendingCommits {
    latest: HashMap<(String, u32), RecordPosition>,
    last_commit: Instant,
}

impl Default for PendingCommits {
    fn default() -> Self {
        Self {
            latest: HashMap::new(),
            last_commit: Instant::now(),
        }
    }
}

impl PendingCommits {
    /// Notes `records` (in offset order per partition) as applied.
    pub fn applied(&mut self, records: &[ConsumedRecord]) {
        for record in records {
            let position = &record.position;
            self.latest.insert(
                (position.topic.clone(), position.partition),
                position.clone(),
            );
        }
    }

    /// Drops the noted positions: their effects are gone and their records are read again.
    pub fn forget(&mut self) {
        self.latest.clear();
    }

    /// Whether `interval` has passed since the last commit.
    pub fn due(&self, interval: Duration) -> bool {
        self.last_commit.elapsed() >= interval
    }

    /// Commits the noted positions of the partitions the consumer still owns. A failed commit
    /// keeps them for the next attempt; until then those records would be redelivered, which
    /// idempotent processors absorb.
    pub async fn commit(&mut self, consumer: &mut dyn LogConsumer, processor: &'static str) {
        self.last_commit = Instant::now();
        if self.latest.is_empty() {
            return;
        }
        // A partition that moved to another member since must not be committed from here: its
        // new owner may be further along, and an older offset would rewind the group.
        if let Ok(assigned) = consumer.assignment().await {
            self.latest.retain(|(topic, partition), _| {
                assigned
                    .iter()
                    .any(|tp| tp.partition == *partition && tp.topic == *topic)
            });
            if self.latest.is_empty() {
                return;
            }
        }
        let positions: Vec<RecordPosition> = self.latest.values().cloned().collect();
        match consumer.commit(&positions).await {
            Ok(()) => self.latest.clear(),
            Err(err) => {
                metrics::counter!(COMMIT_FAILURES_TOTAL, "processor" => processor).increment(1);
                tracing::warn!(processor, error = %err, "committing offsets failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod pending_commits_tests {
    use async_trait::async_trait;
    use pulse_core::log::TopicPartition;

    use bytes::Bytes;
    use pulse_core::log::ConsumedRecord;
    use pulse_core::PortError;

    use super::*;

    /// A group member that owns `owned`, records what it is asked to commit, and refuses
    /// commits while `refuse` is set.
    #[derive(Debug, Default)]
    struct Member {
        owned: Vec<TopicPartition>,
        committed: Vec<Vec<RecordPosition>>,
        refuse: bool,
    }

    #[async_trait]
    impl LogConsumer for Member {
        async fn poll(&mut self, _: usize, _: Duration) -> PortResult<Vec<ConsumedRecord>> {
            Ok(Vec::new())
        }
        async fn commit(&mut self, positions: &[RecordPosition]) -> PortResult<()> {
            if self.refuse {
                return Err(PortError::unavailable("log", "coordinator unavailable"));
            }
            let mut positions = positions.to_vec();
            positions.sort_by_key(|p| (p.topic.clone(), p.partition));
            self.committed.push(positions);
            Ok(())
        }
        async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>> {
            Ok(self.owned.clone())
        }
        async fn seek(&mut self, _: &str, _: u32, _: i64) -> PortResult<()> {
            Ok(())
        }
        async fn seek_to_timestamp(&mut self, _: &str, _: i64) -> PortResult<()> {
            Ok(())
        }
        async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>> {
            Ok(Vec::new())
        }
        async fn close(self: Box<Self>) -> PortResult<()> {
            Ok(())
        }
    }

    fn record(partition: u32, offset: i64) -> ConsumedRecord {
        ConsumedRecord {
            position: RecordPosition {
                topic: "demand.orders".to_owned(),
                partition,
                offset,
            },
            key: None,
            payload: Bytes::new(),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    fn position(partition: u32, offset: i64) -> RecordPosition {
        record(partition, offset).position
    }

    fn owning(partitions: &[u32]) -> Member {
        Member {
            owned: partitions
                .iter()
                .map(|partition| TopicPartition {
                    topic: "demand.orders".to_owned(),
                    partition: *partition,
                })
                .collect(),
            ..Member::default()
        }
    }

    #[tokio::test]
    async fn commits_fall_due_once_the_interval_has_passed_since_the_last_one() {
        let mut member = owning(&[0]);
        let mut pending = PendingCommits::default();
        assert!(
            !pending.due(Duration::from_secs(3600)),
            "not due right away"
        );
        assert!(pending.due(Duration::ZERO));
        pending.applied(&[record(0, 1)]);
        pending.commit(&mut member, "test").await;
        assert!(
            !pending.due(Duration::from_secs(3600)),
            "a commit starts the interval again"
        );
    }

    #[tokio::test]
    async fn the_latest_position_of_each_partition_is_committed_once() {
        let mut member = owning(&[0, 1]);
        let mut pending = PendingCommits::default();
        pending.applied(&[record(0, 5), record(1, 7), record(0, 6)]);
        pending.commit(&mut member, "test").await;
        pending.commit(&mut member, "test").await;
        assert_eq!(member.committed, vec![vec![position(0, 6), position(1, 7)]]);
    }

    #[tokio::test]
    async fn a_partition_that_moved_to_another_member_is_not_committed() {
        let mut member = owning(&[1]);
        let mut pending = PendingCommits::default();
        pending.applied(&[record(0, 5), record(1, 7)]);
        pending.commit(&mut member, "test").await;
        assert_eq!(member.committed, vec![vec![position(1, 7)]]);
    }

    #[tokio::test]
    async fn a_refused_commit_is_retried_with_the_next_one() {
        let mut member = owning(&[0]);
        member.refuse = true;
        let mut pending = PendingCommits::default();
        pending.applied(&[record(0, 5)]);
        pending.commit(&mut member, "test").await;
        assert!(member.committed.is_empty());
        member.refuse = false;
        pending.applied(&[record(0, 6)]);
        pending.commit(&mut member, "test").await;
        assert_eq!(member.committed, vec![vec![position(0, 6)]]);
    }
}

#[cfg(test)]
mod join_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use pulse_core::log::{ConsumedRecord, OutgoingRecord, RecordPosition};
    use pulse_core::PortError;

    use super::*;

    /// A log whose group coordinator is away: every join fails, retryably, and is counted.
    #[derive(Debug, Default)]
    struct CoordinatorAway {
        joins: AtomicUsize,
    }

    #[async_trait]
    impl EventLog for CoordinatorAway {
        async fn create_topic(&self, _: &str, _: u32) -> PortResult<()> {
            Ok(())
        }
        async fn partition_count(&self, _: &str) -> PortResult<u32> {
            Ok(1)
        }
        async fn append(&self, _: &str, _: Vec<OutgoingRecord>) -> PortResult<Vec<RecordPosition>> {
            Err(PortError::unavailable("log", "coordinator away"))
        }
        async fn consumer(&self, _: &str, _: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
            self.joins.fetch_add(1, Ordering::SeqCst);
            Err(PortError::unavailable("log", "coordinator away"))
        }
        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Idle;

    #[async_trait]
    impl Processor for Idle {
        fn name(&self) -> &'static str {
            "idle"
        }
        async fn handle(&mut self, _: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
            Ok(Vec::new())
        }
    }

    /// Joins are retried with a growing delay (not in a busy loop, not once), and a shutdown
    /// during the wait ends the loop at once, however long the next delay would be.
    #[tokio::test]
    async fn a_join_is_retried_with_backoff_and_shutdown_ends_the_wait() {
        let log = Arc::new(CoordinatorAway::default());
        let settings = ConsumerSettings {
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_secs(60),
            ..ConsumerSettings::new("g", vec!["t".into()])
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(log.clone(), Idle, settings, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let joins = log.joins.load(Ordering::SeqCst);
        // 20, 40, 80, 160 ms (jittered up to double): 3 to 5 attempts in 400 ms.
        assert!((2..=8).contains(&joins), "{joins} joins in 400 ms");
        let stopped_at = Instant::now();
        shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("shutdown ends the retry wait")
            .expect("no panic");
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(stopped_at.elapsed() < Duration::from_millis(500));
    }
}

#[cfg(test)]
mod start_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use pulse_core::log::{ConsumedRecord, OutgoingRecord, RecordPosition, TopicPartition};
    use pulse_core::PortError;

    use super::*;

    #[derive(Debug)]
    struct Quiet;

    #[async_trait]
    impl LogConsumer for Quiet {
        async fn poll(&mut self, _: usize, timeout: Duration) -> PortResult<Vec<ConsumedRecord>> {
            tokio::time::sleep(timeout.min(Duration::from_millis(10))).await;
            Ok(Vec::new())
        }
        async fn commit(&mut self, _: &[RecordPosition]) -> PortResult<()> {
            Ok(())
        }
        async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>> {
            Ok(Vec::new())
        }
        async fn seek(&mut self, _: &str, _: u32, _: i64) -> PortResult<()> {
            Ok(())
        }
        async fn seek_to_timestamp(&mut self, _: &str, _: i64) -> PortResult<()> {
            Ok(())
        }
        async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>> {
            Ok(Vec::new())
        }
        async fn close(self: Box<Self>) -> PortResult<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct QuietLog;

    #[async_trait]
    impl EventLog for QuietLog {
        async fn create_topic(&self, _: &str, _: u32) -> PortResult<()> {
            Ok(())
        }
        async fn partition_count(&self, _: &str) -> PortResult<u32> {
            Ok(1)
        }
        async fn append(&self, _: &str, _: Vec<OutgoingRecord>) -> PortResult<Vec<RecordPosition>> {
            Ok(Vec::new())
        }
        async fn consumer(&self, _: &str, _: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
            Ok(Box::new(Quiet))
        }
        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
    }

    /// Its start-up step fails `failures` times (retryably when `retryable`), then succeeds.
    #[derive(Debug)]
    struct Starting {
        failures: usize,
        retryable: bool,
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Processor for Starting {
        fn name(&self) -> &'static str {
            "starting"
        }
        async fn start(&mut self, _: &mut dyn LogConsumer) -> PortResult<()> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.failures {
                return Err(if self.retryable {
                    PortError::unavailable("test", "broker busy")
                } else {
                    PortError::Invalid("no timestamp index".into())
                });
            }
            Ok(())
        }
        async fn handle(&mut self, _: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
            Ok(Vec::new())
        }
    }

    async fn start_calls(failures: usize, retryable: bool) -> usize {
        let calls = Arc::new(AtomicUsize::new(0));
        let processor = Starting {
            failures,
            retryable,
            calls: calls.clone(),
        };
        let settings = ConsumerSettings {
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            ..ConsumerSettings::new("g", vec!["t".into()])
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            Arc::new(QuietLog),
            processor,
            settings,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        running.await.expect("joins").expect("stops cleanly");
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_start_up_step_that_meets_a_busy_broker_is_tried_again() {
        assert_eq!(
            start_calls(2, true).await,
            3,
            "two failures, then the one that worked"
        );
        assert_eq!(
            start_calls(100, true).await,
            START_ATTEMPTS as usize,
            "bounded"
        );
        assert_eq!(start_calls(1, false).await, 1, "a refusal is not retried");
    }
}
