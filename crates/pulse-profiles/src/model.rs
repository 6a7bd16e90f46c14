//! A profile and what it is made of: identifiers, traits decided by the latest event time, and
//! computed attributes that are the same whatever order the events arrived in.
//!
//! Every attribute is a join of its events: counts add up, first seen is the earliest time,
//! last active the latest, and each trait, the device class and the location keep the value of
//! the latest event (ties broken by event id). So applying events in any order, or merging two
//! profiles, gives the same profile as applying all their events to one.

use std::collections::{BTreeMap, BTreeSet};

use pulse_gateway::time::rfc3339;
use pulse_gateway::useragent::DeviceClass;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event::{EventKind, ProfileEvent};
use crate::settings::TraitLimits;

/// Which kind of identifier a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// Segment's `userId`: the customer's id in the tenant's own systems.
    UserId,
    /// `traits.email`, when the tenant counts e-mail as an identifier.
    Email,
    /// Segment's `anonymousId`: a device or browser before sign-up.
    AnonymousId,
}

impl IdentityKind {
    /// Every kind, strongest first: the order an event's identifiers decide its profile in.
    pub const ALL: [IdentityKind; 3] = [
        IdentityKind::UserId,
        IdentityKind::Email,
        IdentityKind::AnonymousId,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::UserId => "user_id",
            IdentityKind::Email => "email",
            IdentityKind::AnonymousId => "anonymous_id",
        }
    }

    /// The kind a stored name names.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// One identifier of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    /// Its kind.
    pub kind: IdentityKind,
    /// Its value, as sent (e-mail addresses lower-cased).
    pub value: String,
}

impl Identifier {
    /// `kind` = `value`.
    pub fn new(kind: IdentityKind, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

/// When a value was set: the event's time, then its id, so "the latest" is a total order and
/// every replica picks the same value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    /// The event's time, Unix milliseconds.
    pub at_ms: i64,
    /// The event's id.
    pub event_id: String,
}

/// A value with the stamp of the event that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// The value.
    pub value: T,
    /// Who set it.
    pub stamp: Stamp,
}

/// A last known position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lng: f64,
}

/// The profile's id derived from the event that created it, so a rebuild from the archive
/// gives every profile the id the live path gave it.
pub fn profile_id_for(tenant: &str, event_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6c1c_0a42_5b8e_4f0e_9d1a_7f3e_2b4c_8a01);
    Uuid::new_v5(&NAMESPACE, format!("{tenant}\0{event_id}").as_bytes())
}

/// One customer, as the store keeps it (the cold copy) and the hot copy is derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Its id.
    pub id: Uuid,
    /// Its identifiers, by kind.
    pub identifiers: BTreeSet<Identifier>,
    /// Traits, each with the event that set it.
    pub traits: BTreeMap<String, Stamped<Value>>,
    /// The earliest event time.
    pub first_seen_ms: Option<i64>,
    /// The latest event time.
    pub last_active_ms: Option<i64>,
    /// `page` events.
    pub page_views: u64,
    /// Events by type (`track`, `page`, `identify`, …).
    pub event_counts: BTreeMap<String, u64>,
    /// `track` events by their `event` name.
    pub track_counts: BTreeMap<String, u64>,
    /// The device class of the latest event that named a user agent.
    pub device: Option<Stamped<DeviceClass>>,
    /// The latest known position.
    pub location: Option<Stamped<Location>>,
    /// New traits refused because the profile held `max_traits` already (an oversized one is
    /// dropped before, when the event is read).
    pub traits_refused: u64,
    /// When the profile was created (the first event's or the API call's time).
    pub created_at_ms: i64,
}

impl Profile {
    /// An empty profile.
    pub fn new(id: Uuid, created_at_ms: i64) -> Self {
        Self {
            id,
            identifiers: BTreeSet::new(),
            traits: BTreeMap::new(),
            first_seen_ms: None,
            last_active_ms: None,
            page_views: 0,
            event_counts: BTreeMap::new(),
            track_counts: BTreeMap::new(),
            device: None,
            location: None,
            traits_refused: 0,
            created_at_ms,
        }
    }

    /// How many identifiers of `kind` it has.
    pub fn count_of(&self, kind: IdentityKind) -> usize {
        self.identifiers.iter().filter(|id| id.kind == kind).count()
    }

    /// The values of its identifiers of `kind`.
    pub fn values_of(&self, kind: IdentityKind) -> Vec<String> {
        self.identifiers
            .iter()
            .filter(|id| id.kind == kind)
            .map(|id| id.value.clone())
            .collect()
    }

    /// Applies what `event` says about the customer (not who it is: identity resolution has
    /// already chosen this profile).
    pub fn apply(&mut self, event: &ProfileEvent, limits: &TraitLimits) {
        let stamp = Stamp {
            at_ms: event.occurred_at_ms,
            event_id: event.event_id.clone(),
        };
        *self
            .event_counts
            .entry(event.kind.as_str().to_owned())
            .or_default() += 1;
        if event.kind == EventKind::Page {
            self.page_views += 1;
        }
        if let Some(name) = &event.track_name {
            *self.track_counts.entry(name.clone()).or_default() += 1;
        }
        self.first_seen_ms = Some(
            self.first_seen_ms
                .map_or(event.occurred_at_ms, |at| at.min(event.occurred_at_ms)),
        );
        self.last_active_ms = Some(
            self.last_active_ms
                .map_or(event.occurred_at_ms, |at| at.max(event.occurred_at_ms)),
        );
        if let Some(class) = event.device {
            keep_latest(
                &mut self.device,
                Stamped {
                    value: class,
                    stamp: stamp.clone(),
                },
            );
        }
        if let Some(location) = event.location {
            keep_latest(
                &mut self.location,
                Stamped {
                    value: location,
                    stamp: stamp.clone(),
                },
            );
        }
        for (key, value) in &event.traits {
            self.set_trait(
                key,
                Stamped {
                    value: value.clone(),
                    stamp: stamp.clone(),
                },
                limits,
            );
        }
    }

    fn set_trait(&mut self, key: &str, value: Stamped<Value>, limits: &TraitLimits) {
        let full = self.traits.len() >= limits.max_traits;
        match self.traits.get_mut(key) {
            Some(held) => {
                if value.stamp > held.stamp {
                    *held = value;
                }
            }
            None if full => self.traits_refused += 1,
            None => {
                self.traits.insert(key.to_owned(), value);
            }
        }
    }

    /// Takes `other` in: its identifiers, its counts added, each latest value kept — the
    /// profile that applying both profiles' events to one would give.
    pub fn absorb(&mut self, other: &Profile, limits: &TraitLimits) {
        self.identifiers.extend(other.identifiers.iter().cloned());
        for (key, value) in &other.traits {
            self.set_trait(key, value.clone(), limits);
        }
        self.first_seen_ms = match (self.first_seen_ms, other.first_seen_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_active_ms = match (self.last_active_ms, other.last_active_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.page_views += other.page_views;
        for (kind, count) in &other.event_counts {
            *self.event_counts.entry(kind.clone()).or_default() += count;
        }
        for (name, count) in &other.track_counts {
            *self.track_counts.entry(name.clone()).or_default() += count;
        }
        if let Some(device) = &other.device {
            keep_latest(&mut self.device, device.clone());
        }
        if let Some(location) = &other.location {
            keep_latest(&mut self.location, location.clone());
        }
        self.traits_refused += other.traits_refused;
        self.created_at_ms = self.created_at_ms.min(other.created_at_ms);
    }

    /// What the API shows and the hot copy holds.
    pub fn view(&self, version: i64, updated_at_ms: i64) -> ProfileView {
        ProfileView {
            profile_id: self.id,
            version,
            user_ids: self.values_of(IdentityKind::UserId),
            anonymous_ids: self.values_of(IdentityKind::AnonymousId),
            emails: self.values_of(IdentityKind::Email),
            traits: self
                .traits
                .iter()
                .map(|(key, value)| (key.clone(), value.value.clone()))
                .collect(),
            computed: Computed {
                first_seen_at: self.first_seen_ms.map(rfc3339),
                last_active_at: self.last_active_ms.map(rfc3339),
                page_views: self.page_views,
                event_counts: self.event_counts.clone(),
                track_counts: self.track_counts.clone(),
                device_class: self
                    .device
                    .as_ref()
                    .map_or(DeviceClass::Unknown, |device| device.value),
                location: self.location.as_ref().map(|location| location.value),
            },
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(updated_at_ms),
        }
    }
}

fn keep_latest<T>(held: &mut Option<Stamped<T>>, candidate: Stamped<T>) {
    if held
        .as_ref()
        .is_none_or(|held| candidate.stamp > held.stamp)
    {
        *held = Some(candidate);
    }
}

/// The computed attributes, as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Computed {
    /// The earliest event time (RFC 3339).
    pub first_seen_at: Option<String>,
    /// The latest event time (RFC 3339).
    pub last_active_at: Option<String>,
    /// `page` events.
    pub page_views: u64,
    /// Events by type.
    pub event_counts: BTreeMap<String, u64>,
    /// `track` events by name.
    pub track_counts: BTreeMap<String, u64>,
    /// `mobile`, `tablet`, `desktop`, `bot` or `unknown`, from the latest user agent.
    pub device_class: DeviceClass,
    /// The latest position an event carried (`context.location`).
    pub location: Option<Location>,
}

/// A profile as `GET /api/v1/profiles/{id}` shows it and the cache holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileView {
    /// The profile's id.
    pub profile_id: Uuid,
    /// Grows with every change.
    pub version: i64,
    /// Its user ids.
    pub user_ids: Vec<String>,
    /// Its anonymous ids.
    pub anonymous_ids: Vec<String>,
    /// Its e-mail addresses (when e-mail is an identifier).
    pub emails: Vec<String>,
    /// Its traits, the latest value of each.
    pub traits: BTreeMap<String, Value>,
    /// What its events add up to.
    pub computed: Computed,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// Why two profiles became one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeReason {
    /// An identify named identifiers of both.
    Identify,
    /// An alias linked an id of one to an id of the other.
    Alias,
    /// Another event carried identifiers of both.
    SharedIdentifier,
}

impl MergeReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeReason::Identify => "identify",
            MergeReason::Alias => "alias",
            MergeReason::SharedIdentifier => "shared_identifier",
        }
    }

    /// The reason a stored name names.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            MergeReason::Identify,
            MergeReason::Alias,
            MergeReason::SharedIdentifier,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == raw)
    }
}

/// One edge of the identity graph: `from` was merged into `into`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merge {
    /// The merge's id.
    pub id: Uuid,
    /// The profile that lives on.
    pub into: Uuid,
    /// The profile merged away.
    pub from: Uuid,
    /// The event that linked them.
    pub event_id: String,
    /// The identifier of `from` the event named.
    pub identifier: Identifier,
    /// Why.
    pub reason: MergeReason,
    /// When, Unix milliseconds.
    pub merged_at_ms: i64,
    /// When it was undone, if it was.
    pub undone_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::event;

    #[test]
    fn applying_in_any_order_and_merging_give_the_same_profile() {
        let limits = TraitLimits::default();
        let events = [
            event("e1", EventKind::Page, 3_000).traits(&[]),
            event("e2", EventKind::Identify, 1_000).traits(&[("plan", "free")]),
            event("e3", EventKind::Identify, 2_000).traits(&[("plan", "pro")]),
            event("e4", EventKind::Track, 4_000).named("Order Placed"),
        ];
        let mut forward = Profile::new(Uuid::nil(), 0);
        for e in &events {
            forward.apply(e, &limits);
        }
        let mut backward = Profile::new(Uuid::nil(), 0);
        for e in events.iter().rev() {
            backward.apply(e, &limits);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward.traits["plan"].value, Value::from("pro"));
        assert_eq!(forward.page_views, 1);
        assert_eq!(forward.first_seen_ms, Some(1_000));
        assert_eq!(forward.last_active_ms, Some(4_000));
        assert_eq!(forward.track_counts["Order Placed"], 1);

        let (mut left, mut right) = (Profile::new(Uuid::nil(), 0), Profile::new(Uuid::nil(), 0));
        left.apply(&events[0], &limits);
        left.apply(&events[2], &limits);
        right.apply(&events[1], &limits);
        right.apply(&events[3], &limits);
        left.absorb(&right, &limits);
        assert_eq!(left, forward);
    }

    #[test]
    fn traits_over_the_limit_are_refused_and_counted() {
        let limits = TraitLimits {
            max_traits: 1,
            ..TraitLimits::default()
        };
        let mut profile = Profile::new(Uuid::nil(), 0);
        profile.apply(
            &event("e1", EventKind::Identify, 1).traits(&[("a", "1"), ("b", "2")]),
            &limits,
        );
        assert_eq!(profile.traits.len(), 1);
        assert_eq!(profile.traits_refused, 1);
    }

    #[test]
    fn profile_ids_follow_the_creating_event() {
        assert_eq!(profile_id_for("acme", "e1"), profile_id_for("acme", "e1"));
        assert_ne!(profile_id_for("acme", "e1"), profile_id_for("other", "e1"));
    }
}
