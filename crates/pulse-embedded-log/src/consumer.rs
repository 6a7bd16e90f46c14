//! A member of an embedded consumer group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::log::{
    ensure_subscribed, resume_offsets, ConsumedRecord, LogConsumer, RecordPosition, TopicPartition,
};
use pulse_core::{PortError, PortResult};
use sqlx::Row;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::schema::{decode_headers, storage_error};
use crate::Shared;

/// How often an idle consumer re-checks its group for joins and leaves.
const REBALANCE_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(crate) struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group: String,
    member: u64,
    topics: Vec<String>,
    /// Generation of `positions`; `None` until the first assignment.
    generation: Option<u64>,
    /// Next offset to read for every assigned partition.
    positions: BTreeMap<TopicPartition, i64>,
    /// Seeks asked for partitions that may not be assigned yet.
    pending_seeks: HashMap<TopicPartition, i64>,
    /// Where the next poll starts, so one busy partition cannot starve the others.
    cursor: usize,
    appended: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    pub(crate) fn new(shared: Arc<Shared>, group: &str, topics: Vec<String>) -> Self {
        let member = shared.groups.join(group, topics.clone());
        let appended = shared.appended.subscribe();
        Self {
            shared,
            group: group.to_owned(),
            member,
            topics,
            generation: None,
            positions: BTreeMap::new(),
            pending_seeks: HashMap::new(),
            cursor: 0,
            appended,
        }
    }

    /// Adopts the group's current assignment if it changed, then applies pending seeks.
    async fn refresh_assignment(&mut self) -> PortResult<()> {
        let current = self.shared.groups.generation(&self.group);
        if self.generation != Some(current) {
            let counts = self.partition_counts().await?;
            let (generation, assigned) =
                self.shared
                    .groups
                    .assignment(&self.group, self.member, &counts);
            let mut positions = BTreeMap::new();
            for tp in assigned {
                let offset = match self.positions.get(&tp) {
                    Some(offset) => *offset,
                    None => self.committed_offset(&tp).await?,
                };
                positions.insert(tp, offset);
            }
            self.positions = positions;
            self.generation = Some(generation);
        }
        let positions = &mut self.positions;
        self.pending_seeks
            .retain(|tp, offset| match positions.get_mut(tp) {
                Some(position) => {
                    *position = *offset;
                    false
                }
                None => true,
            });
        Ok(())
    }

    async fn partition_counts(&self) -> PortResult<HashMap<String, u32>> {
        let mut counts = HashMap::with_capacity(self.topics.len());
        for topic in &self.topics {
            counts.insert(topic.clone(), self.shared.partition_count(topic).await?);
        }
        Ok(counts)
    }

    async fn committed_offset(&self, tp: &TopicPartition) -> PortResult<i64> {
        let committed: Option<i64> = sqlx::query_scalar(
            "SELECT next_offset FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
        )
        .bind(&self.group)
        .bind(&tp.topic)
        .bind(tp.partition)
        .fetch_optional(&self.shared.pool)
        .await
        .map_err(storage_error)?;
        Ok(committed.unwrap_or(0))
    }

    async fn read_available(&mut self, max: usize) -> PortResult<Vec<ConsumedRecord>> {
        let assigned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let mut records = Vec::new();
        if assigned.is_empty() {
            return Ok(records);
        }
        self.cursor %= assigned.len();
        let order = assigned[self.cursor..]
            .iter()
            .chain(&assigned[..self.cursor]);
        for tp in order {
            if records.len() >= max {
                break;
            }
            let from = self.positions[tp];
            // Nothing committed at or after `from`: no query (an idle consumer polls every
            // partition it holds several times a second).
            if self
                .shared
                .ends
                .end(&tp.topic, tp.partition)
                .is_some_and(|end| end <= from)
            {
                continue;
            }
            let limit = i64::try_from(max - records.len()).unwrap_or(i64::MAX);
            let rows = sqlx::query(
                r#"SELECT "offset", record_key, payload, headers, timestamp_ms FROM records
                   WHERE topic = ?1 AND partition = ?2 AND "offset" >= ?3
                   ORDER BY "offset" LIMIT ?4"#,
            )
            .bind(&tp.topic)
            .bind(tp.partition)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(storage_error)?;
            for row in rows {
                let offset: i64 = row.get(0);
                let key: Option<Vec<u8>> = row.get(1);
                let payload: Vec<u8> = row.get(2);
                let headers: Vec<u8> = row.get(3);
                records.push(ConsumedRecord {
                    position: RecordPosition {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset,
                    },
                    key: key.map(Bytes::from),
                    payload: Bytes::from(payload),
                    headers: decode_headers(&headers)?,
                    timestamp_ms: row.get(4),
                });
                self.positions.insert(tp.clone(), offset + 1);
            }
        }
        self.cursor += 1;
        Ok(records)
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> PortResult<Vec<ConsumedRecord>> {
        let max = max.max(1);
        let deadline = Instant::now() + timeout;
        loop {
            // Mark the current append sequence as seen *before* reading, so an append that lands
            // between the read and the wait below still wakes us.
            self.appended.borrow_and_update();
            self.refresh_assignment().await?;
            let records = self.read_available(max).await?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            let wait = (deadline - now).min(REBALANCE_CHECK);
            let _ = tokio::time::timeout(wait, self.appended.changed()).await;
        }
    }

    async fn commit(&mut self, positions: &[RecordPosition]) -> PortResult<()> {
        let now_ms = self.shared.clock.now_ms();
        let mut tx = self.shared.pool.begin().await.map_err(storage_error)?;
        for (tp, next_offset) in resume_offsets(positions) {
            sqlx::query(
                "INSERT INTO group_offsets (group_id, topic, partition, next_offset, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, topic, partition)
                 DO UPDATE SET next_offset = excluded.next_offset, updated_ms = excluded.updated_ms",
            )
            .bind(&self.group)
            .bind(&tp.topic)
            .bind(tp.partition)
            .bind(next_offset)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(storage_error)?;
        }
        tx.commit().await.map_err(storage_error)
    }

    async fn assignment(&mut self) -> PortResult<Vec<TopicPartition>> {
        self.refresh_assignment().await?;
        Ok(self.positions.keys().cloned().collect())
    }

    async fn lag(&mut self) -> PortResult<Vec<(TopicPartition, u64)>> {
        self.refresh_assignment().await?;
        let mut lag = Vec::with_capacity(self.positions.len());
        for (tp, position) in &self.positions {
            let end: i64 = sqlx::query_scalar(
                "SELECT next_offset FROM partitions WHERE topic = ?1 AND partition = ?2",
            )
            .bind(&tp.topic)
            .bind(tp.partition)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(storage_error)?
            .unwrap_or(0);
            lag.push((tp.clone(), u64::try_from(end - position).unwrap_or(0)));
        }
        Ok(lag)
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> PortResult<()> {
        ensure_subscribed(&self.topics, topic)?;
        let count = self.shared.partition_count(topic).await?;
        if partition >= count {
            return Err(PortError::Invalid(format!(
                "{topic} has {count} partitions; there is no partition {partition}"
            )));
        }
        let tp = TopicPartition {
            topic: topic.to_owned(),
            partition,
        };
        self.pending_seeks.insert(tp, offset.max(0));
        self.refresh_assignment().await
    }

    async fn seek_to_timestamp(&mut self, topic: &str, timestamp_ms: i64) -> PortResult<()> {
        let count = self.shared.partition_count(topic).await?;
        for partition in 0..count {
            let offset: Option<i64> = sqlx::query_scalar(
                r#"SELECT COALESCE(
                       (SELECT MIN("offset") FROM records
                        WHERE topic = ?1 AND partition = ?2 AND timestamp_ms >= ?3),
                       (SELECT next_offset FROM partitions WHERE topic = ?1 AND partition = ?2))"#,
            )
            .bind(topic)
            .bind(partition)
            .bind(timestamp_ms)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(storage_error)?;
            self.seek(topic, partition, offset.unwrap_or(0)).await?;
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> PortResult<()> {
        // Leaving happens in Drop.
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.shared.groups.leave(&self.group, self.member);
    }
}
