//! In-process TTL store: the embedded adapter of the [`Cache`] port, standing in for Redis when
//! Pulse runs on one machine.
//!
//! Hand-written rather than built on a caching crate because it must take time from the
//! [`Clock`](pulse_core::clock::Clock) port (so TTLs are testable without sleeping) and offer
//! atomic increments and atomic batches with the same semantics as Redis `INCRBY` and `MULTI`.
//!
//! Invariants: an expired entry is never returned; the number of live entries never exceeds
//! `max_entries` — when full, expired entries are purged first, then the entry closest to expiry
//! is evicted (Redis `volatile-ttl`); if no entry has a TTL the write is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::clock::{SharedClock, SystemClock};
use pulse_core::{PortError, PortResult};

const BACKEND: &str = "memory-cache";

/// Entries evicted to make room (the cache was full of live entries).
pub const EVICTIONS_TOTAL: &str = "pulse_memory_cache_evictions_total";
/// Entries held, including expired ones not yet swept.
pub const ENTRIES: &str = "pulse_memory_cache_entries";

/// Default bound on live entries.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// What a key holds: a plain value (a counter is a decimal value) or a scored index.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Bytes),
    Index(HashMap<String, i64>),
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires_at_ms: Option<i64>,
}

impl Entry {
    fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    fn bytes(&self, key: &str) -> PortResult<&Bytes> {
        match &self.value {
            Value::Bytes(bytes) => Ok(bytes),
            Value::Index(_) => Err(wrong_type(key, "an index")),
        }
    }
}

/// The error of an operation on a key holding the other kind of value (Redis `WRONGTYPE`).
fn wrong_type(key: &str, holds: &str) -> PortError {
    PortError::Invalid(format!("{key} holds {holds}"))
}

/// The in-process cache. Cheap to clone; clones share the same entries.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    clock: SharedClock,
    max_entries: usize,
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock), DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryCache {
    /// An empty cache reading time from `clock`, holding at most `max_entries` live entries.
    pub fn new(clock: SharedClock, max_entries: usize) -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
            clock,
            max_entries: max_entries.max(1),
        }
    }

    /// Number of entries held, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry; returns how many were dropped.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, entry| entry.is_live(now));
        before - entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (every mutation is a
        // single map operation), so a poisoned lock is still safe to use.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn expiry(now_ms: i64, ttl: Option<Duration>) -> Option<i64> {
        ttl.map(|ttl| now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
    }

    fn live<'a>(entries: &'a HashMap<String, Entry>, key: &str, now: i64) -> Option<&'a Entry> {
        entries.get(key).filter(|entry| entry.is_live(now))
    }

    /// Makes room for one more key, as described in the crate docs.
    fn make_room(
        &self,
        entries: &mut HashMap<String, Entry>,
        key: &str,
        now: i64,
    ) -> PortResult<()> {
        if entries.len() < self.max_entries || entries.contains_key(key) {
            return Ok(());
        }
        entries.retain(|_, entry| entry.is_live(now));
        if entries.len() < self.max_entries {
            return Ok(());
        }
        metrics::counter!(EVICTIONS_TOTAL).increment(1);
        // A linear scan is fine here: it only runs when the cache is full of live entries, which
        // is an operator sizing problem, not the steady state.
        let victim = entries
            .iter()
            .filter_map(|(k, entry)| entry.expires_at_ms.map(|at| (at, k.clone())))
            .min();
        match victim {
            Some((_, victim)) => {
                entries.remove(&victim);
                Ok(())
            }
            None => Err(PortError::Unavailable {
                backend: BACKEND,
                message: format!(
                    "cache is full ({} entries without TTL); raise the limit",
                    self.max_entries
                ),
            }),
        }
    }

    fn apply_one(
        &self,
        entries: &mut HashMap<String, Entry>,
        write: CacheWrite,
        now: i64,
    ) -> PortResult<Option<i64>> {
        match write {
            CacheWrite::Set { key, value, ttl } => {
                self.make_room(entries, &key, now)?;
                let expires_at_ms = Self::expiry(now, ttl);
                entries.insert(
                    key,
                    Entry {
                        value: Value::Bytes(value),
                        expires_at_ms,
                    },
                );
                Ok(None)
            }
            CacheWrite::IncrBy { key, delta, ttl } => {
                let (current, expires_at_ms) = match Self::live(entries, &key, now) {
                    Some(entry) => (
                        parse_integer(&key, entry.bytes(&key)?)?,
                        entry.expires_at_ms,
                    ),
                    None => (0, None),
                };
                let next = current.checked_add(delta).ok_or_else(|| {
                    PortError::Invalid(format!("increment of {key} overflows a 64-bit integer"))
                })?;
                let expires_at_ms = match ttl {
                    Some(ttl) => Self::expiry(now, Some(ttl)),
                    None => expires_at_ms,
                };
                self.make_room(entries, &key, now)?;
                entries.insert(
                    key,
                    Entry {
                        value: Value::Bytes(Bytes::from(next.to_string())),
                        expires_at_ms,
                    },
                );
                Ok(Some(next))
            }
            CacheWrite::Delete { key } => {
                entries.remove(&key);
                Ok(None)
            }
            CacheWrite::IndexAdd {
                key,
                member,
                score,
                ttl,
            } => {
                if Self::live(entries, &key, now).is_none() {
                    self.make_room(entries, &key, now)?;
                    let empty = Entry {
                        value: Value::Index(HashMap::new()),
                        expires_at_ms: None,
                    };
                    entries.insert(key.clone(), empty);
                }
                let entry = entries.get_mut(&key).expect("inserted above");
                let Value::Index(members) = &mut entry.value else {
                    return Err(wrong_type(&key, "a value"));
                };
                members.insert(member, score);
                if ttl.is_some() {
                    entry.expires_at_ms = Self::expiry(now, ttl);
                }
                Ok(None)
            }
            CacheWrite::IndexRemove { key, member } => {
                Self::edit_index(entries, &key, now, |members| {
                    members.remove(&member);
                })
            }
            CacheWrite::IndexTrim { key, below } => {
                Self::edit_index(entries, &key, now, |members| {
                    members.retain(|_, score| *score >= below)
                })
            }
        }
    }

    /// Changes the live index at `key`, if any; an index left empty is removed, as in Redis.
    fn edit_index(
        entries: &mut HashMap<String, Entry>,
        key: &str,
        now: i64,
        edit: impl FnOnce(&mut HashMap<String, i64>),
    ) -> PortResult<Option<i64>> {
        let Some(entry) = entries.get_mut(key).filter(|entry| entry.is_live(now)) else {
            return Ok(None);
        };
        let Value::Index(members) = &mut entry.value else {
            return Err(wrong_type(key, "a value"));
        };
        edit(members);
        if members.is_empty() {
            entries.remove(key);
        }
        Ok(None)
    }
    /// Applies `writes` in order under the caller's lock, rolling back on failure.
    fn apply_locked(
        &self,
        entries: &mut HashMap<String, Entry>,
        writes: Vec<CacheWrite>,
        now: i64,
    ) -> PortResult<()> {
        // Remember what the batch touches so a failing write can be rolled back: no reader can
        // observe the batch half-applied because the lock is held throughout.
        // One snapshot per key (not per write): a batch of many index writes to one key must not
        // copy the whole index once per write.
        let mut before: Vec<(String, Option<Entry>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for write in &writes {
            let key = write.key();
            if seen.insert(key) {
                before.push((key.to_owned(), entries.get(key).cloned()));
            }
        }
        for write in writes {
            if let Err(err) = self.apply_one(entries, write, now) {
                for (key, entry) in before.into_iter().rev() {
                    match entry {
                        Some(entry) => entries.insert(key, entry),
                        None => entries.remove(&key),
                    };
                }
                return Err(err);
            }
        }
        Ok(())
    }
}

fn parse_integer(key: &str, value: &[u8]) -> PortResult<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| PortError::Corrupt(format!("value at {key} is not an integer")))
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        let now = self.clock.now_ms();
        let entries = self.lock();
        Self::live(&entries, key, now)
            .map(|entry| entry.bytes(key).cloned())
            .transpose()
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        let now = self.clock.now_ms();
        let entries = self.lock();
        // As Redis `MGET`: a key holding an index reads as missing.
        Ok(keys
            .iter()
            .map(|key| {
                Self::live(&entries, key, now).and_then(|entry| match &entry.value {
                    Value::Bytes(bytes) => Some(bytes.clone()),
                    Value::Index(_) => None,
                })
            })
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        let write = CacheWrite::Set {
            key: key.to_owned(),
            value,
            ttl,
        };
        self.apply_one(&mut entries, write, now).map(|_| ())
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        let write = CacheWrite::IncrBy {
            key: key.to_owned(),
            delta,
            ttl,
        };
        let next = self.apply_one(&mut entries, write, now)?;
        Ok(next.unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        Ok(entries.remove(key).is_some_and(|entry| entry.is_live(now)))
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        let now = self.clock.now_ms();
        let entries = self.lock();
        Ok(Self::live(&entries, key, now).map(|entry| {
            entry
                .expires_at_ms
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
        }))
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        self.apply_locked(&mut entries, writes, now)
    }

    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        let mut applied = Vec::with_capacity(items.len());
        for item in items {
            if Self::live(&entries, &item.guard, now).is_some() {
                applied.push(false);
                continue;
            }
            let mut all = Vec::with_capacity(item.writes.len() + 1);
            all.push(CacheWrite::Set {
                key: item.guard,
                value: Bytes::from_static(b"1"),
                ttl: Some(item.guard_ttl),
            });
            all.extend(item.writes);
            self.apply_locked(&mut entries, all, now)?;
            applied.push(true);
        }
        Ok(applied)
    }

    async fn index_range(
        &self,
        key: &str,
        min_score: i64,
        limit: usize,
    ) -> PortResult<Vec<(String, i64)>> {
        let now = self.clock.now_ms();
        let entries = self.lock();
        let Some(entry) = Self::live(&entries, key, now) else {
            return Ok(Vec::new());
        };
        let Value::Index(members) = &entry.value else {
            return Err(wrong_type(key, "a value"));
        };
        let mut found: Vec<(String, i64)> = members
            .iter()
            .filter(|(_, score)| **score >= min_score)
            .map(|(member, score)| (member.clone(), *score))
            .collect();
        // Redis `ZREVRANGEBYSCORE` order: score, then member, both descending.
        found.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        found.truncate(limit);
        Ok(found)
    }

    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::clock::ManualClock;

    use super::*;

    fn cache_with_clock(max_entries: usize) -> (MemoryCache, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        (
            MemoryCache::new(Arc::new(clock.clone()), max_entries),
            clock,
        )
    }

    #[tokio::test]
    async fn entries_expire_exactly_at_their_ttl() {
        let (cache, clock) = cache_with_clock(10);
        cache
            .set(
                "surge:a",
                Bytes::from_static(b"1.5"),
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        clock.advance(Duration::from_millis(59_999));
        assert!(cache.get("surge:a").await.unwrap().is_some());
        clock.advance(Duration::from_millis(1));
        assert_eq!(cache.get("surge:a").await.unwrap(), None);
        assert_eq!(cache.ttl("surge:a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_full_cache_evicts_the_entry_closest_to_expiry() {
        let (cache, _clock) = cache_with_clock(2);
        let value = Bytes::from_static(b"v");
        cache
            .set("long", value.clone(), Some(Duration::from_secs(100)))
            .await
            .unwrap();
        cache
            .set("short", value.clone(), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        cache
            .set("new", value.clone(), Some(Duration::from_secs(50)))
            .await
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("short").await.unwrap(), None);
        assert!(cache.get("long").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_full_cache_purges_expired_entries_before_evicting_live_ones() {
        let (cache, clock) = cache_with_clock(2);
        let value = Bytes::from_static(b"v");
        cache.set("keep", value.clone(), None).await.unwrap();
        cache
            .set("old", value.clone(), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(2));
        cache.set("new", value.clone(), None).await.unwrap();
        assert!(cache.get("keep").await.unwrap().is_some());
        assert!(cache.get("new").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_cache_full_of_entries_without_ttl_refuses_new_keys() {
        let (cache, _clock) = cache_with_clock(1);
        cache
            .set("a", Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        let err = cache
            .set("b", Bytes::from_static(b"1"), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cache is full"), "{err}");
        // Overwriting an existing key needs no room.
        cache
            .set("a", Bytes::from_static(b"2"), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_batch_with_a_bad_increment_changes_nothing() {
        let (cache, _clock) = cache_with_clock(10);
        cache
            .set("text", Bytes::from_static(b"abc"), None)
            .await
            .unwrap();
        let err = cache
            .apply(vec![
                CacheWrite::Set {
                    key: "x".into(),
                    value: Bytes::from_static(b"1"),
                    ttl: None,
                },
                CacheWrite::IncrBy {
                    key: "text".into(),
                    delta: 1,
                    ttl: None,
                },
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::Corrupt(_)), "{err}");
        assert_eq!(cache.get("x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn purge_expired_drops_only_expired_entries() {
        let (cache, clock) = cache_with_clock(10);
        cache
            .set("a", Bytes::from_static(b"1"), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        cache
            .set("b", Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(cache.purge_expired(), 1);
        assert_eq!(cache.len(), 1);
    }
}
