//! The error shared by every port, so callers can tell a retryable outage from a caller bug.

use std::time::Duration;

/// Result alias for port operations.
pub type PortResult<T> = Result<T, PortError>;

/// What went wrong behind a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The backend could not be reached or failed transiently; retrying later may succeed.
    #[error("{backend} is unavailable: {message}")]
    Unavailable {
        /// Which backend (e.g. `kafka`, `redis`, `embedded-log`).
        backend: &'static str,
        /// What the backend or client said.
        message: String,
    },
    /// The backend did not answer within the configured timeout.
    #[error("{backend} did not answer within {timeout:?}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The request itself is invalid (unknown topic, bad partition, value too large, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A resource the caller named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The write conflicts with stored data (a unique or foreign key constraint); retrying the
    /// same write cannot succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be interpreted (e.g. a cache value that is not an integer).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl PortError {
    /// Shorthand for [`PortError::Unavailable`] from any displayable error.
    pub fn unavailable(backend: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            backend,
            message: err.to_string(),
        }
    }

    /// Whether retrying the same call later could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// Runs `fut` under `timeout`, turning an elapsed timer into [`PortError::Timeout`].
///
/// Every call an adapter makes to a remote backend goes through this, so no call can hang forever.
pub async fn with_timeout<T>(
    backend: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = PortResult<T>>,
) -> PortResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(PortError::Timeout { backend, timeout }),
    }
}
