//! The tenant a piece of data belongs to.

use std::fmt;
use std::str::FromStr;

/// Longest tenant id.
pub const MAX_TENANT_CHARS: usize = 32;

/// A tenant id: 1 to 32 of `[a-z0-9_-]`. [`TenantId::DEFAULT`] (`default`) is the tenant of
/// everything written before tenants existed and of every record without a `pulse.tenant`
/// header; it is reserved, so no API creates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a tenant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant id {0:?} must be 1 to {MAX_TENANT_CHARS} characters of a-z, 0-9, '_' or '-'")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// The name of the default tenant.
    pub const DEFAULT: &'static str = "default";

    /// The default tenant.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_TENANT_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidTenantId(raw.to_owned()))
        }
    }

    /// The tenant a record header names: absent means [`TenantId::DEFAULT`].
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, InvalidTenantId> {
        match value {
            None => Ok(Self::default_tenant()),
            Some(raw) => Self::parse(std::str::from_utf8(raw).unwrap_or("\u{fffd}")),
        }
    }

    /// What goes before every cache and rate-limit key of this tenant (after the deployment's
    /// prefix): nothing for the default tenant, which keeps the seed's layout (`surge:{h3}`),
    /// `t:{tenant_id}:` for every other. The one function that namespaces keys per tenant;
    /// tenant ids have no `:`, so no tenant's keys can alias another's.
    pub fn key_namespace(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            format!("t:{}:", self.0)
        }
    }

    /// Whether this is the reserved default tenant.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

/// The record header that names a record's tenant.
pub const TENANT_HEADER: &str = "pulse.tenant";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_1_to_32_of_lowercase_digits_underscore_dash() {
        let longest = "a".repeat(MAX_TENANT_CHARS);
        for good in ["default", "acme", "a-b_c9", longest.as_str()] {
            assert_eq!(TenantId::parse(good).expect("valid").as_str(), good);
        }
        let too_long = "a".repeat(MAX_TENANT_CHARS + 1);
        for bad in ["", "Acme", "a b", "a.b", "é", too_long.as_str()] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn a_record_without_a_tenant_header_belongs_to_the_default_tenant() {
        assert!(TenantId::from_header(None).expect("absent").is_default());
        assert_eq!(
            TenantId::from_header(Some(b"acme"))
                .expect("named")
                .as_str(),
            "acme"
        );
        assert!(TenantId::from_header(Some(b"\xff")).is_err());
    }
}
