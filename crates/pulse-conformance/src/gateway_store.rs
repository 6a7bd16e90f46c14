//! The gateway's storage suite, for any adapter of its ports (the relational store on SQLite and
//! on PostgreSQL today): the exact dedup window, the delivery ledger, parked deliveries and their
//! leases, dead letters with their filters, pages and redrive, the tenants' versioned pipelines,
//! and the `events_raw` archive. Cases are written against the port traits; the archive, which
//! is no port, is reached through [`EventArchive`]. Every case expects a store of its own, empty.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use pulse_core::{PortResult, TenantId};
use pulse_gateway::envelope::{CanonicalEvent, Source};
use pulse_gateway::ports::{
    DeadLetter, DeadLetterFilter, DeadLetterStore, DedupEntry, DedupStore, DeliveryLedger,
    NewDeadLetter, Parked, ParkedDeliveries, PipelineStore, Recorded, StoredPipeline, ToPark,
};
use pulse_store::{Database, Sql};

/// "Now" of the cases, Unix ms.
const T0: i64 = 1_700_000_000_000;
/// The lease of claimed parked events.
const LEASE_MS: i64 = 30_000;
/// More than one multi-row statement of the SQL store holds (400 rows).
const MANY: usize = 901;
/// Above 2^53: a float would round it to 9007199254740992.
const BIG_INT: u64 = 9_007_199_254_740_993;

/// The `events_raw` archive as the suite writes and reads it back.
#[async_trait::async_trait]
pub trait EventArchive: Send + Sync {
    /// Archives `events` (an event already archived for its tenant stays); how many are new.
    async fn archive(&self, events: &[CanonicalEvent], plugin_versions: &str) -> PortResult<u64>;

    /// The payloads archived for `event_id` of `tenant`, one per row, as JSON text.
    async fn archived_payloads(&self, tenant: &TenantId, event_id: &str)
        -> PortResult<Vec<String>>;
}

#[async_trait::async_trait]
impl EventArchive for Database {
    async fn archive(&self, events: &[CanonicalEvent], plugin_versions: &str) -> PortResult<u64> {
        self.archive_events(events, plugin_versions).await
    }

    async fn archived_payloads(
        &self,
        tenant: &TenantId,
        event_id: &str,
    ) -> PortResult<Vec<String>> {
        let sql = Sql::new(
            "SELECT CAST(payload AS TEXT) FROM events_raw WHERE tenant_id = $1 AND event_id = $2",
        )
        .bind(tenant.as_str())
        .bind(event_id);
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| row.text(0))
            .collect()
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

fn entry(key: &str, event_id: &str, received_at_ms: i64, expires_at_ms: i64) -> DedupEntry {
    DedupEntry {
        key: key.to_owned(),
        event_id: event_id.to_owned(),
        received_at_ms,
        expires_at_ms,
    }
}

fn recorded_as(event_id: &str, received_at_ms: i64) -> Recorded {
    Recorded {
        event_id: event_id.to_owned(),
        received_at_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// Dedup
// ---------------------------------------------------------------------------------------------

/// Recorded keys are found with their event, and only for their tenant: the same key of another
/// tenant is its own; keys never recorded are absent from the answer.
pub async fn dedup_keys_are_found_only_for_their_tenant<S: DedupStore + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let expires = T0 + 60_000;
    store
        .record(
            &a,
            &[
                entry("k:order-1", "ev-1", T0, expires),
                entry("e:client-2", "ev-2", T0 + 1, expires + 1),
            ],
        )
        .await
        .expect("record for A");
    let keys = ids(&["k:order-1", "e:client-2", "k:never"]);
    let found = store.recorded(&a, &keys, T0 + 10).await.expect("recorded");
    assert_eq!(
        found,
        HashMap::from([
            ("k:order-1".to_owned(), recorded_as("ev-1", T0)),
            ("e:client-2".to_owned(), recorded_as("ev-2", T0 + 1)),
        ])
    );
    assert!(
        store
            .recorded(&b, &keys, T0 + 10)
            .await
            .expect("recorded")
            .is_empty(),
        "B sees none of A's keys"
    );
    store
        .record(&b, &[entry("k:order-1", "ev-b", T0 + 5, expires)])
        .await
        .expect("record for B");
    assert_eq!(
        store.recorded(&b, &keys, T0 + 10).await.expect("recorded"),
        HashMap::from([("k:order-1".to_owned(), recorded_as("ev-b", T0 + 5))]),
        "B's key is its own"
    );
    assert_eq!(
        store.recorded(&a, &keys, T0 + 10).await.expect("recorded")["k:order-1"],
        recorded_as("ev-1", T0),
        "and A's is untouched by it"
    );
    assert!(store
        .recorded(&a, &[], T0)
        .await
        .expect("no keys")
        .is_empty());
}

/// A key is live until its expiry: at `expires_at_ms` it is no longer found, and a new event
/// recorded under it then takes it over (the expired entry is replaced, received time and
/// expiry included).
pub async fn an_expired_dedup_key_is_not_found_and_is_taken_over<S: DedupStore + ?Sized>(
    store: &S,
) {
    let a = tenant("tenant-a");
    let key = ids(&["k:retry"]);
    store
        .record(&a, &[entry("k:retry", "ev-old", T0, T0 + 1_000)])
        .await
        .expect("record");
    assert_eq!(
        store.recorded(&a, &key, T0 + 999).await.expect("recorded")["k:retry"],
        recorded_as("ev-old", T0),
        "live one millisecond before its expiry"
    );
    assert!(
        store
            .recorded(&a, &key, T0 + 1_000)
            .await
            .expect("recorded")
            .is_empty(),
        "not found from its expiry on"
    );
    store
        .record(&a, &[entry("k:retry", "ev-new", T0 + 1_000, T0 + 2_000)])
        .await
        .expect("record over an expired entry");
    assert_eq!(
        store
            .recorded(&a, &key, T0 + 1_500)
            .await
            .expect("recorded")["k:retry"],
        recorded_as("ev-new", T0 + 1_000),
        "the new event took the expired key"
    );
    assert!(
        store
            .recorded(&a, &key, T0 + 2_000)
            .await
            .expect("recorded")
            .is_empty(),
        "with the new event's expiry"
    );
}

/// A live key keeps its first event: a second record under it changes neither the event, nor the
/// received time, nor the expiry.
pub async fn a_live_dedup_key_keeps_its_first_event<S: DedupStore + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let key = ids(&["e:dup"]);
    store
        .record(&a, &[entry("e:dup", "ev-first", T0, T0 + 1_000)])
        .await
        .expect("record");
    store
        .record(&a, &[entry("e:dup", "ev-second", T0 + 500, T0 + 1_500)])
        .await
        .expect("record again while live");
    assert_eq!(
        store.recorded(&a, &key, T0 + 600).await.expect("recorded")["e:dup"],
        recorded_as("ev-first", T0)
    );
    assert!(
        store
            .recorded(&a, &key, T0 + 1_200)
            .await
            .expect("recorded")
            .is_empty(),
        "the first expiry stays: the second record did not extend it"
    );
}

/// Expiry deletes the dedup keys and delivery records whose expiry has come, counts them, and
/// keeps the live ones: after it, a deleted key is not found even when asked at a time it was
/// live, and a deleted delivery is no longer delivered.
pub async fn expire_deletes_expired_keys_and_deliveries_and_counts_them<
    S: DedupStore + DeliveryLedger + ?Sized,
>(
    store: &S,
) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    store
        .record(
            &a,
            &[
                entry("k:short-1", "ev-1", T0, T0 + 100),
                entry("k:long", "ev-2", T0, T0 + 10_000),
            ],
        )
        .await
        .expect("record A");
    store
        .record(&b, &[entry("k:short-2", "ev-3", T0, T0 + 100)])
        .await
        .expect("record B");
    store
        .mark_delivered(&a, "webhook", &ids(&["ev-1", "ev-2"]), T0, T0 + 100)
        .await
        .expect("mark short");
    store
        .mark_delivered(&b, "webhook", &ids(&["ev-3"]), T0, T0 + 10_000)
        .await
        .expect("mark long");

    assert_eq!(store.expire(T0 + 99).await.expect("expire"), 0, "none due");
    assert_eq!(
        store.expire(T0 + 100).await.expect("expire"),
        4,
        "two keys and two deliveries expired at T0 + 100"
    );
    assert_eq!(store.expire(T0 + 100).await.expect("expire"), 0, "gone");

    let keys = ids(&["k:short-1", "k:long", "k:short-2"]);
    assert_eq!(
        store
            .recorded(&a, &keys, T0)
            .await
            .expect("recorded")
            .into_keys()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["k:long".to_owned()]),
        "the expired key is deleted, not only hidden"
    );
    assert!(store
        .recorded(&b, &keys, T0)
        .await
        .expect("recorded")
        .is_empty());
    assert!(store
        .delivered(&a, "webhook", &ids(&["ev-1", "ev-2"]))
        .await
        .expect("delivered")
        .is_empty());
    assert_eq!(
        store
            .delivered(&b, "webhook", &ids(&["ev-3"]))
            .await
            .expect("delivered"),
        set(&["ev-3"]),
        "a live delivery stays"
    );
    assert_eq!(
        store.expire(T0 + 10_000).await.expect("expire"),
        2,
        "the long key and the long delivery"
    );
}

/// Many keys (more than one statement's worth) in one record, one lookup and one expiry.
pub async fn many_dedup_keys_in_one_call<S: DedupStore + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let entries: Vec<DedupEntry> = (0..MANY)
        .map(|n| entry(&format!("k:{n}"), &format!("ev-{n}"), T0, T0 + 1_000))
        .collect();
    store.record(&a, &entries).await.expect("record many");
    let mut keys: Vec<String> = entries.iter().map(|entry| entry.key.clone()).collect();
    keys.extend((0..99).map(|n| format!("k:unknown-{n}")));
    let found = store.recorded(&a, &keys, T0).await.expect("recorded");
    assert_eq!(found.len(), MANY, "every recorded key, none of the unknown");
    for n in [0, 399, 400, 401, 799, 800, MANY - 1] {
        assert_eq!(
            found[&format!("k:{n}")],
            recorded_as(&format!("ev-{n}"), T0)
        );
    }
    // Taken over all at once, across statements.
    let again: Vec<DedupEntry> = (0..MANY)
        .map(|n| {
            entry(
                &format!("k:{n}"),
                &format!("ev-new-{n}"),
                T0 + 1_000,
                T0 + 2_000,
            )
        })
        .collect();
    store.record(&a, &again).await.expect("take over many");
    let found = store
        .recorded(&a, &keys, T0 + 1_000)
        .await
        .expect("recorded");
    assert_eq!(found.len(), MANY);
    assert!(found.iter().all(|(key, recorded)| recorded.event_id
        == format!("ev-new-{}", &key[2..])
        && recorded.received_at_ms == T0 + 1_000));
    assert_eq!(store.expire(T0 + 2_000).await.expect("expire"), MANY as u64);
    assert!(store
        .recorded(&a, &keys, T0 + 1_000)
        .await
        .expect("recorded")
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Delivery ledger
// ---------------------------------------------------------------------------------------------

/// `delivered` answers only the ids marked for that tenant and that sink; marking again (or the
/// same id twice in one call) is fine and changes nothing; many ids work in one call.
pub async fn delivered_returns_only_ids_marked_for_that_tenant_and_sink<
    S: DeliveryLedger + ?Sized,
>(
    store: &S,
) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let until = T0 + 60_000;
    store
        .mark_delivered(&a, "hook", &ids(&["ev-1", "ev-2"]), T0, until)
        .await
        .expect("mark A hook");
    store
        .mark_delivered(&a, "other", &ids(&["ev-3"]), T0, until)
        .await
        .expect("mark A other");
    store
        .mark_delivered(&b, "hook", &ids(&["ev-4"]), T0, until)
        .await
        .expect("mark B hook");
    let asked = ids(&["ev-1", "ev-2", "ev-3", "ev-4", "ev-5"]);
    let delivered = |t: &TenantId, sink: &'static str| {
        let t = t.clone();
        let asked = asked.clone();
        async move { store.delivered(&t, sink, &asked).await.expect("delivered") }
    };
    assert_eq!(delivered(&a, "hook").await, set(&["ev-1", "ev-2"]));
    assert_eq!(delivered(&a, "other").await, set(&["ev-3"]));
    assert_eq!(delivered(&b, "hook").await, set(&["ev-4"]));
    assert_eq!(delivered(&b, "other").await, set(&[]));

    store
        .mark_delivered(&a, "hook", &ids(&["ev-1", "ev-5", "ev-5"]), T0 + 1, until)
        .await
        .expect("mark again, and twice in one call");
    assert_eq!(delivered(&a, "hook").await, set(&["ev-1", "ev-2", "ev-5"]));
    assert_eq!(delivered(&b, "hook").await, set(&["ev-4"]));
    assert!(store
        .delivered(&a, "hook", &[])
        .await
        .expect("no ids")
        .is_empty());

    let many: Vec<String> = (0..MANY).map(|n| format!("many-{n}")).collect();
    store
        .mark_delivered(&a, "bulk", &many[..MANY - 1], T0, until)
        .await
        .expect("mark many");
    let found = store.delivered(&a, "bulk", &many).await.expect("delivered");
    assert_eq!(found.len(), MANY - 1);
    assert!(!found.contains(&many[MANY - 1]), "the one not marked");
}

// ---------------------------------------------------------------------------------------------
// Parked deliveries
// ---------------------------------------------------------------------------------------------

fn to_park(t: &TenantId, sink: &str, event_id: &str, next_attempt_at_ms: i64) -> ToPark {
    ToPark {
        tenant: t.clone(),
        sink: sink.to_owned(),
        event_id: event_id.to_owned(),
        envelope: format!("envelope of {event_id}").into_bytes(),
        original: format!("original of {event_id}").into_bytes(),
        plugins: format!(r#"[{{"name":"transform-{event_id}","version":"1.0.0"}}]"#),
        attempts: 1,
        error: format!("refused {event_id}"),
        at_ms: T0,
        next_attempt_at_ms,
    }
}

/// What claiming `item` (never retried) returns, but its id.
fn parked_as(item: &ToPark, id: i64) -> Parked {
    Parked {
        id,
        tenant: item.tenant.clone(),
        sink: item.sink.clone(),
        event_id: item.event_id.clone(),
        envelope: item.envelope.clone(),
        original: item.original.clone(),
        plugins: item.plugins.clone(),
        attempts: item.attempts,
        first_error: item.error.clone(),
        last_error: item.error.clone(),
        first_failed_at_ms: item.at_ms,
    }
}

async fn claim<S: ParkedDeliveries + ?Sized>(store: &S, now_ms: i64, limit: usize) -> Vec<Parked> {
    store
        .claim_due(now_ms, LEASE_MS, limit)
        .await
        .expect("claim due")
}

fn events_of(parked: &[Parked]) -> Vec<&str> {
    parked.iter().map(|item| item.event_id.as_str()).collect()
}

async fn backlog_of<S: ParkedDeliveries + ?Sized>(store: &S) -> Vec<(TenantId, String, u64)> {
    let mut backlog = store.backlog().await.expect("backlog");
    backlog.sort();
    backlog
}

/// Parking the same (tenant, sink, event) twice keeps the first: one row, as first parked (in
/// two calls or twice in one); the same event for another sink or tenant is its own.
pub async fn parking_the_same_event_twice_keeps_one<S: ParkedDeliveries + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let first = to_park(&a, "hook", "ev-1", T0);
    let mut second = to_park(&a, "hook", "ev-1", T0);
    second.envelope = b"another envelope".to_vec();
    second.error = "another error".to_owned();
    second.attempts = 5;
    store
        .park(std::slice::from_ref(&first))
        .await
        .expect("park");
    store
        .park(&[second.clone(), second.clone()])
        .await
        .expect("park again");
    store
        .park(&[
            to_park(&a, "other", "ev-1", T0),
            to_park(&b, "hook", "ev-1", T0),
        ])
        .await
        .expect("park for another sink and tenant");
    let claimed = claim(store, T0, 100).await;
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    let of_a_hook: Vec<&Parked> = claimed
        .iter()
        .filter(|item| item.tenant == a && item.sink == "hook")
        .collect();
    assert_eq!(of_a_hook, vec![&parked_as(&first, of_a_hook[0].id)]);
    assert_eq!(
        backlog_of(store).await,
        vec![
            (a.clone(), "hook".to_owned(), 1),
            (a.clone(), "other".to_owned(), 1),
            (b.clone(), "hook".to_owned(), 1),
        ]
    );
}

/// `backlogged` is per (tenant, sink): true only where something waits, false again once it is
/// delivered.
pub async fn backlogged_is_per_tenant_and_sink<S: ParkedDeliveries + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    assert!(!store.backlogged(&a, "hook").await.expect("backlogged"));
    store
        .park(&[to_park(&a, "hook", "ev-1", T0 + 1_000_000)])
        .await
        .expect("park");
    assert!(
        store.backlogged(&a, "hook").await.expect("backlogged"),
        "waiting, even while not due"
    );
    assert!(!store.backlogged(&a, "other").await.expect("backlogged"));
    assert!(!store.backlogged(&b, "hook").await.expect("backlogged"));
    let claimed = claim(store, T0 + 1_000_000, 10).await;
    assert_eq!(events_of(&claimed), vec!["ev-1"]);
    assert!(
        store.backlogged(&a, "hook").await.expect("backlogged"),
        "claimed is still waiting"
    );
    ParkedDeliveries::delivered(store, &[claimed[0].id])
        .await
        .expect("delivered");
    assert!(!store.backlogged(&a, "hook").await.expect("backlogged"));
}

/// `claim_due` returns only the items due at `now`, in parking (id) order whatever their due
/// times, at most `limit`, with what was parked.
pub async fn claim_due_returns_due_items_oldest_first_at_most_limit<
    S: ParkedDeliveries + ?Sized,
>(
    store: &S,
) {
    let a = tenant("tenant-a");
    let items = vec![
        to_park(&a, "hook", "ev-1", T0 + 5),
        to_park(&a, "hook", "ev-2", T0),
        to_park(&a, "hook", "ev-3", T0 + 1_000_000),
        to_park(&a, "other", "ev-4", T0 + 10),
        to_park(&a, "hook", "ev-5", T0 + 10),
    ];
    for item in &items {
        store.park(std::slice::from_ref(item)).await.expect("park");
    }
    assert!(claim(store, T0 - 1, 100).await.is_empty(), "none due yet");
    assert!(
        claim(store, T0 + 10, 0).await.is_empty(),
        "a limit of zero claims nothing"
    );
    let due = claim(store, T0 + 10, 100).await;
    assert_eq!(
        events_of(&due),
        vec!["ev-1", "ev-2", "ev-4", "ev-5"],
        "the due ones, in parking order"
    );
    assert!(
        due.windows(2).all(|pair| pair[0].id < pair[1].id),
        "ids grow with parking order: {due:?}"
    );
    for (item, parked) in [&items[0], &items[1], &items[3], &items[4]]
        .iter()
        .zip(&due)
    {
        assert_eq!(parked, &parked_as(item, parked.id), "claimed as parked");
    }

    // Once their leases passed: at most `limit` per claim, oldest first.
    let later = T0 + 10 + LEASE_MS;
    let first = claim(store, later, 3).await;
    assert_eq!(events_of(&first), vec!["ev-1", "ev-2", "ev-4"]);
    let rest = claim(store, later, 3).await;
    assert_eq!(events_of(&rest), vec!["ev-5"], "the rest; ev-3 is not due");
    assert!(claim(store, later, 3).await.is_empty());
}

/// A claimed item is leased: claimed again at the same `now` (or just before its lease ends) it
/// is not returned; at `now + lease` it is.
pub async fn a_claimed_item_is_not_claimed_again_until_its_lease_passes<
    S: ParkedDeliveries + ?Sized,
>(
    store: &S,
) {
    let a = tenant("tenant-a");
    store
        .park(&[to_park(&a, "hook", "ev-1", T0)])
        .await
        .expect("park");
    let first = claim(store, T0, 10).await;
    assert_eq!(events_of(&first), vec!["ev-1"]);
    assert!(claim(store, T0, 10).await.is_empty(), "leased");
    assert!(
        claim(store, T0 + LEASE_MS - 1, 10).await.is_empty(),
        "still leased"
    );
    let again = claim(store, T0 + LEASE_MS, 10).await;
    assert_eq!(again, first, "the same item, once its lease passed");
    assert!(
        claim(store, T0 + LEASE_MS, 10).await.is_empty(),
        "leased again"
    );
}

/// `retry_later` sets the attempts, the latest error and the next attempt, keeps the first error
/// (filling it when the item was parked without one), and touches no other item.
pub async fn retry_later_updates_attempts_and_last_error_and_keeps_the_first<
    S: ParkedDeliveries + ?Sized,
>(
    store: &S,
) {
    let a = tenant("tenant-a");
    let kept = to_park(&a, "hook", "ev-1", T0);
    let mut without_error = to_park(&a, "hook", "ev-2", T0);
    without_error.error = String::new();
    let bystander = to_park(&a, "hook", "ev-3", T0);
    store
        .park(&[kept.clone(), without_error.clone(), bystander.clone()])
        .await
        .expect("park");
    let claimed = claim(store, T0, 10).await;
    assert_eq!(events_of(&claimed), vec!["ev-1", "ev-2", "ev-3"]);
    let next = T0 + 5_000;
    store
        .retry_later(claimed[0].id, 2, "timed out", next)
        .await
        .expect("retry later");
    store
        .retry_later(claimed[1].id, 4, "502 from the sink", next)
        .await
        .expect("retry later");
    assert!(
        claim(store, next - 1, 10).await.is_empty(),
        "not before its next attempt"
    );
    let retried = claim(store, next, 10).await;
    assert_eq!(
        retried,
        vec![
            Parked {
                attempts: 2,
                last_error: "timed out".to_owned(),
                ..parked_as(&kept, claimed[0].id)
            },
            Parked {
                attempts: 4,
                first_error: "502 from the sink".to_owned(),
                last_error: "502 from the sink".to_owned(),
                ..parked_as(&without_error, claimed[1].id)
            },
        ]
    );
    let later = claim(store, T0 + LEASE_MS, 10).await;
    assert_eq!(
        later,
        vec![parked_as(&bystander, claimed[2].id)],
        "the bystander, untouched, came due with its own lease"
    );
}

fn letter(t: &TenantId, sink: &str, event_id: &str, last_failed_at_ms: i64) -> NewDeadLetter {
    NewDeadLetter {
        tenant: t.clone(),
        event_id: event_id.to_owned(),
        event_type: "user_sign_up".to_owned(),
        sink: sink.to_owned(),
        plugin: "webhook_sink".to_owned(),
        plugin_version: "1.2.0".to_owned(),
        reason: "retries_exhausted".to_owned(),
        attempts: 7,
        first_error: "connection refused".to_owned(),
        last_error: "503 from the sink".to_owned(),
        first_failed_at_ms: T0,
        last_failed_at_ms,
        envelope: format!("envelope of {event_id}").into_bytes(),
    }
}

async fn list_all<S: DeadLetterStore + ?Sized>(store: &S, t: &TenantId) -> Vec<DeadLetter> {
    store
        .list(t, &DeadLetterFilter::default(), None, 1_000)
        .await
        .expect("list")
}

fn letters_of(listed: &[DeadLetter]) -> Vec<&NewDeadLetter> {
    listed.iter().map(|dead| &dead.letter).collect()
}

/// `bury` writes the dead letter and forgets the parked item together: the letter lists, the
/// item is claimed no more and leaves the backlog. Burying an event whose dead letter is already
/// open keeps that one letter and still forgets the item.
pub async fn bury_writes_the_dead_letter_and_removes_the_parked_item<
    S: ParkedDeliveries + DeadLetterStore + ?Sized,
>(
    store: &S,
) {
    let a = tenant("tenant-a");
    store
        .park(&[
            to_park(&a, "hook", "ev-1", T0),
            to_park(&a, "hook", "ev-2", T0),
        ])
        .await
        .expect("park");
    let claimed = claim(store, T0, 10).await;
    assert_eq!(events_of(&claimed), vec!["ev-1", "ev-2"]);
    let dead = letter(&a, "hook", "ev-1", T0 + 1);
    store.bury(claimed[0].id, &dead).await.expect("bury");
    assert_eq!(letters_of(&list_all(store, &a).await), vec![&dead]);
    assert_eq!(
        backlog_of(store).await,
        vec![(a.clone(), "hook".to_owned(), 1)]
    );
    assert_eq!(
        events_of(&claim(store, T0 + LEASE_MS, 10).await),
        vec!["ev-2"],
        "the buried item is never claimed again"
    );

    let already = letter(&a, "hook", "ev-2", T0 + 2);
    store
        .put(std::slice::from_ref(&already))
        .await
        .expect("put");
    let mut second = letter(&a, "hook", "ev-2", T0 + 3);
    second.last_error = "buried later".to_owned();
    store.bury(claimed[1].id, &second).await.expect("bury");
    assert_eq!(
        letters_of(&list_all(store, &a).await),
        vec![&dead, &already],
        "one open letter per (tenant, sink, event)"
    );
    assert!(backlog_of(store).await.is_empty());
    assert!(!store.backlogged(&a, "hook").await.expect("backlogged"));
}

/// `backlog` counts waiting items per (tenant, sink), claimed or not, due or not.
pub async fn backlog_counts_per_tenant_and_sink<S: ParkedDeliveries + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    assert!(backlog_of(store).await.is_empty());
    store
        .park(&[
            to_park(&a, "hook", "ev-1", T0),
            to_park(&a, "hook", "ev-2", T0 + 1_000_000),
            to_park(&a, "other", "ev-1", T0),
            to_park(&b, "hook", "ev-1", T0),
            to_park(&b, "hook", "ev-2", T0),
            to_park(&b, "hook", "ev-3", T0),
        ])
        .await
        .expect("park");
    let expected = vec![
        (a.clone(), "hook".to_owned(), 2),
        (a.clone(), "other".to_owned(), 1),
        (b.clone(), "hook".to_owned(), 3),
    ];
    assert_eq!(backlog_of(store).await, expected);
    assert_eq!(claim(store, T0, 100).await.len(), 5);
    assert_eq!(backlog_of(store).await, expected, "claimed still counts");
}

/// `delivered` forgets exactly the given items, many at once too; unknown ids are no error.
pub async fn delivered_removes_parked_items<S: ParkedDeliveries + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let items: Vec<ToPark> = (0..MANY)
        .map(|n| to_park(&a, "hook", &format!("ev-{n}"), T0))
        .collect();
    store.park(&items).await.expect("park many");
    let claimed = claim(store, T0, 10_000).await;
    assert_eq!(claimed.len(), MANY);
    let (kept, gone): (Vec<&Parked>, Vec<&Parked>) =
        claimed.iter().partition(|item| item.event_id == "ev-450");
    let gone: Vec<i64> = gone.iter().map(|item| item.id).collect();
    ParkedDeliveries::delivered(store, &gone)
        .await
        .expect("delivered");
    ParkedDeliveries::delivered(store, &[])
        .await
        .expect("none delivered");
    ParkedDeliveries::delivered(store, &gone[..3])
        .await
        .expect("delivered again: nothing left to forget");
    assert_eq!(
        backlog_of(store).await,
        vec![(a.clone(), "hook".to_owned(), 1)]
    );
    assert_eq!(
        claim(store, T0 + LEASE_MS, 10_000).await,
        vec![kept[0].clone()],
        "only the one not delivered comes due again"
    );
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

/// Putting the same open (tenant, sink, event) twice keeps the first letter (in two calls or in
/// one); the same event for another sink or tenant is a letter of its own. A letter lists as
/// written.
pub async fn putting_the_same_open_dead_letter_twice_keeps_one<S: DeadLetterStore + ?Sized>(
    store: &S,
) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let first = letter(&a, "hook", "ev-1", T0 + 1);
    let mut repeat = letter(&a, "hook", "ev-1", T0 + 2);
    repeat.last_error = "the same event, failed again".to_owned();
    repeat.attempts = 9;
    store.put(std::slice::from_ref(&first)).await.expect("put");
    store
        .put(&[repeat.clone(), repeat.clone()])
        .await
        .expect("put again");
    let for_transform = NewDeadLetter {
        sink: String::new(),
        reason: "transform_error".to_owned(),
        ..letter(&a, "", "ev-1", T0 + 3)
    };
    let of_b = letter(&b, "hook", "ev-1", T0 + 4);
    store
        .put(&[for_transform.clone(), of_b.clone()])
        .await
        .expect("put others");
    assert_eq!(
        letters_of(&list_all(store, &a).await),
        vec![&first, &for_transform]
    );
    assert_eq!(letters_of(&list_all(store, &b).await), vec![&of_b]);
}

/// The filters: failed at or after `from_ms`, before `to_ms` (on the last failure), of an event
/// type, of a sink, with a reason, and all of them together.
pub async fn list_filters_by_time_event_type_sink_and_reason<S: DeadLetterStore + ?Sized>(
    store: &S,
) {
    let a = tenant("tenant-a");
    let mut letters = Vec::new();
    for (n, (sink, event_type, reason, at)) in [
        ("hook", "user_sign_up", "retries_exhausted", T0 + 100),
        ("hook", "order_paid", "sink_rejected", T0 + 200),
        ("kafka", "user_sign_up", "sink_rejected", T0 + 300),
        ("kafka", "order_paid", "retries_exhausted", T0 + 400),
        ("", "user_sign_up", "transform_error", T0 + 500),
    ]
    .into_iter()
    .enumerate()
    {
        letters.push(NewDeadLetter {
            event_type: event_type.to_owned(),
            reason: reason.to_owned(),
            // First failed long before: the time filters are on the last failure.
            first_failed_at_ms: T0 - 1_000_000,
            ..letter(&a, sink, &format!("ev-{n}"), at)
        });
    }
    store.put(&letters).await.expect("put");
    let a = &a;
    let listed = |filter: DeadLetterFilter| async move {
        store
            .list(a, &filter, None, 100)
            .await
            .expect("list")
            .into_iter()
            .map(|dead| dead.letter.event_id)
            .collect::<Vec<_>>()
    };
    let none = DeadLetterFilter::default();
    assert_eq!(
        listed(none.clone()).await,
        ids(&["ev-0", "ev-1", "ev-2", "ev-3", "ev-4"])
    );
    assert_eq!(
        listed(DeadLetterFilter {
            from_ms: Some(T0 + 200),
            ..none.clone()
        })
        .await,
        ids(&["ev-1", "ev-2", "ev-3", "ev-4"]),
        "from is inclusive"
    );
    assert_eq!(
        listed(DeadLetterFilter {
            to_ms: Some(T0 + 400),
            ..none.clone()
        })
        .await,
        ids(&["ev-0", "ev-1", "ev-2"]),
        "to is exclusive"
    );
    assert_eq!(
        listed(DeadLetterFilter {
            from_ms: Some(T0 + 200),
            to_ms: Some(T0 + 400),
            ..none.clone()
        })
        .await,
        ids(&["ev-1", "ev-2"])
    );
    assert_eq!(
        listed(DeadLetterFilter {
            event_type: Some("order_paid".to_owned()),
            ..none.clone()
        })
        .await,
        ids(&["ev-1", "ev-3"])
    );
    assert_eq!(
        listed(DeadLetterFilter {
            sink: Some("kafka".to_owned()),
            ..none.clone()
        })
        .await,
        ids(&["ev-2", "ev-3"])
    );
    assert_eq!(
        listed(DeadLetterFilter {
            sink: Some(String::new()),
            ..none.clone()
        })
        .await,
        ids(&["ev-4"]),
        "the empty sink (a transform refused it) is a sink to filter on"
    );
    assert_eq!(
        listed(DeadLetterFilter {
            reason: Some("sink_rejected".to_owned()),
            ..none.clone()
        })
        .await,
        ids(&["ev-1", "ev-2"])
    );
    assert_eq!(
        listed(DeadLetterFilter {
            from_ms: Some(T0 + 100),
            to_ms: Some(T0 + 500),
            event_type: Some("user_sign_up".to_owned()),
            sink: Some("kafka".to_owned()),
            reason: Some("sink_rejected".to_owned()),
        })
        .await,
        ids(&["ev-2"]),
        "all filters together"
    );
    assert!(listed(DeadLetterFilter {
        reason: Some("undecodable".to_owned()),
        ..none
    })
    .await
    .is_empty());
}

/// A tenant lists only its own dead letters, and cannot mark another tenant's redriven.
pub async fn dead_letters_are_listed_and_redriven_only_by_their_tenant<
    S: DeadLetterStore + ?Sized,
>(
    store: &S,
) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let of_a = letter(&a, "hook", "ev-1", T0);
    store.put(std::slice::from_ref(&of_a)).await.expect("put");
    assert!(list_all(store, &b).await.is_empty(), "B sees none of A's");
    let listed = list_all(store, &a).await;
    assert_eq!(letters_of(&listed), vec![&of_a]);
    store
        .mark_redriven(&b, &[listed[0].id], T0 + 1)
        .await
        .expect("B marks A's id");
    assert_eq!(
        list_all(store, &a).await,
        listed,
        "B cannot redrive A's letter"
    );
}

/// Pages: ids grow in writing order, `after` continues past a page's last id, `limit` bounds a
/// page, and the pages together are the whole list, each letter once.
pub async fn dead_letters_page_with_after_and_limit<S: DeadLetterStore + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let letters: Vec<NewDeadLetter> = (0..5)
        .map(|n| letter(&a, "hook", &format!("ev-{n}"), T0 + n))
        .collect();
    store.put(&letters[..2]).await.expect("put");
    store
        .put(&[letter(&tenant("tenant-b"), "hook", "ev-b", T0)])
        .await
        .expect("put B between");
    store.put(&letters[2..]).await.expect("put");
    let all = list_all(store, &a).await;
    assert_eq!(letters_of(&all), letters.iter().collect::<Vec<_>>());
    assert!(all.windows(2).all(|pair| pair[0].id < pair[1].id));

    let filter = DeadLetterFilter::default();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(&a, &filter, after, 2).await.expect("page");
        assert!(page.len() <= 2, "at most the limit: {page:?}");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        pages.push(page);
        assert!(pages.len() <= 3, "five letters in pages of two: {pages:?}");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    assert_eq!(pages.concat(), all, "the pages are the list");
    assert_eq!(
        store
            .list(&a, &filter, Some(all[1].id), 100)
            .await
            .expect("after the second"),
        all[2..].to_vec()
    );
    assert_eq!(
        store
            .list(&a, &filter, Some(all[0].id - 1), 1)
            .await
            .expect("from the first"),
        all[..1].to_vec()
    );
}

/// `mark_redriven` hides the letters it names (only those) from the list; then the same
/// (tenant, sink, event) can die again, as a new letter with a later id.
pub async fn mark_redriven_hides_letters_and_lets_the_event_die_again<
    S: DeadLetterStore + ?Sized,
>(
    store: &S,
) {
    let a = tenant("tenant-a");
    let first = letter(&a, "hook", "ev-1", T0);
    let other = letter(&a, "hook", "ev-2", T0);
    store
        .put(&[first.clone(), other.clone()])
        .await
        .expect("put");
    let listed = list_all(store, &a).await;
    assert_eq!(letters_of(&listed), vec![&first, &other]);
    store
        .mark_redriven(&a, &[listed[0].id], T0 + 10)
        .await
        .expect("mark redriven");
    assert_eq!(
        list_all(store, &a).await,
        listed[1..].to_vec(),
        "only the redriven one is hidden"
    );
    let again = NewDeadLetter {
        last_error: "failed again after the redrive".to_owned(),
        ..letter(&a, "hook", "ev-1", T0 + 20)
    };
    store
        .put(std::slice::from_ref(&again))
        .await
        .expect("put again");
    let relisted = list_all(store, &a).await;
    assert_eq!(letters_of(&relisted), vec![&other, &again]);
    assert!(relisted[1].id > listed[1].id, "a new letter, a new id");
    store
        .mark_redriven(&a, &[relisted[0].id, relisted[1].id], T0 + 30)
        .await
        .expect("mark both");
    assert!(list_all(store, &a).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Pipelines
// ---------------------------------------------------------------------------------------------

fn spec(n: u64) -> serde_json::Value {
    serde_json::json!({
        "version": n,
        "transforms": [{"name": "rename", "config": {"from": "a", "to": "b"}}],
        "sinks": [{"id": "hook", "name": "webhook_sink", "config": {
            "url": "https://example.com/hook", "timeout_ms": 2500, "ratio": 0.25,
            "big": BIG_INT, "secret": null, "enabled": true, "label": "café ✓"
        }}],
    })
}

/// `put_pipeline` numbers a tenant's versions 1, 2, 3…, each tenant on its own.
pub async fn put_pipeline_numbers_versions_per_tenant<S: PipelineStore + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    assert_eq!(store.put_pipeline(&a, &spec(1), T0).await.expect("put"), 1);
    assert_eq!(
        store.put_pipeline(&a, &spec(2), T0 + 1).await.expect("put"),
        2
    );
    assert_eq!(
        store.put_pipeline(&b, &spec(1), T0 + 2).await.expect("put"),
        1,
        "B counts on its own"
    );
    assert_eq!(
        store.put_pipeline(&a, &spec(3), T0 + 3).await.expect("put"),
        3
    );
    assert_eq!(
        store.put_pipeline(&b, &spec(2), T0 + 4).await.expect("put"),
        2
    );
}

/// `current_pipelines` returns the latest version of every tenant's pipeline, once per tenant,
/// its spec as stored (nested values, a big integer, a float, unicode).
pub async fn current_pipelines_returns_only_the_latest_per_tenant<S: PipelineStore + ?Sized>(
    store: &S,
) {
    let (a, b, c) = (tenant("tenant-a"), tenant("tenant-b"), tenant("tenant-c"));
    assert!(store.current_pipelines().await.expect("current").is_empty());
    for (t, n, at) in [
        (&a, 1, T0),
        (&b, 1, T0 + 1),
        (&a, 2, T0 + 2),
        (&c, 1, T0 + 3),
        (&a, 3, T0 + 4),
        (&b, 2, T0 + 5),
    ] {
        store.put_pipeline(t, &spec(n), at).await.expect("put");
    }
    let mut current = store.current_pipelines().await.expect("current");
    current.sort_by(|x, y| x.tenant.cmp(&y.tenant));
    assert_eq!(
        current,
        vec![
            StoredPipeline {
                tenant: a,
                version: 3,
                spec: spec(3),
                updated_at_ms: T0 + 4,
            },
            StoredPipeline {
                tenant: b,
                version: 2,
                spec: spec(2),
                updated_at_ms: T0 + 5,
            },
            StoredPipeline {
                tenant: c,
                version: 1,
                spec: spec(1),
                updated_at_ms: T0 + 3,
            },
        ]
    );
    assert_eq!(
        current[0].spec["sinks"][0]["config"]["big"].as_u64(),
        Some(BIG_INT)
    );
}

// ---------------------------------------------------------------------------------------------
// The events_raw archive
// ---------------------------------------------------------------------------------------------

fn event(t: &TenantId, event_id: &str, payload: &str) -> CanonicalEvent {
    CanonicalEvent {
        event_id: event_id.to_owned(),
        tenant: t.clone(),
        event_type: "user_sign_up".to_owned(),
        occurred_at_ms: T0 - 5,
        received_at_ms: T0,
        payload: Bytes::from(payload.to_owned()),
        source: Source::Http,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        idempotency_key: None,
    }
}

const VERSIONS: &str = r#"{"postgres_sink":"1.0.0"}"#;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("archived payload is JSON")
}

/// The same (tenant, event id) archived twice keeps one row, the first: 1 new, then 0.
pub async fn archiving_an_event_twice_keeps_one_row<S: EventArchive + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let first = event(&a, "ev-1", r#"{"n":1}"#);
    assert_eq!(store.archive(&[first], VERSIONS).await.expect("archive"), 1);
    let mut repeat = event(&a, "ev-1", r#"{"n":2}"#);
    repeat.idempotency_key = Some("key-1".to_owned());
    assert_eq!(
        store
            .archive(&[repeat.clone()], VERSIONS)
            .await
            .expect("archive again"),
        0
    );
    assert_eq!(
        store
            .archive(&[repeat.clone(), repeat], VERSIONS)
            .await
            .expect("archive twice in one call"),
        0
    );
    let payloads = store.archived_payloads(&a, "ev-1").await.expect("read");
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(
        json(&payloads[0]),
        serde_json::json!({"n": 1}),
        "the first stays"
    );
}

/// A payload keeps an integer above 2^53 exactly (stored as JSON, never through a float).
pub async fn an_archived_payload_keeps_a_big_integer_exactly<S: EventArchive + ?Sized>(store: &S) {
    let a = tenant("tenant-a");
    let payload = format!(r#"{{"amount":{BIG_INT},"nested":{{"ids":[{BIG_INT},1]}}}}"#);
    assert_eq!(
        store
            .archive(&[event(&a, "ev-big", &payload)], VERSIONS)
            .await
            .expect("archive"),
        1
    );
    let payloads = store.archived_payloads(&a, "ev-big").await.expect("read");
    assert_eq!(payloads.len(), 1);
    assert!(
        payloads[0].contains("9007199254740993"),
        "digits kept: {}",
        payloads[0]
    );
    let stored = json(&payloads[0]);
    assert_eq!(stored["amount"].as_u64(), Some(BIG_INT));
    assert_eq!(stored["nested"]["ids"][0].as_u64(), Some(BIG_INT));
}

/// Two tenants may archive the same event id, each its own row; many events fit in one call.
pub async fn two_tenants_may_share_an_event_id_in_the_archive<S: EventArchive + ?Sized>(store: &S) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    assert_eq!(
        store
            .archive(
                &[
                    event(&a, "shared", r#"{"of":"a"}"#),
                    event(&b, "shared", r#"{"of":"b"}"#)
                ],
                VERSIONS
            )
            .await
            .expect("archive"),
        2
    );
    for (t, of) in [(&a, "a"), (&b, "b")] {
        let payloads = store.archived_payloads(t, "shared").await.expect("read");
        assert_eq!(
            payloads.iter().map(|p| json(p)).collect::<Vec<_>>(),
            vec![serde_json::json!({ "of": of })]
        );
    }
    let many: Vec<CanonicalEvent> = (0..MANY)
        .map(|n| event(&a, &format!("many-{n}"), &format!(r#"{{"n":{n}}}"#)))
        .collect();
    assert_eq!(
        store.archive(&many, VERSIONS).await.expect("archive many"),
        MANY as u64
    );
    assert_eq!(
        store.archive(&many, VERSIONS).await.expect("again"),
        0,
        "every one already archived"
    );
    let last = store
        .archived_payloads(&a, &format!("many-{}", MANY - 1))
        .await
        .expect("read");
    assert_eq!(
        last.iter().map(|p| json(p)).collect::<Vec<_>>(),
        vec![serde_json::json!({ "n": MANY - 1 })]
    );
}
