//! The front door, end to end on the embedded default: a tenant made with the CLI while Pulse
//! runs on the same data directory, its key opening only its own data, scopes, revocation within
//! the cache TTL, per-tenant quotas answered with 429 and the rate-limit fields, single-use
//! quotes, and the admin API behind its token.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client_with_key, unique_point, TestApp};
use serde_json::{json, Value};

/// The CLI pointed at the app's store: `--data-dir` on the embedded default, `--store` on
/// PostgreSQL.
struct Cli {
    store: Vec<std::ffi::OsString>,
}

impl Cli {
    fn embedded(data_dir: &Path) -> Self {
        Self {
            store: vec!["--data-dir".into(), data_dir.into()],
        }
    }

    fn postgres(url: &str) -> Self {
        Self {
            store: vec!["--store".into(), url.into()],
        }
    }
}

/// `pulse <args> <store flags>`: its stdout as JSON.
async fn cli(store: &Cli, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .args(&store.store)
        .env("PULSE_LOG_LEVEL", "warn")
        .output()
        .await
        .expect("pulse runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pulse {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if stdout.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("JSON from {args:?} ({err}): {stdout}"))
}

async fn call(
    app: &TestApp,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = match key {
        Some(key) => client_with_key(key),
        None => common::client(),
    };
    let mut request = client.request(method, format!("{}{path}", app.base));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

async fn get(app: &TestApp, key: Option<&str>, path: &str) -> (u16, Value) {
    let (status, _, body) = call(app, key, reqwest::Method::GET, path, None).await;
    (status, body)
}

async fn post(app: &TestApp, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = call(app, key, reqwest::Method::POST, path, Some(body)).await;
    (status, body)
}

fn order_at(user: &str, lat: f64, lng: f64) -> Value {
    json!({ "user_id": user, "pickup": { "lat": lat, "lng": lng }, "dropoff": { "lat": lat, "lng": lng } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_tenants_see_only_their_own_orders_surge_and_quotes() {
    let data = tempfile::tempdir().expect("data dir");
    let app = TestApp::spawn_in(data.path(), |_| {}).await;
    tenants_see_only_their_own_orders_surge_and_quotes(&app, &Cli::embedded(data.path())).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_tenants_see_only_their_own_orders_surge_and_quotes() {
    let store_url = pulse_conformance::services::fresh_postgres_database().await;
    let data = tempfile::tempdir().expect("data dir");
    let url = store_url.clone();
    let app = TestApp::spawn_in(data.path(), |config| common::distributed(config, url)).await;
    tenants_see_only_their_own_orders_surge_and_quotes(&app, &Cli::postgres(&store_url)).await;
    app.stop().await;
}

async fn tenants_see_only_their_own_orders_surge_and_quotes(app: &TestApp, store: &Cli) {
    // Made with the CLI while Pulse runs on the same store.
    let a = cli(store, &["tenants", "create", "acme"]).await;
    let b = cli(store, &["tenants", "create", "globex"]).await;
    assert_eq!(a["tenant_id"], "acme");
    let (key_a, key_b) = (
        a["api_key"].as_str().expect("key").to_owned(),
        b["api_key"].as_str().expect("key").to_owned(),
    );
    assert!(key_a.starts_with("pk_"), "{a}");

    // No key, a made-up key: 401 with the house error shape.
    let (status, body) = get(app, None, "/api/v1/quote?lat=1&lng=2").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let made_up = format!("pk_aaaaaaaaaaaa_{}", "0".repeat(40));
    assert_eq!(
        get(app, Some(&made_up), "/api/v1/quote?lat=1&lng=2")
            .await
            .0,
        401
    );

    // A's surge: drivers and orders in one cell, through A's key.
    let (lat, lng) = unique_point();
    for n in 0..2 {
        let (status, body) = post(
            app,
            Some(&key_a),
            &format!("/api/v1/drivers/acme-driver-{n}/location"),
            &json!({ "lat": lat, "lng": lng, "available": true }),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let mut order_of_a = Value::Null;
    for n in 0..8 {
        let (status, order) = post(
            app,
            Some(&key_a),
            "/api/v1/orders",
            &order_at(&format!("rider-{n}"), lat, lng),
        )
        .await;
        assert_eq!(status, 201, "{order}");
        order_of_a = order;
    }
    let quote_path = format!("/api/v1/quote?lat={lat}&lng={lng}");
    let started = Instant::now();
    loop {
        let (status, quote) = get(app, Some(&key_a), &quote_path).await;
        assert_eq!(status, 200, "{quote}");
        if quote["multiplier"].as_f64().unwrap_or(1.0) > 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A's cell never surged: {quote}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // B's quote in the same cell: A's drivers and orders do not count.
    let (status, quote_b) = get(app, Some(&key_b), &quote_path).await;
    assert_eq!(status, 200);
    assert_eq!(quote_b["multiplier"], 1.0, "{quote_b}");
    assert_eq!(quote_b["surge"]["source"], "default", "{quote_b}");
    // Nor the default tenant's map.
    let (_, default_map) = app.get_json("/api/v1/surge/cells").await;
    let cell = order_of_a["pickup_h3"].as_str().expect("cell").to_owned();
    assert!(
        !default_map["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .any(|c| c["h3"] == cell.as_str()),
        "A's cell is not on the default tenant's map"
    );

    // B gets 404 for A's order; A reads it.
    let order_path = format!(
        "/api/v1/orders/{}",
        order_of_a["order_id"].as_str().expect("id")
    );
    assert_eq!(get(app, Some(&key_a), &order_path).await.0, 200);
    let (status, body) = get(app, Some(&key_b), &order_path).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // A's quote lock is A's and its user's, and pays for one order.
    let (_, quote) = get(app, Some(&key_a), &format!("{quote_path}&user_id=rider-q")).await;
    let quote_id = quote["quote_id"].as_str().expect("locked").to_owned();
    let with_quote = |user: &str| {
        let mut body = order_at(user, lat, lng);
        body["quote_id"] = json!(quote_id);
        body
    };
    let (status, body) = post(app, Some(&key_b), "/api/v1/orders", &with_quote("rider-q")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("quote_unavailable")),
        "{body}"
    );
    let (status, body) = post(
        app,
        Some(&key_a),
        "/api/v1/orders",
        &with_quote("someone-else"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("quote_not_yours")),
        "{body}"
    );
    let (status, body) = post(app, Some(&key_a), "/api/v1/orders", &with_quote("rider-q")).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(app, Some(&key_a), "/api/v1/orders", &with_quote("rider-q")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("quote_used")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_scopes_revocation_quotas_and_the_admin_api() {
    let data = tempfile::tempdir().expect("data dir");
    let app = TestApp::spawn_in(data.path(), |config| {
        config.auth.key_cache_ttl_ms = 500;
    })
    .await;
    scopes_revocation_quotas_and_the_admin_api(&app, data.path(), &Cli::embedded(data.path()))
        .await;
    app.stop().await;
}

/// On PostgreSQL, Kafka and Redis: the quota is counted in Redis (a 2/s quota is asked of it on
/// every call, too small to lease), revocation goes through PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_scopes_revocation_quotas_and_the_admin_api() {
    let store_url = pulse_conformance::services::fresh_postgres_database().await;
    let data = tempfile::tempdir().expect("data dir");
    let url = store_url.clone();
    let app = TestApp::spawn_in(data.path(), |config| {
        common::distributed(config, url);
        config.auth.key_cache_ttl_ms = 500;
    })
    .await;
    scopes_revocation_quotas_and_the_admin_api(&app, data.path(), &Cli::postgres(&store_url)).await;
    app.stop().await;
}

async fn scopes_revocation_quotas_and_the_admin_api(app: &TestApp, data_dir: &Path, store: &Cli) {
    let slow = cli(store, &["tenants", "create", "slow", "--rate", "2"]).await;
    let slow_key = slow["api_key"].as_str().expect("key").to_owned();
    let other = cli(store, &["tenants", "create", "busy"]).await;
    let other_key = other["api_key"].as_str().expect("key").to_owned();

    // An ingest key opens no /api/v1 route: 403.
    let ingest = cli(
        store,
        &["keys", "create", "--tenant", "busy", "--scope", "ingest"],
    )
    .await;
    let (status, body) = get(app, ingest["api_key"].as_str(), "/api/v1/quote?lat=1&lng=2").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    // Over its quota (2/s, burst 2): 429 with Retry-After and the rate-limit fields; another
    // tenant meanwhile is not limited.
    let mut limited = None;
    for _ in 0..6 {
        let (status, headers, body) = call(
            app,
            Some(&slow_key),
            reqwest::Method::GET,
            "/api/v1/quote?lat=1&lng=2",
            None,
        )
        .await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            get(app, Some(&other_key), "/api/v1/quote?lat=1&lng=2")
                .await
                .0,
            200
        );
    }
    let (headers, body) = limited.expect("the third quick request is over a 2/s quota");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(headers["ratelimit-policy"], "\"api\";q=2;w=1");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"api\";r=0;t="),
        "{headers:?}"
    );
    assert_eq!(
        get(app, Some(&other_key), "/api/v1/quote?lat=1&lng=2")
            .await
            .0,
        200
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        common::metric_sum(
            &metrics,
            "pulse_tenant_requests_total",
            &["tenant=\"slow\"", "outcome=\"rate_limited\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "rejections are counted by tenant"
    );

    // Revoked with the CLI: refused within the cache TTL, on this process that cached it.
    assert_eq!(
        get(app, Some(&other_key), "/api/v1/quote?lat=1&lng=2")
            .await
            .0,
        200
    );
    let key_id = other["key_id"].as_str().expect("key id");
    cli(store, &["keys", "revoke", key_id]).await;
    let revoked_at = Instant::now();
    loop {
        let status = get(app, Some(&other_key), "/api/v1/quote?lat=1&lng=2")
            .await
            .0;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "a revoked key still works after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The admin API: the generated token opens it, nothing else does.
    let token = std::fs::read_to_string(data_dir.join("admin-token")).expect("admin token file");
    let token = token.trim();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data_dir.join("admin-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin token is readable by its owner only"
    );
    let admin = |method, path: &str, body: Option<Value>| {
        let client = common::client();
        let path = format!("{}{path}", app.base);
        async move {
            let mut request = client.request(method, path).bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("admin request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    assert_eq!(get(app, Some(&slow_key), "/admin/v1/tenants").await.0, 401);
    let (status, listed) = admin(reqwest::Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["tenant_id"].as_str())
        .collect();
    assert!(
        ids.contains(&"default") && ids.contains(&"slow") && ids.contains(&"busy"),
        "{ids:?}"
    );
    let (status, made) = admin(
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({ "tenant_id": "initech", "rate": 50 })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (status, again) = admin(
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({ "tenant_id": "initech" })),
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{again}"
    );
    let initech_key = made["api_key"].as_str().unwrap();
    assert_eq!(
        get(app, Some(initech_key), "/api/v1/quote?lat=1&lng=2")
            .await
            .0,
        200
    );
    let (status, tenant) = admin(
        reqwest::Method::PUT,
        "/admin/v1/tenants/initech/quotas/events",
        Some(json!({ "per_second": 10 })),
    )
    .await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(
        tenant["quotas"]["events"],
        json!({ "per_second": 10, "burst": 10 })
    );
    assert_eq!(
        tenant["quotas"]["api"],
        json!({ "per_second": 50, "burst": 50 })
    );
    let (status, keys) = admin(reqwest::Method::GET, "/admin/v1/tenants/initech/keys", None).await;
    assert_eq!(status, 200);
    assert!(
        !keys.to_string().contains(initech_key),
        "key listings never show secrets"
    );
    let (status, revoked) = admin(
        reqwest::Method::POST,
        &format!("/admin/v1/keys/{}/revoke", made["key_id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
}
