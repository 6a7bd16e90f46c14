//! `postgres_sink`: the store's `events_raw` (PostgreSQL, or SQLite on the embedded default).
//! One multi-row insert per batch, idempotent on `(tenant_id, event_id)`, so redeliveries and
//! replays leave one row.

use std::sync::Arc;

use async_trait::async_trait;
use pulse_gateway::envelope::CanonicalEvent;
use pulse_gateway::plugin::{PluginContext, PluginInfo, SinkOutcome, SinkPlugin};
use pulse_gateway::registry::{PluginConfigError, PluginRegistry};
use pulse_store::Database;
use serde::Deserialize;

/// The table the sink writes (part 1 archives into `events_raw` only; its columns are
/// documented in docs/GATEWAY.md).
pub const ARCHIVE_TABLE: &str = "events_raw";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_table")]
    table: String,
}

fn default_table() -> String {
    ARCHIVE_TABLE.to_owned()
}

/// Archives events in the store.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    store: Database,
}

impl PostgresSink {
    /// A sink into `store`'s `events_raw`.
    pub fn new(store: Database) -> Self {
        Self { store }
    }
}

pub(crate) fn register(registry: &mut PluginRegistry, store: Database) {
    registry.register_sink("postgres_sink", move |config| {
        let config: Config = PluginConfigError::parse(config)?;
        if config.table != ARCHIVE_TABLE {
            return Err(PluginConfigError::new(
                "table",
                format!(
                    "postgres_sink writes {ARCHIVE_TABLE} (other tables are not supported yet)"
                ),
            ));
        }
        Ok(Arc::new(PostgresSink::new(store.clone())))
    });
}

#[async_trait]
impl SinkPlugin for PostgresSink {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "postgres_sink",
            version: "1.0.0",
        }
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn send(&self, event: &CanonicalEvent, ctx: &PluginContext) -> SinkOutcome {
        self.send_batch(std::slice::from_ref(event), ctx)
            .await
            .pop()
            .unwrap_or(SinkOutcome::Ok)
    }

    async fn send_batch(&self, events: &[CanonicalEvent], ctx: &PluginContext) -> Vec<SinkOutcome> {
        let outcome = match self
            .store
            .archive_events(events, &ctx.versions_json())
            .await
        {
            Ok(_) => SinkOutcome::Ok,
            Err(err) if err.is_retryable() => SinkOutcome::Retry {
                reason: err.to_string(),
            },
            // A constraint or a refused value is this batch's fault, but which event's is not
            // known: retry them (one by one, after a backoff) rather than dead-letter a batch.
            Err(err) => SinkOutcome::Retry {
                reason: err.to_string(),
            },
        };
        vec![outcome; events.len()]
    }
}
