//! The unit of work every domain writes through: a closure over a transaction.
//!
//! On PostgreSQL each unit runs in its own transaction on a pooled connection. On SQLite, whose
//! file takes one writer at a time and pays one fsync per commit, a single writer thread
//! ([`crate::sqlite_writer`]) owns the write connection and **group-commits**: it takes every unit queued while the previous commit
//! was syncing, runs each under its own savepoint inside one transaction, and commits once. A unit
//! that fails is rolled back to its savepoint, so one caller's constraint violation undoes only
//! that caller's writes; every caller is answered only after the shared commit returned, i.e.
//! once it is on disk (`synchronous = FULL`). Under load this turns one fsync per unit into one
//! per batch; idle, a unit commits at once, alone.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use pulse_core::{PortError, PortResult};
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use crate::sql::{port_error, Sql, SqlRow};
use crate::{sqlite_writer, Backend};

/// The future a unit of work returns, borrowing its transaction.
pub type UnitFuture<'t, T> = Pin<Box<dyn Future<Output = PortResult<T>> + Send + 't>>;

/// A transaction a unit of work writes in. Its statements commit together, or not at all.
#[derive(Debug)]
pub struct Tx<'c> {
    conn: Conn<'c>,
}

#[derive(Debug)]
enum Conn<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut rusqlite::Connection),
}

impl<'c> Tx<'c> {
    pub(crate) fn postgres(conn: &'c mut PgConnection) -> Self {
        Self {
            conn: Conn::Postgres(conn),
        }
    }

    pub(crate) fn sqlite(conn: &'c mut rusqlite::Connection) -> Self {
        Self {
            conn: Conn::Sqlite(conn),
        }
    }

    /// The dialect, for the few statements that differ.
    pub fn backend(&self) -> Backend {
        match self.conn {
            Conn::Postgres(_) => Backend::Postgres,
            Conn::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs `sql`; returns the rows it changed.
    pub async fn execute(&mut self, sql: &Sql) -> PortResult<u64> {
        match &mut self.conn {
            Conn::Postgres(conn) => sql
                .postgres()?
                .execute(&mut **conn)
                .await
                .map(|done| done.rows_affected()),
            Conn::Sqlite(conn) => return sqlite_writer::execute(conn, sql),
        }
        .map_err(port_error)
    }

    /// Runs `sql`; returns every row.
    pub async fn fetch_all(&mut self, sql: &Sql) -> PortResult<Vec<SqlRow>> {
        match &mut self.conn {
            Conn::Postgres(conn) => sql
                .postgres()?
                .fetch_all(&mut **conn)
                .await
                .map(|rows| rows.into_iter().map(SqlRow::Postgres).collect()),
            Conn::Sqlite(conn) => return sqlite_writer::fetch(conn, sql, usize::MAX),
        }
        .map_err(port_error)
    }

    /// Runs `sql`; returns its first row, if any.
    pub async fn fetch_optional(&mut self, sql: &Sql) -> PortResult<Option<SqlRow>> {
        match &mut self.conn {
            Conn::Postgres(conn) => sql
                .postgres()?
                .fetch_optional(&mut **conn)
                .await
                .map(|row| row.map(SqlRow::Postgres)),
            Conn::Sqlite(conn) => {
                return Ok(sqlite_writer::fetch(conn, sql, 1)?.into_iter().next());
            }
        }
        .map_err(port_error)
    }
}

/// Runs `work` in a transaction of its own on a PostgreSQL connection.
pub(crate) async fn on_postgres<T>(
    pool: &sqlx::PgPool,
    work: impl for<'t> FnOnce(Tx<'t>) -> UnitFuture<'t, T>,
) -> PortResult<T> {
    let mut tx = pool.begin().await.map_err(port_error)?;
    match work(Tx::postgres(&mut tx)).await {
        Ok(value) => {
            tx.commit().await.map_err(port_error)?;
            Ok(value)
        }
        Err(err) => {
            // Dropping the transaction rolls it back as well; rolling back here returns the
            // connection clean at once.
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}

/// Settings of the SQLite group-commit writer.
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Most units committed together.
    pub max_batch: usize,
    /// Most units waiting for the writer; further callers wait for room (backpressure).
    pub queue: usize,
    /// Asked at every commit of the writer, after the batch's writes succeeded: `false` makes
    /// SQLite roll the commit back. For tests of what callers hear when a shared commit fails.
    pub commit_gate: Option<CommitGate>,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            max_batch: 512,
            queue: 8_192,
            commit_gate: None,
        }
    }
}

/// See [`GroupCommitSettings::commit_gate`].
#[derive(Clone)]
pub struct CommitGate(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for CommitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGate")
    }
}

/// Units committed together, per commit (a histogram: how much the group commit groups).
pub const GROUP_COMMIT_UNITS: &str = "pulse_store_group_commit_units";
/// Time of one shared commit, from `BEGIN` to the fsynced `COMMIT`.
pub const GROUP_COMMIT_SECONDS: &str = "pulse_store_group_commit_seconds";

/// A queued unit with its answer slot, its result type erased.
pub(crate) trait Unit: Send {
    /// Runs the unit's writes; `false` if they failed (the caller already has the error).
    fn run<'t>(&'t mut self, tx: Tx<'t>) -> Pin<Box<dyn Future<Output = bool> + Send + 't>>;

    /// Answers the caller once the batch's fate is known: its value if its writes were
    /// committed, else why not.
    fn answer(self: Box<Self>, committed: Result<(), &PortError>);
}

struct Queued<F, T> {
    work: Option<F>,
    value: Option<T>,
    reply: Option<oneshot::Sender<PortResult<T>>>,
}

impl<F, T> Unit for Queued<F, T>
where
    F: for<'t> FnOnce(Tx<'t>) -> UnitFuture<'t, T> + Send + 'static,
    T: Send + 'static,
{
    fn run<'t>(&'t mut self, tx: Tx<'t>) -> Pin<Box<dyn Future<Output = bool> + Send + 't>> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return false;
            };
            // A panicking unit fails alone, not the writer every other caller waits on.
            let outcome = AssertUnwindSafe(work(tx)).catch_unwind().await;
            let outcome = outcome
                .unwrap_or_else(|_| Err(PortError::Invalid("a unit of work panicked".to_owned())));
            match outcome {
                Ok(value) => {
                    self.value = Some(value);
                    true
                }
                Err(err) => {
                    if let Some(reply) = self.reply.take() {
                        let _ = reply.send(Err(err));
                    }
                    false
                }
            }
        })
    }

    fn answer(mut self: Box<Self>, committed: Result<(), &PortError>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let answer = match (committed, self.value.take()) {
            (Ok(()), Some(value)) => Ok(value),
            (Err(err), _) => Err(shared_failure(err)),
            (Ok(()), None) => Err(PortError::unavailable(
                "store",
                "the unit was not run; retry",
            )),
        };
        let _ = reply.send(answer);
    }
}

/// The error each caller of a failed batch gets: the batch's, which is about the shared
/// transaction, not about the caller's writes, so retrying may succeed.
fn shared_failure(err: &PortError) -> PortError {
    match err {
        PortError::Timeout { backend, timeout } => PortError::Timeout {
            backend,
            timeout: *timeout,
        },
        other => PortError::unavailable("store", format!("the shared commit failed: {other}")),
    }
}

pub(crate) enum Message {
    Unit(Box<dyn Unit>),
    Close(oneshot::Sender<()>),
}

/// The handle to the SQLite writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Message>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Unit(_) => "Unit",
            Message::Close(_) => "Close",
        })
    }
}

fn writer_gone() -> PortError {
    PortError::unavailable("store", "the SQLite writer has stopped (store closed)")
}

impl GroupCommit {
    /// Starts the writer on its own connection to the database file at `path`.
    pub(crate) fn start(path: &std::path::Path, settings: GroupCommitSettings) -> PortResult<Self> {
        let conn = sqlite_writer::open(path, settings.commit_gate.clone())
            .map_err(sqlite_writer::port_error)?;
        let (queue, units) = mpsc::channel(settings.queue.max(1));
        let commits = Arc::new(AtomicU64::new(0));
        sqlite_writer::spawn(conn, units, settings.max_batch.max(1), commits.clone())
            .map_err(|err| PortError::unavailable("store", err))?;
        Ok(Self { queue, commits })
    }

    /// Transactions the writer has committed or tried to (one per batch).
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues `work` and waits for its answer, given after the commit that holds it.
    pub(crate) async fn write<T, F>(&self, work: F) -> PortResult<T>
    where
        F: for<'t> FnOnce(Tx<'t>) -> UnitFuture<'t, T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let unit = Queued {
            work: Some(work),
            value: None,
            reply: Some(reply),
        };
        self.queue
            .send(Message::Unit(Box::new(unit)))
            .await
            .map_err(|_| writer_gone())?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Lets the queued units finish, then closes the write connection.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}
