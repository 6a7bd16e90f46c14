//! Tenants, API keys and scopes: who a request is, decided by the key it presents.
//!
//! * A tenant id is chosen by the operator (`[a-z0-9_-]{1,32}`); `default` is reserved for the
//!   tenant `pulse up` creates on an empty store and for every record written before tenants
//!   existed.
//! * An API key reads `pk_<key id>_<secret>`: the key id (12 of `[a-z0-9]`) finds the stored key,
//!   the secret is 160 random bits from the operating system. The key is shown once, when it is
//!   created; the store keeps only its SHA-256 (a key is high-entropy, so a slow hash buys
//!   nothing), compared in constant time.
//! * A key has a [`Scope`]: `full` opens every route of its tenant, `ingest` only the event-ingest
//!   routes (the key a mobile app or a web page ships).
//! * A revoked key stops working on every process within the [`Authenticator`]'s cache TTL;
//!   rotation is "create the new key, deploy it, revoke the old one": both work in between.
//!
//! The crate defines its port ([`TenantStore`]); `pulse-store` implements it on SQL.

mod auth;
pub mod config;
mod key;
mod model;
mod ports;
mod service;

pub use auth::{AuthError, Authenticator, AuthenticatorSettings, Principal};
pub use key::{AdminToken, ApiKey, InvalidKeyId, KeyId, KEY_PREFIX, MIN_ADMIN_TOKEN_CHARS};
pub use model::{
    KeyRecord, QuotaClass, QuotaSetting, Scope, Tenant, TenantQuotas, MAX_QUOTA_PER_SECOND,
};
pub use ports::TenantStore;
pub use service::{IssuedKey, TenantError, Tenants};
