//! The relay role: moves committed outbox rows to the log, marking them sent only after the log
//! acknowledged them. Several relays may run at once; leases keep them off each other's rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_core::clock::SharedClock;
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_core::retry::backoff;
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::time::millis;
use pulse_core::PortError;
use pulse_trace::TraceContext;
use tokio_util::sync::CancellationToken;

use crate::{Outbox, OutboxEvent};

/// Events appended to the log by the relay.
pub const RELAY_PUBLISHED_TOTAL: &str = "pulse_relay_published_total";
/// Failed relay rounds, by stage (`claim`, `append`, `mark_sent`).
pub const RELAY_ERRORS_TOTAL: &str = "pulse_relay_errors_total";
/// Outbox rows not yet sent.
pub const OUTBOX_BACKLOG: &str = "pulse_outbox_backlog";
/// Time from an outbox row's commit to the log's acknowledgement.
pub const RELAY_LAG: &str = "pulse_relay_lag_seconds";

/// Backoff bounds while the store or the log is down.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most events moved per round.
    pub batch_size: usize,
    /// How long a claimed batch is reserved for this relay.
    pub lease: Duration,
    /// Pause after a round that found nothing.
    pub idle_poll: Duration,
    /// How long sent rows are kept before deletion.
    pub sent_retention: Duration,
    /// How often the backlog gauge and the purge run.
    pub housekeeping_every: Duration,
    /// Longest wait for the log to acknowledge one append. Past it the round fails and the rows
    /// stay pending, to be sent again once their lease lapses; keep it well under `lease`, so a
    /// batch is never claimed again while its first append may still be in flight.
    pub append_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(50),
            sent_retention: Duration::from_secs(24 * 3600),
            housekeeping_every: Duration::from_secs(5),
            append_timeout: Duration::from_secs(10),
        }
    }
}

/// `[relay]` of the configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Most events moved per round.
    pub batch_size: usize,
    /// Pause after a round that found nothing, milliseconds.
    pub idle_poll_ms: u64,
    /// How long a claimed batch is reserved for one relay, seconds.
    pub lease_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let settings = RelaySettings::default();
        Self {
            batch_size: settings.batch_size,
            idle_poll_ms: settings.idle_poll.as_millis() as u64,
            lease_secs: settings.lease.as_secs(),
        }
    }
}

impl RelayConfig {
    /// Why the section is unusable, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("relay.batch_size must be positive".into());
        }
        if self.lease_secs == 0 {
            return Err("relay.lease_secs must be positive".into());
        }
        Ok(())
    }

    /// The relay's settings.
    pub fn settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.batch_size,
            idle_poll: Duration::from_millis(self.idle_poll_ms),
            lease: Duration::from_secs(self.lease_secs),
            // Well inside the lease: a timed-out append is retried only after its lease lapses.
            append_timeout: Duration::from_secs(self.lease_secs.max(3) / 3),
            ..RelaySettings::default()
        }
    }
}

/// One relay instance.
#[derive(Debug)]
pub struct Relay {
    id: String,
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn EventLog>,
    clock: SharedClock,
    settings: RelaySettings,
    /// The batch claimed while the previous one was being sent, with its claim time (ms).
    claimed_next: Option<(i64, Vec<OutboxEvent>)>,
}

/// The record of `event`, carrying its trace context: the relay span's when the trace is
/// recorded (so consumers become its children), else the one stored with the row.
fn to_record(event: &OutboxEvent, span: Option<&tracing::Span>) -> OutgoingRecord {
    let mut record = OutgoingRecord::keyed(event.aggregate_id.to_string(), event.payload.clone())
        .with_header("pulse.event_id", event.id.to_string())
        .with_header("pulse.aggregate_type", event.aggregate_type.clone())
        .with_header(TENANT_HEADER, event.tenant.as_str().to_owned());
    if let Some(trace) = span.and_then(TraceContext::of).or_else(|| event.trace()) {
        for (name, value) in trace.headers() {
            record = record.with_header(name, value.to_owned());
        }
    }
    record
}

/// A producer span in the event's trace, for recorded traces only: an unrecorded trace costs
/// nothing per event.
fn relay_span(event: &OutboxEvent) -> Option<tracing::Span> {
    let parent = event.trace().filter(TraceContext::is_sampled)?;
    let span = tracing::info_span!(
        parent: None,
        "outbox.relay",
        otel.name = %format!("{} publish", event.topic),
        otel.kind = "producer",
        messaging.destination.name = %event.topic,
        pulse.event_id = %event.id,
    );
    Some(parent.adopt(span))
}

impl Relay {
    /// A relay named `id` (unique per process, e.g. `relay-<uuid>`).
    pub fn new(
        id: String,
        outbox: Arc<dyn Outbox>,
        log: Arc<dyn EventLog>,
        clock: SharedClock,
        settings: RelaySettings,
    ) -> Self {
        Self {
            id,
            outbox,
            log,
            clock,
            settings,
            claimed_next: None,
        }
    }

    /// Moves events until `shutdown`; the batches already claimed are finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delays = backoff(RETRY_MIN, RETRY_MAX);
        let mut last_housekeeping: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if last_housekeeping.is_none_or(|at| at.elapsed() >= self.settings.housekeeping_every) {
                self.housekeeping().await;
                last_housekeeping = Some(Instant::now());
            }
            let pause = match self.relay_once().await {
                Ok(0) => self.settings.idle_poll,
                Ok(_) => {
                    delays = backoff(RETRY_MIN, RETRY_MAX);
                    Duration::ZERO
                }
                Err(stage) => {
                    metrics::counter!(RELAY_ERRORS_TOTAL, "stage" => stage).increment(1);
                    delays.next().unwrap_or(Duration::from_secs(5))
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        if let Some(events) = self.take_claimed_next() {
            if let Err(stage) = self.send(&events).await {
                // Their lease lapses and another relay (or the next start) sends them.
                tracing::warn!(
                    stage,
                    count = events.len(),
                    "claimed outbox rows left for their lease to lapse"
                );
            }
        }
        tracing::info!(relay = %self.id, "relay stopped");
    }

    /// One round: sends the claimed batch (claiming one if none is), and claims the next batch
    /// while the log takes this one. Returns how many events moved, or the failing stage.
    ///
    /// Claiming ahead keeps per-aggregate order: the rows in flight stay `PENDING` until marked
    /// sent, and a claim passes over every event with an earlier pending one of its aggregate,
    /// so the next batch never holds a successor of an event in this one.
    pub async fn relay_once(&mut self) -> Result<usize, &'static str> {
        let events = match self.take_claimed_next() {
            Some(events) => events,
            None => self.claim().await?,
        };
        if events.is_empty() {
            return Ok(0);
        }
        let (sent, next) = tokio::join!(self.send(&events), self.claim_stamped());
        match next {
            Ok(next) if !next.1.is_empty() => self.claimed_next = Some(next),
            Ok(_) => {}
            Err(stage) => metrics::counter!(RELAY_ERRORS_TOTAL, "stage" => stage).increment(1),
        }
        sent?;
        Ok(events.len())
    }

    /// The batch claimed ahead, unless half its lease is gone: a slow send (a stalled broker)
    /// or a backoff may have held it, and a batch whose lease lapses mid-send can be claimed and
    /// sent by another relay too, ahead of its own successors. A batch let go waits for its lease
    /// to lapse and is claimed again.
    fn take_claimed_next(&mut self) -> Option<Vec<OutboxEvent>> {
        let (claimed_at_ms, events) = self.claimed_next.take()?;
        let age_ms = self.clock.now_ms() - claimed_at_ms;
        if age_ms < millis(self.settings.lease) / 2 {
            return Some(events);
        }
        tracing::debug!(
            count = events.len(),
            age_ms,
            "letting a batch claimed ahead go: half its lease is gone"
        );
        None
    }

    async fn claim_stamped(&self) -> Result<(i64, Vec<OutboxEvent>), &'static str> {
        let claimed_at_ms = self.clock.now_ms();
        self.claim().await.map(|events| (claimed_at_ms, events))
    }

    async fn claim(&self) -> Result<Vec<OutboxEvent>, &'static str> {
        let now = self.clock.now_ms();
        let lease_ms = millis(self.settings.lease);
        self.outbox
            .claim(&self.id, self.settings.batch_size, lease_ms, now)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "outbox claim failed");
                "claim"
            })
    }

    /// Appends `events` to the log, then marks them sent.
    async fn send(&self, events: &[OutboxEvent]) -> Result<(), &'static str> {
        // Appended per topic in claim order; one aggregate's events share a key, hence a
        // partition, hence their order.
        // Spans live until the log acknowledged their events.
        let spans: Vec<Option<tracing::Span>> = events.iter().map(relay_span).collect();
        let mut by_topic: BTreeMap<&str, Vec<(&OutboxEvent, Option<&tracing::Span>)>> =
            BTreeMap::new();
        for (event, span) in events.iter().zip(&spans) {
            by_topic
                .entry(event.topic.as_str())
                .or_default()
                .push((event, span.as_ref()));
        }
        for (topic, batch) in by_topic {
            let records = batch
                .iter()
                .map(|(event, span)| to_record(event, *span))
                .collect();
            let appended = tokio::time::timeout(
                self.settings.append_timeout,
                self.log.append(topic, records),
            )
            .await
            .unwrap_or(Err(PortError::Timeout {
                backend: "log",
                timeout: self.settings.append_timeout,
            }));
            if let Err(err) = appended {
                // The lease lapses and the rows are claimed again; nothing is lost.
                tracing::warn!(error = %err, topic, "relay append failed; rows stay pending");
                return Err("append");
            }
        }
        let ids: Vec<_> = events.iter().map(|event| event.id).collect();
        let acknowledged = self.clock.now_ms();
        self.outbox
            .mark_sent(&ids, acknowledged)
            .await
            .map_err(|err| {
                // Appended but not marked: the rows are sent again after the lease (at-least-once;
                // consumers deduplicate by order id).
                tracing::warn!(error = %err, "marking outbox rows sent failed");
                "mark_sent"
            })?;
        metrics::counter!(RELAY_PUBLISHED_TOTAL).increment(events.len() as u64);
        let lag = metrics::histogram!(RELAY_LAG);
        for event in events {
            lag.record((acknowledged - event.created_at_ms).max(0) as f64 / 1_000.0);
        }
        Ok(())
    }

    async fn housekeeping(&self) {
        match self.outbox.backlog().await {
            Ok(backlog) => metrics::gauge!(OUTBOX_BACKLOG).set(backlog as f64),
            Err(err) => tracing::warn!(error = %err, "cannot measure the outbox backlog"),
        }
        let cutoff = self.clock.now_ms() - millis(self.settings.sent_retention);
        if let Err(err) = self.outbox.purge_sent(cutoff).await {
            tracing::warn!(error = %err, "purging sent outbox rows failed");
        }
    }
}
