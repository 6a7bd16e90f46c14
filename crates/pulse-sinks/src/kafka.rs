//! `kafka_sink`: the log (Kafka, or the embedded log on the embedded default). Each event is
//! appended as its canonical protobuf envelope, keyed as on `events.ingest`, with
//! `pulse.event_id`, `pulse.tenant` and the plugin versions in headers, so a consumer can drop
//! repeats of an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_core::tenant::TENANT_HEADER;
use pulse_gateway::envelope::CanonicalEvent;
use pulse_gateway::ingest::EVENT_ID_HEADER;
use pulse_gateway::plugin::{PluginContext, PluginInfo, SinkOutcome, SinkPlugin};
use pulse_gateway::registry::{PluginConfigError, PluginRegistry};
use serde::Deserialize;

/// Header with the versions of the plugins that touched the event (JSON).
pub const PLUGINS_HEADER: &str = "pulse.plugins";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    topic: String,
}

/// Appends events to a topic of the log.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    log: Arc<dyn EventLog>,
    topic: String,
    created: Arc<AtomicBool>,
}

impl KafkaSink {
    /// A sink appending to `topic` (the full name) of `log`.
    pub fn new(log: Arc<dyn EventLog>, topic: String) -> Self {
        Self {
            log,
            topic,
            created: Arc::default(),
        }
    }
}

/// Kafka's own rule for topic names, minus names Pulse uses for itself.
fn check_topic(topic: &str) -> Result<(), PluginConfigError> {
    let valid = !topic.is_empty()
        && topic.len() <= 200
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !valid {
        return Err(PluginConfigError::new(
            "topic",
            "a topic is 1 to 200 of a-z, A-Z, 0-9, '.', '_' or '-'",
        ));
    }
    let internal = [
        "demand.",
        "supply.",
        "events.",
        "pulse.",
        "rides.",
        "wallet.",
        "profiles.",
    ];
    if internal.iter().any(|prefix| topic.starts_with(prefix)) {
        return Err(PluginConfigError::new(
            "topic",
            format!("{topic:?} is in a namespace Pulse's own topics use; pick another name"),
        ));
    }
    Ok(())
}

pub(crate) fn register(registry: &mut PluginRegistry, log: Arc<dyn EventLog>, prefix: String) {
    registry.register_sink("kafka_sink", move |config| {
        let config: Config = PluginConfigError::parse(config)?;
        check_topic(&config.topic)?;
        Ok(Arc::new(KafkaSink::new(
            log.clone(),
            format!("{prefix}{}", config.topic),
        )))
    });
}

#[async_trait]
impl SinkPlugin for KafkaSink {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "kafka_sink",
            version: "1.0.0",
        }
    }

    async fn send(&self, event: &CanonicalEvent, ctx: &PluginContext) -> SinkOutcome {
        self.send_batch(std::slice::from_ref(event), ctx)
            .await
            .pop()
            .unwrap_or(SinkOutcome::Ok)
    }

    async fn send_batch(&self, events: &[CanonicalEvent], ctx: &PluginContext) -> Vec<SinkOutcome> {
        let versions = ctx.versions_json();
        let records: Vec<OutgoingRecord> = events
            .iter()
            .map(|event| {
                let mut record = OutgoingRecord::keyed(
                    CanonicalEvent::partition_key(&event.tenant, &event.identity()),
                    Bytes::from(event.encode()),
                )
                .with_header(EVENT_ID_HEADER, event.event_id.clone())
                .with_header(PLUGINS_HEADER, versions.clone());
                if !event.tenant.is_default() {
                    record = record.with_header(TENANT_HEADER, event.tenant.as_str().to_owned());
                }
                record
            })
            .collect();
        // The topic is the tenant's to name: make sure it exists (creating an existing topic is
        // a no-op), then append.
        let created = if self.created.load(Ordering::Relaxed) {
            Ok(())
        } else {
            self.log.create_topic(&self.topic, 1).await.inspect(|()| {
                self.created.store(true, Ordering::Relaxed);
            })
        };
        let appended = match created {
            Ok(()) => self.log.append(&self.topic, records).await.map(|_| ()),
            Err(err) => Err(err),
        };
        let outcome = match appended {
            Ok(()) => SinkOutcome::Ok,
            Err(err) if err.is_retryable() => SinkOutcome::Retry {
                reason: err.to_string(),
            },
            Err(err) => SinkOutcome::Error {
                reason: err.to_string(),
            },
        };
        vec![outcome; events.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::check_topic;

    #[test]
    fn topics_follow_kafkas_rule_and_stay_out_of_pulses_namespaces() {
        assert!(check_topic("analytics_events").is_ok());
        assert!(check_topic("").is_err());
        assert!(check_topic("has space").is_err());
        assert!(check_topic("events.ingest").is_err());
        assert!(check_topic("pulse.dead-letter").is_err());
    }
}
