//! In-process TTL store: the embedded adapter of the [`Cache`] port, standing in for Redis when
//! Pulse runs on one machine. Its rate limiter ([`MemoryRateLimiter`], in [`rate_limit`]) is
//! the embedded adapter of the rate limiter port, and its geo index ([`MemoryGeoIndex`], in
//! [`geo`]: drivers on an H3 grid, nearest first) the embedded adapter of the geo index port.
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
//! `O(k log n)` under a lock, so a cache of a million quote locks neither stalls its callers
//! when it sweeps nor when it is full.
//!
//! Memory follows the entries held, not `max_entries`: keys are hashed into [`SHARDS`] shards,
//! each with its own map, expiry queue and lock, growing on their own. A shard that grows
//! rehashes only its own keys (a thirty-second of the cache), so growing never stalls every
//! caller the way reserving room for `max_entries` up front was meant to avoid — and that
//! reservation is gone: it cost its full size in resident memory as soon as keys were hashed
//! across it. A sweep gives back room that a shard no longer needs.
//!
//! How the shards keep the invariants:
//! * Atomicity: an operation locks every shard its keys hash to, always in ascending shard
//!   order (so two operations never wait on each other in a cycle), and holds them until it is
//!   done; a batch ([`Cache::apply`], one item of [`Cache::apply_if_absent_many`], `MGET`) is thus
//!   never seen half-applied, and a failing batch is rolled back before its locks are released.
//! * The bound: a count of entries across shards is kept beside them. A new key takes a slot
//!   from it (compare-and-swap under `max_entries`), a removal gives its slot back only when the
//!   operation releases its locks, so concurrent writes in different shards never overshoot.
//! * Eviction across shards: a write that finds no free slot gives back what it did, then locks
//!   *all* shards (in the same order) and retries; holding them all, it purges expired entries
//!   from any shard, or evicts the entry closest to expiry over all shards' queues. An item of
//!   `apply_if_absent_many` that needs this is retried alone: the items before it stay applied,
//!   as with Redis, where each item is atomic but a long call runs as several scripts.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::clock::{SharedClock, SystemClock};
use pulse_core::{PortError, PortResult};

pub mod geo;
pub mod rate_limit;

pub use geo::MemoryGeoIndex;
pub use rate_limit::MemoryRateLimiter;

const BACKEND: &str = "memory-cache";

/// Entries evicted to make room (the cache was full of live entries).
pub const EVICTIONS_TOTAL: &str = "pulse_memory_cache_evictions_total";
/// Entries held, including expired ones not yet swept.
pub const ENTRIES: &str = "pulse_memory_cache_entries";

/// Default bound on live entries.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// Shards of the key space, each with its own lock, map and expiry queue. More shards make a
/// shard's rehash shorter and contention rarer, but a write into a full cache locks them all.
pub const SHARDS: usize = 32;

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

/// Entries purged per hold of a shard's lock by [`MemoryCache::purge_expired`].
const PURGE_BATCH: usize = 1_024;
/// Expired entries purged to make room for one new key before a live one is evicted.
const PURGE_ON_WRITE: usize = 64;
/// Room (entries) below which a shard is never shrunk: shrinking a small map saves little.
const SHRINK_FLOOR: usize = 1_024;

/// One shard's entries and their expiry queue.
#[derive(Debug, Default)]
struct Store {
    entries: HashMap<String, Entry>,
    /// Min-queue of `(expiry, key)`. An item whose key is gone, or whose time is not the key's
    /// `queued_at_ms`, is stale and skipped when it surfaces; a key has at most one live item.
    expiries: BinaryHeap<Reverse<(i64, String)>>,
}

impl Store {
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

    /// The expiry of the entry closest to expiry, if any has a TTL. Drops stale items from the
    /// top of the queue and re-queues entries whose expiry moved later, so the top is live.
    fn peek_expiring(&mut self) -> Option<i64> {
        loop {
            let Reverse((at, key)) = self.expiries.peek()?;
            let at = *at;
            let expiry = self
                .entries
                .get(key)
                .filter(|entry| entry.queued_at_ms == Some(at))
                .map(|entry| entry.expires_at_ms);
            match expiry {
                Some(Some(expiry)) if expiry == at => return Some(at),
                None => {
                    self.expiries.pop();
                }
                Some(_) => {
                    let Reverse((_, key)) = self.expiries.pop().expect("peeked above");
                    let entry = self.entries.get_mut(&key).expect("found above");
                    entry.queued_at_ms = None;
                    Self::queue(&mut self.expiries, &key, entry);
                }
            }
        }
    }

    /// Pops the live queue item closest to expiry; with `due_by`, only one due by that time.
    fn next_expiring(&mut self, due_by: Option<i64>) -> Option<(i64, String)> {
        let at = self.peek_expiring()?;
        if due_by.is_some_and(|due_by| at > due_by) {
            return None;
        }
        let Reverse((at, key)) = self.expiries.pop().expect("peeked above");
        self.entries
            .get_mut(&key)
            .expect("a live item's key is held")
            .queued_at_ms = None;
        Some((at, key))
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

    /// Gives back room that a sweep left unused: a map or queue using under a quarter of its
    /// room is shrunk to twice what it holds, so it can grow again without shrinking back at once.
    fn shrink_if_sparse(&mut self) {
        let held = self.entries.len();
        if self.entries.capacity() > SHRINK_FLOOR.max(4 * held) {
            self.entries.shrink_to(2 * held);
        }
        let queued = self.expiries.len();
        if self.expiries.capacity() > SHRINK_FLOOR.max(4 * queued) {
            self.expiries.shrink_to(2 * queued);
        }
    }
}

/// The shards and what they share.
#[derive(Debug)]
struct Shards {
    stores: Vec<Mutex<Store>>,
    /// Entries held over all shards, plus slots taken by operations still holding their locks.
    /// Changed only while holding the lock of a shard whose entries change.
    slots: AtomicUsize,
    hasher: RandomState,
}

impl Shards {
    fn new() -> Self {
        Self {
            stores: (0..SHARDS).map(|_| Mutex::default()).collect(),
            slots: AtomicUsize::new(0),
            hasher: RandomState::new(),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        // The modulo of a 64-bit hash fits `usize` for any shard count.
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Store> {
        // A panic while holding a lock cannot leave an entry half-written (every mutation is a
        // single map operation, and the slot count is settled when the guards drop during the
        // unwind), so a poisoned lock is still safe to use.
        self.stores[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the shards of `keys`, in ascending order.
    fn lock_keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Held<'_> {
        let mut wanted = [false; SHARDS];
        for key in keys {
            wanted[self.shard_of(key)] = true;
        }
        Held::lock(self, wanted)
    }

    fn lock_all(&self) -> Held<'_> {
        Held::lock(self, [true; SHARDS])
    }
}

/// Shards locked by one operation. Dropping it settles the slot count, then unlocks.
struct Held<'a> {
    shards: &'a Shards,
    guards: [Option<MutexGuard<'a, Store>>; SHARDS],
    /// Each locked shard's number of entries when it was locked.
    locked_len: [usize; SHARDS],
    /// Slots this operation took from [`Shards::slots`].
    taken: usize,
    all: bool,
}

impl<'a> Held<'a> {
    fn lock(shards: &'a Shards, wanted: [bool; SHARDS]) -> Self {
        let mut held = Self {
            shards,
            guards: std::array::from_fn(|_| None),
            locked_len: [0; SHARDS],
            taken: 0,
            all: false,
        };
        held.acquire(wanted);
        held
    }

    /// Locks `wanted`; nothing may be held.
    fn acquire(&mut self, wanted: [bool; SHARDS]) {
        for (shard, _) in wanted.iter().enumerate().filter(|(_, wanted)| **wanted) {
            let store = self.shards.lock(shard);
            self.locked_len[shard] = store.entries.len();
            self.guards[shard] = Some(store);
        }
        self.all = wanted.iter().all(|wanted| *wanted);
    }

    /// Entries added to the locked shards since they were locked, less those removed.
    fn added(&self) -> isize {
        self.guards
            .iter()
            .zip(self.locked_len)
            .filter_map(|(guard, before)| {
                let now = guard.as_ref()?.entries.len();
                Some(now as isize - before as isize)
            })
            .sum()
    }

    /// Takes a slot for one new key: one this operation freed or took and has not used, else a
    /// free one from the shared count. False when the cache is full.
    fn take_slot(&mut self, max_entries: usize) -> bool {
        if self.taken as isize > self.added() {
            return true;
        }
        let taken = self
            .shards
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |slots| {
                (slots < max_entries).then_some(slots + 1)
            })
            .is_ok();
        if taken {
            self.taken += 1;
        }
        taken
    }

    /// Gives back the slots this operation took but did not use (or freed), then unlocks.
    fn release(&mut self) {
        let unused = self.taken as isize - self.added();
        if unused > 0 {
            self.shards
                .slots
                .fetch_sub(unused.unsigned_abs(), Ordering::AcqRel);
        } else {
            self.shards
                .slots
                .fetch_add(unused.unsigned_abs(), Ordering::AcqRel);
        }
        self.taken = 0;
        self.guards = std::array::from_fn(|_| None);
        self.all = false;
    }

    /// Trades the shards held for all of them (the operation starts over: nothing it did may be
    /// left applied).
    fn lock_all_instead(&mut self) {
        self.release();
        self.acquire([true; SHARDS]);
    }

    /// The shard of `key`, which the operation locked.
    fn store(&mut self, key: &str) -> &mut Store {
        self.at(self.shards.shard_of(key))
    }

    /// Shard `shard`, which the operation locked.
    fn at(&mut self, shard: usize) -> &mut Store {
        self.guards[shard]
            .as_deref_mut()
            .expect("an operation locks the shard of every key it touches")
    }

    fn stores(&mut self) -> impl Iterator<Item = &mut Store> + use<'_, 'a> {
        self.guards
            .iter_mut()
            .filter_map(|guard| guard.as_deref_mut())
    }

    /// Drops up to `max` expired entries from the locked shards.
    fn purge_expired(&mut self, now: i64, max: usize) -> usize {
        let mut purged = 0;
        for store in self.stores() {
            if purged == max {
                break;
            }
            purged += store.purge_expired(now, max - purged);
        }
        purged
    }

    /// Drops the entry closest to expiry over the locked shards; false when none has a TTL.
    fn evict_closest_to_expiry(&mut self) -> bool {
        let closest = self
            .guards
            .iter_mut()
            .enumerate()
            .filter_map(|(shard, guard)| Some((guard.as_deref_mut()?.peek_expiring()?, shard)))
            .min();
        let Some((_, shard)) = closest else {
            return false;
        };
        let store = self.guards[shard].as_deref_mut().expect("locked above");
        let (_, key) = store.next_expiring(None).expect("peeked above");
        store.entries.remove(&key);
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why a write stopped.
enum Stop {
    Failed(PortError),
    /// The cache is full and making room needs every shard: undo, lock them all, retry.
    NeedsAllShards,
}

impl From<PortError> for Stop {
    fn from(err: PortError) -> Self {
        Stop::Failed(err)
    }
}

/// The in-process cache. Cheap to clone; clones share the same entries.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    shards: Arc<Shards>,
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
            shards: Arc::new(Shards::new()),
            clock,
            max_entries: max_entries.max(1),
        }
    }

    /// Number of entries held, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.shards.slots.load(Ordering::Acquire)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry; returns how many were dropped. A shard's lock is released
    /// every 1,024 entries, so callers never wait behind a long sweep; a shard left sparse gives
    /// back its unused room.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut purged = 0;
        for shard in 0..SHARDS {
            loop {
                let mut wanted = [false; SHARDS];
                wanted[shard] = true;
                let mut held = Held::lock(&self.shards, wanted);
                let batch = held.purge_expired(now, PURGE_BATCH);
                purged += batch;
                if batch < PURGE_BATCH {
                    for store in held.stores() {
                        store.shrink_if_sparse();
                    }
                    break;
                }
            }
        }
        purged
    }

    /// Locks the shards of `keys` — all of them when the cache looks full, as a new key will
    /// then need room made across shards.
    fn lock_for_writes<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Held<'_> {
        if self.len() >= self.max_entries {
            self.shards.lock_all()
        } else {
            self.shards.lock_keys(keys)
        }
    }

    /// Runs `write` under `held`, retrying with every shard locked when it needs them.
    fn run<T>(
        held: &mut Held<'_>,
        mut write: impl FnMut(&mut Held<'_>) -> Result<T, Stop>,
    ) -> PortResult<T> {
        match write(held) {
            Ok(done) => Ok(done),
            Err(Stop::Failed(err)) => Err(err),
            Err(Stop::NeedsAllShards) => {
                held.lock_all_instead();
                match write(held) {
                    Ok(done) => Ok(done),
                    Err(Stop::Failed(err)) => Err(err),
                    Err(Stop::NeedsAllShards) => unreachable!("every shard is locked"),
                }
            }
        }
    }

    fn expiry(now_ms: i64, ttl: Option<Duration>) -> Option<i64> {
        ttl.map(|ttl| now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Makes room for one more key, as described in the crate docs.
    fn make_room(
        &self,
        held: &mut Held<'_>,
        shard: usize,
        key: &str,
        now: i64,
    ) -> Result<(), Stop> {
        if held.at(shard).entries.contains_key(key) || held.take_slot(self.max_entries) {
            return Ok(());
        }
        if !held.all {
            return Err(Stop::NeedsAllShards);
        }
        if held.purge_expired(now, PURGE_ON_WRITE) == 0 {
            if !held.evict_closest_to_expiry() {
                return Err(Stop::Failed(PortError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "cache is full ({} entries without TTL); raise the limit",
                        self.max_entries
                    ),
                }));
            }
            metrics::counter!(EVICTIONS_TOTAL).increment(1);
        }
        let taken = held.take_slot(self.max_entries);
        debug_assert!(taken, "a purged or evicted entry frees a slot");
        Ok(())
    }

    fn apply_one(
        &self,
        held: &mut Held<'_>,
        write: &CacheWrite,
        now: i64,
    ) -> Result<Option<i64>, Stop> {
        let shard = self.shards.shard_of(write.key());
        match write {
            CacheWrite::Set { key, value, ttl } => {
                self.make_room(held, shard, key, now)?;
                let expires_at_ms = Self::expiry(now, *ttl);
                let entry = Entry::new(Value::Bytes(value.clone()), expires_at_ms);
                held.at(shard).insert(key.clone(), entry);
                Ok(None)
            }
            CacheWrite::IncrBy { key, delta, ttl } => {
                let (current, expires_at_ms) = match held.at(shard).live(key, now) {
                    Some(entry) => (parse_integer(key, entry.bytes(key)?)?, entry.expires_at_ms),
                    None => (0, None),
                };
                let next = current.checked_add(*delta).ok_or_else(|| {
                    PortError::Invalid(format!("increment of {key} overflows a 64-bit integer"))
                })?;
                let expires_at_ms = match ttl {
                    Some(ttl) => Self::expiry(now, Some(*ttl)),
                    None => expires_at_ms,
                };
                self.make_room(held, shard, key, now)?;
                let value = Value::Bytes(Bytes::from(next.to_string()));
                held.at(shard)
                    .insert(key.clone(), Entry::new(value, expires_at_ms));
                Ok(Some(next))
            }
            CacheWrite::Delete { key } => {
                held.at(shard).entries.remove(key);
                Ok(None)
            }
            CacheWrite::IndexAdd {
                key,
                member,
                score,
                ttl,
            } => {
                if held.at(shard).live(key, now).is_none() {
                    self.make_room(held, shard, key, now)?;
                    let empty = Entry::new(Value::Index(HashMap::new()), None);
                    held.at(shard).insert(key.clone(), empty);
                }
                let store = held.at(shard);
                let entry = store.entries.get_mut(key).expect("inserted above");
                let Value::Index(members) = &mut entry.value else {
                    return Err(wrong_type(key, "a value").into());
                };
                members.insert(member.clone(), *score);
                if ttl.is_some() {
                    entry.expires_at_ms = Self::expiry(now, *ttl);
                    Store::queue(&mut store.expiries, key, entry);
                }
                Ok(None)
            }
            CacheWrite::IndexRemove { key, member } => {
                Self::edit_index(held.at(shard), key, now, |members| {
                    members.remove(member);
                })
            }
            CacheWrite::IndexTrim { key, below } => {
                Self::edit_index(held.at(shard), key, now, |members| {
                    members.retain(|_, score| *score >= *below)
                })
            }
        }
    }

    /// Changes the live index at `key`, if any; an index left empty is removed, as in Redis.
    fn edit_index(
        store: &mut Store,
        key: &str,
        now: i64,
        edit: impl FnOnce(&mut HashMap<String, i64>),
    ) -> Result<Option<i64>, Stop> {
        let Some(entry) = store
            .entries
            .get_mut(key)
            .filter(|entry| entry.is_live(now))
        else {
            return Ok(None);
        };
        let Value::Index(members) = &mut entry.value else {
            return Err(wrong_type(key, "a value").into());
        };
        edit(members);
        if members.is_empty() {
            store.entries.remove(key);
        }
        Ok(None)
    }

    /// Applies `writes` in order under `held`, rolling back on failure.
    fn apply_locked(
        &self,
        held: &mut Held<'_>,
        writes: &[CacheWrite],
        now: i64,
    ) -> Result<(), Stop> {
        // Remember what the batch touches so a failing write can be rolled back: no reader can
        // observe the batch half-applied because its shards stay locked throughout.
        // One snapshot per key (not per write): a batch of many index writes to one key must not
        // copy the whole index once per write.
        let mut before: Vec<(&str, Option<Entry>)> = Vec::new();
        let mut seen = HashSet::new();
        for write in writes {
            let key = write.key();
            if seen.insert(key) {
                before.push((key, held.store(key).entries.get(key).cloned()));
            }
        }
        for write in writes {
            if let Err(stop) = self.apply_one(held, write, now) {
                // Keys the batch added go first: the slots they took then cover the keys it
                // removed, which come back.
                let (restored, added): (Vec<_>, Vec<_>) =
                    before.into_iter().partition(|(_, entry)| entry.is_some());
                for (key, _) in added {
                    held.store(key).entries.remove(key);
                }
                for (key, entry) in restored.into_iter().rev() {
                    // `insert` keeps the queue item the key has now and queues the restored
                    // expiry if it is earlier, so the restored entry still surfaces in time.
                    let entry = entry.expect("partitioned on it");
                    held.store(key).insert(key.to_owned(), entry);
                }
                return Err(stop);
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
        let store = self.shards.lock(self.shards.shard_of(key));
        store
            .live(key, now)
            .map(|entry| entry.bytes(key).cloned())
            .transpose()
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        let now = self.clock.now_ms();
        // Every shard read stays locked until all are read, so the values are of one moment.
        let mut held = self.shards.lock_keys(keys.iter().map(String::as_str));
        // As Redis `MGET`: a key holding an index reads as missing.
        Ok(keys
            .iter()
            .map(|key| {
                held.store(key)
                    .live(key, now)
                    .and_then(|entry| match &entry.value {
                        Value::Bytes(bytes) => Some(bytes.clone()),
                        Value::Index(_) => None,
                    })
            })
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let write = CacheWrite::Set {
            key: key.to_owned(),
            value,
            ttl,
        };
        let mut held = self.lock_for_writes([key]);
        Self::run(&mut held, |held| self.apply_one(held, &write, now)).map(|_| ())
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        let now = self.clock.now_ms();
        let write = CacheWrite::IncrBy {
            key: key.to_owned(),
            delta,
            ttl,
        };
        let mut held = self.lock_for_writes([key]);
        let next = Self::run(&mut held, |held| self.apply_one(held, &write, now))?;
        Ok(next.unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        let now = self.clock.now_ms();
        let mut held = self.shards.lock_keys([key]);
        Ok(held
            .store(key)
            .entries
            .remove(key)
            .is_some_and(|entry| entry.is_live(now)))
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        let now = self.clock.now_ms();
        let store = self.shards.lock(self.shards.shard_of(key));
        Ok(store.live(key, now).map(|entry| {
            entry
                .expires_at_ms
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
        }))
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        let now = self.clock.now_ms();
        let mut held = self.lock_for_writes(writes.iter().map(CacheWrite::key));
        Self::run(&mut held, |held| self.apply_locked(held, &writes, now))
    }

    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        let now = self.clock.now_ms();
        let keys = items.iter().flat_map(|item| {
            std::iter::once(item.guard.as_str()).chain(item.writes.iter().map(CacheWrite::key))
        });
        let mut held = self.lock_for_writes(keys);
        let mut applied = Vec::with_capacity(items.len());
        for item in items {
            let guard = CacheWrite::Set {
                key: item.guard,
                value: Bytes::from_static(b"1"),
                ttl: Some(item.guard_ttl),
            };
            let mut all = Vec::with_capacity(item.writes.len() + 1);
            all.push(guard);
            all.extend(item.writes);
            // An item that needs every shard is rolled back and retried with all of them locked,
            // so its guard is checked again: another writer may have set it in between.
            let done = Self::run(&mut held, |held| {
                let guard = all[0].key();
                if held.store(guard).live(guard, now).is_some() {
                    return Ok(false);
                }
                self.apply_locked(held, &all, now).map(|()| true)
            })?;
            applied.push(done);
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
        let store = self.shards.lock(self.shards.shard_of(key));
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

    /// Room reserved over all shards' maps and queues, in entries.
    fn reserved_room(cache: &MemoryCache) -> usize {
        let mut held = cache.shards.lock_all();
        held.stores()
            .map(|store| store.entries.capacity() + store.expiries.capacity())
            .sum()
    }

    /// Entries actually held over all shards (`len` reads the shared count).
    fn counted_entries(cache: &MemoryCache) -> usize {
        let mut held = cache.shards.lock_all();
        held.stores().map(|store| store.entries.len()).sum()
    }

    /// A key named `prefix…` whose shard is not one of `taken`.
    fn key_outside(cache: &MemoryCache, prefix: &str, taken: &[&str]) -> String {
        let shards: Vec<usize> = taken.iter().map(|key| cache.shards.shard_of(key)).collect();
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|key| !shards.contains(&cache.shards.shard_of(key)))
            .expect("some key hashes to another shard")
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
    #[tokio::test]
    async fn room_follows_the_entries_held_not_the_limit() {
        let (cache, clock) = cache_with_clock(DEFAULT_MAX_ENTRIES);
        assert_eq!(reserved_room(&cache), 0, "an empty cache reserves nothing");
        for i in 0..10_000 {
            set_for_secs(&cache, &format!("quote:{i}"), 1).await;
        }
        let room = reserved_room(&cache);
        assert!(
            room < 10 * 10_000,
            "room for {room} entries after 10,000 writes (limit {DEFAULT_MAX_ENTRIES})"
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.purge_expired(), 10_000);
        let room = reserved_room(&cache);
        assert!(
            room <= 2 * SHARDS * SHRINK_FLOOR,
            "a sweep gives back the room: {room} entries still reserved"
        );
    }

    #[tokio::test]
    async fn eviction_picks_the_entry_closest_to_expiry_over_all_shards() {
        let (cache, _clock) = cache_with_clock(3);
        let long = "long".to_owned();
        let soon = key_outside(&cache, "soon", &[&long]);
        let middle = key_outside(&cache, "middle", &[&long, &soon]);
        let new = key_outside(&cache, "new", &[&long, &soon, &middle]);
        set_for_secs(&cache, &long, 100).await;
        set_for_secs(&cache, &soon, 1).await;
        set_for_secs(&cache, &middle, 50).await;
        set_for_secs(&cache, &new, 70).await;
        assert_eq!(cache.get(&soon).await.unwrap(), None, "closest to expiry");
        for kept in [&long, &middle, &new] {
            assert!(cache.get(kept).await.unwrap().is_some(), "{kept} evicted");
        }
        assert_eq!((cache.len(), counted_entries(&cache)), (3, 3));
    }

    #[tokio::test]
    async fn a_batch_across_shards_that_fails_changes_none_of_them() {
        let (cache, _clock) = cache_with_clock(10);
        let text = "text".to_owned();
        let other = key_outside(&cache, "other", &[&text]);
        cache
            .set(&text, Bytes::from_static(b"abc"), None)
            .await
            .unwrap();
        cache
            .set(&other, Bytes::from_static(b"before"), None)
            .await
            .unwrap();
        let err = cache
            .apply(vec![
                CacheWrite::Set {
                    key: other.clone(),
                    value: Bytes::from_static(b"after"),
                    ttl: None,
                },
                CacheWrite::Delete { key: text.clone() },
                CacheWrite::Set {
                    key: text.clone(),
                    value: Bytes::from_static(b"abc"),
                    ttl: None,
                },
                CacheWrite::IncrBy {
                    key: text.clone(),
                    delta: 1,
                    ttl: None,
                },
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::Corrupt(_)), "{err}");
        let before = Some(Bytes::from_static(b"before"));
        assert_eq!(cache.get(&other).await.unwrap(), before);
        assert_eq!(
            cache.get(&text).await.unwrap(),
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!((cache.len(), counted_entries(&cache)), (2, 2));
    }

    #[tokio::test]
    async fn a_batch_that_fills_the_cache_midway_evicts_across_shards_or_changes_nothing() {
        let (cache, _clock) = cache_with_clock(4);
        cache
            .set("text", Bytes::from_static(b"abc"), None)
            .await
            .unwrap();
        set_for_secs(&cache, "soon", 1).await;
        set_for_secs(&cache, "late", 100).await;
        // One slot is free: the second new key needs room made, with every shard locked.
        let set = |key: &str| CacheWrite::Set {
            key: key.to_owned(),
            value: Bytes::from_static(b"v"),
            ttl: Some(Duration::from_secs(50)),
        };
        let bad_increment = CacheWrite::IncrBy {
            key: "text".into(),
            delta: 1,
            ttl: None,
        };
        let err = cache
            .apply(vec![set("x"), set("y"), bad_increment])
            .await
            .unwrap_err();
        assert!(matches!(err, PortError::Corrupt(_)), "{err}");
        assert_eq!(cache.get("x").await.unwrap(), None);
        assert_eq!(cache.get("y").await.unwrap(), None);
        // As with one lock: the entry evicted to make room stays evicted.
        assert_eq!((cache.len(), counted_entries(&cache)), (2, 2));

        cache.apply(vec![set("x"), set("y")]).await.unwrap();
        cache.apply(vec![set("z")]).await.unwrap();
        assert!(cache.get("late").await.unwrap().is_some());
        assert!(cache.get("text").await.unwrap().is_some());
        assert_eq!((cache.len(), counted_entries(&cache)), (4, 4));
    }

    #[tokio::test]
    async fn guarded_items_that_need_room_are_each_applied_once() {
        let (cache, _clock) = cache_with_clock(5);
        set_for_secs(&cache, "soon", 1).await;
        set_for_secs(&cache, "late", 1_000).await;
        let item = |guard: &str, key: &str| Guarded {
            guard: guard.to_owned(),
            guard_ttl: Duration::from_secs(500),
            writes: vec![CacheWrite::Set {
                key: key.to_owned(),
                value: Bytes::from_static(b"v"),
                ttl: Some(Duration::from_secs(600)),
            }],
        };
        // The third item finds the cache full: it is retried with every shard locked.
        let applied = cache
            .apply_if_absent_many(vec![item("g1", "a"), item("g1", "b"), item("g2", "c")])
            .await
            .unwrap();
        assert_eq!(applied, vec![true, false, true]);
        assert_eq!(cache.get("b").await.unwrap(), None);
        assert_eq!(cache.get("soon").await.unwrap(), None, "evicted");
        for kept in ["late", "g1", "a", "g2", "c"] {
            assert!(cache.get(kept).await.unwrap().is_some(), "{kept} missing");
        }
        assert_eq!((cache.len(), counted_entries(&cache)), (5, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_in_different_shards_never_overfill_the_cache() {
        let (cache, _clock) = cache_with_clock(100);
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        let ttl = Some(Duration::from_secs(1 + (i * 7 + writer) % 100));
                        let key = format!("w{writer}:{i}");
                        cache
                            .set(&key, Bytes::from_static(b"v"), ttl)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let watcher = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..2_000 {
                    most = most.max(counted_entries(&cache));
                    tokio::task::yield_now().await;
                }
                most
            })
        };
        for writer in writers {
            writer.await.unwrap();
        }
        let most = watcher.await.unwrap();
        assert!(most <= 100, "{most} entries held at once");
        assert_eq!((cache.len(), counted_entries(&cache)), (100, 100));
    }
}
