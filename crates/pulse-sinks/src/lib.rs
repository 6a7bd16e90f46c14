//! The event gateway's sinks that do I/O, and the one function that registers them.
//!
//! * `postgres_sink` {table}: the store's `events_raw` (PostgreSQL, or SQLite on the embedded
//!   default), one multi-row insert per batch, idempotent on `(tenant_id, event_id)`;
//! * `kafka_sink` {topic}: the log (Kafka, or the embedded log), `pulse.event_id` in a header;
//! * `webhook_sink` {url, secret, headers, timeout_ms}: outbound HTTP, signed (see
//!   `docs/WEBHOOKS.md`), loopback, private and link-local targets refused unless allowed.

mod kafka;
mod postgres;
mod webhook;

use std::sync::Arc;

use pulse_core::log::EventLog;
use pulse_gateway::registry::PluginRegistry;
use pulse_store::Database;

pub use kafka::{KafkaSink, PLUGINS_HEADER};
pub use postgres::{PostgresSink, ARCHIVE_TABLE};
pub use webhook::{signature, WebhookSettings, WebhookSink};

/// What the sinks reach.
#[derive(Debug, Clone)]
pub struct SinkDeps {
    /// The store (`postgres_sink`).
    pub store: Database,
    /// The log (`kafka_sink`).
    pub log: Arc<dyn EventLog>,
    /// The deployment's topic prefix (`kafka_sink` topics are named under it).
    pub prefix: String,
    /// Outbound HTTP policy (`webhook_sink`).
    pub webhooks: WebhookSettings,
}

/// Registers every sink of this crate in `registry`.
pub fn register(registry: &mut PluginRegistry, deps: SinkDeps) {
    postgres::register(registry, deps.store.clone());
    kafka::register(registry, deps.log.clone(), deps.prefix.clone());
    webhook::register(registry, deps.webhooks.clone());
}
