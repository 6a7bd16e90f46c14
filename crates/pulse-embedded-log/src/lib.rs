//! Embedded durable event log on SQLite: the stand-in for Kafka when Pulse runs on one machine.
//!
//! Records live in one SQLite database (`log.db` in the data directory) in WAL mode with
//! `synchronous = FULL`, so an append has been fsynced when [`EventLog::append`] returns and
//! survives `kill -9` and power loss. A single writer task folds concurrent appends into one
//! transaction (group commit); readers use a separate connection pool and never block it.
//!
//! Semantics follow Kafka: topics with a fixed number of partitions, the partition chosen by a CRC32
//! of the key (round-robin without one), per-partition offsets that are never reused, consumer
//! groups that resume from committed offsets, seeks by offset and by timestamp, and retention by
//! age. The data directory is locked so that two processes can never write one log.

/// Records appended (committed) to the log.
pub const APPENDED_RECORDS_TOTAL: &str = "pulse_embedded_log_appended_records_total";
/// Time of one group commit (one fsync for many appends), seconds.
pub const COMMIT_SECONDS: &str = "pulse_embedded_log_commit_seconds";
/// Records removed by retention.
pub const EXPIRED_RECORDS_TOTAL: &str = "pulse_embedded_log_expired_records_total";

mod consumer;
mod ends;
mod group;
mod schema;
mod writer;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::clock::{SharedClock, SystemClock};
use pulse_core::log::{EventLog, LogConsumer, OutgoingRecord, RecordPosition};
use pulse_core::{PortError, PortResult};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};

use crate::consumer::EmbeddedConsumer;
use crate::ends::CommittedEnds;
use crate::group::Groups;
use crate::schema::{storage_error, BACKEND};
use crate::writer::{AppendRequest, Writer};

/// Largest payload accepted in one record, as Kafka's default `message.max.bytes`.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// How the embedded log is opened.
#[derive(Debug, Clone)]
pub struct EmbeddedLogOptions {
    /// Records older than this are deleted.
    pub retention: Duration,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Source of record timestamps and of "now" for retention.
    pub clock: SharedClock,
    /// Asked by SQLite just before each append transaction commits; `false` turns the commit
    /// into a rollback. Unset in production: fault-injection tests use it to make a commit fail
    /// after every write of its transaction succeeded.
    pub commit_gate: Option<CommitGate>,
}

/// See [`EmbeddedLogOptions::commit_gate`].
#[derive(Clone)]
pub struct CommitGate(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for CommitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGate")
    }
}

/// The name of a `PRAGMA synchronous` level.
fn synchronous_name(level: i64) -> &'static str {
    match level {
        0 => "off",
        1 => "normal",
        2 => "full",
        3 => "extra",
        _ => "unknown",
    }
}

/// The durability settings SQLite reports on the writer's open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// `PRAGMA journal_mode`: `wal` when appends go through the write-ahead log.
    pub journal_mode: String,
    /// `PRAGMA synchronous`: `full` when every commit is fsynced before it returns.
    pub synchronous: String,
}

impl Durability {
    /// Reads the settings in force on `conn`.
    pub(crate) async fn of(conn: &mut sqlx::SqliteConnection) -> PortResult<Self> {
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(storage_error)?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .map_err(storage_error)?;
        Ok(Self {
            journal_mode: journal_mode.to_ascii_lowercase(),
            synchronous: synchronous_name(synchronous).to_owned(),
        })
    }

    /// Whether a commit is on disk when it returns: WAL with `synchronous` FULL (or EXTRA).
    pub fn is_durable(&self) -> bool {
        self.journal_mode == "wal" && matches!(self.synchronous.as_str(), "full" | "extra")
    }
}

impl Default for EmbeddedLogOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            commit_gate: None,
        }
    }
}

/// State shared by the log handle and its consumers.
#[derive(Debug)]
pub(crate) struct Shared {
    pool: SqlitePool,
    clock: SharedClock,
    groups: Groups,
    /// Bumped after every committed append batch; consumers wait on it instead of polling.
    appended: watch::Sender<u64>,
    /// Where each partition ends, so consumers read only partitions holding records they have
    /// not seen.
    ends: Arc<CommittedEnds>,
    /// Held for the life of the log so no second process opens the same directory.
    _dir_lock: File,
}

impl Shared {
    async fn partition_count(&self, topic: &str) -> PortResult<u32> {
        let count: Option<u32> =
            sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?1")
                .bind(topic)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage_error)?;
        count.ok_or_else(|| PortError::NotFound(format!("topic {topic}")))
    }
}

/// Handle to an open embedded log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    writer: mpsc::Sender<AppendRequest>,
    durability_questions: mpsc::Sender<writer::DurabilityQuestion>,
    retention: Duration,
    path: PathBuf,
}

impl EmbeddedLog {
    /// Opens (creating when missing) the log in `dir`.
    ///
    /// Fails with a clear message when another process holds the directory.
    pub async fn open(dir: &Path, options: EmbeddedLogOptions) -> PortResult<Self> {
        std::fs::create_dir_all(dir).map_err(|err| {
            PortError::Invalid(format!(
                "cannot create data directory {}: {err}",
                dir.display()
            ))
        })?;
        let dir_lock = lock_directory(dir)?;
        let path = dir.join("log.db");
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(storage_error)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory");
        let mut writer_conn = connect.connect().await.map_err(storage_error)?;
        let durability = Durability::of(&mut writer_conn).await?;
        if !durability.is_durable() {
            return Err(PortError::Invalid(format!(
                "SQLite opened {} with journal_mode={} and synchronous={}; the embedded log \
                 needs wal and full to survive a crash (is the file system one that supports \
                 WAL?)",
                path.display(),
                durability.journal_mode,
                durability.synchronous
            )));
        }
        if let Some(CommitGate(gate)) = options.commit_gate.clone() {
            writer_conn
                .lock_handle()
                .await
                .map_err(storage_error)?
                .set_commit_hook(move || gate());
        }
        schema::ensure(&mut writer_conn).await?;
        let ends = Arc::new(CommittedEnds::load(&mut writer_conn).await?);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(connect)
            .await
            .map_err(storage_error)?;
        let (appended, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            pool,
            clock: options.clock.clone(),
            groups: Groups::default(),
            appended: appended.clone(),
            ends: ends.clone(),
            _dir_lock: dir_lock,
        });
        let (requests, inbox) = mpsc::channel(4096);
        let (durability_questions, questions_inbox) = mpsc::channel(4);
        let writer = Writer::new(writer_conn, options.clock.clone(), appended, ends);
        // The writer gets a thread and a current-thread runtime of its own: its future is not
        // `Send` in rustc's eyes (sqlx's higher-ranked `Executor` impls, rust-lang/rust#102211),
        // and one thread is all a single SQLite writer can use anyway.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| PortError::unavailable(BACKEND, err))?;
        std::thread::Builder::new()
            .name("pulse-log-writer".into())
            .spawn(move || runtime.block_on(writer.run(inbox, questions_inbox)))
            .map_err(|err| PortError::unavailable(BACKEND, err))?;
        tokio::spawn(retention_loop(
            Arc::downgrade(&shared),
            options.retention,
            options.retention_interval,
        ));
        tracing::info!(path = %path.display(), "embedded log open");
        Ok(Self {
            shared,
            writer: requests,
            durability_questions,
            retention: options.retention,
            path,
        })
    }

    /// The durability settings in force on the writer's connection now, as SQLite reports them.
    pub async fn durability(&self) -> PortResult<Durability> {
        let (reply, answer) = oneshot::channel();
        let closed = || PortError::unavailable(BACKEND, "the log writer has stopped");
        self.durability_questions
            .send(reply)
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes records older than the retention period; returns how many were deleted.
    pub async fn enforce_retention(&self) -> PortResult<u64> {
        enforce_retention(&self.shared, self.retention).await
    }
}

fn lock_directory(dir: &Path) -> PortResult<File> {
    let lock_path = dir.join("log.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|err| PortError::Invalid(format!("cannot open {}: {err}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(PortError::Invalid(format!(
            "the embedded log in {} is in use by another Pulse process; stop it or choose another --data-dir",
            dir.display()
        ))),
        Err(TryLockError::Error(err)) => Err(PortError::Invalid(format!(
            "cannot lock {}: {err}",
            lock_path.display()
        ))),
    }
}

async fn enforce_retention(shared: &Shared, retention: Duration) -> PortResult<u64> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = shared.clock.now_ms().saturating_sub(retention_ms);
    let deleted = sqlx::query("DELETE FROM records WHERE timestamp_ms < ?1")
        .bind(cutoff)
        .execute(&shared.pool)
        .await
        .map_err(storage_error)?
        .rows_affected();
    if deleted > 0 {
        metrics::counter!(EXPIRED_RECORDS_TOTAL).increment(deleted);
        tracing::debug!(deleted, "embedded log retention");
    }
    Ok(deleted)
}

async fn retention_loop(shared: Weak<Shared>, retention: Duration, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(err) = enforce_retention(&shared, retention).await {
            tracing::warn!(error = %err, "embedded log retention failed; will retry");
        }
    }
}

fn validate_topic(topic: &str) -> PortResult<()> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(PortError::Invalid(format!(
            "topic name {topic:?} must be 1-249 characters of [a-zA-Z0-9._-]"
        )))
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> PortResult<()> {
        validate_topic(topic)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(PortError::Invalid(format!(
                "a topic needs 1 to {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        let mut tx = self.shared.pool.begin().await.map_err(storage_error)?;
        let created = sqlx::query(
            "INSERT OR IGNORE INTO topics (name, partitions, created_ms) VALUES (?1, ?2, ?3)",
        )
        .bind(topic)
        .bind(partitions)
        .bind(self.shared.clock.now_ms())
        .execute(&mut *tx)
        .await
        .map_err(storage_error)?
        .rows_affected();
        if created == 1 {
            for partition in 0..partitions {
                sqlx::query(
                    "INSERT INTO partitions (topic, partition, next_offset) VALUES (?1, ?2, 0)",
                )
                .bind(topic)
                .bind(partition)
                .execute(&mut *tx)
                .await
                .map_err(storage_error)?;
            }
        }
        tx.commit().await.map_err(storage_error)?;
        self.shared.ends.add_topic(topic, partitions);
        Ok(())
    }

    async fn partition_count(&self, topic: &str) -> PortResult<u32> {
        self.shared.partition_count(topic).await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> PortResult<Vec<RecordPosition>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(too_big) = records.iter().find(|r| r.payload.len() > MAX_PAYLOAD_BYTES) {
            return Err(PortError::Invalid(format!(
                "record payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                too_big.payload.len()
            )));
        }
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            topic: topic.to_owned(),
            records,
            reply,
        };
        let closed = || PortError::unavailable(BACKEND, "the log writer has stopped");
        self.writer.send(request).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
        if topics.is_empty() {
            return Err(PortError::Invalid(
                "a consumer needs at least one topic".into(),
            ));
        }
        for topic in topics {
            self.shared.partition_count(topic).await?;
        }
        let topics = topics.iter().map(|topic| (*topic).to_owned()).collect();
        Ok(Box::new(EmbeddedConsumer::new(
            self.shared.clone(),
            group,
            topics,
        )))
    }

    async fn ping(&self) -> PortResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map_err(storage_error)?;
        if self.writer.is_closed() {
            return Err(PortError::unavailable(
                BACKEND,
                "the log writer has stopped",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;

    fn settings(journal_mode: &str, synchronous: i64) -> Durability {
        Durability {
            journal_mode: journal_mode.into(),
            synchronous: synchronous_name(synchronous).into(),
        }
    }

    #[test]
    fn synchronous_levels_are_named_as_sqlite_documents_them() {
        let names: Vec<&str> = (0..=4).map(synchronous_name).collect();
        assert_eq!(names, ["off", "normal", "full", "extra", "unknown"]);
    }

    #[test]
    fn only_wal_with_full_or_extra_is_durable() {
        assert!(settings("wal", 2).is_durable());
        assert!(settings("wal", 3).is_durable());
        assert!(
            !settings("wal", 1).is_durable(),
            "normal may lose the last commits"
        );
        assert!(!settings("wal", 0).is_durable());
        assert!(!settings("delete", 2).is_durable(), "not in WAL mode");
    }
}
