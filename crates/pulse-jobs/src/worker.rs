//! The data plane: a worker leases jobs in batches (a fair share per tenant), runs each through
//! its handler under its timeout and the concurrency caps, heartbeats the leases it holds,
//! records outcomes in batches, rescues leases other workers let lapse, and on shutdown stops
//! leasing, lets running attempts finish within the drain timeout and hands the rest back.
//!
//! Invariants:
//! * an outcome is recorded only under the lease's fencing token: a worker whose lease lapsed
//!   (it hung, or was partitioned away) cannot complete or fail a job someone else now runs;
//! * a lease that is lost (a heartbeat finds it gone: cancelled, or rescued) stops its attempt;
//! * nothing is lost if a worker dies: its leases lapse and any worker rescues them (the attempt
//!   counts as failed, with the worker named), so the job runs again.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pulse_core::clock::SharedClock;
use pulse_core::{PortError, TenantId};
use pulse_trace::TraceContext;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::model::{Completion, Failure, Lease, LeaseRef, LeaseRequest};
use crate::ports::{JobBook, JobQueue};
use crate::registry::{HandlerOutcome, HandlerRegistry, JobContext, Resolved};
use crate::retry::Backoff;
use crate::slots::FairSlots;
use crate::wake::Wakeup;

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Succeeded and cancelled jobs, after they finished.
    pub finished: Duration,
    /// Dead jobs, after they died.
    pub dead: Duration,
}

/// A worker's settings (the `[jobs.worker]` section, and the process's id).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// This worker's name in `locked_by` (unique per process).
    pub id: String,
    /// Most attempts running at once (the worker holds a lease's worth more, waiting for a slot).
    pub concurrency: u32,
    /// Most attempts of one tenant running at once (`None`: `concurrency`).
    pub tenant_concurrency: Option<u32>,
    /// Most jobs one lease takes.
    pub lease_batch: u32,
    /// How long a lease holds without a heartbeat; heartbeats come every third of it.
    pub visibility: Duration,
    /// How long a worker that found nothing waits before asking again, doubling while it finds
    /// nothing up to `idle_poll_max` (an enqueue it hears of wakes it at once; see [`Wakeup`]).
    pub poll_interval: Duration,
    /// The longest idle wait.
    pub idle_poll_max: Duration,
    /// How long running attempts may take to finish on shutdown before they are handed back.
    pub drain_timeout: Duration,
    /// Most outcomes recorded in one write.
    pub flush_max: usize,
    /// How often lapsed leases are looked for.
    pub rescue_interval: Duration,
    /// How often queue depths are published as metrics.
    pub depth_interval: Duration,
    /// How long finished jobs are kept, and how often they are purged.
    pub retention: Retention,
    /// Tenants' weights in the fair share (absent: 1).
    pub weights: HashMap<TenantId, u32>,
    /// The retry backoff of job types whose handler sets none.
    pub backoff: Backoff,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", Uuid::new_v4()),
            concurrency: 32,
            tenant_concurrency: None,
            lease_batch: 100,
            visibility: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            idle_poll_max: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            flush_max: 500,
            rescue_interval: Duration::from_secs(1),
            depth_interval: Duration::from_secs(5),
            retention: Retention {
                finished: Duration::from_secs(24 * 3_600),
                dead: Duration::from_secs(7 * 24 * 3_600),
            },
            weights: HashMap::new(),
            backoff: Backoff::default(),
        }
    }
}

/// What an attempt came to, on its way to the store.
#[derive(Debug)]
struct Report {
    lease: LeaseRef,
    tenant: TenantId,
    job_type: String,
    attempt: u32,
    max_attempts: u32,
    outcome: HandlerOutcome,
    backoff: Backoff,
    ran_for: Duration,
    /// When the handler was called, Unix ms.
    started_at_ms: i64,
}

#[derive(Debug)]
struct Running {
    /// Whether its handler has been called (it got a slot): one that has not is handed back at
    /// once on shutdown.
    started: Arc<std::sync::atomic::AtomicBool>,
    token: i64,
    tenant: TenantId,
    job_type: String,
    cancel: CancellationToken,
}

/// See the module docs.
#[derive(Debug)]
pub struct Worker {
    queue: Arc<dyn JobQueue>,
    book: Arc<dyn JobBook>,
    registry: Arc<HandlerRegistry>,
    clock: SharedClock,
    settings: WorkerSettings,
    wake: Arc<Wakeup>,
    /// The queues whose depth this worker published last time: one that emptied since is set
    /// to zero, not left at its last backlog.
    published: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Worker {
    /// A worker on `queue` (and `book`, for depths and retention), running what `registry`
    /// resolves; `wake` is what a local enqueue notifies.
    pub fn new(
        queue: Arc<dyn JobQueue>,
        book: Arc<dyn JobBook>,
        registry: Arc<HandlerRegistry>,
        clock: SharedClock,
        settings: WorkerSettings,
        wake: Arc<Wakeup>,
    ) -> Self {
        Self {
            queue,
            book,
            registry,
            clock,
            settings,
            wake,
            published: std::sync::Mutex::default(),
        }
    }

    /// Runs until `stop` is cancelled, then drains (see the module docs).
    pub async fn run(self, stop: CancellationToken) -> Result<(), PortError> {
        let worker = Arc::new(self);
        let (reports, inbox) = mpsc::channel(worker.settings.concurrency.max(1) as usize * 2);
        let completer = tokio::spawn(record_outcomes(
            worker.queue.clone(),
            worker.clock.clone(),
            inbox,
            worker.settings.flush_max.max(1),
            worker.wake.clone(),
        ));
        let mut state = Loop {
            slots: FairSlots::new(worker.settings.concurrency.max(1) as usize),
            reports,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            caps: HashMap::new(),
            rotate: 0,
        };
        tracing::info!(worker = %worker.settings.id, concurrency = worker.settings.concurrency,
            "jobs worker started");
        let heartbeat_every = (worker.settings.visibility / 3).max(Duration::from_millis(10));
        let mut next_heartbeat = Instant::now() + heartbeat_every;
        let mut next_rescue = Instant::now();
        let mut next_depths = Instant::now();
        let mut next_purge = Instant::now() + Duration::from_secs(10);
        let mut failures = 0u32;
        let mut idle = worker.settings.poll_interval;
        loop {
            while let Some(joined) = state.tasks.try_join_next() {
                state.reap(joined);
            }
            if stop.is_cancelled() {
                break;
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                worker.heartbeat(&mut state).await;
                next_heartbeat = now + heartbeat_every;
            }
            if now >= next_rescue {
                worker.rescue().await;
                next_rescue = now + worker.settings.rescue_interval;
            }
            if now >= next_depths {
                worker.publish_depths().await;
                next_depths = now + worker.settings.depth_interval;
            }
            if now >= next_purge {
                worker.purge().await;
                next_purge = now + Duration::from_secs(60);
            }
            // Registered before the lease: an enqueue while it runs still wakes the wait below.
            let woken = worker.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // A lease's worth is held beyond the running attempts, so the next attempt starts
            // without a round trip (graphile's local queue, River's fetch-ahead).
            let most_held = worker.settings.concurrency + worker.settings.lease_batch;
            let free = most_held.saturating_sub(state.running.len() as u32);
            let mut leased = 0;
            if free > 0 {
                match worker
                    .lease(&mut state, free.min(worker.settings.lease_batch))
                    .await
                {
                    Ok(count) => {
                        leased = count;
                        failures = 0;
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                        tracing::warn!(error = %err, retry_in = ?pause, "cannot lease jobs");
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = tokio::time::sleep(pause) => {}
                        }
                        continue;
                    }
                }
            }
            if leased > 0 {
                idle = worker.settings.poll_interval;
                if state.running.len() < most_held as usize {
                    // More may be ready: ask again before waiting.
                    continue;
                }
            }
            let wait = worker
                .wake
                .wait_for(worker.clock.now_ms(), idle)
                .min(next_heartbeat.saturating_duration_since(Instant::now()));
            if free > 0 && leased == 0 {
                idle = (idle * 2).min(worker.settings.idle_poll_max);
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                Some(joined) = state.tasks.join_next(), if !state.tasks.is_empty() => {
                    state.reap(joined);
                }
                () = &mut woken => idle = worker.settings.poll_interval,
                () = tokio::time::sleep(wait) => {}
            }
        }
        worker.drain(&mut state).await;
        drop(state);
        drop(worker);
        // The last outcomes are recorded before the worker says it stopped.
        if tokio::time::timeout(Duration::from_secs(10), completer)
            .await
            .is_err()
        {
            tracing::warn!("outcomes not recorded within 10 s of shutdown; their leases will lapse and the jobs run again");
        }
        tracing::info!("jobs worker stopped");
        Ok(())
    }

    async fn lease(&self, state: &mut Loop, limit: u32) -> Result<u32, PortError> {
        let tenant_cap = self.settings.tenant_concurrency;
        let mut per_tenant: HashMap<TenantId, u32> = HashMap::new();
        let mut per_type: HashMap<(TenantId, String), u32> = HashMap::new();
        for running in state.running.values() {
            *per_tenant.entry(running.tenant.clone()).or_default() += 1;
            *per_type
                .entry((running.tenant.clone(), running.job_type.clone()))
                .or_default() += 1;
        }
        let room = match tenant_cap {
            Some(cap) => per_tenant
                .iter()
                .map(|(tenant, count)| (tenant.clone(), cap.saturating_sub(*count)))
                .collect(),
            None => HashMap::new(),
        };
        let mut exclude_types: HashMap<TenantId, Vec<String>> = HashMap::new();
        for ((tenant, job_type), count) in &per_type {
            let saturated = state
                .caps
                .get(&(tenant.clone(), job_type.clone()))
                .is_some_and(|(_, cap)| count >= cap);
            if saturated {
                exclude_types
                    .entry(tenant.clone())
                    .or_default()
                    .push(job_type.clone());
            }
        }
        state.rotate = state.rotate.wrapping_add(1);
        let request = LeaseRequest {
            worker: self.settings.id.clone(),
            limit,
            weights: self.settings.weights.clone(),
            room,
            exclude_types,
            rotate: state.rotate,
            now_ms: self.clock.now_ms(),
            visibility_ms: millis(self.settings.visibility),
        };
        let leases = self.queue.lease(&request).await?;
        let count = leases.len() as u32;
        for lease in leases {
            self.start(state, lease).await;
        }
        Ok(count)
    }

    async fn start(&self, state: &mut Loop, lease: Lease) {
        let job = &lease.job;
        let resolved = match self.registry.resolve(&job.tenant, &job.job_type).await {
            Ok(resolved) => Ok(resolved),
            Err(err) => Err(err.to_string()),
        };
        let permits = match &resolved {
            Ok(Some(found)) => found.policy.concurrency.map(|cap| {
                state
                    .caps
                    .entry((job.tenant.clone(), job.job_type.clone()))
                    .or_insert_with(|| (Arc::new(Semaphore::new(cap as usize)), cap))
                    .0
                    .clone()
            }),
            _ => None,
        };
        let cancel = CancellationToken::new();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        state.running.insert(
            job.id,
            Running {
                started: started.clone(),
                token: lease.token,
                tenant: job.tenant.clone(),
                job_type: job.job_type.clone(),
                cancel: cancel.clone(),
            },
        );
        let backoff = match &resolved {
            Ok(Some(found)) => found.policy.backoff.unwrap_or(self.settings.backoff),
            _ => self.settings.backoff,
        };
        let attempt = Attempt {
            lease,
            resolved,
            permits,
            slots: state.slots.clone(),
            started,
            cancel,
            backoff,
            clock: self.clock.clone(),
        };
        state.tasks.spawn(attempt.run(state.reports.clone()));
    }

    async fn heartbeat(&self, state: &mut Loop) {
        if state.running.is_empty() {
            return;
        }
        let leases: Vec<LeaseRef> = state
            .running
            .iter()
            .map(|(id, running)| LeaseRef {
                id: *id,
                token: running.token,
            })
            .collect();
        let until = self.clock.now_ms() + millis(self.settings.visibility);
        match self.queue.heartbeat(&leases, until).await {
            Ok(held) => {
                let held: std::collections::HashSet<Uuid> = held.into_iter().collect();
                for lease in &leases {
                    if !held.contains(&lease.id) {
                        if let Some(running) = state.running.get(&lease.id) {
                            tracing::info!(job_id = %lease.id, "lease lost (cancelled or rescued); stopping the attempt");
                            metrics::counter!(crate::LEASES_LOST_TOTAL).increment(1);
                            running.cancel.cancel();
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed; retrying at the next"),
        }
    }

    /// Fails the attempts of leases that lapsed, so their jobs run again (or die, out of
    /// attempts). Every worker does it; the fencing token makes racing rescuers harmless.
    async fn rescue(&self) {
        let now = self.clock.now_ms();
        let lapsed = match self.queue.lapsed(now, 500).await {
            Ok(lapsed) => lapsed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for lapsed leases");
                return;
            }
        };
        if lapsed.is_empty() {
            return;
        }
        let mut failures = Vec::with_capacity(lapsed.len());
        for job in &lapsed {
            let backoff = match self.registry.resolve(&job.tenant, &job.job_type).await {
                Ok(Some(found)) => found.policy.backoff.unwrap_or(self.settings.backoff),
                _ => self.settings.backoff,
            };
            let error = format!(
                "the lease of {} lapsed during attempt {} (no heartbeat: the worker died or hung)",
                job.worker.as_deref().unwrap_or("a worker"),
                job.attempt
            );
            failures.push(Failure {
                lease: job.lease,
                attempt: job.attempt,
                error,
                retry_at_ms: (job.attempt < job.max_attempts).then(|| {
                    now + i64::try_from(backoff.delay_ms(job.attempt, fastrand::f64()))
                        .unwrap_or(i64::MAX / 2)
                }),
                started_at_ms: None,
            });
        }
        match self.queue.fail(&failures, now).await {
            Ok(rescued) => {
                tracing::warn!(count = rescued.len(), "rescued jobs whose lease lapsed");
                metrics::counter!(crate::RESCUED_TOTAL).increment(rescued.len() as u64);
            }
            Err(err) => tracing::warn!(error = %err, "cannot rescue lapsed leases"),
        }
    }

    async fn publish_depths(&self) {
        match self.book.depths(self.clock.now_ms()).await {
            Ok(depths) => {
                let now = self.clock.now_ms();
                let current: std::collections::HashSet<(String, String)> = depths
                    .iter()
                    .map(|depth| (depth.tenant.to_string(), depth.queue.clone()))
                    .collect();
                let emptied: Vec<(String, String)> = {
                    let mut published = self
                        .published
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let emptied = published.difference(&current).cloned().collect();
                    *published = current;
                    emptied
                };
                for (tenant, queue) in emptied {
                    let labels = [("tenant", tenant), ("queue", queue)];
                    metrics::gauge!(crate::QUEUE_DEPTH, &labels).set(0.0);
                    metrics::gauge!(crate::QUEUE_WAITING, &labels).set(0.0);
                    metrics::gauge!(crate::OLDEST_READY_SECONDS, &labels).set(0.0);
                }
                for depth in depths {
                    let labels = [
                        ("tenant", depth.tenant.to_string()),
                        ("queue", depth.queue.clone()),
                    ];
                    metrics::gauge!(crate::QUEUE_DEPTH, &labels).set(depth.ready as f64);
                    metrics::gauge!(crate::QUEUE_WAITING, &labels).set(depth.waiting as f64);
                    let age = depth
                        .oldest_ready_ms
                        .map_or(0.0, |oldest| (now - oldest).max(0) as f64 / 1_000.0);
                    metrics::gauge!(crate::OLDEST_READY_SECONDS, &labels).set(age);
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot read queue depths"),
        }
    }

    async fn purge(&self) {
        let now = self.clock.now_ms();
        let retention = self.settings.retention;
        match self
            .book
            .purge(
                now - millis(retention.finished),
                now - millis(retention.dead),
                10_000,
            )
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "finished jobs past their retention deleted"),
            Err(err) => tracing::debug!(error = %err, "cannot purge finished jobs"),
        }
    }

    /// Hands back at once the leases whose attempt has not started, waits up to the drain
    /// timeout for the running ones, then stops the rest and hands their jobs back too (their
    /// attempt not counted).
    async fn drain(&self, state: &mut Loop) {
        if state.tasks.is_empty() {
            return;
        }
        let waiting: Vec<LeaseRef> = state
            .running
            .iter()
            .filter(|(_, running)| !running.started.load(std::sync::atomic::Ordering::Acquire))
            .map(|(id, running)| {
                running.cancel.cancel();
                LeaseRef {
                    id: *id,
                    token: running.token,
                }
            })
            .collect();
        self.hand_back(&waiting, "held but not started").await;
        tracing::info!(running = state.tasks.len(), timeout = ?self.settings.drain_timeout,
            "draining: letting running jobs finish");
        let deadline = Instant::now() + self.settings.drain_timeout;
        while !state.tasks.is_empty() {
            tokio::select! {
                Some(joined) = state.tasks.join_next() => state.reap(joined),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let released: std::collections::HashSet<Uuid> =
            waiting.iter().map(|lease| lease.id).collect();
        state.running.retain(|id, _| !released.contains(id));
        if state.running.is_empty() {
            state.tasks.shutdown().await;
            return;
        }
        let unfinished: Vec<LeaseRef> = state
            .running
            .iter()
            .map(|(id, running)| {
                running.cancel.cancel();
                LeaseRef {
                    id: *id,
                    token: running.token,
                }
            })
            .collect();
        state.tasks.shutdown().await;
        self.hand_back(&unfinished, "still running at the drain timeout")
            .await;
    }

    /// Releases `leases` for other workers; `which` says which jobs they are, in the log.
    async fn hand_back(&self, leases: &[LeaseRef], which: &str) {
        if leases.is_empty() {
            return;
        }
        match self.queue.release(leases).await {
            Ok(released) => tracing::info!(
                released = released.len(),
                "jobs {which} handed back for other workers"
            ),
            Err(err) => tracing::warn!(error = %err,
                "cannot hand jobs back; their leases will lapse and they run again"),
        }
    }
}

/// The worker loop's own state.
struct Loop {
    reports: mpsc::Sender<Report>,
    running: HashMap<Uuid, Running>,
    tasks: JoinSet<Uuid>,
    /// The `concurrency` slots attempts run in; held leases beyond them wait for one, in turn
    /// per tenant.
    slots: FairSlots,
    /// Per tenant and job type with a concurrency cap: its permits, and the cap.
    caps: HashMap<(TenantId, String), (Arc<Semaphore>, u32)>,
    rotate: usize,
}

impl Loop {
    fn reap(&mut self, joined: Result<Uuid, tokio::task::JoinError>) {
        match joined {
            Ok(id) => {
                self.running.remove(&id);
            }
            // Attempts catch their handler's panics; a join error is a task aborted at drain,
            // whose lease is released there.
            Err(err) => tracing::debug!(error = %err, "an attempt task ended abnormally"),
        }
    }
}

/// One attempt, run in its own task.
struct Attempt {
    lease: Lease,
    resolved: Result<Option<Arc<Resolved>>, String>,
    permits: Option<Arc<Semaphore>>,
    /// The worker's `concurrency` slots.
    slots: FairSlots,
    started: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
    backoff: Backoff,
    clock: SharedClock,
}

impl Attempt {
    async fn run(self, reports: mpsc::Sender<Report>) -> Uuid {
        let job = &self.lease.job;
        let id = job.id;
        let parent = job.traceparent.as_deref().and_then(|traceparent| {
            TraceContext::from_headers(|name| {
                (name == pulse_trace::TRACEPARENT).then_some(traceparent)
            })
        });
        let span = tracing::info_span!(
            "job.attempt",
            otel.name = %format!("run {}", job.job_type),
            tenant = %job.tenant,
            job_id = %id,
            job_type = %job.job_type,
            attempt = job.attempts,
            outcome = tracing::field::Empty,
        );
        let span = match &parent {
            Some(parent) => parent.adopt(span),
            None => span,
        };
        let trace = TraceContext::of(&span).or_else(|| parent.as_ref().map(TraceContext::next_hop));
        let outcome = async {
            // Waiting for a permit of a capped job type is not part of the attempt's timeout.
            let _permit = match &self.permits {
                Some(permits) => tokio::select! {
                    () = self.cancel.cancelled() => return None,
                    permit = permits.clone().acquire_owned() => permit.ok(),
                },
                None => None,
            };
            let _slot = tokio::select! {
                () = self.cancel.cancelled() => return None,
                slot = self.slots.acquire(&self.lease.job.tenant) => slot,
            };
            self.started
                .store(true, std::sync::atomic::Ordering::Release);
            let started = Instant::now();
            let started_at_ms = self.clock.now_ms();
            let job = &self.lease.job;
            let waited = started_at_ms - job.run_at_ms.max(job.created_at_ms);
            metrics::histogram!(crate::WAIT_SECONDS, "tenant" => job.tenant.to_string())
                .record(waited.max(0) as f64 / 1_000.0);
            metrics::counter!(crate::STARTED_TOTAL, "tenant" => job.tenant.to_string(),
                "job_type" => job.job_type.clone())
            .increment(1);
            let outcome = match &self.resolved {
                Err(err) => HandlerOutcome::Retry {
                    error: format!("cannot look up the handler: {err}"),
                },
                Ok(None) => HandlerOutcome::Fail {
                    error: format!(
                        "no handler is registered for job type {:?} (anymore)",
                        self.lease.job.job_type
                    ),
                },
                Ok(Some(found)) => {
                    let timeout = Duration::from_millis(self.lease.job.timeout_ms);
                    let ctx = JobContext {
                        lease: self.lease.clone(),
                        trace: trace.clone(),
                        timeout,
                        now_ms: self.clock.now_ms(),
                    };
                    let run = AssertUnwindSafe(found.handler.run(&ctx)).catch_unwind();
                    tokio::select! {
                        () = self.cancel.cancelled() => return None,
                        ran = tokio::time::timeout(timeout, run) => match ran {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(_)) => HandlerOutcome::Retry {
                                error: "the handler panicked".into(),
                            },
                            Err(_) => HandlerOutcome::Retry {
                                error: format!(
                                    "timed out after {} ms; the attempt was cancelled",
                                    timeout.as_millis()
                                ),
                            },
                        },
                    }
                }
            };
            Some((outcome, started_at_ms, started.elapsed()))
        }
        .instrument(span.clone())
        .await;
        let Some((outcome, started_at_ms, ran_for)) = outcome else {
            span.record("outcome", "lease_lost");
            return id;
        };
        span.record(
            "outcome",
            match &outcome {
                HandlerOutcome::Succeeded { .. } => "succeeded",
                HandlerOutcome::Retry { .. } => "failed",
                HandlerOutcome::Fail { .. } => "failed_for_good",
            },
        );
        let report = Report {
            lease: self.lease.reference(),
            tenant: job.tenant.clone(),
            job_type: job.job_type.clone(),
            attempt: job.attempts,
            max_attempts: job.max_attempts,
            outcome,
            backoff: self.backoff,
            ran_for,
            started_at_ms,
        };
        // The recorder outlives every attempt (it stops after the drain): a closed channel only
        // means the process is going down, and the lease will lapse.
        let _ = reports.send(report).await;
        id
    }
}

/// Records outcomes as they come, in batches: whatever arrived while the previous write ran is
/// the next write (group commit, no lingering). A write that fails is retried with backoff for
/// as long as the leases could still hold; past that the leases lapse and the jobs run again.
async fn record_outcomes(
    queue: Arc<dyn JobQueue>,
    clock: SharedClock,
    mut inbox: mpsc::Receiver<Report>,
    flush_max: usize,
    wake: Arc<Wakeup>,
) {
    let mut batch = Vec::with_capacity(flush_max);
    while let Some(first) = inbox.recv().await {
        batch.push(first);
        while batch.len() < flush_max {
            match inbox.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        let mut pause = Duration::from_millis(50);
        loop {
            match record(queue.as_ref(), clock.as_ref(), &batch, &wake).await {
                Ok(()) => break,
                Err(err) if err.is_retryable() && pause < Duration::from_secs(30) => {
                    tracing::warn!(error = %err, retry_in = ?pause, "cannot record job outcomes");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(err) => {
                    tracing::error!(error = %err, count = batch.len(),
                        "job outcomes not recorded; their leases will lapse and the jobs run again");
                    break;
                }
            }
        }
        batch.clear();
    }
}

async fn record(
    queue: &dyn JobQueue,
    clock: &dyn pulse_core::clock::Clock,
    batch: &[Report],
    wake: &Wakeup,
) -> Result<(), PortError> {
    let now = clock.now_ms();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for report in batch {
        match &report.outcome {
            HandlerOutcome::Succeeded { result } => done.push(Completion {
                lease: report.lease,
                result: result.clone(),
                started_at_ms: report.started_at_ms,
            }),
            HandlerOutcome::Retry { error } | HandlerOutcome::Fail { error } => {
                let retry = matches!(report.outcome, HandlerOutcome::Retry { .. })
                    && report.attempt < report.max_attempts;
                let delay = report.backoff.delay_ms(report.attempt, fastrand::f64());
                failed.push(Failure {
                    lease: report.lease,
                    attempt: report.attempt,
                    error: error.clone(),
                    retry_at_ms: retry
                        .then(|| now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX))),
                    started_at_ms: Some(report.started_at_ms),
                });
            }
        }
    }
    // This worker asks again when its earliest retry is due, not an idle backoff later.
    if let Some(due) = failed
        .iter()
        .filter_map(|failure| failure.retry_at_ms)
        .min()
    {
        wake.due_at(due);
    }
    let completed = if done.is_empty() {
        Vec::new()
    } else {
        queue.complete(&done, now).await?
    };
    let recorded_failures = if failed.is_empty() {
        Vec::new()
    } else {
        queue.fail(&failed, now).await?
    };
    let completed: std::collections::HashSet<Uuid> = completed.into_iter().collect();
    let recorded_failures: std::collections::HashSet<Uuid> =
        recorded_failures.into_iter().collect();
    let by_id: HashMap<Uuid, &Failure> = failed.iter().map(|f| (f.lease.id, f)).collect();
    for report in batch {
        let labels = [
            ("tenant", report.tenant.to_string()),
            ("job_type", report.job_type.clone()),
        ];
        let recorded =
            completed.contains(&report.lease.id) || recorded_failures.contains(&report.lease.id);
        if !recorded {
            tracing::info!(job_id = %report.lease.id, "outcome refused: the lease is no longer this worker's");
            metrics::counter!(crate::OUTCOMES_REFUSED_TOTAL).increment(1);
            continue;
        }
        metrics::histogram!(crate::RUN_SECONDS, &labels).record(report.ran_for.as_secs_f64());
        match by_id.get(&report.lease.id) {
            None => metrics::counter!(crate::SUCCEEDED_TOTAL, &labels).increment(1),
            Some(failure) => {
                metrics::counter!(crate::FAILED_TOTAL, &labels).increment(1);
                if failure.retry_at_ms.is_none() {
                    metrics::counter!(crate::DEAD_TOTAL, &labels).increment(1);
                    tracing::warn!(job_id = %report.lease.id, tenant = %report.tenant,
                        job_type = %report.job_type, attempt = report.attempt,
                        error = %failure.error, "job dead");
                }
            }
        }
    }
    Ok(())
}
