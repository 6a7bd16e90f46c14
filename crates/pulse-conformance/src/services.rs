//! Where the real services are, for tests.
//!
//! `scripts/services up` starts PostgreSQL, Kafka and Redis on fixed loopback ports and
//! `scripts/services env` exports their URLs. Tests read the same variables and fall back to those
//! ports, so `cargo test` works once the services are up. A test that needs a service that does not
//! answer *fails* with instructions — it never passes silently.

/// Variable holding the PostgreSQL URL for tests.
pub const POSTGRES_VAR: &str = "PULSE_TEST_POSTGRES_URL";
/// Variable holding the Kafka URL for tests.
pub const KAFKA_VAR: &str = "PULSE_TEST_KAFKA_URL";
/// Variable holding the Redis URL for tests.
pub const REDIS_VAR: &str = "PULSE_TEST_REDIS_URL";

const POSTGRES_DEFAULT: &str = "postgres://pulse:pulse@127.0.0.1:55432/pulse";
const KAFKA_DEFAULT: &str = "kafka://127.0.0.1:59092";
const REDIS_DEFAULT: &str = "redis://127.0.0.1:56379";

fn url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The PostgreSQL server URL (admin database).
pub fn postgres_url() -> String {
    url(POSTGRES_VAR, POSTGRES_DEFAULT)
}

/// The Kafka URL (`kafka://host:port[,host:port]`).
pub fn kafka_url() -> String {
    url(KAFKA_VAR, KAFKA_DEFAULT)
}

/// The Redis URL.
pub fn redis_url() -> String {
    url(REDIS_VAR, REDIS_DEFAULT)
}

/// Panics with instructions: used when a real service does not answer.
pub fn missing(service: &str, url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "this test needs {service} at {url}, which did not answer ({error}).\n\
         Start the test services with `scripts/services up` (or run the whole suite with \
         `scripts/test`)."
    )
}

/// Creates a fresh, empty PostgreSQL database for one test and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin_url = postgres_url();
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(conn) => conn,
        Err(err) => missing("PostgreSQL", &admin_url, err),
    };
    // Named after the test run (`scripts/test` drops the run's databases when it ends).
    let run = std::env::var("PULSE_TEST_RUN")
        .ok()
        .filter(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|run| run.to_ascii_lowercase())
        .unwrap_or_else(|| "adhoc".to_owned());
    let name = crate::unique_name(&format!("pulse_test_{run}")).replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{POSTGRES_VAR} must end with /<database>: {admin_url}"),
    }
}
