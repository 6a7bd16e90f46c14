//! The relational store suite: migrations, the seed tables, and transactions on every backend.

use pulse_store::Database;
use sqlx::Connection;

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

/// The health probe answers.
pub async fn ping_answers(db: &Database) {
    db.ping().await.expect("ping");
}
