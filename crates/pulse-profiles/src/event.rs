//! What a canonical event says about a customer: who (identifiers), and what (the kind, traits,
//! the device, the place). Read from the Segment message the gateway keeps as the payload.

use pulse_gateway::envelope::CanonicalEvent;
use pulse_gateway::useragent::{self, DeviceClass};
use serde_json::{Map, Value};

use crate::model::{Identifier, IdentityKind, Location};
use crate::settings::IdentitySettings;

/// The Segment calls that speak about a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Who the customer is, with traits.
    Identify,
    /// Something the customer did.
    Track,
    /// A web page viewed.
    Page,
    /// A mobile screen viewed.
    Screen,
    /// Two ids of one customer.
    Alias,
    /// The customer belongs to a group (an account).
    Group,
}

impl EventKind {
    /// The canonical `event_type` (the Segment call type).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Identify => "identify",
            EventKind::Track => "track",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Alias => "alias",
            EventKind::Group => "group",
        }
    }

    /// The kind an `event_type` names, when it is one of these.
    pub fn parse(event_type: &str) -> Option<Self> {
        [
            EventKind::Identify,
            EventKind::Track,
            EventKind::Page,
            EventKind::Screen,
            EventKind::Alias,
            EventKind::Group,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == event_type)
    }

    /// Every `event_type` the profiles read.
    pub const EVENT_TYPES: [&'static str; 6] =
        ["identify", "track", "page", "screen", "alias", "group"];
}

/// One event, as the profiles see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEvent {
    /// The event's id (unique per tenant).
    pub event_id: String,
    /// Its call.
    pub kind: EventKind,
    /// When it happened, Unix milliseconds.
    pub occurred_at_ms: i64,
    /// Its identifiers, strongest first, blocked values left out.
    pub identifiers: Vec<Identifier>,
    /// An alias's `previousId`, when it is not blocked.
    pub previous_id: Option<String>,
    /// An identify's traits (or `context.traits` of another call).
    pub traits: Map<String, Value>,
    /// A track call's `event` name.
    pub track_name: Option<String>,
    /// The device class of `context.userAgent`, when there is one and it is recognised.
    pub device: Option<DeviceClass>,
    /// `context.location`, when it holds a valid position.
    pub location: Option<Location>,
}

impl ProfileEvent {
    /// The identifier that decides the event's profile: its strongest one.
    pub fn key(&self) -> Option<&Identifier> {
        self.identifiers.first()
    }

    /// What `event` says, when it is a call the profiles read and names somebody. `None` for
    /// other event types, for payloads that are not a JSON object, and for events whose every
    /// identifier is blocked (they are counted, not applied).
    pub fn read(event: &CanonicalEvent, settings: &IdentitySettings) -> Option<Self> {
        let kind = EventKind::parse(&event.event_type)?;
        let payload: Map<String, Value> = serde_json::from_slice(&event.payload).ok()?;
        Some(Self::from_payload(
            event.event_id.clone(),
            kind,
            event.occurred_at_ms,
            &payload,
            settings,
        ))
        .filter(|read| !read.identifiers.is_empty())
    }

    /// What a Segment message of `kind` says.
    pub fn from_payload(
        event_id: String,
        kind: EventKind,
        occurred_at_ms: i64,
        payload: &Map<String, Value>,
        settings: &IdentitySettings,
    ) -> Self {
        let context = payload.get("context").and_then(Value::as_object);
        let traits = match kind {
            EventKind::Identify => payload.get("traits"),
            // A group's traits are the group's, not the customer's.
            EventKind::Group => None,
            _ => context.and_then(|context| context.get("traits")),
        }
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
        let mut identifiers = Vec::new();
        let mut add = |kind: IdentityKind, raw: Option<&Value>| {
            if let Some(value) = settings.accept(kind, raw) {
                let id = Identifier::new(kind, value);
                if !identifiers.contains(&id) {
                    identifiers.push(id);
                }
            }
        };
        add(IdentityKind::UserId, payload.get("userId"));
        add(IdentityKind::Email, traits.get("email"));
        add(IdentityKind::AnonymousId, payload.get("anonymousId"));
        identifiers.sort_by_key(|id| id.kind);
        let previous_id = (kind == EventKind::Alias)
            .then(|| settings.accept(IdentityKind::UserId, payload.get("previousId")))
            .flatten();
        let agent = context
            .and_then(|context| context.get("userAgent"))
            .and_then(Value::as_str);
        let location = context
            .and_then(|context| context.get("location"))
            .and_then(Value::as_object)
            .and_then(|location| {
                let lat = location.get("latitude")?.as_f64()?;
                let lng = location.get("longitude")?.as_f64()?;
                ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng))
                    .then_some(Location { lat, lng })
            });
        Self {
            event_id,
            kind,
            occurred_at_ms,
            identifiers,
            previous_id,
            traits: settings.traits.admit(traits),
            track_name: (kind == EventKind::Track)
                .then(|| payload.get("event").and_then(Value::as_str))
                .flatten()
                .map(str::to_owned),
            // An agent nobody recognises says nothing about the device: it must not replace a
            // class an earlier event established.
            device: agent
                .map(|agent| useragent::classify(Some(agent)))
                .filter(|class| *class != DeviceClass::Unknown),
            location,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pulse_core::TenantId;
    use pulse_gateway::envelope::Source;

    /// A bare event for model tests.
    pub(crate) fn event(id: &str, kind: EventKind, at_ms: i64) -> ProfileEvent {
        ProfileEvent {
            event_id: id.to_owned(),
            kind,
            occurred_at_ms: at_ms,
            identifiers: vec![Identifier::new(IdentityKind::AnonymousId, "a")],
            previous_id: None,
            traits: Map::new(),
            track_name: None,
            device: None,
            location: None,
        }
    }

    impl ProfileEvent {
        pub(crate) fn traits(mut self, traits: &[(&str, &str)]) -> Self {
            self.traits = traits
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            self
        }

        pub(crate) fn named(mut self, name: &str) -> Self {
            self.track_name = Some(name.to_owned());
            self
        }
    }

    fn canonical(event_type: &str, payload: Value) -> CanonicalEvent {
        CanonicalEvent {
            event_id: "m1".into(),
            tenant: TenantId::default(),
            event_type: event_type.into(),
            occurred_at_ms: 1_000,
            received_at_ms: 1_000,
            payload: serde_json::to_vec(&payload).unwrap().into(),
            source: Source::Http,
            trace_id: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn a_segment_identify_names_its_ids_traits_and_device() {
        let settings = IdentitySettings::default();
        let read = ProfileEvent::read(
            &canonical(
                "identify",
                serde_json::json!({
                    "userId": "u1", "anonymousId": "a1",
                    "traits": {"email": "Ann@Example.com", "plan": "pro"},
                    "context": {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
                                "location": {"latitude": 52.5, "longitude": 13.4}}
                }),
            ),
            &settings,
        )
        .unwrap();
        assert_eq!(
            read.identifiers,
            vec![
                Identifier::new(IdentityKind::UserId, "u1"),
                Identifier::new(IdentityKind::Email, "ann@example.com"),
                Identifier::new(IdentityKind::AnonymousId, "a1"),
            ]
        );
        assert_eq!(read.traits["plan"], "pro");
        assert_eq!(read.device, Some(DeviceClass::Mobile));
        assert_eq!(
            read.location,
            Some(Location {
                lat: 52.5,
                lng: 13.4
            })
        );
    }

    #[test]
    fn an_agent_nobody_recognises_names_no_device() {
        let settings = IdentitySettings::default();
        for agent in ["", "curl-ish/0.0 (something)", "%%%"] {
            let read = ProfileEvent::read(
                &canonical(
                    "page",
                    serde_json::json!({"userId": "u1", "context": {"userAgent": agent}}),
                ),
                &settings,
            )
            .expect("an event");
            assert_eq!(read.device, None, "{agent:?}");
        }
    }

    #[test]
    fn blocked_values_and_other_event_types_name_nobody() {
        let settings = IdentitySettings::default();
        for blocked in ["null", "undefined", "0", "", "  "] {
            let read = ProfileEvent::read(
                &canonical(
                    "track",
                    serde_json::json!({"userId": blocked, "event": "x"}),
                ),
                &settings,
            );
            assert!(read.is_none(), "{blocked:?}");
        }
        assert!(ProfileEvent::read(
            &canonical("user_sign_up", serde_json::json!({"userId": "u1"})),
            &settings
        )
        .is_none());
        let numeric = ProfileEvent::read(
            &canonical("page", serde_json::json!({"userId": 42})),
            &settings,
        )
        .unwrap();
        assert_eq!(numeric.identifiers[0].value, "42");
    }
}
