//! [`MemoryRateLimiter`]: the in-process adapter of the [`RateLimiter`] port, for one process
//! (embedded mode) and as the local answer of a fail-open limiter while Redis is away.
//!
//! Our own GCRA rather than `governor`, which the design names for in-process limits: governor
//! keeps its own clock (a monotonic `Instant` source) and its own state layout, whereas this one
//! runs [`pulse_core::rate_limit::decide`] — the reference the Redis adapter's script mirrors —
//! on the [`Clock`](pulse_core::clock::Clock) port. So a test drives its time with a
//! `ManualClock` instead of sleeping, both adapters pass the same conformance suite and give the
//! same answers to the microsecond, and a key's state is one integer (its TAT) that can be
//! bounded and evicted like any other entry. The algorithm itself is a dozen lines of integer
//! arithmetic; what governor adds (lock-free cells, jitter, its own keyed store) we do not need.
//!
//! Invariants: a key whose TAT is in the past has a full bucket, exactly as if it were absent,
//! so such entries may be dropped at any time; at most `max_keys` keys are held. A new key in a
//! full limiter first drops every such expired entry of its shard; when none is expired it
//! evicts the entry closest to full (the smallest TAT), which forgets the fewest spent cells —
//! that key errs towards allowing, as Redis does when `maxmemory` evicts. Live evictions are
//! counted in [`RATE_LIMITER_EVICTIONS_TOTAL`].
//!
//! Keys are hashed into shards of at least [`KEYS_PER_SHARD`] keys each (up to
//! [`MAX_SHARDS`]), each with its own lock and an exact share of `max_keys`, so concurrent
//! callers rarely wait on each other, and a small limiter is one shard whose bound and eviction
//! order are exact over all its keys. A shard's lock is held for one map lookup and insert, and
//! for one pass over the shard when it is full.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use pulse_core::clock::{SharedClock, SystemClock};
use pulse_core::rate_limit::{decide, Quota, RateDecision, RateLimiter};
use pulse_core::PortResult;

/// Live keys evicted to make room for new ones (the limiter was full of keys still spending).
pub const RATE_LIMITER_EVICTIONS_TOTAL: &str = "pulse_memory_rate_limiter_evictions_total";

/// Default bound on keys held.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Most shards a limiter splits its keys into.
pub const MAX_SHARDS: usize = 16;

/// Fewest keys a shard is sized for: below this a limiter has fewer shards, so a full shard
/// still has a meaningful choice of entry to evict.
pub const KEYS_PER_SHARD: usize = 1_024;

/// One shard's TATs (µs since the epoch), and how many keys it may hold.
#[derive(Debug)]
struct Shard {
    tats: HashMap<String, i64>,
    max_keys: usize,
}

impl Shard {
    /// Makes room for one more key at `now_us`: drops every expired entry, else evicts the one
    /// closest to full. One pass over the shard, only when it is full.
    fn make_room(&mut self, now_us: i64) {
        if self.tats.len() < self.max_keys {
            return;
        }
        self.tats.retain(|_, tat| *tat > now_us);
        if self.tats.len() < self.max_keys {
            return;
        }
        let closest_to_full = self
            .tats
            .iter()
            .min_by_key(|(_, tat)| **tat)
            .map(|(key, _)| key.clone());
        if let Some(key) = closest_to_full {
            self.tats.remove(&key);
            metrics::counter!(RATE_LIMITER_EVICTIONS_TOTAL).increment(1);
        }
    }
}

#[derive(Debug)]
struct Shards {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

/// The in-process rate limiter. Cheap to clone; clones share the same buckets.
#[derive(Debug, Clone)]
pub struct MemoryRateLimiter {
    shards: Arc<Shards>,
    clock: SharedClock,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock), DEFAULT_MAX_KEYS)
    }
}

impl MemoryRateLimiter {
    /// An empty limiter reading time from `clock`, holding at most `max_keys` keys (at least 1).
    pub fn new(clock: SharedClock, max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let count = (max_keys / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        // Shares that add up to `max_keys` exactly.
        let shards = (0..count)
            .map(|shard| {
                let share = max_keys / count + usize::from(shard < max_keys % count);
                Mutex::new(Shard {
                    tats: HashMap::new(),
                    max_keys: share,
                })
            })
            .collect();
        Self {
            shards: Arc::new(Shards {
                shards,
                hasher: RandomState::new(),
            }),
            clock,
        }
    }

    /// Keys held, including expired ones not yet dropped.
    pub fn len(&self) -> usize {
        (0..self.shards.shards.len())
            .map(|shard| self.lock(shard).tats.len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &str) -> usize {
        // The modulo of a 64-bit hash by at most MAX_SHARDS fits `usize`.
        (self.shards.hasher.hash_one(key) % self.shards.shards.len() as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Every mutation is a single map operation, so a panic elsewhere while holding the lock
        // cannot leave a shard half-written: a poisoned lock is still safe to use.
        self.shards.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
        let now_us = self.clock.now_ms().saturating_mul(1_000);
        let mut shard = self.lock(self.shard_of(key));
        let stored = shard.tats.get(key).copied();
        let verdict = decide(quota, cost, stored, now_us)?;
        if let Some(tat) = verdict.new_tat_us {
            match shard.tats.get_mut(key) {
                Some(held) => *held = tat,
                None => {
                    shard.make_room(now_us);
                    shard.tats.insert(key.to_owned(), tat);
                }
            }
        }
        Ok(verdict.decision)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pulse_core::clock::ManualClock;

    use super::*;

    fn limiter(max_keys: usize) -> (MemoryRateLimiter, ManualClock) {
        let clock = ManualClock::new(1_764_000_000_000);
        (
            MemoryRateLimiter::new(Arc::new(clock.clone()), max_keys),
            clock,
        )
    }

    /// One cell a second, two at once.
    fn quota() -> Quota {
        Quota::new(1.0, 2).expect("valid quota")
    }

    async fn spend(limiter: &MemoryRateLimiter, key: &str, cost: u32) -> RateDecision {
        limiter.check(key, &quota(), cost).await.expect("check")
    }

    #[tokio::test]
    async fn a_full_limiter_drops_expired_keys_before_evicting_a_live_one() {
        let (limiter, clock) = limiter(3);
        spend(&limiter, "idle-1", 1).await;
        spend(&limiter, "idle-2", 1).await;
        clock.advance(Duration::from_secs(5));
        spend(&limiter, "busy", 2).await;
        spend(&limiter, "new", 2).await;
        assert_eq!(limiter.len(), 2, "both expired keys dropped, no live one");
        assert!(!spend(&limiter, "busy", 1).await.allowed, "busy kept");
    }

    #[tokio::test]
    async fn a_key_whose_bucket_is_full_again_exactly_now_is_dropped_not_evicted() {
        let (limiter, clock) = limiter(2);
        spend(&limiter, "a", 1).await;
        spend(&limiter, "b", 1).await;
        // One cell a second: both buckets are full again at this very instant.
        clock.advance(Duration::from_secs(1));
        spend(&limiter, "new", 1).await;
        assert_eq!(
            limiter.len(),
            1,
            "both expired keys dropped, only the new one held"
        );
    }

    #[tokio::test]
    async fn a_limiter_with_room_adds_a_key_without_a_pass_over_its_shard() {
        let (limiter, clock) = limiter(3);
        spend(&limiter, "idle", 1).await;
        clock.advance(Duration::from_secs(5));
        spend(&limiter, "new", 1).await;
        assert_eq!(
            limiter.len(),
            2,
            "the expired key is dropped only once the limiter is full"
        );
        assert_eq!(
            spend(&limiter, "idle", 0).await.remaining,
            2,
            "a full bucket"
        );
    }

    #[tokio::test]
    async fn a_limiter_is_empty_until_a_key_spends() {
        let (limiter, _clock) = limiter(2);
        assert!(limiter.is_empty());
        spend(&limiter, "reader", 0).await;
        assert!(limiter.is_empty(), "reading a key does not hold it");
        spend(&limiter, "spender", 1).await;
        assert!(!limiter.is_empty());
        assert_eq!(limiter.len(), 1);
    }

    #[tokio::test]
    async fn a_limiter_full_of_live_keys_evicts_the_one_closest_to_full() {
        let (limiter, _clock) = limiter(2);
        spend(&limiter, "light", 1).await;
        spend(&limiter, "heavy", 2).await;
        spend(&limiter, "new", 1).await;
        assert_eq!(limiter.len(), 2);
        assert!(!spend(&limiter, "heavy", 1).await.allowed, "heavy kept");
        assert_eq!(
            spend(&limiter, "light", 0).await.remaining,
            2,
            "light was forgotten: a full bucket again"
        );
    }

    #[tokio::test]
    async fn spending_on_a_held_key_takes_no_room_and_denied_calls_add_no_key() {
        let (limiter, _clock) = limiter(1);
        spend(&limiter, "only", 1).await;
        spend(&limiter, "only", 1).await;
        assert!(!spend(&limiter, "other", 3).await.allowed);
        spend(&limiter, "other", 0).await;
        assert_eq!(limiter.len(), 1);
        assert!(!spend(&limiter, "only", 1).await.allowed, "only kept");
    }

    #[tokio::test]
    async fn a_sharded_limiter_never_holds_more_than_max_keys() {
        let (limiter, _clock) = limiter(20_000);
        assert_eq!(limiter.shards.shards.len(), MAX_SHARDS);
        let shares: usize = (0..MAX_SHARDS).map(|s| limiter.lock(s).max_keys).sum();
        assert_eq!(shares, 20_000);
        for i in 0..50_000 {
            spend(&limiter, &format!("tenant-{i}"), 1).await;
        }
        assert!(limiter.len() <= 20_000, "{} keys held", limiter.len());
        assert!(
            limiter.len() > 19_000,
            "shards fill evenly: {}",
            limiter.len()
        );
    }
}
