//! The rides' storage suite, for any adapter of [`RideStore`] (the relational store on SQLite and
//! on PostgreSQL today): a transition writes its order move, driver change, history step and
//! outbox event together or not at all; a driver is claimed by one order only, even when orders
//! race for it; drivers' statuses follow their reports except on a ride; trails; the dispatch
//! schedule; histories in pages; tenants apart. Every case expects a store of its own, empty.

use bytes::Bytes;
use pulse_core::TenantId;
use pulse_marketplace::model::{Answer, DriverReport, DriverStatus};
use pulse_marketplace::ports::{
    Decide, Decision, DriverChange, MoneyChange, RideParty, RideStore, Transition,
    TransitionOutcome,
};
use pulse_orders::{CreateOutcome, Order, OrderStatus, OrderStore};
use pulse_outbox::OutboxEvent;
use pulse_store::{Database, Sql};
use uuid::Uuid;

/// "Now" of the cases, Unix ms.
const T0: i64 = 1_700_000_000_000;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// A pending order of `tenant`'s `user`, stored.
async fn placed(db: &Database, tenant: &TenantId, user: &str) -> Order {
    let (order, event) = crate::store::order_of(tenant, user, T0, None);
    let created = OrderStore::create(db, &order, None, &event)
        .await
        .expect("create");
    assert_eq!(created, CreateOutcome::Created);
    order
}

async fn report(db: &Database, tenant: &TenantId, driver: &str, available: bool, at_ms: i64) {
    db.report_drivers(
        tenant,
        &[DriverReport {
            driver_id: driver.to_owned(),
            available,
            vehicle_type: Some("car".into()),
            at_ms,
            lat: 52.52,
            lng: 13.40,
        }],
    )
    .await
    .expect("report");
}

/// A rule moving the order from `from` to `to` with `driver`, announcing it on `rides.events`.
fn moving(from: OrderStatus, to: OrderStatus, driver: DriverChange) -> Decide {
    Box::new(move |order: &Order| {
        if order.status != from {
            return Decision::Answer(Answer::WrongState);
        }
        Decision::Apply(Transition {
            to,
            at_ms: T0 + 1,
            driver,
            money: MoneyChange::Keep,
            announce: Box::new(|after: &Order| {
                let mut event =
                    OutboxEvent::new("rides.events", "ORDER", after.id, Bytes::new(), T0);
                event.tenant = after.tenant.clone();
                vec![event]
            }),
        })
    })
}

fn claim(driver: &str) -> Decide {
    claim_first(&[driver])
}

fn claim_first(drivers: &[&str]) -> Decide {
    moving(
        OrderStatus::Pending,
        OrderStatus::Matched,
        DriverChange::Claim(drivers.iter().map(|driver| (*driver).to_owned()).collect()),
    )
}

async fn ride_events_of(db: &Database, order: Uuid) -> i64 {
    let row = db
        .fetch_optional(
            &Sql::new("SELECT COUNT(*) FROM outbox_events WHERE aggregate_id = $1 AND topic = $2")
                .bind(order)
                .bind("rides.events"),
        )
        .await
        .expect("count");
    row.expect("a count").i64(0).expect("an integer")
}

/// A match claims its driver, moves the order, keeps its step and writes its event, together.
pub async fn a_match_claims_the_driver_and_writes_its_step_and_event(db: &Database) {
    let acme = tenant("acme");
    let order = placed(db, &acme, "u1").await;
    report(db, &acme, "d1", true, T0).await;
    let outcome = db
        .transition(&acme, order.id, claim("d1"))
        .await
        .expect("match");
    let TransitionOutcome::Applied(matched) = outcome else {
        panic!("not applied: {outcome:?}");
    };
    assert_eq!(
        (matched.status, matched.driver_id.as_deref()),
        (OrderStatus::Matched, Some("d1"))
    );
    let stored = db
        .order(&acme, order.id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(stored.status, OrderStatus::Matched);
    assert_eq!(stored.driver_id.as_deref(), Some("d1"));
    let steps = db.steps(&acme, order.id).await.expect("steps");
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (steps[0].status, steps[0].at_ms),
        (OrderStatus::Matched, T0 + 1)
    );
    let driver = db
        .driver(&acme, "d1")
        .await
        .expect("driver")
        .expect("known");
    assert_eq!(
        (driver.status, driver.order_id),
        (DriverStatus::OnRide, Some(order.id))
    );
    assert_eq!(ride_events_of(db, order.id).await, 1);
}

/// A driver already on a ride, offline or never seen is not claimed, and nothing is written.
pub async fn a_driver_not_available_is_not_claimed_and_nothing_is_written(db: &Database) {
    let acme = tenant("acme");
    let first = placed(db, &acme, "u1").await;
    let second = placed(db, &acme, "u2").await;
    report(db, &acme, "d1", true, T0).await;
    report(db, &acme, "off", false, T0).await;
    db.transition(&acme, first.id, claim("d1"))
        .await
        .expect("match");
    for driver in ["d1", "off", "never-seen"] {
        let outcome = db
            .transition(&acme, second.id, claim(driver))
            .await
            .expect("claim");
        assert_eq!(outcome, TransitionOutcome::DriverTaken, "{driver}");
    }
    let stored = db
        .order(&acme, second.id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(
        (stored.status, stored.driver_id),
        (OrderStatus::Pending, None)
    );
    assert!(db.steps(&acme, second.id).await.expect("steps").is_empty());
    assert_eq!(ride_events_of(db, second.id).await, 0);
}

/// A claim of several candidates takes the first available in their order, passing over the
/// taken, offline and unknown ones; the event announces the driver it took.
pub async fn a_claim_takes_the_first_available_candidate_in_order(db: &Database) {
    let acme = tenant("acme");
    let first = placed(db, &acme, "u1").await;
    let second = placed(db, &acme, "u2").await;
    for driver in ["near", "mid", "far"] {
        report(db, &acme, driver, true, T0).await;
    }
    report(db, &acme, "off", false, T0).await;
    db.transition(&acme, first.id, claim("near"))
        .await
        .expect("match");
    let outcome = db
        .transition(
            &acme,
            second.id,
            claim_first(&["ghost", "near", "off", "mid", "far"]),
        )
        .await
        .expect("match");
    let TransitionOutcome::Applied(matched) = outcome else {
        panic!("not applied: {outcome:?}");
    };
    assert_eq!(matched.driver_id.as_deref(), Some("mid"));
    let far = db.driver(&acme, "far").await.expect("far").expect("known");
    assert_eq!(
        far.status,
        DriverStatus::Available,
        "only one driver is claimed"
    );
    let row = db
        .fetch_optional(
            &Sql::new(
                "SELECT aggregate_id FROM outbox_events WHERE aggregate_id = $1 AND topic = $2",
            )
            .bind(second.id)
            .bind("rides.events"),
        )
        .await
        .expect("event");
    assert!(row.is_some(), "the match is announced");
}

/// Of orders racing for one driver, exactly one gets it.
pub async fn orders_racing_for_one_driver_get_it_once(db: &Database) {
    let acme = tenant("acme");
    report(db, &acme, "d1", true, T0).await;
    let mut orders = Vec::new();
    for i in 0..8 {
        orders.push(placed(db, &acme, &format!("racer-{i}")).await);
    }
    let races = orders
        .iter()
        .map(|order| db.transition(&acme, order.id, claim("d1")));
    let outcomes = futures::future::join_all(races).await;
    let won = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(TransitionOutcome::Applied(_))))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|outcome| matches!(
        outcome,
        Ok(TransitionOutcome::Applied(_) | TransitionOutcome::DriverTaken)
    )));
}

/// A rule that answers writes nothing; an unknown order, or another tenant's, is not found.
pub async fn an_answer_writes_nothing_and_tenants_are_apart(db: &Database) {
    let acme = tenant("acme");
    let order = placed(db, &acme, "u1").await;
    let outcome = db
        .transition(
            &acme,
            order.id,
            moving(
                OrderStatus::Matched,
                OrderStatus::Started,
                DriverChange::Keep,
            ),
        )
        .await
        .expect("answered");
    let TransitionOutcome::Answered(Answer::WrongState, seen) = outcome else {
        panic!("not answered: {outcome:?}");
    };
    assert_eq!(seen.status, OrderStatus::Pending);
    assert_eq!(ride_events_of(db, order.id).await, 0);
    let other = tenant("other");
    report(db, &other, "d1", true, T0).await;
    assert_eq!(
        db.transition(&other, order.id, claim("d1"))
            .await
            .expect("other tenant"),
        TransitionOutcome::NotFound
    );
    assert!(db.order(&other, order.id).await.expect("read").is_none());
    assert_eq!(
        db.transition(&acme, Uuid::now_v7(), claim("d1"))
            .await
            .expect("unknown"),
        TransitionOutcome::NotFound
    );
    // The same driver id in the other tenant is another driver: acme's is unknown.
    assert_eq!(
        db.transition(&acme, order.id, claim("d1"))
            .await
            .expect("claim"),
        TransitionOutcome::DriverTaken
    );
}

/// The end of a ride frees the driver it holds, and only that one.
pub async fn the_end_of_a_ride_frees_only_its_own_driver(db: &Database) {
    let acme = tenant("acme");
    let first = placed(db, &acme, "u1").await;
    let second = placed(db, &acme, "u2").await;
    report(db, &acme, "d1", true, T0).await;
    report(db, &acme, "d2", true, T0).await;
    db.transition(&acme, first.id, claim("d1"))
        .await
        .expect("match 1");
    db.transition(&acme, second.id, claim("d2"))
        .await
        .expect("match 2");
    // The second order names the wrong driver: d1 stays on its ride.
    let cancel = moving(
        OrderStatus::Matched,
        OrderStatus::Cancelled,
        DriverChange::Release("d1".into()),
    );
    db.transition(&acme, second.id, cancel)
        .await
        .expect("cancel");
    let d1 = db.driver(&acme, "d1").await.expect("d1").expect("known");
    assert_eq!(d1.status, DriverStatus::OnRide);
    let finish = moving(
        OrderStatus::Matched,
        OrderStatus::Finished,
        DriverChange::Release("d1".into()),
    );
    db.transition(&acme, first.id, finish)
        .await
        .expect("finish");
    let d1 = db.driver(&acme, "d1").await.expect("d1").expect("known");
    assert_eq!((d1.status, d1.order_id), (DriverStatus::Available, None));
    let steps = db.steps(&acme, first.id).await.expect("steps");
    let statuses: Vec<OrderStatus> = steps.iter().map(|step| step.status).collect();
    assert_eq!(statuses, [OrderStatus::Matched, OrderStatus::Finished]);
}

/// Reports set a driver available or offline, except while it is on a ride; the points of a
/// driver on a ride join that ride's trail once each.
pub async fn reports_follow_pings_except_on_a_ride_and_fill_the_trail(db: &Database) {
    let acme = tenant("acme");
    report(db, &acme, "d1", false, T0).await;
    let d1 = db.driver(&acme, "d1").await.expect("d1").expect("known");
    assert_eq!(
        (d1.status, d1.vehicle_type.as_deref()),
        (DriverStatus::Offline, Some("car"))
    );
    report(db, &acme, "d1", true, T0 + 1).await;
    let order = placed(db, &acme, "u1").await;
    db.transition(&acme, order.id, claim("d1"))
        .await
        .expect("match");
    let points: Vec<DriverReport> = (0..3)
        .map(|i| DriverReport {
            driver_id: "d1".into(),
            available: i != 1,
            vehicle_type: None,
            at_ms: T0 + 10 + i,
            lat: 52.5 + i as f64 / 100.0,
            lng: 13.4,
        })
        .collect();
    db.report_drivers(&acme, &points)
        .await
        .expect("reports on the ride");
    db.report_drivers(&acme, &points)
        .await
        .expect("redelivered reports");
    let d1 = db.driver(&acme, "d1").await.expect("d1").expect("known");
    assert_eq!(
        d1.status,
        DriverStatus::OnRide,
        "pings never take a driver off its ride"
    );
    assert_eq!(
        d1.vehicle_type.as_deref(),
        Some("car"),
        "a report without one keeps it"
    );
    let trail = db.trail(&acme, order.id, 100).await.expect("trail");
    let times: Vec<i64> = trail.iter().map(|point| point.at_ms).collect();
    assert_eq!(times, [T0 + 10, T0 + 11, T0 + 12]);
    assert!((trail[2].lat - 52.52).abs() < 1e-9);
    // A driver not on a ride leaves no trail anywhere.
    report(db, &acme, "d2", true, T0 + 20).await;
    assert_eq!(
        db.trail(&acme, order.id, 100).await.expect("trail").len(),
        3
    );
}

/// Due attempts are taken once (their next attempt pushed), a give-up marks the order and stops
/// them, and an order no longer pending is neither scheduled nor marked.
pub async fn dispatch_attempts_are_taken_once_and_given_up(db: &Database) {
    let acme = tenant("acme");
    let waiting = placed(db, &acme, "u1").await;
    let later = placed(db, &acme, "u2").await;
    db.schedule_dispatch(&acme, waiting.id, T0 + 100, T0 + 1_000)
        .await
        .expect("schedule");
    db.schedule_dispatch(&acme, later.id, T0 + 5_000, T0 + 9_000)
        .await
        .expect("schedule");
    let due = db
        .take_due_dispatches(T0 + 100, T0 + 400, 10)
        .await
        .expect("due");
    assert_eq!(due, [(acme.clone(), waiting.id, T0 + 1_000)]);
    assert!(
        db.take_due_dispatches(T0 + 100, T0 + 400, 10)
            .await
            .expect("due")
            .is_empty(),
        "taken attempts are pushed to their retry"
    );
    // A second schedule keeps the first deadline.
    db.schedule_dispatch(&acme, waiting.id, T0 + 200, T0 + 50_000)
        .await
        .expect("again");
    let due = db
        .take_due_dispatches(T0 + 300, T0 + 600, 10)
        .await
        .expect("due");
    assert_eq!(due, [(acme.clone(), waiting.id, T0 + 1_000)]);
    db.give_up_dispatch(&acme, waiting.id, "no available driver within 5000 m")
        .await
        .expect("give up");
    let marked = db
        .order(&acme, waiting.id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(marked.status, OrderStatus::Pending);
    assert_eq!(
        marked.no_driver.as_deref(),
        Some("no available driver within 5000 m")
    );
    assert!(db
        .take_due_dispatches(T0 + 60_000, T0 + 60_300, 10)
        .await
        .expect("due")
        .iter()
        .all(|(_, id, _)| *id != waiting.id));
    // A match ends the schedule and clears the mark.
    report(db, &acme, "d1", true, T0).await;
    db.transition(&acme, waiting.id, claim("d1"))
        .await
        .expect("match");
    let matched = db
        .order(&acme, waiting.id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(matched.no_driver, None);
    db.give_up_dispatch(&acme, waiting.id, "late")
        .await
        .expect("no-op");
    db.schedule_dispatch(&acme, waiting.id, T0, T0)
        .await
        .expect("no-op");
    let matched = db
        .order(&acme, waiting.id)
        .await
        .expect("read")
        .expect("order");
    assert_eq!(
        (matched.status, matched.no_driver),
        (OrderStatus::Matched, None)
    );
}

/// Histories page newest first, per rider and per driver, within the tenant.
pub async fn histories_page_newest_first_per_rider_and_driver(db: &Database) {
    let acme = tenant("acme");
    let mut ids = Vec::new();
    for i in 0..5 {
        let order = placed(db, &acme, "rider").await;
        let driver = format!("d{i}");
        report(db, &acme, &driver, true, T0).await;
        db.transition(&acme, order.id, claim(&driver))
            .await
            .expect("match");
        ids.push(order.id);
    }
    placed(db, &tenant("other"), "rider").await;
    ids.reverse();
    let first = db
        .rides(&acme, RideParty::Rider("rider"), None, 2)
        .await
        .expect("page");
    let second = db
        .rides(&acme, RideParty::Rider("rider"), first.next, 2)
        .await
        .expect("page");
    let third = db
        .rides(&acme, RideParty::Rider("rider"), second.next, 2)
        .await
        .expect("page");
    let seen: Vec<Uuid> = [first.rides, second.rides, third.rides.clone()]
        .concat()
        .iter()
        .map(|ride| ride.id)
        .collect();
    assert_eq!(seen, ids);
    assert_eq!(third.next, None);
    let driven = db
        .rides(&acme, RideParty::Driver("d3"), None, 10)
        .await
        .expect("page");
    assert_eq!(driven.rides.len(), 1);
    assert_eq!(driven.rides[0].driver_id.as_deref(), Some("d3"));
}
