//! The `pipeline` processor: reads `events.ingest`, runs each tenant's transform chain,
//! publishes the result on `events.processed`, and hands it to each of the tenant's sinks.
//!
//! Isolation: the sinks of a batch are called concurrently, each within its own budget; a sink
//! that does not take an event in time (or says retry) gets it *parked* durably for the
//! [`Redeliverer`], and while a sink has parked events its new ones queue behind them without
//! calling it. So a slow or down sink holds up no other sink and no other tenant, and the
//! offset is committed once every sink took each event or it is parked (or dead-lettered).
//!
//! Exactly once per sink, as far as a sink can tell: events are de-duplicated within a batch;
//! a sink that is not idempotent has a delivery record per event checked before and written
//! after each delivery (the only window left is a crash between a delivery and its record,
//! which the webhook's `Idempotency-Key` covers).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::log::{ConsumedRecord, EventLog, OutgoingRecord, TopicSpec};
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::{PortError, PortResult, TenantId};
use pulse_runtime::processor::{Poison, Processor, Tick};
use pulse_trace::TraceContext;
use tokio_util::sync::CancellationToken;

use crate::book::PipelineBook;
use crate::envelope::CanonicalEvent;
use crate::ingest::EVENT_ID_HEADER;
use crate::plugin::{PluginContext, PluginInfo, SinkOutcome, TransformOutcome};
use crate::ports::{
    DeadLetterStore, DedupStore, DeliveryLedger, NewDeadLetter, ParkedDeliveries, ToPark,
};
use crate::registry::BuiltSink;

/// The stream of events after their tenant's transforms (what the profiles domain reads).
pub const PROCESSED: TopicSpec = TopicSpec {
    name: "events.processed",
    carries: "pulse.v1.CanonicalEvent, after the tenant's transforms (key as on events.ingest)",
};
/// The pipeline processor's consumer group.
pub const PIPELINE_GROUP: &str = "pulse-pipeline-group";
/// A redriven record names the one sink it is for.
pub const REDRIVE_SINK_HEADER: &str = "pulse.redrive.sink";

/// Time to run one batch through the transforms and sinks.
pub const PROCESSING_SECONDS: &str = "pulse_pipeline_processing_seconds";
/// Events per sink, by tenant, sink and outcome (`delivered`, `parked`, `dead_lettered`,
/// `duplicate`).
pub const SINK_EVENTS_TOTAL: &str = "pulse_sink_events_total";
/// Failures, by tenant, stage (`transform`, `sink`) and kind (`retry`, `timeout`, `rejected`).
pub const PIPELINE_ERRORS_TOTAL: &str = "pulse_pipeline_errors_total";
/// Events a transform dropped on purpose, by tenant and plugin.
pub const DROPPED_TOTAL: &str = "pulse_pipeline_dropped_total";
/// Dead letters written, by tenant and reason.
pub const DEAD_LETTERS_TOTAL: &str = "pulse_gateway_dead_letters_total";
/// Events waiting for a sink, by tenant and sink.
pub const SINK_BACKLOG: &str = "pulse_sink_backlog";

/// What the gateway keeps in its store.
#[derive(Debug, Clone)]
pub struct GatewayStores {
    /// Dedup keys (expired by the processor's tick).
    pub dedup: Arc<dyn DedupStore>,
    /// Delivery records of sinks that are not idempotent.
    pub ledger: Arc<dyn DeliveryLedger>,
    /// Parked events.
    pub parked: Arc<dyn ParkedDeliveries>,
    /// Dead letters.
    pub dead: Arc<dyn DeadLetterStore>,
}

/// How long delivery records live, and how often expired ones are swept.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `events.processed` behind the deployment's prefix.
    pub processed_topic: String,
    /// How long a delivery record lives (the dedup window).
    pub dedup_window: Duration,
    /// How often expired dedup keys and delivery records are deleted.
    pub expire_every: Duration,
    /// Longest a sink may take in the batch's own pass (at most its budget): a slower one gets
    /// its events parked and delivered by the redeliverer with its full budget, so a slow sink
    /// holds up the batch — the other sinks and tenants — for this long at most.
    pub inline_budget: Duration,
}

/// The pipeline processor.
#[derive(Debug)]
pub struct PipelineProcessor {
    book: PipelineBook,
    stores: GatewayStores,
    log: Arc<dyn EventLog>,
    clock: SharedClock,
    settings: PipelineSettings,
    next_expiry: Instant,
}

impl PipelineProcessor {
    /// A processor running `book`'s pipelines.
    pub fn new(
        book: PipelineBook,
        stores: GatewayStores,
        log: Arc<dyn EventLog>,
        clock: SharedClock,
        settings: PipelineSettings,
    ) -> Self {
        Self {
            book,
            stores,
            log,
            clock,
            settings,
            next_expiry: Instant::now(),
        }
    }
}

/// An event on its way through one tenant's pipeline.
struct InFlight {
    original: Bytes,
    event: CanonicalEvent,
    key: Option<Bytes>,
    only_sink: Option<String>,
    trace: Option<TraceContext>,
}

/// What the batch's deliveries leave to write.
#[derive(Default)]
struct Aftermath {
    delivered: Vec<(TenantId, String, Vec<String>)>,
    parks: Vec<ToPark>,
    dead: Vec<NewDeadLetter>,
}

fn header_text(record: &ConsumedRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::to_owned)
}

#[async_trait]
impl Processor for PipelineProcessor {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        let started = Instant::now();
        let mut poison = Vec::new();
        let mut tenants: Vec<TenantId> = Vec::new();
        let mut by_tenant: HashMap<TenantId, Vec<InFlight>> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            let event = match CanonicalEvent::decode(&record.payload) {
                Ok(event) => event,
                Err(err) => {
                    poison.push(Poison {
                        index,
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            let header_tenant = TenantId::from_header(record.header(TENANT_HEADER).map(|v| &v[..]));
            if header_tenant.as_ref() != Ok(&event.tenant) {
                poison.push(Poison {
                    index,
                    reason: format!(
                        "the pulse.tenant header does not name the envelope's tenant {}",
                        event.tenant
                    ),
                });
                continue;
            }
            let trace = TraceContext::from_headers(|name| {
                record
                    .header(name)
                    .and_then(|value| std::str::from_utf8(value).ok())
            });
            if !by_tenant.contains_key(&event.tenant) {
                tenants.push(event.tenant.clone());
            }
            by_tenant
                .entry(event.tenant.clone())
                .or_default()
                .push(InFlight {
                    original: record.payload.clone(),
                    event,
                    key: record.key.clone(),
                    only_sink: header_text(record, REDRIVE_SINK_HEADER)
                        .filter(|sink| !sink.is_empty()),
                    trace,
                });
        }
        let now = self.clock.now_ms();
        let mut processed = Vec::new();
        let mut aftermath = Aftermath::default();
        // First every tenant's transforms and the append to events.processed: if that fails
        // the batch is retried before any sink was called, so no sink sees it twice.
        let mut runs = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let events = by_tenant.remove(&tenant).unwrap_or_default();
            let active = self.book.get(&tenant);
            let transformed = self
                .transform(&tenant, &active.built, events, now, &mut aftermath)
                .await?;
            for flight in &transformed {
                let mut record = OutgoingRecord {
                    key: flight.key.clone(),
                    payload: Bytes::from(flight.event.encode()),
                    headers: Vec::new(),
                }
                .with_header(EVENT_ID_HEADER, flight.event.event_id.clone());
                if !tenant.is_default() {
                    record = record.with_header(TENANT_HEADER, tenant.as_str().to_owned());
                }
                if let Some(trace) = &flight.trace {
                    for (name, value) in trace.headers() {
                        record = record.with_header(name, value.to_owned());
                    }
                }
                processed.push(record);
            }
            runs.push((tenant, active, transformed));
        }
        if !processed.is_empty() {
            self.log
                .append(&self.settings.processed_topic, processed)
                .await?;
        }
        for (tenant, active, transformed) in runs {
            let transform_infos: Vec<PluginInfo> = active
                .built
                .transforms
                .iter()
                .map(|plugin| plugin.info())
                .collect();
            let deliveries = active.built.sinks.iter().map(|sink| {
                let events: Vec<&InFlight> = transformed
                    .iter()
                    .filter(|flight| {
                        flight
                            .only_sink
                            .as_deref()
                            .is_none_or(|only| only == sink.id)
                    })
                    .collect();
                self.deliver(&tenant, sink, &transform_infos, events, now)
            });
            for outcome in futures::future::join_all(deliveries).await {
                let (delivered, parks, dead) = outcome?;
                aftermath.delivered.extend(delivered);
                aftermath.parks.extend(parks);
                aftermath.dead.extend(dead);
            }
        }
        self.write_aftermath(aftermath, now).await?;
        metrics::histogram!(PROCESSING_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(poison)
    }

    async fn tick(&mut self) -> PortResult<Tick> {
        if let Err(err) = self.book.refresh(false).await {
            tracing::warn!(error = %err, "cannot read the stored pipelines; running the last ones read");
        }
        if Instant::now() >= self.next_expiry {
            self.next_expiry = Instant::now() + self.settings.expire_every;
            match self.stores.dedup.expire(self.clock.now_ms()).await {
                Ok(0) => {}
                Ok(expired) => tracing::debug!(expired, "expired dedup keys and delivery records"),
                Err(err) => tracing::warn!(error = %err, "cannot expire dedup keys; will retry"),
            }
        }
        Ok(Tick::Continue)
    }
}

type Delivered = Vec<(TenantId, String, Vec<String>)>;

impl PipelineProcessor {
    async fn transform(
        &self,
        tenant: &TenantId,
        pipeline: &crate::registry::BuiltPipeline,
        events: Vec<InFlight>,
        now: i64,
        aftermath: &mut Aftermath,
    ) -> PortResult<Vec<InFlight>> {
        let mut out = Vec::with_capacity(events.len());
        let mut seen = HashSet::new();
        'events: for mut flight in events {
            // A repeat within the batch (a retry the door could not see, a redrive beside it).
            if !seen.insert((flight.event.event_id.clone(), flight.only_sink.clone())) {
                continue;
            }
            for (step, plugin) in pipeline.transforms.iter().enumerate() {
                let ctx = PluginContext {
                    tenant: tenant.clone(),
                    clock: self.clock.clone(),
                    trace: flight.trace.clone(),
                    plugins: pipeline.transforms[..step]
                        .iter()
                        .map(|p| p.info())
                        .collect(),
                };
                let info = plugin.info();
                match plugin.process(flight.event.clone(), &ctx).await {
                    TransformOutcome::Ok(event) => flight.event = event,
                    TransformOutcome::Drop { reason } => {
                        metrics::counter!(DROPPED_TOTAL, "tenant" => tenant.to_string(), "plugin" => info.name)
                            .increment(1);
                        tracing::debug!(%tenant, plugin = info.name, reason, event_id = %flight.event.event_id, "event dropped by a transform");
                        continue 'events;
                    }
                    TransformOutcome::Error {
                        reason,
                        retryable: true,
                    } => {
                        metrics::counter!(PIPELINE_ERRORS_TOTAL, "tenant" => tenant.to_string(), "stage" => "transform", "kind" => "retry")
                            .increment(1);
                        return Err(PortError::unavailable(
                            "pipeline",
                            format!("transform {} failed, retryably: {reason}", info.name),
                        ));
                    }
                    TransformOutcome::Error {
                        reason,
                        retryable: false,
                    } => {
                        metrics::counter!(PIPELINE_ERRORS_TOTAL, "tenant" => tenant.to_string(), "stage" => "transform", "kind" => "rejected")
                            .increment(1);
                        aftermath.dead.push(first_failure(
                            &flight.event,
                            "",
                            &info,
                            "transform_error",
                            reason,
                            now,
                            &flight.original,
                        ));
                        continue 'events;
                    }
                }
            }
            out.push(flight);
        }
        Ok(out)
    }

    /// Delivers `events` to `sink`, or parks them, or dead-letters what it refuses.
    async fn deliver(
        &self,
        tenant: &TenantId,
        sink: &BuiltSink,
        transforms: &[PluginInfo],
        events: Vec<&InFlight>,
        now: i64,
    ) -> PortResult<(Delivered, Vec<ToPark>, Vec<NewDeadLetter>)> {
        let mut parks = Vec::new();
        let mut dead = Vec::new();
        let mut delivered = Vec::new();
        let label = |outcome: &'static str, count: usize| {
            if count > 0 {
                metrics::counter!(SINK_EVENTS_TOTAL, "tenant" => tenant.to_string(), "sink" => sink.id.clone(), "outcome" => outcome)
                    .increment(count as u64);
            }
        };
        let mut events = events;
        if !sink.plugin.idempotent() && !events.is_empty() {
            let ids: Vec<String> = events
                .iter()
                .map(|flight| flight.event.event_id.clone())
                .collect();
            let taken = self.stores.ledger.delivered(tenant, &sink.id, &ids).await?;
            let before = events.len();
            events.retain(|flight| !taken.contains(&flight.event.event_id));
            label("duplicate", before - events.len());
        }
        if events.is_empty() {
            return Ok((Vec::new(), parks, dead));
        }
        let mut plugins = transforms.to_vec();
        plugins.push(sink.plugin.info());
        let plugins: Arc<[PluginInfo]> = plugins.into();
        let ctx = PluginContext {
            tenant: tenant.clone(),
            clock: self.clock.clone(),
            trace: events.iter().find_map(|flight| flight.trace.clone()),
            plugins: plugins.clone(),
        };
        let versions = ctx.versions_json();
        let park = |flight: &InFlight, attempts: u32, error: String, next: i64| ToPark {
            tenant: tenant.clone(),
            sink: sink.id.clone(),
            event_id: flight.event.event_id.clone(),
            envelope: flight.event.encode(),
            original: flight.original.to_vec(),
            plugins: versions.clone(),
            attempts,
            error,
            at_ms: now,
            next_attempt_at_ms: next,
        };
        if self.stores.parked.backlogged(tenant, &sink.id).await? {
            // Behind earlier events of this sink: wait with them, in order, without calling it.
            for flight in &events {
                parks.push(park(
                    flight,
                    0,
                    "waiting behind earlier events of this sink".into(),
                    now,
                ));
            }
            label("parked", parks.len());
            return Ok((delivered, parks, dead));
        }
        let batch: Vec<CanonicalEvent> = events.iter().map(|flight| flight.event.clone()).collect();
        // One span per traced event, open for the delivery: the ingest request's trace reaches
        // each sink. Unsampled traces cost nothing here.
        let spans: Vec<(usize, tracing::Span)> = events
            .iter()
            .enumerate()
            .filter_map(|(index, flight)| {
                let parent = flight.trace.as_ref().filter(|trace| trace.is_sampled())?;
                let span = tracing::info_span!(
                    "sink.deliver",
                    otel.name = %format!("deliver to {}", sink.id),
                    tenant = %tenant,
                    sink = %sink.id,
                    event_id = %flight.event.event_id,
                    outcome = tracing::field::Empty,
                );
                Some((index, parent.adopt(span)))
            })
            .collect();
        let outcomes = send_within_budget(
            sink,
            &batch,
            &ctx,
            tenant,
            Some(self.settings.inline_budget),
        )
        .await;
        for (index, span) in &spans {
            span.record(
                "outcome",
                match &outcomes[*index] {
                    SinkOutcome::Ok => "delivered",
                    SinkOutcome::Retry { .. } => "parked",
                    SinkOutcome::Error { .. } => "refused",
                },
            );
        }
        drop(spans);
        let mut ok = Vec::new();
        for (flight, outcome) in events.iter().zip(outcomes) {
            match outcome {
                SinkOutcome::Ok => ok.push(flight.event.event_id.clone()),
                SinkOutcome::Retry { reason } if sink.retry.max_attempts > 1 => {
                    let next = now.saturating_add(millis(sink.retry.delay_after(1)));
                    parks.push(park(flight, 1, reason, next));
                }
                SinkOutcome::Retry { reason } | SinkOutcome::Error { reason } => {
                    let info = sink.plugin.info();
                    let code = if sink.retry.max_attempts > 1 {
                        "sink_rejected"
                    } else {
                        "retries_exhausted"
                    };
                    dead.push(first_failure(
                        &flight.event,
                        &sink.id,
                        &info,
                        code,
                        reason,
                        now,
                        &flight.original,
                    ));
                }
            }
        }
        label("delivered", ok.len());
        label("parked", parks.len());
        label("dead_lettered", dead.len());
        if !ok.is_empty() && !sink.plugin.idempotent() {
            delivered.push((tenant.clone(), sink.id.clone(), ok));
        }
        Ok((delivered, parks, dead))
    }

    async fn write_aftermath(&self, aftermath: Aftermath, now: i64) -> PortResult<()> {
        let expires = now.saturating_add(millis(self.settings.dedup_window));
        for (tenant, sink, ids) in &aftermath.delivered {
            self.stores
                .ledger
                .mark_delivered(tenant, sink, ids, now, expires)
                .await?;
        }
        if !aftermath.parks.is_empty() {
            self.stores.parked.park(&aftermath.parks).await?;
        }
        if !aftermath.dead.is_empty() {
            self.stores.dead.put(&aftermath.dead).await?;
            count_dead(&aftermath.dead);
        }
        Ok(())
    }
}

/// The dead letter of an event refused on its first attempt, by `plugin` (of `sink`, or a
/// transform when `sink` is empty).
fn first_failure(
    event: &CanonicalEvent,
    sink: &str,
    plugin: &PluginInfo,
    reason: &str,
    error: String,
    now: i64,
    original: &Bytes,
) -> NewDeadLetter {
    NewDeadLetter {
        tenant: event.tenant.clone(),
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        sink: sink.to_owned(),
        plugin: plugin.name.to_owned(),
        plugin_version: plugin.version.to_owned(),
        reason: reason.to_owned(),
        attempts: 1,
        first_error: error.clone(),
        last_error: error,
        first_failed_at_ms: now,
        last_failed_at_ms: now,
        envelope: original.to_vec(),
    }
}

fn count_dead(letters: &[NewDeadLetter]) {
    for letter in letters {
        metrics::counter!(DEAD_LETTERS_TOTAL, "tenant" => letter.tenant.to_string(), "reason" => letter.reason.clone())
            .increment(1);
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `sink.send_batch` within the sink's budget; past it every event is a retry.
async fn send_within_budget(
    sink: &BuiltSink,
    events: &[CanonicalEvent],
    ctx: &PluginContext,
    tenant: &TenantId,
    at_most: Option<Duration>,
) -> Vec<SinkOutcome> {
    let budget = at_most.map_or(sink.plugin.budget(), |cap| cap.min(sink.plugin.budget()));
    let mut outcomes = match tokio::time::timeout(budget, sink.plugin.send_batch(events, ctx)).await
    {
        Ok(outcomes) => outcomes,
        Err(_) => {
            metrics::counter!(PIPELINE_ERRORS_TOTAL, "tenant" => tenant.to_string(), "stage" => "sink", "kind" => "timeout")
                .increment(1);
            vec![
                SinkOutcome::Retry {
                    reason: format!("the sink did not answer within {budget:?}")
                };
                events.len()
            ]
        }
    };
    // A sink answering fewer outcomes than events has not taken the rest.
    outcomes.resize(
        events.len(),
        SinkOutcome::Retry {
            reason: "the sink gave no answer for this event".into(),
        },
    );
    for outcome in &outcomes {
        let kind = match outcome {
            SinkOutcome::Ok => continue,
            SinkOutcome::Retry { .. } => "retry",
            SinkOutcome::Error { .. } => "rejected",
        };
        metrics::counter!(PIPELINE_ERRORS_TOTAL, "tenant" => tenant.to_string(), "stage" => "sink", "kind" => kind)
            .increment(1);
    }
    outcomes
}

/// How the redeliverer works through parked events.
#[derive(Debug, Clone)]
pub struct RedeliverSettings {
    /// Pause between rounds.
    pub interval: Duration,
    /// How long a claimed event is not claimed again (longer than a sink's budget).
    pub lease: Duration,
    /// Most events claimed per round.
    pub batch: usize,
    /// How long delivery records live (the dedup window).
    pub dedup_window: Duration,
}

impl Default for RedeliverSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            lease: Duration::from_secs(60),
            batch: 500,
            dedup_window: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Delivers parked events when they fall due, per (tenant, sink) and in order; retries with
/// backoff and jitter up to the sink's budget, then writes the dead letter.
#[derive(Debug)]
pub struct Redeliverer {
    book: PipelineBook,
    stores: GatewayStores,
    clock: SharedClock,
    settings: RedeliverSettings,
}

impl Redeliverer {
    /// A redeliverer for `book`'s sinks.
    pub fn new(
        book: PipelineBook,
        stores: GatewayStores,
        clock: SharedClock,
        settings: RedeliverSettings,
    ) -> Self {
        Self {
            book,
            stores,
            clock,
            settings,
        }
    }

    /// Runs rounds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next_backlog = Instant::now();
        let mut reported: HashSet<(TenantId, String)> = HashSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            if let Err(err) = self.book.refresh(false).await {
                tracing::debug!(error = %err, "cannot read the stored pipelines");
            }
            match self.round().await {
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "redelivery round failed; will retry"),
            }
            if Instant::now() >= next_backlog {
                next_backlog = Instant::now() + Duration::from_secs(5);
                if let Ok(backlog) = self.stores.parked.backlog().await {
                    let mut now = HashSet::new();
                    for (tenant, sink, waiting) in backlog {
                        metrics::gauge!(SINK_BACKLOG, "tenant" => tenant.to_string(), "sink" => sink.clone())
                            .set(waiting as f64);
                        now.insert((tenant, sink));
                    }
                    for (tenant, sink) in reported.difference(&now) {
                        metrics::gauge!(SINK_BACKLOG, "tenant" => tenant.to_string(), "sink" => sink.clone())
                            .set(0.0);
                    }
                    reported = now;
                }
            }
        }
    }

    /// One round: claims what is due and tries it; how many were claimed.
    pub async fn round(&self) -> PortResult<usize> {
        let now = self.clock.now_ms();
        let due = self
            .stores
            .parked
            .claim_due(now, millis(self.settings.lease), self.settings.batch)
            .await?;
        let claimed = due.len();
        let mut order: Vec<(TenantId, String)> = Vec::new();
        let mut groups: HashMap<(TenantId, String), Vec<crate::ports::Parked>> = HashMap::new();
        for parked in due {
            let group = (parked.tenant.clone(), parked.sink.clone());
            if !groups.contains_key(&group) {
                order.push(group.clone());
            }
            groups.entry(group).or_default().push(parked);
        }
        let rounds = order.into_iter().map(|group| {
            let items = groups.remove(&group).unwrap_or_default();
            self.redeliver(group.0, group.1, items, now)
        });
        for outcome in futures::future::join_all(rounds).await {
            outcome?;
        }
        Ok(claimed)
    }

    async fn redeliver(
        &self,
        tenant: TenantId,
        sink_id: String,
        items: Vec<crate::ports::Parked>,
        now: i64,
    ) -> PortResult<()> {
        let active = self.book.get(&tenant);
        let bury = |item: &crate::ports::Parked,
                    plugin: PluginInfo,
                    reason: &str,
                    error: String| NewDeadLetter {
            tenant: tenant.clone(),
            event_id: item.event_id.clone(),
            event_type: CanonicalEvent::decode(&item.envelope)
                .map(|event| event.event_type)
                .unwrap_or_default(),
            sink: sink_id.clone(),
            plugin: plugin.name.to_owned(),
            plugin_version: plugin.version.to_owned(),
            reason: reason.to_owned(),
            attempts: item.attempts,
            first_error: if item.first_error.is_empty() {
                error.clone()
            } else {
                item.first_error.clone()
            },
            last_error: error,
            first_failed_at_ms: item.first_failed_at_ms,
            last_failed_at_ms: now,
            envelope: item.original.clone(),
        };
        let Some(sink) = active.built.sink(&sink_id).cloned() else {
            let gone = PluginInfo {
                name: "removed",
                version: "",
            };
            for item in &items {
                let letter = bury(
                    item,
                    gone.clone(),
                    "sink_removed",
                    format!("the pipeline has no sink {sink_id:?} any more"),
                );
                self.stores.parked.bury(item.id, &letter).await?;
                count_dead(std::slice::from_ref(&letter));
            }
            return Ok(());
        };
        let info = sink.plugin.info();
        let mut events = Vec::with_capacity(items.len());
        let mut sendable = Vec::with_capacity(items.len());
        for item in &items {
            match CanonicalEvent::decode(&item.envelope) {
                Ok(event) => {
                    events.push(event);
                    sendable.push(item);
                }
                Err(err) => {
                    let letter = bury(item, info.clone(), "undecodable", err.to_string());
                    self.stores.parked.bury(item.id, &letter).await?;
                    count_dead(std::slice::from_ref(&letter));
                }
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        let plugins: Arc<[PluginInfo]> = active
            .built
            .transforms
            .iter()
            .map(|plugin| plugin.info())
            .chain(std::iter::once(info.clone()))
            .collect();
        let ctx = PluginContext {
            tenant: tenant.clone(),
            clock: self.clock.clone(),
            trace: None,
            plugins,
        };
        let outcomes = send_within_budget(&sink, &events, &ctx, &tenant, None).await;
        let mut delivered_ids = Vec::new();
        let mut delivered_events = Vec::new();
        let mut first_retry = true;
        for (item, outcome) in sendable.into_iter().zip(outcomes) {
            match outcome {
                SinkOutcome::Ok => {
                    delivered_ids.push(item.id);
                    delivered_events.push(item.event_id.clone());
                }
                SinkOutcome::Retry { reason } => {
                    // Only the first retried event was tried; the rest waited behind it.
                    let attempts = if first_retry {
                        item.attempts + 1
                    } else {
                        item.attempts
                    };
                    first_retry = false;
                    if attempts >= sink.retry.max_attempts {
                        let mut letter = bury(item, info.clone(), "retries_exhausted", reason);
                        letter.attempts = attempts;
                        self.stores.parked.bury(item.id, &letter).await?;
                        count_dead(std::slice::from_ref(&letter));
                    } else {
                        let next =
                            now.saturating_add(millis(sink.retry.delay_after(attempts.max(1))));
                        self.stores
                            .parked
                            .retry_later(item.id, attempts, &reason, next)
                            .await?;
                    }
                }
                SinkOutcome::Error { reason } => {
                    let mut letter = bury(item, info.clone(), "sink_rejected", reason);
                    letter.attempts = item.attempts + 1;
                    self.stores.parked.bury(item.id, &letter).await?;
                    count_dead(std::slice::from_ref(&letter));
                }
            }
        }
        if !delivered_ids.is_empty() {
            if !sink.plugin.idempotent() {
                let expires = now.saturating_add(millis(self.settings.dedup_window));
                self.stores
                    .ledger
                    .mark_delivered(&tenant, &sink_id, &delivered_events, now, expires)
                    .await?;
            }
            self.stores.parked.delivered(&delivered_ids).await?;
            metrics::counter!(SINK_EVENTS_TOTAL, "tenant" => tenant.to_string(), "sink" => sink_id.clone(), "outcome" => "delivered")
                .increment(delivered_ids.len() as u64);
        }
        Ok(())
    }
}
