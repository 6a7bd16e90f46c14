//! One SQL body for both dialects: statements with `$N` placeholders (sqlx binds `$N` by number on
//! SQLite too), arguments that bind as each dialect stores them (a UUID is `uuid` on PostgreSQL and
//! text on SQLite), and rows read back the same way.
//!
//! Per-dialect text remains only where the engines truly differ; [`PerDialect`] builds such a
//! statement once per dialect from one template.

use std::borrow::Cow;
use std::sync::OnceLock;

use pulse_core::{PortError, PortResult};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Postgres, Row, Sqlite};
use uuid::Uuid;

use crate::Backend;

/// One bound value; `None` binds a typed NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `BIGINT` / `INTEGER`.
    I64(Option<i64>),
    /// `INTEGER` / `INTEGER`.
    I32(Option<i32>),
    /// `DOUBLE PRECISION` / `REAL`.
    F64(Option<f64>),
    /// `TEXT`.
    Text(Option<String>),
    /// `BYTEA` / `BLOB`.
    Bytes(Option<Vec<u8>>),
    /// `UUID` on PostgreSQL, its hyphenated text on SQLite.
    Uuid(Option<Uuid>),
    /// `UUID[]`, PostgreSQL only (`= ANY($n)`).
    UuidArray(Vec<Uuid>),
}

macro_rules! value_from {
    ($($ty:ty => $variant:ident $(via $conv:expr)?),* $(,)?) => {$(
        impl From<$ty> for Value {
            fn from(value: $ty) -> Self {
                Value::$variant(Some(value$(.pipe($conv))?))
            }
        }
        impl From<Option<$ty>> for Value {
            fn from(value: Option<$ty>) -> Self {
                Value::$variant(value$(.map($conv))?)
            }
        }
    )*};
}

/// `value.pipe(f)` is `f(value)`, so the conversions above read left to right.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

value_from! {
    i64 => I64,
    i32 => I32,
    f64 => F64,
    String => Text,
    &str => Text via str::to_owned,
    &String => Text via String::clone,
    Vec<u8> => Bytes,
    &[u8] => Bytes via <[u8]>::to_vec,
    Uuid => Uuid,
}

impl From<Vec<Uuid>> for Value {
    fn from(ids: Vec<Uuid>) -> Self {
        Value::UuidArray(ids)
    }
}

/// A statement and its arguments.
#[derive(Debug, Clone)]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Value>,
    persistent: bool,
}

impl Sql {
    /// A statement with `$1`, `$2`, … placeholders.
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
            persistent: true,
        }
    }

    /// The same arguments under another statement text (one that takes them, and maybe more).
    pub fn with_text(mut self, text: impl Into<Cow<'static, str>>) -> Self {
        self.text = text.into();
        self
    }

    /// Binds the next placeholder.
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Plans the statement at every execution instead of preparing it once (PostgreSQL would
    /// otherwise settle on a generic plan; see the outbox claim).
    pub fn planned_each_time(mut self) -> Self {
        self.persistent = false;
        self
    }

    /// The statement text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The bound arguments, `$1` first.
    pub(crate) fn args(&self) -> &[Value] {
        &self.args
    }

    pub(crate) fn postgres(&self) -> PortResult<Query<'_, Postgres, PgArguments>> {
        let mut query = sqlx::query(&self.text).persistent(self.persistent);
        for value in &self.args {
            query = match value {
                Value::I64(v) => query.bind(*v),
                Value::I32(v) => query.bind(*v),
                Value::F64(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_deref()),
                Value::Bytes(v) => query.bind(v.as_deref()),
                Value::Uuid(v) => query.bind(*v),
                Value::UuidArray(v) => query.bind(v.as_slice()),
            };
        }
        Ok(query)
    }

    pub(crate) fn sqlite(&self) -> PortResult<Query<'_, Sqlite, SqliteArguments<'_>>> {
        let mut query = sqlx::query(&self.text).persistent(self.persistent);
        for value in &self.args {
            query = match value {
                Value::I64(v) => query.bind(*v),
                Value::I32(v) => query.bind(*v),
                Value::F64(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_deref()),
                Value::Bytes(v) => query.bind(v.as_deref()),
                Value::Uuid(v) => query.bind(v.map(|id| id.to_string())),
                Value::UuidArray(_) => {
                    return Err(PortError::Invalid(format!(
                        "SQLite has no arrays; statement {:?} needs its SQLite form",
                        self.text
                    )))
                }
            };
        }
        Ok(query)
    }
}

/// A statement whose text differs per dialect, built once per dialect from one template.
#[derive(Debug)]
pub struct PerDialect {
    build: fn(Backend) -> String,
    built: [OnceLock<String>; 2],
}

impl PerDialect {
    /// The statement `build` writes for each dialect.
    pub const fn new(build: fn(Backend) -> String) -> Self {
        Self {
            build,
            built: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The text for `backend`.
    pub fn get(&'static self, backend: Backend) -> &'static str {
        let slot = match backend {
            Backend::Postgres => 0,
            Backend::Sqlite => 1,
        };
        self.built[slot].get_or_init(|| (self.build)(backend))
    }
}

impl Backend {
    /// SQL turning Unix milliseconds (the expression `ms`) into the dialect's timestamp: a UTC
    /// `TIMESTAMP` on PostgreSQL, ISO text with milliseconds on SQLite.
    pub fn timestamp_from_ms(self, ms: &str) -> String {
        match self {
            Backend::Postgres => format!("(to_timestamp({ms} / 1000.0) AT TIME ZONE 'UTC')"),
            Backend::Sqlite => format!("strftime('%Y-%m-%d %H:%M:%f', {ms} / 1000.0, 'unixepoch')"),
        }
    }
}

/// `$from, $from+1, …` for `count` placeholders.
pub(crate) fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($a, $b, …), (…)` for `rows` rows of `width` placeholders from `$1`, each placeholder
/// wrapped by `wrap(column, "$n")`.
pub(crate) fn value_rows(
    rows: usize,
    width: usize,
    wrap: impl Fn(usize, String) -> String,
) -> String {
    value_rows_after(0, rows, width, wrap)
}

/// [`value_rows`] numbered from `$offset+1` (the statement's first `offset` placeholders are
/// its own).
pub(crate) fn value_rows_after(
    offset: usize,
    rows: usize,
    width: usize,
    wrap: impl Fn(usize, String) -> String,
) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (0..width)
                .map(|column| wrap(column, format!("${}", offset + row * width + column + 1)))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Longest error text kept with a parked event, a dead letter or a failed job attempt.
const MAX_ERROR_CHARS: usize = 2_000;

/// `text` cut to [`MAX_ERROR_CHARS`], marked with `…` when cut.
pub(crate) fn truncated(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// An integer column that must fit a `u32` (attempts, counts).
pub(crate) fn u32_of(row: &SqlRow, index: usize) -> PortResult<u32> {
    u32::try_from(row.i64(index)?)
        .map_err(|err| PortError::Corrupt(format!("column {index}: {err}")))
}

/// A row of either dialect, read by column position.
pub enum SqlRow {
    /// A PostgreSQL row.
    Postgres(PgRow),
    /// A SQLite row read through sqlx (the readers' pool).
    Sqlite(SqliteRow),
    /// A row the SQLite writer read, as owned values.
    Owned(Vec<rusqlite::types::Value>),
}

impl std::fmt::Debug for SqlRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (dialect, columns) = match self {
            SqlRow::Postgres(row) => ("postgres", row.len()),
            SqlRow::Sqlite(row) => ("sqlite", row.len()),
            SqlRow::Owned(values) => ("sqlite writer", values.len()),
        };
        write!(f, "SqlRow({dialect}, {columns} columns)")
    }
}

fn corrupt(index: usize, err: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("column {index}: {err}"))
}

macro_rules! getter {
    ($(#[$doc:meta] $name:ident -> $ty:ty),* $(,)?) => {$(
        #[$doc]
        pub fn $name(&self, index: usize) -> PortResult<$ty> {
            match self {
                SqlRow::Postgres(row) => row.try_get(index).map_err(|err| corrupt(index, err)),
                SqlRow::Sqlite(row) => row.try_get(index).map_err(|err| corrupt(index, err)),
                SqlRow::Owned(values) => {
                    let value = values
                        .get(index)
                        .ok_or_else(|| corrupt(index, "no such column"))?;
                    rusqlite::types::FromSql::column_result(value.into())
                        .map_err(|err| corrupt(index, err))
                }
            }
        }
    )*};
}

impl SqlRow {
    getter! {
        /// An integer column.
        i64 -> i64,
        /// A nullable integer column.
        opt_i64 -> Option<i64>,
        /// A nullable 32-bit integer column.
        opt_i32 -> Option<i32>,
        /// A floating-point column.
        f64 -> f64,
        /// A text column.
        text -> String,
        /// A nullable text column.
        opt_text -> Option<String>,
        /// A binary column.
        bytes -> Vec<u8>,
        /// A nullable binary column.
        opt_bytes -> Option<Vec<u8>>,
    }

    /// A UUID column (`uuid` on PostgreSQL, text on SQLite).
    pub fn uuid(&self, index: usize) -> PortResult<Uuid> {
        self.opt_uuid(index)?
            .ok_or_else(|| corrupt(index, "unexpected NULL"))
    }

    /// A nullable UUID column.
    pub fn opt_uuid(&self, index: usize) -> PortResult<Option<Uuid>> {
        match self {
            SqlRow::Postgres(row) => row.try_get(index).map_err(|err| corrupt(index, err)),
            SqlRow::Sqlite(_) | SqlRow::Owned(_) => {
                let text = self.opt_text(index)?;
                text.map(|text| Uuid::parse_str(&text).map_err(|err| corrupt(index, err)))
                    .transpose()
            }
        }
    }
}

/// The port error of a driver error, keeping what a caller needs: whether a retry can succeed.
pub fn port_error(err: sqlx::Error) -> PortError {
    use sqlx::error::ErrorKind;
    match err {
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation => PortError::Conflict(db.message().to_owned()),
            // Busy, locked, serialization failures, cancelled statements: another attempt may
            // succeed.
            _ => PortError::unavailable("store", db),
        },
        sqlx::Error::PoolTimedOut => PortError::unavailable("store", "no free connection in time"),
        err @ (sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. }) => PortError::Corrupt(err.to_string()),
        err @ sqlx::Error::Configuration(_) => PortError::Invalid(err.to_string()),
        err => PortError::unavailable("store", err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_from_milliseconds_is_written_per_dialect() {
        assert!(Backend::Postgres
            .timestamp_from_ms("$6")
            .contains("to_timestamp($6 / 1000.0)"));
        assert!(Backend::Sqlite
            .timestamp_from_ms("$6")
            .contains("$6 / 1000.0, 'unixepoch'"));
    }

    #[test]
    fn arrays_are_refused_on_sqlite_with_the_statement_named() {
        let sql = Sql::new("SELECT 1 WHERE $1").bind(vec![Uuid::nil()]);
        let err = sql.sqlite().map(|_| ()).expect_err("no arrays on SQLite");
        assert!(err.to_string().contains("SELECT 1 WHERE $1"), "{err}");
    }

    #[test]
    fn constraint_violations_are_conflicts_and_pool_timeouts_retryable() {
        assert!(port_error(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(matches!(
            port_error(sqlx::Error::RowNotFound),
            PortError::Corrupt(_)
        ));
    }
}
