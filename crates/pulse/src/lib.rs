//! The Pulse binary's library half: CLI, layered configuration, and the wiring of adapters to
//! roles. `main.rs` only parses arguments and reports errors; everything testable lives here.
//!
//! Only this crate knows every adapter: it turns URLs into backends (`sqlite://`/`postgres://`,
//! `embedded`/`kafka://`, `memory://`/`redis://`) and hands them, as ports, to the roles.

pub mod app;
pub mod backends;
pub mod cli;
pub mod config;
pub mod profiles_cli;
pub mod telemetry;
pub mod wiring;

pub use app::Application;
pub use config::Config;
