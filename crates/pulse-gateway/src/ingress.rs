//! From what a client sent to an [`IncomingEvent`]: the seed's flat `POST /v1/events` body and
//! the Segment calls, each checked against the [`IngestLimits`]. Pure functions: the HTTP adapter
//! calls them, and a later gRPC or Kafka adapter reuses them.
//!
//! The Segment mapping is fixed (the profiles domain reads it): `event_type` is the call type,
//! `payload` the message as received minus `writeKey`, `messageId` the event id, and the time
//! `timestamp` corrected for the client's clock skew with `sentAt` as Segment does:
//! `occurred_at = received_at - (sentAt - timestamp)`.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::identity_in;
use crate::time::parse_rfc3339;

/// What the door accepts. Defaults are Segment's where Segment has one.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    /// Largest event, as JSON bytes (Segment: 32 KB).
    pub max_event_bytes: usize,
    /// Largest batch body, as JSON bytes after gzip (Segment: 500 KB).
    pub max_batch_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Longest `event_type` (and Segment `event` name), in characters.
    pub max_event_type_chars: usize,
    /// Longest `event_id` / `messageId` / idempotency key, in characters.
    pub max_id_chars: usize,
    /// How far in the future an event's time may be, in seconds (clocks drift; a day is lenient).
    pub max_future_secs: u64,
    /// How far in the past, in days (backfills of old events are welcome; decades are a bug).
    pub max_past_days: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2_000,
            max_event_type_chars: 128,
            max_id_chars: 128,
            max_future_secs: 24 * 3600,
            max_past_days: 3_650,
        }
    }
}

impl IngestLimits {
    fn max_future(&self) -> Duration {
        Duration::from_secs(self.max_future_secs)
    }

    fn max_past(&self) -> Duration {
        Duration::from_secs(self.max_past_days.saturating_mul(86_400))
    }
}

/// Why an event (or a batch) is refused: a stable code and a message naming the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IngressError {
    /// `invalid_event`, `event_too_large`, `batch_too_large`, `too_many_events`,
    /// `invalid_event_type`, `invalid_event_id`, `timestamp_out_of_range`, `field_reserved`.
    pub code: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl IngressError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_event", message)
    }
}

/// An event as an adapter read it, before it gets its id and its tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// What happened.
    pub event_type: String,
    /// The client's event id (`event_id`, Segment's `messageId`).
    pub event_id: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// When it happened (corrected), Unix milliseconds; `None` = when received.
    pub occurred_at_ms: Option<i64>,
    /// The payload object.
    pub payload: Map<String, Value>,
    /// The person it is about (`userId`, else `anonymousId`), for the partition key.
    pub identity: Option<String>,
}

/// The envelope fields of the flat body: they never go into `payload`.
const NATIVE_ENVELOPE: [&str; 5] = [
    "event_type",
    "event_id",
    "occurred_at",
    "timestamp",
    "idempotency_key",
];
/// Envelope fields only the gateway sets.
const GATEWAY_SET: [&str; 4] = ["tenant_id", "received_at", "source", "trace_id"];

/// Checks the size of one event's JSON text.
pub fn check_event_size(bytes: usize, limits: &IngestLimits) -> Result<(), IngressError> {
    if bytes > limits.max_event_bytes {
        return Err(IngressError::new(
            "event_too_large",
            format!(
                "an event may be at most {} bytes of JSON; this one is {bytes}",
                limits.max_event_bytes
            ),
        ));
    }
    Ok(())
}

/// Checks a batch's body size and event count.
pub fn check_batch(bytes: usize, events: usize, limits: &IngestLimits) -> Result<(), IngressError> {
    if bytes > limits.max_batch_bytes {
        return Err(IngressError::new(
            "batch_too_large",
            format!(
                "a batch may be at most {} bytes of JSON; this one is {bytes}",
                limits.max_batch_bytes
            ),
        ));
    }
    if events > limits.max_batch_events {
        return Err(IngressError::new(
            "too_many_events",
            format!(
                "a batch may hold at most {} events; this one has {events}",
                limits.max_batch_events
            ),
        ));
    }
    if events == 0 {
        return Err(IngressError::new(
            "invalid_event",
            "a batch needs at least one event",
        ));
    }
    Ok(())
}

/// The seed's flat body: `event_type` and the optional envelope fields at the top, everything
/// else the payload (or, instead, one `payload` object).
pub fn native_event(
    mut body: Map<String, Value>,
    received_at_ms: i64,
    limits: &IngestLimits,
) -> Result<IncomingEvent, IngressError> {
    if let Some(field) = GATEWAY_SET.iter().find(|field| body.contains_key(**field)) {
        return Err(IngressError::new(
            "field_reserved",
            format!("{field} is set by the gateway (the tenant comes from the API key)"),
        ));
    }
    let event_type = match body.remove("event_type") {
        Some(Value::String(text)) => text,
        Some(_) => return Err(IngressError::invalid("event_type must be a string")),
        None => return Err(IngressError::invalid("event_type is required")),
    };
    check_event_type(&event_type, "event_type", limits)?;
    let event_id = optional_id(&mut body, "event_id", limits)?;
    let idempotency_key = optional_id(&mut body, "idempotency_key", limits)?;
    let occurred = match (body.remove("occurred_at"), body.remove("timestamp")) {
        (Some(_), Some(_)) => {
            return Err(IngressError::invalid(
                "give occurred_at or timestamp, not both",
            ))
        }
        (Some(value), None) => Some(event_time(&value, "occurred_at")?),
        (None, Some(value)) => Some(event_time(&value, "timestamp")?),
        (None, None) => None,
    };
    if let Some(at) = occurred {
        check_time_range(at, received_at_ms, limits)?;
    }
    debug_assert!(NATIVE_ENVELOPE
        .iter()
        .all(|field| !body.contains_key(*field)));
    let payload = match body.remove("payload") {
        None => body,
        Some(Value::Object(payload)) if body.is_empty() => payload,
        Some(Value::Object(_)) => {
            return Err(IngressError::invalid(
                "send either a payload object or flat fields beside event_type, not both",
            ))
        }
        Some(_) => return Err(IngressError::invalid("payload must be an object")),
    };
    let identity = identity_in(&payload);
    Ok(IncomingEvent {
        event_type,
        event_id,
        idempotency_key,
        occurred_at_ms: occurred,
        payload,
        identity,
    })
}

/// A Segment call type, as named in its route and in a batch item's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentCall {
    /// `track`: an action, with `event` and `properties`.
    Track,
    /// `identify`: who the user is, with `traits`.
    Identify,
    /// `page`: a web page view.
    Page,
    /// `screen`: a mobile screen view.
    Screen,
    /// `group`: the user belongs to `groupId`.
    Group,
    /// `alias`: `previousId` is `userId`.
    Alias,
}

impl SegmentCall {
    /// Every call type.
    pub const ALL: [SegmentCall; 6] = [
        SegmentCall::Track,
        SegmentCall::Identify,
        SegmentCall::Page,
        SegmentCall::Screen,
        SegmentCall::Group,
        SegmentCall::Alias,
    ];

    /// Its name: the route, the `type` field and the canonical `event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentCall::Track => "track",
            SegmentCall::Identify => "identify",
            SegmentCall::Page => "page",
            SegmentCall::Screen => "screen",
            SegmentCall::Group => "group",
            SegmentCall::Alias => "alias",
        }
    }

    /// The call named `raw`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|call| call.as_str() == raw)
    }
}

/// One Segment message: from its route (`call`), or a batch item naming its `type`.
pub fn segment_event(
    call: Option<SegmentCall>,
    mut message: Map<String, Value>,
    received_at_ms: i64,
    limits: &IngestLimits,
) -> Result<IncomingEvent, IngressError> {
    message.remove("writeKey");
    let call = match (call, message.get("type")) {
        (Some(call), _) => call,
        (None, Some(Value::String(name))) => SegmentCall::parse(name).ok_or_else(|| {
            IngressError::invalid(format!(
                "type {name:?} is no Segment call (track, identify, page, screen, group, alias)"
            ))
        })?,
        (None, _) => {
            return Err(IngressError::invalid(
                "a batch item needs a type (track, identify, page, screen, group, alias)",
            ))
        }
    };
    let identity = identity_in(&message);
    if identity.is_none() {
        return Err(IngressError::invalid(format!(
            "a {} call needs a userId or an anonymousId",
            call.as_str()
        )));
    }
    match call {
        SegmentCall::Track => match message.get("event") {
            Some(Value::String(name)) => check_event_type(name, "event", limits)?,
            _ => return Err(IngressError::invalid("a track call needs an event name")),
        },
        SegmentCall::Group
            if !matches!(
                message.get("groupId"),
                Some(Value::String(_) | Value::Number(_))
            ) =>
        {
            return Err(IngressError::invalid("a group call needs a groupId"))
        }
        SegmentCall::Alias
            if !matches!(
                message.get("previousId"),
                Some(Value::String(_) | Value::Number(_))
            ) =>
        {
            return Err(IngressError::invalid("an alias call needs a previousId"))
        }
        _ => {}
    }
    let event_id = match message.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(checked_id(id, "messageId", limits)?),
        Some(_) => return Err(IngressError::invalid("messageId must be a string")),
    };
    let time_of = |field: &'static str| -> Result<Option<i64>, IngressError> {
        match message.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => event_time(value, field).map(Some),
        }
    };
    let stamped = match time_of("timestamp")? {
        Some(at) => Some(at),
        None => time_of("originalTimestamp")?,
    };
    let sent_at = time_of("sentAt")?;
    let occurred = match (stamped, sent_at) {
        // The client's clock may be off; the gap between its two stamps is not.
        (Some(at), Some(sent)) => Some(received_at_ms.saturating_sub(sent.saturating_sub(at))),
        (Some(at), None) => Some(at),
        (None, _) => None,
    };
    if let Some(at) = occurred {
        check_time_range(at, received_at_ms, limits)?;
    }
    Ok(IncomingEvent {
        event_type: call.as_str().to_owned(),
        event_id,
        idempotency_key: None,
        occurred_at_ms: occurred,
        payload: message,
        identity,
    })
}

fn check_event_type(name: &str, field: &str, limits: &IngestLimits) -> Result<(), IngressError> {
    let chars = name.chars().count();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:-/ ".contains(c);
    if chars == 0
        || chars > limits.max_event_type_chars
        || !name.chars().all(allowed)
        || name.starts_with(' ')
        || name.ends_with(' ')
    {
        return Err(IngressError::new(
            "invalid_event_type",
            format!(
                "{field} must be 1 to {} characters of letters, digits, '_', '.', ':', '-', '/' \
                 or inner spaces",
                limits.max_event_type_chars
            ),
        ));
    }
    Ok(())
}

fn checked_id(id: &str, field: &str, limits: &IngestLimits) -> Result<String, IngressError> {
    let ok = !id.is_empty()
        && id.chars().count() <= limits.max_id_chars
        && id.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if !ok {
        return Err(IngressError::new(
            "invalid_event_id",
            format!(
                "{field} must be 1 to {} printable ASCII characters without spaces",
                limits.max_id_chars
            ),
        ));
    }
    Ok(id.to_owned())
}

fn optional_id(
    body: &mut Map<String, Value>,
    field: &'static str,
    limits: &IngestLimits,
) -> Result<Option<String>, IngressError> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => checked_id(&id, field, limits).map(Some),
        Some(_) => Err(IngressError::new(
            "invalid_event_id",
            format!("{field} must be a string"),
        )),
    }
}

/// An RFC 3339 string, or an integer of Unix milliseconds.
fn event_time(value: &Value, field: &str) -> Result<i64, IngressError> {
    let parsed = match value {
        Value::String(text) => parse_rfc3339(text),
        Value::Number(number) => number.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        IngressError::invalid(format!(
            "{field} must be an RFC 3339 time (2025-03-01T12:00:00Z) or Unix milliseconds"
        ))
    })
}

fn check_time_range(
    at_ms: i64,
    received_at_ms: i64,
    limits: &IngestLimits,
) -> Result<(), IngressError> {
    let future = i64::try_from(limits.max_future().as_millis()).unwrap_or(i64::MAX);
    let past = i64::try_from(limits.max_past().as_millis()).unwrap_or(i64::MAX);
    if at_ms > received_at_ms.saturating_add(future) || at_ms < received_at_ms.saturating_sub(past)
    {
        return Err(IngressError::new(
            "timestamp_out_of_range",
            format!(
                "an event's time may be at most {} s ahead of the gateway's clock and {} days \
                 behind it",
                limits.max_future_secs, limits.max_past_days
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_764_590_400_000; // 2025-12-01T12:00:00Z

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_quick_start_body_becomes_an_event_with_the_rest_as_payload() {
        let event = native_event(
            object(
                json!({"event_type": "user_sign_up", "user_id": "u_123", "ip": "8.8.8.8",
                "timestamp": "2025-03-01T12:00:00Z"}),
            ),
            NOW,
            &IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(event.event_type, "user_sign_up");
        assert_eq!(event.occurred_at_ms, Some(1_740_830_400_000));
        assert_eq!(
            Value::Object(event.payload),
            json!({"user_id": "u_123", "ip": "8.8.8.8"})
        );
        assert_eq!(event.identity.as_deref(), Some("u_123"));
    }

    #[test]
    fn native_bodies_outside_the_contract_are_refused_with_a_code() {
        let limits = IngestLimits::default();
        let refused = |body: Value| native_event(object(body), NOW, &limits).unwrap_err().code;
        assert_eq!(refused(json!({"user_id": "u"})), "invalid_event");
        assert_eq!(refused(json!({"event_type": 7})), "invalid_event");
        assert_eq!(refused(json!({"event_type": ""})), "invalid_event_type");
        assert_eq!(
            refused(json!({"event_type": "a\u{202e}b"})),
            "invalid_event_type"
        );
        assert_eq!(
            refused(json!({"event_type": "x".repeat(129)})),
            "invalid_event_type"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "tenant_id": "other"})),
            "field_reserved"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "event_id": "has space"})),
            "invalid_event_id"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "event_id": 5})),
            "invalid_event_id"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "timestamp": "soon"})),
            "invalid_event"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "timestamp": "2100-01-01T00:00:00Z"})),
            "timestamp_out_of_range"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "timestamp": "1990-01-01T00:00:00Z"})),
            "timestamp_out_of_range"
        );
        assert_eq!(
            refused(json!({"event_type": "x", "payload": {"a": 1}, "b": 2})),
            "invalid_event"
        );
    }

    #[test]
    fn a_payload_object_is_taken_as_the_payload() {
        let event = native_event(
            object(json!({"event_type": "x", "payload": {"userId": "u9", "n": 1}})),
            NOW,
            &IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(event.payload),
            json!({"userId": "u9", "n": 1})
        );
        assert_eq!(event.identity.as_deref(), Some("u9"));
    }

    #[test]
    fn segment_messages_keep_their_fields_and_lose_the_write_key() {
        let event = segment_event(
            Some(SegmentCall::Track),
            object(
                json!({"writeKey": "pk_x", "userId": "u1", "event": "Order Completed",
                "properties": {"total": 12}, "messageId": "ajs-1"}),
            ),
            NOW,
            &IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(event.event_type, "track");
        assert_eq!(event.event_id.as_deref(), Some("ajs-1"));
        assert!(!event.payload.contains_key("writeKey"));
        assert_eq!(event.payload["event"], "Order Completed");
    }

    #[test]
    fn segment_times_are_corrected_for_the_clients_clock_skew() {
        // The client's clock is an hour fast: it stamped the event 2 s before sending.
        let event = segment_event(
            Some(SegmentCall::Page),
            object(
                json!({"anonymousId": "a1", "timestamp": "2025-12-01T13:00:00Z",
                "sentAt": "2025-12-01T13:00:02Z"}),
            ),
            NOW,
            &IngestLimits::default(),
        )
        .unwrap();
        assert_eq!(event.occurred_at_ms, Some(NOW - 2_000));
        assert_eq!(event.identity.as_deref(), Some("a1"));
    }

    #[test]
    fn segment_calls_missing_what_segment_requires_are_refused() {
        let limits = IngestLimits::default();
        let refused = |call, body: Value| segment_event(call, object(body), NOW, &limits).is_err();
        assert!(refused(Some(SegmentCall::Track), json!({"event": "x"})));
        assert!(refused(Some(SegmentCall::Track), json!({"userId": "u"})));
        assert!(refused(Some(SegmentCall::Group), json!({"userId": "u"})));
        assert!(refused(Some(SegmentCall::Alias), json!({"userId": "u"})));
        assert!(refused(None, json!({"userId": "u"})));
        assert!(refused(None, json!({"userId": "u", "type": "purchase"})));
        assert!(!refused(
            None,
            json!({"userId": "u", "type": "identify", "traits": {}})
        ));
    }

    #[test]
    fn batches_are_checked_against_their_limits() {
        let limits = IngestLimits::default();
        assert_eq!(
            check_batch(600 * 1024, 1, &limits).unwrap_err().code,
            "batch_too_large"
        );
        assert_eq!(
            check_batch(10, 2_001, &limits).unwrap_err().code,
            "too_many_events"
        );
        assert!(check_batch(10, 0, &limits).is_err());
        assert!(check_batch(10, 5, &limits).is_ok());
        assert_eq!(
            check_event_size(33 * 1024, &limits).unwrap_err().code,
            "event_too_large"
        );
    }
}
