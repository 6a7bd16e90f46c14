//! [`MemoryGeoIndex`]: the in-process adapter of the [`GeoIndex`] port, for one process
//! (embedded mode), standing in for the Redis GEO set.
//!
//! Per tenant the index holds a map driver → slot (its busy flag with the time that set it, and
//! where its latest position is filed) and a grid of H3 cells at resolution [`RESOLUTION`]
//! (cells of about 0.74 km², edges of about 460 m), each cell holding the latest positions filed
//! in it. Resolution 8 suits radii of 0.5 to 50 km: a 2 km search in a city of 100,000 drivers
//! touches a handful of cells of a hundred drivers each, and a 50 km one stays bounded (below).
//!
//! Invariants:
//! * a driver has at most one position, filed in the cell that contains it, and it is the one
//!   with the latest `at_ms` the index was given: an update not newer is ignored and moves
//!   nothing;
//! * the busy flag is set only by a `set_busy` newer than the one that last set it, whether or
//!   not the driver has a position yet (a slot without a position keeps the flag for it);
//! * a search never returns a driver that is unavailable, busy, older than `fresh_since_ms`, of
//!   another vehicle type or farther than the radius; it returns the `limit` nearest of the rest.
//!
//! How a search stays exact without looking at every driver: it walks rings of cells outward
//! from the centre's cell. Any point in a cell is at most [`CELL_RADIUS_BOUND_M`] from the cell's
//! centre, so `distance(centre of search, centre of cell) − CELL_RADIUS_BOUND_M` is a lower bound
//! on the distance of every driver in that cell. Grid distance changes by one per step between
//! neighbouring cells, so the straight way to any cell beyond ring `k` crosses ring `k`: the
//! smallest bound over ring `k` bounds everything beyond it. The walk stops once that bound
//! exceeds the radius, or the `limit` nearest found so far are all nearer than it. When the
//! disk of cells the radius could need is larger than the number of occupied cells (a sparse
//! tenant, a wide radius), the search instead orders the occupied cells by their bound and scans
//! them nearest first with the same stopping rule, so its cost never exceeds one pass over the
//! occupied cells.
//!
//! Distances are haversine on a sphere of radius [`EARTH_RADIUS_M`] (6,371,008.8 m, the IUGG mean
//! Earth radius), written here rather than borrowed from `pulse-geo` because adapters depend on
//! the core only. Drivers are compared by the haversine term itself (monotone in distance), so
//! only the drivers returned pay for the arcsine.
//!
//! Positions must lie within Redis's GEO range (latitude within ±[`MAX_LATITUDE`]), so both
//! adapters refuse the same input; a batch with one invalid position is refused whole, before
//! anything is applied. Locks: one `RwLock` over the tenants (taken briefly to find or add a
//! tenant), one per tenant (searches share it, updates take it exclusively). No lock is held
//! across an `await`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use h3o::{CellIndex, LatLng, Resolution};
use pulse_core::geo_index::{DriverPosition, GeoIndex, NearbyDriver, NearbyQuery};
use pulse_core::{PortError, PortResult, TenantId};

/// The H3 resolution of the grid.
pub const RESOLUTION: Resolution = Resolution::Eight;

/// An upper bound on the distance from a resolution-8 cell's centre to any point of the cell,
/// metres. The largest found over 200,000 cells sampled uniformly on the sphere and every cell
/// within three rings of the twelve pentagons (the most distorted) is 585 m; the bound leaves
/// a third more, since a bound too small would make a search miss drivers, one too large only
/// makes it look at a ring more.
pub const CELL_RADIUS_BOUND_M: f64 = 800.0;

/// A lower estimate of the distance between the centres of neighbouring resolution-8 cells
/// (the smallest found in the same sample is 640 m), used only to estimate how many cells a
/// radius spans, never for correctness.
const CELL_SPACING_ESTIMATE_M: f64 = 600.0;

/// The rings a walk may take at most: far beyond what [`MAX_RADIUS_M`](pulse_core::geo_index::MAX_RADIUS_M) needs (about 90 rings
/// of 600 m), a guard against a bound that never grows, e.g. if a ring wrapped a pole.
const MAX_RINGS: u32 = 256;

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

pub use pulse_core::geo_index::MAX_LATITUDE;
use pulse_core::geo_index::{check_position, check_query, in_range};

/// A point with what the haversine formula needs of it, precomputed.
#[derive(Debug, Clone, Copy)]
struct Spot {
    lat_rad: f64,
    lng_rad: f64,
    cos_lat: f64,
}

impl Spot {
    fn new(lat_deg: f64, lng_deg: f64) -> Self {
        let lat_rad = lat_deg.to_radians();
        Self {
            lat_rad,
            lng_rad: lng_deg.to_radians(),
            cos_lat: lat_rad.cos(),
        }
    }

    fn of_cell(cell: CellIndex) -> Self {
        let centre = LatLng::from(cell);
        let lat_rad = centre.lat_radians();
        Self {
            lat_rad,
            lng_rad: centre.lng_radians(),
            cos_lat: lat_rad.cos(),
        }
    }

    /// The haversine term `sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2)`, in 0…1, growing with
    /// the distance.
    fn hav(&self, other: &Spot) -> f64 {
        let dlat = ((other.lat_rad - self.lat_rad) / 2.0).sin();
        let dlng = ((other.lng_rad - self.lng_rad) / 2.0).sin();
        (dlat * dlat + self.cos_lat * other.cos_lat * dlng * dlng).min(1.0)
    }

    fn distance_m(&self, other: &Spot) -> f64 {
        hav_to_m(self.hav(other))
    }
}

fn hav_to_m(hav: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * hav.sqrt().asin()
}

fn m_to_hav(distance_m: f64) -> f64 {
    let half_angle = (distance_m / (2.0 * EARTH_RADIUS_M)).min(std::f64::consts::FRAC_PI_2);
    let sin = half_angle.sin();
    sin * sin
}

/// A driver's latest position, filed in its cell with everything a search filters on.
#[derive(Debug, Clone)]
struct Member {
    driver_id: Arc<str>,
    lat: f64,
    lng: f64,
    spot: Spot,
    at_ms: i64,
    available: bool,
    /// A copy of the driver's slot's flag, so a search reads one place.
    busy: bool,
    vehicle_type: Option<Arc<str>>,
}

/// One cell's positions, and its centre (for the search's bound).
#[derive(Debug)]
struct Bucket {
    centre: Spot,
    members: Vec<Member>,
}

/// Where a driver's position is filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    cell: CellIndex,
    index: usize,
}

/// What the index knows of one driver.
#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    /// The time of the ride event that last set `busy`, if any did.
    busy_at_ms: Option<i64>,
    /// Its latest position, if it has reported one.
    place: Option<Place>,
}

/// One tenant's drivers and grid.
#[derive(Debug, Default)]
struct Tenant {
    drivers: HashMap<Arc<str>, Slot>,
    cells: HashMap<CellIndex, Bucket>,
}

impl Tenant {
    fn member(&self, place: Place) -> &Member {
        &self.cells[&place.cell].members[place.index]
    }

    fn member_mut(&mut self, place: Place) -> &mut Member {
        self.cells
            .get_mut(&place.cell)
            .map(|bucket| &mut bucket.members[place.index])
            .expect("a slot's place is filed")
    }

    /// Applies `position` if it is newer than the driver's latest; whether it was.
    fn update(&mut self, position: &DriverPosition, cell: CellIndex) -> bool {
        let (driver_id, busy, old_place) = match self.drivers.get_key_value(&*position.driver_id) {
            Some((id, slot)) => {
                if let Some(place) = slot.place {
                    if self.member(place).at_ms >= position.at_ms {
                        return false;
                    }
                }
                (id.clone(), slot.busy, slot.place)
            }
            None => (Arc::from(position.driver_id.as_str()), false, None),
        };
        let vehicle_type = match (&position.vehicle_type, old_place) {
            (None, _) => None,
            // Reuse the stored text when it did not change: no allocation per ping.
            (Some(new), Some(place)) => match &self.member(place).vehicle_type {
                Some(old) if **old == **new => Some(old.clone()),
                _ => Some(Arc::from(new.as_str())),
            },
            (Some(new), None) => Some(Arc::from(new.as_str())),
        };
        let member = Member {
            driver_id: driver_id.clone(),
            lat: position.lat,
            lng: position.lng,
            spot: Spot::new(position.lat, position.lng),
            at_ms: position.at_ms,
            available: position.available,
            busy,
            vehicle_type,
        };
        let place = match old_place {
            Some(place) if place.cell == cell => {
                *self.member_mut(place) = member;
                place
            }
            _ => {
                if let Some(place) = old_place {
                    self.unfile(place);
                }
                self.file(cell, member)
            }
        };
        self.drivers.entry(driver_id).or_default().place = Some(place);
        true
    }

    /// Files `member` in `cell`; where it went.
    fn file(&mut self, cell: CellIndex, member: Member) -> Place {
        let bucket = self.cells.entry(cell).or_insert_with(|| Bucket {
            centre: Spot::of_cell(cell),
            members: Vec::new(),
        });
        bucket.members.push(member);
        Place {
            cell,
            index: bucket.members.len() - 1,
        }
    }

    /// Removes the position at `place` from its cell (the slot's `place` is the caller's to
    /// change): the cell's last member takes its index, and its slot is told.
    fn unfile(&mut self, place: Place) {
        let Some(bucket) = self.cells.get_mut(&place.cell) else {
            return;
        };
        bucket.members.swap_remove(place.index);
        if let Some(moved) = bucket.members.get(place.index) {
            if let Some(slot) = self.drivers.get_mut(&moved.driver_id) {
                slot.place = Some(place);
            }
        } else if bucket.members.is_empty() {
            // Memory follows the drivers held: an empty cell is dropped.
            self.cells.remove(&place.cell);
        }
    }

    fn set_busy(&mut self, driver_id: &str, busy: bool, at_ms: i64) -> bool {
        let slot = match self.drivers.get_mut(driver_id) {
            Some(slot) => slot,
            None => self.drivers.entry(Arc::from(driver_id)).or_default(),
        };
        if slot.busy_at_ms.is_some_and(|set_at| set_at >= at_ms) {
            return false;
        }
        slot.busy = busy;
        slot.busy_at_ms = Some(at_ms);
        if let Some(place) = slot.place {
            self.member_mut(place).busy = busy;
        }
        true
    }

    /// Forgets drivers whose latest position is older than `before_ms` (and busy flags older
    /// than it that never met a position); how many drivers with a position were removed.
    fn forget_older_than(&mut self, before_ms: i64) -> u64 {
        let mut old = Vec::new();
        let mut orphans = Vec::new();
        for (id, slot) in &self.drivers {
            match slot.place {
                Some(place) if self.member(place).at_ms < before_ms => old.push(id.clone()),
                None if slot.busy_at_ms.is_none_or(|at| at < before_ms) => orphans.push(id.clone()),
                _ => {}
            }
        }
        for id in &old {
            // Looked up again: unfiling an earlier one may have moved this one's index.
            if let Some(place) = self.drivers.remove(id).and_then(|slot| slot.place) {
                self.unfile(place);
            }
        }
        for id in &orphans {
            self.drivers.remove(id);
        }
        old.len() as u64
    }
}

/// A candidate of a search, ordered by distance, then driver id (so ties are stable).
#[derive(Debug)]
struct Found<'a> {
    hav: f64,
    member: &'a Member,
}

impl PartialEq for Found<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Found<'_> {}

impl PartialOrd for Found<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Found<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hav
            .total_cmp(&other.hav)
            .then_with(|| self.member.driver_id.cmp(&other.member.driver_id))
    }
}

/// One search's state: the query's filters and the nearest `limit` found so far.
struct Search<'a> {
    query: &'a NearbyQuery,
    centre: Spot,
    max_hav: f64,
    /// A max-heap: its top is the farthest of the nearest found so far.
    best: BinaryHeap<Found<'a>>,
}

impl<'a> Search<'a> {
    fn new(query: &'a NearbyQuery) -> Self {
        Self {
            query,
            centre: Spot::new(query.lat, query.lng),
            max_hav: m_to_hav(query.radius_m),
            best: BinaryHeap::with_capacity(query.limit + 1),
        }
    }

    /// The distance a cell's bound must not exceed for the cell to hold a better driver.
    fn reach_m(&self) -> f64 {
        match self.best.peek() {
            Some(worst) if self.best.len() >= self.query.limit => {
                hav_to_m(worst.hav).min(self.query.radius_m)
            }
            _ => self.query.radius_m,
        }
    }

    /// The lower bound on the distance of every point of a cell centred at `centre`.
    fn bound_m(&self, centre: &Spot) -> f64 {
        self.centre.distance_m(centre) - CELL_RADIUS_BOUND_M
    }

    fn scan(&mut self, bucket: &'a Bucket) {
        let wanted_vehicle = self.query.vehicle_type.as_deref();
        for member in &bucket.members {
            if !member.available
                || member.busy
                || member.at_ms < self.query.fresh_since_ms
                || wanted_vehicle
                    .is_some_and(|wanted| member.vehicle_type.as_deref() != Some(wanted))
            {
                continue;
            }
            let hav = self.centre.hav(&member.spot);
            if hav > self.max_hav {
                continue;
            }
            let found = Found { hav, member };
            if self.best.len() < self.query.limit {
                self.best.push(found);
            } else if self.best.peek().is_some_and(|worst| found < *worst) {
                self.best.pop();
                self.best.push(found);
            }
        }
    }

    /// Walks rings of cells outward from the centre's cell (see the module docs).
    fn walk_rings(&mut self, cells: &'a HashMap<CellIndex, Bucket>, origin: CellIndex) {
        for k in 0..=MAX_RINGS {
            let mut ring_bound = f64::INFINITY;
            for cell in ring(origin, k) {
                let bucket = cells.get(&cell);
                let centre = bucket.map_or_else(|| Spot::of_cell(cell), |bucket| bucket.centre);
                let bound = self.bound_m(&centre);
                ring_bound = ring_bound.min(bound);
                if let Some(bucket) = bucket {
                    if bound <= self.reach_m() {
                        self.scan(bucket);
                    }
                }
            }
            if ring_bound > self.reach_m() {
                return;
            }
        }
    }

    /// Scans the occupied cells nearest first, until the next one cannot hold a better driver.
    fn scan_occupied(&mut self, cells: &'a HashMap<CellIndex, Bucket>) {
        let radius = self.query.radius_m;
        let mut order: Vec<(f64, &Bucket)> = cells
            .values()
            .map(|bucket| (self.bound_m(&bucket.centre), bucket))
            .filter(|(bound, _)| *bound <= radius)
            .collect();
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        for (bound, bucket) in order {
            if bound > self.reach_m() {
                break;
            }
            self.scan(bucket);
        }
    }

    fn into_drivers(self) -> Vec<NearbyDriver> {
        self.best
            .into_sorted_vec()
            .into_iter()
            .map(|found| NearbyDriver {
                driver_id: found.member.driver_id.to_string(),
                distance_m: hav_to_m(found.hav),
                lat: found.member.lat,
                lng: found.member.lng,
                at_ms: found.member.at_ms,
                vehicle_type: found.member.vehicle_type.as_deref().map(str::to_owned),
            })
            .collect()
    }
}

/// The cells at grid distance exactly `k` from `origin`.
fn ring(origin: CellIndex, k: u32) -> Vec<CellIndex> {
    // The fast ring fails only near one of the twelve pentagons; the disk is always right.
    origin
        .grid_ring_fast(k)
        .collect::<Option<Vec<_>>>()
        .unwrap_or_else(|| {
            origin
                .grid_disk_distances_safe(k)
                .filter(|(_, distance)| *distance == k)
                .map(|(cell, _)| cell)
                .collect()
        })
}

/// How many cells a walk over `radius_m` may visit, roughly.
fn disk_cells_estimate(radius_m: f64) -> f64 {
    let rings = ((radius_m + 2.0 * CELL_RADIUS_BOUND_M) / CELL_SPACING_ESTIMATE_M).ceil() + 1.0;
    3.0 * rings * (rings + 1.0) + 1.0
}

/// The point at `lat`, `lng` if both are within the range both adapters accept.
/// The point of `lat`, `lng`, checked in range first (as every adapter checks it).
fn point_of(lat: f64, lng: f64) -> Option<LatLng> {
    in_range(lat, lng)
        .then(|| LatLng::new(lat, lng).ok())
        .flatten()
}

/// The in-process geo index. Cheap to clone; clones share the same drivers.
#[derive(Debug, Clone, Default)]
pub struct MemoryGeoIndex {
    tenants: Arc<RwLock<HashMap<TenantId, Arc<RwLock<Tenant>>>>>,
}

// No callback runs under these locks, so a panic while one is held would be a bug in this
// file; as elsewhere in this crate the data is taken over poisoning, so such a bug fails the
// call that hit it rather than every later one.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryGeoIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drivers held for `tenant` (with a position or only a busy flag), stale ones included.
    pub fn len(&self, tenant: &TenantId) -> usize {
        self.existing(tenant)
            .map_or(0, |tenant| read(&tenant).drivers.len())
    }

    /// Whether no driver is held for `tenant`.
    pub fn is_empty(&self, tenant: &TenantId) -> bool {
        self.len(tenant) == 0
    }

    fn existing(&self, tenant: &TenantId) -> Option<Arc<RwLock<Tenant>>> {
        read(&self.tenants).get(tenant).cloned()
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<RwLock<Tenant>> {
        if let Some(found) = self.existing(tenant) {
            return found;
        }
        write(&self.tenants)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl GeoIndex for MemoryGeoIndex {
    async fn update(
        &self,
        tenant: &TenantId,
        positions: &[DriverPosition],
    ) -> PortResult<Vec<bool>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut cells = Vec::with_capacity(positions.len());
        for position in positions {
            check_position(position)?;
            let point = point_of(position.lat, position.lng).ok_or_else(|| {
                PortError::Invalid(format!("driver {}'s position", position.driver_id))
            })?;
            cells.push(point.to_cell(RESOLUTION));
        }
        let tenant = self.tenant(tenant);
        let mut tenant = write(&tenant);
        Ok(positions
            .iter()
            .zip(cells)
            .map(|(position, cell)| tenant.update(position, cell))
            .collect())
    }

    async fn set_busy(
        &self,
        tenant: &TenantId,
        driver_id: &str,
        busy: bool,
        at_ms: i64,
    ) -> PortResult<bool> {
        if driver_id.is_empty() {
            return Err(PortError::Invalid("a driver id is empty".into()));
        }
        let tenant = self.tenant(tenant);
        let applied = write(&tenant).set_busy(driver_id, busy, at_ms);
        Ok(applied)
    }

    async fn nearest(
        &self,
        tenant: &TenantId,
        query: &NearbyQuery,
    ) -> PortResult<Vec<NearbyDriver>> {
        check_query(query)?;
        let centre = point_of(query.lat, query.lng)
            .ok_or_else(|| PortError::Invalid("the search's centre".into()))?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let Some(tenant) = self.existing(tenant) else {
            return Ok(Vec::new());
        };
        let tenant = read(&tenant);
        let mut search = Search::new(query);
        if disk_cells_estimate(query.radius_m) > tenant.cells.len() as f64 {
            search.scan_occupied(&tenant.cells);
        } else {
            search.walk_rings(&tenant.cells, centre.to_cell(RESOLUTION));
        }
        Ok(search.into_drivers())
    }

    async fn forget_older_than(&self, tenant: &TenantId, before_ms: i64) -> PortResult<u64> {
        let Some(tenant) = self.existing(tenant) else {
            return Ok(0);
        };
        let removed = write(&tenant).forget_older_than(before_ms);
        Ok(removed)
    }

    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::default_tenant()
    }

    fn position(id: &str, lat: f64, lng: f64, at_ms: i64) -> DriverPosition {
        DriverPosition {
            driver_id: id.to_owned(),
            lat,
            lng,
            at_ms,
            available: true,
            vehicle_type: None,
        }
    }

    fn query(lat: f64, lng: f64, radius_m: f64, limit: usize) -> NearbyQuery {
        NearbyQuery {
            lat,
            lng,
            radius_m,
            limit,
            vehicle_type: None,
            fresh_since_ms: 0,
        }
    }

    /// Every filed position is where its slot says, and every slot's busy copy matches.
    fn assert_consistent(index: &MemoryGeoIndex) {
        let tenant = index.existing(&tenant()).unwrap();
        let tenant = read(&tenant);
        let mut filed = 0;
        for (id, slot) in &tenant.drivers {
            if let Some(place) = slot.place {
                let member = tenant.member(place);
                assert_eq!(&member.driver_id, id);
                assert_eq!(member.busy, slot.busy);
                filed += 1;
            }
        }
        let members: usize = tenant.cells.values().map(|b| b.members.len()).sum();
        assert_eq!(members, filed);
        assert!(tenant.cells.values().all(|b| !b.members.is_empty()));
    }

    /// The answer of a search that looks at every driver.
    fn brute_force(drivers: &[DriverPosition], q: &NearbyQuery) -> Vec<(String, f64)> {
        let centre = Spot::new(q.lat, q.lng);
        let mut all: Vec<(String, f64)> = drivers
            .iter()
            .map(|d| {
                (
                    d.driver_id.clone(),
                    centre.distance_m(&Spot::new(d.lat, d.lng)),
                )
            })
            .filter(|(_, distance)| *distance <= q.radius_m)
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(q.limit);
        all
    }

    #[tokio::test]
    async fn searches_agree_with_a_brute_force_scan_in_dense_and_sparse_places() {
        let index = MemoryGeoIndex::new();
        let mut rng = fastrand::Rng::with_seed(42);
        // A dense city and a few drivers scattered across a wide region around it.
        let mut drivers: Vec<DriverPosition> = (0..20_000)
            .map(|i| {
                let lat = 52.52 + (rng.f64() - 0.5) * 0.27;
                let lng = 13.40 + (rng.f64() - 0.5) * 0.44;
                position(&format!("d{i}"), lat, lng, 1)
            })
            .collect();
        drivers.extend((0..300).map(|i| {
            let lat = 52.52 + (rng.f64() - 0.5) * 1.2;
            let lng = 13.40 + (rng.f64() - 0.5) * 2.0;
            position(&format!("s{i}"), lat, lng, 1)
        }));
        index.update(&tenant(), &drivers).await.unwrap();
        assert_consistent(&index);
        for _ in 0..200 {
            let lat = 52.52 + (rng.f64() - 0.5) * 1.0;
            let lng = 13.40 + (rng.f64() - 0.5) * 1.6;
            let radius = [300.0, 2_000.0, 10_000.0, 50_000.0][rng.usize(..4)];
            let limit = [1, 10, 100, 500][rng.usize(..4)];
            let q = query(lat, lng, radius, limit);
            let found: Vec<(String, f64)> = index
                .nearest(&tenant(), &q)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.driver_id, d.distance_m))
                .collect();
            assert_eq!(found, brute_force(&drivers, &q), "{q:?}");
        }
    }

    #[tokio::test]
    async fn drivers_moving_between_cells_stay_filed_once() {
        let index = MemoryGeoIndex::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 1..=20 {
            let batch: Vec<DriverPosition> = (0..500)
                .map(|i| {
                    let lat = 48.85 + (rng.f64() - 0.5) * 0.05;
                    let lng = 2.35 + (rng.f64() - 0.5) * 0.08;
                    position(&format!("d{i}"), lat, lng, round)
                })
                .collect();
            index.update(&tenant(), &batch).await.unwrap();
            index
                .set_busy(
                    &tenant(),
                    &format!("d{}", rng.usize(..500)),
                    round % 2 == 0,
                    round,
                )
                .await
                .unwrap();
            assert_consistent(&index);
            if round % 5 == 0 {
                index.forget_older_than(&tenant(), round).await.unwrap();
                assert_consistent(&index);
            }
        }
        assert_eq!(index.len(&tenant()), 500);
    }

    #[test]
    fn a_search_near_a_pentagon_walks_its_rings() {
        // Rings around a pentagon need the safe disk.
        let pentagon = RESOLUTION.pentagons().next().unwrap();
        for k in 0..4 {
            let cells = ring(pentagon, k);
            assert!(!cells.is_empty());
            assert!(cells
                .iter()
                .all(|cell| pentagon.grid_distance(*cell) == Ok(k as i32)));
        }
    }

    #[test]
    fn the_cell_radius_bound_holds_for_sampled_cells() {
        let mut rng = fastrand::Rng::with_seed(3);
        let cells = (0..20_000)
            .map(|_| {
                let lat = (rng.f64() * 2.0 - 1.0).asin().to_degrees();
                let lng = rng.f64() * 360.0 - 180.0;
                LatLng::new(lat, lng).unwrap().to_cell(RESOLUTION)
            })
            .chain(
                RESOLUTION
                    .pentagons()
                    .flat_map(|p| p.grid_disk::<Vec<_>>(2)),
            );
        for cell in cells {
            let centre = Spot::of_cell(cell);
            for vertex in cell.boundary().iter() {
                let vertex = Spot::new(vertex.lat(), vertex.lng());
                assert!(
                    centre.distance_m(&vertex) < CELL_RADIUS_BOUND_M * 0.8,
                    "{cell}"
                );
            }
        }
    }

    #[test]
    fn haversine_gives_arcs_of_the_stated_sphere() {
        // A degree of latitude and a quarter of the equator are arcs of known angle.
        let degree = Spot::new(10.0, 20.0).distance_m(&Spot::new(11.0, 20.0));
        assert!(
            (degree - EARTH_RADIUS_M.to_radians()).abs() < 1e-6,
            "{degree}"
        );
        let quarter = Spot::new(0.0, -45.0).distance_m(&Spot::new(0.0, 45.0));
        assert!((quarter - EARTH_RADIUS_M * std::f64::consts::FRAC_PI_2).abs() < 1e-6);
        assert!((hav_to_m(m_to_hav(12_345.0)) - 12_345.0).abs() < 1e-6);
    }
}
