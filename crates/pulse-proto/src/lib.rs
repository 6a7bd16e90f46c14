//! Protobuf contracts of the events Pulse writes to its log (`proto/pulse/v1/events.proto`):
//! orders, driver locations, and the event gateway's canonical envelope.
//!
//! The `.proto` file is the contract shared with other languages; the Rust types are generated
//! from it at build time by `protox` + `prost-build`, so building needs no system `protoc`.
//! Timestamps are Unix milliseconds; H3 cells are resolution-9 lowercase hex strings.

#![allow(missing_debug_implementations, unreachable_pub)]

/// Version 1 of the event contracts.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pulse.v1.rs"));
}

pub use prost::{DecodeError, Message};

#[cfg(test)]
mod tests {
    use super::v1::OrderCreatedEvent;
    use super::Message;

    #[test]
    fn order_created_round_trips_and_keeps_field_numbers() {
        let event = OrderCreatedEvent {
            order_id: "0190f0e4-7c1a-7000-8000-000000000001".into(),
            pickup_h3: "89283082803ffff".into(),
            user_id: "user-1".into(),
            timestamp: 1_704_200_000_000,
        };
        let bytes = event.encode_to_vec();
        // Field 1, wire type 2 (length-delimited): the contract's first byte.
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(OrderCreatedEvent::decode(bytes.as_slice()).unwrap(), event);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(OrderCreatedEvent::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
