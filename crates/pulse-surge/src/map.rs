//! The live surge map's read side: snapshots of the published cells and available drivers, read
//! from the cache, and a feed that turns them into updates for any number of subscribers.
//!
//! The engine lists what it publishes in two scored indexes ([`Keys::surge_cells`],
//! [`Keys::available_drivers`]), so a snapshot is three reads whatever the keyspace holds: the
//! indexes, then the values they point at. One [`SurgeFeed`] per process reads a snapshot per
//! interval, only while someone listens; subscribers diff consecutive snapshots themselves
//! ([`SurgeSnapshot::changes_since`]), so a browser gets a full picture once and then only what
//! changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h3o::{CellIndex, LatLng};
use pulse_core::cache::Cache;
use pulse_core::clock::SharedClock;
use pulse_core::time::millis;
use pulse_core::{PortResult, TenantId};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::DriverState;
use crate::keys::Keys;
use crate::SurgeValue;
use pulse_geo::parse_cell;

/// Subscribers to the surge feed (open map streams).
pub const FEED_SUBSCRIBERS: &str = "pulse_surge_feed_subscribers";

/// Limits of one snapshot.
#[derive(Debug, Clone)]
pub struct MapSettings {
    /// Most cells in a snapshot (the latest-expiring ones win).
    pub max_cells: usize,
    /// Most drivers in a snapshot (the most recent pings win).
    pub max_drivers: usize,
    /// Drivers count while their latest ping is this recent (the engine's window).
    pub window: Duration,
    /// Cache key layout (the engine's).
    pub keys: Keys,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self {
            max_cells: 20_000,
            max_drivers: 5_000,
            window: Duration::from_secs(300),
            keys: Keys::default(),
        }
    }
}

/// One cell with a live surge value, with its geometry for drawing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellView {
    /// The H3 cell.
    pub h3: String,
    /// Published multiplier.
    pub multiplier: f64,
    /// Orders in the window.
    pub demand: u64,
    /// Available drivers in the window.
    pub supply: u64,
    /// When the value was computed, Unix seconds.
    pub updated_at: i64,
    /// Centre, `[lat, lng]` degrees.
    pub center: [f64; 2],
    /// Corners, `[lat, lng]` degrees.
    pub boundary: Vec<[f64; 2]>,
}

/// An available driver's latest position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriverDot {
    /// Driver id.
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lng: f64,
}

/// A driver on a ride: its latest position and the ride's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RidingDot {
    /// Driver id.
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lng: f64,
    /// The ride's order (its trail is at `GET /api/v1/orders/{order_id}/trail`).
    pub order_id: String,
}

/// Sums over a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Cells with a live value.
    pub cells: usize,
    /// Cells whose multiplier is above 1.
    pub surging_cells: usize,
    /// Orders in the window over all cells.
    pub demand: u64,
    /// Available drivers in the window over all cells.
    pub supply: u64,
    /// Available drivers listed.
    pub drivers: usize,
    /// Drivers on a ride listed.
    #[serde(default)]
    pub riding: usize,
    /// Highest multiplier (1 without cells).
    pub max_multiplier: f64,
}

/// Everything the map draws, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SurgeSnapshot {
    /// When it was read, Unix seconds.
    pub generated_at: i64,
    /// Live cells, ordered by H3 index.
    pub cells: Vec<CellView>,
    /// Available drivers, ordered by id.
    pub drivers: Vec<DriverDot>,
    /// Drivers on a ride (never counted as supply), ordered by id.
    pub riding: Vec<RidingDot>,
    /// Whether cells were left out (more than [`MapSettings::max_cells`]).
    pub cells_truncated: bool,
    /// Whether drivers were left out (more than [`MapSettings::max_drivers`]).
    pub drivers_truncated: bool,
    /// Sums.
    pub totals: Totals,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SurgeUpdate {
    /// When the newer snapshot was read, Unix seconds.
    pub generated_at: i64,
    /// Cells that are new or whose value changed.
    pub cells: Vec<CellView>,
    /// Cells no longer live.
    pub removed: Vec<String>,
    /// Every available driver (drivers move all the time; a diff would rarely be smaller).
    pub drivers: Vec<DriverDot>,
    /// Every driver on a ride.
    pub riding: Vec<RidingDot>,
    /// As in the snapshot.
    pub drivers_truncated: bool,
    /// Sums.
    pub totals: Totals,
}

impl SurgeSnapshot {
    /// The changes from `previous` to `self`, or `None` when nothing but the time differs.
    pub fn changes_since(&self, previous: &SurgeSnapshot) -> Option<SurgeUpdate> {
        let before: HashMap<&str, &CellView> = previous
            .cells
            .iter()
            .map(|cell| (cell.h3.as_str(), cell))
            .collect();
        let cells: Vec<CellView> = self
            .cells
            .iter()
            .filter(|cell| before.get(cell.h3.as_str()) != Some(cell))
            .cloned()
            .collect();
        let now: HashMap<&str, ()> = self.cells.iter().map(|c| (c.h3.as_str(), ())).collect();
        let removed: Vec<String> = previous
            .cells
            .iter()
            .filter(|cell| !now.contains_key(cell.h3.as_str()))
            .map(|cell| cell.h3.clone())
            .collect();
        if cells.is_empty()
            && removed.is_empty()
            && self.drivers == previous.drivers
            && self.riding == previous.riding
        {
            return None;
        }
        Some(SurgeUpdate {
            generated_at: self.generated_at,
            cells,
            removed,
            drivers: self.drivers.clone(),
            riding: self.riding.clone(),
            drivers_truncated: self.drivers_truncated,
            totals: self.totals.clone(),
        })
    }
}

/// Reads map snapshots from the cache.
#[derive(Debug, Clone)]
pub struct SurgeMap {
    cache: Arc<dyn Cache>,
    clock: SharedClock,
    settings: MapSettings,
}

fn degrees(point: LatLng) -> [f64; 2] {
    [point.lat(), point.lng()]
}

fn cell_view(cell: CellIndex, value: SurgeValue) -> CellView {
    CellView {
        h3: cell.to_string(),
        multiplier: value.multiplier,
        demand: value.demand,
        supply: value.supply,
        updated_at: value.updated_at,
        center: degrees(LatLng::from(cell)),
        boundary: cell.boundary().iter().copied().map(degrees).collect(),
    }
}

impl SurgeMap {
    /// A reader of `cache` with `settings`.
    pub fn new(cache: Arc<dyn Cache>, clock: SharedClock, settings: MapSettings) -> Self {
        Self {
            cache,
            clock,
            settings,
        }
    }

    /// The same map, of `tenant`'s cells and drivers (see [`crate::keys::Keys::for_tenant`]).
    pub fn for_tenant(&self, tenant: &TenantId) -> Self {
        let mut map = self.clone();
        map.settings.keys = self.settings.keys.for_tenant(tenant);
        map
    }

    /// The cells and drivers live now.
    pub async fn snapshot(&self) -> PortResult<SurgeSnapshot> {
        let now_ms = self.clock.now_ms();
        let (cells, cells_truncated) = self.cells(now_ms).await?;
        let (drivers, drivers_truncated) = self.drivers(now_ms).await?;
        let (riding, riding_truncated) = self.riding(now_ms).await?;
        let totals = Totals {
            cells: cells.len(),
            surging_cells: cells.iter().filter(|cell| cell.multiplier > 1.0).count(),
            demand: cells.iter().map(|cell| cell.demand).sum(),
            supply: cells.iter().map(|cell| cell.supply).sum(),
            drivers: drivers.len(),
            riding: riding.len(),
            max_multiplier: cells.iter().map(|cell| cell.multiplier).fold(1.0, f64::max),
        };
        Ok(SurgeSnapshot {
            generated_at: now_ms.div_euclid(1_000),
            cells,
            drivers,
            riding,
            cells_truncated,
            drivers_truncated: drivers_truncated || riding_truncated,
            totals,
        })
    }

    /// Members of `index` scored at least `min_score` with their values at `key_of(member)`;
    /// one more member than `limit` is asked for, to tell whether some were left out.
    async fn listed(
        &self,
        index: &str,
        min_score: i64,
        limit: usize,
        key_of: impl Fn(&str) -> String,
    ) -> PortResult<(Vec<(String, Bytes)>, bool)> {
        let mut members = self
            .cache
            .index_range(index, min_score, limit.saturating_add(1))
            .await?;
        let truncated = members.len() > limit;
        members.truncate(limit);
        let keys: Vec<String> = members.iter().map(|(member, _)| key_of(member)).collect();
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(4_096) {
            values.extend(self.cache.get_many(chunk).await?);
        }
        // A member whose value expired since it was listed is simply not live any more.
        let found = members
            .into_iter()
            .zip(values)
            .filter_map(|((member, _), value)| Some((member, value?)))
            .collect();
        Ok((found, truncated))
    }

    async fn cells(&self, now_ms: i64) -> PortResult<(Vec<CellView>, bool)> {
        let (listed, truncated) = self
            .listed(
                &self.settings.keys.surge_cells(),
                now_ms,
                self.settings.max_cells,
                |h3: &str| self.settings.keys.surge(h3),
            )
            .await?;
        let mut cells: Vec<CellView> = listed
            .into_iter()
            .filter_map(|(h3, raw)| {
                let cell = parse_cell(&h3).ok()?;
                let value: SurgeValue = serde_json::from_slice(&raw).ok()?;
                Some(cell_view(cell, value))
            })
            .collect();
        cells.sort_unstable_by(|a, b| a.h3.cmp(&b.h3));
        Ok((cells, truncated))
    }

    async fn drivers(&self, now_ms: i64) -> PortResult<(Vec<DriverDot>, bool)> {
        let index = self.settings.keys.available_drivers();
        self.dots(&index, now_ms, |id, state| {
            state.counts().then_some(DriverDot {
                id,
                lat: state.lat,
                lng: state.lng,
            })
        })
        .await
    }

    async fn riding(&self, now_ms: i64) -> PortResult<(Vec<RidingDot>, bool)> {
        let index = self.settings.keys.drivers_on_ride();
        self.dots(&index, now_ms, |id, state| {
            let order_id = state.ride_order.clone().filter(|_| state.on_ride)?;
            Some(RidingDot {
                id,
                lat: state.lat,
                lng: state.lng,
                order_id,
            })
        })
        .await
    }

    /// The drivers of `index` seen in the window, placed, as `dot` draws them (`None`: left
    /// out), ordered by id.
    async fn dots<D>(
        &self,
        index: &str,
        now_ms: i64,
        dot: impl Fn(String, &DriverState) -> Option<D>,
    ) -> PortResult<(Vec<D>, bool)> {
        let window_start = now_ms - millis(self.settings.window);
        let (listed, truncated) = self
            .listed(
                index,
                window_start,
                self.settings.max_drivers,
                |id: &str| self.settings.keys.driver(id),
            )
            .await?;
        let mut listed = listed;
        listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let drivers = listed
            .into_iter()
            .filter_map(|(id, raw)| {
                let state: DriverState = serde_json::from_slice(&raw).ok()?;
                let placed = state.lat != 0.0 || state.lng != 0.0;
                placed.then(|| dot(id, &state)).flatten()
            })
            .collect();
        Ok((drivers, truncated))
    }
}

/// The process-wide source of map updates: reads a snapshot every `interval` while anyone
/// subscribes and hands it to every subscriber. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SurgeFeed {
    map: SurgeMap,
    interval: Duration,
    latest: Arc<watch::Sender<Option<Arc<SurgeSnapshot>>>>,
    shutdown: CancellationToken,
}

impl SurgeFeed {
    /// A feed of `map` read every `interval`; streams end when `shutdown` is cancelled.
    pub fn new(map: SurgeMap, interval: Duration, shutdown: CancellationToken) -> Self {
        Self {
            map,
            interval,
            latest: Arc::new(watch::channel(None).0),
            shutdown,
        }
    }

    /// The map the feed reads.
    pub fn map(&self) -> &SurgeMap {
        &self.map
    }

    /// Cancelled when the process stops: long-lived streams end then.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Receives every snapshot that differs from the previous one.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<SurgeSnapshot>>> {
        self.latest.subscribe()
    }

    /// Reads snapshots until shutdown. Read failures are logged once per outage and retried on
    /// the next interval; subscribers keep the last good snapshot meanwhile.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let listeners = self.latest.receiver_count();
            metrics::gauge!(FEED_SUBSCRIBERS).set(listeners as f64);
            if listeners == 0 {
                continue;
            }
            match self.map.snapshot().await {
                Ok(snapshot) => {
                    if failing {
                        tracing::info!("surge map reads recovered");
                        failing = false;
                    }
                    self.latest.send_if_modified(|latest| {
                        let changed = latest
                            .as_ref()
                            .is_none_or(|last| snapshot.changes_since(last).is_some());
                        if changed {
                            *latest = Some(Arc::new(snapshot));
                        }
                        changed
                    });
                }
                Err(err) if !failing => {
                    tracing::warn!(error = %err, "cannot read the surge map; retrying every interval");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// One [`SurgeFeed`] per tenant whose map is watched, started on its first subscriber and
/// stopped with the process: a tenant's stream never carries another tenant's cells.
#[derive(Debug, Clone)]
pub struct SurgeFeeds {
    map: SurgeMap,
    interval: Duration,
    shutdown: CancellationToken,
    feeds: Arc<Mutex<HashMap<TenantId, SurgeFeed>>>,
}

impl SurgeFeeds {
    /// Feeds of `map` (the default tenant's layout) read every `interval`, ending with
    /// `shutdown`.
    pub fn new(map: SurgeMap, interval: Duration, shutdown: CancellationToken) -> Self {
        Self {
            map,
            interval,
            shutdown,
            feeds: Arc::default(),
        }
    }

    /// `tenant`'s map, read on demand.
    pub fn map(&self, tenant: &TenantId) -> SurgeMap {
        self.map.for_tenant(tenant)
    }

    /// Cancelled when the process stops: long-lived streams end then.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// `tenant`'s feed, started (on the current Tokio runtime) when first asked for.
    pub fn feed(&self, tenant: &TenantId) -> SurgeFeed {
        let mut feeds = self
            .feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        feeds
            .entry(tenant.clone())
            .or_insert_with(|| {
                let feed = SurgeFeed::new(
                    self.map.for_tenant(tenant),
                    self.interval,
                    self.shutdown.clone(),
                );
                tokio::spawn(feed.clone().run());
                feed
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::cache::CacheWrite;
    use pulse_core::clock::ManualClock;
    use pulse_memory::MemoryCache;

    use super::*;
    use pulse_geo::Point;

    fn berlin(offset: f64) -> CellIndex {
        Point::new(52.52 + offset, 13.405).expect("point").cell()
    }

    async fn publish(cache: &MemoryCache, cell: CellIndex, multiplier: f64, expires_ms: i64) {
        let value = SurgeValue {
            multiplier,
            updated_at: 1_000,
            demand: 3,
            supply: 1,
        };
        cache
            .apply(vec![
                CacheWrite::Set {
                    key: Keys::default().surge(cell),
                    value: Bytes::from(serde_json::to_vec(&value).expect("json")),
                    ttl: None,
                },
                CacheWrite::IndexAdd {
                    key: Keys::default().surge_cells(),
                    member: cell.to_string(),
                    score: expires_ms,
                    ttl: None,
                },
            ])
            .await
            .expect("publish");
    }

    async fn driver(cache: &MemoryCache, id: &str, available: bool, at_ms: i64) {
        let state = DriverState {
            h3: berlin(0.0).to_string(),
            available,
            timestamp_ms: at_ms,
            lat: 52.52,
            lng: 13.405,
            on_ride: false,
            ride_at_ms: 0,
            ride_order: None,
        };
        cache
            .apply(vec![
                CacheWrite::Set {
                    key: Keys::default().driver(id),
                    value: Bytes::from(serde_json::to_vec(&state).expect("json")),
                    ttl: None,
                },
                CacheWrite::IndexAdd {
                    key: Keys::default().available_drivers(),
                    member: id.into(),
                    score: at_ms,
                    ttl: None,
                },
            ])
            .await
            .expect("driver");
    }

    fn fixture(max_cells: usize) -> (MemoryCache, SurgeMap) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let cache = MemoryCache::new(clock.clone(), 1_000);
        let settings = MapSettings {
            max_cells,
            max_drivers: 10,
            window: Duration::from_secs(300),
            keys: Keys::default(),
        };
        let map = SurgeMap::new(Arc::new(cache.clone()), clock, settings);
        (cache, map)
    }

    #[tokio::test]
    async fn a_snapshot_lists_live_cells_with_geometry_and_available_drivers() {
        let (cache, map) = fixture(10);
        publish(&cache, berlin(0.0), 2.5, 1_060_000).await;
        publish(&cache, berlin(0.01), 1.0, 1_060_000).await;
        // Expired (its engine stopped before forgetting it): not listed.
        publish(&cache, berlin(0.02), 3.5, 999_000).await;
        driver(&cache, "fresh", true, 990_000).await;
        driver(&cache, "off", false, 990_000).await;
        // Pinged before the window: not listed.
        driver(&cache, "gone", true, 600_000).await;

        let snapshot = map.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.generated_at, 1_000);
        assert_eq!(snapshot.cells.len(), 2);
        let hot = &snapshot
            .cells
            .iter()
            .find(|c| c.multiplier == 2.5)
            .expect("hot");
        assert_eq!(hot.h3, berlin(0.0).to_string());
        assert_eq!(hot.boundary.len(), 6);
        assert!((hot.center[0] - 52.52).abs() < 0.01 && (hot.center[1] - 13.405).abs() < 0.01);
        let ids: Vec<&str> = snapshot.drivers.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec!["fresh"]);
        assert_eq!(
            snapshot.totals,
            Totals {
                cells: 2,
                surging_cells: 1,
                demand: 6,
                supply: 2,
                drivers: 1,
                riding: 0,
                max_multiplier: 2.5
            }
        );
        assert!(!snapshot.cells_truncated && !snapshot.drivers_truncated);
    }

    #[tokio::test]
    async fn a_snapshot_says_when_it_left_cells_out() {
        let (cache, map) = fixture(2);
        for i in 0..3 {
            publish(
                &cache,
                berlin(0.01 * f64::from(i)),
                1.5,
                1_060_000 + i64::from(i),
            )
            .await;
        }
        let snapshot = map.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.cells.len(), 2);
        assert!(snapshot.cells_truncated);
    }

    #[tokio::test]
    async fn changes_carry_new_changed_and_removed_cells_only() {
        let (cache, map) = fixture(10);
        let (a, b, c) = (berlin(0.0), berlin(0.01), berlin(0.02));
        publish(&cache, a, 1.5, 1_060_000).await;
        publish(&cache, b, 2.0, 1_060_000).await;
        let before = map.snapshot().await.expect("before");
        assert_eq!(
            map.snapshot().await.expect("same").changes_since(&before),
            None
        );

        publish(&cache, b, 3.0, 1_060_000).await;
        publish(&cache, c, 1.0, 1_060_000).await;
        cache
            .apply(vec![CacheWrite::IndexRemove {
                key: Keys::default().surge_cells(),
                member: a.to_string(),
            }])
            .await
            .expect("forget");
        let update = map
            .snapshot()
            .await
            .expect("after")
            .changes_since(&before)
            .expect("changes");
        let changed: Vec<(&str, f64)> = update
            .cells
            .iter()
            .map(|cell| (cell.h3.as_str(), cell.multiplier))
            .collect();
        let (b, c) = (b.to_string(), c.to_string());
        let mut expected = vec![(b.as_str(), 3.0), (c.as_str(), 1.0)];
        expected.sort_unstable_by(|x, y| x.0.cmp(y.0));
        assert_eq!(changed, expected);
        assert_eq!(update.removed, vec![a.to_string()]);
        assert_eq!(update.totals.cells, 2);
    }
}
