//! The wallet end to end, on the embedded default and on PostgreSQL + Kafka: a ride's fare held
//! at the match, posted with its split once the ride finished, released when cancelled; top-ups
//! once per key; one payment delivered three times charged once, a poison payment dead-lettered;
//! 100 holds racing on one wallet with `require_funds` never below zero; and the `wallet`
//! processor killed with SIGKILL while 500 rides finish. `pulse ledger verify` closes each.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Killed, Mode, TestApp};
use futures::StreamExt;
use pulse::Config;
use pulse_core::log::OutgoingRecord;
use pulse_proto::v1::{wallet_transaction, WalletTransaction};
use pulse_proto::Message;
use pulse_runtime::Role;
use serde_json::{json, Value};

/// Rides paid as an operator runs them: dispatch by hand, drivers fresh for the whole test.
trait WalletMode {
    fn configure(&self, config: &mut Config);
    fn verify(&self, data_dir: &Path) -> (bool, String);
}

impl WalletMode for Mode {
    fn configure(&self, config: &mut Config) {
        config.dispatch.auto = false;
        config.tracker.max_age_ms = 600_000;
        self.backends(config);
    }

    /// `pulse ledger verify` on this mode's store; its exit status and its stderr.
    fn verify(&self, data_dir: &Path) -> (bool, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pulse"));
        command
            .args(["ledger", "verify", "--log-level", "warn"])
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("RUST_LOG");
        if let Mode::Distributed { store_url } = self {
            command.args(["--store", store_url]);
        }
        let output = command.output().expect("pulse ledger verify");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn east_of(at: (f64, f64), east_m: f64) -> (f64, f64) {
    (at.0, at.1 + east_m / (111_320.0 * at.0.to_radians().cos()))
}

async fn drivers(app: &TestApp, prefix: &str, count: usize, here: (f64, f64)) {
    let locations: Vec<Value> = (0..count)
        .map(|i| {
            let at = east_of(here, 5.0 * i as f64);
            json!({"driver_id": format!("{prefix}{i}"), "lat": at.0, "lng": at.1, "available": true})
        })
        .collect();
    for chunk in locations.chunks(1_000) {
        let (status, body) = app
            .post_json("/api/v1/drivers/locations", &json!({"locations": chunk}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let started = Instant::now();
    loop {
        let (_, found) = app
            .get_json(&format!(
                "/api/v1/drivers/nearby?lat={}&lng={}&radius_m=5000&limit=500",
                here.0, here.1
            ))
            .await;
        let seen = found["drivers"]
            .as_array()
            .map_or(0, |drivers| drivers.len());
        if seen >= count.min(500) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the drivers never showed: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn place(app: &TestApp, user: &str, at: (f64, f64)) -> (u16, Value) {
    app.post_json(
        "/api/v1/orders",
        &json!({"user_id": user, "pickup": {"lat": at.0, "lng": at.1},
            "dropoff": {"lat": at.0 + 0.02, "lng": at.1}}),
    )
    .await
}

/// Places and matches a ride of `user`; its id, driver and fare.
async fn matched_ride(app: &TestApp, user: &str, at: (f64, f64)) -> (String, String, i64) {
    let (status, order) = place(app, user, at).await;
    assert_eq!(status, 201, "{order}");
    let id = order["order_id"].as_str().unwrap().to_owned();
    let fare = order["price"]["total"]["amount_minor"].as_i64().unwrap();
    let (status, matched) = app
        .post_json(&format!("/api/v1/orders/{id}/dispatch"), &json!({}))
        .await;
    assert_eq!(status, 200, "{matched}");
    let driver = matched["order"]["driver_id"].as_str().unwrap().to_owned();
    (id, driver, fare)
}

async fn move_ride(app: &TestApp, id: &str, driver: &str, status: &str) {
    let (code, body) = app
        .post_json(
            &format!("/api/v1/orders/{id}/status"),
            &json!({"status": status, "driver_id": driver}),
        )
        .await;
    assert_eq!(code, 200, "{status}: {body}");
}

async fn wallet(app: &TestApp, path: &str) -> Value {
    let (status, body) = app.get_json(path).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `path` until `want` holds (60 s at most).
async fn wait_for(app: &TestApp, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    wait_up_to(app, path, Duration::from_secs(60), want).await
}

/// Polls `path` until `want` holds, `limit` at most.
async fn wait_up_to(
    app: &TestApp,
    path: &str,
    limit: Duration,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = app.get_json(path).await;
        if status == 200 && want(&body) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "{path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn top_up(app: &TestApp, user: &str, amount: i64, key: &str) -> (u16, Value) {
    app.post_json(
        &format!("/api/v1/riders/{user}/wallet/top-ups"),
        &json!({"amount_minor": amount, "currency": "USD", "idempotency_key": key}),
    )
    .await
}

async fn a_ride_is_held_posted_and_split(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(dir.path(), |config| mode.configure(config)).await;
    let here = common::unique_point();
    drivers(&app, "split-d", 2, here).await;

    // Top-ups: once per key; the same key for another amount is refused.
    let (status, first) = top_up(&app, "rider-split", 5_000, "card-1").await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["wallet"]["balance_minor"], 5_000);
    let (status, again) = top_up(&app, "rider-split", 5_000, "card-1").await;
    assert_eq!((status, &again["created"]), (200, &json!(false)), "{again}");
    assert_eq!(again["transfer"], first["transfer"]);
    let (status, refused) = top_up(&app, "rider-split", 9_000, "card-1").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    let (status, refused) = top_up(&app, "rider-split", 0, "card-2").await;
    assert_eq!(status, 400, "{refused}");

    // The match holds the fare.
    let (id, driver, fare) = matched_ride(&app, "rider-split", here).await;
    let rider = wallet(&app, "/api/v1/riders/rider-split/wallet").await;
    assert_eq!(
        (
            &rider["balance_minor"],
            &rider["pending_minor"],
            &rider["available_minor"]
        ),
        (&json!(5_000), &json!(fare), &json!(5_000 - fare)),
        "{rider}"
    );
    let earnings = wallet(&app, &format!("/api/v1/drivers/{driver}/wallet")).await;
    assert_eq!(earnings["pending_minor"], fare, "{earnings}");

    // Finished: posted by the wallet processor, split 80/20 (the commission rounded down).
    move_ride(&app, &id, &driver, "STARTED").await;
    move_ride(&app, &id, &driver, "FINISHED").await;
    let rider = wait_for(&app, "/api/v1/riders/rider-split/wallet", |wallet| {
        wallet["pending_minor"] == 0
    })
    .await;
    assert_eq!(rider["balance_minor"], 5_000 - fare, "{rider}");
    let commission = fare * 2_000 / 10_000;
    let earnings = wallet(&app, &format!("/api/v1/drivers/{driver}/wallet")).await;
    assert_eq!(
        (&earnings["balance_minor"], &earnings["pending_minor"]),
        (&json!(fare - commission), &json!(0)),
        "{earnings}"
    );
    let totals = wallet(&app, "/api/v1/ledger/totals").await;
    assert_eq!(totals["revenue_minor"], commission, "{totals}");
    assert_eq!(totals["charged_minor"], fare);
    assert_eq!(totals["rides_charged"], 1);
    assert_eq!(
        totals["revenue_minor"].as_i64().unwrap() + totals["drivers_minor"].as_i64().unwrap(),
        fare,
        "the split sums to the fare"
    );
    let entries = wallet(&app, "/api/v1/riders/rider-split/wallet/entries").await;
    let phases: Vec<(&str, i64)> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["phase"].as_str().unwrap(),
                e["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases.len(),
        4,
        "top-up, hold, its release and the charge: {entries}"
    );
    assert!(phases.contains(&("posted", -fare)) && phases.contains(&("pending", -fare)));

    // Cancelled after the match: the hold is released at once, nothing is charged.
    let (id, _driver, fare_2) = matched_ride(&app, "rider-split", here).await;
    let held = wallet(&app, "/api/v1/riders/rider-split/wallet").await;
    assert_eq!(held["pending_minor"], fare_2);
    let (status, body) = app
        .post_json(&format!("/api/v1/orders/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let rider = wallet(&app, "/api/v1/riders/rider-split/wallet").await;
    assert_eq!(
        (&rider["balance_minor"], &rider["pending_minor"]),
        (&json!(5_000 - fare), &json!(0)),
        "{rider}"
    );
    app.stop().await;
    let (ok, said) = mode.verify(dir.path());
    assert!(ok, "pulse ledger verify: {said}");
}

#[tokio::test]
async fn embedded_a_ride_is_held_posted_and_split() {
    a_ride_is_held_posted_and_split(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_a_ride_is_held_posted_and_split() {
    a_ride_is_held_posted_and_split(Mode::distributed().await).await;
}

fn payment(order_id: &str, user: &str, driver: &str, fare: i64, key: &str) -> OutgoingRecord {
    let event = WalletTransaction {
        order_id: order_id.to_owned(),
        kind: wallet_transaction::Kind::PostHold as i32,
        user_id: user.to_owned(),
        driver_id: driver.to_owned(),
        amount_minor: fare,
        currency: "USD".to_owned(),
        timestamp: 1,
    };
    OutgoingRecord::keyed(key.to_owned(), event.encode_to_vec())
}

async fn a_payment_delivered_three_times_charges_once(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(dir.path(), |config| mode.configure(config)).await;
    let here = common::unique_point();
    drivers(&app, "thrice-d", 2, here).await;
    let (a, driver_a, fare_a) = matched_ride(&app, "rider-thrice", here).await;
    move_ride(&app, &a, &driver_a, "STARTED").await;
    move_ride(&app, &a, &driver_a, "FINISHED").await;
    wait_for(&app, "/api/v1/ledger/totals", |t| t["rides_charged"] == 1).await;

    // Two more copies of A's payment, a poison record, then B's payment — all keyed by A, so
    // in one partition in this order: once B is charged, the copies were handled.
    let (b, driver_b, fare_b) = matched_ride(&app, "rider-thrice", here).await;
    let topic = format!("{}wallet.transactions", common::test_prefix());
    let copies = vec![
        payment(&a, "rider-thrice", &driver_a, fare_a, &a),
        payment(&a, "rider-thrice", &driver_a, fare_a, &a),
        OutgoingRecord::keyed(a.clone(), vec![0xff, 0x01]),
        payment(&b, "rider-thrice", &driver_b, fare_b, &a),
    ];
    app.log.append(&topic, copies).await.expect("append");
    let totals = wait_for(&app, "/api/v1/ledger/totals", |t| t["rides_charged"] == 2).await;
    assert_eq!(
        totals["charged_minor"],
        fare_a + fare_b,
        "A charged once: {totals}"
    );
    let rider = wallet(&app, "/api/v1/riders/rider-thrice/wallet").await;
    assert_eq!(rider["balance_minor"], -(fare_a + fare_b), "{rider}");

    // The poison went to the dead letters with its reason.
    let dead = format!("{}pulse.dead-letter", common::test_prefix());
    let mut letters = app
        .log
        .consumer(&pulse_conformance::unique_name("dlq"), &[dead.as_str()])
        .await
        .unwrap();
    let letter = pulse_conformance::event_log::poll_exactly(letters.as_mut(), 1)
        .await
        .remove(0);
    let reason = String::from_utf8_lossy(letter.header("pulse.dlq.reason").unwrap()).into_owned();
    assert!(reason.contains("WalletTransaction"), "{reason}");

    // B finishes later: its own payment finds it posted.
    move_ride(&app, &b, &driver_b, "STARTED").await;
    move_ride(&app, &b, &driver_b, "FINISHED").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = wallet(&app, "/api/v1/ledger/totals").await;
    assert_eq!(totals["rides_charged"], 2, "{totals}");
    app.stop().await;
    let (ok, said) = mode.verify(dir.path());
    assert!(ok, "pulse ledger verify: {said}");
}

#[tokio::test]
async fn embedded_a_payment_delivered_three_times_charges_once() {
    a_payment_delivered_three_times_charges_once(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_a_payment_delivered_three_times_charges_once() {
    a_payment_delivered_three_times_charges_once(Mode::distributed().await).await;
}

async fn concurrent_holds_never_take_a_wallet_below_zero(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(dir.path(), |config| {
        mode.configure(config);
        config.wallet.require_funds = true;
    })
    .await;
    let here = common::unique_point();
    drivers(&app, "race-d", 100, here).await;
    let (status, refused) = place(&app, "rider-race", here).await;
    assert_eq!(status, 402, "an empty wallet pays no fare: {refused}");
    assert_eq!(refused["error"]["code"], "insufficient_funds");

    // Enough for a few rides (fares here are a few dollars); 100 orders placed before any is
    // matched pass the placement check, and then race for the wallet.
    let (status, _) = top_up(&app, "rider-race", 10_000, "race").await;
    assert_eq!(status, 201);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let (status, order) = place(&app, "rider-race", here).await;
        assert_eq!(status, 201, "{order}");
        ids.push(order["order_id"].as_str().unwrap().to_owned());
    }
    let outcomes: Vec<(u16, Value)> = futures::stream::iter(ids.iter())
        .map(|id| {
            let app = &app;
            async move {
                app.post_json(&format!("/api/v1/orders/{id}/dispatch"), &json!({}))
                    .await
            }
        })
        .buffer_unordered(25)
        .collect()
        .await;
    let matched = outcomes.iter().filter(|(status, _)| *status == 200).count();
    for (status, body) in &outcomes {
        assert!(
            *status == 200 || (*status == 402 && body["error"]["code"] == "insufficient_funds"),
            "{status} {body}"
        );
    }
    let rider = wallet(&app, "/api/v1/riders/rider-race/wallet").await;
    assert!(
        rider["available_minor"].as_i64().unwrap() >= 0,
        "below zero: {rider}"
    );
    assert!((1..100).contains(&matched), "{matched} matched: {rider}");
    assert!(
        rider["pending_minor"].as_i64().unwrap() <= 10_000,
        "{rider}"
    );
    let (status, refused) = place(&app, "rider-race", here).await;
    assert_eq!(status, 402, "what is held is not available: {refused}");
    app.stop().await;
    let (ok, said) = mode.verify(dir.path());
    assert!(ok, "pulse ledger verify: {said}");
}

#[tokio::test]
async fn embedded_concurrent_holds_never_take_a_wallet_below_zero() {
    concurrent_holds_never_take_a_wallet_below_zero(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_concurrent_holds_never_take_a_wallet_below_zero() {
    concurrent_holds_never_take_a_wallet_below_zero(Mode::distributed().await).await;
}

fn wallet_process(store_url: &str, prefix: &str) -> Killed {
    common::serve_role("wallet", store_url, prefix, &[])
}

/// Runs `count` rides of riders `{prefix}{n}` to the end, 16 at a time; `each` is called with
/// the number finished so far.
async fn finish_rides(
    app: &TestApp,
    prefix: &str,
    count: usize,
    here: (f64, f64),
    each: impl Fn(usize),
) {
    let done = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |n| {
            let done = &done;
            let each = &each;
            async move {
                let (id, driver, _) = matched_ride(app, &format!("{prefix}{n}"), here).await;
                move_ride(app, &id, &driver, "STARTED").await;
                move_ride(app, &id, &driver, "FINISHED").await;
                each(done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1);
            }
        })
        .await;
}

#[tokio::test]
async fn distributed_a_wallet_killed_while_500_rides_finish_charges_each_once() {
    let Mode::Distributed { store_url } = Mode::distributed().await else {
        unreachable!()
    };
    let mode = Mode::Distributed {
        store_url: store_url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = common::test_prefix();
    let roles = [Role::Gateway, Role::Relay, Role::Tracker];
    let app = TestApp::spawn_roles(dir.path(), &roles, |config| mode.configure(config)).await;
    let here = common::unique_point();
    drivers(&app, "kill9-d", 100, here).await;

    let wallet_proc = std::sync::Mutex::new(Some(wallet_process(&store_url, &prefix)));
    let killed = std::sync::atomic::AtomicBool::new(false);
    finish_rides(&app, "kill9-r", 500, here, |done| {
        // Mid-stream: about half the rides finished, their payments partly posted.
        if done == 250 && !killed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let mut slot = wallet_proc.lock().unwrap();
            if let Some(mut process) = slot.take() {
                process.0.kill().expect("SIGKILL");
                process.0.wait().unwrap();
            }
            *slot = Some(wallet_process(&store_url, &prefix));
        }
    })
    .await;
    // A new member joins the group once the killed one's session lapsed (Kafka's timeout).
    let totals = wait_up_to(
        &app,
        "/api/v1/ledger/totals",
        Duration::from_secs(120),
        |t| t["rides_charged"] == 500,
    )
    .await;
    assert_eq!(totals["held_minor"], 0, "{totals}");
    drop(wallet_proc);
    app.stop().await;
    let (ok, said) = mode.verify(dir.path());
    assert!(ok, "pulse ledger verify: {said}");
}

/// A `pulse up` of its own, killable, and how to speak to it.
struct Up {
    process: Killed,
    api: Remote,
}

/// Pulse's HTTP API, with a key.
#[derive(Clone)]
struct Remote {
    base: String,
    http: reqwest::Client,
}

impl Up {
    async fn start(data_dir: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(["up", "--log-level", "warn"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .env("PULSE_PREFIX", common::test_prefix())
            .env("PULSE_DISPATCH__AUTO", "false")
            .env("PULSE_TRACKER__MAX_AGE_MS", "600000")
            .env("PULSE_QUOTAS__API__PER_SECOND", "1000000")
            .env("PULSE_QUOTAS__API__BURST", "1000000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pulse up");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while !reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "pulse up never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let key = std::fs::read_to_string(data_dir.join("api-key")).expect("the api-key file");
        Self {
            process: Killed(child),
            api: Remote {
                base,
                http: common::client_with_key(key.trim()),
            },
        }
    }
}

impl Remote {
    /// A request's status and JSON body; status 0 when Pulse did not answer.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }
}

/// Drives ride `order_id` (placed already) from wherever it is to FINISHED; `false` when Pulse
/// stopped answering.
async fn drive_to_the_end(up: &Remote, order_id: &str) -> bool {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ride {order_id} never finished"
        );
        let (status, order) = up
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/orders/{order_id}"),
                None,
            )
            .await;
        if status != 200 {
            return false;
        }
        let driver = order["driver_id"].as_str().unwrap_or_default().to_owned();
        let step = match order["status"].as_str() {
            Some("PENDING") => (format!("/api/v1/orders/{order_id}/dispatch"), json!({})),
            Some("MATCHED") => (
                format!("/api/v1/orders/{order_id}/status"),
                json!({"status": "STARTED", "driver_id": driver}),
            ),
            Some("STARTED") => (
                format!("/api/v1/orders/{order_id}/status"),
                json!({"status": "FINISHED", "driver_id": driver}),
            ),
            Some("FINISHED") => return true,
            other => panic!("ride {order_id} is {other:?}"),
        };
        let (status, body) = up.call(reqwest::Method::POST, &step.0, Some(&step.1)).await;
        match status {
            0 => return false,
            200 => {}
            // A driver just freed may still look busy to the index: try again.
            409 if body["error"]["code"] == "no_driver" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("{} answered {status} {body}", step.0),
        }
    }
}

/// Places ride `n` and drives it to the end; its order id when placed, and whether it finished.
async fn ride_through(up: &Remote, n: usize, here: (f64, f64)) -> (Option<String>, bool) {
    let body = json!({"user_id": format!("crash-r{n}"), "pickup": {"lat": here.0, "lng": here.1},
        "dropoff": {"lat": here.0 + 0.02, "lng": here.1}});
    let (status, order) = up
        .call(reqwest::Method::POST, "/api/v1/orders", Some(&body))
        .await;
    if status != 201 {
        return (None, false);
    }
    let id = order["order_id"].as_str().expect("order id").to_owned();
    let finished = drive_to_the_end(up, &id).await;
    (Some(id), finished)
}

#[tokio::test]
async fn embedded_pulse_killed_while_500_rides_finish_charges_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let up = Up::start(dir.path(), port).await;
    let api = up.api.clone();
    let here = common::unique_point();
    let locations: Vec<Value> = (0..100)
        .map(|i| {
            let at = east_of(here, 5.0 * i as f64);
            json!({"driver_id": format!("crash-d{i}"), "lat": at.0, "lng": at.1, "available": true})
        })
        .collect();
    let fleet = json!({ "locations": locations });
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/drivers/locations",
            Some(&fleet),
        )
        .await;
    assert_eq!(status, 202);

    // Rides run 16 at once; once 250 finished, the whole process (and its wallet processor)
    // is killed with SIGKILL, mid-request for some.
    let caller = api;
    let up = std::sync::Mutex::new(Some(up));
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let placed: Vec<(usize, Option<String>, bool)> = futures::stream::iter(0..500)
        .map(|n| {
            let (caller, finished, up) = (&caller, &finished, &up);
            async move {
                let (id, done) = ride_through(caller, n, here).await;
                if done && finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 250 {
                    if let Some(mut live) = up.lock().unwrap().take() {
                        live.process.0.kill().expect("SIGKILL");
                        live.process.0.wait().unwrap();
                    }
                }
                (n, id, done)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(up.lock().unwrap().is_none(), "the kill happened");
    let before_kill = placed.iter().filter(|(_, _, done)| *done).count();
    assert!(before_kill >= 250, "{before_kill}");

    // Restarted on the same data: every ride is taken up where it stood, to the end. The
    // drivers ping again, as they do every few seconds (the in-process index starts empty).
    let up = Up::start(dir.path(), port).await;
    let api = &up.api;
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/drivers/locations",
            Some(&fleet),
        )
        .await;
    assert_eq!(status, 202);
    for (n, id, done) in &placed {
        if *done {
            continue;
        }
        let finished = match id {
            Some(id) => drive_to_the_end(api, id).await,
            None => ride_through(api, *n, here).await.1,
        };
        assert!(finished, "ride {n} after the restart");
    }
    let started = Instant::now();
    loop {
        let (_, totals) = api
            .call(reqwest::Method::GET, "/api/v1/ledger/totals", None)
            .await;
        if totals["rides_charged"] == 500 {
            assert_eq!(totals["held_minor"], 0, "{totals}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not every ride charged: {totals}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(up);
    let (ok, said) = Mode::Embedded.verify(dir.path());
    assert!(ok, "pulse ledger verify: {said}");
}
