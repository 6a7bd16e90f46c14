//! Schemas of the domain types the API shows (`pulse_core::Money`, the surge map of
//! `pulse_surge::map`, the quotes' `SurgeSource`, `pulse_tenants`' scopes, quotas and issued
//! keys): mirrors, so the domain crates need no OpenAPI dependency. The handlers' bodies point
//! at them with `#[schema(value_type = ...)]`; the tests below keep each mirror's fields equal to
//! what the real type serialises.

// Never built: these types only describe the real ones to utoipa.
#![allow(dead_code)]

use utoipa::ToSchema;

/// An amount of money: integer minor units (cents for USD) in one ISO 4217 currency.
#[derive(ToSchema)]
#[schema(example = json!({"amount_minor": 625, "currency": "USD"}))]
pub(crate) struct Money {
    /// Minor units; negative for refunds and debits.
    amount_minor: i64,
    /// ISO 4217 code: three upper-case letters.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

/// Where a quote's multiplier came from: `live` (the engine's value for the cell), `default`
/// (no live value: 1.0) or `fallback` (the cache failed: 1.0, so pricing keeps working).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum SurgeSource {
    Live,
    Default,
    Fallback,
}

/// One cell with a live surge value, with its geometry for drawing.
#[derive(ToSchema)]
pub(crate) struct CellView {
    /// The H3 cell (resolution 8), hex.
    h3: String,
    /// Published multiplier.
    multiplier: f64,
    /// Orders in the window.
    #[schema(minimum = 0)]
    demand: u64,
    /// Available drivers in the window.
    #[schema(minimum = 0)]
    supply: u64,
    /// When the value was computed, Unix seconds.
    updated_at: i64,
    /// Centre, `[lat, lng]` degrees.
    center: [f64; 2],
    /// Corners, `[lat, lng]` degrees.
    boundary: Vec<[f64; 2]>,
}

/// A driver's latest position.
#[derive(ToSchema)]
pub(crate) struct DriverDot {
    /// Driver id.
    id: String,
    /// Latitude, degrees.
    lat: f64,
    /// Longitude, degrees.
    lng: f64,
}

/// A driver on a ride: its latest position and the ride's order.
#[derive(ToSchema)]
pub(crate) struct RidingDot {
    /// Driver id.
    id: String,
    /// Latitude, degrees.
    lat: f64,
    /// Longitude, degrees.
    lng: f64,
    /// The ride's order (its trail is at `GET /api/v1/orders/{order_id}/trail`).
    order_id: String,
}

/// Sums over a snapshot.
#[derive(ToSchema)]
pub(crate) struct Totals {
    /// Cells with a live value.
    cells: u64,
    /// Cells whose multiplier is above 1.
    surging_cells: u64,
    /// Orders in the window over all cells.
    demand: u64,
    /// Available drivers in the window over all cells.
    supply: u64,
    /// Available drivers listed.
    drivers: u64,
    /// Drivers on a ride listed.
    riding: u64,
    /// Highest multiplier (1 without cells).
    max_multiplier: f64,
}

/// Everything the map draws, at one moment (`GET /api/v1/surge/cells`, and the `snapshot`
/// event of the live stream).
#[derive(ToSchema)]
pub(crate) struct SurgeSnapshot {
    /// When it was read, Unix seconds.
    generated_at: i64,
    /// Live cells, ordered by H3 index.
    cells: Vec<CellView>,
    /// Available drivers, ordered by id.
    drivers: Vec<DriverDot>,
    /// Drivers on a ride (never counted as supply), ordered by id.
    riding: Vec<RidingDot>,
    /// Whether cells were left out (more than the map's cell limit).
    cells_truncated: bool,
    /// Whether drivers were left out (more than the map's driver limit).
    drivers_truncated: bool,
    /// Sums.
    totals: Totals,
}

/// What changed since the previous event of the live stream (its `update` event).
#[derive(ToSchema)]
pub(crate) struct SurgeUpdate {
    /// When the newer snapshot was read, Unix seconds.
    generated_at: i64,
    /// Cells that are new or whose value changed.
    cells: Vec<CellView>,
    /// H3 cells no longer live.
    removed: Vec<String>,
    /// Every available driver.
    drivers: Vec<DriverDot>,
    /// Every driver on a ride.
    riding: Vec<RidingDot>,
    /// As in the snapshot.
    drivers_truncated: bool,
    /// Sums.
    totals: Totals,
}

/// What a key opens: `full` (every route of the tenant) or `ingest` (only event ingestion: the
/// write key an app ships).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum Scope {
    Full,
    Ingest,
}

/// A quota class: `api` (API requests), `events` (ingested events), `jobs` (enqueued jobs).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum QuotaClass {
    Api,
    Events,
    Jobs,
}

/// A token bucket: `per_second` sustained, up to `burst` at once.
#[derive(ToSchema)]
pub(crate) struct QuotaSetting {
    /// Sustained units per second.
    per_second: u32,
    /// Units allowed at once on a full bucket.
    burst: u32,
}

/// A tenant's own quotas; a class left out uses the deployment's default.
#[derive(ToSchema)]
pub(crate) struct TenantQuotas {
    /// The `api` class.
    api: Option<QuotaSetting>,
    /// The `events` class.
    events: Option<QuotaSetting>,
    /// The `jobs` class.
    jobs: Option<QuotaSetting>,
}

/// A key just created: the only time its secret is shown.
#[derive(ToSchema)]
pub(crate) struct IssuedKey {
    /// The tenant it acts for.
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    tenant_id: String,
    /// The whole key, to hand to the client: `pk_<key id>_<secret>`.
    #[schema(pattern = "^pk_[a-z0-9]{12}_")]
    api_key: String,
    /// Its public id (to revoke it).
    #[schema(pattern = "^[a-z0-9]{12}$")]
    key_id: String,
    /// What it opens.
    scope: Scope,
}

/// An order's state: `PENDING` → `MATCHED` → `STARTED` → `FINISHED`, and `CANCELLED` from
/// `PENDING` or `MATCHED`.
#[derive(ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum OrderStatus {
    Pending,
    Matched,
    Started,
    Finished,
    Cancelled,
}

/// A customer profile (`pulse_profiles::model::ProfileView`): what the hot copy holds and the
/// store recomputes.
#[derive(ToSchema)]
pub(crate) struct Profile {
    profile_id: uuid::Uuid,
    /// Grows with every change (a consumer of `profiles.updates` keeps the highest).
    version: i64,
    /// Its user ids (at most `profiles.identity.max_user_ids`).
    user_ids: Vec<String>,
    /// Its anonymous ids (devices and browsers before sign-up).
    anonymous_ids: Vec<String>,
    /// Its e-mail addresses, lower-cased (when e-mail is an identifier).
    emails: Vec<String>,
    /// Each trait's latest value by event time.
    #[schema(value_type = Object)]
    traits: std::collections::BTreeMap<String, serde_json::Value>,
    computed: ProfileComputed,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// What a profile's events add up to; the same whatever order they arrived in.
#[derive(ToSchema)]
pub(crate) struct ProfileComputed {
    /// The earliest event time, RFC 3339.
    first_seen_at: Option<String>,
    /// The latest event time, RFC 3339.
    last_active_at: Option<String>,
    /// `page` events.
    #[schema(minimum = 0)]
    page_views: u64,
    /// Events by type.
    event_counts: std::collections::BTreeMap<String, u64>,
    /// `track` events by their `event` name.
    track_counts: std::collections::BTreeMap<String, u64>,
    device_class: DeviceClass,
    /// The latest position an event carried (`context.location`).
    location: Option<Location>,
}

/// The device class of the latest user agent (woothee's categories and a tablet rule).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum DeviceClass {
    Mobile,
    Tablet,
    Desktop,
    Bot,
    Unknown,
}

/// A position.
#[derive(ToSchema)]
pub(crate) struct Location {
    /// Latitude, degrees.
    lat: f64,
    /// Longitude, degrees.
    lng: f64,
}

#[cfg(test)]
mod tests {
    use pulse_core::{Currency, Money, TenantId};
    use pulse_surge::map::{CellView, DriverDot, RidingDot, SurgeSnapshot, SurgeUpdate, Totals};
    use pulse_surge::quotes::SurgeSource;
    use pulse_tenants::{IssuedKey, KeyId, QuotaClass, QuotaSetting, Scope, TenantQuotas};
    use serde::Serialize;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(crate::openapi::openapi()).expect("the document serialises")
    }

    /// `schema` with its `$ref` followed and a nullable `oneOf` reduced to its non-null arm.
    fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.rsplit('/').next().expect("a schema name");
            return resolve(document, &document["components"]["schemas"][name]);
        }
        if let Some(arms) = schema["oneOf"].as_array() {
            let arm = arms
                .iter()
                .find(|arm| arm["type"] != "null")
                .expect("a non-null arm");
            return resolve(document, arm);
        }
        schema
    }

    /// Fails where `value` (a real type, every optional field set) has a field the schema lacks,
    /// lacks one the schema has, or an enum value the schema does not list.
    fn assert_described(document: &Value, schema: &Value, value: &Value, at: &str) {
        let schema = resolve(document, schema);
        match value {
            Value::Object(fields) => {
                let Some(properties) = schema["properties"].as_object() else {
                    // A map (counts by name): every value as its `additionalProperties` says;
                    // a free-form object (traits) takes any.
                    assert_eq!(schema["type"], "object", "{at}: no object schema: {schema}");
                    if let Some(values) =
                        schema.get("additionalProperties").filter(|v| v.is_object())
                    {
                        for (name, field) in fields {
                            assert_described(document, values, field, &format!("{at}.{name}"));
                        }
                    }
                    return;
                };
                let mut real: Vec<&String> = fields.keys().collect();
                let mut described: Vec<&String> = properties.keys().collect();
                real.sort();
                described.sort();
                assert_eq!(real, described, "{at}: the fields differ");
                for (name, field) in fields {
                    assert_described(document, &properties[name], field, &format!("{at}.{name}"));
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    assert_described(document, &schema["items"], item, &format!("{at}[{index}]"));
                }
            }
            Value::String(text) => {
                if let Some(allowed) = schema["enum"].as_array() {
                    assert!(
                        allowed.contains(value),
                        "{at}: {text:?} is not in {allowed:?}"
                    );
                }
            }
            _ => {}
        }
    }

    fn assert_mirrors(name: &str, real: impl Serialize) {
        let document = document();
        let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        let value = serde_json::to_value(real).expect("serialises");
        assert_described(&document, &schema, &value, name);
    }

    fn totals() -> Totals {
        Totals {
            cells: 1,
            surging_cells: 1,
            demand: 4,
            supply: 2,
            drivers: 1,
            riding: 1,
            max_multiplier: 1.5,
        }
    }

    fn cell() -> CellView {
        CellView {
            h3: "881f1d4887fffff".to_owned(),
            multiplier: 1.5,
            demand: 4,
            supply: 2,
            updated_at: 1_700_000_000,
            center: [52.52, 13.405],
            boundary: vec![[52.5, 13.4], [52.6, 13.5]],
        }
    }

    fn driver() -> DriverDot {
        DriverDot {
            id: "driver-1".to_owned(),
            lat: 52.52,
            lng: 13.405,
        }
    }

    fn rider() -> RidingDot {
        RidingDot {
            id: "driver-2".to_owned(),
            lat: 52.53,
            lng: 13.41,
            order_id: "0193a1b2-0000-7000-8000-000000000000".to_owned(),
        }
    }

    #[test]
    fn the_mirror_schemas_have_the_fields_the_domain_types_serialise() {
        assert_mirrors(
            "Money",
            Money {
                amount_minor: 625,
                currency: Currency::parse("USD").expect("a currency"),
            },
        );
        assert_mirrors(
            "SurgeSnapshot",
            SurgeSnapshot {
                generated_at: 1_700_000_000,
                cells: vec![cell()],
                drivers: vec![driver()],
                riding: vec![rider()],
                cells_truncated: false,
                drivers_truncated: false,
                totals: totals(),
            },
        );
        assert_mirrors(
            "SurgeUpdate",
            SurgeUpdate {
                generated_at: 1_700_000_000,
                cells: vec![cell()],
                removed: vec!["881f1d4889fffff".to_owned()],
                drivers: vec![driver()],
                riding: vec![rider()],
                drivers_truncated: false,
                totals: totals(),
            },
        );
        let quota = QuotaSetting {
            per_second: 5,
            burst: 10,
        };
        assert_mirrors(
            "TenantQuotas",
            TenantQuotas {
                api: Some(quota),
                events: Some(quota),
                jobs: Some(quota),
            },
        );
        assert_mirrors(
            "IssuedKey",
            IssuedKey {
                tenant_id: TenantId::parse("acme").expect("a tenant id"),
                api_key: "pk_abcdefghijkl_secret".to_owned(),
                key_id: KeyId::parse("abcdefghijkl").expect("a key id"),
                scope: Scope::Ingest,
            },
        );
    }

    #[test]
    fn the_profile_mirror_has_the_fields_a_profile_serialises() {
        use pulse_gateway::useragent::DeviceClass;
        use pulse_profiles::event::{EventKind, ProfileEvent};
        use pulse_profiles::model::{Identifier, IdentityKind, Profile};
        use pulse_profiles::settings::TraitLimits;
        let mut profile = Profile::new(uuid::Uuid::nil(), 1_700_000_000_000);
        profile
            .identifiers
            .insert(Identifier::new(IdentityKind::UserId, "u1"));
        let mut traits = serde_json::Map::new();
        traits.insert("plan".into(), Value::from("pro"));
        profile.apply(
            &ProfileEvent {
                event_id: "e1".into(),
                kind: EventKind::Track,
                occurred_at_ms: 1_700_000_000_000,
                identifiers: vec![Identifier::new(IdentityKind::UserId, "u1")],
                previous_id: None,
                traits,
                track_name: Some("Order Placed".into()),
                device: Some(DeviceClass::Mobile),
                location: Some(pulse_profiles::model::Location {
                    lat: 52.5,
                    lng: 13.4,
                }),
            },
            &TraitLimits::default(),
        );
        assert_mirrors("Profile", profile.view(3, 1_700_000_000_001));
        for class in [
            DeviceClass::Mobile,
            DeviceClass::Tablet,
            DeviceClass::Desktop,
            DeviceClass::Bot,
            DeviceClass::Unknown,
        ] {
            assert_mirrors("DeviceClass", class);
        }
    }

    #[test]
    fn the_mirror_enums_list_every_value_the_domain_enums_serialise() {
        for source in [
            SurgeSource::Live,
            SurgeSource::Default,
            SurgeSource::Fallback,
        ] {
            assert_mirrors("SurgeSource", source);
        }
        for scope in [Scope::Full, Scope::Ingest] {
            assert_mirrors("Scope", scope);
        }
        for class in [QuotaClass::Api, QuotaClass::Events, QuotaClass::Jobs] {
            assert_mirrors("QuotaClass", class);
        }
        for status in pulse_orders::OrderStatus::ALL {
            assert_mirrors("OrderStatus", status.as_str());
        }
    }
}

/// The canonical envelope every event becomes (seed 003's `CanonicalEvent`; on the log as the
/// protobuf `pulse.v1.CanonicalEvent`, whose `payload` is the same JSON as bytes).
#[derive(ToSchema)]
pub(crate) struct CanonicalEvent {
    /// Unique per tenant: the client's `event_id` (Segment's `messageId`), a UUIDv5 of the
    /// tenant and its `idempotency_key`, or a new UUIDv7.
    event_id: String,
    /// The API key's tenant.
    tenant_id: String,
    /// What happened; for Segment calls the call type (`track`, `identify`, `page`, `screen`,
    /// `group`, `alias`).
    event_type: String,
    /// When it happened (Segment calls: corrected for the client's clock skew). RFC 3339, UTC.
    #[schema(format = DateTime)]
    occurred_at: String,
    /// When the gateway took it. RFC 3339, UTC.
    #[schema(format = DateTime)]
    received_at: String,
    /// The event's own fields (for Segment calls, the message as received minus `writeKey`).
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// The adapter that took it in.
    #[schema(example = "http")]
    source: String,
    /// W3C trace id of the ingest request.
    trace_id: Option<String>,
    /// The client's idempotency key.
    idempotency_key: Option<String>,
}
