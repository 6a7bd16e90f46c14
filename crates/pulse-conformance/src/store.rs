//! The relational store suite: migrations, the seed tables, the unit of work (all or nothing, a
//! failing unit alone rolled back, every caller answered after the commit), and the orders store
//! with its outbox on every backend. Everything goes through the store's API — units of work,
//! one SQL body per statement — not through a dialect's pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pulse_core::clock::{Clock, ManualClock, SystemClock};
use pulse_core::{PortError, TenantId};
use pulse_geo::Point;
use pulse_orders::{CreateOutcome, IdempotencyKey, Order, OrderStatus, OrderStore};
use pulse_outbox::{Outbox, OutboxEvent};
use pulse_store::{Database, Sql};
use pulse_tenants::{
    AuthError, Authenticator, AuthenticatorSettings, QuotaClass, QuotaSetting, Scope, TenantError,
    Tenants,
};
use uuid::Uuid;

/// Running the migrations again changes nothing and fails nothing.
pub async fn migrations_are_idempotent(db: &Database) {
    db.migrate().await.expect("second migrate");
    db.migrate().await.expect("third migrate");
}

/// The seed's `orders` and `outbox_events` tables take rows with the seed's columns.
pub async fn seed_tables_accept_seed_rows(db: &Database) {
    let order_id = Uuid::now_v7();
    let event_id = Uuid::now_v7();
    let now = db.backend().timestamp_from_ms("$3");
    let status = db
        .write(move |mut tx| {
            Box::pin(async move {
                tx.execute(
                    &Sql::new(format!(
                        "INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at)
                         VALUES ($1, $2, '8928308280fffff', '8928308280bffff', 'PENDING', {now})"
                    ))
                    .bind(order_id)
                    .bind("user-1")
                    .bind(1_700_000_000_000_i64),
                )
                .await?;
                tx.execute(
                    &Sql::new(format!(
                        "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload,
                             topic, created_at)
                         VALUES ($1, $2, 'ORDER', $4, 'demand.orders', {now})"
                    ))
                    .bind(event_id)
                    .bind(order_id)
                    .bind(1_700_000_000_000_i64)
                    .bind(&b"\x0a\x01x"[..]),
                )
                .await?;
                let row = tx
                    .fetch_optional(
                        &Sql::new("SELECT status FROM outbox_events WHERE id = $1").bind(event_id),
                    )
                    .await?;
                row.expect("the row just written").text(0)
            })
        })
        .await
        .expect("seed rows");
    assert_eq!(status, "PENDING", "outbox rows start pending");
}

async fn count_orders_of(db: &Database, user: &str) -> i64 {
    let row = db
        .fetch_optional(&Sql::new("SELECT COUNT(*) FROM orders WHERE user_id = $1").bind(user))
        .await
        .expect("count");
    row.expect("a count").i64(0).expect("an integer")
}

fn insert_order(id: Uuid, user: &str) -> Sql {
    Sql::new("INSERT INTO orders (id, user_id, status) VALUES ($1, $2, 'PENDING')")
        .bind(id)
        .bind(user)
}

/// A unit that fails leaves none of its writes; one that succeeds leaves all.
pub async fn rolled_back_transactions_leave_nothing(db: &Database) {
    let user = crate::unique_name("u");
    let (first, second) = (
        insert_order(Uuid::now_v7(), &user),
        insert_order(Uuid::now_v7(), &user),
    );
    let failed = db
        .write(move |mut tx| {
            Box::pin(async move {
                tx.execute(&first).await?;
                tx.execute(&second).await?;
                Err::<(), _>(PortError::Invalid("the caller changed its mind".into()))
            })
        })
        .await;
    assert!(matches!(failed, Err(PortError::Invalid(_))), "{failed:?}");
    assert_eq!(
        count_orders_of(db, &user).await,
        0,
        "nothing of a failed unit"
    );
    let (first, second) = (
        insert_order(Uuid::now_v7(), &user),
        insert_order(Uuid::now_v7(), &user),
    );
    db.write(move |mut tx| {
        Box::pin(async move {
            tx.execute(&first).await?;
            tx.execute(&second).await
        })
    })
    .await
    .expect("a unit that succeeds");
    assert_eq!(
        count_orders_of(db, &user).await,
        2,
        "all of a committed unit"
    );
}

/// Many units at once all land.
pub async fn concurrent_transactions_all_commit(db: &Database) {
    let user = crate::unique_name("u");
    let writes = (0..64).map(|_| db.execute(insert_order(Uuid::now_v7(), &user)));
    for written in futures::future::join_all(writes).await {
        assert_eq!(written.expect("insert"), 1);
    }
    assert_eq!(count_orders_of(db, &user).await, 64);
}

/// Units queued together — behind one that holds the writer for a while, so on SQLite they
/// share one commit — each stand alone: those whose second insert breaks the primary key get a
/// conflict and leave nothing (not even their first insert), the others all land.
pub async fn a_failing_unit_rolls_back_alone_among_concurrent_ones(db: &Database) {
    let user = crate::unique_name("u");
    let taken = Uuid::now_v7();
    db.execute(insert_order(taken, &user))
        .await
        .expect("the taken id");
    let commits_before = db.group_commits();
    let slow = {
        let sql = insert_order(Uuid::now_v7(), &user);
        db.write(move |mut tx| {
            Box::pin(async move {
                tx.execute(&sql).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(())
            })
        })
    };
    let units = (0..16).map(|n| {
        let own = insert_order(Uuid::now_v7(), &user);
        let clash = insert_order(if n % 2 == 1 { taken } else { Uuid::now_v7() }, &user);
        async move {
            // Queued while the slow unit runs.
            tokio::time::sleep(Duration::from_millis(50)).await;
            db.write(move |mut tx| {
                Box::pin(async move {
                    tx.execute(&own).await?;
                    tx.execute(&clash).await
                })
            })
            .await
        }
    });
    let (slow, outcomes) = tokio::join!(slow, futures::future::join_all(units));
    slow.expect("the slow unit");
    for (n, outcome) in outcomes.iter().enumerate() {
        if n % 2 == 1 {
            assert!(
                matches!(outcome, Err(PortError::Conflict(_))),
                "unit {n}: {outcome:?}"
            );
        } else {
            assert!(matches!(outcome, Ok(1)), "unit {n}: {outcome:?}");
        }
    }
    // The taken row, the slow unit's, and two rows of each of the eight good units.
    assert_eq!(count_orders_of(db, &user).await, 1 + 1 + 8 * 2);
    if let (Some(before), Some(after)) = (commits_before, db.group_commits()) {
        assert!(after > before, "the writer counts its commits");
        assert!(
            after - before <= 4,
            "17 units queued together share commits: {} commits",
            after - before
        );
    }
}

/// A new order of `user` at `at_ms`, with the outbox row announcing it.
fn order_with_event(user: &str, at_ms: i64) -> (Order, OutboxEvent) {
    order_of(&TenantId::default_tenant(), user, at_ms, None)
}

/// A new order of `tenant`'s `user` at `at_ms`, paying `quote_id`, with its outbox row.
pub(crate) fn order_of(
    tenant: &TenantId,
    user: &str,
    at_ms: i64,
    quote_id: Option<Uuid>,
) -> (Order, OutboxEvent) {
    let pickup = Point::new(52.52, 13.40).expect("point");
    let dropoff = Point::new(52.53, 13.41).expect("point");
    let order = Order {
        id: Uuid::now_v7(),
        tenant: tenant.clone(),
        user_id: user.to_owned(),
        pickup,
        dropoff,
        pickup_h3: pickup.cell().to_string(),
        dropoff_h3: dropoff.cell().to_string(),
        status: OrderStatus::Pending,
        created_at_ms: at_ms,
        quote_id,
        price: None,
        vehicle_type: None,
        driver_id: None,
        no_driver: None,
    };
    let mut event = OutboxEvent::new(
        "demand.orders",
        "ORDER",
        order.id,
        Bytes::from_static(b"order created"),
        at_ms,
    );
    event.tenant = tenant.clone();
    (order, event)
}

/// An order and its outbox row land together; a second create with the same idempotency key
/// (and user) returns the first order and writes neither row again.
pub async fn an_order_and_its_outbox_row_land_together_once_per_key(db: &Database) {
    let user = crate::unique_name("u");
    let key = IdempotencyKey::parse("key-1").expect("key");
    let backlog_before = db.backlog().await.expect("backlog");
    let (first, first_event) = order_with_event(&user, 1_700_000_000_000);
    let created = db
        .create(&first, Some(&key), &first_event)
        .await
        .expect("create");
    assert!(matches!(created, CreateOutcome::Created), "{created:?}");
    assert_eq!(
        db.get(&TenantId::default_tenant(), first.id)
            .await
            .expect("get"),
        Some(first.clone())
    );
    assert_eq!(db.backlog().await.expect("backlog"), backlog_before + 1);

    let (retry, retry_event) = order_with_event(&user, 1_700_000_000_500);
    match db
        .create(&retry, Some(&key), &retry_event)
        .await
        .expect("retry")
    {
        CreateOutcome::Existing(existing) => assert_eq!(*existing, first),
        other => panic!("a reused key must return the first order, got {other:?}"),
    }
    assert_eq!(
        db.get(&TenantId::default_tenant(), retry.id)
            .await
            .expect("get"),
        None
    );
    assert_eq!(db.backlog().await.expect("backlog"), backlog_before + 1);

    let (other_user, other_event) = order_with_event(&crate::unique_name("u"), 1_700_000_001_000);
    let created = db
        .create(&other_user, Some(&key), &other_event)
        .await
        .expect("create");
    assert!(
        matches!(created, CreateOutcome::Created),
        "keys are scoped per user: {created:?}"
    );
    assert_eq!(db.backlog().await.expect("backlog"), backlog_before + 2);
}

/// A tenant sees only its own orders, and its idempotency keys are its own: the same user and
/// key in two tenants are two orders.
pub async fn orders_are_seen_only_by_their_tenant(db: &Database) {
    let (a, b) = (new_tenant(db).await, new_tenant(db).await);
    let user = crate::unique_name("u");
    let key = IdempotencyKey::parse("same-key").expect("key");
    let (order_a, event_a) = order_of(&a, &user, 1_700_000_000_000, None);
    let (order_b, event_b) = order_of(&b, &user, 1_700_000_000_001, None);
    for (order, event) in [(&order_a, &event_a), (&order_b, &event_b)] {
        let created = db.create(order, Some(&key), event).await.expect("create");
        assert!(matches!(created, CreateOutcome::Created), "{created:?}");
    }
    assert_eq!(
        db.get(&a, order_a.id).await.expect("get"),
        Some(order_a.clone())
    );
    assert_eq!(
        db.get(&b, order_a.id).await.expect("get"),
        None,
        "B cannot read A's order"
    );
    assert_eq!(
        db.find_by_idempotency_key(&b, &user, &key)
            .await
            .expect("find")
            .map(|order| order.id),
        Some(order_b.id)
    );
    let tenant_of_row = db
        .fetch_optional(
            &Sql::new("SELECT tenant FROM outbox_events WHERE aggregate_id = $1").bind(order_a.id),
        )
        .await
        .expect("outbox row")
        .expect("written");
    assert_eq!(tenant_of_row.text(0).expect("tenant"), a.as_str());
}

/// A quote pays for one order of its tenant: a second order with it fails with a conflict and
/// writes nothing; another tenant's order with the same quote id is its own.
pub async fn a_quote_pays_for_one_order_of_its_tenant(db: &Database) {
    let (a, b) = (new_tenant(db).await, new_tenant(db).await);
    let quote = Some(Uuid::new_v4());
    let (first, first_event) = order_of(&a, &crate::unique_name("u"), 1_700_000_000_000, quote);
    let created = db.create(&first, None, &first_event).await.expect("create");
    assert!(matches!(created, CreateOutcome::Created), "{created:?}");
    let backlog = db.backlog().await.expect("backlog");
    let (second, second_event) = order_of(&a, &crate::unique_name("u"), 1_700_000_000_001, quote);
    let refused = db.create(&second, None, &second_event).await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        db.get(&a, second.id).await.expect("get"),
        None,
        "nothing written"
    );
    assert_eq!(
        db.backlog().await.expect("backlog"),
        backlog,
        "no outbox row either"
    );
    let (other, other_event) = order_of(&b, &crate::unique_name("u"), 1_700_000_000_002, quote);
    let created = db.create(&other, None, &other_event).await.expect("create");
    assert!(matches!(created, CreateOutcome::Created), "{created:?}");
}

/// A tenant id no other run uses.
fn unique_tenant_name() -> String {
    Uuid::new_v4().simple().to_string()
}

async fn new_tenant(db: &Database) -> TenantId {
    let tenants = Tenants::new(Arc::new(db.clone()), Arc::new(SystemClock));
    let (tenant, _) = tenants
        .create(&unique_tenant_name(), None)
        .await
        .expect("tenant");
    tenant.tenant_id
}

/// Tenants and keys round-trip: a created tenant lists with its quotas, its first key is
/// `full` and authenticates, a second `ingest` key opens only ingest routes, an unknown tenant
/// gets no key, `default` cannot be created by hand, a tenant cannot be created twice.
pub async fn tenants_and_keys_round_trip(db: &Database) {
    let clock = ManualClock::new(1_700_000_000_000);
    let tenants = Tenants::new(Arc::new(db.clone()), Arc::new(clock.clone()));
    let auth = Authenticator::new(
        Arc::new(db.clone()),
        Arc::new(clock.clone()),
        AuthenticatorSettings::default(),
    );
    let (made, full) = tenants
        .create(&unique_tenant_name(), Some(7))
        .await
        .expect("create");
    assert_eq!(
        made.quotas.get(QuotaClass::Api),
        Some(QuotaSetting::per_second(7))
    );
    assert!(tenants
        .list()
        .await
        .expect("list")
        .iter()
        .any(|t| t.tenant_id == made.tenant_id));
    assert!(matches!(
        tenants.create(made.tenant_id.as_str(), None).await,
        Err(TenantError::Exists(_))
    ));
    assert!(matches!(
        tenants.create("default", None).await,
        Err(TenantError::Reserved)
    ));
    assert!(matches!(
        tenants.create("Bad Name", None).await,
        Err(TenantError::InvalidTenant(_))
    ));
    assert_eq!(full.scope, Scope::Full);
    let principal = auth
        .authenticate(Some(&full.api_key), Scope::Full)
        .await
        .expect("the first key opens full routes");
    assert_eq!(principal.tenant, made.tenant_id);
    assert_eq!(principal.quotas.api, Some(QuotaSetting::per_second(7)));

    clock.advance(Duration::from_millis(1));
    let ingest = tenants
        .create_key(made.tenant_id.as_str(), Scope::Ingest)
        .await
        .expect("ingest key");
    assert!(auth
        .authenticate(Some(&ingest.api_key), Scope::Ingest)
        .await
        .is_ok());
    assert!(matches!(
        auth.authenticate(Some(&ingest.api_key), Scope::Full).await,
        Err(AuthError::Forbidden { .. })
    ));
    assert!(matches!(
        tenants.create_key("no-such-tenant", Scope::Full).await,
        Err(TenantError::UnknownTenant(_))
    ));
    let keys = tenants.keys(made.tenant_id.as_str()).await.expect("keys");
    assert_eq!(
        keys.iter()
            .map(|key| (&key.key_id, key.scope))
            .collect::<Vec<_>>(),
        vec![(&full.key_id, Scope::Full), (&ingest.key_id, Scope::Ingest)]
    );
    assert!(keys
        .iter()
        .all(|key| key.hash.len() == 64 && !key.hash.contains(&full.api_key)));
    let set = tenants
        .set_quota(
            made.tenant_id.as_str(),
            QuotaClass::Events,
            Some(QuotaSetting {
                per_second: 500,
                burst: 1000,
            }),
        )
        .await
        .expect("set quota");
    assert_eq!(
        set.quotas.api,
        Some(QuotaSetting::per_second(7)),
        "other classes kept"
    );
    assert_eq!(
        tenants
            .get(made.tenant_id.as_str())
            .await
            .expect("get")
            .quotas,
        set.quotas
    );
}

/// A revoked key is refused once the authenticator's cache entry ages out (and at once by a
/// fresh authenticator); the tenant's other key keeps working (rotation); a wrong secret for a
/// real key id is refused.
pub async fn a_revoked_key_is_refused_within_the_cache_ttl(db: &Database) {
    let clock = ManualClock::new(1_700_000_000_000);
    let tenants = Tenants::new(Arc::new(db.clone()), Arc::new(clock.clone()));
    let settings = AuthenticatorSettings {
        cache_ttl: Duration::from_secs(2),
        max_cached: 100,
    };
    let auth = Authenticator::new(Arc::new(db.clone()), Arc::new(clock.clone()), settings);
    let tenant = new_tenant(db).await;
    let old = tenants
        .create_key(tenant.as_str(), Scope::Full)
        .await
        .expect("old");
    let new = tenants
        .create_key(tenant.as_str(), Scope::Full)
        .await
        .expect("new");
    for key in [&old, &new] {
        assert!(auth
            .authenticate(Some(&key.api_key), Scope::Full)
            .await
            .is_ok());
    }
    let wrong_secret = format!(
        "{}{}",
        &old.api_key[..old.api_key.len() - 1],
        if old.api_key.ends_with('0') { '1' } else { '0' }
    );
    assert!(matches!(
        auth.authenticate(Some(&wrong_secret), Scope::Full).await,
        Err(AuthError::Invalid)
    ));
    assert!(matches!(
        auth.authenticate(None, Scope::Full).await,
        Err(AuthError::Missing)
    ));

    let revoked = tenants
        .revoke_key(old.key_id.as_str())
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at_ms, Some(clock.now_ms()));
    clock.advance(Duration::from_millis(1_000));
    let again = tenants
        .revoke_key(old.key_id.as_str())
        .await
        .expect("revoke again");
    assert_eq!(
        again.revoked_at_ms, revoked.revoked_at_ms,
        "the first revocation time stays"
    );
    let fresh = Authenticator::new(Arc::new(db.clone()), Arc::new(clock.clone()), settings);
    assert!(matches!(
        fresh.authenticate(Some(&old.api_key), Scope::Full).await,
        Err(AuthError::Invalid)
    ));
    clock.advance(Duration::from_millis(1_000));
    assert!(
        matches!(
            auth.authenticate(Some(&old.api_key), Scope::Full).await,
            Err(AuthError::Invalid)
        ),
        "refused once the cached entry is older than the TTL"
    );
    assert!(
        auth.authenticate(Some(&new.api_key), Scope::Full)
            .await
            .is_ok(),
        "rotation: the new key works"
    );
    assert!(matches!(
        tenants.revoke_key("zzzzzzzzzzzz").await,
        Err(TenantError::UnknownKey(_))
    ));
}

/// A closed store refuses writes (retryably) instead of taking them after its close.
pub async fn a_closed_store_refuses_writes(db: &Database) {
    db.close().await;
    let write = db
        .execute(insert_order(Uuid::now_v7(), "after-close"))
        .await;
    assert!(
        write.as_ref().is_err_and(|err| err.is_retryable()),
        "{write:?}"
    );
}

/// The health probe answers.
pub async fn ping_answers(db: &Database) {
    db.ping().await.expect("ping");
}

/// A job enqueued inside a caller's unit of work commits with the caller's writes, or not at
/// all (River's transactional enqueue).
pub async fn a_job_enqueued_in_a_unit_commits_or_rolls_back_with_it(db: &Database) {
    use pulse_jobs::model::{JobState, NewJob};
    use pulse_jobs::ports::JobBook;
    let tenant = TenantId::parse("acme").unwrap();
    let job = |key: &str| NewJob {
        id: Uuid::now_v7(),
        tenant: tenant.clone(),
        job_type: "send_receipt".into(),
        queue: "default".into(),
        payload: b"{}".to_vec(),
        priority: 0,
        run_at_ms: 1_000,
        created_at_ms: 1_000,
        max_attempts: 3,
        timeout_ms: 1_000,
        idempotency_key: Some(key.into()),
        traceparent: None,
        metadata: None,
    };
    let kept = job("kept");
    let dropped = job("dropped");
    let (kept_id, dropped_id) = (kept.id, dropped.id);
    db.write(move |mut tx| {
        Box::pin(async move {
            pulse_store::jobs::enqueue_in(&mut tx, &[kept]).await?;
            tx.execute(&Sql::new(
                "CREATE TABLE IF NOT EXISTS unit_marker (n INTEGER)",
            ))
            .await?;
            Ok(())
        })
    })
    .await
    .expect("the unit commits");
    let failed = db
        .write(move |mut tx| {
            Box::pin(async move {
                pulse_store::jobs::enqueue_in(&mut tx, &[dropped]).await?;
                // The caller's own write fails after the enqueue: the whole unit rolls back.
                tx.execute(&Sql::new("INSERT INTO no_such_table VALUES (1)"))
                    .await?;
                Ok(())
            })
        })
        .await;
    assert!(failed.is_err(), "the unit fails");
    let found = JobBook::get(db, &tenant, kept_id, 1_000)
        .await
        .expect("get");
    assert_eq!(found.map(|job| job.state), Some(JobState::Queued));
    assert!(
        JobBook::get(db, &tenant, dropped_id, 1_000)
            .await
            .expect("get")
            .is_none(),
        "rolled back"
    );
}
