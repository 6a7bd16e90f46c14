//! Guards that make a port safe to depend on from a hot path: a circuit breaker ([`breaker`]) and
//! a cache wrapper ([`cache::GuardedCache`]) that bounds every call with a timeout, measures it per
//! caller and operation, and refuses calls at once while its breaker is open; and a rate limiter
//! that fails open ([`rate_limit::FailOpenRateLimiter`]): a local limiter answers while the
//! shared one cannot.
//!
//! The quote path uses both: when Redis is down or hung, quotes fall back to 1.0 in microseconds
//! instead of waiting out one timeout per request, and a single probe per pause finds out when
//! Redis is back.

pub mod breaker;
pub mod cache;
pub mod leased;
pub mod rate_limit;

pub use breaker::{Breaker, BreakerConfig, BreakerSettings, BreakerState};
pub use cache::GuardedCache;
pub use leased::LeasedRateLimiter;
pub use rate_limit::FailOpenRateLimiter;
