//! The relational store suite: migrations, the seed tables, transactions, and the orders store
//! with its outbox on every backend.

use bytes::Bytes;
use pulse_geo::Point;
use pulse_orders::{
    CreateOutcome, IdempotencyKey, Order, OrderStatus, OrderStore, Outbox, OutboxEvent,
};
use pulse_store::Database;
use sqlx::Connection;
use uuid::Uuid;

/// Running the migrations again changes nothing and fails nothing.
pub async fn migrations_are_idempotent(db: &Database) {
    db.migrate().await.expect("second migrate");
    db.migrate().await.expect("third migrate");
}

/// The seed's `orders` and `outbox_events` tables take rows with the seed's columns.
pub async fn seed_tables_accept_seed_rows(db: &Database) {
    let order_id = uuid::Uuid::now_v7();
    let event_id = uuid::Uuid::now_v7();
    let status: String = match db {
        Database::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at)
                 VALUES ($1, 'user-1', '8928308280fffff', '8928308280bffff', 'PENDING', now())",
            )
            .bind(order_id)
            .execute(pool)
            .await
            .expect("insert order");
            sqlx::query(
                "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic, created_at)
                 VALUES ($1, $2, 'ORDER', $3, 'demand.orders', now())",
            )
            .bind(event_id)
            .bind(order_id)
            .bind(&b"\x0a\x01x"[..])
            .execute(pool)
            .await
            .expect("insert outbox event");
            sqlx::query_scalar("SELECT status FROM outbox_events WHERE id = $1")
                .bind(event_id)
                .fetch_one(pool)
                .await
                .expect("read outbox event")
        }
        Database::Sqlite(pool) => {
            sqlx::query(
                "INSERT INTO orders (id, user_id, pickup_h3, dropoff_h3, status, created_at)
                 VALUES (?1, 'user-1', '8928308280fffff', '8928308280bffff', 'PENDING', datetime('now'))",
            )
            .bind(order_id.to_string())
            .execute(pool)
            .await
            .expect("insert order");
            sqlx::query(
                "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic, created_at)
                 VALUES (?1, ?2, 'ORDER', ?3, 'demand.orders', datetime('now'))",
            )
            .bind(event_id.to_string())
            .bind(order_id.to_string())
            .bind(&b"\x0a\x01x"[..])
            .execute(pool)
            .await
            .expect("insert outbox event");
            sqlx::query_scalar("SELECT status FROM outbox_events WHERE id = ?1")
                .bind(event_id.to_string())
                .fetch_one(pool)
                .await
                .expect("read outbox event")
        }
    };
    assert_eq!(status, "PENDING", "outbox rows start pending");
}

async fn count_orders_of(db: &Database, user: &str) -> i64 {
    match db {
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE user_id = $1")
                .bind(user)
                .fetch_one(pool)
                .await
                .expect("count")
        }
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE user_id = ?1")
                .bind(user)
                .fetch_one(pool)
                .await
                .expect("count")
        }
    }
}

async fn insert_order_in_transaction(db: &Database, user: &str, commit: bool) {
    let id = uuid::Uuid::now_v7();
    match db {
        Database::Postgres(pool) => {
            let mut conn = pool.acquire().await.expect("acquire");
            let mut tx = conn.begin().await.expect("begin");
            sqlx::query("INSERT INTO orders (id, user_id, status) VALUES ($1, $2, 'PENDING')")
                .bind(id)
                .bind(user)
                .execute(&mut *tx)
                .await
                .expect("insert");
            if commit {
                tx.commit().await.expect("commit")
            } else {
                tx.rollback().await.expect("rollback")
            }
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("INSERT INTO orders (id, user_id, status) VALUES (?1, ?2, 'PENDING')")
                .bind(id.to_string())
                .bind(user)
                .execute(&mut *tx)
                .await
                .expect("insert");
            if commit {
                tx.commit().await.expect("commit")
            } else {
                tx.rollback().await.expect("rollback")
            }
        }
    }
}

/// A rolled-back transaction leaves no row; a committed one does.
pub async fn rolled_back_transactions_leave_nothing(db: &Database) {
    let user = crate::unique_name("u");
    insert_order_in_transaction(db, &user, false).await;
    assert_eq!(count_orders_of(db, &user).await, 0);
    insert_order_in_transaction(db, &user, true).await;
    assert_eq!(count_orders_of(db, &user).await, 1);
}

/// Many transactions at once through the pool all land.
pub async fn concurrent_transactions_all_commit(db: &Database) {
    let user = crate::unique_name("u");
    let writes = (0..32).map(|_| insert_order_in_transaction(db, &user, true));
    futures::future::join_all(writes).await;
    assert_eq!(count_orders_of(db, &user).await, 32);
}

/// A new order of `user` at `at_ms`, with the outbox row announcing it.
fn order_with_event(user: &str, at_ms: i64) -> (Order, OutboxEvent) {
    let pickup = Point::new(52.52, 13.40).expect("point");
    let dropoff = Point::new(52.53, 13.41).expect("point");
    let order = Order {
        id: Uuid::now_v7(),
        user_id: user.to_owned(),
        pickup,
        dropoff,
        pickup_h3: pickup.cell().to_string(),
        dropoff_h3: dropoff.cell().to_string(),
        status: OrderStatus::Pending,
        created_at_ms: at_ms,
        quote_id: None,
        price: None,
    };
    let event = OutboxEvent {
        id: Uuid::now_v7(),
        aggregate_id: order.id,
        aggregate_type: "ORDER".to_owned(),
        topic: "demand.orders".to_owned(),
        payload: Bytes::from_static(b"order created"),
        created_at_ms: at_ms,
        traceparent: None,
        tracestate: None,
    };
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
    assert_eq!(db.get(first.id).await.expect("get"), Some(first.clone()));
    assert_eq!(db.backlog().await.expect("backlog"), backlog_before + 1);

    let (retry, retry_event) = order_with_event(&user, 1_700_000_000_500);
    match db
        .create(&retry, Some(&key), &retry_event)
        .await
        .expect("retry")
    {
        CreateOutcome::Existing(existing) => assert_eq!(existing, first),
        other => panic!("a reused key must return the first order, got {other:?}"),
    }
    assert_eq!(db.get(retry.id).await.expect("get"), None);
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

/// The health probe answers.
pub async fn ping_answers(db: &Database) {
    db.ping().await.expect("ping");
}
