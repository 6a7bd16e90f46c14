//! [`LeasedRateLimiter`]: a shared [`RateLimiter`] asked once per lease of units instead of once
//! per request, so a quota on Redis costs the hot path a round trip only every few requests.
//!
//! A process takes a **lease** from the shared limiter: it charges the shared bucket for a batch
//! of units at once (50 ms of the quota's rate, at least the call's cost, at most a quarter of
//! the burst), then spends them locally until they run out or the lease lapses (100 ms). Taken
//! units are spent from the shared bucket before they are used, so the processes together never
//! let through more than the quota; units a lease did not use before it lapsed are lost, so a
//! tenant near its quota can be refused up to one lease's worth early per process. A quota too
//! small for a lease of more than one unit is asked for on every call, exactly as without this
//! wrapper. When a lease is refused, the call is asked for alone, so the answer at the edge of a
//! quota (and its `retry_after`) is the shared limiter's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::clock::SharedClock;
use pulse_core::rate_limit::{Quota, RateDecision, RateLimiter};
use pulse_core::PortResult;

/// How long a lease's units may be spent.
pub const LEASE_TTL: Duration = Duration::from_millis(100);
/// How much of the quota's rate one lease takes.
const LEASE_SHARE: f64 = 0.05;
/// Most distinct keys holding a lease at once; past it, lapsed leases are dropped first.
const MAX_LEASES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Lease {
    units: u32,
    until_ms: i64,
    /// The quota the lease was taken under: a changed quota takes a new lease.
    quota: (u64, u32),
}

/// A shared limiter asked once per lease. Cheap to clone; clones share the leases.
#[derive(Debug, Clone)]
pub struct LeasedRateLimiter {
    shared: Arc<dyn RateLimiter>,
    clock: SharedClock,
    leases: Arc<Mutex<HashMap<String, Lease>>>,
}

impl LeasedRateLimiter {
    /// Leases from `shared`, timed by `clock`.
    pub fn new(shared: Arc<dyn RateLimiter>, clock: SharedClock) -> Self {
        Self {
            shared,
            clock,
            leases: Arc::default(),
        }
    }

    /// The units one lease of `quota` takes for a call of `cost`.
    fn lease_size(quota: &Quota, cost: u32) -> u32 {
        let share = (quota.per_second * LEASE_SHARE).floor() as u32;
        share.min(quota.burst / 4).max(cost)
    }

    /// Spends `cost` from a live lease of `key`, if it holds that much.
    fn spend(&self, key: &str, quota_id: (u64, u32), cost: u32, now_ms: i64) -> Option<u32> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let lease = leases.get_mut(key)?;
        if lease.until_ms <= now_ms || lease.quota != quota_id || lease.units < cost {
            return None;
        }
        lease.units -= cost;
        Some(lease.units)
    }

    fn keep(&self, key: &str, lease: Lease, now_ms: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if leases.len() >= MAX_LEASES && !leases.contains_key(key) {
            leases.retain(|_, lease| lease.until_ms > now_ms);
            if leases.len() >= MAX_LEASES {
                return;
            }
        }
        leases.insert(key.to_owned(), lease);
    }
}

#[async_trait]
impl RateLimiter for LeasedRateLimiter {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
        let size = Self::lease_size(quota, cost);
        if size <= cost {
            return self.shared.check(key, quota, cost).await;
        }
        let quota_id = (quota.per_second.to_bits(), quota.burst);
        let now_ms = self.clock.now_ms();
        if let Some(left) = self.spend(key, quota_id, cost, now_ms) {
            return Ok(RateDecision {
                allowed: true,
                remaining: left,
                retry_after: Duration::ZERO,
                reset: Duration::ZERO,
            });
        }
        let leased = self.shared.check(key, quota, size).await?;
        if !leased.allowed {
            // Not a whole lease left: this call alone may still fit.
            return self.shared.check(key, quota, cost).await;
        }
        let lease = Lease {
            units: size - cost,
            until_ms: now_ms + LEASE_TTL.as_millis() as i64,
            quota: quota_id,
        };
        self.keep(key, lease, now_ms);
        Ok(RateDecision {
            remaining: leased.remaining + lease.units,
            ..leased
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use pulse_core::clock::ManualClock;
    use pulse_memory::MemoryRateLimiter;

    use super::*;

    /// The real in-process limiter as the shared one, counting how often it is asked.
    #[derive(Debug)]
    struct Counted {
        inner: MemoryRateLimiter,
        calls: AtomicU64,
    }

    #[async_trait]
    impl RateLimiter for Counted {
        async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.check(key, quota, cost).await
        }
    }

    fn setup() -> (ManualClock, Arc<Counted>, LeasedRateLimiter) {
        let clock = ManualClock::new(1_700_000_000_000);
        let shared = Arc::new(Counted {
            inner: MemoryRateLimiter::new(Arc::new(clock.clone()), 1_000),
            calls: AtomicU64::new(0),
        });
        let leased = LeasedRateLimiter::new(shared.clone(), Arc::new(clock.clone()));
        (clock, shared, leased)
    }

    #[tokio::test]
    async fn a_busy_key_asks_the_shared_limiter_once_per_lease() {
        let (_, shared, leased) = setup();
        let quota = Quota::new(10_000.0, 20_000).unwrap();
        for _ in 0..1_000 {
            assert!(
                leased
                    .check("t:a:quota:api", &quota, 1)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        // Leases of 500 units (50 ms of 10 000/s): two asks for 1 000 calls.
        assert_eq!(shared.calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn leases_never_let_through_more_than_the_quota() {
        let (clock, _, leased) = setup();
        let other = LeasedRateLimiter::new(leased.shared.clone(), Arc::new(clock.clone()));
        // 400/s with a burst of 100: leases of 20; two processes share one bucket.
        let quota = Quota::new(400.0, 100).unwrap();
        let mut allowed = 0;
        for n in 0..400 {
            let process = if n % 2 == 0 { &leased } else { &other };
            if process.check("k", &quota, 1).await.unwrap().allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100, "exactly the burst, shared by both processes");
        // A refused call reports the shared limiter's own wait.
        let refused = leased.check("k", &quota, 1).await.unwrap();
        assert!(
            !refused.allowed && refused.retry_after > Duration::ZERO,
            "{refused:?}"
        );
        clock.advance(Duration::from_millis(500));
        assert!(
            leased.check("k", &quota, 1).await.unwrap().allowed,
            "refilled"
        );
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_not_spent_and_small_quotas_are_asked_every_time() {
        let (clock, shared, leased) = setup();
        let quota = Quota::new(10_000.0, 20_000).unwrap();
        assert!(leased.check("k", &quota, 1).await.unwrap().allowed);
        clock.advance(LEASE_TTL);
        assert!(leased.check("k", &quota, 1).await.unwrap().allowed);
        assert_eq!(
            shared.calls.load(Ordering::Relaxed),
            2,
            "a new lease after the TTL"
        );
        let small = Quota::new(2.0, 2).unwrap();
        for _ in 0..3 {
            leased.check("small", &small, 1).await.unwrap();
        }
        assert_eq!(
            shared.calls.load(Ordering::Relaxed),
            5,
            "no lease below two units"
        );
    }
}
