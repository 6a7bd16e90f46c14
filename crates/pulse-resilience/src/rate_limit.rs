//! [`FailOpenRateLimiter`]: a shared [`RateLimiter`] (Redis) that, when it cannot answer, is
//! answered for by a local one (in-process), so an outage of the shared store degrades quotas
//! instead of refusing every request.
//!
//! Failing open trades exactness for availability: while the primary is away each process
//! enforces the quota on its own, so a deployment of `n` gateways lets through up to `n` times a
//! quota, and the cells spent locally are not carried back to the primary. A caller that must
//! fail closed (e.g. quotas that protect money) uses the primary limiter directly, without this
//! wrapper, and treats its error as a refusal.
//!
//! Only outages fall back: a retryable error ([`PortError::is_retryable`]: unavailable, timed
//! out, breaker open) or no answer within the wrapper's timeout. A caller error (an invalid
//! quota) is returned as is, since the local limiter would refuse it too.
//!
//! An outage is logged once: a warning when the first call falls back, and an info line when
//! the primary answers again, never one line per request. Every fallback answer is counted in
//! [`RATE_LIMITER_FALLBACKS_TOTAL`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::error::with_timeout;
use pulse_core::rate_limit::{Quota, RateDecision, RateLimiter};
use pulse_core::{PortError, PortResult};

use crate::breaker::Breaker;

/// Calls answered by the local limiter because the primary could not, by `limiter`.
pub const RATE_LIMITER_FALLBACKS_TOTAL: &str = "pulse_rate_limiter_fallbacks_total";

/// The backend name of the error a call refused by the open breaker gets (and falls back on).
const CIRCUIT_OPEN: &str = "rate limiter (circuit open)";

/// A primary limiter with a local one answering while the primary cannot. Cheap to clone;
/// clones share the outage state.
#[derive(Debug, Clone)]
pub struct FailOpenRateLimiter {
    name: &'static str,
    primary: Arc<dyn RateLimiter>,
    local: Arc<dyn RateLimiter>,
    timeout: Duration,
    breaker: Option<Breaker>,
    /// Whether the last call to the primary failed: the outage is logged only when this flips.
    in_outage: Arc<AtomicBool>,
}

impl FailOpenRateLimiter {
    /// `primary`, answered for by `local` when it fails or takes longer than `timeout`; `name`
    /// labels the metric and the log lines.
    pub fn new(
        name: &'static str,
        primary: Arc<dyn RateLimiter>,
        local: Arc<dyn RateLimiter>,
        timeout: Duration,
    ) -> Self {
        Self {
            name,
            primary,
            local,
            timeout,
            breaker: None,
            in_outage: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Also skips the primary at once while `breaker` is open, so a hung primary costs one
    /// timeout per probe rather than one per request.
    pub fn with_breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// The primary's answer, under the timeout and the breaker.
    async fn ask_primary(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
        let permit = match &self.breaker {
            Some(breaker) => match breaker.admit() {
                Some(permit) => Some(permit),
                None => {
                    return Err(PortError::Unavailable {
                        backend: CIRCUIT_OPEN,
                        message: format!("breaker {} is open", breaker.name()),
                    })
                }
            },
            None => None,
        };
        let call = self.primary.check(key, quota, cost);
        let outcome = with_timeout("rate limiter", self.timeout, call).await;
        if let Some(permit) = permit {
            // Only an outage says something about the primary's health.
            match &outcome {
                Err(err) if err.is_retryable() => permit.failed(),
                _ => permit.succeeded(),
            }
        }
        outcome
    }
}

#[async_trait]
impl RateLimiter for FailOpenRateLimiter {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
        match self.ask_primary(key, quota, cost).await {
            Err(err) if err.is_retryable() => {
                if !self.in_outage.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        limiter = self.name,
                        error = %err,
                        "the rate limiter cannot answer; quotas are enforced per process until it does"
                    );
                }
                metrics::counter!(RATE_LIMITER_FALLBACKS_TOTAL, "limiter" => self.name)
                    .increment(1);
                self.local.check(key, quota, cost).await
            }
            outcome => {
                if outcome.is_ok() && self.in_outage.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        limiter = self.name,
                        "the rate limiter answers again; quotas are shared again"
                    );
                }
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, AtomicUsize};
    use std::sync::Mutex;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use pulse_core::clock::ManualClock;
    use pulse_memory::MemoryRateLimiter;

    use super::*;
    use crate::breaker::{BreakerSettings, BreakerState};

    const ANSWERS: u8 = 0;
    const FAILS: u8 = 1;
    const HANGS: u8 = 2;

    /// A primary that answers, fails like a stopped Redis or hangs like a stopped one, on demand.
    #[derive(Debug)]
    struct FlakyLimiter {
        inner: MemoryRateLimiter,
        mode: AtomicU8,
        calls: AtomicUsize,
    }

    impl FlakyLimiter {
        fn new(clock: &ManualClock) -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryRateLimiter::new(Arc::new(clock.clone()), 100),
                mode: AtomicU8::new(ANSWERS),
                calls: AtomicUsize::new(0),
            })
        }

        fn set(&self, mode: u8) {
            self.mode.store(mode, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl RateLimiter for FlakyLimiter {
        async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.mode.load(Ordering::SeqCst) {
                FAILS => Err(PortError::unavailable("redis", "connection refused")),
                HANGS => std::future::pending().await,
                _ => self.inner.check(key, quota, cost).await,
            }
        }
    }

    /// Log output, shared with the subscriber that writes it.
    #[derive(Debug, Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn count(&self, level: &str, text: &str) -> usize {
            let written = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8");
            written
                .lines()
                .filter(|line| line.contains(level) && line.contains(text))
                .count()
        }
    }

    /// What a test observes: log lines and metrics of this thread (the tests run on a
    /// current-thread runtime, so every call logs and counts on it).
    struct Observed {
        lines: Lines,
        snapshotter: Snapshotter,
        /// Fallbacks counted so far (a snapshot takes the counts since the last one).
        fallbacks: std::cell::Cell<u64>,
        _log: tracing::subscriber::DefaultGuard,
    }

    impl Observed {
        /// Starts observing; metrics are recorded into `recorder`, which must outlive the test.
        fn start(recorder: &DebuggingRecorder) -> (Self, metrics::LocalRecorderGuard<'_>) {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            let observed = Self {
                lines,
                snapshotter: recorder.snapshotter(),
                fallbacks: std::cell::Cell::new(0),
                _log: tracing::subscriber::set_default(subscriber),
            };
            (observed, metrics::set_default_local_recorder(recorder))
        }

        /// Fallbacks counted so far.
        fn fallbacks(&self) -> u64 {
            let counted = self
                .snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find(|(key, ..)| key.key().name() == RATE_LIMITER_FALLBACKS_TOTAL)
                .map_or(0, |(key, _, _, value)| {
                    let labels: Vec<_> = key.key().labels().collect();
                    assert_eq!(labels.len(), 1);
                    assert_eq!((labels[0].key(), labels[0].value()), ("limiter", "test"));
                    match value {
                        DebugValue::Counter(count) => count,
                        other => panic!("{RATE_LIMITER_FALLBACKS_TOTAL} is {other:?}"),
                    }
                });
            self.fallbacks.set(self.fallbacks.get() + counted);
            self.fallbacks.get()
        }

        fn warnings(&self) -> usize {
            self.lines.count("WARN", "cannot answer")
        }

        fn recoveries(&self) -> usize {
            self.lines.count("INFO", "answers again")
        }
    }

    /// One cell a second, five at once.
    fn quota() -> Quota {
        Quota::new(1.0, 5).expect("valid quota")
    }

    fn setup(timeout: Duration) -> (FailOpenRateLimiter, Arc<FlakyLimiter>) {
        let clock = ManualClock::new(1_764_000_000_000);
        let primary = FlakyLimiter::new(&clock);
        let local = Arc::new(MemoryRateLimiter::new(Arc::new(clock), 100));
        let limiter = FailOpenRateLimiter::new("test", primary.clone(), local, timeout);
        (limiter, primary)
    }

    async fn remaining(limiter: &FailOpenRateLimiter, cost: u32) -> u32 {
        let decision = limiter
            .check("tenant", &quota(), cost)
            .await
            .expect("check");
        decision.remaining
    }

    #[tokio::test]
    async fn an_outage_is_answered_locally_counted_per_call_and_warned_once() {
        let recorder = DebuggingRecorder::new();
        let (observed, _metrics) = Observed::start(&recorder);
        let (limiter, primary) = setup(Duration::from_secs(1));
        assert_eq!(remaining(&limiter, 3).await, 2, "the primary spent three");

        primary.set(FAILS);
        assert_eq!(
            remaining(&limiter, 1).await,
            4,
            "the local limiter spent one"
        );
        assert_eq!(remaining(&limiter, 1).await, 3);
        assert_eq!(remaining(&limiter, 1).await, 2);
        assert_eq!(observed.fallbacks(), 3);
        assert_eq!(observed.warnings(), 1, "one warning for the outage");

        primary.set(ANSWERS);
        assert_eq!(remaining(&limiter, 1).await, 1, "the primary's own bucket");
        assert_eq!(observed.recoveries(), 1);
        assert_eq!(observed.fallbacks(), 3);

        primary.set(FAILS);
        remaining(&limiter, 1).await;
        remaining(&limiter, 1).await;
        assert_eq!(observed.fallbacks(), 5);
        assert_eq!(observed.warnings(), 2, "a new outage warns again, once");
    }

    #[tokio::test]
    async fn a_hung_primary_is_answered_locally_after_the_timeout() {
        let recorder = DebuggingRecorder::new();
        let (observed, _metrics) = Observed::start(&recorder);
        let (limiter, primary) = setup(Duration::from_millis(20));
        primary.set(HANGS);
        let started = std::time::Instant::now();
        assert_eq!(remaining(&limiter, 1).await, 4);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(observed.fallbacks(), 1);
        assert_eq!(observed.warnings(), 1);
    }

    #[tokio::test]
    async fn a_caller_error_is_returned_not_answered_locally() {
        let recorder = DebuggingRecorder::new();
        let (observed, _metrics) = Observed::start(&recorder);
        let (limiter, primary) = setup(Duration::from_secs(1));
        let invalid = Quota {
            per_second: 0.0,
            burst: 1,
        };
        let err = limiter
            .check("tenant", &invalid, 1)
            .await
            .expect_err("an invalid quota");
        assert!(matches!(err, PortError::Invalid(_)), "{err}");
        assert_eq!(primary.calls.load(Ordering::SeqCst), 1);
        assert_eq!(observed.fallbacks(), 0);
        assert_eq!(observed.warnings(), 0);
    }

    #[tokio::test]
    async fn caller_errors_do_not_open_the_breaker() {
        let recorder = DebuggingRecorder::new();
        let (observed, _metrics) = Observed::start(&recorder);
        let (limiter, primary) = setup(Duration::from_secs(1));
        let breaker = Breaker::new(
            "test-rate-limiter",
            &BreakerSettings {
                failure_threshold: 2,
                open_min: Duration::from_secs(60),
                open_max: Duration::from_secs(60),
            },
        );
        let limiter = limiter.with_breaker(breaker.clone());
        let invalid = Quota {
            per_second: 0.0,
            burst: 1,
        };
        for _ in 0..5 {
            let err = limiter
                .check("tenant", &invalid, 1)
                .await
                .expect_err("an invalid quota");
            assert!(matches!(err, PortError::Invalid(_)), "{err}");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(
            primary.calls.load(Ordering::SeqCst),
            5,
            "each asked the primary"
        );
        assert_eq!(
            remaining(&limiter, 3).await,
            2,
            "a valid call is still answered by the primary"
        );
        assert_eq!(primary.calls.load(Ordering::SeqCst), 6);
        assert_eq!(observed.fallbacks(), 0);
        assert_eq!(observed.warnings(), 0);
    }

    #[tokio::test]
    async fn an_open_breaker_skips_the_hung_primary() {
        let recorder = DebuggingRecorder::new();
        let (observed, _metrics) = Observed::start(&recorder);
        let (limiter, primary) = setup(Duration::from_millis(20));
        let breaker = Breaker::new(
            "test-rate-limiter",
            &BreakerSettings {
                failure_threshold: 2,
                open_min: Duration::from_secs(60),
                open_max: Duration::from_secs(60),
            },
        );
        let limiter = limiter.with_breaker(breaker.clone());
        primary.set(HANGS);
        for _ in 0..5 {
            remaining(&limiter, 1).await;
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            primary.calls.load(Ordering::SeqCst),
            2,
            "called until the breaker opened"
        );
        assert_eq!(observed.fallbacks(), 5);
        assert_eq!(observed.warnings(), 1);
    }
}
