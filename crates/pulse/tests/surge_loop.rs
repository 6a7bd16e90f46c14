//! The surge loop end to end, in both modes: orders and driver pings through the public API →
//! outbox → relay → log → engine → cache → quotes.

mod common;

use common::{distributed, seed_cell, unique_point, wait_for_quote, TestApp};
use pulse_conformance::services;
use serde_json::{json, Value};

async fn six_orders_and_four_drivers_surge_to_2_5(app: &TestApp) {
    let (lat, lng) = unique_point();
    let orders = seed_cell(&[app], lat, lng, 4, 6).await;
    let cell = orders[0]["pickup_h3"].clone();
    let quote = wait_for_quote(app, lat, lng, |quote| {
        quote["surge"]["source"] == "live" && quote["multiplier"] == 2.5
    })
    .await;
    assert_eq!(quote["h3"], cell);
    assert_eq!(
        quote["price"]["total"],
        json!({"amount_minor": 625, "currency": "USD"}),
        "(250 + 0 km) × 2.5, as money"
    );
    assert_eq!(
        quote["price"]["base"],
        json!({"amount_minor": 250, "currency": "USD"})
    );
    assert!(quote["quote_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_six_orders_and_four_drivers_surge_to_2_5() {
    let app = TestApp::spawn(|_| {}).await;
    six_orders_and_four_drivers_surge_to_2_5(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_six_orders_and_four_drivers_surge_to_2_5() {
    let store_url = services::fresh_postgres_database().await;
    let app = TestApp::spawn(|config| distributed(config, store_url)).await;
    six_orders_and_four_drivers_surge_to_2_5(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surge_expires_when_events_stop() {
    let app = TestApp::spawn(|config| {
        config.surge.window_secs = 3;
        config.surge.bucket_secs = 1;
        config.surge.surge_ttl_secs = 2;
        config.surge.tick_ms = 200;
    })
    .await;
    let (lat, lng) = unique_point();
    let (status, body) = app
        .post_json(
            "/api/v1/orders",
            &json!({ "user_id": "solo", "pickup": { "lat": lat, "lng": lng }, "dropoff": { "lat": lat, "lng": lng } }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let live = wait_for_quote(&app, lat, lng, |quote| quote["surge"]["source"] == "live").await;
    assert_eq!(live["multiplier"], 3.5, "demand without supply is the cap");
    let expired = wait_for_quote(&app, lat, lng, |quote| {
        quote["surge"]["source"] == "default"
    })
    .await;
    assert_eq!(expired["multiplier"], 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_original_order_and_refuse_a_different_body() {
    let app = TestApp::spawn(|_| {}).await;
    let client = app.client();
    let body = json!({ "user_id": "u-idem", "pickup": { "lat": 1.0, "lng": 1.0 }, "dropoff": { "lat": 1.01, "lng": 1.0 } });
    let place = |body: Value| {
        client
            .post(format!("{}/api/v1/orders", app.base))
            .header("Idempotency-Key", "key-1")
            .json(&body)
            .send()
    };
    let first = place(body.clone()).await.expect("first");
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.expect("json");
    let again = place(body.clone()).await.expect("retry");
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["order_id"], first["order_id"]);
    // Keys are scoped per user: another key of the same user, or the same key of another user,
    // is another order.
    for (key, user) in [("key-2", "u-idem"), ("key-1", "u-idem-other")] {
        let mut other = body.clone();
        other["user_id"] = json!(user);
        let placed = client
            .post(format!("{}/api/v1/orders", app.base))
            .header("Idempotency-Key", key)
            .json(&other)
            .send()
            .await
            .expect("another order");
        assert_eq!(placed.status().as_u16(), 201);
        assert!(placed.headers().get("idempotent-replayed").is_none());
        let placed: Value = placed.json().await.expect("json");
        assert_ne!(placed["order_id"], first["order_id"], "{key} of {user}");
    }
    // A difference in any part of what is ordered makes it another request, refused under the
    // same key.
    let changed = |change: fn(&mut Value)| {
        let mut different = body.clone();
        change(&mut different);
        different
    };
    let differences = [
        (
            "pickup.lat",
            changed(|body| body["pickup"]["lat"] = json!(2.0)),
        ),
        (
            "pickup.lng",
            changed(|body| body["pickup"]["lng"] = json!(2.0)),
        ),
        (
            "dropoff.lat",
            changed(|body| body["dropoff"]["lat"] = json!(2.0)),
        ),
        (
            "dropoff.lng",
            changed(|body| body["dropoff"]["lng"] = json!(2.0)),
        ),
        (
            "quote_id",
            changed(|body| body["quote_id"] = json!(uuid::Uuid::new_v4())),
        ),
    ];
    for (field, different) in differences {
        let conflict = place(different).await.expect("conflict");
        let status = conflict.status().as_u16();
        let conflict: Value = conflict.json().await.expect("json");
        assert_eq!(
            (status, conflict["error"]["code"].clone()),
            (422, json!("idempotency_key_reused")),
            "a body differing in {field} under the same key: {conflict}"
        );
    }

    let (status, order) = app
        .get_json(&format!(
            "/api/v1/orders/{}",
            first["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(order["order_id"], first["order_id"]);
    let (status, missing) = app
        .get_json(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, missing["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    app.stop().await;
}

/// Checks an answer is a 400 `invalid_request` whose message says what was wrong (`names`).
fn refused_as_invalid(status: u16, answer: &Value, names: &str) {
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("invalid_request")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains(names)),
        "the message names {names}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_400() {
    let app = TestApp::spawn(|_| {}).await;
    let cases = [
        json!({ "user_id": "u", "pickup": { "lat": 91.0, "lng": 0.0 }, "dropoff": { "lat": 0.0, "lng": 0.0 } }),
        json!({ "user_id": "u", "pickup": { "lat": 0.0, "lng": 180.5 }, "dropoff": { "lat": 0.0, "lng": 0.0 } }),
        json!({ "user_id": "u", "pickup": { "lat": 0.0, "lng": 0.0 } }),
        json!({ "user_id": 7, "pickup": { "lat": 0.0, "lng": 0.0 }, "dropoff": { "lat": 0.0, "lng": 0.0 } }),
        json!({ "user_id": "x".repeat(51), "pickup": { "lat": 0.0, "lng": 0.0 }, "dropoff": { "lat": 0.0, "lng": 0.0 } }),
        json!({ "user_id": "u", "pickup": { "lat": "north", "lng": 0.0 }, "dropoff": { "lat": 0.0, "lng": 0.0 } }),
    ];
    for body in cases {
        let (status, answer) = app.post_json("/api/v1/orders", &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let huge = json!({ "user_id": "u", "pad": "x".repeat(20_000) });
    let (status, answer) = app.post_json("/api/v1/orders", &huge).await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = app.get_json("/api/v1/quote?lat=100&lng=0").await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (status, answer) = app.get_json("/api/v1/quote?lng=0").await;
    refused_as_invalid(status, &answer, "missing field `lat`");
    let (status, answer) = app
        .post_json(
            "/api/v1/drivers/bad%20id/location",
            &json!({ "lat": 0.0, "lng": 0.0, "available": true }),
        )
        .await;
    refused_as_invalid(status, &answer, "driver_id");
    let (status, answer) = app
        .post_json("/api/v1/orders", &json!({ "user_id": "u", "pickup": { "lat": 0.0, "lng": 0.0 }, "dropoff": { "lat": 0.0, "lng": 0.0 }, "quote_id": uuid::Uuid::new_v4() }))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (422, json!("quote_unavailable"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_with_a_quote_pays_the_quoted_price() {
    let app = TestApp::spawn(|_| {}).await;
    let (lat, lng) = unique_point();
    let quote_path = format!(
        "/api/v1/quote?lat={lat}&lng={lng}&dropoff_lat={}&dropoff_lng={lng}",
        lat + 0.05
    );
    let live_at = |multiplier: f64| {
        move |quote: &Value| quote["surge"]["source"] == "live" && quote["multiplier"] == multiplier
    };
    // 2 orders for 4 drivers: 1 + 2/4.
    seed_cell(&[&app], lat, lng, 4, 2).await;
    wait_for_quote(&app, lat, lng, live_at(1.5)).await;
    let (status, quote) = app.get_json(&quote_path).await;
    assert_eq!(status, 200, "{quote}");
    assert_eq!(quote["multiplier"], 1.5, "quoted under the surge: {quote}");
    let quote_id = quote["quote_id"].as_str().expect("a quote id").to_owned();

    // 4 more orders for the same drivers: 1 + 6/4.
    seed_cell(&[&app], lat, lng, 0, 4).await;
    wait_for_quote(&app, lat, lng, live_at(2.5)).await;
    let (_, fresh) = app.get_json(&quote_path).await;
    assert_ne!(
        fresh["price"]["total"], quote["price"]["total"],
        "the surge moved, so a fresh quote tells the prices apart: {fresh} vs {quote}"
    );

    let (status, order) = app
        .post_json(
            "/api/v1/orders",
            &json!({ "user_id": "quoted", "pickup": { "lat": lat, "lng": lng }, "dropoff": { "lat": lat + 0.05, "lng": lng }, "quote_id": quote_id }),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["quote_id"], json!(quote_id));
    assert_eq!(
        order["price"],
        json!({
            "total": quote["price"]["total"],
            "multiplier": quote["multiplier"],
        }),
        "the order pays its quote {quote}, not the surge of the moment {fresh}"
    );
    let path = format!("/api/v1/orders/{}", order["order_id"].as_str().expect("id"));
    let (status, stored) = app.get_json(&path).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        (&stored["price"], &stored["quote_id"]),
        (&order["price"], &order["quote_id"]),
        "the stored order keeps its price"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_in_one_group_agree_with_the_formula() {
    let store_url = services::fresh_postgres_database().await;
    let first = TestApp::spawn(|config| distributed(config, store_url.clone())).await;
    let second = TestApp::spawn(|config| distributed(config, store_url.clone())).await;
    let (lat, lng) = unique_point();
    // Events enter through both gateways; both engines share the group's partitions.
    seed_cell(&[&first, &second], lat, lng, 4, 6).await;
    for app in [&first, &second] {
        wait_for_quote(app, lat, lng, |quote| quote["multiplier"] == 2.5).await;
    }
    first.stop().await;
    second.stop().await;
}

/// A driver's latest ping decides where it counts: one that moves to another cell or goes off
/// duty stops counting where it was, at once. 2 orders: 2 drivers → 2.0, 1 → 3.0, none → 3.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_who_moves_or_goes_off_duty_stops_counting_where_it_was() {
    let app = TestApp::spawn(|_| {}).await;
    let (lat, lng) = unique_point();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let ping = |driver: &str, lat: f64, available: bool| {
        let path = format!("/api/v1/drivers/{driver}-{run}/location");
        let body = json!({ "lat": lat, "lng": lng, "available": available });
        let app = &app;
        async move {
            let (status, answer) = app.post_json(&path, &body).await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    ping("mover", lat, true).await;
    ping("stayer", lat, true).await;
    seed_cell(&[&app], lat, lng, 0, 2).await;
    wait_for_quote(&app, lat, lng, |quote| quote["multiplier"] == 2.0).await;

    // About 1.1 km north: another H3 cell at resolution 9.
    ping("mover", lat + 0.01, true).await;
    wait_for_quote(&app, lat, lng, |quote| quote["multiplier"] == 3.0).await;
    let elsewhere = wait_for_quote(&app, lat + 0.01, lng, |quote| {
        quote["surge"]["source"] == "live"
    })
    .await;
    assert_eq!(
        elsewhere["multiplier"], 1.0,
        "a driver and no demand: {elsewhere}"
    );

    ping("stayer", lat, false).await;
    wait_for_quote(&app, lat, lng, |quote| quote["multiplier"] == 3.5).await;
    app.stop().await;
}
