//! Relational store of Pulse: a PostgreSQL or SQLite connection pool chosen by URL, with the
//! schema migrations for both.
//!
//! sqlx already abstracts pools and transactions, so this crate does not wrap them in another
//! trait: [`Database`] is an enum over the two pools, and each domain repository implements its
//! queries for both arms (placeholders and types differ between the dialects). Invariants:
//! * SQLite runs in WAL mode with `synchronous = FULL`: a commit is on disk when it returns;
//! * migrations are embedded in the binary and applied in order, once, under sqlx's lock;
//! * every pool has an acquire timeout, so a dead database surfaces as an error, not a hang.

mod orders;

#[doc(hidden)]
pub use orders::{POSTGRES_CLAIM, POSTGRES_CLAIM_PLANNER_SETTINGS};

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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
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

/// A pool on one of the supported databases. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL pool.
    Postgres(PgPool),
    /// SQLite pool.
    Sqlite(SqlitePool),
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
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(|err| StoreError::InvalidUrl(err.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(|source| StoreError::Connect {
                    backend: Backend::Sqlite,
                    source,
                })?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// The engine behind this pool.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies every migration not yet applied. Safe to run concurrently from several processes.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let backend = self.backend();
        let result = match self {
            Self::Postgres(pool) => migrate_postgres(pool).await,
            Self::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate { backend, source })?;
        tracing::info!(?backend, "store migrations applied");
        Ok(())
    }

    /// Succeeds when the database answers `SELECT 1`.
    pub async fn ping(&self) -> PortResult<()> {
        let result = match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        };
        result.map_err(|err| PortError::unavailable("store", err))
    }

    /// On SQLite, `(journal_mode, synchronous)` as SQLite reports them on a connection of the
    /// pool (`synchronous`: 0 off, 1 normal, 2 full, 3 extra); `None` on PostgreSQL, whose
    /// durability is the server's.
    pub async fn sqlite_durability(&self) -> PortResult<Option<(String, i64)>> {
        let Self::Sqlite(pool) = self else {
            return Ok(None);
        };
        let unavailable = |err| PortError::unavailable("store", err);
        let mut conn = pool.acquire().await.map_err(unavailable)?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(Some((journal_mode.to_ascii_lowercase(), synchronous)))
    }

    /// Closes every connection, waiting for checked-out ones to come back.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
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
