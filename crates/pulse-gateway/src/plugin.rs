//! The plugin interfaces of the seed (`TransformPlugin`, `SinkPlugin`), in Rust.
//!
//! A plugin has a name and a version, is built from its JSON config by a factory of the
//! [`crate::registry::PluginRegistry`] (the seed's `init(config)`), and is called with a
//! [`PluginContext`] (tenant, clock, the trace, its metrics, and the versions of the plugins
//! that touched the event so far). Outcomes are the seed's: a transform answers ok / drop / error
//! (retryable or not), a sink ok / retry / error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::clock::SharedClock;
use pulse_core::TenantId;
use pulse_trace::TraceContext;

use crate::envelope::CanonicalEvent;

/// A plugin's name and version, as recorded with every event it touched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// Registry name, e.g. `postgres_sink`.
    pub name: &'static str,
    /// Semantic version of the plugin's behaviour.
    pub version: &'static str,
}

/// What a plugin call knows besides the event.
#[derive(Debug, Clone)]
pub struct PluginContext {
    /// Whose event it is.
    pub tenant: TenantId,
    /// Time, for anything a plugin stamps.
    pub clock: SharedClock,
    /// The trace the event belongs to, when it has one.
    pub trace: Option<TraceContext>,
    /// The plugins that touched the event so far, in order (the transforms, then this sink).
    pub plugins: Arc<[PluginInfo]>,
}

impl PluginContext {
    /// A counter of the calling plugin's own, labelled with the tenant and the plugin (bounded:
    /// tenants are the operator's, plugins the registry's), e.g.
    /// `ctx.counter("geoip_enricher", "pulse_plugin_lookups_total")`.
    pub fn counter(&self, plugin: &'static str, name: &'static str) -> metrics::Counter {
        metrics::counter!(name, "tenant" => self.tenant.to_string(), "plugin" => plugin)
    }

    /// The plugin versions as one JSON object `{"name": "version", …}`.
    pub fn versions_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .plugins
            .iter()
            .map(|info| (info.name.to_owned(), info.version.into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}

/// What a transform did with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum TransformOutcome {
    /// Go on with this (possibly changed) event.
    Ok(CanonicalEvent),
    /// Stop here on purpose (a bot, a filtered type): counted by plugin, never delivered.
    Drop {
        /// Why, for logs.
        reason: String,
    },
    /// It failed: a retryable error retries the batch, any other dead-letters the event.
    Error {
        /// Why.
        reason: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
}

/// One step of a tenant's transform chain.
#[async_trait]
pub trait TransformPlugin: Send + Sync + std::fmt::Debug {
    /// Name and version.
    fn info(&self) -> PluginInfo;

    /// Transforms one event.
    async fn process(&self, event: CanonicalEvent, ctx: &PluginContext) -> TransformOutcome;
}

/// What a sink did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOutcome {
    /// Taken for good.
    Ok,
    /// Not now (the target is down, slow or throttling): try again later.
    Retry {
        /// Why.
        reason: String,
    },
    /// Refused for good (the target said the event is bad): dead-letter it.
    Error {
        /// Why.
        reason: String,
    },
}

/// A destination of a tenant's events.
#[async_trait]
pub trait SinkPlugin: Send + Sync + std::fmt::Debug {
    /// Name and version.
    fn info(&self) -> PluginInfo;

    /// Whether delivering the same event twice leaves one copy at the destination (a unique key
    /// there). The pipeline keeps a delivery record for every sink that is not, so a redelivered
    /// or replayed event reaches it once.
    fn idempotent(&self) -> bool {
        false
    }

    /// Longest one [`SinkPlugin::send_batch`] may take; past it the events are parked for retry.
    fn budget(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Delivers one event.
    async fn send(&self, event: &CanonicalEvent, ctx: &PluginContext) -> SinkOutcome;

    /// Delivers events of one tenant (in order), one outcome each. The default sends them one
    /// by one, stopping at the first retry (the rest wait with it, so order holds).
    async fn send_batch(&self, events: &[CanonicalEvent], ctx: &PluginContext) -> Vec<SinkOutcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let outcome = self.send(event, ctx).await;
            let stop = matches!(outcome, SinkOutcome::Retry { .. });
            outcomes.push(outcome.clone());
            if stop {
                outcomes.resize(events.len(), outcome);
                break;
            }
        }
        outcomes
    }
}
