//! The profiles' suite, for any adapter of [`ProfileStore`] that also keeps the gateway's
//! archive (the relational store on SQLite and on PostgreSQL), driven through the one engine
//! that changes profiles: an anonymous visitor who signs up keeps their page views; events
//! applied again change no count; concurrent writers over one profile lose nothing; merges
//! follow the tenant's limits and an unmerge restores both profiles exactly (and keeps them
//! apart); a rebuild from the archive equals the live path; the reconciliation repairs
//! corrupted hot copies; reads fall back to the store when the cache is down. Every case
//! expects an empty store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pulse_core::cache::Cache;
use pulse_core::clock::{ManualClock, SharedClock};
use pulse_core::TenantId;
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_gateway::useragent::DeviceClass;
use pulse_memory::MemoryCache;
use pulse_profiles::engine::{Incoming, ProfileEngine};
use pulse_profiles::hot::HotProfiles;
use pulse_profiles::model::{Identifier, IdentityKind, MergeReason, ProfileView};
use pulse_profiles::ports::{ProfileStore, TraitFilter};
use pulse_profiles::service::ProfileService;
use pulse_profiles::settings::{IdentitySettings, ProfileSettings};
use pulse_store::{Database, Sql};
use serde_json::{json, Value};

use crate::faults::FaultyCache;

const T0: i64 = 1_700_000_000_000;
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

struct Rig {
    service: ProfileService,
    cache: FaultyCache,
    clock: Arc<ManualClock>,
}

fn rig_with(db: &Database, settings: ProfileSettings) -> Rig {
    let clock = Arc::new(ManualClock::new(T0 + 60_000));
    let shared: SharedClock = clock.clone();
    let cache = FaultyCache::wrap(Arc::new(MemoryCache::new(shared.clone(), 100_000)));
    let hot = HotProfiles::new(Arc::new(cache.clone()), "", Duration::from_secs(3_600));
    let engine = ProfileEngine::new(
        Arc::new(db.clone()),
        hot,
        Arc::new(settings),
        shared,
        "profiles.updates".into(),
    );
    Rig {
        service: ProfileService::new(engine),
        cache,
        clock,
    }
}

/// A rig whose tenant `name` lets a profile hold `user_ids` user ids (the others: Segment's 1).
fn rig_allowing_user_ids(db: &Database, name: &str, user_ids: usize) -> Rig {
    let mut settings = ProfileSettings::default();
    settings.tenants.insert(
        name.into(),
        IdentitySettings {
            max_user_ids: user_ids,
            ..IdentitySettings::default()
        },
    );
    rig_with(db, settings)
}

fn rig(db: &Database) -> Rig {
    rig_with(db, ProfileSettings::default())
}

/// A Segment call of `kind` as the gateway hands it on.
fn call(tenant: &TenantId, id: &str, kind: &str, at_ms: i64, payload: Value) -> Incoming {
    Incoming {
        event: CanonicalEvent {
            event_id: id.to_owned(),
            tenant: tenant.clone(),
            event_type: kind.to_owned(),
            occurred_at_ms: at_ms,
            received_at_ms: at_ms,
            payload: Bytes::from(serde_json::to_vec(&payload).expect("json")),
            source: Source::Http,
            trace_id: None,
            idempotency_key: None,
        },
        trace: None,
    }
}

fn page(tenant: &TenantId, id: &str, anon: &str, at_ms: i64, agent: &str) -> Incoming {
    call(
        tenant,
        id,
        "page",
        at_ms,
        json!({"anonymousId": anon, "name": "Home", "context": {"userAgent": agent}}),
    )
}

fn track(tenant: &TenantId, id: &str, user: &str, at_ms: i64, name: &str) -> Incoming {
    call(
        tenant,
        id,
        "track",
        at_ms,
        json!({"userId": user, "event": name}),
    )
}

fn identify(
    tenant: &TenantId,
    id: &str,
    user: &str,
    anon: Option<&str>,
    at_ms: i64,
    traits: Value,
) -> Incoming {
    let mut payload = json!({"userId": user, "traits": traits});
    if let Some(anon) = anon {
        payload["anonymousId"] = Value::from(anon);
    }
    call(tenant, id, "identify", at_ms, payload)
}

fn user(value: &str) -> Identifier {
    Identifier::new(IdentityKind::UserId, value)
}

fn anon(value: &str) -> Identifier {
    Identifier::new(IdentityKind::AnonymousId, value)
}

async fn view_of(rig: &Rig, tenant: &TenantId, id: &Identifier) -> ProfileView {
    rig.service
        .by_identifier(tenant, id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("no profile holds {id:?}"))
        .view
}

/// What a profile is, without what depends on when and how often it was written.
fn essence(view: &ProfileView) -> Value {
    let mut value = serde_json::to_value(view).expect("json");
    let object = value.as_object_mut().expect("object");
    for volatile in ["version", "updated_at", "profile_id", "created_at"] {
        object.remove(volatile);
    }
    value
}

async fn count(db: &Database, sql: &str) -> i64 {
    db.fetch_optional(&Sql::new(sql.to_owned()))
        .await
        .expect("count")
        .expect("a row")
        .i64(0)
        .expect("integer")
}

/// The seed's journey: page views on an iPhone, then sign-up with both ids.
pub async fn an_anonymous_visitor_who_signs_up_keeps_their_page_views(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    let views: Vec<Incoming> = (0..3)
        .map(|n| page(&t, &format!("p{n}"), "anon-1", T0 + n * 1_000, IPHONE))
        .collect();
    rig.service.engine().apply(&t, &views).await.expect("views");
    let signup = identify(
        &t,
        "i1",
        "user-1",
        Some("anon-1"),
        T0 + 10_000,
        json!({"plan": "pro", "email": "Ann@Example.com"}),
    );
    rig.service
        .engine()
        .apply(&t, &[signup])
        .await
        .expect("identify");

    let profile = view_of(&rig, &t, &user("user-1")).await;
    assert_eq!(profile.computed.page_views, 3);
    assert_eq!(profile.computed.device_class, DeviceClass::Mobile);
    assert_eq!(
        profile.computed.last_active_at.as_deref(),
        Some(pulse_gateway::time::rfc3339(T0 + 10_000).as_str())
    );
    assert_eq!(profile.user_ids, vec!["user-1"]);
    assert_eq!(profile.anonymous_ids, vec!["anon-1"]);
    assert_eq!(profile.emails, vec!["ann@example.com"]);
    assert_eq!(profile.traits["plan"], "pro");
    // One profile, found by every identifier, and every event archived once in events_raw.
    for id in [
        anon("anon-1"),
        Identifier::new(IdentityKind::Email, "ann@example.com"),
    ] {
        assert_eq!(view_of(&rig, &t, &id).await.profile_id, profile.profile_id);
    }
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM events_raw WHERE tenant_id = 'acme'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM tracked_events WHERE tenant_id = 'acme'"
        )
        .await,
        4
    );
    // Another tenant's profiles are its own.
    let other = tenant("other");
    assert!(rig
        .service
        .by_identifier(&other, &user("user-1"))
        .await
        .expect("read")
        .is_none());
    let page_one = rig
        .service
        .events(&t, profile.profile_id, None, 2)
        .await
        .expect("events")
        .expect("profile");
    assert_eq!(page_one.1.len(), 2);
    let last = &page_one.1[1].event;
    let rest = rig
        .service
        .events(
            &t,
            profile.profile_id,
            Some(&(last.occurred_at_ms, last.event_id.clone())),
            10,
        )
        .await
        .expect("events")
        .expect("profile");
    let ids: Vec<&str> = page_one
        .1
        .iter()
        .chain(&rest.1)
        .map(|e| e.event.event_id.as_str())
        .collect();
    assert_eq!(ids, vec!["p0", "p1", "p2", "i1"]);
}

/// Redelivery (the same batch again) and replay (old events among new) change no count.
pub async fn events_applied_again_change_no_count(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    let batch: Vec<Incoming> = (0..5)
        .map(|n| page(&t, &format!("p{n}"), "anon-1", T0 + n, DESKTOP))
        .collect();
    rig.service.engine().apply(&t, &batch).await.expect("first");
    let again = rig.service.engine().apply(&t, &batch).await.expect("again");
    assert_eq!(again.summary.applied, 0);
    assert_eq!(again.summary.duplicates, 5);
    let mut mixed = batch[2..].to_vec();
    mixed.push(page(&t, "p9", "anon-1", T0 + 9, DESKTOP));
    mixed.push(page(&t, "p9", "anon-1", T0 + 9, DESKTOP));
    rig.service
        .engine()
        .apply(&t, &mixed)
        .await
        .expect("replay");
    let profile = view_of(&rig, &t, &anon("anon-1")).await;
    assert_eq!(profile.computed.page_views, 6);
    assert_eq!(profile.computed.event_counts["page"], 6);
    assert_eq!(count(db, "SELECT COUNT(*) FROM profile_events").await, 6);
}

/// Two engines (two processes after a rebalance) apply different events of one customer at
/// the same time: the version check makes the loser resolve again, and nothing is lost.
pub async fn concurrent_writers_over_one_profile_lose_nothing(db: &Database) {
    let (a, b) = (rig(db), rig(db));
    let t = tenant("acme");
    a.service
        .engine()
        .apply(&t, &[page(&t, "seed", "anon-1", T0, DESKTOP)])
        .await
        .expect("seed");
    let run = |rig: &Rig, prefix: &'static str| {
        let engine = rig.service.engine().clone();
        let t = t.clone();
        async move {
            for round in 0..10 {
                let batch: Vec<Incoming> = (0..5)
                    .map(|n| {
                        page(
                            &t,
                            &format!("{prefix}-{round}-{n}"),
                            "anon-1",
                            T0 + round * 10 + n,
                            DESKTOP,
                        )
                    })
                    .collect();
                engine.apply(&t, &batch).await.expect("apply");
            }
        }
    };
    tokio::join!(run(&a, "a"), run(&b, "b"));
    // The store is the truth (each rig has a hot copy of its own, the last it wrote).
    let id = db
        .owner(&t, &anon("anon-1"))
        .await
        .expect("owner")
        .expect("held");
    let stored = db.profile(&t, id).await.expect("read").expect("stored");
    assert_eq!(stored.profile.page_views, 101, "1 + 2 × 10 × 5 page views");
    assert_eq!(count(db, "SELECT COUNT(*) FROM user_profiles").await, 1);
}

/// Merges follow the tenant's rules (at most one user id by default, more where configured),
/// are recorded with their cause, and an unmerge restores both profiles exactly as they would
/// be had the merge never happened — and keeps them apart afterwards.
pub async fn merges_follow_the_rules_and_an_unmerge_restores_both_exactly(db: &Database) {
    let rig = rig_allowing_user_ids(db, "lenient", 2);
    let journey = |t: &TenantId, with_anon: bool| {
        vec![
            page(t, "p1", "anon-1", T0, IPHONE),
            page(t, "p2", "anon-1", T0 + 1, IPHONE),
            page(t, "p3", "anon-1", T0 + 2, IPHONE),
            track(t, "t1", "user-1", T0 + 3, "Order Placed"),
            track(t, "t2", "user-1", T0 + 4, "Order Placed"),
            identify(
                t,
                "i1",
                "user-1",
                with_anon.then_some("anon-1"),
                T0 + 5,
                json!({"plan": "pro"}),
            ),
        ]
    };
    // `acme` links the two ids; `control` never does: what `acme` must be after the unmerge.
    let (acme, control) = (tenant("acme"), tenant("control"));
    rig.service
        .engine()
        .apply(&acme, &journey(&acme, true))
        .await
        .expect("acme");
    rig.service
        .engine()
        .apply(&control, &journey(&control, false))
        .await
        .expect("control");

    let merged = view_of(&rig, &acme, &user("user-1")).await;
    assert_eq!(merged.computed.page_views, 3);
    assert_eq!(merged.computed.event_counts["track"], 2);
    assert_eq!(merged.anonymous_ids, vec!["anon-1"]);
    let merges = rig
        .service
        .merges(&acme, merged.profile_id)
        .await
        .expect("merges")
        .expect("profile");
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0].reason, MergeReason::Identify);
    assert_eq!(merges[0].event_id, "i1");
    assert_eq!(merges[0].identifier, anon("anon-1"));
    // The merged-away profile's id still finds the live one.
    let via_old = rig
        .service
        .get(&acme, merges[0].from)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(via_old.view.profile_id, merged.profile_id);

    let undone = rig
        .service
        .unmerge(&acme, merged.profile_id, None)
        .await
        .expect("unmerge");
    assert_eq!(undone.merge.id, merges[0].id);
    let kept = view_of(&rig, &acme, &user("user-1")).await;
    let restored = view_of(&rig, &acme, &anon("anon-1")).await;
    assert_ne!(kept.profile_id, restored.profile_id);
    assert_eq!(
        essence(&kept),
        essence(&view_of(&rig, &control, &user("user-1")).await)
    );
    assert_eq!(
        essence(&restored),
        essence(&view_of(&rig, &control, &anon("anon-1")).await)
    );
    // Cold and hot agree, and a second unmerge finds nothing to undo.
    assert_eq!(
        rig.service
            .reconcile_sample(100)
            .await
            .expect("reconcile")
            .drift(),
        0
    );
    assert!(rig
        .service
        .unmerge(&acme, kept.profile_id, None)
        .await
        .is_err());
    // The same identify again does not merge them back: an unmerge blocks the pair.
    rig.service
        .engine()
        .apply(
            &acme,
            &[identify(
                &acme,
                "i2",
                "user-1",
                Some("anon-1"),
                T0 + 6,
                json!({}),
            )],
        )
        .await
        .expect("again");
    assert_ne!(
        view_of(&rig, &acme, &user("user-1")).await.profile_id,
        view_of(&rig, &acme, &anon("anon-1")).await.profile_id
    );

    // A second user id for one profile is refused by default: user-2 gets its own profile...
    let strict = tenant("strict");
    rig.service
        .engine()
        .apply(
            &strict,
            &[
                identify(&strict, "s1", "user-1", Some("anon-9"), T0, json!({})),
                identify(&strict, "s2", "user-2", Some("anon-9"), T0 + 1, json!({})),
            ],
        )
        .await
        .expect("strict");
    let first = view_of(&rig, &strict, &user("user-1")).await;
    let second = view_of(&rig, &strict, &user("user-2")).await;
    assert_ne!(first.profile_id, second.profile_id);
    assert_eq!(first.anonymous_ids, vec!["anon-9"]);
    // ... and merged where the tenant allows two.
    let lenient = tenant("lenient");
    rig.service
        .engine()
        .apply(
            &lenient,
            &[
                identify(&lenient, "l1", "user-1", None, T0, json!({})),
                identify(&lenient, "l2", "user-2", Some("anon-9"), T0 + 1, json!({})),
                call(
                    &lenient,
                    "l3",
                    "alias",
                    T0 + 2,
                    json!({"userId": "user-2", "previousId": "user-1"}),
                ),
            ],
        )
        .await
        .expect("lenient");
    let one = view_of(&rig, &lenient, &user("user-1")).await;
    assert_eq!(one.user_ids, vec!["user-1", "user-2"]);
    let why = rig
        .service
        .merges(&lenient, one.profile_id)
        .await
        .expect("merges")
        .expect("profile");
    assert_eq!(why[0].reason, MergeReason::Alias);
}

/// `pulse profiles rebuild`: the profiles recomputed from the archive equal the live ones.
pub async fn a_rebuild_from_the_archive_equals_the_live_path(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    let mut events = Vec::new();
    for n in 0..20i64 {
        let visitor = format!("anon-{}", n % 7);
        events.push(page(
            &t,
            &format!("p{n}"),
            &visitor,
            T0 + n * 100,
            if n % 2 == 0 { IPHONE } else { DESKTOP },
        ));
        if n % 3 == 0 {
            events.push(identify(
                &t,
                &format!("i{n}"),
                &format!("user-{}", n % 4),
                Some(&visitor),
                T0 + n * 100 + 50,
                json!({"n": n}),
            ));
        }
    }
    for batch in events.chunks(7) {
        rig.service.engine().apply(&t, batch).await.expect("live");
    }
    let live = rig.service.list(&t, None, None, 1_000).await.expect("list");
    let merges_live = count(db, "SELECT COUNT(*) FROM identity_merges").await;
    assert!(merges_live > 0, "the journey merges some profiles");
    let mut done = Vec::new();
    let report = rig
        .service
        .rebuild(&t, 8, |events, total| done.push((events, total)))
        .await
        .expect("rebuild");
    assert_eq!(
        report.profiles_reset as usize,
        live.len() + merges_live as usize
    );
    assert_eq!(report.events, events.len() as u64);
    // The same archive makes the same profiles again: no hot copy is left without one.
    assert_eq!(report.hot_copies_dropped, 0);
    assert_eq!(
        done.last(),
        Some(&(events.len() as u64, events.len() as u64))
    );
    let rebuilt = rig.service.list(&t, None, None, 1_000).await.expect("list");
    // Versions only grow, so consumers of profiles.updates take the rebuilt profiles.
    let highest_live = live.iter().map(|v| v.version).max().expect("profiles");
    assert!(
        rebuilt.iter().all(|v| v.version > highest_live),
        "rebuilt versions continue"
    );
    let shape = |views: &[ProfileView]| -> BTreeMap<String, Value> {
        views
            .iter()
            .map(|v| (v.profile_id.to_string(), essence(v)))
            .collect()
    };
    assert_eq!(shape(&rebuilt), shape(&live));
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM identity_merges").await,
        merges_live
    );
}

/// A corrupted, a stale and a misdirected hot copy are found, repaired from the store and
/// audited; the next pass finds nothing.
pub async fn the_reconciliation_repairs_corrupted_hot_copies(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    rig.service
        .engine()
        .apply(
            &t,
            &[
                identify(
                    &t,
                    "i1",
                    "user-1",
                    Some("anon-1"),
                    T0,
                    json!({"plan": "pro"}),
                ),
                identify(&t, "i2", "user-2", None, T0 + 1, json!({"plan": "free"})),
            ],
        )
        .await
        .expect("apply");
    let one = view_of(&rig, &t, &user("user-1")).await;
    let two = view_of(&rig, &t, &user("user-2")).await;
    let hot = rig.service.engine().hot();
    let cache: Arc<dyn Cache> = Arc::new(rig.cache.clone());
    cache
        .set(
            &hot.profile_key(&t, one.profile_id),
            Bytes::from_static(b"{not json"),
            None,
        )
        .await
        .expect("corrupt");
    let mut stale = two.clone();
    stale
        .traits
        .insert("plan".into(), Value::from("enterprise"));
    cache
        .set(
            &hot.profile_key(&t, two.profile_id),
            Bytes::from(
                serde_json::to_vec(&pulse_profiles::hot::HotEntry::Profile(Box::new(stale)))
                    .expect("json"),
            ),
            None,
        )
        .await
        .expect("stale");
    cache
        .set(
            &hot.pointer_key(&t, &anon("anon-1")),
            Bytes::from(two.profile_id.to_string()),
            None,
        )
        .await
        .expect("misdirect");
    // Reads meanwhile still answer: a corrupt hot copy is read from the store.
    assert_eq!(
        rig.service
            .get(&t, one.profile_id)
            .await
            .expect("read")
            .expect("found")
            .view
            .traits["plan"],
        "pro"
    );

    let report = rig.service.reconcile_all(|_| {}).await.expect("reconcile");
    assert_eq!(report.repaired.get("corrupt"), Some(&1));
    assert_eq!(report.repaired.get("stale"), Some(&1));
    assert_eq!(report.repaired.get("wrong_owner"), Some(&1));
    let audit = rig
        .service
        .engine()
        .store()
        .repairs(10)
        .await
        .expect("audit");
    assert_eq!(audit.len(), 3);
    assert!(audit
        .iter()
        .any(|r| r.reason == "stale" && r.found.contains("enterprise")));
    assert_eq!(
        view_of(&rig, &t, &anon("anon-1")).await.profile_id,
        one.profile_id
    );
    let hot_two = rig
        .service
        .get(&t, two.profile_id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(
        (hot_two.source, hot_two.view.traits["plan"].as_str()),
        ("hot", Some("free"))
    );
    assert_eq!(
        rig.service
            .reconcile_all(|_| {})
            .await
            .expect("again")
            .drift(),
        0
    );
}

/// With the cache down, reads come from the store and writes still commit; once it is back,
/// the reconciliation brings the hot copies up to date.
pub async fn reads_fall_back_to_the_store_while_the_cache_is_down(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    rig.service
        .engine()
        .apply(&t, &[page(&t, "p1", "anon-1", T0, IPHONE)])
        .await
        .expect("apply");
    assert_eq!(
        view_of(&rig, &t, &anon("anon-1")).await.computed.page_views,
        1
    );
    rig.cache.fail_writes(crate::faults::WriteFault::Fail);
    rig.cache.fail_reads();
    rig.service
        .engine()
        .apply(&t, &[page(&t, "p2", "anon-1", T0 + 1, IPHONE)])
        .await
        .expect("a cache outage does not fail the batch");
    let read = rig
        .service
        .by_identifier(&t, &anon("anon-1"))
        .await
        .expect("read")
        .expect("found");
    assert_eq!((read.source, read.view.computed.page_views), ("cold", 2));
    rig.cache.heal();
    // The hot copy still says 1: drift the reconciliation repairs.
    rig.clock.advance(Duration::from_secs(1));
    let report = rig.service.reconcile_sample(100).await.expect("reconcile");
    assert_eq!(report.repaired.get("stale"), Some(&1));
    let read = rig
        .service
        .by_identifier(&t, &anon("anon-1"))
        .await
        .expect("read")
        .expect("found");
    assert_eq!((read.source, read.view.computed.page_views), ("hot", 2));
}

/// `POST /api/v1/profiles` and `GET /api/v1/profiles?trait.K=V`.
pub async fn profiles_created_from_traits_are_listed_by_trait(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    let create = |user: &str, plan: Value, key: Option<&str>| pulse_profiles::service::NewProfile {
        user_id: Some(user.to_owned()),
        anonymous_id: None,
        traits: json!({"plan": plan, "seats": 3, "beta": true})
            .as_object()
            .cloned()
            .expect("object"),
        idempotency_key: key.map(str::to_owned),
    };
    let first = rig
        .service
        .create(&t, create("u1", json!("pro"), Some("k1")))
        .await
        .expect("create");
    assert!(first.created);
    let again = rig
        .service
        .create(&t, create("u1", json!("pro"), Some("k1")))
        .await
        .expect("again");
    assert!(!again.created);
    assert_eq!(again.view.profile_id, first.view.profile_id);
    assert_eq!(
        again.view.computed.event_counts["identify"], 1,
        "the same key is the same identify"
    );
    rig.service
        .create(&t, create("u2", json!("free"), None))
        .await
        .expect("create");
    rig.service
        .create(&t, create("u3", json!("pro"), None))
        .await
        .expect("create");
    let filter = |key: &str, value: &str| TraitFilter {
        key: key.into(),
        value: value.into(),
    };
    let pros = rig
        .service
        .list(&t, Some(&filter("plan", "pro")), None, 10)
        .await
        .expect("list");
    let mut users: Vec<&str> = pros.iter().map(|v| v.user_ids[0].as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, vec!["u1", "u3"]);
    assert_eq!(
        rig.service
            .list(&t, Some(&filter("seats", "3")), None, 10)
            .await
            .expect("list")
            .len(),
        3
    );
    assert_eq!(
        rig.service
            .list(&t, Some(&filter("beta", "true")), None, 10)
            .await
            .expect("list")
            .len(),
        3
    );
    let page = rig.service.list(&t, None, None, 2).await.expect("list");
    let next = rig
        .service
        .list(&t, None, Some(page[1].profile_id), 2)
        .await
        .expect("list");
    assert_eq!(page.len() + next.len(), 3);
    let blocked = pulse_profiles::service::NewProfile {
        user_id: Some("null".into()),
        ..pulse_profiles::service::NewProfile::default()
    };
    assert!(rig.service.create(&t, blocked).await.is_err());
    // A refused identifier beside a good one is refused too, not dropped for the other.
    let half_blocked = pulse_profiles::service::NewProfile {
        user_id: Some("undefined".into()),
        anonymous_id: Some("anon-77".into()),
        ..pulse_profiles::service::NewProfile::default()
    };
    let err = rig
        .service
        .create(&t, half_blocked)
        .await
        .expect_err("a blocked user id");
    assert!(
        matches!(&err, pulse_core::PortError::Invalid(message) if message.contains("user_id")),
        "{err}"
    );
    assert!(rig
        .service
        .by_identifier(&t, &anon("anon-77"))
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM outbox_events WHERE topic = 'profiles.updates'"
        )
        .await,
        3,
        "one profiles.updates record per committed change"
    );
}

/// The store's own refusals: a profile that changed since it was read is a conflict.
pub async fn a_stale_commit_is_a_conflict(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    rig.service
        .engine()
        .apply(&t, &[page(&t, "p1", "anon-1", T0, IPHONE)])
        .await
        .expect("apply");
    let store: &dyn ProfileStore = db;
    let loaded = store
        .load(&t, &["p2".into()], &[anon("anon-1")])
        .await
        .expect("load");
    let rules = IdentitySettings::default();
    let mut working = pulse_profiles::resolve::Working::new(t.clone(), &rules, loaded, T0);
    let event = pulse_profiles::event::ProfileEvent::read(
        &page(&t, "p2", "anon-1", T0 + 1, IPHONE).event,
        &rules,
    )
    .expect("event");
    working.apply(&event, None);
    let (changes, _) = working.finish();
    // Meanwhile another writer changes the profile.
    rig.service
        .engine()
        .apply(&t, &[page(&t, "p3", "anon-1", T0 + 2, IPHONE)])
        .await
        .expect("other writer");
    let err = store.commit(&t, changes).await.expect_err("stale");
    assert!(matches!(err, pulse_core::PortError::Conflict(_)), "{err}");
    assert_eq!(
        view_of(&rig, &t, &anon("anon-1")).await.computed.page_views,
        2
    );
}

/// An unmerge's block holds for good: after one of the pair joins a third profile, a later
/// batch naming both sides still does not merge them; and a profile merged away cannot be
/// unmerged (what it took in moved on with it).
pub async fn an_unmerge_keeps_the_pair_apart_after_later_merges(db: &Database) {
    // Profile ids follow the tenant, so whether the profile merged away is the first or the
    // second of its blocked pair differs between tenants: several take both sides.
    for n in 0..6 {
        let name = format!("blocks-{n}");
        let rig = rig_allowing_user_ids(db, &name, 3);
        the_pair_stays_apart(&rig, &tenant(&name)).await;
    }
}

async fn the_pair_stays_apart(rig: &Rig, t: &TenantId) {
    let t = t.clone();
    let apply = |events: Vec<Incoming>| {
        let engine = rig.service.engine().clone();
        let t = t.clone();
        async move { engine.apply(&t, &events).await.expect("apply") }
    };
    apply(vec![
        page(&t, "p1", "anon-1", T0, IPHONE),
        track(&t, "t1", "user-1", T0 + 1, "Order Placed"),
    ])
    .await;
    apply(vec![identify(
        &t,
        "i1",
        "user-1",
        Some("anon-1"),
        T0 + 2,
        json!({}),
    )])
    .await;
    let merged = view_of(rig, &t, &user("user-1")).await;
    let merges = rig
        .service
        .merges(&t, merged.profile_id)
        .await
        .expect("merges")
        .expect("profile");
    assert_eq!(merges.len(), 1);
    let err = rig
        .service
        .unmerge(&t, merges[0].from, None)
        .await
        .expect_err("a merged-away profile has nothing to give back");
    assert!(
        matches!(&err, pulse_core::PortError::Invalid(message) if message.contains("merged into")),
        "{err}"
    );
    rig.service
        .unmerge(&t, merged.profile_id, None)
        .await
        .expect("unmerge");
    // One of the pair joins a third profile...
    apply(vec![track(&t, "t2", "user-2", T0 + 3, "Order Placed")]).await;
    apply(vec![identify(
        &t,
        "i2",
        "user-2",
        Some("anon-1"),
        T0 + 4,
        json!({}),
    )])
    .await;
    let third = view_of(rig, &t, &user("user-2")).await;
    assert_eq!(third.anonymous_ids, vec!["anon-1"]);
    // ... and a later batch naming both sides leaves them apart.
    apply(vec![identify(
        &t,
        "i3",
        "user-1",
        Some("anon-1"),
        T0 + 5,
        json!({}),
    )])
    .await;
    let one = view_of(rig, &t, &user("user-1")).await;
    let other = view_of(rig, &t, &anon("anon-1")).await;
    assert_ne!(one.profile_id, other.profile_id, "{one:?} {other:?}");
    assert_eq!(one.user_ids, vec!["user-1"]);
    assert_eq!(other.user_ids, vec!["user-2"]);
}

/// The profiles and the gateway's `postgres_sink` both archive an event in `events_raw`:
/// whichever comes second keeps the first's row and adds its plugin versions.
pub async fn the_archive_keeps_every_writers_versions(db: &Database) {
    let rig = rig(db);
    let t = tenant("acme");
    let first = page(&t, "p1", "anon-1", T0, IPHONE);
    rig.service
        .engine()
        .apply(&t, std::slice::from_ref(&first))
        .await
        .expect("apply");
    let sink = r#"{"postgres_sink": "1.0.0"}"#;
    let stamped = db
        .archive_events(&[first.event.clone(), first.event.clone()], sink)
        .await
        .expect("archive");
    assert_eq!(stamped, 1, "the row is stamped once, not inserted again");
    assert_eq!(
        db.archive_events(std::slice::from_ref(&first.event), sink)
            .await
            .expect("archive again"),
        0,
        "the same writer again changes nothing"
    );
    let versions = db
        .fetch_optional(&Sql::new(
            "SELECT CAST(plugin_versions AS TEXT) FROM events_raw WHERE event_id = 'p1'".to_owned(),
        ))
        .await
        .expect("read")
        .expect("archived")
        .text(0)
        .expect("text");
    let versions: Value = serde_json::from_str(&versions).expect("json");
    assert_eq!(versions["postgres_sink"], "1.0.0", "{versions}");
    assert_eq!(versions["profiles"], "1.0.0", "{versions}");
    assert_eq!(count(db, "SELECT COUNT(*) FROM events_raw").await, 1);
}
