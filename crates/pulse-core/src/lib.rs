//! Domain-free core of Pulse.
//!
//! This crate defines the *ports* every other crate talks through — the event log
//! ([`log::EventLog`]), the cache/state store ([`cache::Cache`]), where drivers are
//! ([`geo_index::GeoIndex`]), per-key quotas
//! ([`rate_limit::RateLimiter`]) and time ([`clock::Clock`]) — plus
//! the error type they share and the [`TenantId`] every per-tenant port stores. It performs no I/O of its own: adapters (embedded log, Kafka, Redis,
//! in-process memory) implement these traits, domain crates consume them, and only the `pulse`
//! binary wires one to the other.
//!
//! Invariants every adapter must honour (checked by `pulse-conformance`):
//! * an append returns only once the records are durable;
//! * records with the same key keep their order within a topic;
//! * a consumer group resumes from the last *committed* position and commits only when told;
//! * cache entries with a TTL are never returned after they expired;
//! * a geo index never returns a driver older than the search allows, and ignores an update
//!   not newer than the one it holds;
//! * a rate limiter runs GCRA exactly as [`rate_limit::decide`] does, and a denied call spends
//!   nothing.

pub mod cache;
pub mod clock;
pub mod error;
pub mod geo_index;
pub mod health;
pub mod log;
pub mod money;
pub mod rate_limit;
pub mod retry;
pub mod tenant;
pub mod time;

pub use error::{PortError, PortResult};
pub use money::{Currency, Money};
pub use tenant::TenantId;
pub use time::UnixMillis;
