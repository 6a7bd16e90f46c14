//! Rides end to end, on the embedded default and on PostgreSQL + Kafka + Redis: the lifecycle
//! with every invalid transition and idempotent repeat, fares at placement, trails and histories;
//! 200 concurrent dispatches racing for 50 drivers; stale and out-of-order pings never matched; a
//! driver on a ride never matched again and out of the surge supply; and the `dispatch` processor
//! killed with SIGKILL mid-stream.

mod common;

use std::collections::{HashMap, HashSet};

use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use pulse::Config;
use pulse_core::log::OutgoingRecord;
use pulse_proto::v1::{ride_event::Kind, DriverLocationUpdated, RideEvent};
use pulse_proto::Message;
use pulse_runtime::Role;
use serde_json::{json, Value};

/// Rides as an operator runs them, with retries and freshness short enough for a test.
trait RideMode {
    fn configure(&self, config: &mut Config, auto: bool);
}

impl RideMode for Mode {
    fn configure(&self, config: &mut Config, auto: bool) {
        config.dispatch.auto = auto;
        config.dispatch.retry_for_ms = 3_000;
        config.dispatch.retry_every_ms = 300;
        config.tracker.max_age_ms = 30_000;
        self.backends(config);
    }
}

async fn app(mode: &Mode, auto: bool) -> TestApp {
    TestApp::spawn(|config| mode.configure(config, auto)).await
}

/// A point `east_m` metres east of (`lat`, `lng`).
fn east_of(lat: f64, lng: f64, east_m: f64) -> (f64, f64) {
    (lat, lng + east_m / (111_320.0 * lat.to_radians().cos()))
}

async fn ping(app: &TestApp, driver: &str, at: (f64, f64), available: bool, vehicle: &str) {
    let (status, body) = app
        .post_json(
            &format!("/api/v1/drivers/{driver}/location"),
            &json!({"lat": at.0, "lng": at.1, "available": available, "vehicle_type": vehicle}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

async fn place(app: &TestApp, user: &str, at: (f64, f64), vehicle: Option<&str>) -> Value {
    let mut body = json!({"user_id": user, "pickup": {"lat": at.0, "lng": at.1},
        "dropoff": {"lat": at.0 + 0.02, "lng": at.1}});
    if let Some(vehicle) = vehicle {
        body["vehicle_type"] = json!(vehicle);
    }
    let (status, order) = app.post_json("/api/v1/orders", &body).await;
    assert_eq!(status, 201, "{order}");
    order
}

async fn order(app: &TestApp, id: &str) -> Value {
    let (status, order) = app.get_json(&format!("/api/v1/orders/{id}")).await;
    assert_eq!(status, 200, "{order}");
    order
}

/// Polls `GET` of `path` until `want` holds (30 s at most).
async fn wait_for(app: &TestApp, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = app.get_json(path).await;
        if status == 200 && want(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The drivers `GET /api/v1/drivers/nearby` finds around `at`.
async fn nearby(app: &TestApp, at: (f64, f64), extra: &str) -> Vec<String> {
    let (status, body) = app
        .get_json(&format!(
            "/api/v1/drivers/nearby?lat={}&lng={}&radius_m=5000&limit=500{extra}",
            at.0, at.1
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|driver| driver["driver_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_nearby(app: &TestApp, at: (f64, f64), want: impl Fn(&[String]) -> bool) {
    let started = Instant::now();
    loop {
        let found = nearby(app, at, "").await;
        if want(&found) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nearby never got there: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    app.post_json(path, body).await
}

/// The kinds of `rides.events` for `order_id`, read from the start of the topic until `count`
/// arrived (and a little longer, to see a second copy).
async fn ride_events(app: &TestApp, order_id: &str, count: usize) -> Vec<Kind> {
    let topic = format!("{}rides.events", common::test_prefix());
    let mut consumer = app
        .log
        .consumer(&pulse_conformance::unique_name("probe"), &[topic.as_str()])
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let started = Instant::now();
    let mut settled = None;
    loop {
        for record in consumer
            .poll(500, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let event = RideEvent::decode(record.payload.as_ref()).expect("a ride event");
            if event.order_id == order_id {
                kinds.push(Kind::try_from(event.kind).unwrap());
            }
        }
        if kinds.len() >= count {
            let since = *settled.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                return kinds;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {kinds:?} on rides.events"
        );
    }
}

async fn the_lifecycle_runs_end_to_end(mode: Mode) {
    let app = app(&mode, true).await;
    let here = common::unique_point();
    ping(&app, "lc-d1", here, true, "car").await;
    ping(&app, "lc-bike", east_of(here.0, here.1, 50.0), true, "bike").await;
    wait_nearby(&app, here, |found| found.len() == 2).await;

    // A car is asked for: the nearer bike is not matched.
    let placed = place(&app, "rider-lc", here, Some("car")).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    assert_eq!(placed["status"], "PENDING");
    assert!(
        placed["price"]["total"]["amount_minor"].as_i64().unwrap() > 0,
        "a fare at placement without a quote: {placed}"
    );
    let matched = wait_for(&app, &format!("/api/v1/orders/{id}"), |order| {
        order["status"] == "MATCHED"
    })
    .await;
    assert_eq!(matched["driver_id"], "lc-d1", "{matched}");
    assert_eq!(
        matched["price"], placed["price"],
        "the fare stays as placed"
    );
    // The matched driver is no longer proposed nearby, whatever its pings say.
    ping(&app, "lc-d1", here, true, "car").await;
    wait_nearby(&app, here, |found| found == ["lc-bike"]).await;

    // Repeats answer 200 and change nothing; every other move is 409 naming the state.
    let (status, again) = post(&app, &format!("/api/v1/orders/{id}/dispatch"), &json!({})).await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)), "{again}");
    let status_of = |status: &str, driver: &str| json!({"status": status, "driver_id": driver});
    let path = format!("/api/v1/orders/{id}/status");
    let (status, refused) = post(&app, &path, &status_of("FINISHED", "lc-d1")).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_transition");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MATCHED"),
        "{refused}"
    );
    let (status, refused) = post(&app, &path, &status_of("STARTED", "lc-bike")).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("not_the_driver"))
    );
    let (status, refused) = post(&app, &path, &status_of("PENDING", "lc-d1")).await;
    assert_eq!(status, 400, "{refused}");
    let (status, started) = post(&app, &path, &status_of("STARTED", "lc-d1")).await;
    assert_eq!(
        (status, &started["changed"]),
        (200, &json!(true)),
        "{started}"
    );
    assert_eq!(started["order"]["status"], "STARTED");
    let (status, again) = post(&app, &path, &status_of("STARTED", "lc-d1")).await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)), "{again}");
    let (status, refused) = post(&app, &format!("/api/v1/orders/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "a started ride cannot be cancelled: {refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("STARTED"));

    // The ride keeps its driver's trail.
    for step in 1..=3 {
        ping(
            &app,
            "lc-d1",
            east_of(here.0, here.1, 100.0 * step as f64),
            true,
            "car",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trail = wait_for(&app, &format!("/api/v1/orders/{id}/trail"), |trail| {
        trail["points"].as_array().unwrap().len() >= 4
    })
    .await;
    let points = trail["points"].as_array().unwrap();
    let last = points.last().unwrap();
    assert!((last["lng"].as_f64().unwrap() - east_of(here.0, here.1, 300.0).1).abs() < 1e-9);

    let (status, finished) = post(&app, &path, &status_of("FINISHED", "lc-d1")).await;
    assert_eq!(
        (status, &finished["changed"]),
        (200, &json!(true)),
        "{finished}"
    );
    let (status, again) = post(&app, &path, &status_of("FINISHED", "lc-d1")).await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)));
    let (status, refused) = post(&app, &path, &status_of("STARTED", "lc-d1")).await;
    assert_eq!(status, 409, "{refused}");

    let done = order(&app, &id).await;
    let history: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["PENDING", "MATCHED", "STARTED", "FINISHED"],
        "{done}"
    );
    assert_eq!(done["history"][1]["driver_id"], "lc-d1");
    // One event per transition made, none for the repeats.
    assert_eq!(
        ride_events(&app, &id, 3).await,
        [Kind::Matched, Kind::Started, Kind::Finished]
    );
    // The driver is free again, and both histories list the ride.
    wait_nearby(&app, here, |found| found.contains(&"lc-d1".to_owned())).await;
    let (_, rides) = app.get_json("/api/v1/drivers/lc-d1/rides").await;
    assert_eq!(rides["rides"][0]["order_id"], json!(id), "{rides}");
    let (_, rides) = app.get_json("/api/v1/riders/rider-lc/rides?limit=1").await;
    assert_eq!(rides["rides"][0]["status"], "FINISHED", "{rides}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_the_lifecycle_runs_end_to_end() {
    the_lifecycle_runs_end_to_end(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_the_lifecycle_runs_end_to_end() {
    the_lifecycle_runs_end_to_end(Mode::distributed().await).await;
}

async fn a_cancelled_ride_frees_its_driver_and_histories_page(mode: Mode) {
    let app = app(&mode, false).await;
    let here = common::unique_point();
    ping(&app, "cx-d1", here, true, "car").await;
    wait_nearby(&app, here, |found| found.len() == 1).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let order = place(&app, "rider-cx", here, None).await;
        let id = order["order_id"].as_str().unwrap().to_owned();
        // The index follows the rides' events: right after the previous cancellation it may
        // still hold the driver busy, and a dispatch then finds none (as a client, retry).
        let started = Instant::now();
        let matched = loop {
            let (status, matched) =
                post(&app, &format!("/api/v1/orders/{id}/dispatch"), &json!({})).await;
            if status == 200 {
                break matched;
            }
            assert_eq!(matched["error"]["code"], "no_driver", "{matched}");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never matched: {matched}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(matched["order"]["driver_id"], "cx-d1");
        let (status, cancelled) =
            post(&app, &format!("/api/v1/orders/{id}/cancel"), &json!({})).await;
        assert_eq!(
            (status, &cancelled["order"]["status"]),
            (200, &json!("CANCELLED"))
        );
        let (status, again) = post(&app, &format!("/api/v1/orders/{id}/cancel"), &json!({})).await;
        assert_eq!((status, &again["changed"]), (200, &json!(false)));
        let (status, refused) =
            post(&app, &format!("/api/v1/orders/{id}/dispatch"), &json!({})).await;
        assert_eq!(
            status, 409,
            "a cancelled order is not dispatched: {refused}"
        );
        ids.push(id);
    }
    // A pending order cancels too, and the rider's history pages newest first.
    let pending = place(&app, "rider-cx", here, None).await;
    let pending_id = pending["order_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &app,
        &format!("/api/v1/orders/{pending_id}/cancel"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    ids.push(pending_id);
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/v1/riders/rider-cx/rides?limit=3".to_owned();
    loop {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        for ride in page["rides"].as_array().unwrap() {
            seen.push(ride["order_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/riders/rider-cx/rides?limit=3&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (status, unknown) = app
        .get_json(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{unknown}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_cancelled_ride_frees_its_driver_and_histories_page() {
    a_cancelled_ride_frees_its_driver_and_histories_page(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_a_cancelled_ride_frees_its_driver_and_histories_page() {
    a_cancelled_ride_frees_its_driver_and_histories_page(Mode::distributed().await).await;
}

async fn two_hundred_dispatches_share_fifty_drivers(mode: Mode) {
    let app = app(&mode, false).await;
    let here = common::unique_point();
    let drivers: Vec<String> = (0..50).map(|i| format!("race-{i}")).collect();
    let locations: Vec<Value> = drivers
        .iter()
        .enumerate()
        .map(|(i, driver)| {
            let at = east_of(here.0, here.1, 20.0 * i as f64);
            json!({"driver_id": driver, "lat": at.0, "lng": at.1, "available": true})
        })
        .collect();
    let (status, body) = app
        .post_json(
            "/api/v1/drivers/locations",
            &json!({"locations": locations}),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (202, &json!(50)), "{body}");
    wait_nearby(&app, here, |found| found.len() == 50).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let order = place(&app, &format!("racer-{i}"), here, None).await;
        ids.push(order["order_id"].as_str().unwrap().to_owned());
    }
    let mut dispatches = tokio::task::JoinSet::new();
    for id in &ids {
        let client = app.client();
        let url = format!("{}/api/v1/orders/{id}/dispatch", app.base);
        dispatches.spawn(async move {
            let response = client.post(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    let answers = dispatches.join_all().await;
    let mut matched = HashMap::new();
    let mut no_driver = 0;
    for (status, body) in answers {
        match status {
            200 => {
                let driver = body["order"]["driver_id"].as_str().unwrap().to_owned();
                let order = body["order"]["order_id"].as_str().unwrap().to_owned();
                assert!(
                    matched.insert(driver.clone(), order).is_none(),
                    "{driver} matched twice"
                );
            }
            409 => {
                assert_eq!(body["error"]["code"], "no_driver", "{body}");
                no_driver += 1;
            }
            other => panic!("dispatch answered {other}: {body}"),
        }
    }
    assert_eq!((matched.len(), no_driver), (50, 150));
    // The store agrees: each matched order holds its driver.
    for (driver, id) in matched.iter().take(10) {
        assert_eq!(order(&app, id).await["driver_id"], json!(driver));
    }
    app.stop().await;
}

#[tokio::test]
async fn embedded_two_hundred_dispatches_share_fifty_drivers() {
    two_hundred_dispatches_share_fifty_drivers(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_two_hundred_dispatches_share_fifty_drivers() {
    two_hundred_dispatches_share_fifty_drivers(Mode::distributed().await).await;
}

/// A ping appended straight to `supply.updates` with its own report time (the gateway stamps
/// pings with its clock, so only the log can hold one that arrives out of order), under record
/// key `key`: records of one key keep their order, so a ping keyed like another driver's is
/// handled after that driver's earlier ones.
async fn ping_at(
    app: &TestApp,
    key: &str,
    driver: &str,
    at: (f64, f64),
    available: bool,
    at_ms: i64,
) {
    let event = DriverLocationUpdated {
        driver_id: driver.to_owned(),
        h3: pulse_geo::Point::new(at.0, at.1)
            .unwrap()
            .cell()
            .to_string(),
        available,
        timestamp: at_ms,
        lat: at.0,
        lng: at.1,
        vehicle_type: String::new(),
    };
    app.log
        .append(
            &common::names().supply,
            vec![OutgoingRecord::keyed(key.to_owned(), event.encode_to_vec())],
        )
        .await
        .expect("append a ping");
}

async fn stale_and_out_of_order_pings_are_never_matched(mode: Mode) {
    let app = TestApp::spawn(|config| {
        mode.configure(config, false);
        config.tracker.max_age_ms = 1_500;
    })
    .await;
    let here = common::unique_point();
    // Beyond every search radius around `here` (5 km at most).
    let far = east_of(here.0, here.1, 8_000.0);
    let now = pulse_core::clock::Clock::now_ms(&pulse_core::clock::SystemClock);
    // All keyed `ooo-d`, so they are handled in this order (one partition):
    // a driver whose latest ping is already older than the tracker's freshness;
    ping_at(&app, "ooo-d", "old-d", here, true, now - 5_000).await;
    // a driver here now, then an older ping of it from far away, unavailable: ignored;
    ping(&app, "ooo-d", here, true, "car").await;
    ping_at(&app, "ooo-d", "ooo-d", far, false, now - 1_000).await;
    // a marker: once it is indexed, so are the pings before it.
    ping_at(&app, "ooo-d", "marker-d", far, true, now).await;
    wait_nearby(&app, far, |found| found.contains(&"marker-d".to_owned())).await;
    assert_eq!(
        nearby(&app, here, "").await,
        ["ooo-d"],
        "the stale driver is never shown"
    );
    assert!(!nearby(&app, far, "").await.contains(&"ooo-d".to_owned()));

    // The fresh driver is matched, even though an older ping said it went offline.
    let first = place(&app, "rider-ooo", here, None).await;
    let (status, matched) = post(
        &app,
        &format!(
            "/api/v1/orders/{}/dispatch",
            first["order_id"].as_str().unwrap()
        ),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{matched}");
    assert_eq!(matched["order"]["driver_id"], "ooo-d");
    // On its ride it is never matched again, though it keeps pinging available; the stale one
    // is never matched at all.
    ping(&app, "ooo-d", here, true, "car").await;
    ping(&app, "marker-d", far, false, "car").await;
    wait_nearby(&app, far, |found| found.is_empty()).await;
    let second = place(&app, "rider-ooo2", here, None).await;
    let (status, refused) = post(
        &app,
        &format!(
            "/api/v1/orders/{}/dispatch",
            second["order_id"].as_str().unwrap()
        ),
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("no_driver")),
        "{refused}"
    );
    // Once the ping is too old, the driver leaves the index's answers by itself.
    ping(&app, "fresh-d", here, true, "car").await;
    wait_nearby(&app, here, |found| found == ["fresh-d"]).await;
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert!(
        nearby(&app, here, "").await.is_empty(),
        "a ping older than max_age is not shown"
    );
    app.stop().await;
}

#[tokio::test]
async fn embedded_stale_and_out_of_order_pings_are_never_matched() {
    stale_and_out_of_order_pings_are_never_matched(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_stale_and_out_of_order_pings_are_never_matched() {
    stale_and_out_of_order_pings_are_never_matched(Mode::distributed().await).await;
}

/// The quote's multiplier at `at`.
async fn multiplier(app: &TestApp, at: (f64, f64)) -> f64 {
    common::multiplier_at(app, at.0, at.1)
        .await
        .as_f64()
        .unwrap()
}

async fn matched_drivers_leave_the_surge_supply(mode: Mode) {
    // The seed's example: 6 orders and 4 available drivers in one cell, 1 + 6/4 = 2.5; as the
    // dispatcher matches the 4 drivers, the supply falls to 0 and the surge to 1 + 2.5 = 3.5.
    let app = app(&mode, true).await;
    let here = common::unique_point();
    for i in 0..4 {
        ping(&app, &format!("surge-d{i}"), here, true, "car").await;
    }
    wait_nearby(&app, here, |found| found.len() == 4).await;
    for i in 0..6 {
        place(&app, &format!("surge-r{i}"), here, None).await;
    }
    let started = Instant::now();
    loop {
        let now = multiplier(&app, here).await;
        if (now - 3.5).abs() < 1e-9 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the surge stayed at {now}: the matched drivers still count"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn embedded_matched_drivers_leave_the_surge_supply() {
    matched_drivers_leave_the_surge_supply(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_matched_drivers_leave_the_surge_supply() {
    matched_drivers_leave_the_surge_supply(Mode::distributed().await).await;
}

/// A `pulse serve --role dispatch` process on the distributed backends.
fn dispatch_process(store_url: &str, prefix: &str) -> common::Killed {
    common::serve_role(
        "dispatch",
        store_url,
        prefix,
        &[
            ("PULSE_DISPATCH__AUTO", "true"),
            // Long enough for a new process to join its group (a Kafka rebalance takes
            // seconds) before the orders waiting for it are given up on.
            ("PULSE_DISPATCH__RETRY_FOR_MS", "12000"),
            ("PULSE_DISPATCH__RETRY_EVERY_MS", "300"),
            ("PULSE_DISPATCH__CONCURRENCY", "4"),
            // The drivers ping once, at the start: they must stay fresh for the whole test.
            ("PULSE_TRACKER__MAX_AGE_MS", "600000"),
        ],
    )
}

#[tokio::test]
async fn distributed_a_dispatcher_killed_mid_stream_matches_every_order_once() {
    let Mode::Distributed { store_url } = Mode::distributed().await else {
        unreachable!()
    };
    let mode = Mode::Distributed {
        store_url: store_url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = common::test_prefix();
    // Everything but the dispatcher in this process; the dispatcher in its own.
    let roles = [Role::Gateway, Role::Relay, Role::Tracker, Role::Engine];
    let app = TestApp::spawn_roles(dir.path(), &roles, |config| {
        mode.configure(config, true);
        config.tracker.max_age_ms = 600_000;
    })
    .await;
    let here = common::unique_point();
    let locations: Vec<Value> = (0..30)
        .map(|i| {
            let at = east_of(here.0, here.1, 30.0 * i as f64);
            json!({"driver_id": format!("kill-{i}"), "lat": at.0, "lng": at.1, "available": true})
        })
        .collect();
    let (status, _) = app
        .post_json(
            "/api/v1/drivers/locations",
            &json!({"locations": locations}),
        )
        .await;
    assert_eq!(status, 202);
    wait_nearby(&app, here, |found| found.len() == 30).await;

    let mut dispatcher = dispatch_process(&store_url, &prefix);
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            place(&app, &format!("killed-{i}"), here, None).await["order_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        if i == 40 {
            // Mid-stream: some orders matched, some in flight, the rest not yet read. Which
            // order is matched first is the partitions' business (orders are keyed by id), so
            // any one will do.
            let started = Instant::now();
            'matched: loop {
                for id in &ids {
                    if order(&app, id).await["status"] == "MATCHED" {
                        break 'matched;
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the dispatcher matched nothing"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            dispatcher.0.kill().expect("SIGKILL");
            dispatcher.0.wait().unwrap();
            dispatcher = dispatch_process(&store_url, &prefix);
        }
    }
    // Every order ends matched or marked no_driver; no driver is matched twice.
    let mut drivers = HashSet::new();
    let mut no_driver = 0;
    for id in &ids {
        let order = wait_for(&app, &format!("/api/v1/orders/{id}"), |order| {
            order["status"] == "MATCHED" || order.get("no_driver").is_some()
        })
        .await;
        match order["driver_id"].as_str() {
            Some(driver) => assert!(drivers.insert(driver.to_owned()), "{driver} twice"),
            None => no_driver += 1,
        }
    }
    assert_eq!((drivers.len(), no_driver), (30, 90));
    drop(dispatcher);
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_fleet_batch_takes_a_thousand_positions_and_no_more() {
    let app = app(&Mode::Embedded, false).await;
    let here = common::unique_point();
    let batch = |count: usize| {
        let locations: Vec<Value> = (0..count)
            .map(|i| {
                let at = east_of(here.0, here.1, i as f64);
                json!({"driver_id": format!("fleet-driver-number-{i:05}"), "lat": at.0,
                       "lng": at.1, "available": true, "vehicle_type": "car"})
            })
            .collect();
        json!({ "locations": locations })
    };
    let (status, body) = app
        .post_json("/api/v1/drivers/locations", &batch(1_000))
        .await;
    assert_eq!((status, &body["accepted"]), (202, &json!(1_000)), "{body}");
    let (status, body) = app
        .post_json("/api/v1/drivers/locations", &batch(1_001))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("1000"),
        "{body}"
    );
    let mut bad = batch(2);
    bad["locations"][1]["lat"] = json!(91.0);
    let (status, body) = app.post_json("/api/v1/drivers/locations", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locations[1]"),
        "{body}"
    );
    wait_nearby(&app, here, |found| found.len() >= 500).await;
    app.stop().await;
}
