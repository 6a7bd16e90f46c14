//! The `[gateway]` section of the configuration: the dedup window, the door's limits and the
//! tenants' pipelines in the seed's shape (`tenants: - id: … plugins: transform: [..] sinks:
//! [{name, config}]`), as `[[gateway.tenants]]` tables in TOML.

use std::time::Duration;

use pulse_core::TenantId;
use serde::{Deserialize, Serialize};

use crate::ingress::IngestLimits;
use crate::registry::{PipelineSpec, PluginsSpec, SpecError};

/// One tenant's pipeline in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPipelineConfig {
    /// The tenant.
    pub id: String,
    /// Its chain and sinks.
    pub plugins: PluginsSpec,
}

/// The gateway's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How long an event id or idempotency key is remembered, in hours (7 days).
    pub dedup_window_hours: u64,
    /// What the door accepts.
    pub limits: IngestLimits,
    /// How often parked events are looked at, in milliseconds.
    pub redeliver_interval_ms: u64,
    /// Longest a sink may take in the pipeline's own pass over a batch, in milliseconds; a
    /// slower sink's events are parked and delivered by the redeliverer with the sink's whole
    /// timeout, so one slow sink holds up the others for this long at most.
    pub inline_delivery_ms: u64,
    /// Pipelines per tenant (the admin API's stored ones win over these).
    pub tenants: Vec<TenantPipelineConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            dedup_window_hours: 168,
            limits: IngestLimits::default(),
            redeliver_interval_ms: 500,
            inline_delivery_ms: 2_000,
            tenants: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// The dedup window.
    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.dedup_window_hours.saturating_mul(3600))
    }

    /// Checks the values outside their types (pipelines are checked against the registry when
    /// the gateway starts).
    pub fn validate(&self) -> Result<(), String> {
        let limits = &self.limits;
        if self.inline_delivery_ms == 0 {
            return Err("gateway.inline_delivery_ms must be at least 1".into());
        }
        if self.dedup_window_hours == 0 {
            return Err("gateway.dedup_window_hours must be at least 1".into());
        }
        if limits.max_event_bytes == 0
            || limits.max_batch_bytes < limits.max_event_bytes
            || limits.max_batch_events == 0
            || limits.max_event_type_chars == 0
            || limits.max_id_chars == 0
        {
            return Err(
                "gateway.limits: every limit must be at least 1, and max_batch_bytes at \
                 least max_event_bytes"
                    .into(),
            );
        }
        if limits.max_batch_bytes > 1024 * 1024 {
            return Err(
                "gateway.limits.max_batch_bytes may be at most 1 MiB (the server's cap on \
                 every body)"
                    .into(),
            );
        }
        self.pipelines().map(|_| ()).map_err(|err| err.to_string())
    }

    /// The configured pipelines, their tenant ids checked.
    pub fn pipelines(&self) -> Result<Vec<(TenantId, PipelineSpec)>, SpecError> {
        self.tenants
            .iter()
            .enumerate()
            .map(|(index, tenant)| {
                let id = TenantId::parse(&tenant.id).map_err(|err| SpecError {
                    field: format!("gateway.tenants[{index}].id"),
                    message: err.to_string(),
                })?;
                Ok((
                    id,
                    PipelineSpec {
                        plugins: tenant.plugins.clone(),
                    },
                ))
            })
            .collect()
    }
}
