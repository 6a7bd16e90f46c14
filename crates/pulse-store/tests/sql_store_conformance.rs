//! The relational store suite against SQLite and against the real PostgreSQL.

use pulse_conformance::{services, Fixture};
use pulse_store::{Database, StoreOptions};

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

    /// `kill -9` keeps the page cache, so only the settings SQLite reports show that a commit
    /// is fsynced: every connection of the pool (several are checked out at once) is in WAL
    /// mode with `synchronous = FULL`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_is_in_wal_mode_with_synchronous_full() {
        let fixture = sqlite().await;
        let db = &fixture.port;
        let settings = futures::future::join_all((0..4).map(|_| db.sqlite_durability())).await;
        for reported in settings {
            let reported = reported.expect("durability settings");
            assert_eq!(reported, Some(("wal".to_owned(), 2)), "WAL and FULL (2)");
        }
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
