//! The SQLite half of the unit of work: one writer thread that owns the write connection and
//! group-commits the queued units.
//!
//! It runs on rusqlite rather than sqlx: sqlx-sqlite executes every statement on a worker thread
//! of its own and hands the result back through a channel, a thread hop (two context switches)
//! per statement, which cost more than the statements themselves once commits were grouped
//! (docs/BENCHMARKS.md). Here a whole batch — `BEGIN`, each unit's savepoint and statements,
//! `COMMIT` — runs on one thread without leaving it; a caller pays one hop for its unit. Both
//! drivers link the same SQLite (libsqlite3-sys), and readers keep using sqlx's pool.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::{PortError, PortResult};
use rusqlite::types::{ToSqlOutput, Value as SqliteValue, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};
use tokio::sync::mpsc;

use crate::sql::{Sql, SqlRow, Value};
use crate::unit_of_work::{
    CommitGate, Message, Tx, Unit, GROUP_COMMIT_SECONDS, GROUP_COMMIT_UNITS,
};

/// The writer connection's page cache, KiB.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Opens the write connection with the durability the store promises: WAL, `synchronous =
/// FULL`, foreign keys, and the same busy timeout as the pool.
pub(crate) fn open(path: &Path, gate: Option<CommitGate>) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    // Every unit of work goes through this one connection: with SQLite's default 2 MiB page
    // cache, indexes of a few hundred thousand rows are read back from the OS on each batch.
    conn.execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB};"))?;
    conn.set_prepared_statement_cache_capacity(128);
    if let Some(CommitGate(gate)) = gate {
        // rusqlite's hook answers "roll back?"; the gate answers "may it commit?".
        conn.commit_hook(Some(move || !gate()));
    }
    Ok(conn)
}

/// The port error of a SQLite error, keeping whether a retry can succeed.
pub(crate) fn port_error(err: rusqlite::Error) -> PortError {
    use rusqlite::ErrorCode;
    match &err {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::ConstraintViolation => PortError::Conflict(err.to_string()),
            _ => PortError::unavailable("store", err),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => PortError::Corrupt(err.to_string()),
        rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::InvalidParameterName(_) => {
            PortError::Invalid(err.to_string())
        }
        _ => PortError::unavailable("store", err),
    }
}

/// A bound argument, as SQLite stores it (a UUID as its hyphenated text).
struct Bound<'a>(&'a Value);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let null = ToSqlOutput::Owned(SqliteValue::Null);
        Ok(match self.0 {
            Value::I64(v) => v.map_or(null, |v| ToSqlOutput::Owned(SqliteValue::Integer(v))),
            Value::I32(v) => v.map_or(null, |v| ToSqlOutput::Owned(SqliteValue::Integer(v.into()))),
            Value::F64(v) => v.map_or(null, |v| ToSqlOutput::Owned(SqliteValue::Real(v))),
            Value::Text(v) => v.as_deref().map_or(null, |v| {
                ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()))
            }),
            Value::Bytes(v) => v
                .as_deref()
                .map_or(null, |v| ToSqlOutput::Borrowed(ValueRef::Blob(v))),
            Value::Uuid(v) => v.map_or(null, |v| {
                ToSqlOutput::Owned(SqliteValue::Text(v.hyphenated().to_string()))
            }),
            Value::UuidArray(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "SQLite has no arrays; the statement needs its SQLite form".into(),
                ))
            }
        })
    }
}

/// `sql` prepared (from the connection's cache) with its arguments bound: `$N` (or `?N`) takes
/// argument N, as sqlx binds them, so one statement text serves both drivers.
fn prepare<'c>(conn: &'c Connection, sql: &Sql) -> PortResult<rusqlite::CachedStatement<'c>> {
    // `?N` instead of `$N`: SQLite binds a numbered parameter by its number, where a named one
    // has to be looked up by name — a scan per parameter, quadratic in a multi-row insert.
    let text = numbered_placeholders(sql.text());
    let mut statement = conn.prepare_cached(&text).map_err(port_error)?;
    let null = Value::I64(None);
    for index in 1..=statement.parameter_count() {
        let value = sql.args().get(index - 1).unwrap_or(&null);
        statement
            .raw_bind_parameter(index, Bound(value))
            .map_err(port_error)?;
    }
    Ok(statement)
}

/// `text` with every `$N` placeholder outside quotes written `?N` (same number).
fn numbered_placeholders(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('$') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '$' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            _ => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Runs `sql`; returns the rows it changed.
pub(crate) fn execute(conn: &Connection, sql: &Sql) -> PortResult<u64> {
    let mut statement = prepare(conn, sql)?;
    statement
        .raw_execute()
        .map(|changed| changed as u64)
        .map_err(port_error)
}

/// Runs `sql`; returns at most `limit` rows.
pub(crate) fn fetch(conn: &Connection, sql: &Sql, limit: usize) -> PortResult<Vec<SqlRow>> {
    let mut statement = prepare(conn, sql)?;
    let columns = statement.column_count();
    let mut rows = statement.raw_query();
    let mut fetched = Vec::new();
    while fetched.len() < limit {
        let Some(row) = rows.next().map_err(port_error)? else {
            break;
        };
        let values = (0..columns)
            .map(|index| row.get::<_, SqliteValue>(index))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(port_error)?;
        fetched.push(SqlRow::Owned(values));
    }
    Ok(fetched)
}

/// Starts the writer thread on `conn`; it ends when every sender is gone or on `Close`.
pub(crate) fn spawn(
    conn: Connection,
    queue: mpsc::Receiver<Message>,
    max_batch: usize,
    commits: Arc<AtomicU64>,
) -> std::io::Result<()> {
    // Units may use tokio (timers) while the writer drives them.
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("pulse-store-writer".to_owned())
        .spawn(move || {
            let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
            write_loop(conn, queue, max_batch, &commits);
        })
        .map(|_| ())
}

fn write_loop(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Message>,
    max_batch: usize,
    commits: &AtomicU64,
) {
    let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(max_batch);
    let mut closing = None;
    while closing.is_none() {
        match queue.blocking_recv() {
            None => break,
            Some(Message::Close(done)) => {
                closing = Some(done);
                break;
            }
            Some(Message::Unit(unit)) => batch.push(unit),
        }
        // Everything that queued while the last commit was syncing goes into this one.
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(Message::Unit(unit)) => batch.push(unit),
                Ok(Message::Close(done)) => {
                    closing = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch);
        commits.fetch_add(1, Ordering::Relaxed);
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs `batch` in one transaction, each unit under its own savepoint, and answers every unit.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Box<dyn Unit>>) {
    let started = Instant::now();
    let units = batch.len();
    let outcome = run_batch(conn, batch);
    if let Err(err) = &outcome {
        // The transaction may be open still (a failed savepoint statement) or gone (a failed
        // COMMIT rolls back by itself); either way nothing of it remains.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        tracing::warn!(units, error = %err, "group commit failed; its callers are told to retry");
    }
    metrics::histogram!(GROUP_COMMIT_UNITS).record(units as f64);
    metrics::histogram!(GROUP_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    for unit in batch.drain(..) {
        unit.answer(outcome.as_ref().map(|_| ()));
    }
}

fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn Unit>]) -> PortResult<()> {
    let control =
        |conn: &Connection, statement: &str| conn.execute_batch(statement).map_err(port_error);
    // IMMEDIATE takes the write lock now, so no statement of a unit meets SQLITE_BUSY half-way.
    control(conn, "BEGIN IMMEDIATE")?;
    for unit in batch.iter_mut() {
        control(conn, "SAVEPOINT unit")?;
        // The unit's statements run here, synchronously; only a unit that waits on something
        // else (a timer) makes this wait.
        let succeeded = futures::executor::block_on(unit.run(Tx::sqlite(conn)));
        if !succeeded {
            control(conn, "ROLLBACK TO unit")?;
        }
        control(conn, "RELEASE unit")?;
    }
    control(conn, "COMMIT")
}

#[cfg(test)]
mod placeholder_tests {
    use super::numbered_placeholders;

    #[test]
    fn dollar_placeholders_become_numbered_ones_outside_quotes_only() {
        assert_eq!(
            numbered_placeholders("INSERT INTO t VALUES ($1, $2, $10, '$3', 'it''s $4')"),
            "INSERT INTO t VALUES (?1, ?2, ?10, '$3', 'it''s $4')"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
        assert_eq!(
            numbered_placeholders("SELECT '$' || $1"),
            "SELECT '$' || ?1"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .expect("schema");
        conn
    }

    /// What a caller can do about an error survives: a broken constraint is a conflict (retrying
    /// cannot help), an unreadable column is corrupt data, an unbindable argument a bad request.
    #[test]
    fn errors_keep_what_a_caller_can_do_about_them() {
        let conn = memory();
        let insert = Sql::new("INSERT INTO t (id, name) VALUES ($1, $2)")
            .bind(1_i64)
            .bind("a");
        execute(&conn, &insert).expect("first insert");
        assert!(matches!(
            execute(&conn, &insert),
            Err(PortError::Conflict(_))
        ));
        let unreadable = fetch(&conn, &Sql::new("SELECT name FROM t"), 1).expect("a row");
        assert!(matches!(unreadable[0].i64(0), Err(PortError::Corrupt(_))));
        let decode = rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "not a number".into(),
        );
        assert!(matches!(port_error(decode), PortError::Corrupt(_)));
        let array = Sql::new("SELECT 1 WHERE $1 IS NOT NULL").bind(vec![uuid::Uuid::nil()]);
        assert!(matches!(
            fetch(&conn, &array, 1),
            Err(PortError::Invalid(_))
        ));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(port_error(busy).is_retryable());
    }

    /// `$N` takes argument N wherever it stands and however often, as sqlx binds it.
    #[test]
    fn placeholders_bind_by_number() {
        let conn = memory();
        let row = fetch(
            &conn,
            &Sql::new("SELECT $2 || $1 || $2").bind("a").bind("b"),
            1,
        )
        .expect("select");
        assert_eq!(row[0].text(0).expect("text"), "bab");
    }
}
