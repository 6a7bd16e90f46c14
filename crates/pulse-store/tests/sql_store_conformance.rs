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
