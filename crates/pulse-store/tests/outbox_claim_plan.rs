//! The relay's claim on PostgreSQL keeps an index-driven plan when what the planner knows is
//! stale: statistics that say the outbox is empty while a backlog waits (right after a broker
//! outage), or a plan cached while the outbox of a new deployment was empty. Either once made
//! every claim scan the whole backlog once per claimed row.

use pulse_conformance::services;
use pulse_outbox::Outbox;
use pulse_store::{Database, StoreOptions, POSTGRES_CLAIM, POSTGRES_CLAIM_PLANNER_SETTINGS};

#[tokio::test]
async fn the_claim_walks_the_pending_index_when_statistics_call_the_outbox_empty() {
    let url = services::fresh_postgres_database().await;
    let db = Database::connect(&url, &StoreOptions::default())
        .await
        .unwrap_or_else(|err| services::missing("PostgreSQL", &url, err));
    db.migrate().await.expect("migrate");
    let pool = db
        .postgres_pool()
        .expect("a postgres:// URL opens PostgreSQL");
    sqlx::query("ANALYZE outbox_events")
        .execute(pool)
        .await
        .expect("statistics of the empty outbox");
    // Below the table's autovacuum thresholds, so the statistics stay those of the empty table.
    sqlx::query(
        "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic, created_at,
             status, created_at_ms)
         SELECT gen_random_uuid(), gen_random_uuid(), 'ORDER', '\\x00', 'demand.orders', now(),
             'PENDING', 0
         FROM generate_series(1, 5000)",
    )
    .execute(pool)
    .await
    .expect("backlog");
    assert_eq!(
        db.backlog().await.expect("backlog"),
        5000,
        "the plan below is for a real backlog"
    );

    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(POSTGRES_CLAIM_PLANNER_SETTINGS)
        .execute(&mut *tx)
        .await
        .expect("planner settings");
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {POSTGRES_CLAIM}"))
        .bind("plan-test")
        .bind(1_i64)
        .bind(30_000_i64)
        .bind(500_i64)
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(!plan.contains("Sort"), "no sort of the backlog:\n{plan}");
    assert!(
        plan.contains("Index Scan using outbox_events_pending_seq on outbox_events e"),
        "candidates come from the pending index, in order:\n{plan}"
    );
    assert!(
        plan.contains("Index Scan on outbox_events_aggregate_seq")
            || plan.contains("Index Scan using outbox_events_aggregate_seq on outbox_events p"),
        "each candidate's aggregate is probed through the (aggregate_id, seq) index:\n{plan}"
    );
    assert!(
        plan.contains("Index Cond: ((aggregate_id = e.aggregate_id)"),
        "each candidate's aggregate is probed by index:\n{plan}"
    );
    assert!(
        !plan.contains("Join Filter"),
        "no join that filters a scan:\n{plan}"
    );
}

#[tokio::test]
async fn the_relay_statements_are_planned_at_each_execution_not_cached() {
    let url = services::fresh_postgres_database().await;
    // One connection, so the check below sees the session the relay's statements ran in.
    let options = StoreOptions {
        max_connections: 1,
        ..StoreOptions::default()
    };
    let db = Database::connect(&url, &options)
        .await
        .unwrap_or_else(|err| services::missing("PostgreSQL", &url, err));
    db.migrate().await.expect("migrate");
    let pool = db
        .postgres_pool()
        .expect("a postgres:// URL opens PostgreSQL");
    // More executions than PostgreSQL's five custom plans before it settles on a generic one,
    // all against the (all but) empty outbox of a new deployment: one event at a time, each
    // claimed, sent and purged, so every statement has a row to find.
    for round in 0..8_i64 {
        let id = uuid::Uuid::now_v7();
        // Not prepared either, so the check below sees only the relay's statements.
        sqlx::query(
            "INSERT INTO outbox_events (id, aggregate_id, aggregate_type, payload, topic,
                 created_at, status, created_at_ms)
             VALUES ($1, gen_random_uuid(), 'ORDER', '\\x00', 'demand.orders', now(),
                 'PENDING', $2)",
        )
        .persistent(false)
        .bind(id)
        .bind(round)
        .execute(pool)
        .await
        .expect("one pending event");
        assert_eq!(db.backlog().await.expect("backlog"), 1, "round {round}");
        let claimed = db
            .claim("relay-1", 500, 30_000, round)
            .await
            .expect("claim");
        assert_eq!(
            claimed.iter().map(|event| event.id).collect::<Vec<_>>(),
            [id],
            "round {round}"
        );
        assert_eq!(
            db.backlog().await.expect("backlog"),
            1,
            "round {round}: a claimed event is not sent yet"
        );
        db.mark_sent(&[id], round).await.expect("mark");
        assert_eq!(db.backlog().await.expect("backlog"), 0, "round {round}");
        assert_eq!(
            db.purge_sent(round + 1).await.expect("purge"),
            1,
            "round {round}"
        );
    }
    let cached: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements
         WHERE statement LIKE '%outbox_events%' AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
    .expect("prepared statements");
    assert!(
        cached.is_empty(),
        "relay statements cached with a plan for an empty outbox: {cached:#?}"
    );
}
