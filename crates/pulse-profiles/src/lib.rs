//! Customer profiles (seed 001, PulseHub): the `profiles` processor reads `events.processed`
//! and turns identify, track, page, screen, alias and group calls into one profile per customer
//! and tenant — identities resolved and merged by the tenant's rules, every merge recorded with
//! its cause and undoable exactly, computed attributes kept in real time.
//!
//! * [`event`] reads what a canonical event says about a customer;
//! * [`model`] is the profile, whose attributes do not depend on the order events arrive in;
//! * [`resolve`] resolves a batch's identities in memory; [`engine`] loads, resolves, commits
//!   and refreshes the hot copy — the one way an event changes a profile;
//! * [`hot`] is the hot copy in the cache, [`ports`] the cold store;
//! * [`reconcile`] compares and repairs them; [`service`] is what the API and the CLI ask.
//!
//! Invariants: each event's effect is applied at most once per `event_id` (its applied mark
//! commits with the profile); a batch's profiles, identities, merges, archived events and
//! `profiles.updates` records commit together or not at all; the cold store is the truth and
//! the hot copy is derived from it. No I/O of its own: the store, the cache and the log come in
//! through ports.

pub mod engine;
pub mod event;
pub mod hot;
pub mod model;
pub mod ports;
pub mod processor;
pub mod reconcile;
pub mod resolve;
pub mod service;
pub mod settings;

use pulse_core::log::TopicSpec;

/// Profile changes for other teams' consumers (seed 001's `profile-updates`).
pub const PROFILE_UPDATES: TopicSpec = TopicSpec {
    name: "profiles.updates",
    carries: "pulse.v1.ProfileUpdated, keyed by profile id",
};

/// The topics the profiles declare.
pub const TOPICS: &[TopicSpec] = &[PROFILE_UPDATES];
