//! The transactional outbox every domain shares, and the relay that moves it to the log.
//!
//! A domain writes its business rows and its [`OutboxEvent`]s in **one** transaction (the SQL
//! store's unit of work offers one function for the outbox rows, whatever the domain), so an
//! event exists exactly when the change it announces was committed. The [`relay::Relay`] then
//! appends the rows to the topics they name and marks them sent only after the log acknowledged
//! them. Domains declare the topics they produce ([`pulse_core::log::TopicSpec`]); the binary creates the declared
//! topics at start-up, so a new domain adds topics without touching a central list.
//!
//! Invariants (checked by `pulse_conformance::outbox_suite!` on SQLite and PostgreSQL):
//! * a row is leased to one relay at a time; a crashed relay's lease lapses and its rows are
//!   claimed again (at-least-once: consumers deduplicate by event or aggregate id);
//! * an aggregate's event is never claimed while an earlier event of the same aggregate is
//!   pending, so events of one aggregate reach the log in the order they were written, whatever
//!   the number of relays;
//! * every record carries its event id, aggregate type, tenant (`pulse.tenant`) and the trace
//!   context of the request that wrote it.
//!
//! This crate does no I/O of its own: [`Outbox`] is the port `pulse-store` implements.

pub mod relay;

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::{PortResult, TenantId};
use uuid::Uuid;

/// A row of the outbox: an event waiting to be appended to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Event id.
    pub id: Uuid,
    /// The entity the event is about; also the log key, so its events stay in order.
    pub aggregate_id: Uuid,
    /// e.g. `ORDER`.
    pub aggregate_type: String,
    /// Destination topic (as the log names it, prefix included).
    pub topic: String,
    /// Encoded event (protobuf).
    pub payload: Bytes,
    /// When it was written, Unix milliseconds.
    pub created_at_ms: i64,
    /// The tenant whose data it is.
    pub tenant: TenantId,
    /// W3C `traceparent` of the request that wrote it (the trace its relay and consumers join).
    pub traceparent: Option<String>,
    /// W3C `tracestate` that came with it.
    pub tracestate: Option<String>,
}

impl OutboxEvent {
    /// An event about `aggregate_id` for `topic`, written now (`created_at_ms`) in the current
    /// trace, for the default tenant.
    pub fn new(
        topic: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: Uuid,
        payload: Bytes,
        created_at_ms: i64,
    ) -> Self {
        let trace = pulse_trace::TraceContext::current();
        Self {
            id: Uuid::now_v7(),
            aggregate_id,
            aggregate_type: aggregate_type.into(),
            topic: topic.into(),
            payload,
            created_at_ms,
            tenant: TenantId::default(),
            traceparent: trace.as_ref().map(|trace| trace.traceparent.clone()),
            tracestate: trace.and_then(|trace| trace.tracestate),
        }
    }

    /// The same event for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// The trace context the row was written in, if any.
    pub fn trace(&self) -> Option<pulse_trace::TraceContext> {
        let headers = [
            (pulse_trace::TRACEPARENT, self.traceparent.as_deref()),
            (pulse_trace::TRACESTATE, self.tracestate.as_deref()),
        ];
        pulse_trace::TraceContext::from_headers(|name| {
            headers
                .iter()
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| *value)
        })
    }
}

/// The outbox, as the relay sees it.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Leases up to `limit` pending events to `relay` for `lease_ms`, oldest first. An event is
    /// leased only if it is the oldest pending event of its aggregate and no live lease holds it,
    /// so a crashed relay's events are retried after the lease and never overtaken.
    async fn claim(
        &self,
        relay: &str,
        limit: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> PortResult<Vec<OutboxEvent>>;

    /// Marks events sent (after the log acknowledged them).
    async fn mark_sent(&self, ids: &[Uuid], now_ms: i64) -> PortResult<()>;

    /// Number of events not yet sent.
    async fn backlog(&self) -> PortResult<u64>;

    /// Deletes sent events older than `before_ms`; returns how many.
    async fn purge_sent(&self, before_ms: i64) -> PortResult<u64>;
}
