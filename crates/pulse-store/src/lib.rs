//! Relational store of Pulse: PostgreSQL or SQLite chosen by URL, the schema migrations for both,
//! the unit of work every domain writes through, and the domains' repositories on it.
//!
//! * [`Database::write`] runs a closure over a [`Tx`]: its own transaction on PostgreSQL; on
//!   SQLite, one writer task group-commits the units of concurrent callers (see
//!   [`unit_of_work`]).
//! * Statements are written once with `$N` placeholders ([`sql::Sql`]); per-dialect text only
//!   where the engines differ (`SKIP LOCKED`, `= ANY`, timestamps).
//! * [`outbox::enqueue`] is the one way any domain writes its outbox rows, inside its unit.
//! * Errors are [`PortError`]s that keep their retryability up to the caller.
//!
//! Invariants:
//! * SQLite runs in WAL mode with `synchronous = FULL`: a commit is on disk when it returns;
//! * migrations are embedded in the binary and applied in order, once, under sqlx's lock;
//! * every pool has an acquire timeout, so a dead database surfaces as an error, not a hang.

mod gateway;
pub mod jobs;
mod ledger;
mod orders;
pub mod outbox;
mod profiles;
mod rides;
pub mod sql;
mod sqlite_writer;
mod tenants;
pub mod unit_of_work;

#[doc(hidden)]
pub use outbox::{POSTGRES_CLAIM, POSTGRES_CLAIM_PLANNER_SETTINGS};
pub use sql::{Sql, SqlRow};
pub use unit_of_work::{CommitGate, GroupCommitSettings, Tx, UnitFuture};

use unit_of_work::GroupCommit;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::health::HealthCheck;
use pulse_core::{PortError, PortResult};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// Which database engine a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most open connections.
    pub max_connections: u32,
    /// How long a query waits for a free connection (and for the first connect).
    pub acquire_timeout: Duration,
    /// How the SQLite writer groups concurrent units of work.
    pub group_commit: GroupCommitSettings,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            group_commit: GroupCommitSettings::default(),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `postgres://` nor `sqlite://`.
    #[error("unsupported store URL {0:?}: expected postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The URL could not be parsed.
    #[error("invalid store URL: {0}")]
    InvalidUrl(String),
    /// The database did not answer.
    #[error("cannot connect to the {backend:?} store: {source}")]
    Connect {
        /// Which engine.
        backend: Backend,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite writer could not open its connection.
    #[error("cannot open the {backend:?} store's writer: {source}")]
    Writer {
        /// Which engine.
        backend: Backend,
        /// Why.
        #[source]
        source: PortError,
    },
    /// A migration failed.
    #[error("migrating the {backend:?} store failed: {source}")]
    Migrate {
        /// Which engine.
        backend: Backend,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// One of the supported databases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pools: Pools,
}

#[derive(Debug, Clone)]
enum Pools {
    Postgres(PgPool),
    /// Readers share the pool; every write goes through the one writer.
    Sqlite {
        pool: SqlitePool,
        writer: GroupCommit,
    },
}

/// Runs the PostgreSQL migrations on one connection without the pool's statement timeouts: a
/// migration may wait for another process's migration lock, or take longer than a query may.
async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    let mut conn = pool.acquire().await.map_err(MigrateError::Execute)?;
    for setting in ["statement_timeout", "idle_in_transaction_session_timeout"] {
        sqlx::query(&format!("SET {setting} = 0"))
            .execute(&mut *conn)
            .await
            .map_err(MigrateError::Execute)?;
    }
    let result = sqlx::migrate!("./migrations/postgres")
        .run(&mut *conn)
        .await;
    // Back to the connection's defaults (the pool's timeouts) before it returns to the pool;
    // if that fails the connection is dropped instead of reused.
    for setting in ["statement_timeout", "idle_in_transaction_session_timeout"] {
        if sqlx::query(&format!("RESET {setting}"))
            .execute(&mut *conn)
            .await
            .is_err()
        {
            conn.detach();
            break;
        }
    }
    result
}

impl Database {
    /// Connects to `url` (`postgres://…`, `postgresql://…` or `sqlite://path`), creating the
    /// SQLite file when missing, and checks that the database answers.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The server ends a statement (or a transaction left idle) that runs past the
            // acquire timeout, so a slow query cannot hold a connection and its locks for long.
            let limit = format!("{}ms", options.acquire_timeout.as_millis().max(1));
            let connect = PgConnectOptions::from_str(url)
                .map_err(|err| StoreError::InvalidUrl(err.to_string()))?
                .application_name("pulse")
                .options([
                    ("statement_timeout", limit.as_str()),
                    ("idle_in_transaction_session_timeout", limit.as_str()),
                ]);
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(|source| StoreError::Connect {
                    backend: Backend::Postgres,
                    source,
                })?;
            Ok(Self {
                pools: Pools::Postgres(pool),
            })
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(|err| StoreError::InvalidUrl(err.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Readers' page cache (SQLite's default is 2 MiB), per pooled connection.
                .pragma("cache_size", format!("-{}", 16 * 1024));
            let connect_error = |source| StoreError::Connect {
                backend: Backend::Sqlite,
                source,
            };
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect.clone())
                .await
                .map_err(connect_error)?;
            // The pool created the file (and set WAL mode); the writer opens its own connection.
            let writer = GroupCommit::start(connect.get_filename(), options.group_commit.clone())
                .map_err(|err| StoreError::Writer {
                backend: Backend::Sqlite,
                source: err,
            })?;
            Ok(Self {
                pools: Pools::Sqlite { pool, writer },
            })
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// The engine behind this pool.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Postgres(_) => Backend::Postgres,
            Pools::Sqlite { .. } => Backend::Sqlite,
        }
    }

    /// The PostgreSQL pool, for tests and tools that inspect the server (plans, statistics).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pools {
            Pools::Postgres(pool) => Some(pool),
            Pools::Sqlite { .. } => None,
        }
    }

    /// The SQLite readers' pool, for tests and tools that inspect the file.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pools {
            Pools::Sqlite { pool, .. } => Some(pool),
            Pools::Postgres(_) => None,
        }
    }

    /// Runs `work` as one unit: all its statements commit together or none does, and the
    /// answer comes after the commit. On SQLite the unit may share its commit with units of
    /// other callers, each under its own savepoint; a failing unit rolls back alone.
    pub async fn write<T, F>(&self, work: F) -> PortResult<T>
    where
        F: for<'t> FnOnce(Tx<'t>) -> UnitFuture<'t, T> + Send + 'static,
        T: Send + 'static,
    {
        match &self.pools {
            Pools::Postgres(pool) => unit_of_work::on_postgres(pool, work).await,
            Pools::Sqlite { writer, .. } => writer.write(work).await,
        }
    }

    /// On SQLite, how many shared transactions the writer has committed (or tried to): fewer
    /// than the units written when the group commit grouped them. `None` on PostgreSQL.
    pub fn group_commits(&self) -> Option<u64> {
        match &self.pools {
            Pools::Sqlite { writer, .. } => Some(writer.commits()),
            Pools::Postgres(_) => None,
        }
    }

    /// Runs one statement as a unit of its own: on PostgreSQL straight on a pooled connection
    /// (a statement is its own transaction: one round trip), on SQLite through the writer.
    pub async fn execute(&self, sql: Sql) -> PortResult<u64> {
        match &self.pools {
            Pools::Postgres(pool) => sql
                .postgres()?
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(sql::port_error),
            Pools::Sqlite { writer, .. } => {
                writer
                    .write(move |mut tx| Box::pin(async move { tx.execute(&sql).await }))
                    .await
            }
        }
    }

    /// Runs a read-only statement on a pooled connection; returns every row.
    pub async fn fetch_all(&self, sql: &Sql) -> PortResult<Vec<SqlRow>> {
        let rows = match &self.pools {
            Pools::Postgres(pool) => sql
                .postgres()?
                .fetch_all(pool)
                .await
                .map(|rows| rows.into_iter().map(SqlRow::Postgres).collect()),
            Pools::Sqlite { pool, .. } => sql
                .sqlite()?
                .fetch_all(pool)
                .await
                .map(|rows| rows.into_iter().map(SqlRow::Sqlite).collect()),
        };
        rows.map_err(sql::port_error)
    }

    /// Runs a read-only statement on a pooled connection; returns its first row, if any.
    pub async fn fetch_optional(&self, sql: &Sql) -> PortResult<Option<SqlRow>> {
        let row = match &self.pools {
            Pools::Postgres(pool) => sql
                .postgres()?
                .fetch_optional(pool)
                .await
                .map(|row| row.map(SqlRow::Postgres)),
            Pools::Sqlite { pool, .. } => sql
                .sqlite()?
                .fetch_optional(pool)
                .await
                .map(|row| row.map(SqlRow::Sqlite)),
        };
        row.map_err(sql::port_error)
    }

    /// Applies every migration not yet applied. Safe to run concurrently from several processes.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let backend = self.backend();
        let result = match &self.pools {
            Pools::Postgres(pool) => migrate_postgres(pool).await,
            Pools::Sqlite { pool, .. } => sqlx::migrate!("./migrations/sqlite").run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate { backend, source })?;
        tracing::info!(?backend, "store migrations applied");
        Ok(())
    }

    /// Succeeds when the database answers `SELECT 1`.
    pub async fn ping(&self) -> PortResult<()> {
        self.fetch_optional(&Sql::new("SELECT 1")).await.map(|_| ())
    }

    /// On SQLite, `(journal_mode, synchronous)` as SQLite reports them on the writer's
    /// connection, the one that commits (`synchronous`: 0 off, 1 normal, 2 full, 3 extra);
    /// `None` on PostgreSQL, whose durability is the server's.
    pub async fn sqlite_durability(&self) -> PortResult<Option<(String, i64)>> {
        if self.backend() != Backend::Sqlite {
            return Ok(None);
        }
        let settings = self
            .write(|mut tx| {
                Box::pin(async move {
                    let mode = tx.fetch_optional(&Sql::new("PRAGMA journal_mode")).await?;
                    let sync = tx.fetch_optional(&Sql::new("PRAGMA synchronous")).await?;
                    match (mode, sync) {
                        (Some(mode), Some(sync)) => {
                            Ok((mode.text(0)?.to_ascii_lowercase(), sync.i64(0)?))
                        }
                        _ => Err(PortError::Corrupt("PRAGMA answered no row".to_owned())),
                    }
                })
            })
            .await?;
        Ok(Some(settings))
    }

    /// Lets queued writes finish, then closes every connection, waiting for checked-out ones to
    /// come back.
    pub async fn close(&self) {
        match &self.pools {
            Pools::Postgres(pool) => pool.close().await,
            Pools::Sqlite { pool, writer } => {
                writer.close().await;
                pool.close().await;
            }
        }
    }
}

#[async_trait]
impl HealthCheck for Database {
    fn name(&self) -> &str {
        "store"
    }

    async fn check(&self) -> PortResult<()> {
        self.ping().await
    }
}
