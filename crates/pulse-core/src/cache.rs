//! The cache/state store port: small values with TTLs, counters and batched writes.
//!
//! Redis in distributed mode, an in-process map in embedded mode. Values are bytes; callers pick
//! the encoding (the surge engine writes JSON so operators can read it with `redis-cli`). Scored
//! indexes (Redis sorted sets) list what is live, e.g. the cells with a published surge, so a
//! reader can find keys without scanning the keyspace.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::PortResult;

/// One write in a [`Cache::apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheWrite {
    /// Sets `key` to `value`, expiring after `ttl` when given (no TTL = keep until deleted).
    Set {
        /// Key.
        key: String,
        /// Value.
        value: Bytes,
        /// Time to live.
        ttl: Option<Duration>,
    },
    /// Adds `delta` to the integer at `key` (missing = 0); when `ttl` is given it is (re)set.
    IncrBy {
        /// Key.
        key: String,
        /// Amount to add (may be negative).
        delta: i64,
        /// Time to live to set after the increment.
        ttl: Option<Duration>,
    },
    /// Removes `key`.
    Delete {
        /// Key.
        key: String,
    },
    /// Adds `member` to the scored index at `key` (a Redis sorted set), replacing its score when
    /// it is already there; when `ttl` is given the whole index's expiry is (re)set to it.
    IndexAdd {
        /// Key of the index.
        key: String,
        /// Member to add.
        member: String,
        /// Its score (callers use times, so readers can skip stale members).
        score: i64,
        /// Time to live of the index.
        ttl: Option<Duration>,
    },
    /// Removes `member` from the index at `key`.
    IndexRemove {
        /// Key of the index.
        key: String,
        /// Member to remove.
        member: String,
    },
    /// Removes every member of the index at `key` scored below `below`.
    IndexTrim {
        /// Key of the index.
        key: String,
        /// Lowest score kept.
        below: i64,
    },
}

impl CacheWrite {
    /// The key this write changes.
    pub fn key(&self) -> &str {
        match self {
            CacheWrite::Set { key, .. }
            | CacheWrite::IncrBy { key, .. }
            | CacheWrite::Delete { key }
            | CacheWrite::IndexAdd { key, .. }
            | CacheWrite::IndexRemove { key, .. }
            | CacheWrite::IndexTrim { key, .. } => key,
        }
    }
}

/// Writes applied only if their guard key is absent (see [`Cache::apply_if_absent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// Key whose absence allows the writes; set by them.
    pub guard: String,
    /// How long the guard lives.
    pub guard_ttl: Duration,
    /// What to apply when the guard was absent.
    pub writes: Vec<CacheWrite>,
}

/// A key/value store with expiry.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    /// The value at `key`, unless missing or expired.
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>>;

    /// The values at `keys`, in the same order.
    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>>;

    /// Sets `key` to `value`, expiring after `ttl` when given.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()>;

    /// Atomically adds `delta` to the integer at `key` (missing = 0) and returns the new value.
    /// When `ttl` is given the key's expiry is (re)set to it.
    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64>;

    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> PortResult<bool>;

    /// Remaining time to live of `key`: `None` when missing, `Some(None)` when it never expires.
    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>>;

    /// Applies `writes` in order as one atomic batch: no reader sees half of it.
    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()>;

    /// Atomically: when `guard` is absent, sets it (expiring after `guard_ttl`) and applies
    /// `writes`, returning `true`; when `guard` exists, changes nothing and returns `false`.
    ///
    /// This is how an at-least-once consumer applies an effect exactly once: the guard names the
    /// event (`seen:order:{id}`) and lives at least as long as a redelivery can happen.
    async fn apply_if_absent(
        &self,
        guard: &str,
        guard_ttl: Duration,
        writes: Vec<CacheWrite>,
    ) -> PortResult<bool> {
        let item = Guarded {
            guard: guard.to_owned(),
            guard_ttl,
            writes,
        };
        let applied = self.apply_if_absent_many(vec![item]).await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// [`Cache::apply_if_absent`] for many items in one round trip: each item is atomic on its
    /// own, items are applied in order (a later item with the same guard sees the earlier one),
    /// and the answer says, per item, whether it was applied.
    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>>;

    /// Members of the index at `key` scored at least `min_score`, highest score first, at most
    /// `limit` of them; empty when the index is missing.
    async fn index_range(
        &self,
        key: &str,
        min_score: i64,
        limit: usize,
    ) -> PortResult<Vec<(String, i64)>>;

    /// Succeeds when the store answers a trivial request.
    async fn ping(&self) -> PortResult<()>;
}
