//! Which pipeline each tenant runs: stored ones (the admin API, versioned) over configured ones
//! (the config file) over the default (`postgres_sink` into `events_raw`), rebuilt when a
//! stored version changes, so every process picks a change up within one refresh interval.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pulse_core::{PortResult, TenantId};
use tokio::sync::Mutex;

use crate::ports::PipelineStore;
use crate::registry::{default_spec, BuiltPipeline, PipelineSpec, PluginRegistry, SpecError};

/// How often the stored pipelines are read again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Where a tenant's pipeline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineOrigin {
    /// Stored through the admin API.
    Stored,
    /// The config file's `gateway.tenants`.
    Configured,
    /// Nothing configured: the default.
    Default,
}

/// Why a pipeline was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutPipelineError {
    /// It does not build: the field and why.
    #[error("invalid pipeline: {0}")]
    Invalid(SpecError),
    /// The store did not answer.
    #[error(transparent)]
    Backend(pulse_core::PortError),
}

/// A tenant's pipeline as it runs.
#[derive(Debug, Clone)]
pub struct ActivePipeline {
    /// Built.
    pub built: Arc<BuiltPipeline>,
    /// Stored version (0 when not stored).
    pub version: i64,
    /// Where it comes from.
    pub origin: PipelineOrigin,
}

/// The pipelines of every tenant, shared by the pipeline processor and the redeliverer.
#[derive(Debug, Clone)]
pub struct PipelineBook {
    registry: Arc<PluginRegistry>,
    store: Arc<dyn PipelineStore>,
    configured: Arc<HashMap<TenantId, ActivePipeline>>,
    default: ActivePipeline,
    stored: Arc<RwLock<HashMap<TenantId, ActivePipeline>>>,
    last_refresh: Arc<Mutex<Option<Instant>>>,
}

impl PipelineBook {
    /// A book over `store`, with the config file's pipelines; fails naming the first bad one.
    pub fn new(
        registry: Arc<PluginRegistry>,
        store: Arc<dyn PipelineStore>,
        configured: &[(TenantId, PipelineSpec)],
    ) -> Result<Self, SpecError> {
        let mut built = HashMap::new();
        for (tenant, spec) in configured {
            let pipeline = registry.build(spec).map_err(|err| SpecError {
                field: format!("gateway.tenants[{tenant}].{}", err.field),
                message: err.message,
            })?;
            built.insert(
                tenant.clone(),
                ActivePipeline {
                    built: Arc::new(pipeline),
                    version: 0,
                    origin: PipelineOrigin::Configured,
                },
            );
        }
        let default = ActivePipeline {
            built: Arc::new(registry.build(&default_spec())?),
            version: 0,
            origin: PipelineOrigin::Default,
        };
        Ok(Self {
            registry,
            store,
            configured: Arc::new(built),
            default,
            stored: Arc::default(),
            last_refresh: Arc::default(),
        })
    }

    /// The registry pipelines are built with (the admin API validates with it).
    pub fn registry(&self) -> &PluginRegistry {
        &self.registry
    }

    /// The pipeline `tenant` runs now.
    pub fn get(&self, tenant: &TenantId) -> ActivePipeline {
        if let Some(stored) = self
            .stored
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(tenant)
        {
            return stored.clone();
        }
        self.configured
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// Validates `json` as `tenant`'s pipeline and stores it as its next version, which this
    /// process runs at once and every other within [`REFRESH_INTERVAL`].
    pub async fn put(
        &self,
        tenant: &TenantId,
        json: &serde_json::Value,
        at_ms: i64,
    ) -> Result<ActivePipeline, PutPipelineError> {
        self.registry
            .parse(json)
            .map_err(PutPipelineError::Invalid)?;
        self.store
            .put_pipeline(tenant, json, at_ms)
            .await
            .map_err(PutPipelineError::Backend)?;
        self.refresh(true)
            .await
            .map_err(PutPipelineError::Backend)?;
        Ok(self.get(tenant))
    }

    /// Reads the stored pipelines again when the last read is older than `REFRESH_INTERVAL`
    /// (or `force`), rebuilding the ones whose version changed.
    pub async fn refresh(&self, force: bool) -> PortResult<()> {
        let mut last = self.last_refresh.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        let current = self.store.current_pipelines().await?;
        *last = Some(Instant::now());
        let known: HashMap<TenantId, i64> = self
            .stored
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(tenant, active)| (tenant.clone(), active.version))
            .collect();
        let mut next = HashMap::new();
        for stored in current {
            if known.get(&stored.tenant) == Some(&stored.version) {
                if let Some(active) = self
                    .stored
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get(&stored.tenant)
                {
                    next.insert(stored.tenant.clone(), active.clone());
                }
                continue;
            }
            match self.registry.parse(&stored.spec) {
                Ok(built) => {
                    tracing::info!(tenant = %stored.tenant, version = stored.version, "pipeline changed; running the new version");
                    next.insert(
                        stored.tenant.clone(),
                        ActivePipeline {
                            built: Arc::new(built),
                            version: stored.version,
                            origin: PipelineOrigin::Stored,
                        },
                    );
                }
                Err(err) => {
                    // Validated when stored; a plugin this build lacks keeps the last good one.
                    tracing::error!(tenant = %stored.tenant, version = stored.version, error = %err, "stored pipeline does not build here; keeping the previous one");
                    if let Some(active) = self
                        .stored
                        .read()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get(&stored.tenant)
                    {
                        next.insert(stored.tenant.clone(), active.clone());
                    }
                }
            }
        }
        *self
            .stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        Ok(())
    }
}
