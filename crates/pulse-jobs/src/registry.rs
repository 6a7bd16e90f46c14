//! Which handler runs a job: in-process [`JobHandler`]s registered at build time (for every
//! tenant), then each tenant's HTTP handlers registered through the API and kept in a
//! [`HandlerStore`], so every process knows them. A stored handler is re-read after
//! [`HandlerRegistry`]'s refresh interval, so a change made on one process reaches every worker
//! within it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulse_core::{PortResult, TenantId};
use pulse_trace::TraceContext;

use crate::model::{Lease, StoredHandler};
use crate::ports::HandlerStore;
use crate::retry::HandlerPolicy;

/// Job types starting with this are Pulse's own (in-process); a tenant cannot register one.
pub const RESERVED_PREFIX: &str = "pulse.";

/// The built-in job type that does nothing: what benchmarks and smoke tests run.
pub const NOOP: &str = "pulse.noop";

/// What a handler is given for one attempt.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job as leased (its payload, its attempt number, its fencing token).
    pub lease: Lease,
    /// The attempt's trace context (a child of the enqueue's).
    pub trace: Option<TraceContext>,
    /// How long the attempt may take; past it, the handler's future is dropped.
    pub timeout: Duration,
    /// The worker's clock reading when the attempt started, Unix ms.
    pub now_ms: i64,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Done; `result` is kept with the job.
    Succeeded {
        /// The handler's answer.
        result: Option<Vec<u8>>,
    },
    /// Failed; retried per the job type's backoff while attempts remain.
    Retry {
        /// Why.
        error: String,
    },
    /// Failed for good: the job is dead at once.
    Fail {
        /// Why.
        error: String,
    },
}

/// A job type's code. Runs an attempt; must not panic (a panic counts as a failed attempt).
#[async_trait]
pub trait JobHandler: Send + Sync + std::fmt::Debug {
    /// Runs one attempt of `job`.
    async fn run(&self, job: &JobContext) -> HandlerOutcome;
}

/// [`NOOP`]: succeeds at once, with no result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[async_trait]
impl JobHandler for Noop {
    async fn run(&self, _job: &JobContext) -> HandlerOutcome {
        HandlerOutcome::Succeeded { result: None }
    }
}

/// Builds the handler of a tenant's stored registration (the HTTP handlers of `pulse-job-http`),
/// and checks a registration's URL before it is stored: the I/O of handlers stays in an adapter.
pub trait HandlerFactory: Send + Sync + std::fmt::Debug {
    /// Why `url` cannot be registered, if it cannot.
    fn check_url(&self, url: &str) -> Result<(), String>;

    /// The handler `stored` describes, or why this process cannot call it.
    fn build(&self, stored: &StoredHandler) -> Result<Arc<dyn JobHandler>, String>;
}

/// A handler found for a job: its code and its policy.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its code.
    pub handler: Arc<dyn JobHandler>,
    /// Its policy.
    pub policy: HandlerPolicy,
    /// Where it came from: `builtin` or `http`.
    pub kind: &'static str,
}

#[derive(Debug)]
struct Cached {
    resolved: Option<Arc<Resolved>>,
    read_at: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub struct HandlerRegistry {
    builtin: HashMap<String, Arc<Resolved>>,
    store: Arc<dyn HandlerStore>,
    factory: Arc<dyn HandlerFactory>,
    refresh: Duration,
    stored: RwLock<HashMap<(TenantId, String), Cached>>,
}

impl HandlerRegistry {
    /// A registry with [`NOOP`] built in, reading tenants' handlers from `store` (re-read after
    /// `refresh`) and building them with `factory`.
    pub fn new(
        store: Arc<dyn HandlerStore>,
        factory: Arc<dyn HandlerFactory>,
        refresh: Duration,
    ) -> Self {
        let mut registry = Self {
            builtin: HashMap::new(),
            store,
            factory,
            refresh,
            stored: RwLock::default(),
        };
        registry.register(NOOP, Arc::new(Noop), HandlerPolicy::default());
        registry
    }

    /// Registers an in-process handler of `job_type` for every tenant, at build time.
    pub fn register(
        &mut self,
        job_type: &str,
        handler: Arc<dyn JobHandler>,
        policy: HandlerPolicy,
    ) -> &mut Self {
        self.builtin.insert(
            job_type.to_owned(),
            Arc::new(Resolved {
                handler,
                policy,
                kind: "builtin",
            }),
        );
        self
    }

    /// Why a tenant's handler at `url` cannot be registered, if it cannot.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        self.factory.check_url(url)
    }

    /// Whether `job_type` is built in.
    pub fn is_builtin(&self, job_type: &str) -> bool {
        self.builtin.contains_key(job_type)
    }

    /// The handler of `tenant`'s `job_type`, if there is one.
    pub async fn resolve(
        &self,
        tenant: &TenantId,
        job_type: &str,
    ) -> PortResult<Option<Arc<Resolved>>> {
        if let Some(builtin) = self.builtin.get(job_type) {
            return Ok(Some(builtin.clone()));
        }
        let key = (tenant.clone(), job_type.to_owned());
        if let Some(cached) = self
            .stored
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .filter(|cached| cached.read_at.elapsed() < self.refresh)
        {
            return Ok(cached.resolved.clone());
        }
        let stored = self.store.handler(tenant, job_type).await?;
        let resolved = stored.as_ref().map(|stored| self.build(stored));
        self.stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                key,
                Cached {
                    resolved: resolved.clone(),
                    read_at: Instant::now(),
                },
            );
        Ok(resolved)
    }

    /// Forgets what is cached of `tenant`'s `job_type` (the process that changed it reads it
    /// again at once).
    pub fn forget(&self, tenant: &TenantId, job_type: &str) {
        self.stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(tenant.clone(), job_type.to_owned()));
    }

    fn build(&self, stored: &StoredHandler) -> Arc<Resolved> {
        let policy: HandlerPolicy = serde_json::from_str(&stored.policy).unwrap_or_else(|err| {
            tracing::warn!(tenant = %stored.tenant, job_type = %stored.job_type, error = %err,
                "a stored handler policy does not parse; using the defaults");
            HandlerPolicy::default()
        });
        let handler: Arc<dyn JobHandler> = match self.factory.build(stored) {
            Ok(handler) => handler,
            Err(reason) => Arc::new(Unusable { reason }),
        };
        Arc::new(Resolved {
            handler,
            policy,
            kind: "http",
        })
    }
}

/// A stored handler this process cannot call (its URL was valid under another process's
/// outbound policy): every attempt fails for good, saying why.
#[derive(Debug)]
struct Unusable {
    reason: String,
}

#[async_trait]
impl JobHandler for Unusable {
    async fn run(&self, _job: &JobContext) -> HandlerOutcome {
        HandlerOutcome::Fail {
            error: format!("the registered handler cannot be called: {}", self.reason),
        }
    }
}
