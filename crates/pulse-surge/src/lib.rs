//! Surge pricing domain: sliding windows of demand and supply per cell,
//! the multiplier `1 + min(2.5, demand / (supply × elasticity))`, and quotes priced with it.
//!
//! Everything goes through ports: the engine reads the log through [`pulse_core::log`] and keeps
//! its windows in the [`pulse_core::cache::Cache`], so a second engine instance or a restarted one
//! sees the same state and computes the same multipliers. Invariants:
//! * an order is counted once however often it is delivered (a `seen:order:{id}` guard applied
//!   atomically with the count);
//! * a driver counts for at most one cell: the one of its latest ping, while it is available and
//!   that ping is inside the window;
//! * offsets are committed only after the cache writes they caused;
//! * money is integer minor units.

pub mod config;
pub mod engine;
pub mod keys;
pub mod map;
pub mod pricing;
pub mod quotes;
mod value;

pub use value::SurgeValue;
