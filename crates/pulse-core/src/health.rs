//! Readiness probing: every backend a process depends on can say whether it answers right now.

use async_trait::async_trait;

use crate::PortResult;

/// Something `/readyz` can ask "do you answer?".
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// A short, stable name shown to operators (`store`, `log`, `cache`).
    fn name(&self) -> &str;
    /// Succeeds when the backend answered a trivial request within its timeout.
    async fn check(&self) -> PortResult<()>;
}
