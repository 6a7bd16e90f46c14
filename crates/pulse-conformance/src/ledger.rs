//! The wallet's storage suite, for any adapter of [`Ledger`] that also keeps rides (the
//! relational store on SQLite and on PostgreSQL): top-ups exactly once per reference; a ride's
//! hold written with its match, voided with its cancellation, posted once with its split; holds
//! that must be covered never take a wallet below zero, even when they race; every invariant
//! `verify` checks is broken once on purpose and named. Every case expects an empty store.

use bytes::Bytes;
use pulse_core::money::{Currency, Money};
use pulse_core::TenantId;
use pulse_ledger::model::{split, Account, TransferKind};
use pulse_ledger::ports::{Created, Ledger, NewTransfer, PostHold, Posted};
use pulse_marketplace::model::{Answer, DriverReport};
use pulse_marketplace::ports::{
    Decide, Decision, DriverChange, MoneyChange, RideStore, Transition, TransitionOutcome,
};
use pulse_orders::{CreateOutcome, Order, OrderPrice, OrderStatus, OrderStore};
use pulse_outbox::OutboxEvent;
use pulse_store::{Database, Sql};
use uuid::Uuid;

const T0: i64 = 1_700_000_000_000;
const FARE: i64 = 1_250;
const COMMISSION_BP: u32 = 2_000;

fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

fn usd_of(amount_minor: i64) -> Money {
    Money::new(amount_minor, usd())
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// A pending order of `user` with a fare of [`FARE`], stored.
async fn placed(db: &Database, tenant: &TenantId, user: &str) -> Order {
    let (mut order, event) = crate::store::order_of(tenant, user, T0, None);
    order.price = Some(OrderPrice {
        total: usd_of(FARE),
        multiplier_milli: 1_000,
    });
    let created = OrderStore::create(db, &order, None, &event)
        .await
        .expect("create");
    assert_eq!(created, CreateOutcome::Created);
    order
}

async fn driver_ready(db: &Database, tenant: &TenantId, driver: &str) {
    db.report_drivers(
        tenant,
        &[DriverReport {
            driver_id: driver.to_owned(),
            available: true,
            vehicle_type: None,
            at_ms: T0,
            lat: 52.52,
            lng: 13.40,
        }],
    )
    .await
    .expect("report");
}

fn moving(from: OrderStatus, to: OrderStatus, driver: DriverChange, money: MoneyChange) -> Decide {
    Box::new(move |order: &Order| {
        if order.status != from {
            return Decision::Answer(Answer::WrongState);
        }
        Decision::Apply(Transition {
            to,
            at_ms: T0 + 1,
            driver,
            money,
            announce: Box::new(|after: &Order| {
                let mut event =
                    OutboxEvent::new("rides.events", "ORDER", after.id, Bytes::new(), T0);
                event.tenant = after.tenant.clone();
                vec![event]
            }),
        })
    })
}

async fn matched(
    db: &Database,
    order: &Order,
    driver: &str,
    require_funds: bool,
) -> TransitionOutcome {
    let decide = moving(
        OrderStatus::Pending,
        OrderStatus::Matched,
        DriverChange::Claim(vec![driver.to_owned()]),
        MoneyChange::Hold { require_funds },
    );
    db.transition(&order.tenant, order.id, decide)
        .await
        .expect("match")
}

/// A priced order of `user` matched to `driver`, its fare held.
async fn ride(db: &Database, tenant: &TenantId, user: &str, driver: &str) -> Order {
    driver_ready(db, tenant, driver).await;
    let order = placed(db, tenant, user).await;
    let outcome = matched(db, &order, driver, false).await;
    assert!(
        matches!(outcome, TransitionOutcome::Applied(_)),
        "{outcome:?}"
    );
    order
}

async fn top_up(db: &Database, tenant: &TenantId, user: &str, amount: i64, key: &str) -> Created {
    db.transfer(
        tenant,
        NewTransfer {
            reference: format!("top-up:{user}:{key}"),
            debit: Account::top_ups(),
            credit: Account::rider(user),
            amount: usd_of(amount),
            shard: 3,
            description: "top-up".into(),
            at_ms: T0,
        },
    )
    .await
    .expect("top-up")
}

fn post_of(order: &Order, amount: i64) -> PostHold {
    PostHold {
        tenant: order.tenant.clone(),
        order_id: order.id,
        amount: usd_of(amount),
        commission_bp: COMMISSION_BP,
        revenue_shard: 5,
        at_ms: T0 + 10,
    }
}

async fn posted(db: &Database, orders: &[&Order]) -> Vec<Posted> {
    let posts: Vec<PostHold> = orders.iter().map(|order| post_of(order, FARE)).collect();
    db.post_holds(&posts).await.expect("post")
}

async fn balance(db: &Database, tenant: &TenantId, account: &Account) -> (i64, i64) {
    let balance = db.balance(tenant, account, usd()).await.expect("balance");
    (balance.posted_minor, balance.pending_minor)
}

async fn sound(db: &Database) {
    let violations = db.verify(T0 + 1_000_000, 0, 50).await.expect("verify");
    assert!(violations.is_empty(), "{violations:#?}");
}

async fn rules_broken(db: &Database) -> Vec<&'static str> {
    let mut rules: Vec<&'static str> = db
        .verify(T0 + 1_000_000, 0, 50)
        .await
        .expect("verify")
        .into_iter()
        .map(|violation| violation.rule)
        .collect();
    rules.dedup();
    rules
}

async fn exec(db: &Database, sql: &str) {
    db.execute(Sql::new(sql.to_owned())).await.expect(sql);
}

pub async fn a_top_up_is_written_once_per_reference(db: &Database) {
    let acme = tenant("acme");
    let Created::New(first) = top_up(db, &acme, "u1", 5_000, "k1").await else {
        panic!("a new reference creates the transfer");
    };
    assert_eq!(first.kind, TransferKind::Single);
    assert_eq!(
        top_up(db, &acme, "u1", 5_000, "k1").await,
        Created::Exists(first.clone()),
        "the same transfer again: the original, nothing written"
    );
    assert_eq!(
        top_up(db, &acme, "u1", 7_000, "k1").await,
        Created::Mismatch(first.clone()),
        "another amount under the reference"
    );
    assert_eq!(balance(db, &acme, &Account::rider("u1")).await, (5_000, 0));
    assert_eq!(
        balance(db, &acme, &Account::top_ups()).await,
        (-5_000, 0),
        "money came in through the clearing account"
    );
    assert_eq!(
        balance(db, &tenant("other"), &Account::rider("u1")).await,
        (0, 0),
        "tenants are apart"
    );
    let found = db
        .transfer_by_reference(&acme, "top-up:u1:k1")
        .await
        .expect("read");
    assert_eq!(found, Some(first));
    let page = db
        .entries(&acme, &Account::rider("u1"), usd(), None, 10)
        .await
        .expect("entries");
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].amount_minor, 5_000);
    sound(db).await;
}

pub async fn a_hold_is_written_with_the_match_and_posted_once_with_its_split(db: &Database) {
    let acme = tenant("acme");
    top_up(db, &acme, "u1", 5_000, "k1").await;
    let order = ride(db, &acme, "u1", "d1").await;
    assert_eq!(
        balance(db, &acme, &Account::rider("u1")).await,
        (5_000, -FARE),
        "the fare is held, not yet paid"
    );
    assert_eq!(balance(db, &acme, &Account::driver("d1")).await, (0, FARE));
    let shares = split(FARE, COMMISSION_BP);
    assert_eq!(posted(db, &[&order]).await, vec![Posted::Now(shares)]);
    assert_eq!(
        posted(db, &[&order, &order]).await,
        vec![Posted::Already, Posted::Already],
        "a redelivered payment writes nothing"
    );
    assert_eq!(
        balance(db, &acme, &Account::rider("u1")).await,
        (5_000 - FARE, 0)
    );
    assert_eq!(
        balance(db, &acme, &Account::driver("d1")).await,
        (shares.driver_minor, 0)
    );
    assert_eq!(
        balance(db, &acme, &Account::revenue()).await,
        (shares.commission_minor, 0)
    );
    let totals = db.totals(&acme, usd()).await.expect("totals");
    assert_eq!(totals.charged_minor, FARE);
    assert_eq!(totals.rides_charged, 1);
    assert_eq!(totals.revenue_minor, shares.commission_minor);
    assert_eq!(totals.topped_up_minor, 5_000);
    sound(db).await;
}

pub async fn a_batch_posts_each_hold_once_and_answers_each_payment(db: &Database) {
    let acme = tenant("acme");
    let a = ride(db, &acme, "u1", "d1").await;
    let b = ride(db, &acme, "u2", "d2").await;
    let unheld = placed(db, &acme, "u3").await;
    let mut posts = vec![post_of(&a, FARE), post_of(&a, FARE), post_of(&b, FARE + 1)];
    posts.push(post_of(&unheld, FARE));
    let outcomes = db.post_holds(&posts).await.expect("post");
    assert_eq!(
        outcomes,
        vec![
            Posted::Now(split(FARE, COMMISSION_BP)),
            Posted::Already,
            Posted::Mismatch { held: usd_of(FARE) },
            Posted::NoHold,
        ]
    );
    assert_eq!(
        balance(db, &acme, &Account::rider("u2")).await,
        (0, -FARE),
        "a mismatched payment leaves the hold as it was"
    );
    // A rider without funds and `require_funds` off goes below zero, and shows it.
    assert_eq!(balance(db, &acme, &Account::rider("u1")).await, (-FARE, 0));
}

pub async fn a_cancelled_ride_voids_its_hold_which_is_never_posted(db: &Database) {
    let acme = tenant("acme");
    top_up(db, &acme, "u1", 5_000, "k1").await;
    let order = ride(db, &acme, "u1", "d1").await;
    let cancel = moving(
        OrderStatus::Matched,
        OrderStatus::Cancelled,
        DriverChange::Release("d1".into()),
        MoneyChange::Void,
    );
    let outcome = db
        .transition(&acme, order.id, cancel)
        .await
        .expect("cancel");
    assert!(
        matches!(outcome, TransitionOutcome::Applied(_)),
        "{outcome:?}"
    );
    assert_eq!(balance(db, &acme, &Account::rider("u1")).await, (5_000, 0));
    assert_eq!(balance(db, &acme, &Account::driver("d1")).await, (0, 0));
    assert_eq!(posted(db, &[&order]).await, vec![Posted::Voided]);
    assert_eq!(balance(db, &acme, &Account::rider("u1")).await, (5_000, 0));
    sound(db).await;
}

pub async fn holds_that_must_be_covered_never_take_a_wallet_below_zero(db: &Database) {
    let acme = tenant("acme");
    top_up(db, &acme, "u1", FARE * 5, "k1").await;
    let mut orders = Vec::new();
    for n in 0..20 {
        driver_ready(db, &acme, &format!("d{n}")).await;
        orders.push(placed(db, &acme, "u1").await);
    }
    let matches = orders.iter().enumerate().map(|(n, order)| {
        let db = db.clone();
        let order = order.clone();
        tokio::spawn(async move { matched(&db, &order, &format!("d{n}"), true).await })
    });
    let mut held = 0;
    let mut refused = 0;
    for outcome in futures::future::join_all(matches).await {
        match outcome.expect("task") {
            TransitionOutcome::Applied(_) => held += 1,
            TransitionOutcome::InsufficientFunds {
                fare,
                available_minor,
            } => {
                assert_eq!(fare, usd_of(FARE));
                assert!(available_minor < FARE, "{available_minor}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((held, refused), (5, 15));
    let wallet = db
        .balance(&acme, &Account::rider("u1"), usd())
        .await
        .expect("balance");
    assert_eq!(wallet.available_minor(), 0, "never below zero");
    sound(db).await;
}

pub async fn a_refused_hold_claims_no_driver(db: &Database) {
    let acme = tenant("acme");
    driver_ready(db, &acme, "d1").await;
    let order = placed(db, &acme, "broke").await;
    let outcome = matched(db, &order, "d1", true).await;
    assert!(
        matches!(
            outcome,
            TransitionOutcome::InsufficientFunds {
                available_minor: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    let driver = db.driver(&acme, "d1").await.expect("read").expect("known");
    assert_eq!(driver.order_id, None, "the driver stays free");
    let order = RideStore::order(db, &acme, order.id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(order.status, OrderStatus::Pending);
    sound(db).await;
}

pub async fn verify_names_each_broken_invariant(db: &Database) {
    let acme = tenant("acme");
    top_up(db, &acme, "u1", 5_000, "k1").await;
    let order = ride(db, &acme, "u1", "d1").await;
    sound(db).await;

    // A finished ride nobody charged.
    let finish = moving(
        OrderStatus::Matched,
        OrderStatus::Finished,
        DriverChange::Release("d1".into()),
        MoneyChange::Keep,
    );
    db.transition(&acme, order.id, finish)
        .await
        .expect("finish");
    assert_eq!(rules_broken(db).await, ["finished_unposted"]);
    let fresh = db.verify(T0, 60_000, 10).await.expect("verify");
    assert!(
        fresh.is_empty(),
        "within the grace a ride may wait for its post: {fresh:?}"
    );
    posted(db, &[&order]).await;
    sound(db).await;

    // A balance that moved without its entries.
    exec(
        db,
        "UPDATE wallets SET balance = balance + 1 WHERE kind = 'rider'",
    )
    .await;
    assert_eq!(rules_broken(db).await, ["balance_drift"]);
    exec(
        db,
        "UPDATE wallets SET balance = balance - 1 WHERE kind = 'rider'",
    )
    .await;

    // An entry that does not balance its transfer.
    exec(
        db,
        "UPDATE transactions SET amount = amount + 1 WHERE kind = 'top_ups'",
    )
    .await;
    let broken = rules_broken(db).await;
    assert!(broken.contains(&"transfer_unbalanced"), "{broken:?}");
    exec(
        db,
        "UPDATE transactions SET amount = amount - 1 WHERE kind = 'top_ups'",
    )
    .await;
    sound(db).await;

    // An entry whose transfer is gone.
    exec(
        db,
        "UPDATE transactions SET transfer_id = (SELECT order_id FROM transfers WHERE order_id IS NOT NULL LIMIT 1) \
         WHERE kind = 'top_ups'",
    )
    .await;
    let broken = rules_broken(db).await;
    assert!(broken.contains(&"transfer_unbalanced"), "{broken:?}");
    exec(
        db,
        "UPDATE transactions SET transfer_id = (SELECT id FROM transfers WHERE kind = 'single' \
         AND debit_kind = 'top_ups') WHERE kind = 'top_ups'",
    )
    .await;
    sound(db).await;

    // A second charge and a void beside the post: what the constraints keep out.
    exec(db, "DROP INDEX transfers_resolve_once").await;
    exec(db, "DROP INDEX transfers_reference").await;
    let copy = |kind: &str| {
        format!(
            "INSERT INTO transfers (id, tenant, reference, kind, debit_kind, debit_user, \
             credit_kind, credit_user, currency, amount_minor, pending_id, order_id, \
             created_at_ms) SELECT '{}', tenant, reference, '{kind}', debit_kind, debit_user, \
             credit_kind, credit_user, currency, amount_minor, pending_id, order_id, \
             created_at_ms FROM transfers WHERE kind = 'post'",
            Uuid::now_v7()
        )
    };
    exec(db, &copy("post")).await;
    let broken = rules_broken(db).await;
    assert!(broken.contains(&"charged_twice"), "{broken:?}");
    assert!(broken.contains(&"posted_and_voided"), "{broken:?}");
}

pub async fn a_match_without_a_hold_and_a_cancellation_without_a_void_are_named(db: &Database) {
    let acme = tenant("acme");
    driver_ready(db, &acme, "d1").await;
    let unheld = placed(db, &acme, "u1").await;
    let decide = moving(
        OrderStatus::Pending,
        OrderStatus::Matched,
        DriverChange::Claim(vec!["d1".into()]),
        MoneyChange::Keep,
    );
    db.transition(&acme, unheld.id, decide)
        .await
        .expect("match");
    assert_eq!(rules_broken(db).await, ["matched_unheld"]);
    let cancel = moving(
        OrderStatus::Matched,
        OrderStatus::Cancelled,
        DriverChange::Release("d1".into()),
        MoneyChange::Keep,
    );
    db.transition(&acme, unheld.id, cancel)
        .await
        .expect("cancel");
    sound(db).await;

    let order = ride(db, &acme, "u2", "d1").await;
    let cancel = moving(
        OrderStatus::Matched,
        OrderStatus::Cancelled,
        DriverChange::Release("d1".into()),
        MoneyChange::Keep,
    );
    db.transition(&acme, order.id, cancel)
        .await
        .expect("cancel");
    assert_eq!(rules_broken(db).await, ["cancelled_unvoided"]);
}

pub async fn entries_page_newest_first(db: &Database) {
    let acme = tenant("acme");
    for n in 0..5 {
        top_up(db, &acme, "u1", 100 + n, &format!("k{n}")).await;
    }
    let first = db
        .entries(&acme, &Account::rider("u1"), usd(), None, 2)
        .await
        .expect("page");
    let amounts: Vec<i64> = first.entries.iter().map(|e| e.amount_minor).collect();
    assert_eq!(amounts, [104, 103]);
    let second = db
        .entries(&acme, &Account::rider("u1"), usd(), first.next, 10)
        .await
        .expect("page");
    let amounts: Vec<i64> = second.entries.iter().map(|e| e.amount_minor).collect();
    assert_eq!(amounts, [102, 101, 100]);
    assert_eq!(second.next, None);
}
