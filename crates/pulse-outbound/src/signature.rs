//! The webhook signature scheme, version `v1` (documented for receivers in `docs/WEBHOOKS.md`).
//!
//! `Pulse-Signature: v1=<hex>` where `<hex>` is the lowercase hex HMAC-SHA256, keyed with the
//! sink's secret, of `"{Pulse-Timestamp}.{body}"`. Signing the timestamp with the body lets a
//! receiver refuse a replayed request without keeping state; the `v1=` label lets a later scheme
//! (or a second key during a rotation) be added to the header without breaking receivers.
//! Kept free of HTTP types: the gateway's webhooks and the jobs' HTTP handlers sign the same way.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature(s).
pub const SIGNATURE_HEADER: &str = "pulse-signature";
/// The header carrying the signed Unix time, in seconds.
pub const TIMESTAMP_HEADER: &str = "pulse-timestamp";
/// The label of this scheme in [`SIGNATURE_HEADER`].
pub const SCHEME: &str = "v1";

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix seconds):
/// `v1=` and the lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("{SCHEME}={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_a_vector_computed_by_pythons_hmac_module() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_0123456789abcdef",
        //   b"1740830400." + b"{\"event_id\":\"e-1\"}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(
                b"whsec_0123456789abcdef",
                1_740_830_400,
                br#"{"event_id":"e-1"}"#
            ),
            "v1=2231da0c92d4384e2df100d3808b30694808136765cf4dd61c231f15e43ee18c"
        );
    }

    #[test]
    fn the_timestamp_the_body_and_the_secret_each_change_the_signature() {
        let base = sign(b"whsec_0123456789abcdef", 1_740_830_400, b"{}");
        assert_ne!(base, sign(b"whsec_0123456789abcdef", 1_740_830_401, b"{}"));
        assert_ne!(base, sign(b"whsec_0123456789abcdef", 1_740_830_400, b"{ }"));
        assert_ne!(base, sign(b"whsec_0123456789abcdeF", 1_740_830_400, b"{}"));
    }
}
