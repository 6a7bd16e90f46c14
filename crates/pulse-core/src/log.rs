//! The event log port: durable, partitioned, replayable topics read by consumer groups.
//!
//! Modelled on Kafka's semantics because Kafka is one of the adapters; the embedded log follows
//! the same contract so domain code cannot tell them apart.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::PortResult;

/// One record header. Names may repeat, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, e.g. `traceparent`.
    pub name: String,
    /// Raw header value.
    pub value: Bytes,
}

impl Header {
    /// A header from a name and any byte-like value.
    pub fn new(name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingRecord {
    /// Partitioning key: records with the same key land in the same partition, in append order.
    /// `None` spreads records over partitions.
    pub key: Option<Bytes>,
    /// Opaque payload (protobuf, JSON, …).
    pub payload: Bytes,
    /// Metadata such as trace context.
    pub headers: Vec<Header>,
}

impl OutgoingRecord {
    /// A keyed record with no headers.
    pub fn keyed(key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            key: Some(key.into()),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
}

/// A topic a domain declares (it writes to it, or owns it), created at start-up when missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name, before any deployment prefix.
    pub name: &'static str,
    /// What it carries, for operators.
    pub carries: &'static str,
}

impl TopicSpec {
    /// The name this deployment uses: `prefix` + the contract name.
    pub fn named(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.name)
    }
}

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number, from 0.
    pub partition: u32,
}

/// Where a record lives in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPosition {
    /// Topic name.
    pub topic: String,
    /// Partition number, from 0.
    pub partition: u32,
    /// Offset of the record within its partition.
    pub offset: i64,
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Where the record lives; commit this position once its effect is durable.
    pub position: RecordPosition,
    /// The key it was appended with.
    pub key: Option<Bytes>,
    /// The payload it was appended with.
    pub payload: Bytes,
    /// The headers it was appended with, in order.
    pub headers: Vec<Header>,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl ConsumedRecord {
    /// The first header with `name`, if any.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|header| header.name == name)
            .map(|header| &header.value)
    }
}

/// A durable, partitioned log of records.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Creates `topic` with `partitions` partitions. Creating an existing topic succeeds and keeps
    /// its current partition count.
    async fn create_topic(&self, topic: &str, partitions: u32) -> PortResult<()>;

    /// Number of partitions of `topic`, or [`crate::PortError::NotFound`].
    async fn partition_count(&self, topic: &str) -> PortResult<u32>;

    /// Appends `records` to `topic` and returns their positions, in the same order.
    ///
    /// Returns only once every record is durable (SQLite commit with a synced WAL, or a Kafka
    /// acknowledgement from all in-sync replicas); on error, some records may have been written.
    async fn append(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> PortResult<Vec<RecordPosition>>;

    /// Joins consumer `group` on `topics`. Members of one group share the partitions; each
    /// partition is read from the group's last committed offset (or the earliest record).
    async fn consumer(&self, group: &str, topics: &[&str]) -> PortResult<Box<dyn LogConsumer>>;

    /// Succeeds when the log answers a trivial request.
    async fn ping(&self) -> PortResult<()>;
}

/// One member of a consumer group.
#[async_trait]
pub trait LogConsumer: Send + std::fmt::Debug {
    /// Waits up to `timeout` for records and returns at most `max` of them; an empty batch means
    /// nothing arrived in time. Records of one partition come in offset order.
    async fn poll(&mut self, max: usize, timeout: Duration) -> PortResult<Vec<ConsumedRecord>>;

    /// Commits `positions`: the group will resume *after* each of them. Call only once the effects
    /// of those records are durable.
    async fn commit(&mut self, positions: &[RecordPosition]) -> PortResult<()>;

    /// Partitions currently assigned to this member.
    async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>>;

    /// Makes the next poll of `partition` of `topic` start at `offset` (for replay). Takes effect
    /// once the partition is assigned to this member.
    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> PortResult<()>;

    /// Makes every partition of `topic` resume at the first record appended at or after
    /// `timestamp_ms` (or the end, when there is none).
    async fn seek_to_timestamp(&mut self, topic: &str, timestamp_ms: i64) -> PortResult<()>;

    /// For every partition assigned to this member, how many records lie between its position
    /// (the next record it would read) and the end of the partition: its consumer lag.
    async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>>;

    /// Leaves the group cleanly so its partitions move to the remaining members at once.
    async fn close(self: Box<Self>) -> PortResult<()>;
}

/// For a commit of `positions`: the offset each partition resumes from (one past the highest
/// committed position of that partition).
pub fn resume_offsets(positions: &[RecordPosition]) -> Vec<(TopicPartition, i64)> {
    let mut next: std::collections::BTreeMap<TopicPartition, i64> =
        std::collections::BTreeMap::new();
    for position in positions {
        let tp = TopicPartition {
            topic: position.topic.clone(),
            partition: position.partition,
        };
        let slot = next.entry(tp).or_insert(i64::MIN);
        *slot = (*slot).max(position.offset + 1);
    }
    next.into_iter().collect()
}

/// Refuses a seek on a topic the consumer did not subscribe to.
pub fn ensure_subscribed(subscribed: &[String], topic: &str) -> PortResult<()> {
    if subscribed.iter().any(|name| name == topic) {
        Ok(())
    } else {
        Err(crate::PortError::Invalid(format!(
            "consumer is not subscribed to {topic}"
        )))
    }
}

/// Default time a consumer waits in [`LogConsumer::poll`] in background loops.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: u32, offset: i64) -> RecordPosition {
        RecordPosition {
            topic: topic.into(),
            partition,
            offset,
        }
    }

    #[test]
    fn resume_offsets_take_the_highest_position_per_partition() {
        let resume = resume_offsets(&[at("a", 0, 4), at("a", 0, 2), at("a", 1, 0), at("b", 0, 9)]);
        let as_tuples: Vec<(&str, u32, i64)> = resume
            .iter()
            .map(|(tp, offset)| (tp.topic.as_str(), tp.partition, *offset))
            .collect();
        assert_eq!(as_tuples, vec![("a", 0, 5), ("a", 1, 1), ("b", 0, 10)]);
    }
}
