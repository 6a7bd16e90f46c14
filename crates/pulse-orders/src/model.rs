//! Orders and their requests.

use pulse_core::{Money, TenantId};
use pulse_geo::Point;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest accepted user id (the seed's `VARCHAR(50)`).
pub const MAX_USER_ID_CHARS: usize = 50;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Why input was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A field is missing, empty, too long or malformed.
    #[error("{field}: {message}")]
    Field {
        /// The field, as the client named it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ValidationError {
    pub(crate) fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self::Field {
            field,
            message: message.into(),
        }
    }
}

/// Lifecycle of an order (seed 004's ride, continuing seed 000's order): `PENDING` →
/// `MATCHED` → `STARTED` → `FINISHED`, and `CANCELLED` from `PENDING` or `MATCHED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted, waiting for a driver (Atlas's CREATED).
    Pending,
    /// A driver was claimed for it.
    Matched,
    /// The driver picked the rider up.
    Started,
    /// The ride ended (seed 000's COMPLETED).
    Finished,
    /// Cancelled before it started.
    Cancelled,
}

impl OrderStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Matched,
        OrderStatus::Started,
        OrderStatus::Finished,
        OrderStatus::Cancelled,
    ];

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Matched => "MATCHED",
            OrderStatus::Started => "STARTED",
            OrderStatus::Finished => "FINISHED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    /// From the stored text (`COMPLETED`, seed 000's name, reads as [`OrderStatus::Finished`]).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(OrderStatus::Pending),
            "MATCHED" => Some(OrderStatus::Matched),
            "STARTED" => Some(OrderStatus::Started),
            "FINISHED" | "COMPLETED" => Some(OrderStatus::Finished),
            "CANCELLED" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    /// The statuses an order may move to from this one.
    pub fn next(self) -> &'static [OrderStatus] {
        match self {
            OrderStatus::Pending => &[OrderStatus::Matched, OrderStatus::Cancelled],
            OrderStatus::Matched => &[OrderStatus::Started, OrderStatus::Cancelled],
            OrderStatus::Started => &[OrderStatus::Finished],
            OrderStatus::Finished | OrderStatus::Cancelled => &[],
        }
    }

    /// Whether the order may move from this status to `to`.
    pub fn can_move_to(self, to: OrderStatus) -> bool {
        self.next().contains(&to)
    }

    /// Whether the ride is over (nothing follows).
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }
}

/// A client's `Idempotency-Key`: 1 to 200 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a header value.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_IDEMPOTENCY_KEY_CHARS
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::field(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"),
            ))
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated order request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// Who orders.
    pub user_id: String,
    /// Where to pick up.
    pub pickup: Point,
    /// Where to drop off.
    pub dropoff: Point,
    /// A locked quote to pay, if any.
    pub quote_id: Option<Uuid>,
    /// The vehicle asked for (`car`, `bike`, …), if any: only such drivers are matched.
    pub vehicle_type: Option<String>,
}

/// Longest vehicle type name.
pub const MAX_VEHICLE_TYPE_CHARS: usize = 32;

/// Validates a vehicle type: 1 to [`MAX_VEHICLE_TYPE_CHARS`] of `[a-z0-9_-]` (`car`, `bike`,
/// `xl`), so it can sit in keys and filters as is.
pub fn validate_vehicle_type(vehicle_type: &str) -> Result<(), ValidationError> {
    let valid = !vehicle_type.is_empty()
        && vehicle_type.len() <= MAX_VEHICLE_TYPE_CHARS
        && vehicle_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::field(
            "vehicle_type",
            format!("must be 1 to {MAX_VEHICLE_TYPE_CHARS} of a-z, 0-9, '_' and '-'"),
        ))
    }
}

/// Validates a user id: 1 to [`MAX_USER_ID_CHARS`] characters without surrounding spaces or
/// control characters.
pub fn validate_user_id(user_id: &str) -> Result<(), ValidationError> {
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || user_id.trim() != user_id {
        return Err(ValidationError::field(
            "user_id",
            format!("must be 1 to {MAX_USER_ID_CHARS} characters without surrounding spaces"),
        ));
    }
    if user_id.chars().any(is_hidden_or_control) {
        return Err(ValidationError::field(
            "user_id",
            "must be printable: no control, bidirectional-override or isolate characters",
        ));
    }
    Ok(())
}

impl NewOrder {
    /// Validates the user id; points are validated when built.
    pub fn new(
        user_id: &str,
        pickup: Point,
        dropoff: Point,
        quote_id: Option<Uuid>,
    ) -> Result<Self, ValidationError> {
        validate_user_id(user_id)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            pickup,
            dropoff,
            quote_id,
            vehicle_type: None,
        })
    }

    /// The same request, asking for `vehicle_type` (validated).
    pub fn with_vehicle_type(mut self, vehicle_type: &str) -> Result<Self, ValidationError> {
        validate_vehicle_type(vehicle_type)?;
        self.vehicle_type = Some(vehicle_type.to_owned());
        Ok(self)
    }
}

/// Characters that must not appear in a free-text identifier (a user id, an e-mail address):
/// controls, and the bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069) that make text display other than it reads (a
/// "Trojan source" user id in a dashboard or a log).
pub fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// A locked price an order pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPrice {
    /// What it pays.
    pub total: Money,
    /// Multiplier applied, in thousandths.
    pub multiplier_milli: i32,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Order id (UUID v7: time-ordered).
    pub id: Uuid,
    /// The tenant it belongs to: only that tenant's keys can see it.
    pub tenant: TenantId,
    /// Who ordered.
    pub user_id: String,
    /// Pickup point.
    pub pickup: Point,
    /// Dropoff point.
    pub dropoff: Point,
    /// Pickup cell (H3 resolution 9).
    pub pickup_h3: String,
    /// Dropoff cell (H3 resolution 9).
    pub dropoff_h3: String,
    /// Status.
    pub status: OrderStatus,
    /// Acceptance time, Unix milliseconds.
    pub created_at_ms: i64,
    /// The locked quote it was placed with.
    pub quote_id: Option<Uuid>,
    /// The fare, fixed at placement: the locked quote's price, else a fresh quote's (absent
    /// only on orders placed before fares were kept).
    pub price: Option<OrderPrice>,
    /// The vehicle asked for, if any.
    pub vehicle_type: Option<String>,
    /// The driver, once matched.
    pub driver_id: Option<String>,
    /// Why dispatch gave up on it, while it waits unmatched (`no_driver`).
    pub no_driver: Option<String>,
}

impl Order {
    /// Whether `request` asks for this very order (same user, points and quote), so a retry
    /// with the same idempotency key can be answered with it.
    pub fn matches(&self, request: &NewOrder) -> bool {
        self.user_id == request.user_id
            && self.pickup == request.pickup
            && self.dropoff == request.dropoff
            && self.quote_id == request.quote_id
            && self.vehicle_type == request.vehicle_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_stored() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("COMPLETED"), Some(OrderStatus::Finished));
        assert_eq!(OrderStatus::parse("pending"), None);
    }

    #[test]
    fn the_lifecycle_moves_forward_and_cancels_only_before_the_start() {
        use OrderStatus::*;
        let allowed = [
            (Pending, Matched),
            (Pending, Cancelled),
            (Matched, Started),
            (Matched, Cancelled),
            (Started, Finished),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        assert!(Finished.is_final() && Cancelled.is_final() && !Started.is_final());
    }

    #[test]
    fn vehicle_types_are_short_lowercase_names() {
        for good in ["car", "bike", "xl_van", "e-scooter", "v2"] {
            assert!(validate_vehicle_type(good).is_ok(), "{good}");
        }
        let long = "c".repeat(MAX_VEHICLE_TYPE_CHARS + 1);
        for bad in ["", "Car", "car pool", "car:1", long.as_str()] {
            assert!(validate_vehicle_type(bad).is_err(), "{bad:?}");
        }
    }

    fn point() -> Point {
        Point::new(52.52, 13.405).expect("a valid point")
    }

    #[test]
    fn user_ids_may_be_printable_unicode_such_as_e_mail_addresses() {
        let longest = "é".repeat(MAX_USER_ID_CHARS);
        for good in [
            "rider-1",
            "ana.müller@example.org",
            "José",
            "用户",
            longest.as_str(),
        ] {
            let order = NewOrder::new(good, point(), point(), None).expect(good);
            assert_eq!(order.user_id, good);
        }
    }

    #[test]
    fn user_ids_with_controls_bidi_overrides_or_isolates_or_too_long_are_refused() {
        let overlong = "u".repeat(MAX_USER_ID_CHARS + 1);
        for bad in [
            "",
            " padded",
            "nul\0",
            "new\nline",
            "evil\u{202E}gpj.exe",
            "left\u{202A}embed",
            "isolate\u{2066}x\u{2069}",
            "mark\u{200F}",
            "mark\u{200E}",
            "arabic\u{061C}mark",
            overlong.as_str(),
        ] {
            let err = NewOrder::new(bad, point(), point(), None).expect_err(bad);
            assert!(err.to_string().starts_with("user_id: "), "{err}");
        }
    }

    #[test]
    fn idempotency_keys_are_1_to_200_printable_ascii_characters() {
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS);
        for good in ["a", "order-42_retry:1", longest.as_str()] {
            let key = IdempotencyKey::parse(good).expect("a valid key");
            assert_eq!(key.as_str(), good);
        }
        let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1);
        for bad in ["", too_long.as_str(), "with space", "tab\there", "clé"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} refused");
        }
    }
}
