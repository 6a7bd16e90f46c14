//! The geo index suite: what every [`GeoIndex`] adapter must do, as the port's module docs state
//! it — nearest first within the radius and the limit; never a driver that is stale, unavailable
//! by its latest ping, busy, or of another vehicle type; updates and busy flags ordered by their
//! own times (an older or duplicate one is ignored and moves nothing); a busy flag set before
//! the first position is kept; tenants isolated; housekeeping forgets only what is older.
//!
//! Every case works in tenants of its own (a fresh id from [`unique_name`]), so the cases can
//! share one Redis with each other and with other test runs. Distances are checked against the
//! haversine of `pulse_geo` within 1 % (an adapter may use its own Earth radius and store
//! positions to within a metre), coordinates within 1e-5° (about a metre).

use pulse_core::geo_index::{
    DriverPosition, GeoIndex, NearbyDriver, NearbyQuery, MAX_NEARBY, MAX_RADIUS_M,
};
use pulse_core::{PortError, TenantId};
use pulse_geo::Point;

use crate::unique_name;

/// "Now" of the cases, Unix ms.
const T0: i64 = 1_700_000_000_000;
/// The freshness cut of the cases' searches: a minute before [`T0`].
const FRESH_SINCE: i64 = T0 - 60_000;
/// The centre of the cases' searches (Berlin, Alexanderplatz).
const CENTRE: (f64, f64) = (52.5219, 13.4132);
/// The Earth radius the cases place drivers with, metres (the IUGG mean).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A tenant no other case or test run uses (ids are at most 32 characters of `[a-z0-9_-]`, so
/// it keeps the random end of a [`unique_name`]).
fn fresh_tenant() -> TenantId {
    let name = unique_name("geo");
    let random = &name[name.len() - 16..];
    TenantId::parse(&format!("geo-{random}")).expect("a valid tenant id")
}

/// The point `hypot(north_m, east_m)` metres from [`CENTRE`] along the great circle heading
/// `north_m` north and `east_m` east: so its haversine distance from the centre is exactly that
/// (cases rely on it to put drivers a few metres either side of a radius).
fn at(north_m: f64, east_m: f64) -> (f64, f64) {
    let angle = north_m.hypot(east_m) / EARTH_RADIUS_M;
    let bearing = east_m.atan2(north_m);
    let (lat1, lng1) = (CENTRE.0.to_radians(), CENTRE.1.to_radians());
    let lat2 = (lat1.sin() * angle.cos() + lat1.cos() * angle.sin() * bearing.cos()).asin();
    let lng2 = lng1
        + (bearing.sin() * angle.sin() * lat1.cos()).atan2(angle.cos() - lat1.sin() * lat2.sin());
    (lat2.to_degrees(), lng2.to_degrees())
}

fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let a = Point::new(a.0, a.1).expect("a valid point");
    let b = Point::new(b.0, b.1).expect("a valid point");
    a.distance_m(&b)
}

fn position(driver: &str, place: (f64, f64), at_ms: i64) -> DriverPosition {
    DriverPosition {
        driver_id: driver.to_owned(),
        lat: place.0,
        lng: place.1,
        at_ms,
        available: true,
        vehicle_type: None,
    }
}

fn unavailable(driver: &str, place: (f64, f64), at_ms: i64) -> DriverPosition {
    DriverPosition {
        available: false,
        ..position(driver, place, at_ms)
    }
}

fn with_vehicle(driver: &str, place: (f64, f64), at_ms: i64, vehicle: &str) -> DriverPosition {
    DriverPosition {
        vehicle_type: Some(vehicle.to_owned()),
        ..position(driver, place, at_ms)
    }
}

/// A search around [`CENTRE`] for drivers fresh since [`FRESH_SINCE`].
fn around(radius_m: f64, limit: usize) -> NearbyQuery {
    NearbyQuery {
        lat: CENTRE.0,
        lng: CENTRE.1,
        radius_m,
        limit,
        vehicle_type: None,
        fresh_since_ms: FRESH_SINCE,
    }
}

async fn update<G: GeoIndex + ?Sized>(
    index: &G,
    tenant: &TenantId,
    positions: &[DriverPosition],
) -> Vec<bool> {
    index
        .update(tenant, positions)
        .await
        .unwrap_or_else(|err| panic!("update {positions:?}: {err}"))
}

async fn set_busy<G: GeoIndex + ?Sized>(
    index: &G,
    tenant: &TenantId,
    driver: &str,
    busy: bool,
    at_ms: i64,
) -> bool {
    index
        .set_busy(tenant, driver, busy, at_ms)
        .await
        .unwrap_or_else(|err| panic!("set_busy {driver} {busy} at {at_ms}: {err}"))
}

async fn nearest<G: GeoIndex + ?Sized>(
    index: &G,
    tenant: &TenantId,
    query: &NearbyQuery,
) -> Vec<NearbyDriver> {
    index
        .nearest(tenant, query)
        .await
        .unwrap_or_else(|err| panic!("nearest {query:?}: {err}"))
}

/// The ids `nearest` answers, in its order.
async fn ids<G: GeoIndex + ?Sized>(
    index: &G,
    tenant: &TenantId,
    query: &NearbyQuery,
) -> Vec<String> {
    nearest(index, tenant, query)
        .await
        .into_iter()
        .map(|driver| driver.driver_id)
        .collect()
}

#[track_caller]
fn assert_near(found: &NearbyDriver, place: (f64, f64)) {
    assert!(
        (found.lat - place.0).abs() < 1e-5 && (found.lng - place.1).abs() < 1e-5,
        "{} at ({}, {}), expected {place:?}",
        found.driver_id,
        found.lat,
        found.lng
    );
}

/// Drivers come back nearest first, each with its distance from the centre (within 1 % of the
/// haversine), its position, report time and vehicle type.
pub async fn nearest_drivers_come_first_with_their_distances<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    // Listed out of order, in every direction.
    let placed = [
        ("d600", at(-600.0, 0.0)),
        ("d100", at(0.0, 100.0)),
        ("d1500", at(1_060.0, -1_060.0)),
        ("d300", at(300.0, 0.0)),
        ("d1000", at(0.0, -1_000.0)),
    ];
    let positions: Vec<DriverPosition> = placed
        .iter()
        .enumerate()
        .map(|(i, (id, place))| with_vehicle(id, *place, T0 + i as i64, "car"))
        .collect();
    assert_eq!(update(index, &tenant, &positions).await, vec![true; 5]);

    let found = nearest(index, &tenant, &around(5_000.0, 10)).await;
    let order: Vec<&str> = found.iter().map(|d| d.driver_id.as_str()).collect();
    assert_eq!(order, ["d100", "d300", "d600", "d1000", "d1500"]);
    for driver in &found {
        let (i, (_, place)) = placed
            .iter()
            .enumerate()
            .find(|(_, (id, _))| *id == driver.driver_id)
            .expect("a placed driver");
        let expected = haversine_m(CENTRE, *place);
        assert!(
            (driver.distance_m - expected).abs() <= expected * 0.01,
            "{}: {} m, haversine {expected} m",
            driver.driver_id,
            driver.distance_m
        );
        assert_near(driver, *place);
        assert_eq!(driver.at_ms, T0 + i as i64);
        assert_eq!(driver.vehicle_type.as_deref(), Some("car"));
    }
    index.ping().await.expect("ping");
}

/// A driver beyond the radius is not returned, however few the others are.
pub async fn the_radius_excludes_farther_drivers<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let positions = [
        position("inside", at(500.0, 0.0), T0),
        position("edge-in", at(0.0, 1_900.0), T0),
        position("edge-out", at(-2_100.0, 0.0), T0),
        position("far", at(10_000.0, 10_000.0), T0),
    ];
    update(index, &tenant, &positions).await;
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["inside", "edge-in"]
    );
    assert_eq!(
        ids(index, &tenant, &around(400.0, 10)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(index, &tenant, &around(20_000.0, 10)).await,
        ["inside", "edge-in", "edge-out", "far"]
    );
}

/// At most `limit` drivers come back, the nearest ones; a limit of zero finds none.
pub async fn at_most_limit_drivers_come_back<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let positions: Vec<DriverPosition> = (1..=20)
        .map(|i| position(&format!("d{i:02}"), at(100.0 * f64::from(i), 0.0), T0))
        .collect();
    update(index, &tenant, &positions).await;
    assert_eq!(
        ids(index, &tenant, &around(5_000.0, 5)).await,
        ["d01", "d02", "d03", "d04", "d05"]
    );
    assert_eq!(ids(index, &tenant, &around(5_000.0, 1)).await, ["d01"]);
    assert!(ids(index, &tenant, &around(5_000.0, 0)).await.is_empty());
    assert_eq!(
        ids(index, &tenant, &around(5_000.0, MAX_NEARBY))
            .await
            .len(),
        20
    );
}

/// A driver whose latest report is older than the search allows is never returned, even the
/// nearest; one reported exactly at the cut is.
pub async fn a_stale_driver_is_never_returned<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let positions = [
        position("stale", at(50.0, 0.0), FRESH_SINCE - 1),
        position("at-the-cut", at(200.0, 0.0), FRESH_SINCE),
        position("fresh", at(400.0, 0.0), T0),
    ];
    update(index, &tenant, &positions).await;
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["at-the-cut", "fresh"]
    );
    let everyone = NearbyQuery {
        fresh_since_ms: 0,
        ..around(2_000.0, 10)
    };
    assert_eq!(
        ids(index, &tenant, &everyone).await,
        ["stale", "at-the-cut", "fresh"]
    );
    // A newer report makes it fresh again.
    update(index, &tenant, &[position("stale", at(50.0, 0.0), T0)]).await;
    assert_eq!(ids(index, &tenant, &around(2_000.0, 1)).await, ["stale"]);
}

/// An update older than the one indexed returns `false` and changes nothing: not the position,
/// not the report time, not the availability.
pub async fn an_older_update_is_ignored_and_does_not_move_the_driver<G: GeoIndex + ?Sized>(
    index: &G,
) {
    let tenant = fresh_tenant();
    let here = at(100.0, 0.0);
    assert_eq!(
        update(index, &tenant, &[position("d", here, T0)]).await,
        [true]
    );
    let late = [
        position("d", at(0.0, 1_500.0), T0 - 1_000),
        unavailable("d", at(0.0, 1_500.0), T0 - 1),
    ];
    assert_eq!(update(index, &tenant, &late).await, [false, false]);
    let found = nearest(index, &tenant, &around(2_000.0, 10)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_near(&found[0], here);
    assert_eq!(found[0].at_ms, T0);
    // A newer one moves it.
    let there = at(0.0, 1_500.0);
    assert_eq!(
        update(index, &tenant, &[position("d", there, T0 + 1)]).await,
        [true]
    );
    assert_near(
        &nearest(index, &tenant, &around(2_000.0, 10)).await[0],
        there,
    );
}

/// An update as old as the one indexed (a ping delivered twice, or another one stamped the same
/// millisecond) returns `false` and moves nothing.
pub async fn a_duplicate_update_is_ignored<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let here = at(0.0, 250.0);
    assert_eq!(
        update(index, &tenant, &[position("d", here, T0)]).await,
        [true]
    );
    assert_eq!(
        update(index, &tenant, &[position("d", here, T0)]).await,
        [false]
    );
    assert_eq!(
        update(index, &tenant, &[unavailable("d", at(900.0, 0.0), T0)]).await,
        [false]
    );
    let found = nearest(index, &tenant, &around(2_000.0, 10)).await;
    assert_eq!(found.len(), 1, "still available: {found:?}");
    assert_near(&found[0], here);
}

/// A ping saying the driver takes no rides hides it; a later one saying it does brings it back.
pub async fn an_unavailable_ping_hides_the_driver_until_an_available_one<G: GeoIndex + ?Sized>(
    index: &G,
) {
    let tenant = fresh_tenant();
    update(
        index,
        &tenant,
        &[
            position("d", at(100.0, 0.0), T0),
            position("other", at(800.0, 0.0), T0),
        ],
    )
    .await;
    assert_eq!(
        update(index, &tenant, &[unavailable("d", at(120.0, 0.0), T0 + 1)]).await,
        [true]
    );
    assert_eq!(ids(index, &tenant, &around(2_000.0, 10)).await, ["other"]);
    assert_eq!(
        update(index, &tenant, &[position("d", at(150.0, 0.0), T0 + 2)]).await,
        [true]
    );
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["d", "other"]
    );
}

/// A busy driver is hidden; an older event freeing it is ignored (`false`), a newer one frees it,
/// and an event as old as the one that set the flag is ignored too. The flag outlives the
/// driver's position updates.
pub async fn busy_hides_a_driver_until_a_newer_event_frees_it<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    update(
        index,
        &tenant,
        &[
            position("d", at(100.0, 0.0), T0),
            position("other", at(800.0, 0.0), T0),
        ],
    )
    .await;
    assert!(set_busy(index, &tenant, "d", true, T0 + 10).await);
    assert_eq!(ids(index, &tenant, &around(2_000.0, 10)).await, ["other"]);
    // Pings keep coming during the ride: the driver stays busy.
    assert_eq!(
        update(index, &tenant, &[position("d", at(110.0, 0.0), T0 + 20)]).await,
        [true]
    );
    assert_eq!(ids(index, &tenant, &around(2_000.0, 10)).await, ["other"]);

    assert!(!set_busy(index, &tenant, "d", false, T0 + 5).await, "older");
    assert_eq!(ids(index, &tenant, &around(2_000.0, 10)).await, ["other"]);
    assert!(set_busy(index, &tenant, "d", false, T0 + 30).await);
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["d", "other"]
    );
    assert!(
        !set_busy(index, &tenant, "d", true, T0 + 30).await,
        "as old"
    );
    assert!(!set_busy(index, &tenant, "d", true, T0 + 25).await, "older");
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["d", "other"]
    );
}

/// A ride event that arrives before the driver's first position sets the flag that position
/// then finds.
pub async fn a_busy_flag_set_before_the_first_position_is_kept<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    assert!(set_busy(index, &tenant, "early", true, T0).await);
    assert!(ids(index, &tenant, &around(2_000.0, 10)).await.is_empty());
    assert_eq!(
        update(
            index,
            &tenant,
            &[position("early", at(100.0, 0.0), T0 - 5_000)]
        )
        .await,
        [true],
        "the first position is applied whatever its time"
    );
    assert!(ids(index, &tenant, &around(2_000.0, 10)).await.is_empty());
    assert!(!set_busy(index, &tenant, "early", false, T0 - 1).await);
    assert!(set_busy(index, &tenant, "early", false, T0 + 1).await);
    assert_eq!(ids(index, &tenant, &around(2_000.0, 10)).await, ["early"]);
}

/// A search for a vehicle type finds only drivers of that type, by their latest report; a search
/// without one finds every type and drivers with none.
pub async fn the_vehicle_type_filter_keeps_only_that_type<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let positions = [
        with_vehicle("car1", at(100.0, 0.0), T0, "car"),
        with_vehicle("bike1", at(200.0, 0.0), T0, "bike"),
        position("plain", at(300.0, 0.0), T0),
        with_vehicle("car2", at(400.0, 0.0), T0, "car"),
    ];
    update(index, &tenant, &positions).await;
    let of = |vehicle: &str| NearbyQuery {
        vehicle_type: Some(vehicle.to_owned()),
        ..around(2_000.0, 10)
    };
    assert_eq!(ids(index, &tenant, &of("car")).await, ["car1", "car2"]);
    assert_eq!(ids(index, &tenant, &of("bike")).await, ["bike1"]);
    assert!(ids(index, &tenant, &of("van")).await.is_empty());
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 10)).await,
        ["car1", "bike1", "plain", "car2"]
    );
    let found = nearest(index, &tenant, &of("bike")).await;
    assert_eq!(found[0].vehicle_type.as_deref(), Some("bike"));
    // The latest report's type counts: the bike is now a car, the plain driver a bike.
    update(
        index,
        &tenant,
        &[
            with_vehicle("bike1", at(200.0, 0.0), T0 + 1, "car"),
            with_vehicle("plain", at(300.0, 0.0), T0 + 1, "bike"),
        ],
    )
    .await;
    assert_eq!(
        ids(index, &tenant, &of("car")).await,
        ["car1", "bike1", "car2"]
    );
    assert_eq!(ids(index, &tenant, &of("bike")).await, ["plain"]);
    let found = nearest(index, &tenant, &around(2_000.0, 10)).await;
    assert_eq!(found[0].vehicle_type.as_deref(), Some("car"));
}

/// The same driver id in two tenants is two drivers: positions, busy flags and housekeeping of
/// one never reach the other, and a search of one never sees the other's drivers.
pub async fn tenants_are_isolated<G: GeoIndex + ?Sized>(index: &G) {
    let (acme, globex) = (fresh_tenant(), fresh_tenant());
    let acme_place = at(100.0, 0.0);
    let globex_place = at(0.0, 5_000.0);
    update(index, &acme, &[position("d1", acme_place, T0)]).await;
    update(index, &globex, &[position("d1", globex_place, T0 - 10)]).await;
    update(index, &globex, &[position("g-only", at(50.0, 0.0), T0)]).await;

    let found = nearest(index, &acme, &around(10_000.0, 10)).await;
    assert_eq!(found.len(), 1, "acme sees only its own: {found:?}");
    assert_near(&found[0], acme_place);
    let found = nearest(index, &globex, &around(10_000.0, 10)).await;
    let globex_ids: Vec<&str> = found.iter().map(|d| d.driver_id.as_str()).collect();
    assert_eq!(globex_ids, ["g-only", "d1"]);
    assert_near(&found[1], globex_place);
    assert_eq!(
        found[1].at_ms,
        T0 - 10,
        "acme's newer report did not reach globex"
    );

    assert!(set_busy(index, &acme, "d1", true, T0).await);
    assert_eq!(
        ids(index, &globex, &around(10_000.0, 10)).await,
        ["g-only", "d1"],
        "acme's busy flag is acme's"
    );
    assert_eq!(
        index
            .forget_older_than(&globex, T0 + 1)
            .await
            .expect("forget"),
        2
    );
    assert!(ids(index, &globex, &around(10_000.0, 10)).await.is_empty());
    assert!(set_busy(index, &acme, "d1", false, T0 + 1).await);
    assert_eq!(ids(index, &acme, &around(10_000.0, 10)).await, ["d1"]);
    assert!(
        ids(index, &fresh_tenant(), &around(MAX_RADIUS_M, 10))
            .await
            .is_empty(),
        "a tenant without drivers finds none"
    );
}

/// Fifty busy, unavailable, stale or other-vehicle drivers crowd the centre; the three that
/// qualify, farther out within the radius, are still found, nearest first (an adapter that
/// filters after a bounded search must widen it).
pub async fn free_drivers_beyond_many_filtered_ones_are_found<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let mut positions = Vec::new();
    for i in 0..50 {
        let place = at(2.0 * f64::from(i), 3.0 * f64::from(i % 7));
        let id = format!("crowd{i:02}");
        positions.push(match i % 4 {
            0 | 1 => with_vehicle(&id, place, T0, "car"),
            2 => DriverPosition {
                available: false,
                ..with_vehicle(&id, place, T0, "car")
            },
            _ => with_vehicle(&id, place, FRESH_SINCE - 1, "car"),
        });
    }
    positions.push(with_vehicle("free-far", at(1_800.0, 0.0), T0, "car"));
    positions.push(with_vehicle("free-near", at(0.0, -1_000.0), T0, "car"));
    positions.push(with_vehicle("free-mid", at(-1_300.0, 0.0), T0, "car"));
    positions.push(with_vehicle("bike", at(500.0, 0.0), T0, "bike"));
    update(index, &tenant, &positions).await;
    for i in (0..50).filter(|i| i % 4 < 2) {
        assert!(set_busy(index, &tenant, &format!("crowd{i:02}"), true, T0).await);
    }
    let cars = |limit| NearbyQuery {
        vehicle_type: Some("car".to_owned()),
        ..around(2_000.0, limit)
    };
    assert_eq!(
        ids(index, &tenant, &cars(3)).await,
        ["free-near", "free-mid", "free-far"]
    );
    assert_eq!(ids(index, &tenant, &cars(1)).await, ["free-near"]);
    assert_eq!(
        ids(index, &tenant, &cars(10)).await,
        ["free-near", "free-mid", "free-far"]
    );
    assert_eq!(
        ids(index, &tenant, &around(2_000.0, 1)).await,
        ["bike"],
        "without the vehicle filter the bike is nearest"
    );
}

/// Among many drivers, some of them filtered out, a search returns exactly the nearest
/// qualifying ones in order.
pub async fn the_nearest_of_many_come_back_in_order<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    // Driver i sits 40·(i + 1) m from the centre, on a spiral; every third one is unavailable,
    // every fifth one busy.
    let positions: Vec<DriverPosition> = (0..300)
        .map(|i| {
            let distance = 40.0 * f64::from(i + 1);
            let angle = f64::from(i) * 2.4;
            let place = at(distance * angle.cos(), distance * angle.sin());
            let id = format!("d{i:03}");
            if i % 3 == 0 {
                unavailable(&id, place, T0)
            } else {
                position(&id, place, T0)
            }
        })
        .collect();
    update(index, &tenant, &positions).await;
    for i in (0..300).filter(|i| i % 5 == 0) {
        assert!(set_busy(index, &tenant, &format!("d{i:03}"), true, T0).await);
    }
    let qualifying = |radius_m: f64, limit: usize| -> Vec<String> {
        (0..300_u32)
            .filter(|i| i % 3 != 0 && i % 5 != 0 && 40.0 * f64::from(i + 1) <= radius_m)
            .take(limit)
            .map(|i| format!("d{i:03}"))
            .collect()
    };
    // Radii 10 to 20 m from the nearest driver, several times what adapters may differ by.
    for (radius_m, limit) in [(5_020.0, 20), (12_010.0, 500), (1_010.0, 50), (8_020.0, 1)] {
        assert_eq!(
            ids(index, &tenant, &around(radius_m, limit)).await,
            qualifying(radius_m, limit),
            "radius {radius_m} m, limit {limit}"
        );
    }
}

/// Housekeeping forgets the drivers whose latest report is older than the cut — and only them —
/// and says how many; forgetting again finds none.
pub async fn forget_older_than_removes_only_older_drivers<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let cut = T0 - 300_000;
    let positions = [
        position("old1", at(100.0, 0.0), cut - 600_000),
        position("old2", at(200.0, 0.0), cut - 1),
        unavailable("old3", at(300.0, 0.0), cut - 50_000),
        position("kept-at-cut", at(400.0, 0.0), cut),
        position("kept", at(500.0, 0.0), T0),
        // Old once, reported again since: judged by its latest report.
        position("renewed", at(600.0, 0.0), cut - 10),
        position("renewed", at(600.0, 0.0), T0),
    ];
    update(index, &tenant, &positions).await;
    assert!(set_busy(index, &tenant, "kept", false, cut - 900_000).await);
    assert_eq!(
        index.forget_older_than(&tenant, cut).await.expect("forget"),
        3
    );
    assert_eq!(
        index.forget_older_than(&tenant, cut).await.expect("forget"),
        0
    );
    let everyone = NearbyQuery {
        fresh_since_ms: 0,
        ..around(2_000.0, 10)
    };
    assert_eq!(
        ids(index, &tenant, &everyone).await,
        ["kept-at-cut", "kept", "renewed"]
    );
    assert_eq!(
        index
            .forget_older_than(&fresh_tenant(), T0)
            .await
            .expect("forget"),
        0
    );
}

/// The positions of one batch apply in order, each judged against the ones before it: of two
/// positions of one driver the newer wins, whichever comes first.
pub async fn a_batch_applies_in_order<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let (first, second) = (at(100.0, 0.0), at(0.0, 700.0));
    let batch = [
        position("newer-first", second, T0 + 2),
        position("newer-first", first, T0 + 1),
        position("older-first", first, T0 + 1),
        position("older-first", second, T0 + 2),
        position("twice", first, T0),
        position("twice", first, T0),
    ];
    assert_eq!(
        update(index, &tenant, &batch).await,
        [true, false, true, true, true, false]
    );
    let found = nearest(index, &tenant, &around(2_000.0, 10)).await;
    let find = |id: &str| {
        found
            .iter()
            .find(|driver| driver.driver_id == id)
            .unwrap_or_else(|| panic!("{id} in {found:?}"))
    };
    for id in ["newer-first", "older-first"] {
        assert_near(find(id), second);
        assert_eq!(find(id).at_ms, T0 + 2);
    }
    assert_near(find("twice"), first);
    assert!(update(index, &tenant, &[]).await.is_empty());
}

/// A position or a search outside the limits is a caller error, refused without retry; a batch
/// with one invalid position applies none of it.
pub async fn invalid_positions_and_queries_are_refused<G: GeoIndex + ?Sized>(index: &G) {
    let tenant = fresh_tenant();
    let good = position("good", at(100.0, 0.0), T0);
    let bad_positions = [
        position("nan", (f64::NAN, CENTRE.1), T0),
        position("north", (86.0, CENTRE.1), T0),
        position("east", (CENTRE.0, 180.5), T0),
        position("", at(0.0, 0.0), T0),
    ];
    for bad in bad_positions {
        let err = index
            .update(&tenant, &[good.clone(), bad.clone()])
            .await
            .expect_err("an invalid position");
        assert!(matches!(err, PortError::Invalid(_)), "{bad:?}: {err}");
        assert!(!err.is_retryable(), "{err}");
    }
    let everyone = NearbyQuery {
        fresh_since_ms: 0,
        ..around(2_000.0, 10)
    };
    assert!(
        ids(index, &tenant, &everyone).await.is_empty(),
        "nothing of a refused batch was applied"
    );

    let bad_queries = [
        around(MAX_RADIUS_M + 1.0, 10),
        around(-1.0, 10),
        around(f64::NAN, 10),
        around(1_000.0, MAX_NEARBY + 1),
        NearbyQuery {
            lat: 91.0,
            ..around(1_000.0, 10)
        },
        NearbyQuery {
            lng: f64::INFINITY,
            ..around(1_000.0, 10)
        },
    ];
    for bad in bad_queries {
        let err = index
            .nearest(&tenant, &bad)
            .await
            .expect_err("an invalid query");
        assert!(matches!(err, PortError::Invalid(_)), "{bad:?}: {err}");
    }
    let err = index
        .set_busy(&tenant, "", true, T0)
        .await
        .expect_err("an empty driver id");
    assert!(matches!(err, PortError::Invalid(_)), "{err}");
}
