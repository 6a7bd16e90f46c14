//! Fault-injecting adapters for the ports, to prove the guarantees that only show when something
//! breaks: an [`EventLog`] whose appends fail, hang or lose their acknowledgement, consumers that
//! redeliver what they handed out (as a rebalance does) and report what they delivered and
//! committed, and a [`Cache`] whose writes fail, also half-way through a batch.
//!
//! Each wraps a real adapter (embedded or distributed), so a test runs the real code path with one
//! fault added. Faults are armed and healed from the test while the system runs; every wrapper
//! is cheap to clone and clones share their plan. A clock you drive is
//! [`pulse_core::clock::ManualClock`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::log::{
    resume_offsets, ConsumedRecord, EventLog, LogConsumer, OutgoingRecord, RecordPosition,
    TopicPartition,
};
use pulse_core::{PortError, PortResult};
use tokio::sync::watch;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock already failed; its state is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What happens to one faulted append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendFault {
    /// The append fails at once and writes nothing (a broker that refuses, a full disk).
    Fail,
    /// The append never answers and writes nothing, until [`FaultyLog::release`] makes it fail
    /// (a stalled broker). A caller without a timeout hangs with it.
    Hang,
    /// The records are written, then the answer never comes until [`FaultyLog::release`] makes
    /// it fail: a crash (or a lost acknowledgement) between the append and whatever the caller
    /// does next.
    LoseAck,
}

type AppendPredicate = Box<dyn Fn(&str, &[OutgoingRecord]) -> bool + Send + Sync>;

/// How consumers made by a [`FaultyLog`] redeliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redelivery {
    /// Every record once, as the inner log delivers it.
    #[default]
    Never,
    /// Every non-empty batch is handed out a second time by the next poll, as a consumer group
    /// does when a rebalance or a restart lands before (or just after) a commit.
    EveryBatchTwice,
}

#[derive(Default)]
struct LogPlan {
    queued: VecDeque<AppendFault>,
    /// Every append of a topic matching this fails (after the queued faults).
    failing_when: Option<AppendPredicate>,
    redelivery: Redelivery,
    /// The next this many `consumer` calls fail with a retryable error.
    failing_joins: usize,
    /// From now on every `consumer` call fails with an error retrying cannot mend.
    refusing_joins: bool,
    faults_injected: u64,
    /// Appends that reached the inner log and were acknowledged by it.
    appends_written: u64,
}

/// What one consumer group was handed and what it committed, seen from outside its members.
#[derive(Debug, Default, Clone)]
pub struct GroupRecord {
    /// Every record handed out by `poll`, in order (redeliveries included).
    pub delivered: Vec<(Option<Bytes>, RecordPosition)>,
    /// Per partition, the offset the group resumes from after its members' commits.
    pub committed: BTreeMap<TopicPartition, i64>,
    /// Commits made, in order.
    pub commits: Vec<Vec<RecordPosition>>,
}

impl GroupRecord {
    /// Records of `topic` handed out (redeliveries counted).
    pub fn delivered_on(&self, topic: &str) -> usize {
        self.delivered
            .iter()
            .filter(|(_, position)| position.topic == topic)
            .count()
    }

    /// Whether `position` is covered by a commit.
    pub fn is_committed(&self, position: &RecordPosition) -> bool {
        let partition = TopicPartition {
            topic: position.topic.clone(),
            partition: position.partition,
        };
        self.committed
            .get(&partition)
            .is_some_and(|resume| *resume > position.offset)
    }

    /// Whether every record handed out so far is covered by a commit.
    pub fn all_delivered_committed(&self) -> bool {
        self.delivered
            .iter()
            .all(|(_, position)| self.is_committed(position))
    }

    /// Whether a record with each of `keys` was handed out and every delivery of such a record
    /// is committed: those records' effects are done and will not be redone by this group.
    pub fn settled(&self, keys: &[&str]) -> bool {
        let mut seen = vec![false; keys.len()];
        for (key, position) in &self.delivered {
            let Some(index) = key
                .as_deref()
                .and_then(|key| keys.iter().position(|wanted| wanted.as_bytes() == key))
            else {
                continue;
            };
            if !self.is_committed(position) {
                return false;
            }
            seen[index] = true;
        }
        seen.into_iter().all(|found| found)
    }

    /// How many times a record with `key` was handed out.
    pub fn deliveries_of(&self, key: &str) -> usize {
        self.delivered
            .iter()
            .filter(|(delivered, _)| delivered.as_deref() == Some(key.as_bytes()))
            .count()
    }
}

#[derive(Default)]
struct LogState {
    plan: Mutex<LogPlan>,
    groups: Mutex<BTreeMap<String, GroupRecord>>,
    /// Bumped by [`FaultyLog::release`]; hung appends wait for it.
    released: watch::Sender<u64>,
}

/// An [`EventLog`] around a real one that injects append faults and watches its consumers.
#[derive(Clone)]
pub struct FaultyLog {
    inner: Arc<dyn EventLog>,
    state: Arc<LogState>,
}

impl std::fmt::Debug for FaultyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLog")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultyLog {
    /// Wraps `inner`; no fault is armed.
    pub fn wrap(inner: Arc<dyn EventLog>) -> Self {
        Self {
            inner,
            state: Arc::new(LogState::default()),
        }
    }

    /// The next `count` appends meet `fault`, after those already queued.
    pub fn inject(&self, fault: AppendFault, count: usize) {
        lock(&self.state.plan)
            .queued
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Every append for which `predicate(topic, records)` holds fails, until [`Self::heal`].
    pub fn fail_appends_when(
        &self,
        predicate: impl Fn(&str, &[OutgoingRecord]) -> bool + Send + Sync + 'static,
    ) {
        lock(&self.state.plan).failing_when = Some(Box::new(predicate));
    }

    /// Disarms every queued fault and predicate; appends hung until now stay hung until
    /// [`Self::release`].
    pub fn heal(&self) {
        let mut plan = lock(&self.state.plan);
        plan.queued.clear();
        plan.failing_when = None;
    }

    /// Makes every append hung so far answer with an error.
    pub fn release(&self) {
        self.state
            .released
            .send_modify(|generation| *generation += 1);
    }

    /// The next `count` calls to [`EventLog::consumer`] fail with a retryable error, as joining
    /// a group does while the broker or its coordinator is away.
    pub fn fail_joins(&self, count: usize) {
        lock(&self.state.plan).failing_joins += count;
    }

    /// Every call to [`EventLog::consumer`] from now on fails with an error that retrying cannot
    /// mend (a topic or group the broker will never accept).
    pub fn refuse_joins(&self) {
        lock(&self.state.plan).refusing_joins = true;
    }

    /// How consumers created from now on redeliver.
    pub fn redeliver(&self, redelivery: Redelivery) {
        lock(&self.state.plan).redelivery = redelivery;
    }

    /// Faults injected so far (failed, hung and unacknowledged appends, refused joins).
    pub fn faults_injected(&self) -> u64 {
        lock(&self.state.plan).faults_injected
    }

    /// Appends the inner log acknowledged (including those whose answer was then lost).
    pub fn appends_written(&self) -> u64 {
        lock(&self.state.plan).appends_written
    }

    /// What the members of `group` were handed and committed so far.
    pub fn group(&self, group: &str) -> GroupRecord {
        lock(&self.state.groups)
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    fn next_fault(&self, topic: &str, records: &[OutgoingRecord]) -> Option<AppendFault> {
        let mut plan = lock(&self.state.plan);
        let fault = plan.queued.pop_front().or_else(|| {
            plan.failing_when
                .as_ref()
                .filter(|predicate| predicate(topic, records))
                .map(|_| AppendFault::Fail)
        });
        if fault.is_some() {
            plan.faults_injected += 1;
        }
        fault
    }

    async fn until_released(&self, seen: u64) {
        let mut released = self.state.released.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = released.wait_for(|generation| *generation > seen).await;
    }
}

fn injected(what: &str) -> PortError {
    PortError::unavailable("faulty-log", format!("injected fault: {what}"))
}

#[async_trait]
impl EventLog for FaultyLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> PortResult<()> {
        self.inner.create_topic(topic, partitions).await
    }

    async fn partition_count(&self, topic: &str) -> PortResult<u32> {
        self.inner.partition_count(topic).await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> PortResult<Vec<RecordPosition>> {
        let generation = *self.state.released.borrow();
        match self.next_fault(topic, &records) {
            None => {
                let positions = self.inner.append(topic, records).await?;
                lock(&self.state.plan).appends_written += 1;
                Ok(positions)
            }
            Some(AppendFault::Fail) => Err(injected("append refused")),
            Some(AppendFault::Hang) => {
                self.until_released(generation).await;
                Err(injected("append hung"))
            }
            Some(AppendFault::LoseAck) => {
                self.inner.append(topic, records).await?;
                lock(&self.state.plan).appends_written += 1;
                self.until_released(generation).await;
                Err(injected("acknowledgement lost"))
            }
        }
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
        let redelivery = {
            let mut plan = lock(&self.state.plan);
            if plan.refusing_joins {
                plan.faults_injected += 1;
                return Err(PortError::Invalid(
                    "injected fault: group join refused for good".into(),
                ));
            }
            if plan.failing_joins > 0 {
                plan.failing_joins -= 1;
                plan.faults_injected += 1;
                return Err(injected("group join refused"));
            }
            plan.redelivery
        };
        let inner = self.inner.consumer(group, topics).await?;
        Ok(Box::new(WatchedConsumer {
            inner,
            group: group.to_owned(),
            state: self.state.clone(),
            redelivery,
            handed_out_once: Vec::new(),
        }))
    }

    async fn ping(&self) -> PortResult<()> {
        self.inner.ping().await
    }
}

/// A group member that reports what it hands out and commits, and redelivers as planned.
struct WatchedConsumer {
    inner: Box<dyn LogConsumer>,
    group: String,
    state: Arc<LogState>,
    redelivery: Redelivery,
    /// The last batch, to be handed out again by the next poll.
    handed_out_once: Vec<ConsumedRecord>,
}

impl std::fmt::Debug for WatchedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedConsumer")
            .field("group", &self.group)
            .field("redelivery", &self.redelivery)
            .finish_non_exhaustive()
    }
}

impl WatchedConsumer {
    fn note<R>(&self, change: impl FnOnce(&mut GroupRecord) -> R) -> R {
        let mut groups = lock(&self.state.groups);
        change(groups.entry(self.group.clone()).or_default())
    }
}

#[async_trait]
impl LogConsumer for WatchedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> PortResult<Vec<ConsumedRecord>> {
        let batch = if self.handed_out_once.is_empty() {
            let batch = self.inner.poll(max, timeout).await?;
            if self.redelivery == Redelivery::EveryBatchTwice {
                self.handed_out_once = batch.clone();
            }
            batch
        } else {
            std::mem::take(&mut self.handed_out_once)
        };
        self.note(|group| {
            group.delivered.extend(
                batch
                    .iter()
                    .map(|record| (record.key.clone(), record.position.clone())),
            );
        });
        Ok(batch)
    }

    async fn commit(&mut self, positions: &[RecordPosition]) -> PortResult<()> {
        self.inner.commit(positions).await?;
        self.note(|group| {
            for (partition, resume) in resume_offsets(positions) {
                group.committed.insert(partition, resume);
            }
            group.commits.push(positions.to_vec());
        });
        Ok(())
    }

    async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>> {
        self.inner.assignment().await
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> PortResult<()> {
        self.inner.seek(topic, partition, offset).await
    }

    async fn seek_to_timestamp(&mut self, topic: &str, timestamp_ms: i64) -> PortResult<()> {
        self.inner.seek_to_timestamp(topic, timestamp_ms).await
    }

    async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>> {
        self.inner.lag().await
    }

    async fn close(self: Box<Self>) -> PortResult<()> {
        self.inner.close().await
    }
}

/// How a faulted cache write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The write fails and changes nothing.
    Fail,
    /// A guarded batch ([`Cache::apply_if_absent_many`]) applies its first half, then fails, as a
    /// connection lost half-way through a pipeline; other writes fail and change nothing.
    FailMidBatch,
}

#[derive(Debug, Default)]
struct CachePlan {
    /// While set, every write fails this way.
    failing: Option<WriteFault>,
    failed_writes: u64,
    /// While set, every read fails too (the cache is down, not just refusing writes).
    failing_reads: bool,
    /// Guarded batches that applied their first half before failing.
    half_applied_batches: u64,
}

/// A [`Cache`] around a real one whose writes (and, on demand, reads) fail.
#[derive(Debug, Clone)]
pub struct FaultyCache {
    inner: Arc<dyn Cache>,
    plan: Arc<Mutex<CachePlan>>,
}

impl FaultyCache {
    /// Wraps `inner`; writes pass through.
    pub fn wrap(inner: Arc<dyn Cache>) -> Self {
        Self {
            inner,
            plan: Arc::default(),
        }
    }

    /// Every write fails as `fault` until [`Self::heal`].
    pub fn fail_writes(&self, fault: WriteFault) {
        lock(&self.plan).failing = Some(fault);
    }

    /// Reads fail as well until [`Self::heal`]: the cache is down.
    pub fn fail_reads(&self) {
        lock(&self.plan).failing_reads = true;
    }

    /// Writes and reads pass through again.
    pub fn heal(&self) {
        let mut plan = lock(&self.plan);
        plan.failing = None;
        plan.failing_reads = false;
    }

    fn check_read(&self) -> PortResult<()> {
        if lock(&self.plan).failing_reads {
            return Err(PortError::unavailable(
                "faulty-cache",
                "injected fault: read failed",
            ));
        }
        Ok(())
    }

    /// Writes failed so far.
    pub fn failed_writes(&self) -> u64 {
        lock(&self.plan).failed_writes
    }

    /// Guarded batches that applied their first half and then failed
    /// ([`WriteFault::FailMidBatch`] on a batch of two items or more).
    pub fn half_applied_batches(&self) -> u64 {
        lock(&self.plan).half_applied_batches
    }

    fn fault(&self) -> Option<WriteFault> {
        let mut plan = lock(&self.plan);
        let fault = plan.failing;
        if fault.is_some() {
            plan.failed_writes += 1;
        }
        fault
    }

    fn check(&self) -> PortResult<()> {
        match self.fault() {
            None => Ok(()),
            Some(_) => Err(injected_cache()),
        }
    }
}

fn injected_cache() -> PortError {
    PortError::unavailable("faulty-cache", "injected fault: write failed")
}

#[async_trait]
impl Cache for FaultyCache {
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        self.check_read()?;
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        self.check_read()?;
        self.inner.get_many(keys).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        self.check()?;
        self.inner.set(key, value, ttl).await
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        self.check()?;
        self.inner.incr_by(key, delta, ttl).await
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        self.inner.ttl(key).await
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        self.check()?;
        self.inner.apply(writes).await
    }

    async fn apply_if_absent_many(&self, mut items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        match self.fault() {
            None => self.inner.apply_if_absent_many(items).await,
            Some(WriteFault::Fail) => Err(injected_cache()),
            Some(WriteFault::FailMidBatch) => {
                items.truncate(items.len() / 2);
                if !items.is_empty() {
                    self.inner.apply_if_absent_many(items).await?;
                    lock(&self.plan).half_applied_batches += 1;
                }
                Err(injected_cache())
            }
        }
    }

    async fn index_range(
        &self,
        key: &str,
        min_score: i64,
        limit: usize,
    ) -> PortResult<Vec<(String, i64)>> {
        self.inner.index_range(key, min_score, limit).await
    }

    async fn ping(&self) -> PortResult<()> {
        self.inner.ping().await
    }
}
