//! The surge engine's promises under faults, through HTTP and the real backends with one fault
//! injected (`pulse_conformance::faults`): a redelivered order counts once, and a batch whose
//! cache write fails is neither committed nor lost, and applies once when the cache returns.
//! Each case runs on the in-process cache and on Redis, whose guards are different code. A poison
//! record is dead-lettered without blocking what follows it.

mod common;

use std::sync::Arc;

use common::{
    metric_sum, multiplier_at, names, order_ids, seed_cell_with_ids, unique_point, wait_for_quote,
    wait_until, wait_until_engine_settled, TestApp,
};
use pulse_conformance::faults::{FaultyCache, FaultyLog, Redelivery, WriteFault};
use pulse_conformance::{services, unique_name};
use pulse_core::clock::{Clock, SystemClock};
use pulse_core::log::OutgoingRecord;
use pulse_geo::Point;
use pulse_proto::v1::OrderCreatedEvent;
use pulse_proto::Message;
use pulse_runtime::Role;
use serde_json::json;

fn on_redis(config: &mut pulse::Config) {
    config.cache_url = services::redis_url();
}

/// Every batch the engine polls is handed to it twice, as a rebalance does with records it had
/// not committed yet. 2 orders and 4 drivers make 1.5; counting each order twice would make 2.0.
async fn a_redelivered_order_counts_once(configure: fn(&mut pulse::Config)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, log) = TestApp::spawn_watched_armed(dir.path(), configure, |log| {
        log.redeliver(Redelivery::EveryBatchTwice)
    })
    .await;
    let outcomes_before = engine_outcomes(&app).await;
    let (lat, lng) = unique_point();
    let (drivers, orders) = seed_cell_with_ids(&[&app], lat, lng, 4, 2).await;
    let orders = order_ids(&orders);
    let keys: Vec<String> = drivers.iter().chain(&orders).cloned().collect();
    wait_until_engine_settled(&log, &keys).await;
    let group = log.group(&names().group);
    for order in &orders {
        assert!(
            group.deliveries_of(order) >= 2,
            "order {order} was delivered twice"
        );
    }
    assert_eq!(multiplier_at(&app, lat, lng).await, json!(1.5));
    // Operators see the redeliveries for what they are (other tests of this binary only add).
    let outcomes = engine_outcomes(&app).await;
    let grew = |index: usize| outcomes[index] - outcomes_before[index];
    assert!(grew(0) >= 2.0, "orders applied: {outcomes:?}");
    assert!(
        grew(1) >= 2.0,
        "redelivered orders reported as duplicates: {outcomes:?}"
    );
    assert!(
        grew(2) >= 4.0,
        "redelivered pings reported as stale: {outcomes:?}"
    );
    app.stop().await;
}

/// `pulse_engine_records_total` for (orders applied, orders duplicate, pings stale, pings
/// applied).
async fn engine_outcomes(app: &TestApp) -> [f64; 4] {
    let (_, page) = app.get("/metrics").await;
    let count = |topic: &str, outcome: &str| {
        let topic = format!("topic=\"{topic}\"");
        let outcome = format!("outcome=\"{outcome}\"");
        metric_sum(&page, "pulse_engine_records_total", &[&topic, &outcome]).unwrap_or(0.0)
    };
    [
        count(&names().demand, "applied"),
        count(&names().demand, "duplicate"),
        count(&names().supply, "stale"),
        count(&names().supply, "applied"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_order_counts_once_in_the_memory_cache() {
    a_redelivered_order_counts_once(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_order_counts_once_in_redis() {
    a_redelivered_order_counts_once(on_redis).await;
}

/// Two orders reach the engine in one batch while the cache fails every write, the guarded
/// demand batch half-way through. Until the cache returns the engine must not commit them
/// (a commit would lose them for good); once it returns each counts exactly once: 1.5 with 4
/// drivers (1.25 if one was lost, 2.0 if the half applied before the failure counted again).
async fn a_batch_whose_cache_write_fails_is_held_and_applies_once(
    configure: fn(&mut pulse::Config),
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut wrapped = None;
    let app = TestApp::spawn_wrapped(dir.path(), &Role::ALL, configure, |mut backends| {
        let log = FaultyLog::wrap(backends.log.clone());
        let cache = FaultyCache::wrap(backends.cache.clone());
        backends.log = Arc::new(log.clone());
        backends.cache = Arc::new(cache.clone());
        wrapped = Some((log, cache));
        backends
    })
    .await;
    let (log, cache) = wrapped.expect("the backends were wrapped");
    let (lat, lng) = unique_point();
    let (drivers, _) = seed_cell_with_ids(&[&app], lat, lng, 4, 0).await;
    wait_until_engine_settled(&log, &drivers).await;

    // Both orders in one append, so the engine polls them in one batch and the guarded demand
    // write fails after the first.
    cache.fail_writes(WriteFault::FailMidBatch);
    let cell = Point::new(lat, lng)
        .expect("a valid point")
        .cell()
        .to_string();
    let orders: Vec<String> = (0..2).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let records = orders
        .iter()
        .map(|order_id| {
            let event = OrderCreatedEvent {
                order_id: order_id.clone(),
                pickup_h3: cell.clone(),
                user_id: format!("rider-{order_id}"),
                timestamp: SystemClock.now_ms(),
            };
            OutgoingRecord::keyed(order_id.clone(), event.encode_to_vec())
        })
        .collect();
    app.log
        .append(&names().demand, records)
        .await
        .expect("append the orders");
    wait_until("the engine was handed both orders", || {
        let group = log.group(&names().group);
        orders.iter().all(|order| group.deliveries_of(order) > 0)
    })
    .await;
    let failed_when_delivered = cache.failed_writes();
    wait_until("the engine retried the batch", || {
        cache.failed_writes() >= failed_when_delivered + 2
    })
    .await;
    assert!(
        cache.half_applied_batches() > 0,
        "the cache failed half-way through a batch of both orders"
    );
    let group = log.group(&names().group);
    for (key, position) in &group.delivered {
        let is_order = key
            .as_deref()
            .is_some_and(|key| orders.iter().any(|order| order.as_bytes() == key));
        assert!(
            !(is_order && group.is_committed(position)),
            "the engine committed {position:?} although its cache write failed"
        );
    }

    cache.heal();
    wait_until_engine_settled(&log, &orders).await;
    assert_eq!(multiplier_at(&app, lat, lng).await, json!(1.5));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_cache_write_fails_is_held_and_applies_once_in_the_memory_cache() {
    a_batch_whose_cache_write_fails_is_held_and_applies_once(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_cache_write_fails_is_held_and_applies_once_in_redis() {
    a_batch_whose_cache_write_fails_is_held_and_applies_once(on_redis).await;
}

/// A record that cannot be decoded goes to the dead-letter topic with its reason and headers,
/// and the orders behind it are still counted (rule 4: a poison message never blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_does_not_stall_its_partition() {
    let app = TestApp::spawn(|_| {}).await;
    let demand = format!("topic=\"{}\"", names().demand);
    let dead_lettered = |page: &str| {
        let counted = metric_sum(
            page,
            "pulse_engine_records_total",
            &[&demand, "outcome=\"dead_lettered\""],
        );
        let appended = metric_sum(
            page,
            "pulse_processor_dead_letters_total",
            &["processor=\"engine\""],
        );
        (counted.unwrap_or(0.0), appended.unwrap_or(0.0))
    };
    let before = dead_lettered(&app.get("/metrics").await.1);
    let poison = OutgoingRecord::keyed("poison", vec![0xff, 0xff, 0xff, 0xff]).with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    app.log
        .append(&names().demand, vec![poison])
        .await
        .expect("append poison");
    let (lat, lng) = unique_point();
    seed_cell_with_ids(&[&app], lat, lng, 4, 3).await;
    // 3 orders and 4 drivers, behind the poison record on the same topic.
    wait_for_quote(&app, lat, lng, |quote| quote["multiplier"] == 1.75).await;

    let mut letters = app
        .log
        .consumer(&unique_name("dlq-reader"), &[names().dead_letter.as_str()])
        .await
        .expect("consumer");
    // Both processors reading demand.orders refuse it, each into its own dead letter: the
    // engine's and the dispatcher's (its group in `pulse.dlq.group`).
    let mut both = pulse_conformance::event_log::poll_exactly(letters.as_mut(), 2).await;
    let group_of = |letter: &pulse_core::log::ConsumedRecord| {
        letter
            .header("pulse.dlq.group")
            .map(|group| String::from_utf8_lossy(group).into_owned())
            .unwrap_or_default()
    };
    both.sort_by_key(|letter| group_of(letter));
    let groups: Vec<String> = both.iter().map(group_of).collect();
    let dispatch_group = format!(
        "{}{}",
        common::test_prefix(),
        pulse_marketplace::dispatch::GROUP
    );
    let mut expected = vec![names().group, dispatch_group];
    expected.sort();
    assert_eq!(groups, expected);
    let letter = both
        .into_iter()
        .find(|letter| group_of(letter) == names().group)
        .expect("the engine's letter");
    assert_eq!(letter.payload.as_ref(), &[0xff, 0xff, 0xff, 0xff]);
    let reason = letter.header("pulse.dlq.reason").expect("reason");
    assert!(
        String::from_utf8_lossy(reason).contains("OrderCreatedEvent"),
        "{reason:?}"
    );
    assert_eq!(
        letter.header("pulse.dlq.topic").map(|v| v.as_ref()),
        Some(names().demand.as_bytes())
    );
    assert!(
        letter.header("traceparent").is_some(),
        "original headers kept"
    );
    let after = dead_lettered(&app.get("/metrics").await.1);
    assert!(
        after.0 - before.0 >= 1.0 && after.1 - before.1 >= 1.0,
        "reported as dead-lettered and appended: {before:?} → {after:?}"
    );
    app.stop().await;
}

/// An engine whose group join fails (the broker or its coordinator away) keeps trying, and
/// counts what was placed meanwhile once it is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_cannot_join_its_group_yet_retries_and_catches_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, log) =
        TestApp::spawn_watched_armed(dir.path(), |_| {}, |log| log.fail_joins(2)).await;
    let (lat, lng) = unique_point();
    let (drivers, orders) = seed_cell_with_ids(&[&app], lat, lng, 4, 2).await;
    let keys: Vec<String> = drivers.into_iter().chain(order_ids(&orders)).collect();
    wait_until_engine_settled(&log, &keys).await;
    assert_eq!(log.faults_injected(), 2, "both refused joins were retried");
    assert_eq!(multiplier_at(&app, lat, lng).await, json!(1.5));
    app.stop().await;
}

/// A join error that retrying cannot mend stops the process with it, instead of an engine that
/// silently retries forever while nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refused_its_group_for_good_stops_the_process_with_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, _) = TestApp::spawn_watched_armed(dir.path(), |_| {}, |log| log.refuse_joins()).await;
    let ended = app.stopped_by_itself().await;
    let err = ended.expect_err("the process ends with the engine's error");
    assert!(
        format!("{err:#}").contains("refused for good"),
        "the error names the cause: {err:#}"
    );
}
