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
//!
//! Expiry is a priority queue, not a scan: purging `k` expired entries or evicting one costs
//! `O(k log n)` under the lock, so a cache of a million quote locks neither stalls its callers
//! when it sweeps nor when it is full.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
    /// The time of this key's item in the expiry queue, if it has one: never later than
    /// `expires_at_ms`, so the entry surfaces in time (and is re-queued if it was extended).
    queued_at_ms: Option<i64>,
}

impl Entry {
    fn new(value: Value, expires_at_ms: Option<i64>) -> Self {
        Self {
            value,
            expires_at_ms,
            queued_at_ms: None,
        }
    }

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

/// Entries purged per hold of the lock by [`MemoryCache::purge_expired`].
const PURGE_BATCH: usize = 1_024;
/// Expired entries purged to make room for one new key before a live one is evicted.
const PURGE_ON_WRITE: usize = 64;

/// The entries and their expiry queue.
#[derive(Debug, Default)]
struct Store {
    entries: HashMap<String, Entry>,
    /// Min-queue of `(expiry, key)`. An item whose key is gone, or whose time is not the key's
    /// `queued_at_ms`, is stale and skipped when it surfaces; a key has at most one live item.
    expiries: BinaryHeap<Reverse<(i64, String)>>,
}

impl Store {
    /// Room for `entries` reserved up front: growing a map of a million keys rehashes them all
    /// under the lock (a pause of a tenth of a second), while reserved room costs address space
    /// only until it is used.
    fn with_capacity(entries: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(entries),
            expiries: BinaryHeap::with_capacity(entries),
        }
    }

    fn live(&self, key: &str, now: i64) -> Option<&Entry> {
        self.entries.get(key).filter(|entry| entry.is_live(now))
    }

    /// Stores `entry` at `key`, queueing its expiry.
    fn insert(&mut self, key: String, mut entry: Entry) {
        entry.queued_at_ms = self.entries.get(&key).and_then(|old| old.queued_at_ms);
        Self::queue(&mut self.expiries, &key, &mut entry);
        self.entries.insert(key, entry);
    }

    /// Queues `entry`'s expiry unless an item at or before it is already queued.
    fn queue(expiries: &mut BinaryHeap<Reverse<(i64, String)>>, key: &str, entry: &mut Entry) {
        if let Some(at) = entry.expires_at_ms {
            if entry.queued_at_ms.is_none_or(|queued| queued > at) {
                expiries.push(Reverse((at, key.to_owned())));
                entry.queued_at_ms = Some(at);
            }
        }
    }

    /// Pops the next queue item that is live, re-queueing entries whose expiry moved later.
    /// With `due_by`, stops at items after that time.
    fn next_expiring(&mut self, due_by: Option<i64>) -> Option<(i64, String)> {
        loop {
            let Reverse((at, _)) = self.expiries.peek()?;
            if due_by.is_some_and(|due_by| *at > due_by) {
                return None;
            }
            let Reverse((at, key)) = self.expiries.pop()?;
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.queued_at_ms != Some(at) {
                continue;
            }
            entry.queued_at_ms = None;
            match entry.expires_at_ms {
                Some(expiry) if expiry == at => return Some((at, key)),
                Some(_) => Self::queue(&mut self.expiries, &key, entry),
                None => {}
            }
        }
    }

    /// Drops up to `max` entries expired at `now`; returns how many.
    fn purge_expired(&mut self, now: i64, max: usize) -> usize {
        let mut purged = 0;
        while purged < max {
            let Some((_, key)) = self.next_expiring(Some(now)) else {
                break;
            };
            self.entries.remove(&key);
            purged += 1;
        }
        purged
    }

    /// Drops the entry closest to expiry; false when no entry has a TTL.
    fn evict_closest_to_expiry(&mut self) -> bool {
        match self.next_expiring(None) {
            Some((_, key)) => {
                self.entries.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// The in-process cache. Cheap to clone; clones share the same entries.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    store: Arc<Mutex<Store>>,
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
            store: Arc::new(Mutex::new(Store::with_capacity(max_entries.max(1)))),
            clock,
            max_entries: max_entries.max(1),
        }
    }

    /// Number of entries held, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry; returns how many were dropped. The lock is released every
    /// 1,024 entries, so callers never wait behind a long sweep.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut purged = 0;
        loop {
            let batch = self.lock().purge_expired(now, PURGE_BATCH);
            purged += batch;
            if batch < PURGE_BATCH {
                return purged;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave an entry half-written (every mutation is a
        // single map operation), so a poisoned lock is still safe to use.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn expiry(now_ms: i64, ttl: Option<Duration>) -> Option<i64> {
        ttl.map(|ttl| now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Makes room for one more key, as described in the crate docs.
    fn make_room(&self, store: &mut Store, key: &str, now: i64) -> PortResult<()> {
        if store.entries.len() < self.max_entries || store.entries.contains_key(key) {
            return Ok(());
        }
        if store.purge_expired(now, PURGE_ON_WRITE) > 0 {
            return Ok(());
        }
        if store.evict_closest_to_expiry() {
            metrics::counter!(EVICTIONS_TOTAL).increment(1);
            Ok(())
        } else {
            Err(PortError::Unavailable {
                backend: BACKEND,
                message: format!(
                    "cache is full ({} entries without TTL); raise the limit",
                    self.max_entries
                ),
            })
        }
    }

    fn apply_one(&self, store: &mut Store, write: CacheWrite, now: i64) -> PortResult<Option<i64>> {
        match write {
            CacheWrite::Set { key, value, ttl } => {
                self.make_room(store, &key, now)?;
                let expires_at_ms = Self::expiry(now, ttl);
                store.insert(key, Entry::new(Value::Bytes(value), expires_at_ms));
                Ok(None)
            }
            CacheWrite::IncrBy { key, delta, ttl } => {
                let (current, expires_at_ms) = match store.live(&key, now) {
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
                self.make_room(store, &key, now)?;
                let value = Value::Bytes(Bytes::from(next.to_string()));
                store.insert(key, Entry::new(value, expires_at_ms));
                Ok(Some(next))
            }
            CacheWrite::Delete { key } => {
                store.entries.remove(&key);
                Ok(None)
            }
            CacheWrite::IndexAdd {
                key,
                member,
                score,
                ttl,
            } => {
                if store.live(&key, now).is_none() {
                    self.make_room(store, &key, now)?;
                    store.insert(key.clone(), Entry::new(Value::Index(HashMap::new()), None));
                }
                let entry = store.entries.get_mut(&key).expect("inserted above");
                let Value::Index(members) = &mut entry.value else {
                    return Err(wrong_type(&key, "a value"));
                };
                members.insert(member, score);
                if ttl.is_some() {
                    entry.expires_at_ms = Self::expiry(now, ttl);
                    Store::queue(&mut store.expiries, &key, entry);
                }
                Ok(None)
            }
            CacheWrite::IndexRemove { key, member } => {
                Self::edit_index(store, &key, now, |members| {
                    members.remove(&member);
                })
            }
            CacheWrite::IndexTrim { key, below } => Self::edit_index(store, &key, now, |members| {
                members.retain(|_, score| *score >= below)
            }),
        }
    }

    /// Changes the live index at `key`, if any; an index left empty is removed, as in Redis.
    fn edit_index(
        store: &mut Store,
        key: &str,
        now: i64,
        edit: impl FnOnce(&mut HashMap<String, i64>),
    ) -> PortResult<Option<i64>> {
        let Some(entry) = store
            .entries
            .get_mut(key)
            .filter(|entry| entry.is_live(now))
        else {
            return Ok(None);
        };
        let Value::Index(members) = &mut entry.value else {
            return Err(wrong_type(key, "a value"));
        };
        edit(members);
        if members.is_empty() {
            store.entries.remove(key);
        }
        Ok(None)
    }
    /// Applies `writes` in order under the caller's lock, rolling back on failure.
    fn apply_locked(&self, store: &mut Store, writes: Vec<CacheWrite>, now: i64) -> PortResult<()> {
        // Remember what the batch touches so a failing write can be rolled back: no reader can
        // observe the batch half-applied because the lock is held throughout.
        // One snapshot per key (not per write): a batch of many index writes to one key must not
        // copy the whole index once per write.
        let mut before: Vec<(String, Option<Entry>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for write in &writes {
            let key = write.key();
            if seen.insert(key) {
                before.push((key.to_owned(), store.entries.get(key).cloned()));
            }
        }
        for write in writes {
            if let Err(err) = self.apply_one(store, write, now) {
                for (key, entry) in before.into_iter().rev() {
                    match entry {
                        // `insert` keeps the queue item the key has now and queues the restored
                        // expiry if it is earlier, so the restored entry still surfaces in time.
                        Some(entry) => store.insert(key, entry),
                        None => {
                            store.entries.remove(&key);
                        }
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
        let store = self.lock();
        store
            .live(key, now)
            .map(|entry| entry.bytes(key).cloned())
            .transpose()
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        let now = self.clock.now_ms();
        let store = self.lock();
        // As Redis `MGET`: a key holding an index reads as missing.
        Ok(keys
            .iter()
            .map(|key| {
                store.live(key, now).and_then(|entry| match &entry.value {
                    Value::Bytes(bytes) => Some(bytes.clone()),
                    Value::Index(_) => None,
                })
            })
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let mut store = self.lock();
        let write = CacheWrite::Set {
            key: key.to_owned(),
            value,
            ttl,
        };
        self.apply_one(&mut store, write, now).map(|_| ())
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        let now = self.clock.now_ms();
        let mut store = self.lock();
        let write = CacheWrite::IncrBy {
            key: key.to_owned(),
            delta,
            ttl,
        };
        let next = self.apply_one(&mut store, write, now)?;
        Ok(next.unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        let now = self.clock.now_ms();
        let mut store = self.lock();
        Ok(store
            .entries
            .remove(key)
            .is_some_and(|entry| entry.is_live(now)))
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        let now = self.clock.now_ms();
        let store = self.lock();
        Ok(store.live(key, now).map(|entry| {
            entry
                .expires_at_ms
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
        }))
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let mut store = self.lock();
        self.apply_locked(&mut store, writes, now)
    }

    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        let now = self.clock.now_ms();
        let mut store = self.lock();
        let mut applied = Vec::with_capacity(items.len());
        for item in items {
            if store.live(&item.guard, now).is_some() {
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
            self.apply_locked(&mut store, all, now)?;
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
        let store = self.lock();
        let Some(entry) = store.live(key, now) else {
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

    /// Stores a value at `key` that lives `secs` seconds.
    async fn set_for_secs(cache: &MemoryCache, key: &str, secs: u64) {
        let value = Bytes::from_static(b"v");
        cache
            .set(key, value, Some(Duration::from_secs(secs)))
            .await
            .unwrap();
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
        set_for_secs(&cache, "long", 100).await;
        set_for_secs(&cache, "short", 1).await;
        set_for_secs(&cache, "new", 50).await;
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("short").await.unwrap(), None);
        assert!(cache.get("long").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_full_cache_purges_expired_entries_before_evicting_live_ones() {
        let (cache, clock) = cache_with_clock(2);
        let value = Bytes::from_static(b"v");
        cache.set("keep", value.clone(), None).await.unwrap();
        set_for_secs(&cache, "old", 1).await;
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

    #[tokio::test]
    async fn a_ttl_moved_later_or_earlier_or_removed_is_the_one_honoured() {
        let (cache, clock) = cache_with_clock(10);
        let value = Bytes::from_static(b"v");
        let ttl = |secs| Some(Duration::from_secs(secs));
        cache.set("later", value.clone(), ttl(1)).await.unwrap();
        cache.set("later", value.clone(), ttl(10)).await.unwrap();
        cache.set("earlier", value.clone(), ttl(10)).await.unwrap();
        cache.set("earlier", value.clone(), ttl(1)).await.unwrap();
        cache.set("kept", value.clone(), ttl(1)).await.unwrap();
        cache.set("kept", value.clone(), None).await.unwrap();
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.purge_expired(), 1, "only `earlier` is due");
        assert_eq!(cache.get("earlier").await.unwrap(), None);
        assert!(cache.get("later").await.unwrap().is_some());
        clock.advance(Duration::from_secs(9));
        assert_eq!(cache.purge_expired(), 1, "`later` at its extended expiry");
        assert_eq!(cache.len(), 1);
        assert!(cache.get("kept").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn eviction_follows_current_expiries_not_the_first_ones() {
        let (cache, _clock) = cache_with_clock(2);
        set_for_secs(&cache, "extended", 1).await;
        set_for_secs(&cache, "soon", 5).await;
        set_for_secs(&cache, "extended", 100).await;
        set_for_secs(&cache, "new", 50).await;
        assert_eq!(cache.get("soon").await.unwrap(), None, "closest to expiry");
        assert!(cache.get("extended").await.unwrap().is_some());
        assert!(cache.get("new").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn purging_many_entries_takes_every_expired_one_and_nothing_else() {
        let (cache, clock) = cache_with_clock(100_000);
        for i in 0..20_000 {
            let ttl = Duration::from_secs(if i % 2 == 0 { 1 } else { 60 });
            cache
                .set(&format!("k{i}"), Bytes::from_static(b"v"), Some(ttl))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.purge_expired(), 10_000);
        assert_eq!(cache.len(), 10_000);
        assert_eq!(cache.purge_expired(), 0);
    }
}
