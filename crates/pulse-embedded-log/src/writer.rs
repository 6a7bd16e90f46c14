//! The single writer of the embedded log: appends are batched into one SQLite transaction
//! ("group commit"), so many concurrent producers share one fsync.

use std::collections::HashMap;
use std::sync::Arc;

use pulse_core::clock::SharedClock;
use pulse_core::log::{OutgoingRecord, RecordPosition};
use pulse_core::{PortError, PortResult};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ends::CommittedEnds;
use crate::schema::{encode_headers, storage_error};
use crate::Durability;

/// Rows per INSERT statement (7 parameters each, far below SQLite's 32,766-parameter limit).
const ROWS_PER_INSERT: usize = 256;

/// Most append requests folded into one transaction.
const MAX_REQUESTS_PER_COMMIT: usize = 512;

pub(crate) struct AppendRequest {
    pub(crate) topic: String,
    pub(crate) records: Vec<OutgoingRecord>,
    pub(crate) reply: oneshot::Sender<PortResult<Vec<RecordPosition>>>,
}

/// Where the writer answers [`crate::EmbeddedLog::durability`].
pub(crate) type DurabilityQuestion = oneshot::Sender<PortResult<Durability>>;

pub(crate) struct Writer {
    conn: SqliteConnection,
    clock: SharedClock,
    /// Partition counts of topics seen so far (a topic's count never shrinks).
    partitions: HashMap<String, u32>,
    /// Round-robin cursor for records without a key.
    unkeyed_cursor: u32,
    appended: watch::Sender<u64>,
    ends: Arc<CommittedEnds>,
}

impl Writer {
    pub(crate) fn new(
        conn: SqliteConnection,
        clock: SharedClock,
        appended: watch::Sender<u64>,
        ends: Arc<CommittedEnds>,
    ) -> Self {
        Self {
            conn,
            clock,
            partitions: HashMap::new(),
            unkeyed_cursor: 0,
            appended,
            ends,
        }
    }

    /// Serves append requests (and questions about its connection) until every append sender
    /// is gone.
    pub(crate) async fn run(
        mut self,
        mut requests: mpsc::Receiver<AppendRequest>,
        mut questions: mpsc::Receiver<DurabilityQuestion>,
    ) {
        let mut batch = Vec::with_capacity(MAX_REQUESTS_PER_COMMIT);
        loop {
            tokio::select! {
                received = requests.recv_many(&mut batch, MAX_REQUESTS_PER_COMMIT) => {
                    if received == 0 {
                        break;
                    }
                    self.commit_batch(std::mem::take(&mut batch)).await;
                }
                Some(reply) = questions.recv() => {
                    let _ = reply.send(Durability::of(&mut self.conn).await);
                }
            }
        }
        let _ = self.conn.close().await;
    }

    async fn commit_batch(&mut self, batch: Vec<AppendRequest>) {
        let started = std::time::Instant::now();
        let mut staged_offsets: HashMap<(String, u32), i64> = HashMap::new();
        let mut results = Vec::with_capacity(batch.len());
        let outcome = self
            .write_batch(&batch, &mut staged_offsets, &mut results)
            .await;
        match outcome {
            Ok(()) => {
                let records: usize = batch.iter().map(|request| request.records.len()).sum();
                // Published before the wake-up below: a consumer woken by it finds the new ends.
                self.ends.advance(&staged_offsets);
                metrics::counter!(crate::APPENDED_RECORDS_TOTAL).increment(records as u64);
                metrics::histogram!(crate::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                self.appended.send_modify(|seq| *seq = seq.wrapping_add(1));
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "embedded log commit failed");
                let message = err.to_string();
                for request in batch {
                    let _ = request.reply.send(Err(PortError::Unavailable {
                        backend: crate::schema::BACKEND,
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    /// Writes every request of `batch` in one transaction. A request that is invalid on its own
    /// (unknown topic) gets its own error in `results` without failing the others.
    async fn write_batch(
        &mut self,
        batch: &[AppendRequest],
        staged: &mut HashMap<(String, u32), i64>,
        results: &mut Vec<PortResult<Vec<RecordPosition>>>,
    ) -> PortResult<()> {
        for request in batch {
            if !self.partitions.contains_key(&request.topic) {
                if let Some(count) = self.load_partition_count(&request.topic).await? {
                    self.partitions.insert(request.topic.clone(), count);
                }
            }
        }
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first could
        // fail outright (SQLITE_BUSY_SNAPSHOT) if an offset commit slipped in before its write.
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await
            .map_err(storage_error)?;
        let written = self.write_records(batch, staged, results).await;
        let end = if written.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        let ended = sqlx::raw_sql(end)
            .execute(&mut self.conn)
            .await
            .map_err(storage_error);
        written.and(ended.map(|_| ()))
    }

    async fn write_records(
        &mut self,
        batch: &[AppendRequest],
        staged: &mut HashMap<(String, u32), i64>,
        results: &mut Vec<PortResult<Vec<RecordPosition>>>,
    ) -> PortResult<()> {
        let now_ms = self.clock.now_ms();
        // Every row to insert with its position, in append order.
        let mut rows: Vec<(&OutgoingRecord, &str, u32, i64)> = Vec::new();
        for request in batch {
            let Some(&partition_count) = self.partitions.get(&request.topic) else {
                results.push(Err(PortError::NotFound(format!("topic {}", request.topic))));
                continue;
            };
            let mut positions = Vec::with_capacity(request.records.len());
            for record in &request.records {
                let partition = match &record.key {
                    Some(key) => crc32fast::hash(key) % partition_count,
                    None => {
                        self.unkeyed_cursor = self.unkeyed_cursor.wrapping_add(1);
                        self.unkeyed_cursor % partition_count
                    }
                };
                let slot = (request.topic.clone(), partition);
                let committed = || self.ends.end(&request.topic, partition);
                let offset = match staged.get(&slot).copied().or_else(committed) {
                    Some(offset) => offset,
                    None => load_next_offset(&mut self.conn, &request.topic, partition).await?,
                };
                staged.insert(slot, offset + 1);
                rows.push((record, request.topic.as_str(), partition, offset));
                positions.push(RecordPosition {
                    topic: request.topic.clone(),
                    partition,
                    offset,
                });
            }
            results.push(Ok(positions));
        }
        // Multi-row INSERTs: each statement is a round trip to sqlx's SQLite worker thread, which
        // costs more than the insert itself.
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                r#"INSERT INTO records (topic, partition, "offset", record_key, payload, headers, timestamp_ms) "#,
            );
            insert.push_values(chunk, |mut row, (record, topic, partition, offset)| {
                row.push_bind(*topic)
                    .push_bind(*partition)
                    .push_bind(*offset)
                    .push_bind(record.key.as_deref())
                    .push_bind(record.payload.as_ref())
                    .push_bind(encode_headers(&record.headers))
                    .push_bind(now_ms);
            });
            insert
                .build()
                .execute(&mut self.conn)
                .await
                .map_err(storage_error)?;
        }
        for ((topic, partition), next_offset) in staged.iter() {
            sqlx::query(
                "UPDATE partitions SET next_offset = ?3 WHERE topic = ?1 AND partition = ?2",
            )
            .bind(topic)
            .bind(partition)
            .bind(next_offset)
            .execute(&mut self.conn)
            .await
            .map_err(storage_error)?;
        }
        Ok(())
    }

    async fn load_partition_count(&mut self, topic: &str) -> PortResult<Option<u32>> {
        sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?1")
            .bind(topic)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(storage_error)
    }
}

async fn load_next_offset(
    conn: &mut SqliteConnection,
    topic: &str,
    partition: u32,
) -> PortResult<i64> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM partitions WHERE topic = ?1 AND partition = ?2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await
    .map_err(storage_error)?;
    next.ok_or_else(|| {
        PortError::Corrupt(format!(
            "partition {partition} of {topic} has no offset row"
        ))
    })
}
