//! The `[jobs]` section: the control plane's limits, the worker's settings, retention, and the
//! tenants' weights in the fair share.

use std::collections::BTreeMap;
use std::time::Duration;

use pulse_core::TenantId;
use serde::{Deserialize, Serialize};

use crate::retry::Backoff;
use crate::service::JobLimits;
use crate::worker::{Retention, WorkerSettings};

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Payload, batch, attempt and timeout limits and defaults (`[jobs.limits]`).
    pub limits: JobLimits,
    /// Largest request body of the jobs API, bytes (a batch).
    pub max_body_bytes: usize,
    /// The worker (`[jobs.worker]`).
    pub worker: WorkerConfig,
    /// How long a process trusts what it read of a stored handler, ms: a handler registered or
    /// changed on one process reaches every worker within it.
    pub handler_refresh_ms: u64,
    /// Hours a succeeded or cancelled job is kept.
    pub retention_hours: u64,
    /// Hours a dead job is kept.
    pub dead_retention_hours: u64,
    /// Tenants' weights in the fair share of every lease (absent: 1).
    pub tenant_weights: BTreeMap<String, u32>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            limits: JobLimits::default(),
            max_body_bytes: 1024 * 1024,
            worker: WorkerConfig::default(),
            handler_refresh_ms: 2_000,
            retention_hours: 24,
            dead_retention_hours: 168,
            tenant_weights: BTreeMap::new(),
        }
    }
}

/// The `[jobs.worker]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Most attempts running at once in one worker process.
    pub concurrency: u32,
    /// Most attempts of one tenant running at once in one worker (unset: `concurrency`).
    pub tenant_concurrency: Option<u32>,
    /// Most jobs one lease takes.
    pub lease_batch: u32,
    /// How long a lease holds without a heartbeat, ms (heartbeats come every third of it).
    pub visibility_ms: u64,
    /// How long a worker that found nothing waits before asking again, ms, doubling up to
    /// `idle_poll_max_ms` while it keeps finding nothing (an enqueue it hears of wakes it at once).
    pub poll_interval_ms: u64,
    /// The longest idle wait, ms: what a job enqueued where this worker cannot hear of it (with
    /// SQLite, by another process) may wait at most.
    pub idle_poll_max_ms: u64,
    /// How long running attempts may finish on shutdown before they are handed back, ms.
    pub drain_timeout_ms: u64,
    /// The retry backoff of job types whose handler sets none.
    pub backoff: Backoff,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            tenant_concurrency: None,
            lease_batch: 100,
            visibility_ms: 30_000,
            poll_interval_ms: 50,
            idle_poll_max_ms: 1_000,
            drain_timeout_ms: 5_000,
            backoff: Backoff::default(),
        }
    }
}

impl JobsConfig {
    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let worker = &self.worker;
        if worker.concurrency == 0 || worker.lease_batch == 0 {
            return Err(
                "jobs.worker.concurrency and jobs.worker.lease_batch must be positive".into(),
            );
        }
        if worker.tenant_concurrency == Some(0) {
            return Err("jobs.worker.tenant_concurrency must be positive when set".into());
        }
        if worker.visibility_ms < 1_000 {
            return Err("jobs.worker.visibility_ms must be at least 1000".into());
        }
        if worker.drain_timeout_ms >= worker.visibility_ms {
            return Err(
                "jobs.worker.drain_timeout_ms must be below jobs.worker.visibility_ms (a draining \
                 worker does not heartbeat)"
                    .into(),
            );
        }
        if worker.poll_interval_ms == 0 || worker.idle_poll_max_ms < worker.poll_interval_ms {
            return Err(
                "jobs.worker.poll_interval_ms must be positive, and at most jobs.worker.idle_poll_max_ms"
                    .into(),
            );
        }
        worker
            .backoff
            .validate()
            .map_err(|err| format!("jobs.worker.{err}"))?;
        let limits = &self.limits;
        if limits.max_batch == 0 || limits.max_payload_bytes == 0 || self.max_body_bytes == 0 {
            return Err(
                "jobs.limits.max_batch, jobs.limits.max_payload_bytes and jobs.max_body_bytes \
                 must be positive"
                    .into(),
            );
        }
        if !(1..=limits.max_attempts).contains(&limits.default_max_attempts) {
            return Err(
                "jobs.limits.default_max_attempts must be 1 to jobs.limits.max_attempts".into(),
            );
        }
        if !(1..=limits.max_timeout_ms).contains(&limits.default_timeout_ms) {
            return Err(
                "jobs.limits.default_timeout_ms must be 1 to jobs.limits.max_timeout_ms".into(),
            );
        }
        for (tenant, weight) in &self.tenant_weights {
            TenantId::parse(tenant).map_err(|err| format!("jobs.tenant_weights: {err}"))?;
            if *weight == 0 || *weight > 1_000 {
                return Err(format!("jobs.tenant_weights.{tenant} must be 1 to 1000"));
            }
        }
        Ok(())
    }

    /// The worker's settings, under the name `id`.
    pub fn worker_settings(&self, id: String) -> WorkerSettings {
        let worker = &self.worker;
        WorkerSettings {
            id,
            concurrency: worker.concurrency,
            tenant_concurrency: worker.tenant_concurrency,
            lease_batch: worker.lease_batch,
            visibility: Duration::from_millis(worker.visibility_ms),
            poll_interval: Duration::from_millis(worker.poll_interval_ms),
            idle_poll_max: Duration::from_millis(worker.idle_poll_max_ms),
            drain_timeout: Duration::from_millis(worker.drain_timeout_ms),
            retention: Retention {
                finished: Duration::from_secs(self.retention_hours * 3_600),
                dead: Duration::from_secs(self.dead_retention_hours * 3_600),
            },
            weights: self
                .tenant_weights
                .iter()
                .filter_map(|(tenant, weight)| Some((TenantId::parse(tenant).ok()?, *weight)))
                .collect(),
            backoff: worker.backoff,
            ..WorkerSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_are_refused_by_key() {
        assert_eq!(JobsConfig::default().validate(), Ok(()));
        let refused = |config: JobsConfig, key: &str| {
            let err = config.validate().unwrap_err();
            assert!(err.contains(key), "{err}");
        };
        let mut zero = JobsConfig::default();
        zero.worker.concurrency = 0;
        refused(zero, "jobs.worker.concurrency");
        let mut drain = JobsConfig::default();
        drain.worker.drain_timeout_ms = 60_000;
        refused(drain, "drain_timeout_ms");
        let mut weights = JobsConfig::default();
        weights.tenant_weights.insert("Not A Tenant".into(), 2);
        refused(weights, "jobs.tenant_weights");
    }
}
