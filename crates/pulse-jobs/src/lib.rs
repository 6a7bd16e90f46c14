//! Background jobs (seed 002): a control plane that validates, de-duplicates and enqueues
//! ([`service`]); workers that lease jobs fairly across tenants and run them through handlers
//! registered by job type, with timeouts, retries with backoff, dead jobs and graceful shutdown
//! ([`worker`]); and the ports they share ([`ports`]).
//!
//! * The queue is a port of its own, not the event log: a slow job must not hold a partition,
//!   and jobs need visibility timeouts, delays and single-job cancels. Every lease carries a
//!   fencing token ([`model::Lease`]) that every later update names.
//! * Handlers are in-process [`registry::JobHandler`]s registered at build time, or a tenant's
//!   stored handlers, built by a [`registry::HandlerFactory`] (the HTTP handlers of
//!   `pulse-job-http`, signed, private targets refused). No I/O of its own: only its ports.
//! * The payload is opaque: never parsed, only bounded.

pub mod config;
pub mod fair;
pub mod model;
pub mod ports;
pub mod registry;
pub mod retry;
pub mod service;
pub mod slots;
pub mod wake;
pub mod worker;

/// Jobs enqueued, by tenant and job type.
pub const ENQUEUED_TOTAL: &str = "pulse_jobs_enqueued_total";
/// Attempts started, by tenant and job type.
pub const STARTED_TOTAL: &str = "pulse_jobs_started_total";
/// Attempts that succeeded, by tenant and job type.
pub const SUCCEEDED_TOTAL: &str = "pulse_jobs_succeeded_total";
/// Attempts that failed (retried or not), by tenant and job type.
pub const FAILED_TOTAL: &str = "pulse_jobs_failed_total";
/// Jobs that died (out of attempts, or failed for good), by tenant and job type.
pub const DEAD_TOTAL: &str = "pulse_jobs_dead_total";
/// From ready (`run_at`, or enqueue) to the attempt's start, by tenant.
pub const WAIT_SECONDS: &str = "pulse_jobs_wait_seconds";
/// One attempt's run time, by tenant and job type.
pub const RUN_SECONDS: &str = "pulse_jobs_run_seconds";
/// Jobs ready to run, per tenant and queue.
pub const QUEUE_DEPTH: &str = "pulse_jobs_queue_depth";
/// Jobs waiting for their time (scheduled or retrying later), per tenant and queue.
pub const QUEUE_WAITING: &str = "pulse_jobs_queue_waiting";
/// Age of the oldest ready job, per tenant and queue.
pub const OLDEST_READY_SECONDS: &str = "pulse_jobs_oldest_ready_seconds";
/// Leases a heartbeat found gone (cancelled, or rescued after lapsing).
pub const LEASES_LOST_TOTAL: &str = "pulse_jobs_leases_lost_total";
/// Outcomes refused because the lease was no longer the worker's (its fencing token).
pub const OUTCOMES_REFUSED_TOTAL: &str = "pulse_jobs_outcomes_refused_total";
/// Jobs rescued after their worker's lease lapsed.
pub const RESCUED_TOTAL: &str = "pulse_jobs_rescued_total";
