//! The outbox suite, for every SQL store: rows written through the one enqueue function are
//! claimed by one relay at a time, come back when a lease lapses, never overtake an earlier
//! pending event of their aggregate whatever the number of relays, and a batch a relay claimed
//! ahead and let go is claimed again only once its lease lapsed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use pulse_core::TenantId;
use pulse_outbox::{Outbox, OutboxEvent};
use pulse_store::{outbox, Database};
use uuid::Uuid;

const LEASE_MS: i64 = 30_000;
/// Claims run "now" = this, far past the wall clock of any row left by another case.
const NOW_MS: i64 = 4_000_000_000_000;

/// Writes `events` in one unit of work.
pub async fn enqueue(db: &Database, events: Vec<OutboxEvent>) {
    db.write(move |mut tx| Box::pin(async move { outbox::enqueue(&mut tx, &events).await }))
        .await
        .expect("enqueue");
}

/// One event of `aggregate` on `topic`, its payload `{seq}`.
pub fn event(topic: &str, aggregate: Uuid, seq: usize) -> OutboxEvent {
    OutboxEvent::new(
        topic,
        "TEST",
        aggregate,
        Bytes::from(seq.to_string()),
        NOW_MS,
    )
}

/// Claims until nothing is left for `relay`, keeping only the rows of `topic`, and marks the
/// claimed rows sent after each round. Each claimed event comes with the tick its claim got
/// from `ticks`, shared by the relays: when the claim returned, relative to theirs.
async fn claim_rounds(
    db: &Database,
    relay: &str,
    topic: &str,
    limit: usize,
    ticks: &AtomicU64,
) -> Vec<(u64, OutboxEvent)> {
    let mut mine = Vec::new();
    loop {
        let claimed = db
            .claim(relay, limit, LEASE_MS, NOW_MS)
            .await
            .expect("claim");
        let tick = ticks.fetch_add(1, Ordering::SeqCst);
        if claimed.is_empty() {
            return mine;
        }
        let ids: Vec<Uuid> = claimed.iter().map(|event| event.id).collect();
        db.mark_sent(&ids, NOW_MS).await.expect("mark sent");
        mine.extend(
            claimed
                .into_iter()
                .filter(|event| event.topic == topic)
                .map(|event| (tick, event)),
        );
    }
}

/// A claimed row carries what was written, and is leased: nobody else gets it while the lease
/// runs.
pub async fn a_claimed_row_is_leased_to_one_relay(db: &Database) {
    let topic = crate::unique_name("outbox");
    let written = event(&topic, Uuid::now_v7(), 0).for_tenant(TenantId::parse("acme").unwrap());
    enqueue(db, vec![written.clone()]).await;
    let first = db
        .claim("relay-a", 10_000, LEASE_MS, NOW_MS)
        .await
        .expect("claim");
    let mine: Vec<_> = first.iter().filter(|event| event.topic == topic).collect();
    assert_eq!(mine, vec![&written], "claimed as written, tenant included");
    let second = db
        .claim("relay-b", 10_000, LEASE_MS, NOW_MS + LEASE_MS - 1)
        .await
        .expect("claim");
    assert!(
        second.iter().all(|event| event.topic != topic),
        "leased to relay-a until its lease lapses"
    );
    let ids: Vec<Uuid> = first.iter().map(|event| event.id).collect();
    db.mark_sent(&ids, NOW_MS).await.expect("mark sent");
}

/// After a lease lapses (its relay crashed), another relay claims the row.
pub async fn a_lapsed_lease_is_claimed_again(db: &Database) {
    let topic = crate::unique_name("outbox");
    let written = event(&topic, Uuid::now_v7(), 0);
    enqueue(db, vec![written.clone()]).await;
    let crashed = db
        .claim("relay-a", 10_000, LEASE_MS, NOW_MS)
        .await
        .expect("claim");
    assert!(crashed.iter().any(|event| event.id == written.id));
    let later = NOW_MS + LEASE_MS + 1;
    let again = db
        .claim("relay-b", 10_000, LEASE_MS, later)
        .await
        .expect("claim");
    assert!(
        again.iter().any(|event| event.id == written.id),
        "claimed again once the lease lapsed"
    );
    let ids: Vec<Uuid> = again.iter().map(|event| event.id).collect();
    db.mark_sent(&ids, later).await.expect("mark sent");
    assert!(db.backlog().await.is_ok());
}

/// Relays claiming at once never get an event while an earlier one of its aggregate is pending:
/// each aggregate's events reach the relays' hands in write order, each once.
pub async fn events_of_an_aggregate_stay_in_order_across_relays(db: &Database) {
    let topic = crate::unique_name("outbox");
    let aggregates: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    for seq in 0..5 {
        let events = aggregates
            .iter()
            .map(|aggregate| event(&topic, *aggregate, seq))
            .collect();
        enqueue(db, events).await;
    }
    let ticks = AtomicU64::new(0);
    let names: Vec<String> = (0..3).map(|n| format!("relay-{n}")).collect();
    let relays = names
        .iter()
        .map(|name| claim_rounds(db, name, &topic, 3, &ticks));
    let claimed: Vec<(u64, OutboxEvent)> = futures::future::join_all(relays)
        .await
        .into_iter()
        .flatten()
        .collect();
    // An event may be claimed only once its predecessor was claimed *and marked sent*, which
    // its relay does after its claim took a tick: so within an aggregate, ticks rise strictly
    // with the write order. Two of one aggregate in one claim, or a successor claimed while its
    // predecessor was pending, breaks that.
    let mut per_aggregate: BTreeMap<Uuid, Vec<(u64, usize)>> = BTreeMap::new();
    for (tick, event) in &claimed {
        let seq: usize = std::str::from_utf8(&event.payload)
            .unwrap()
            .parse()
            .unwrap();
        per_aggregate
            .entry(event.aggregate_id)
            .or_default()
            .push((*tick, seq));
    }
    assert_eq!(per_aggregate.len(), aggregates.len());
    for (aggregate, mut events) in per_aggregate {
        events.sort_by_key(|(_, seq)| *seq);
        let seqs: Vec<usize> = events.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(
            seqs,
            vec![0, 1, 2, 3, 4],
            "aggregate {aggregate}: each once"
        );
        assert!(
            events.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "aggregate {aggregate}: claimed in write order, one at a time: {events:?}"
        );
    }
    let ids: BTreeSet<Uuid> = claimed.iter().map(|(_, event)| event.id).collect();
    assert_eq!(ids.len(), claimed.len(), "no event claimed twice");
}

/// A relay claims ahead, then lets that batch go (half its lease gone): the rows stay leased to
/// it — another relay cannot take them and send them ahead of anything — until the lease lapses;
/// then they are claimed again, in order, each once.
pub async fn a_batch_let_go_is_claimed_again_only_after_its_lease(db: &Database) {
    let topic = crate::unique_name("outbox");
    let aggregate = Uuid::now_v7();
    enqueue(
        db,
        (0..2).map(|seq| event(&topic, aggregate, seq)).collect(),
    )
    .await;
    let other = Uuid::now_v7();
    enqueue(db, vec![event(&topic, other, 0)]).await;
    let ahead = db
        .claim("relay-a", 10_000, LEASE_MS, NOW_MS)
        .await
        .expect("claim ahead");
    let ahead: Vec<Uuid> = ahead
        .iter()
        .filter(|event| event.topic == topic)
        .map(|event| event.id)
        .collect();
    assert_eq!(ahead.len(), 2, "the first event of each aggregate");
    // relay-a lets its batch go at half the lease; until the lease lapses nobody claims it.
    let half = NOW_MS + LEASE_MS / 2;
    let during = db
        .claim("relay-b", 10_000, LEASE_MS, half)
        .await
        .expect("claim");
    assert!(
        during.iter().all(|event| event.topic != topic),
        "nothing of the let-go batch, nor its successors, before the lease lapsed"
    );
    let lapsed = NOW_MS + LEASE_MS + 1;
    let again = db
        .claim("relay-b", 10_000, LEASE_MS, lapsed)
        .await
        .expect("claim");
    let again: Vec<Uuid> = again
        .iter()
        .filter(|event| event.topic == topic)
        .map(|event| event.id)
        .collect();
    assert_eq!(again, ahead, "the same batch, in order");
    db.mark_sent(&again, lapsed).await.expect("mark sent");
    let rest = claim_rounds(db, "relay-b", &topic, 10_000, &AtomicU64::new(0)).await;
    assert_eq!(rest.len(), 1, "then the successor, once");
}
