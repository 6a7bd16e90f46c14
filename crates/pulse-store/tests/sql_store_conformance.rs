//! The relational store suite against SQLite and against the real PostgreSQL.

use pulse_conformance::{services, Fixture};
use pulse_store::{CommitGate, Database, GroupCommitSettings, Sql, StoreOptions};

mod sqlite {
    use super::*;

    async fn sqlite() -> Fixture<Database> {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("pulse.db").display());
        let db = Database::connect(&url, &StoreOptions::default())
            .await
            .expect("open sqlite");
        db.migrate().await.expect("migrate");
        Fixture::with_guard(db, dir)
    }

    pulse_conformance::store_suite!(sqlite());
    pulse_conformance::outbox_suite!(sqlite());
    pulse_conformance::gateway_store_suite!(sqlite());
    pulse_conformance::job_queue_suite!(sqlite());
    pulse_conformance::ride_store_suite!(sqlite());
    pulse_conformance::ledger_suite!(sqlite());
    pulse_conformance::profile_suite!(sqlite());

    /// `kill -9` keeps the page cache, so only the settings SQLite reports show that a commit
    /// is fsynced: the writer's connection, which commits every unit of work, is in WAL mode
    /// with `synchronous = FULL`, and so is every pooled connection (several checked out at
    /// once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_is_in_wal_mode_with_synchronous_full() {
        let fixture = sqlite().await;
        let db = &fixture.port;
        let writer = db.sqlite_durability().await.expect("writer settings");
        assert_eq!(writer, Some(("wal".to_owned(), 2)), "WAL and FULL (2)");
        let pool = db.sqlite_pool().expect("a SQLite pool");
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut conn = pool.acquire().await.expect("connection");
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .expect("journal mode");
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .expect("synchronous");
            assert_eq!(
                (mode.to_ascii_lowercase(), synchronous),
                ("wal".to_owned(), 2)
            );
            held.push(conn);
        }
    }

    /// A batch that breaks half-way with its transaction still open — here a unit that
    /// releases the writer's own savepoint, which units must not do — fails its callers and is
    /// rolled back whole, and the writer goes on: the next unit commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_broken_half_way_is_rolled_back_and_the_writer_goes_on() {
        let fixture = sqlite().await;
        let db = &fixture.port;
        let insert = |user: &str| {
            Sql::new("INSERT INTO orders (id, user_id, status) VALUES ($1, $2, 'PENDING')")
                .bind(uuid::Uuid::now_v7())
                .bind(user.to_owned())
        };
        let rogue = insert("broken-half-way");
        let broken = db
            .write(move |mut tx| {
                Box::pin(async move {
                    tx.execute(&rogue).await?;
                    tx.execute(&Sql::new("RELEASE unit")).await
                })
            })
            .await;
        assert!(broken.is_err_and(|err| err.is_retryable()));
        db.execute(insert("after-the-break"))
            .await
            .expect("the writer goes on after a broken batch");
        let count = |user: &'static str| async move {
            db.fetch_optional(
                &Sql::new("SELECT COUNT(*) FROM orders WHERE user_id = $1").bind(user),
            )
            .await
            .expect("count")
            .expect("a row")
            .i64(0)
            .expect("count")
        };
        assert_eq!(
            count("broken-half-way").await,
            0,
            "the broken batch left nothing"
        );
        assert_eq!(count("after-the-break").await, 1);
    }

    /// A shared commit that fails (SQLite rolls it back after every unit's writes succeeded)
    /// answers each of its callers with a retryable error and leaves nothing: no caller hears
    /// "done" before the commit that holds its writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_shared_commit_answers_every_caller_with_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("pulse.db").display());
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = refuse.clone();
        let options = StoreOptions {
            group_commit: GroupCommitSettings {
                commit_gate: Some(CommitGate(std::sync::Arc::new(move || {
                    !gate.load(std::sync::atomic::Ordering::SeqCst)
                }))),
                ..GroupCommitSettings::default()
            },
            ..StoreOptions::default()
        };
        let db = Database::connect(&url, &options)
            .await
            .expect("open sqlite");
        db.migrate().await.expect("migrate");
        refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let insert = |n: usize| {
            Sql::new("INSERT INTO orders (id, user_id, status) VALUES ($1, $2, 'PENDING')")
                .bind(uuid::Uuid::now_v7())
                .bind(format!("gate-{n}"))
        };
        let outcomes = futures::future::join_all((0..8).map(|n| db.execute(insert(n)))).await;
        for outcome in &outcomes {
            assert!(
                outcome.as_ref().is_err_and(|err| err.is_retryable()),
                "{outcome:?}"
            );
        }
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        let count = db
            .fetch_optional(&Sql::new(
                "SELECT COUNT(*) FROM orders WHERE user_id LIKE 'gate-%'",
            ))
            .await
            .expect("count")
            .expect("a row")
            .i64(0)
            .expect("count");
        assert_eq!(count, 0, "nothing of a rolled-back commit");
        db.execute(insert(99)).await.expect("the writer works on");
    }
}

mod postgres {
    use super::*;

    async fn postgres() -> Fixture<Database> {
        let url = services::fresh_postgres_database().await;
        let db = Database::connect(&url, &StoreOptions::default())
            .await
            .unwrap_or_else(|err| services::missing("PostgreSQL", &url, err));
        db.migrate().await.expect("migrate");
        Fixture::new(db)
    }

    pulse_conformance::store_suite!(postgres());
    pulse_conformance::outbox_suite!(postgres());
    pulse_conformance::gateway_store_suite!(postgres());
    pulse_conformance::job_queue_suite!(postgres());
    pulse_conformance::ride_store_suite!(postgres());
    pulse_conformance::ledger_suite!(postgres());
    pulse_conformance::profile_suite!(postgres());
}

#[tokio::test]
async fn unknown_schemes_are_refused_with_the_expected_forms() {
    let err = Database::connect("mysql://localhost/db", &StoreOptions::default())
        .await
        .expect_err("mysql is not supported");
    assert!(
        err.to_string()
            .contains("expected postgres://… or sqlite://…"),
        "{err}"
    );
}
