//! [`GuardedCache`]: any [`Cache`] with a timeout on every call, per-operation latency and error
//! metrics labelled by caller, and optionally a [`Breaker`] that turns an outage into instant
//! refusals.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::error::with_timeout;
use pulse_core::{PortError, PortResult};

use crate::breaker::Breaker;

/// Cache call latency by caller and operation.
pub const CACHE_OPERATION_DURATION: &str = "pulse_cache_operation_duration_seconds";
/// Failed cache calls by caller, operation and kind (`unavailable`, `timeout`, `circuit_open`,
/// `invalid`, `corrupt`, `not_found`).
pub const CACHE_ERRORS_TOTAL: &str = "pulse_cache_errors_total";

/// The backend name of the error a refused call returns.
const CIRCUIT_OPEN: &str = "cache (circuit open)";

/// A guarded cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GuardedCache {
    inner: Arc<dyn Cache>,
    caller: &'static str,
    timeout: Duration,
    breaker: Option<Breaker>,
}

fn error_kind(err: &PortError) -> &'static str {
    match err {
        PortError::Unavailable { backend, .. } if *backend == CIRCUIT_OPEN => "circuit_open",
        PortError::Unavailable { .. } => "unavailable",
        PortError::Timeout { .. } => "timeout",
        PortError::Invalid(_) => "invalid",
        PortError::NotFound(_) => "not_found",
        PortError::Conflict(_) => "conflict",
        PortError::Corrupt(_) => "corrupt",
    }
}

impl GuardedCache {
    /// `inner` as used by `caller` (the metrics label), every call bounded by `timeout`.
    pub fn new(inner: Arc<dyn Cache>, caller: &'static str, timeout: Duration) -> Self {
        Self {
            inner,
            caller,
            timeout,
            breaker: None,
        }
    }

    /// Also refuses calls at once while `breaker` is open.
    pub fn with_breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The breaker, if any.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    async fn guard<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = PortResult<T>>,
    ) -> PortResult<T> {
        let permit = match &self.breaker {
            Some(breaker) => match breaker.admit() {
                Some(permit) => Some(permit),
                None => {
                    let err = PortError::Unavailable {
                        backend: CIRCUIT_OPEN,
                        message: format!(
                            "breaker {} is open; not calling the cache",
                            breaker.name()
                        ),
                    };
                    self.count_error(op, &err);
                    return Err(err);
                }
            },
            None => None,
        };
        let started = Instant::now();
        let outcome = with_timeout("cache", self.timeout, call).await;
        metrics::histogram!(CACHE_OPERATION_DURATION, "caller" => self.caller, "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Err(err) = &outcome {
            self.count_error(op, err);
        }
        if let Some(permit) = permit {
            // Only an outage says something about the backend's health; a refused command
            // (bad input) is the caller's problem.
            match &outcome {
                Err(err) if err.is_retryable() => permit.failed(),
                _ => permit.succeeded(),
            }
        }
        outcome
    }

    fn count_error(&self, op: &'static str, err: &PortError) {
        metrics::counter!(
            CACHE_ERRORS_TOTAL,
            "caller" => self.caller,
            "op" => op,
            "kind" => error_kind(err)
        )
        .increment(1);
    }
}

#[async_trait]
impl Cache for GuardedCache {
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        self.guard("get", self.inner.get(key)).await
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        self.guard("get_many", self.inner.get_many(keys)).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        self.guard("set", self.inner.set(key, value, ttl)).await
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        self.guard("incr_by", self.inner.incr_by(key, delta, ttl))
            .await
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        self.guard("delete", self.inner.delete(key)).await
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        self.guard("ttl", self.inner.ttl(key)).await
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        self.guard("apply", self.inner.apply(writes)).await
    }

    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        self.guard(
            "apply_if_absent_many",
            self.inner.apply_if_absent_many(items),
        )
        .await
    }

    async fn index_range(
        &self,
        key: &str,
        min_score: i64,
        limit: usize,
    ) -> PortResult<Vec<(String, i64)>> {
        self.guard("index_range", self.inner.index_range(key, min_score, limit))
            .await
    }

    async fn ping(&self) -> PortResult<()> {
        self.guard("ping", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use pulse_memory::MemoryCache;

    use super::*;
    use crate::breaker::{BreakerSettings, BreakerState};

    /// A cache that can be made to hang, like a Redis stopped with SIGSTOP.
    #[derive(Debug, Default)]
    struct HangingCache {
        inner: MemoryCache,
        hung: AtomicBool,
        calls: AtomicUsize,
    }

    impl HangingCache {
        async fn maybe_hang(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hung.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait]
    impl Cache for HangingCache {
        async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
            self.maybe_hang().await;
            self.inner.get(key).await
        }
        async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
            self.inner.get_many(keys).await
        }
        async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
            self.inner.set(key, value, ttl).await
        }
        async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
            self.inner.incr_by(key, delta, ttl).await
        }
        async fn delete(&self, key: &str) -> PortResult<bool> {
            self.inner.delete(key).await
        }
        async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
            self.inner.ttl(key).await
        }
        async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
            self.inner.apply(writes).await
        }
        async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
            self.inner.apply_if_absent_many(items).await
        }
        async fn index_range(
            &self,
            key: &str,
            min_score: i64,
            limit: usize,
        ) -> PortResult<Vec<(String, i64)>> {
            self.inner.index_range(key, min_score, limit).await
        }
        async fn ping(&self) -> PortResult<()> {
            self.inner.ping().await
        }
    }

    #[tokio::test]
    async fn a_hung_cache_times_out_then_the_open_breaker_refuses_without_calling_it() {
        let backend = Arc::new(HangingCache::default());
        let breaker = Breaker::new(
            "test-cache",
            &BreakerSettings {
                failure_threshold: 2,
                open_min: Duration::from_millis(200),
                open_max: Duration::from_millis(200),
            },
        );
        let cache = GuardedCache::new(backend.clone(), "test", Duration::from_millis(20))
            .with_breaker(breaker.clone());
        cache
            .set("k", Bytes::from_static(b"v"), None)
            .await
            .expect("set");
        assert_eq!(
            cache.get("k").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );

        backend.hung.store(true, Ordering::SeqCst);
        for _ in 0..2 {
            let err = cache.get("k").await.expect_err("hung");
            assert!(matches!(err, PortError::Timeout { .. }), "{err}");
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        let calls = backend.calls.load(Ordering::SeqCst);
        let err = cache.get("k").await.expect_err("open");
        assert_eq!(error_kind(&err), "circuit_open");
        assert!(err.is_retryable());
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            calls,
            "not called while open"
        );

        // Back: the probe after the pause closes the breaker.
        backend.hung.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            cache.get("k").await.expect("probe").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn refused_commands_do_not_trip_the_breaker() {
        let breaker = Breaker::new("test-invalid", &BreakerSettings::default());
        let cache = GuardedCache::new(
            Arc::new(MemoryCache::default()),
            "test",
            Duration::from_secs(1),
        )
        .with_breaker(breaker.clone());
        cache
            .set("text", Bytes::from_static(b"abc"), None)
            .await
            .expect("set");
        for _ in 0..10 {
            assert!(cache.incr_by("text", 1, None).await.is_err());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
