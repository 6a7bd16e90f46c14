//! Taking events in: ids, exact per-tenant dedup, one durable append to `events.ingest`.
//!
//! Order of the steps (ADR 0007): look the dedup keys up; append the new events to the log
//! (the answer waits for it: embedded log commit or Kafka `acks=all`); only then record their
//! keys. A failed append records nothing, so the client's retry goes through; a failed record
//! after a good append loses nothing either (the event is on the log, and the sinks are
//! idempotent on `(tenant, event_id)`, so a retry that appends it again reaches no sink twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::log::{EventLog, OutgoingRecord, TopicSpec};
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::{PortResult, TenantId};
use pulse_trace::TraceContext;
use uuid::Uuid;

use crate::envelope::{CanonicalEvent, Source};
use crate::ingress::{IncomingEvent, IngestLimits, IngressError};
use crate::ports::{DedupEntry, DedupStore};

/// The topic every accepted event is appended to.
pub const INGEST: TopicSpec = TopicSpec {
    name: "events.ingest",
    carries: "pulse.v1.CanonicalEvent, as accepted by the gateway (key: tenant + identity)",
};

/// Header naming the event id on `events.ingest` / `events.processed` / a Kafka sink.
pub const EVENT_ID_HEADER: &str = "pulse.event_id";

/// Events taken in, by tenant and outcome (`accepted`, `duplicate`, `rejected`).
pub const INGEST_EVENTS_TOTAL: &str = "pulse_ingest_events_total";
/// Dedup keys that could not be recorded after a good append (the event is safe; a retry of it
/// reaches the log again, and the sinks once).
pub const DEDUP_RECORD_FAILURES_TOTAL: &str = "pulse_ingest_dedup_record_failures_total";

/// The namespace of event ids derived from idempotency keys (UUIDv5 of `tenant NUL key`).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_5d1c_8e3a_4c7b_9a0e_2f4d_8c6b_1a3e);

/// Dedup lookups that failed; the events were taken all the same.
pub const DEDUP_LOOKUP_FAILURES_TOTAL: &str = "pulse_ingest_dedup_lookup_failures_total";

/// How the door behaves.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `events.ingest` behind the deployment's prefix.
    pub topic: String,
    /// How long an event id or idempotency key is remembered.
    pub dedup_window: Duration,
    /// Sizes and ranges.
    pub limits: IngestLimits,
}

/// What the door answered for one accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its id (the original one, for a duplicate).
    pub event_id: String,
    /// When it was received (the original time, for a duplicate).
    pub received_at_ms: i64,
    /// Whether it repeats an event taken within the dedup window.
    pub duplicate: bool,
}

/// The ingest side of the gateway.
#[derive(Debug, Clone)]
pub struct IngestService {
    log: Arc<dyn EventLog>,
    dedup: Arc<dyn DedupStore>,
    clock: SharedClock,
    settings: Arc<IngestSettings>,
}

/// The event id of an event whose client gave only an idempotency key: the same key of the
/// same tenant always gives the same id, on every gateway process.
pub fn event_id_for_key(tenant: &TenantId, key: &str) -> String {
    let mut name = Vec::with_capacity(tenant.as_str().len() + 1 + key.len());
    name.extend_from_slice(tenant.as_str().as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name).to_string()
}

/// The dedup keys an event takes.
fn dedup_keys(event: &CanonicalEvent, client_id: bool) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(key) = &event.idempotency_key {
        keys.push(format!("k:{key}"));
    }
    if client_id {
        keys.push(format!("e:{}", event.event_id));
    }
    keys
}

struct Prepared {
    event: CanonicalEvent,
    identity: String,
    keys: Vec<String>,
}

impl IngestService {
    /// The door on `log`, remembering keys in `dedup`.
    pub fn new(
        log: Arc<dyn EventLog>,
        dedup: Arc<dyn DedupStore>,
        clock: SharedClock,
        settings: IngestSettings,
    ) -> Self {
        Self {
            log,
            dedup,
            clock,
            settings: Arc::new(settings),
        }
    }

    /// The limits the adapters check bodies against.
    pub fn limits(&self) -> &IngestLimits {
        &self.settings.limits
    }

    /// Now, as the door stamps `received_at`.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Takes `events` of `tenant` (each already read by an adapter, or refused by it): one
    /// answer each, in order. `Err` only when the log is away: then nothing was acknowledged
    /// and the client retries the whole call.
    pub async fn ingest(
        &self,
        tenant: &TenantId,
        events: Vec<Result<IncomingEvent, IngressError>>,
        received_at_ms: i64,
        source: Source,
        trace: Option<&TraceContext>,
    ) -> PortResult<Vec<Result<Accepted, IngressError>>> {
        let trace_id = trace.map(|trace| trace.trace_id().to_owned());
        let mut answers: Vec<Option<Result<Accepted, IngressError>>> =
            Vec::with_capacity(events.len());
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            match event {
                Ok(incoming) => {
                    prepared.push((
                        index,
                        self.prepare(tenant, incoming, received_at_ms, source, trace_id.clone())?,
                    ));
                    answers.push(None);
                }
                Err(refused) => answers.push(Some(Err(refused))),
            }
        }
        let keys: Vec<String> = prepared
            .iter()
            .flat_map(|(_, prepared)| prepared.keys.iter().cloned())
            .collect();
        let mut taken = if keys.is_empty() {
            HashMap::new()
        } else {
            // Without its answer the event is still taken: the sinks are idempotent, so a
            // repeat costs a second append, never a second delivery. The door stays open
            // while only the store is away.
            match self.dedup.recorded(tenant, &keys, received_at_ms).await {
                Ok(taken) => taken,
                Err(err) => {
                    metrics::counter!(DEDUP_LOOKUP_FAILURES_TOTAL).increment(1);
                    tracing::warn!(%tenant, error = %err, "dedup keys not looked up; taking the events (the sinks drop repeats)");
                    HashMap::new()
                }
            }
        };
        let mut records = Vec::new();
        let mut entries = Vec::new();
        let expires_at_ms = received_at_ms.saturating_add(
            i64::try_from(self.settings.dedup_window.as_millis()).unwrap_or(i64::MAX),
        );
        for (index, prepared) in prepared {
            // A key taken earlier, or earlier in this very call.
            if let Some(first) = prepared.keys.iter().find_map(|key| taken.get(key)) {
                answers[index] = Some(Ok(Accepted {
                    event_id: first.event_id.clone(),
                    received_at_ms: first.received_at_ms,
                    duplicate: true,
                }));
                continue;
            }
            for key in &prepared.keys {
                taken.insert(
                    key.clone(),
                    crate::ports::Recorded {
                        event_id: prepared.event.event_id.clone(),
                        received_at_ms,
                    },
                );
                entries.push(DedupEntry {
                    key: key.clone(),
                    event_id: prepared.event.event_id.clone(),
                    received_at_ms,
                    expires_at_ms,
                });
            }
            records.push(record_of(&prepared, trace));
            answers[index] = Some(Ok(Accepted {
                event_id: prepared.event.event_id,
                received_at_ms,
                duplicate: false,
            }));
        }
        let appended = records.len() as u64;
        if !records.is_empty() {
            self.log.append(&self.settings.topic, records).await?;
        }
        if !entries.is_empty() {
            if let Err(err) = self.dedup.record(tenant, &entries).await {
                metrics::counter!(DEDUP_RECORD_FAILURES_TOTAL).increment(entries.len() as u64);
                tracing::warn!(%tenant, error = %err, "events are on the log but their dedup keys were not recorded; a retry reaches the sinks once all the same");
            }
        }
        let answers: Vec<Result<Accepted, IngressError>> = answers
            .into_iter()
            .map(|answer| answer.expect("every event answered"))
            .collect();
        let duplicates = answers
            .iter()
            .filter(|answer| {
                matches!(
                    answer,
                    Ok(Accepted {
                        duplicate: true,
                        ..
                    })
                )
            })
            .count() as u64;
        let rejected = answers.iter().filter(|answer| answer.is_err()).count() as u64;
        let tenant_label = tenant.to_string();
        for (outcome, count) in [
            ("accepted", appended),
            ("duplicate", duplicates),
            ("rejected", rejected),
        ] {
            if count > 0 {
                metrics::counter!(INGEST_EVENTS_TOTAL, "tenant" => tenant_label.clone(), "outcome" => outcome)
                    .increment(count);
            }
        }
        Ok(answers)
    }

    fn prepare(
        &self,
        tenant: &TenantId,
        incoming: IncomingEvent,
        received_at_ms: i64,
        source: Source,
        trace_id: Option<String>,
    ) -> PortResult<Prepared> {
        let client_id = incoming.event_id.is_some();
        let event_id = match (&incoming.event_id, &incoming.idempotency_key) {
            (Some(id), _) => id.clone(),
            (None, Some(key)) => event_id_for_key(tenant, key),
            (None, None) => Uuid::now_v7().to_string(),
        };
        let payload = serde_json::to_vec(&incoming.payload)
            .map_err(|err| pulse_core::PortError::Invalid(format!("payload: {err}")))?;
        let identity = incoming
            .identity
            .clone()
            .unwrap_or_else(|| event_id.clone());
        let event = CanonicalEvent {
            event_id,
            tenant: tenant.clone(),
            event_type: incoming.event_type,
            occurred_at_ms: incoming.occurred_at_ms.unwrap_or(received_at_ms),
            received_at_ms,
            payload: Bytes::from(payload),
            source,
            trace_id,
            idempotency_key: incoming.idempotency_key,
        };
        let keys = dedup_keys(&event, client_id);
        Ok(Prepared {
            event,
            identity,
            keys,
        })
    }
}

fn record_of(prepared: &Prepared, trace: Option<&TraceContext>) -> OutgoingRecord {
    let event = &prepared.event;
    let mut record = OutgoingRecord::keyed(
        CanonicalEvent::partition_key(&event.tenant, &prepared.identity),
        event.encode(),
    )
    .with_header(
        EVENT_ID_HEADER,
        Bytes::from(event.event_id.clone().into_bytes()),
    );
    if !event.tenant.is_default() {
        record = record.with_header(
            TENANT_HEADER,
            Bytes::from(event.tenant.as_str().to_owned().into_bytes()),
        );
    }
    if let Some(trace) = trace {
        for (name, value) in trace.headers() {
            record = record.with_header(name, Bytes::from(value.to_owned().into_bytes()));
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_gives_one_event_id_per_tenant() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        assert_eq!(event_id_for_key(&acme, "k1"), event_id_for_key(&acme, "k1"));
        assert_ne!(event_id_for_key(&acme, "k1"), event_id_for_key(&acme, "k2"));
        assert_ne!(
            event_id_for_key(&acme, "k1"),
            event_id_for_key(&other, "k1")
        );
    }
}
