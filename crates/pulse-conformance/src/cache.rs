//! The cache suite: what every [`Cache`] adapter must do. Keys are unique per case so the suite can
//! share one Redis server with other tests.

use std::time::Duration;

use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite};

use crate::unique_name;

fn key(name: &str) -> String {
    format!("{}:{name}", unique_name("conformance"))
}

/// A TTL short enough to wait for. Cases only ever wait for such an entry to disappear, never
/// read it back before expiry: on a loaded machine two requests may be further apart than this.
const SHORT_TTL: Duration = Duration::from_millis(300);

/// How long an entry under [`SHORT_TTL`] may take to disappear before the case fails.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

/// Polls until `key` reads as missing, failing after [`EXPIRY_DEADLINE`].
async fn wait_until_gone<C: Cache + ?Sized>(cache: &C, key: &str) {
    let started = std::time::Instant::now();
    while cache.get(key).await.expect("get").is_some() {
        assert!(
            started.elapsed() < EXPIRY_DEADLINE,
            "{key} still there {EXPIRY_DEADLINE:?} after it was written with a TTL of {SHORT_TTL:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Values can be written, read back and removed.
pub async fn set_get_delete_round_trip<C: Cache + ?Sized>(cache: &C) {
    let k = key("a");
    assert_eq!(cache.get(&k).await.expect("get"), None);
    let value = Bytes::from_static(br#"{"multiplier":1.5,"updated_at":1704200000}"#);
    cache.set(&k, value.clone(), None).await.expect("set");
    assert_eq!(cache.get(&k).await.expect("get"), Some(value));
    cache
        .set(&k, Bytes::from_static(b"x"), None)
        .await
        .expect("overwrite");
    assert_eq!(
        cache.get(&k).await.expect("get").as_deref(),
        Some(&b"x"[..])
    );
    assert!(cache.delete(&k).await.expect("delete"));
    assert!(!cache.delete(&k).await.expect("delete again"));
    assert_eq!(cache.get(&k).await.expect("get"), None);
    cache.ping().await.expect("ping");
}

/// An entry is gone once its TTL has passed, and only that entry.
pub async fn entries_expire_after_their_ttl<C: Cache + ?Sized>(cache: &C) {
    let (lasting, fleeting) = (key("ttl-lasting"), key("ttl-fleeting"));
    cache
        .set(
            &lasting,
            Bytes::from_static(b"1"),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("set");
    cache
        .set(&fleeting, Bytes::from_static(b"2"), Some(SHORT_TTL))
        .await
        .expect("set");
    assert_eq!(
        cache.get(&lasting).await.expect("get").as_deref(),
        Some(&b"1"[..]),
        "an entry with a TTL reads back before it expires"
    );
    wait_until_gone(cache, &fleeting).await;
    assert_eq!(
        cache
            .get_many(&[fleeting, lasting])
            .await
            .expect("get_many"),
        vec![None, Some(Bytes::from_static(b"1"))],
        "expiry takes only the entry whose TTL passed"
    );
}

/// `ttl` distinguishes missing keys, keys without expiry and keys with one.
pub async fn ttl_reports_missing_persistent_and_expiring_keys<C: Cache + ?Sized>(cache: &C) {
    let missing = key("missing");
    let persistent = key("persistent");
    let expiring = key("expiring");
    cache
        .set(&persistent, Bytes::from_static(b"1"), None)
        .await
        .expect("set");
    cache
        .set(
            &expiring,
            Bytes::from_static(b"1"),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("set");
    assert_eq!(cache.ttl(&missing).await.expect("ttl"), None);
    assert_eq!(cache.ttl(&persistent).await.expect("ttl"), Some(None));
    let remaining = cache
        .ttl(&expiring)
        .await
        .expect("ttl")
        .flatten()
        .expect("has ttl");
    assert!(remaining > Duration::from_secs(55) && remaining <= Duration::from_secs(60));
}

/// Concurrent increments are never lost.
pub async fn incr_by_is_atomic_under_concurrency<C: Cache + ?Sized>(cache: &C) {
    let k = key("counter");
    let tasks = (0..10).map(|_| {
        let k = k.clone();
        async move {
            for _ in 0..50 {
                cache.incr_by(&k, 2, None).await.expect("incr");
            }
        }
    });
    futures::future::join_all(tasks).await;
    assert_eq!(cache.incr_by(&k, -1, None).await.expect("decr"), 999);
    assert_eq!(
        cache.get(&k).await.expect("get").as_deref(),
        Some(&b"999"[..])
    );
}

/// An increment with a TTL makes the counter expire.
pub async fn incr_by_sets_the_ttl<C: Cache + ?Sized>(cache: &C) {
    let (lasting, fleeting) = (key("window-lasting"), key("window-fleeting"));
    assert_eq!(
        cache
            .incr_by(&lasting, 5, Some(Duration::from_secs(60)))
            .await
            .expect("incr"),
        5
    );
    let remaining = cache
        .ttl(&lasting)
        .await
        .expect("ttl")
        .flatten()
        .expect("the increment set a TTL");
    assert!(
        remaining > Duration::from_secs(55) && remaining <= Duration::from_secs(60),
        "{remaining:?}"
    );
    assert_eq!(
        cache
            .incr_by(&fleeting, 5, Some(SHORT_TTL))
            .await
            .expect("incr"),
        5
    );
    wait_until_gone(cache, &fleeting).await;
    assert_eq!(
        cache.incr_by(&fleeting, 1, None).await.expect("incr"),
        1,
        "restarts after expiry"
    );
}

/// Incrementing text is a caller error, not an outage.
pub async fn incr_by_on_a_non_integer_fails_without_retry<C: Cache + ?Sized>(cache: &C) {
    let k = key("text");
    cache
        .set(&k, Bytes::from_static(b"hello"), None)
        .await
        .expect("set");
    let err = cache.incr_by(&k, 1, None).await.expect_err("incr on text");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(
        cache.get(&k).await.expect("get").as_deref(),
        Some(&b"hello"[..])
    );
}

/// `get_many` answers in the order asked, with `None` for missing keys.
pub async fn get_many_keeps_order_and_reports_missing<C: Cache + ?Sized>(cache: &C) {
    let keys: Vec<String> = (0..5).map(|i| key(&format!("m{i}"))).collect();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        cache
            .set(k, Bytes::from(i.to_string()), None)
            .await
            .expect("set");
    }
    let got = cache.get_many(&keys).await.expect("get_many");
    let expected: Vec<Option<Bytes>> = (0..5)
        .map(|i| (i % 2 == 0).then(|| Bytes::from(i.to_string())))
        .collect();
    assert_eq!(got, expected);
    assert!(cache
        .get_many(&[])
        .await
        .expect("empty get_many")
        .is_empty());
}

/// A batch of sets, increments and deletes lands as a whole.
pub async fn apply_writes_a_batch<C: Cache + ?Sized>(cache: &C) {
    let (set, counter, gone) = (key("set"), key("counter"), key("gone"));
    cache
        .set(&gone, Bytes::from_static(b"1"), None)
        .await
        .expect("set");
    cache
        .apply(vec![
            CacheWrite::Set {
                key: set.clone(),
                value: Bytes::from_static(b"v"),
                ttl: Some(Duration::from_secs(60)),
            },
            CacheWrite::IncrBy {
                key: counter.clone(),
                delta: 3,
                ttl: None,
            },
            CacheWrite::IncrBy {
                key: counter.clone(),
                delta: 4,
                ttl: Some(Duration::from_secs(60)),
            },
            CacheWrite::Delete { key: gone.clone() },
        ])
        .await
        .expect("apply");
    let got = cache
        .get_many(&[set.clone(), counter.clone(), gone])
        .await
        .expect("get_many");
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"v")),
            Some(Bytes::from_static(b"7")),
            None
        ]
    );
    assert!(cache.ttl(&set).await.expect("ttl").flatten().is_some());
    assert!(cache.ttl(&counter).await.expect("ttl").flatten().is_some());
    cache.apply(Vec::new()).await.expect("empty batch");
}

/// A guarded batch applies once: the second attempt with the same guard changes nothing.
pub async fn apply_if_absent_applies_once_per_guard<C: Cache + ?Sized>(cache: &C) {
    let (guard, counter, value) = (key("seen"), key("counter"), key("value"));
    let writes = || {
        vec![
            CacheWrite::IncrBy {
                key: counter.clone(),
                delta: 1,
                ttl: Some(Duration::from_secs(60)),
            },
            CacheWrite::Set {
                key: value.clone(),
                value: Bytes::from_static(b"v"),
                ttl: None,
            },
        ]
    };
    assert!(cache
        .apply_if_absent(&guard, Duration::from_secs(60), writes())
        .await
        .expect("first"));
    assert!(!cache
        .apply_if_absent(&guard, Duration::from_secs(60), writes())
        .await
        .expect("second"));
    assert_eq!(
        cache.get(&counter).await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert!(
        cache.ttl(&guard).await.expect("ttl").flatten().is_some(),
        "the guard expires"
    );
    assert!(cache.ttl(&counter).await.expect("ttl").flatten().is_some());
    assert_eq!(
        cache.get(&value).await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    // Concurrent attempts: exactly one wins.
    let other_guard = key("race");
    let attempts =
        (0..8).map(|_| cache.apply_if_absent(&other_guard, Duration::from_secs(60), writes()));
    let won = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|outcome| *outcome.as_ref().expect("attempt"))
        .count();
    assert_eq!(won, 1);
    assert_eq!(
        cache.get(&counter).await.expect("get").as_deref(),
        Some(&b"2"[..])
    );
}

/// Many guarded items in one call: each applies once, in order, duplicates within the call too.
pub async fn apply_if_absent_many_applies_each_item_once<C: Cache + ?Sized>(cache: &C) {
    use pulse_core::cache::Guarded;
    let counter = key("many-counter");
    let guards: Vec<String> = (0..3).map(|i| key(&format!("many-guard-{i}"))).collect();
    let item = |guard: &String| Guarded {
        guard: guard.clone(),
        guard_ttl: Duration::from_secs(60),
        writes: vec![CacheWrite::IncrBy {
            key: counter.clone(),
            delta: 1,
            ttl: Some(Duration::from_secs(60)),
        }],
    };
    // The second item repeats the first guard: only its first occurrence applies.
    let items = vec![
        item(&guards[0]),
        item(&guards[0]),
        item(&guards[1]),
        item(&guards[2]),
    ];
    let applied = cache.apply_if_absent_many(items).await.expect("many");
    assert_eq!(applied, vec![true, false, true, true]);
    let again = cache
        .apply_if_absent_many(vec![item(&guards[1])])
        .await
        .expect("again");
    assert_eq!(again, vec![false]);
    assert_eq!(
        cache.get(&counter).await.expect("get").as_deref(),
        Some(&b"3"[..])
    );
    assert!(cache
        .apply_if_absent_many(Vec::new())
        .await
        .expect("empty")
        .is_empty());
}

fn index_add(key: &str, member: &str, score: i64) -> CacheWrite {
    CacheWrite::IndexAdd {
        key: key.to_owned(),
        member: member.to_owned(),
        score,
        ttl: Some(Duration::from_secs(60)),
    }
}

/// A scored index lists members by score, highest first, and forgets removed, trimmed and
/// emptied members.
pub async fn index_ranges_by_score<C: Cache + ?Sized>(cache: &C) {
    let index = key("index");
    assert!(cache
        .index_range(&index, i64::MIN, 10)
        .await
        .expect("missing index")
        .is_empty());
    cache
        .apply(vec![
            index_add(&index, "a", 1_764_000_000_010),
            index_add(&index, "b", 1_764_000_000_020),
            index_add(&index, "c", 1_764_000_000_030),
        ])
        .await
        .expect("add");
    let index_ref = index.as_str();
    let ranged = |min, limit| cache.index_range(index_ref, min, limit);
    assert_eq!(
        ranged(1_764_000_000_015, 10).await.expect("range"),
        vec![
            ("c".to_owned(), 1_764_000_000_030),
            ("b".to_owned(), 1_764_000_000_020)
        ]
    );
    assert_eq!(ranged(i64::MIN, 1).await.expect("limit").len(), 1);
    assert!(ranged(i64::MIN, 0).await.expect("limit 0").is_empty());
    assert!(cache.ttl(&index).await.expect("ttl").flatten().is_some());

    // Re-adding replaces the score; removing and trimming drop members.
    cache
        .apply(vec![
            index_add(&index, "a", 1_764_000_000_040),
            CacheWrite::IndexRemove {
                key: index.clone(),
                member: "b".into(),
            },
            CacheWrite::IndexTrim {
                key: index.clone(),
                below: 1_764_000_000_035,
            },
        ])
        .await
        .expect("edit");
    assert_eq!(
        ranged(i64::MIN, 10).await.expect("range"),
        vec![("a".to_owned(), 1_764_000_000_040)]
    );
    cache
        .apply(vec![CacheWrite::IndexRemove {
            key: index.clone(),
            member: "a".into(),
        }])
        .await
        .expect("remove last");
    assert_eq!(
        cache.ttl(&index).await.expect("ttl"),
        None,
        "empty index is gone"
    );
}

/// Index writes take part in guarded batches like any other write: the first attempt applies
/// them, a second attempt under the same guard changes nothing.
pub async fn index_writes_apply_under_a_guard<C: Cache + ?Sized>(cache: &C) {
    let (index, guard) = (key("guarded-index"), key("guarded-index-guard"));
    let first = vec![
        index_add(&index, "kept", 7),
        index_add(&index, "other", 6),
        index_add(&index, "trimmed", 1),
        CacheWrite::IndexTrim {
            key: index.clone(),
            below: 5,
        },
        index_add(&index, "removed", 9),
        CacheWrite::IndexRemove {
            key: index.clone(),
            member: "removed".into(),
        },
    ];
    assert!(cache
        .apply_if_absent(&guard, Duration::from_secs(60), first)
        .await
        .expect("first"));
    let after_first = vec![("kept".to_owned(), 7), ("other".to_owned(), 6)];
    assert_eq!(
        cache.index_range(&index, 0, 10).await.expect("range"),
        after_first
    );
    // Each of these writes alone would show in the index.
    let second = vec![
        index_add(&index, "added", 20),
        CacheWrite::IndexRemove {
            key: index.clone(),
            member: "kept".into(),
        },
        CacheWrite::IndexTrim {
            key: index.clone(),
            below: 7,
        },
    ];
    assert!(!cache
        .apply_if_absent(&guard, Duration::from_secs(60), second)
        .await
        .expect("second"));
    assert_eq!(
        cache.index_range(&index, 0, 10).await.expect("range"),
        after_first,
        "the second attempt under the guard changed the index"
    );
}

/// Plain reads and index reads refuse each other's keys rather than misreading them.
pub async fn indexes_and_values_do_not_mix<C: Cache + ?Sized>(cache: &C) {
    let (index, value) = (key("typed-index"), key("typed-value"));
    cache
        .apply(vec![index_add(&index, "m", 1)])
        .await
        .expect("add");
    cache
        .set(&value, Bytes::from_static(b"v"), None)
        .await
        .expect("set");
    assert!(cache.get(&index).await.is_err(), "get on an index");
    assert_eq!(
        cache
            .get_many(std::slice::from_ref(&index))
            .await
            .expect("get_many"),
        vec![None],
        "get_many reads an index as missing, like MGET"
    );
    assert!(cache.index_range(&value, 0, 10).await.is_err());
    let err = cache
        .apply(vec![index_add(&value, "m", 1)])
        .await
        .expect_err("index write on a value");
    assert!(!err.is_retryable(), "{err}");
    cache.delete(&value).await.expect("delete");
}
