//! The event log suite against the embedded log.

use pulse_conformance::Fixture;
use pulse_embedded_log::{EmbeddedLog, EmbeddedLogOptions};

async fn embedded() -> Fixture<EmbeddedLog> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), EmbeddedLogOptions::default())
        .await
        .expect("open embedded log");
    Fixture::with_guard(log, dir)
}

pulse_conformance::event_log_suite!(embedded());
