//! Guards that make a port safe to depend on from a hot path: a circuit breaker ([`breaker`]) and
//! a cache wrapper ([`cache::GuardedCache`]) that bounds every call with a timeout, measures it per
//! caller and operation, and refuses calls at once while its breaker is open.
//!
//! The quote path uses both: when Redis is down or hung, quotes fall back to 1.0 in microseconds
//! instead of waiting out one timeout per request, and a single probe per pause finds out when
//! Redis is back.

pub mod breaker;
pub mod cache;

pub use breaker::{Breaker, BreakerConfig, BreakerSettings, BreakerState};
pub use cache::GuardedCache;
