//! The canonical envelope every event becomes at the door (seed 003's `CanonicalEvent`), its
//! wire form on the log (protobuf `pulse.v1.CanonicalEvent`, payload as JSON bytes) and its JSON
//! form (what a webhook receives and the API shows).

use bytes::Bytes;
use pulse_core::TenantId;
use pulse_proto::{v1, Message};
use serde::Serialize;

use crate::time::rfc3339;

/// Which adapter took the event in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `POST /v1/events` and the Segment-compatible routes.
    Http,
    /// gRPC ingress (later).
    Grpc,
    /// Kafka ingress (later).
    Kafka,
}

impl Source {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Grpc => "grpc",
            Source::Kafka => "kafka",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "http" => Some(Source::Http),
            "grpc" => Some(Source::Grpc),
            "kafka" => Some(Source::Kafka),
            _ => None,
        }
    }
}

/// One event, as the core sees it whatever door it came through.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalEvent {
    /// Unique per tenant: the client's, derived from its idempotency key, or a UUIDv7.
    pub event_id: String,
    /// Whose event: always the API key's tenant.
    pub tenant: TenantId,
    /// What happened (`user_sign_up`, or a Segment call type such as `track`).
    pub event_type: String,
    /// When it happened, Unix milliseconds (clock-skew corrected for Segment calls).
    pub occurred_at_ms: i64,
    /// When the gateway took it, Unix milliseconds.
    pub received_at_ms: i64,
    /// A JSON object, as received (serialised once, never re-encoded through floats).
    pub payload: Bytes,
    /// Which adapter took it in.
    pub source: Source,
    /// The W3C trace id of the ingest request, when it had one.
    pub trace_id: Option<String>,
    /// The client's idempotency key, when it gave one.
    pub idempotency_key: Option<String>,
}

/// Why bytes on the log are no canonical event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the protobuf message.
    #[error("not a pulse.v1.CanonicalEvent: {0}")]
    Protobuf(#[from] pulse_proto::DecodeError),
    /// A field outside its contract.
    #[error("canonical event field {field}: {message}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl CanonicalEvent {
    /// The protobuf bytes written to the log.
    pub fn encode(&self) -> Vec<u8> {
        v1::CanonicalEvent {
            event_id: self.event_id.clone(),
            tenant_id: self.tenant.as_str().to_owned(),
            event_type: self.event_type.clone(),
            occurred_at: self.occurred_at_ms,
            received_at: self.received_at_ms,
            payload: self.payload.to_vec(),
            source: self.source.as_str().to_owned(),
            trace_id: self.trace_id.clone().unwrap_or_default(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
        }
        .encode_to_vec()
    }

    /// Reads an event written by [`CanonicalEvent::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire = v1::CanonicalEvent::decode(bytes)?;
        let field = |field, message: String| DecodeError::Field { field, message };
        let tenant =
            TenantId::parse(&wire.tenant_id).map_err(|err| field("tenant_id", err.to_string()))?;
        if wire.event_id.is_empty() {
            return Err(field("event_id", "empty".into()));
        }
        if wire.event_type.is_empty() {
            return Err(field("event_type", "empty".into()));
        }
        let source =
            Source::parse(&wire.source).ok_or_else(|| field("source", wire.source.clone()))?;
        // The payload must stay a JSON object: sinks and the profiles domain rely on it.
        // Checked without building it (this runs for every record the pipeline reads).
        let is_object = serde_json::from_slice::<&serde_json::value::RawValue>(&wire.payload)
            .is_ok_and(|raw| raw.get().starts_with('{'));
        if !is_object {
            return Err(field("payload", "not a JSON object".into()));
        }
        let non_empty = |text: String| (!text.is_empty()).then_some(text);
        Ok(Self {
            event_id: wire.event_id,
            tenant,
            event_type: wire.event_type,
            occurred_at_ms: wire.occurred_at,
            received_at_ms: wire.received_at,
            payload: Bytes::from(wire.payload),
            source,
            trace_id: non_empty(wire.trace_id),
            idempotency_key: non_empty(wire.idempotency_key),
        })
    }

    /// The partition key on `events.ingest`: the tenant, a NUL, and the event's `identity`
    /// (its person: `userId`, else `anonymousId`, else the event id), so one person's events
    /// keep their order.
    pub fn partition_key(tenant: &TenantId, identity: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(tenant.as_str().len() + 1 + identity.len());
        key.extend_from_slice(tenant.as_str().as_bytes());
        key.push(0);
        key.extend_from_slice(identity.as_bytes());
        key
    }

    /// The person the event is about, for its partition key: see [`identity_in`]; the event
    /// id when it names none.
    pub fn identity(&self) -> String {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&self.payload)
            .ok()
            .and_then(|payload| identity_in(&payload))
            .unwrap_or_else(|| self.event_id.clone())
    }

    /// The JSON form: the seed's field names, times in RFC 3339 UTC, the payload inline.
    pub fn to_json(&self) -> serde_json::Value {
        let payload: serde_json::Value =
            serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "event_id": self.event_id,
            "tenant_id": self.tenant.as_str(),
            "event_type": self.event_type,
            "occurred_at": rfc3339(self.occurred_at_ms),
            "received_at": rfc3339(self.received_at_ms),
            "payload": payload,
            "source": self.source.as_str(),
            "trace_id": self.trace_id,
            "idempotency_key": self.idempotency_key,
        })
    }
}

/// The person a payload is about: `userId` (or the flat body's `user_id`), else `anonymousId`
/// (`anonymous_id`); a non-empty string, or a number as Segment allows.
pub fn identity_in(payload: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let first = |fields: [&str; 2]| {
        fields.iter().find_map(|field| match payload.get(*field) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text.clone()),
            Some(serde_json::Value::Number(number)) => Some(number.to_string()),
            _ => None,
        })
    };
    first(["userId", "user_id"]).or_else(|| first(["anonymousId", "anonymous_id"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CanonicalEvent {
        CanonicalEvent {
            event_id: "e-1".into(),
            tenant: TenantId::parse("acme").unwrap(),
            event_type: "user_sign_up".into(),
            occurred_at_ms: 1_740_830_400_000,
            received_at_ms: 1_740_830_400_250,
            payload: Bytes::from_static(br#"{"user_id":"u_123","big":9007199254740993}"#),
            source: Source::Http,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            idempotency_key: None,
        }
    }

    #[test]
    fn the_envelope_round_trips_and_keeps_int64_precision() {
        let original = event();
        let decoded = CanonicalEvent::decode(&original.encode()).unwrap();
        assert_eq!(decoded, original);
        let json = decoded.to_json();
        assert_eq!(json["payload"]["big"].as_u64(), Some(9_007_199_254_740_993));
        assert_eq!(json["occurred_at"], "2025-03-01T12:00:00.000Z");
    }

    #[test]
    fn bytes_outside_the_contract_do_not_decode() {
        assert!(CanonicalEvent::decode(&[0xff, 0xff]).is_err());
        let mut bad = event();
        bad.payload = Bytes::from_static(b"[1,2]");
        assert!(matches!(
            CanonicalEvent::decode(&bad.encode()),
            Err(DecodeError::Field {
                field: "payload",
                ..
            })
        ));
    }

    #[test]
    fn one_persons_events_share_a_key_and_tenants_never_do() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("acm").unwrap();
        assert_eq!(
            CanonicalEvent::partition_key(&acme, "u1"),
            CanonicalEvent::partition_key(&acme, "u1")
        );
        assert_ne!(
            CanonicalEvent::partition_key(&acme, "u1"),
            CanonicalEvent::partition_key(&other, "eu1")
        );
    }
}
