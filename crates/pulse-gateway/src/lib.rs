//! The event gateway's core (seed 003, PulseGate): events in from any adapter as one
//! [`envelope::CanonicalEvent`], made durable on `events.ingest` before anyone is told
//! "accepted", de-duplicated exactly per tenant, run through the tenant's pipeline by the
//! `pipeline` processor, and delivered to its sinks — or parked for a retry, or dead-lettered
//! with their reason, never silently lost.
//!
//! * [`ingress`] reads the seed's flat body and the Segment calls, within [`ingress::IngestLimits`];
//! * [`ingest::IngestService`] gives ids, checks the dedup window and appends;
//! * [`plugin`] has the seed's `TransformPlugin` / `SinkPlugin`, [`registry`] the typed
//!   registry and the tenant pipeline spec, [`book`] which pipeline each tenant runs;
//! * [`pipeline`] is the processor and the redeliverer of parked events;
//! * [`dead_letters`] lists and redrives dead letters.
//!
//! No I/O of its own: the log, the store and the sinks come in through ports ([`ports`],
//! `pulse_core::log`, and the sinks of `pulse-sinks`). Invariants:
//! * an event is acknowledged only after its append returned;
//! * a dedup key is recorded only after its event's append;
//! * an offset of `events.ingest` is committed only once each of the tenant's sinks took the
//!   event, or it is parked, or dead-lettered.

pub mod book;
pub mod config;
pub mod dead_letters;
pub mod envelope;
pub mod ingest;
pub mod ingress;
pub mod pipeline;
pub mod plugin;
pub mod ports;
pub mod registry;
pub mod time;
pub mod useragent;
pub mod write_behind;

/// The topics the gateway declares.
pub const TOPICS: &[pulse_core::log::TopicSpec] = &[ingest::INGEST, pipeline::PROCESSED];
