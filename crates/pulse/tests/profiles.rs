//! Customer profiles end to end, on the embedded default and on PostgreSQL + Kafka + Redis:
//! Segment calls in at the gateway, through the pipeline and `events.processed`, into profiles
//! read back from the API. An anonymous visitor who signs up keeps their page views; identifies
//! and aliases merge, an unmerge restores both profiles exactly; the same events delivered
//! again change no count; reads fall back to the store while Redis is down; the reconciliation
//! repairs a corrupted hot copy and a rebuild from the archive equals the live path; the
//! `profiles` processor killed with SIGKILL mid-stream changes no count.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Mode, TestApp};
use pulse::config::Secret;
use pulse::Config;
use pulse_core::cache::Cache;
use pulse_core::log::OutgoingRecord;
use pulse_proto::v1::ProfileUpdated;
use pulse_proto::Message;
use pulse_runtime::Role;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "profiles-test-admin-token-0123456789";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn configure(mode: &Mode, config: &mut Config) {
    mode.backends(config);
    config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
    config.quotas.events = pulse_tenants::QuotaSetting {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
}

/// Names no other test (or rerun) uses: profiles on a shared PostgreSQL and Redis are keyed by
/// what a test sends.
fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn at(second: i64) -> String {
    pulse_gateway::time::rfc3339(1_764_000_000_000 + second * 1_000)
}

/// A Segment call with the tenant's write key as the Basic user name, as Segment's libraries
/// send it.
async fn segment(app: &TestApp, key: &str, call: &str, body: Value) {
    let response = common::client()
        .post(format!("{}/v1/{call}", app.base))
        .basic_auth(key, Some(""))
        .json(&body)
        .send()
        .await
        .expect("segment call");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{call}: {text}");
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> (u16, String) {
    let response = common::client()
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin call");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A second tenant's full key (its ids, e-mail addresses and profiles are its own).
async fn tenant_key(app: &TestApp, tenant: &str) -> String {
    let (status, body) = admin(
        app,
        reqwest::Method::POST,
        "/admin/v1/tenants",
        json!({"tenant_id": tenant}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let issued: Value = serde_json::from_str(&body).expect("json");
    issued["api_key"].as_str().expect("a key").to_owned()
}

async fn get_with(app: &TestApp, key: &str, path: &str) -> (u16, Value, Option<String>) {
    let response = common::client_with_key(key)
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let source = response
        .headers()
        .get(pulse_http::api::READ_SOURCE_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, source)
}

/// Polls `path` with `key` until `want` holds (60 s at most).
async fn wait_for(app: &TestApp, key: &str, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body, _) = get_with(app, key, path).await;
        if status == 200 && want(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path} never became as wanted: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn page(anon: &str, id: &str, second: i64, agent: &str) -> Value {
    json!({"anonymousId": anon, "messageId": id, "name": "Home", "timestamp": at(second),
        "context": {"userAgent": agent}})
}

/// What a profile is, without what depends on when and how often it was written.
fn essence(profile: &Value) -> Value {
    let mut profile = profile.clone();
    for volatile in ["version", "updated_at", "created_at", "profile_id"] {
        profile.as_object_mut().expect("object").remove(volatile);
    }
    profile
}

async fn the_seed_journey(mode: Mode) {
    let app = TestApp::spawn(|config| configure(&mode, config)).await;
    let (anon, user) = (unique("anon"), unique("user"));
    for n in 0..3 {
        segment(
            &app,
            &app.api_key,
            "page",
            page(&anon, &unique("p"), n, IPHONE),
        )
        .await;
    }
    segment(
        &app,
        &app.api_key,
        "identify",
        json!({"userId": user, "anonymousId": anon, "messageId": unique("i"),
            "timestamp": at(10), "traits": {"plan": "pro", "email": format!("{user}@example.com")},
            "context": {"userAgent": IPHONE}}),
    )
    .await;
    let path = format!("/api/v1/profiles/by-user/{user}");
    let profile = wait_for(&app, &app.api_key, &path, |p| {
        p["computed"]["event_counts"]["identify"] == 1
    })
    .await;
    assert_eq!(profile["computed"]["page_views"], 3, "{profile}");
    assert_eq!(profile["computed"]["device_class"], "mobile");
    assert_eq!(profile["computed"]["last_active_at"], at(10));
    assert_eq!(profile["computed"]["first_seen_at"], at(0));
    assert_eq!(profile["traits"]["plan"], "pro");
    assert_eq!(profile["anonymous_ids"], json!([anon]));
    let id = profile["profile_id"].as_str().expect("an id").to_owned();
    // The same profile by its anonymous id and by its id, hot.
    let (status, by_anon, source) = get_with(
        &app,
        &app.api_key,
        &format!("/api/v1/profiles/by-anonymous/{anon}"),
    )
    .await;
    assert_eq!(
        (status, by_anon["profile_id"].as_str()),
        (200, Some(id.as_str()))
    );
    assert_eq!(source.as_deref(), Some("hot"));
    // Its four events, from the archive, in time order.
    let (_, events, _) = get_with(
        &app,
        &app.api_key,
        &format!("/api/v1/profiles/{id}/events?limit=3"),
    )
    .await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(3),
        "{events}"
    );
    let next = events["next"].as_str().expect("a next page").to_owned();
    let (_, rest, _) = get_with(
        &app,
        &app.api_key,
        &format!("/api/v1/profiles/{id}/events?after={next}"),
    )
    .await;
    assert_eq!(rest["events"][0]["event_type"], "identify", "{rest}");
    // Another tenant sees none of it.
    let other = tenant_key(&app, "visitors-b").await;
    let (status, _, _) = get_with(&app, &other, &path).await;
    assert_eq!(status, 404);
    let (status, _, _) = get_with(&app, &other, &format!("/api/v1/profiles/{id}")).await;
    assert_eq!(status, 404);
    // Its changes reached profiles.updates, the last one with the profile as the API shows it.
    let topic = pulse_profiles::PROFILE_UPDATES.named(&common::test_prefix());
    let updates = read_topic(&app, &topic, |update: &ProfileUpdated| {
        update.profile_id == id
    })
    .await;
    let last = updates.iter().max_by_key(|u| u.version).expect("updates");
    let shown: Value = serde_json::from_slice(&last.profile_json).expect("json");
    assert_eq!(shown["computed"]["page_views"], 3);
    app.stop().await;
}

/// Every record of `topic` that `keep` keeps, once the relay delivered some (30 s at most).
async fn read_topic(
    app: &TestApp,
    topic: &str,
    keep: impl Fn(&ProfileUpdated) -> bool,
) -> Vec<ProfileUpdated> {
    let started = Instant::now();
    loop {
        let group = unique("reader");
        let mut consumer = app.log.consumer(&group, &[topic]).await.expect("consumer");
        let mut found = Vec::new();
        loop {
            let records = consumer
                .poll(1_000, Duration::from_millis(500))
                .await
                .expect("poll");
            if records.is_empty() {
                break;
            }
            found.extend(
                records
                    .iter()
                    .filter_map(|record| ProfileUpdated::decode(record.payload.as_ref()).ok())
                    .filter(|update| keep(update)),
            );
        }
        if !found.is_empty() {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing on {topic}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn embedded_an_anonymous_visitor_who_signs_up_keeps_their_page_views() {
    the_seed_journey(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_an_anonymous_visitor_who_signs_up_keeps_their_page_views() {
    the_seed_journey(Mode::distributed().await).await;
}

/// The calls of one customer whose two ids an identify links (when `link`).
fn linked_journey(anon: &str, user: &str, link: bool) -> Vec<(&'static str, Value)> {
    let mut calls: Vec<(&'static str, Value)> = (0..3)
        .map(|n| ("page", page(anon, &format!("{anon}-p{n}"), n, IPHONE)))
        .collect();
    for n in 0..2 {
        calls.push((
            "track",
            json!({"userId": user, "event": "Order Placed", "messageId": format!("{user}-t{n}"),
                "timestamp": at(5 + n), "context": {"userAgent": DESKTOP}}),
        ));
    }
    let mut identify = json!({"userId": user, "messageId": format!("{user}-i"), "timestamp": at(9),
        "traits": {"plan": "pro"}});
    if link {
        identify["anonymousId"] = Value::from(anon);
    }
    calls.push(("identify", identify));
    calls
}

async fn merges_and_an_exact_unmerge(mode: Mode) {
    let app = TestApp::spawn(|config| configure(&mode, config)).await;
    let control = tenant_key(&app, "control").await;
    let (anon, user) = (unique("anon"), unique("user"));
    // One tenant links the ids; the control tenant never does — what the first must be after
    // the unmerge.
    let by_user = format!("/api/v1/profiles/by-user/{user}");
    let by_anon = format!("/api/v1/profiles/by-anonymous/{anon}");
    for (key, link) in [(app.api_key.clone(), true), (control.clone(), false)] {
        let mut calls = linked_journey(&anon, &user, link);
        let identify = calls.pop().expect("the identify");
        for (call, body) in calls {
            segment(&app, &key, call, body).await;
        }
        // Both profiles exist before the identify names both ids (the two ids key different
        // partitions, whose order nothing else fixes).
        wait_for(&app, &key, &by_anon, |p| p["computed"]["page_views"] == 3).await;
        wait_for(&app, &key, &by_user, |p| {
            p["computed"]["event_counts"]["track"] == 2
        })
        .await;
        segment(&app, &key, identify.0, identify.1).await;
    }
    let merged = wait_for(&app, &app.api_key, &by_user, |p| {
        p["computed"]["page_views"] == 3 && p["computed"]["event_counts"]["identify"] == 1
    })
    .await;
    assert_eq!(merged["computed"]["event_counts"]["track"], 2);
    let id = merged["profile_id"].as_str().expect("id").to_owned();
    let (_, merges, _) =
        get_with(&app, &app.api_key, &format!("/api/v1/profiles/{id}/merges")).await;
    let merge = &merges["merges"][0];
    assert_eq!(merge["reason"], "identify", "{merges}");
    assert_eq!(
        merge["identifier"],
        json!({"kind": "anonymous_id", "value": anon})
    );
    assert_eq!(merge["event_id"], format!("{user}-i"));
    // Wait for the control tenant's profiles too.
    let control_user = wait_for(&app, &control, &by_user, |p| {
        p["computed"]["event_counts"]["identify"] == 1
    })
    .await;
    let control_anon = wait_for(&app, &control, &by_anon, |p| {
        p["computed"]["page_views"] == 3
    })
    .await;

    let (status, undone) = app
        .post_json(&format!("/api/v1/profiles/{id}/unmerge"), &json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(essence(&undone["kept"]), essence(&control_user), "{undone}");
    assert_eq!(
        essence(&undone["restored"]),
        essence(&control_anon),
        "{undone}"
    );
    let (_, kept, _) = get_with(&app, &app.api_key, &by_user).await;
    let (_, restored, _) = get_with(&app, &app.api_key, &by_anon).await;
    assert_eq!(essence(&kept), essence(&control_user));
    assert_eq!(essence(&restored), essence(&control_anon));
    let (status, again) = app
        .post_json(&format!("/api/v1/profiles/{id}/unmerge"), &json!({}))
        .await;
    assert_eq!(status, 404, "nothing left to undo: {again}");

    // An alias links a previous id to a user: merged, reason alias.
    let (old, next) = (unique("old"), unique("next"));
    segment(
        &app,
        &app.api_key,
        "page",
        page(&old, &unique("p"), 20, DESKTOP),
    )
    .await;
    segment(
        &app,
        &app.api_key,
        "track",
        json!({"userId": next, "event": "Signed Up", "messageId": unique("t"), "timestamp": at(21)}),
    )
    .await;
    segment(
        &app,
        &app.api_key,
        "alias",
        json!({"userId": next, "previousId": old, "messageId": unique("a"), "timestamp": at(22)}),
    )
    .await;
    let aliased = wait_for(
        &app,
        &app.api_key,
        &format!("/api/v1/profiles/by-user/{next}"),
        |p| p["anonymous_ids"] == json!([old]),
    )
    .await;
    assert_eq!(aliased["computed"]["page_views"], 1);
    app.stop().await;
}

#[tokio::test]
async fn embedded_identifies_and_aliases_merge_and_an_unmerge_restores_both_exactly() {
    merges_and_an_exact_unmerge(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_identifies_and_aliases_merge_and_an_unmerge_restores_both_exactly() {
    merges_and_an_exact_unmerge(Mode::distributed().await).await;
}

async fn redelivery_and_replay_change_no_count(mode: Mode) {
    let app = TestApp::spawn(|config| configure(&mode, config)).await;
    let anon = unique("anon");
    let calls: Vec<Value> = (0..5)
        .map(|n| page(&anon, &format!("{anon}-{n}"), n, IPHONE))
        .collect();
    for call in &calls {
        segment(&app, &app.api_key, "page", call.clone()).await;
    }
    let path = format!("/api/v1/profiles/by-anonymous/{anon}");
    wait_for(&app, &app.api_key, &path, |p| {
        p["computed"]["page_views"] == 5
    })
    .await;
    // A client's retries (same messageId) are stopped at the door...
    for call in &calls {
        segment(&app, &app.api_key, "page", call.clone()).await;
    }
    // ... and a replay of events.processed itself (the records as the pipeline wrote them,
    // appended again) is stopped by the profiles' applied marks.
    let processed = pulse_gateway::pipeline::PROCESSED.named(&common::test_prefix());
    let group = unique("replayer");
    let mut consumer = app
        .log
        .consumer(&group, &[processed.as_str()])
        .await
        .expect("consumer");
    let mut replay = Vec::new();
    while replay.len() < 5 {
        let records = consumer
            .poll(1_000, Duration::from_secs(2))
            .await
            .expect("poll");
        assert!(!records.is_empty(), "the processed records were found");
        for record in records {
            let event =
                pulse_gateway::envelope::CanonicalEvent::decode(&record.payload).expect("event");
            if event
                .payload
                .windows(anon.len())
                .any(|w| w == anon.as_bytes())
            {
                replay.push(OutgoingRecord {
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    headers: record.headers.clone(),
                });
            }
        }
    }
    app.log
        .append(&processed, replay.clone())
        .await
        .expect("replay");
    app.log
        .append(&processed, replay)
        .await
        .expect("replay again");
    // A marker after the replay: once it is applied, so is everything before it.
    segment(
        &app,
        &app.api_key,
        "page",
        page(&anon, &unique("marker"), 9, IPHONE),
    )
    .await;
    let profile = wait_for(&app, &app.api_key, &path, |p| {
        p["computed"]["last_active_at"] == at(9)
    })
    .await;
    assert_eq!(profile["computed"]["page_views"], 6, "{profile}");
    let (_, events, _) = get_with(
        &app,
        &app.api_key,
        &format!(
            "/api/v1/profiles/{}/events",
            profile["profile_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(events["events"].as_array().map(Vec::len), Some(6));
    app.stop().await;
}

#[tokio::test]
async fn embedded_redelivery_and_replay_change_no_count() {
    redelivery_and_replay_change_no_count(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_redelivery_and_replay_change_no_count() {
    redelivery_and_replay_change_no_count(Mode::distributed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_profile_reads_fall_back_to_the_store() {
    let Mode::Distributed { store_url } = Mode::distributed().await else {
        unreachable!()
    };
    let mode = Mode::Distributed { store_url };
    let redis = common::OwnRedis::start(common::free_port());
    {
        let app = TestApp::spawn(|config| {
            configure(&mode, config);
            config.cache_url = format!("redis://127.0.0.1:{}", redis.port());
        })
        .await;
        let anon = unique("anon");
        segment(
            &app,
            &app.api_key,
            "page",
            page(&anon, &unique("p"), 0, IPHONE),
        )
        .await;
        let path = format!("/api/v1/profiles/by-anonymous/{anon}");
        wait_for(&app, &app.api_key, &path, |p| {
            p["computed"]["page_views"] == 1
        })
        .await;
        let (_, _, source) = get_with(&app, &app.api_key, &path).await;
        assert_eq!(source.as_deref(), Some("hot"));
        redis.pause();
        for _ in 0..20 {
            let (status, body, source) = get_with(&app, &app.api_key, &path).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(source.as_deref(), Some("cold"));
            assert_eq!(body["computed"]["page_views"], 1);
        }
        // Only this test's cache fails in this binary: every read fell back, and the profiles'
        // breaker refused most calls without waiting for the hung Redis.
        let metrics = app.get("/metrics").await.1;
        let fallbacks = common::metric_sum(
            &metrics,
            "pulse_profiles_reads_total",
            &["source=\"cold\"", "fallback=\"cache_error\""],
        );
        assert!(fallbacks.unwrap_or(0.0) >= 20.0, "{fallbacks:?}");
        let refused = common::metric_sum(
            &metrics,
            "pulse_cache_errors_total",
            &["caller=\"profiles\"", "kind=\"circuit_open\""],
        );
        assert!(refused.unwrap_or(0.0) >= 20.0, "{refused:?}");
        redis.resume();
        app.stop().await;
    }
}

async fn reconcile_and_rebuild(mode: Mode) {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let hot: Arc<Mutex<Option<Arc<dyn Cache>>>> = Arc::default();
    let captured = hot.clone();
    let app = TestApp::spawn_wrapped(
        data_dir.path(),
        &Role::ALL,
        |config| configure(&mode, config),
        move |backends| {
            *captured.lock().unwrap() = Some(backends.profile_cache.clone());
            backends
        },
    )
    .await;
    let hot = hot.lock().unwrap().clone().expect("the profiles' cache");
    let run = unique("r");
    for n in 0..30i64 {
        let anon = format!("{run}-anon-{}", n % 10);
        segment(
            &app,
            &app.api_key,
            "page",
            page(
                &anon,
                &format!("{run}-p{n}"),
                n,
                if n % 2 == 0 { IPHONE } else { DESKTOP },
            ),
        )
        .await;
        if n % 4 == 0 {
            segment(
                &app,
                &app.api_key,
                "identify",
                // Half a second after the page view: the rebuild replays in event time, so
                // events of one customer at the same instant replay by event id, which the
                // live path need not have seen them in (a profile's id follows its first event).
                json!({"userId": format!("{run}-user-{}", n % 3), "anonymousId": anon,
                    "messageId": format!("{run}-i{n}"),
                    "timestamp": pulse_gateway::time::rfc3339(1_764_000_000_000 + n * 1_000 + 500),
                    "traits": {"n": n}}),
            )
            .await;
        }
    }
    let last = format!("/api/v1/profiles/by-anonymous/{run}-anon-9");
    wait_for(&app, &app.api_key, &last, |p| {
        p["computed"]["last_active_at"] == at(29)
    })
    .await;
    let live = list_all(&app).await;
    assert!(!live.is_empty());
    // Corrupt one hot copy, make another stale.
    let prefix = common::test_prefix();
    let ids: Vec<&str> = live.keys().map(String::as_str).collect();
    hot.set(
        &format!("{prefix}profile:{}", ids[0]),
        Bytes::from_static(b"garbage"),
        None,
    )
    .await
    .expect("corrupt");
    let (_, stale_source, _) =
        get_with(&app, &app.api_key, &format!("/api/v1/profiles/{}", ids[1])).await;
    let mut stale = stale_source.clone();
    stale["computed"]["page_views"] = json!(999);
    hot.set(
        &format!("{prefix}profile:{}", ids[1]),
        Bytes::from(serde_json::to_vec(&json!({"profile": stale})).unwrap()),
        None,
    )
    .await
    .expect("stale");
    let (_, seen_stale, _) =
        get_with(&app, &app.api_key, &format!("/api/v1/profiles/{}", ids[1])).await;
    assert_eq!(
        seen_stale["computed"]["page_views"], 999,
        "the hot copy answers"
    );

    let report = cli(&app, &["profiles", "reconcile", "--full", "--json"]).await;
    let done = &report[0]["done"];
    assert_eq!(done["repaired"]["corrupt"], 1, "{report:?}");
    assert_eq!(done["repaired"]["stale"], 1, "{report:?}");
    let (_, repaired, source) =
        get_with(&app, &app.api_key, &format!("/api/v1/profiles/{}", ids[1])).await;
    assert_eq!(source.as_deref(), Some("hot"));
    assert_eq!(essence(&repaired), essence(&live[ids[1]]));
    let (status, audit) = admin(
        &app,
        reqwest::Method::GET,
        "/admin/v1/profiles/repairs",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.contains("999"),
        "the audit keeps what the hot copy held: {audit}"
    );
    let again = cli(&app, &["profiles", "reconcile", "--full", "--json"]).await;
    assert_eq!(again[0]["done"]["repaired"], json!({}), "{again:?}");

    // The rebuild from the archive gives the profiles the live path gave.
    let rebuilt = cli(
        &app,
        &["profiles", "rebuild", "--tenant", "default", "--json"],
    )
    .await;
    assert_eq!(rebuilt[0]["done"]["events"], 38, "{rebuilt:?}");
    let after = list_all(&app).await;
    // Compared by identifiers: a profile's id follows the event that created it, and the live
    // path may have applied a customer's first two events in either order (its anonymous and
    // user ids key different partitions), where the rebuild replays them in event time.
    let shape = |profiles: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        profiles
            .values()
            .map(|p| {
                (
                    format!("{}{}", p["user_ids"], p["anonymous_ids"]),
                    essence(p),
                )
            })
            .collect()
    };
    assert_eq!(shape(&after).len(), live.len());
    assert_eq!(shape(&after), shape(&live));
    app.stop().await;
}

/// `pulse <args> --url <app>` with the admin token; its JSON lines.
async fn cli(app: &TestApp, args: &[&str]) -> Vec<Value> {
    // Asynchronously: the server answering it runs on this test's runtime.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .args(["--url", &app.base, "--log-level", "warn"])
        .env("PULSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("pulse");
    assert!(
        output.status.success(),
        "pulse {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Every live profile of the default tenant, by id.
async fn list_all(app: &TestApp) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (status, page) = app
            .get_json(&format!("/api/v1/profiles?limit=200{after}"))
            .await;
        assert_eq!(status, 200, "{page}");
        for profile in page["profiles"].as_array().expect("profiles") {
            all.insert(
                profile["profile_id"].as_str().unwrap().to_owned(),
                profile.clone(),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return all,
        }
    }
}

#[tokio::test]
async fn embedded_reconcile_repairs_a_corrupted_hot_copy_and_a_rebuild_equals_the_live_path() {
    reconcile_and_rebuild(Mode::Embedded).await;
}

#[tokio::test]
async fn distributed_reconcile_repairs_a_corrupted_hot_copy_and_a_rebuild_equals_the_live_path() {
    reconcile_and_rebuild(Mode::distributed().await).await;
}

#[tokio::test]
async fn distributed_a_profiles_processor_killed_mid_stream_changes_no_count() {
    let Mode::Distributed { store_url } = Mode::distributed().await else {
        unreachable!()
    };
    let mode = Mode::Distributed {
        store_url: store_url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = common::test_prefix();
    let roles = [Role::Gateway, Role::Relay, Role::Pipeline];
    let app = TestApp::spawn_roles(dir.path(), &roles, |config| configure(&mode, config)).await;
    let profiles = || {
        common::serve_role(
            "profiles",
            &store_url,
            &prefix,
            &[("PULSE_PROFILES__BATCH_SIZE", "50")],
        )
    };
    let mut process = profiles();
    let run = unique("k");
    let visitors = 40;
    let per_visitor = 25;
    for round in 0..per_visitor {
        let batch: Vec<Value> = (0..visitors)
            .map(|v| {
                let mut call = page(
                    &format!("{run}-{v}"),
                    &format!("{run}-{v}-{round}"),
                    round,
                    IPHONE,
                );
                call["type"] = json!("page");
                call
            })
            .collect();
        segment(&app, &app.api_key, "batch", json!({"batch": batch})).await;
        if round == per_visitor / 2 {
            // Mid-stream: some visitors' page views applied, others in flight.
            wait_for(
                &app,
                &app.api_key,
                &format!("/api/v1/profiles/by-anonymous/{run}-0"),
                |p| p["computed"]["page_views"].as_u64().unwrap_or(0) >= 3,
            )
            .await;
            process.0.kill().expect("SIGKILL");
            process.0.wait().unwrap();
            process = profiles();
        }
    }
    // Every visitor ends with exactly its page views: none lost, none counted twice.
    for v in 0..visitors {
        let path = format!("/api/v1/profiles/by-anonymous/{run}-{v}");
        let started = Instant::now();
        loop {
            let (status, profile, _) = get_with(&app, &app.api_key, &path).await;
            let views = profile["computed"]["page_views"].as_u64().unwrap_or(0);
            assert!(
                views <= per_visitor as u64,
                "{path}: {views} page views of {per_visitor}"
            );
            if status == 200 && views == per_visitor as u64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{path} stopped at {views} of {per_visitor}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(process);
    app.stop().await;
}
