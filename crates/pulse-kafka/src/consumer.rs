//! A member of a Kafka consumer group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::log::{
    ensure_subscribed, resume_offsets, ConsumedRecord, Header, LogConsumer, RecordPosition,
    TopicPartition,
};
use pulse_core::{PortError, PortResult};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::{base_config, blocking, kafka_error, KafkaOptions, BACKEND};

/// Longest wait for the broker when measuring lag.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// After the first record of a batch, how long to wait for the next one before returning.
const BATCH_LINGER: Duration = Duration::from_millis(2);

pub(crate) struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    /// A client with no fetch in flight, for offset queries that must not wait behind one.
    offsets: Arc<BaseConsumer>,
    group: String,
    topics: Vec<String>,
    options: KafkaOptions,
    /// Seeks asked for partitions that may not be assigned yet; applied once they are.
    pending_seeks: HashMap<TopicPartition, i64>,
    /// Set by `close`, which leaves the group itself; `Drop` then has nothing to do.
    closed: bool,
    /// Whether an offset commit is still waiting for the broker.
    commit_in_flight: Arc<AtomicBool>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish()
    }
}

impl KafkaConsumer {
    pub(crate) fn subscribe(
        servers: &str,
        group: &str,
        topics: &[&str],
        options: KafkaOptions,
        offsets: Arc<BaseConsumer>,
    ) -> PortResult<Self> {
        let consumer: StreamConsumer = base_config(servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .map_err(kafka_error)?;
        consumer.subscribe(topics).map_err(kafka_error)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            offsets,
            group: group.to_owned(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            options,
            pending_seeks: HashMap::new(),
            closed: false,
            commit_in_flight: Arc::new(AtomicBool::new(false)),
        })
    }

    fn assigned(&self) -> PortResult<Vec<TopicPartition>> {
        let assignment = self.consumer.assignment().map_err(kafka_error)?;
        Ok(assignment
            .elements()
            .iter()
            .map(|element| TopicPartition {
                topic: element.topic().to_owned(),
                partition: element.partition() as u32,
            })
            .collect())
    }

    async fn seek_partition(&self, tp: &TopicPartition, offset: i64) -> PortResult<()> {
        let consumer = self.consumer.clone();
        let timeout = self.options.request_timeout;
        let (topic, partition) = (tp.topic.clone(), tp.partition as i32);
        blocking(move || {
            consumer
                .seek(&topic, partition, Offset::Offset(offset), timeout)
                .map_err(kafka_error)
        })
        .await
    }

    /// Applies the pending seeks whose partitions are assigned now. A partition that was just
    /// assigned may not accept a seek until its first fetch starts; such seeks stay pending.
    async fn apply_pending_seeks(&mut self) -> PortResult<()> {
        if self.pending_seeks.is_empty() {
            return Ok(());
        }
        let assigned = self.assigned()?;
        let ready: Vec<(TopicPartition, i64)> = self
            .pending_seeks
            .iter()
            .filter(|(tp, _)| assigned.contains(tp))
            .map(|(tp, offset)| (tp.clone(), *offset))
            .collect();
        for (tp, offset) in ready {
            match self.seek_partition(&tp, offset).await {
                Ok(()) => {
                    self.pending_seeks.remove(&tp);
                }
                Err(err) => tracing::debug!(error = %err, ?tp, "seek not accepted yet; will retry"),
            }
        }
        Ok(())
    }
}

/// Where the partitions in `unfetched` will start: the group's committed offset, else the
/// partition's beginning.
fn start_offsets(
    consumer: &StreamConsumer,
    offsets: &BaseConsumer,
    unfetched: &[(String, i32)],
) -> PortResult<TopicPartitionList> {
    let mut query = TopicPartitionList::with_capacity(unfetched.len());
    for (topic, partition) in unfetched {
        query
            .add_partition(topic, *partition)
            .set_offset(Offset::Invalid)
            .map_err(kafka_error)?;
    }
    let mut starts = consumer
        .committed_offsets(query, LAG_TIMEOUT)
        .map_err(kafka_error)?;
    let mut beginnings_query = TopicPartitionList::new();
    for element in starts.elements() {
        if !matches!(element.offset(), Offset::Offset(_)) {
            beginnings_query
                .add_partition_offset(element.topic(), element.partition(), Offset::Beginning)
                .map_err(kafka_error)?;
        }
    }
    if beginnings_query.count() > 0 {
        let beginnings = offsets
            .offsets_for_times(beginnings_query, LAG_TIMEOUT)
            .map_err(kafka_error)?;
        for element in beginnings.elements() {
            starts
                .set_partition_offset(element.topic(), element.partition(), element.offset())
                .map_err(kafka_error)?;
        }
    }
    Ok(starts)
}

fn to_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    Header::new(
                        header.key,
                        Bytes::copy_from_slice(header.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        position: RecordPosition {
            topic: message.topic().to_owned(),
            partition: message.partition() as u32,
            offset: message.offset(),
        },
        key: message.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
        timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> PortResult<Vec<ConsumedRecord>> {
        self.apply_pending_seeks().await?;
        let max = max.max(1);
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < max {
            let wait = if records.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                BATCH_LINGER
            };
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => {
                    let record = to_record(&message);
                    drop(message);
                    if self.pending_seeks.is_empty() {
                        records.push(record);
                        continue;
                    }
                    let tp = TopicPartition {
                        topic: record.position.topic.clone(),
                        partition: record.position.partition,
                    };
                    match self.pending_seeks.get(&tp).copied() {
                        None => records.push(record),
                        // Fetched before the seek of its partition took effect: the partition is
                        // being fetched now, so the seek can be applied, and the record is stale.
                        // A seek refused even now is given up and the record kept: a partition
                        // must never stall (or lose records) behind a seek that cannot happen.
                        Some(offset) => match self.seek_partition(&tp, offset).await {
                            Ok(()) => {
                                self.pending_seeks.remove(&tp);
                            }
                            Err(err) => {
                                tracing::warn!(
                                    error = %err, topic = %tp.topic, partition = tp.partition, offset,
                                    "seek refused; reading on from the current position"
                                );
                                self.pending_seeks.remove(&tp);
                                records.push(record);
                            }
                        },
                    }
                }
                // Transient consumption errors (a broker restarting) are retried by librdkafka.
                Ok(Err(KafkaError::MessageConsumption(code))) => {
                    tracing::warn!(%code, group = %self.group, "kafka consume error; retrying");
                    if records.is_empty() && Instant::now() >= deadline {
                        break;
                    }
                }
                Ok(Err(err)) => return Err(kafka_error(err)),
            }
            if !self.pending_seeks.is_empty() {
                self.apply_pending_seeks().await?;
            }
        }
        Ok(records)
    }

    async fn commit(&mut self, positions: &[RecordPosition]) -> PortResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let resume = resume_offsets(positions);
        let mut list = TopicPartitionList::with_capacity(resume.len());
        for (tp, offset) in resume {
            list.add_partition_offset(&tp.topic, tp.partition as i32, Offset::Offset(offset))
                .map_err(kafka_error)?;
        }
        // A synchronous commit waits for the group coordinator without a deadline; while the
        // broker is away, or the group rebalances (which needs this member to keep polling), it
        // can wait for minutes. Bounded here: the caller keeps its positions, goes back to
        // polling, and commits again later. At most one commit is in flight.
        if self.commit_in_flight.swap(true, Ordering::AcqRel) {
            return Err(PortError::unavailable(
                BACKEND,
                "the previous offset commit has not returned yet",
            ));
        }
        let in_flight = self.commit_in_flight.clone();
        let consumer = self.consumer.clone();
        let commit = tokio::task::spawn_blocking(move || {
            let committed = consumer
                .commit(&list, CommitMode::Sync)
                .map_err(kafka_error);
            in_flight.store(false, Ordering::Release);
            committed
        });
        match tokio::time::timeout(self.options.request_timeout, commit).await {
            Ok(joined) => joined.map_err(|err| PortError::unavailable(BACKEND, err))?,
            Err(_) => Err(PortError::Timeout {
                backend: BACKEND,
                timeout: self.options.request_timeout,
            }),
        }
    }

    async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>> {
        self.assigned()
    }

    async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>> {
        let consumer = self.consumer.clone();
        let offsets = self.offsets.clone();
        blocking(move || {
            let positions = consumer.position().map_err(kafka_error)?;
            if positions.count() == 0 {
                // Nothing assigned (more members than partitions): nothing behind. librdkafka
                // refuses an offsets query for no partition.
                return Ok(Vec::new());
            }
            // Partition ends come from the offsets client in one ListOffsets request. Asked
            // through the consumer, each partition's query queued behind the consumer's
            // long-polling fetch on the same connection: half a second per partition.
            let mut ends_query = TopicPartitionList::with_capacity(positions.count());
            for element in positions.elements() {
                ends_query
                    .add_partition_offset(element.topic(), element.partition(), Offset::End)
                    .map_err(kafka_error)?;
            }
            let ends = offsets
                .offsets_for_times(ends_query, LAG_TIMEOUT)
                .map_err(kafka_error)?;
            // Before its first fetch a partition has no position yet: it will start from the
            // committed offset, or from the beginning when the group has none.
            let unfetched: Vec<(String, i32)> = positions
                .elements()
                .iter()
                .filter(|element| !matches!(element.offset(), Offset::Offset(_)))
                .map(|element| (element.topic().to_owned(), element.partition()))
                .collect();
            let starts = if unfetched.is_empty() {
                TopicPartitionList::new()
            } else {
                start_offsets(&consumer, offsets.as_ref(), &unfetched)?
            };
            let mut lag = Vec::with_capacity(positions.count());
            for element in positions.elements() {
                let (topic, partition) = (element.topic(), element.partition());
                let offset_in = |list: &TopicPartitionList| {
                    list.find_partition(topic, partition)
                        .and_then(|found| match found.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        })
                };
                let Some(end) = offset_in(&ends) else {
                    continue;
                };
                let from = match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => offset_in(&starts),
                };
                let Some(from) = from else {
                    continue;
                };
                let tp = TopicPartition {
                    topic: topic.to_owned(),
                    partition: partition as u32,
                };
                lag.push((tp, u64::try_from(end - from).unwrap_or(0)));
            }
            Ok(lag)
        })
        .await
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> PortResult<()> {
        ensure_subscribed(&self.topics, topic)?;
        let tp = TopicPartition {
            topic: topic.to_owned(),
            partition,
        };
        self.pending_seeks.insert(tp, offset.max(0));
        self.apply_pending_seeks().await
    }

    async fn seek_to_timestamp(&mut self, topic: &str, timestamp_ms: i64) -> PortResult<()> {
        let consumer = self.consumer.clone();
        let timeout = self.options.request_timeout;
        let topic_name = topic.to_owned();
        let offsets = blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic_name), timeout)
                .map_err(kafka_error)?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic_name)
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            // Each partition's end is read *before* the lookup by time: a partition with no
            // record at or after the time resumes there, so a record appended while the lookup
            // runs (it would be past an end read afterwards) is still consumed.
            let mut ends = std::collections::HashMap::with_capacity(partitions);
            for partition in 0..partitions as i32 {
                let (_, high) = consumer
                    .fetch_watermarks(&topic_name, partition, timeout)
                    .map_err(kafka_error)?;
                ends.insert(partition, high);
            }
            let mut query = TopicPartitionList::with_capacity(partitions);
            for partition in 0..partitions {
                query
                    .add_partition_offset(
                        &topic_name,
                        partition as i32,
                        Offset::Offset(timestamp_ms),
                    )
                    .map_err(kafka_error)?;
            }
            let found = consumer
                .offsets_for_times(query, timeout)
                .map_err(kafka_error)?;
            let mut offsets = Vec::new();
            for element in found.elements() {
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    // No record at or after the time: resume at the end read before.
                    _ => ends.get(&element.partition()).copied().unwrap_or(0),
                };
                offsets.push((element.partition() as u32, offset));
            }
            Ok(offsets)
        })
        .await?;
        for (partition, offset) in offsets {
            self.seek(topic, partition, offset).await?;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> PortResult<()> {
        self.closed = true;
        let consumer = self.consumer.clone();
        drop(self);
        // Unsubscribing and dropping the last reference leaves the group (a blocking network
        // round trip) before this returns, so the partitions move to other members at once.
        blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
            Ok(())
        })
        .await
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The last reference closes the consumer, which leaves the group over the network: keep
        // that off the async workers when dropped inside a runtime.
        if self.closed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let consumer = self.consumer.clone();
            drop(runtime.spawn_blocking(move || drop(consumer)));
        }
    }
}
