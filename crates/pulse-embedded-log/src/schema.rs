//! On-disk format of the embedded log: one SQLite database in WAL mode.

use bytes::Bytes;
use pulse_core::log::Header;
use pulse_core::{PortError, PortResult};
use sqlx::SqliteConnection;

/// Bumped whenever the tables below change incompatibly.
pub(crate) const FORMAT_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS topics (
    name        TEXT PRIMARY KEY,
    partitions  INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
);
-- next_offset lives here, not in MAX(offset), so retention never causes an offset to be reused.
CREATE TABLE IF NOT EXISTS partitions (
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic         TEXT NOT NULL,
    partition     INTEGER NOT NULL,
    "offset"      INTEGER NOT NULL,
    record_key    BLOB,
    payload       BLOB NOT NULL,
    headers       BLOB NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_time ON records (timestamp_ms);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    next_offset  INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"#;

/// Creates the tables when missing and refuses a database written by an incompatible version.
pub(crate) async fn ensure(conn: &mut SqliteConnection) -> PortResult<()> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(storage_error)?;
    if version != 0 && version != FORMAT_VERSION {
        return Err(PortError::Invalid(format!(
            "embedded log format {version} is not supported (this build reads format {FORMAT_VERSION})"
        )));
    }
    sqlx::raw_sql(SCHEMA)
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    sqlx::raw_sql(&format!("PRAGMA user_version = {FORMAT_VERSION}"))
        .execute(&mut *conn)
        .await
        .map_err(storage_error)?;
    Ok(())
}

pub(crate) const BACKEND: &str = "embedded-log";

pub(crate) fn storage_error(err: sqlx::Error) -> PortError {
    PortError::unavailable(BACKEND, err)
}

pub(crate) fn encode_headers(headers: &[Header]) -> Vec<u8> {
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|header| (header.name.as_str(), header.value.as_ref()))
        .collect();
    // Serialising borrowed strings and byte slices into a Vec cannot fail.
    postcard::to_allocvec(&pairs).unwrap_or_default()
}

pub(crate) fn decode_headers(raw: &[u8]) -> PortResult<Vec<Header>> {
    let pairs: Vec<(String, Vec<u8>)> = postcard::from_bytes(raw)
        .map_err(|err| PortError::Corrupt(format!("record headers: {err}")))?;
    Ok(pairs
        .into_iter()
        .map(|(name, value)| Header::new(name, Bytes::from(value)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_order_with_repeated_names() {
        let headers = vec![
            Header::new("traceparent", Bytes::from_static(b"00-abc-def-01")),
            Header::new("x", Bytes::new()),
            Header::new("x", Bytes::from_static(&[0, 255, 7])),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        assert_eq!(decode_headers(&encode_headers(&[])).unwrap(), vec![]);
    }

    #[test]
    fn garbage_headers_are_reported_as_corrupt() {
        assert!(matches!(
            decode_headers(&[0xff, 0xff, 0xff]),
            Err(PortError::Corrupt(_))
        ));
    }
}
