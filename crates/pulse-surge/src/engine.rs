//! The surge engine: consumes demand and supply, keeps per-cell sliding windows in the cache, and
//! publishes `surge:{h3}`.
//!
//! Windows are time buckets (`bucket` wide, `window / bucket` of them) of counters in the cache:
//! * `demand:{h3}:{bucket}` counts orders by the bucket of their acceptance time; each order is
//!   counted under a `seen:order:{id}` guard in the same atomic step, so redelivery never counts
//!   it twice;
//! * `supply:{h3}:{bucket}` counts available drivers by the cell and bucket of their *latest* ping:
//!   a newer ping moves the driver's count from its previous (cell, bucket) to the new one in one
//!   atomic batch, so a driver who moves or goes unavailable stops counting at once, and one who
//!   stops pinging drops out when its bucket leaves the window. A ping not newer than the stored
//!   one is ignored, which also makes redelivery harmless.
//!
//! Because all state is in the cache, engines sharing a consumer group (or a restarted engine)
//! compute the same multipliers. Offsets are committed only after the cache writes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use h3o::CellIndex;
use pulse_core::cache::{Cache, CacheWrite};
use pulse_core::clock::SharedClock;
use pulse_core::log::{
    ConsumedRecord, EventLog, LogConsumer, OutgoingRecord, DEFAULT_POLL_TIMEOUT,
};
use pulse_core::retry::backoff;
use pulse_core::{PortError, PortResult};
use pulse_proto::v1::{DriverLocationUpdated, OrderCreatedEvent};
use pulse_proto::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::geo::parse_cell;
use crate::pricing::{multiplier, round_multiplier};
use crate::{keys, SurgeValue};

/// Consumer group of the engine (seed contract).
pub const GROUP: &str = "pulse-engine-group";
/// Demand topic (seed contract).
pub const DEMAND_TOPIC: &str = "demand.orders";
/// Supply topic (seed contract).
pub const SUPPLY_TOPIC: &str = "supply.updates";
/// Where undecodable records go, with the reason in headers.
pub const DEAD_LETTER_TOPIC: &str = "pulse.dead-letter";

/// Time to compute and publish the multipliers of one batch of cells (seed metric name).
pub const SURGE_CALCULATION_DURATION: &str = "surge_calculation_duration";
/// Records consumed, by topic and outcome (`applied`, `duplicate`, `stale`, `dead_lettered`).
pub const ENGINE_RECORDS_TOTAL: &str = "pulse_engine_records_total";
/// Cells the engine currently keeps fresh.
pub const ACTIVE_CELLS: &str = "pulse_surge_active_cells";
/// Distribution of published multipliers.
pub const MULTIPLIER: &str = "pulse_surge_multiplier";

/// A record's topic, outcome label and the cells it touched.
type Applied = (String, &'static str, Vec<CellIndex>);
type LaneFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = PortResult<Vec<Applied>>> + Send + 'a>>;

/// Keys whose records are applied concurrently within a batch.
const LANES_IN_FLIGHT: usize = 64;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Length of the sliding window.
    pub window: Duration,
    /// Width of one window bucket (the window's resolution).
    pub bucket: Duration,
    /// `elasticity` in the multiplier formula.
    pub elasticity: f64,
    /// TTL of `surge:{h3}`.
    pub surge_ttl: Duration,
    /// How often active cells are recomputed without new events.
    pub tick: Duration,
    /// Most records handled per batch.
    pub batch_size: usize,
    /// Re-read the last window of both topics when starting, so an engine whose cache was empty
    /// (the in-process one after a restart) rebuilds its windows; with a shared cache the replay
    /// is absorbed by the idempotency guards.
    pub replay_window_on_start: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            bucket: Duration::from_secs(10),
            elasticity: 1.0,
            surge_ttl: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            batch_size: 1_000,
            replay_window_on_start: true,
        }
    }
}

/// A driver's latest ping, as stored at `driver:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DriverState {
    h3: String,
    available: bool,
    timestamp_ms: i64,
}

/// What the engine last published for a cell.
#[derive(Debug, Clone, Copy)]
struct Published {
    multiplier: f64,
    written_at_ms: i64,
}

/// One engine instance.
#[derive(Debug)]
pub struct SurgeEngine {
    log: Arc<dyn EventLog>,
    cache: Arc<dyn Cache>,
    clock: SharedClock,
    settings: EngineSettings,
    active: HashMap<CellIndex, Option<Published>>,
}

enum Outcome {
    Applied(Vec<CellIndex>),
    Skipped(&'static str, Vec<CellIndex>),
    Poison(String),
}

impl SurgeEngine {
    /// An engine reading `log` and keeping its state in `cache`.
    pub fn new(
        log: Arc<dyn EventLog>,
        cache: Arc<dyn Cache>,
        clock: SharedClock,
        settings: EngineSettings,
    ) -> Self {
        Self {
            log,
            cache,
            clock,
            settings,
            active: HashMap::new(),
        }
    }

    fn bucket_ms(&self) -> i64 {
        (self.settings.bucket.as_millis() as i64).max(1)
    }

    fn bucket_of(&self, timestamp_ms: i64) -> i64 {
        timestamp_ms.div_euclid(self.bucket_ms())
    }

    /// Buckets inside the window ending now.
    fn window_buckets(&self, now_ms: i64) -> std::ops::RangeInclusive<i64> {
        let count = (self.settings.window.as_millis() as i64 / self.bucket_ms()).max(1);
        let newest = self.bucket_of(now_ms);
        (newest - count + 1)..=newest
    }

    /// Counters outlive the window by two buckets so a bucket is never missing while counted.
    fn counter_ttl(&self) -> Duration {
        self.settings.window + self.settings.bucket * 2
    }

    /// Consumes until `shutdown`, backing off (with jitter) while a backend is down.
    pub async fn run(mut self, shutdown: CancellationToken) -> PortResult<()> {
        let mut consumer = loop {
            match self
                .log
                .consumer(GROUP, &[DEMAND_TOPIC, SUPPLY_TOPIC])
                .await
            {
                Ok(consumer) => break consumer,
                Err(err) if err.is_retryable() => {
                    tracing::warn!(error = %err, "engine cannot join its group; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(err) => return Err(err),
            }
        };
        if self.settings.replay_window_on_start {
            let window_start = self.clock.now_ms()
                - (self.settings.window + self.settings.bucket).as_millis() as i64;
            for topic in [DEMAND_TOPIC, SUPPLY_TOPIC] {
                if let Err(err) = consumer.seek_to_timestamp(topic, window_start).await {
                    tracing::warn!(error = %err, topic, "cannot replay the window; resuming from commits");
                }
            }
        }
        let mut next_tick = Instant::now() + self.settings.tick;
        while !shutdown.is_cancelled() {
            let polled = tokio::select! {
                () = shutdown.cancelled() => break,
                polled = consumer.poll(self.settings.batch_size, DEFAULT_POLL_TIMEOUT.min(self.settings.tick)) => polled,
            };
            match polled {
                Ok(records) if !records.is_empty() => {
                    if !self
                        .handle_with_retry(consumer.as_mut(), &records, &shutdown)
                        .await
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "engine poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.settings.tick;
                if let Err(err) = self.publish(self.active.keys().copied().collect()).await {
                    tracing::warn!(error = %err, "refreshing surge cells failed; will retry");
                }
            }
        }
        consumer.close().await
    }

    /// Handles a batch until it succeeds (true) or shutdown interrupts it (false, nothing
    /// committed: the batch is redelivered and its effects are idempotent).
    async fn handle_with_retry(
        &mut self,
        consumer: &mut dyn LogConsumer,
        records: &[ConsumedRecord],
        shutdown: &CancellationToken,
    ) -> bool {
        let mut delays = backoff(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let attempt = async {
                self.handle_batch(records).await?;
                let positions: Vec<_> = records.iter().map(|r| r.position.clone()).collect();
                consumer.commit(&positions).await
            };
            match attempt.await {
                Ok(()) => return true,
                Err(err) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %err, ?delay, "engine batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Applies a batch to the windows and publishes the cells it touched. Public for tests and
    /// benchmarks that drive the engine without a consumer.
    pub async fn handle_batch(&mut self, records: &[ConsumedRecord]) -> PortResult<()> {
        // Records of one key (an order, a driver) stay in order; different keys run concurrently,
        // because each cache round trip, not the work, is what a record costs.
        let mut lanes: Vec<Vec<&ConsumedRecord>> = Vec::new();
        let mut lane_of: HashMap<(&str, &[u8]), usize> = HashMap::new();
        for record in records {
            let lane = match record.key.as_deref() {
                Some(key) => *lane_of
                    .entry((record.position.topic.as_str(), key))
                    .or_insert_with(|| {
                        lanes.push(Vec::new());
                        lanes.len() - 1
                    }),
                None => {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                }
            };
            lanes[lane].push(record);
        }
        let this = &*self;
        // Boxed as `dyn Future + Send`: a closure-produced future borrowing the records is not
        // provably `Send` for every lifetime once spawned (rust-lang/rust#102211).
        let lane_futures: Vec<LaneFuture<'_>> = lanes
            .into_iter()
            .map(|lane| -> LaneFuture<'_> {
                Box::pin(async move {
                    let mut done = Vec::with_capacity(lane.len());
                    for record in lane {
                        done.push(this.apply(record).await?);
                    }
                    Ok(done)
                })
            })
            .collect();
        let outcomes: Vec<Vec<Applied>> = futures::stream::iter(lane_futures)
            .buffer_unordered(LANES_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut touched = BTreeSet::new();
        for (topic, label, cells) in outcomes.into_iter().flatten() {
            touched.extend(cells);
            metrics::counter!(ENGINE_RECORDS_TOTAL, "topic" => topic, "outcome" => label)
                .increment(1);
        }
        for cell in &touched {
            self.active.entry(*cell).or_insert(None);
        }
        self.publish(touched.into_iter().collect()).await
    }

    /// Applies one record; returns its topic, outcome label and the cells it touched.
    async fn apply(
        &self,
        record: &ConsumedRecord,
    ) -> PortResult<(String, &'static str, Vec<CellIndex>)> {
        let topic = record.position.topic.clone();
        let outcome = match topic.as_str() {
            DEMAND_TOPIC => self.apply_order(record).await?,
            SUPPLY_TOPIC => self.apply_ping(record).await?,
            other => Outcome::Poison(format!("unexpected topic {other}")),
        };
        Ok(match outcome {
            Outcome::Applied(cells) => (topic, "applied", cells),
            Outcome::Skipped(why, cells) => (topic, why, cells),
            Outcome::Poison(reason) => {
                self.dead_letter(record, &reason).await?;
                (topic, "dead_lettered", Vec::new())
            }
        })
    }

    async fn apply_order(&self, record: &ConsumedRecord) -> PortResult<Outcome> {
        let event = match OrderCreatedEvent::decode(record.payload.as_ref()) {
            Ok(event) => event,
            Err(err) => {
                return Ok(Outcome::Poison(format!(
                    "undecodable OrderCreatedEvent: {err}"
                )))
            }
        };
        let cell = match parse_cell(&event.pickup_h3) {
            Ok(cell) => cell,
            Err(err) => return Ok(Outcome::Poison(err.to_string())),
        };
        if event.order_id.is_empty() {
            return Ok(Outcome::Poison("order without an id".into()));
        }
        let bucket = self.bucket_of(event.timestamp);
        let count = CacheWrite::IncrBy {
            key: keys::demand(cell, bucket),
            delta: 1,
            ttl: Some(self.counter_ttl()),
        };
        let first_time = self
            .cache
            .apply_if_absent(
                &keys::seen_order(&event.order_id),
                self.counter_ttl(),
                vec![count],
            )
            .await?;
        Ok(if first_time {
            Outcome::Applied(vec![cell])
        } else {
            Outcome::Skipped("duplicate", vec![cell])
        })
    }

    async fn apply_ping(&self, record: &ConsumedRecord) -> PortResult<Outcome> {
        let event = match DriverLocationUpdated::decode(record.payload.as_ref()) {
            Ok(event) => event,
            Err(err) => {
                return Ok(Outcome::Poison(format!(
                    "undecodable DriverLocationUpdated: {err}"
                )))
            }
        };
        let cell = match parse_cell(&event.h3) {
            Ok(cell) => cell,
            Err(err) => return Ok(Outcome::Poison(err.to_string())),
        };
        if event.driver_id.is_empty() {
            return Ok(Outcome::Poison("ping without a driver id".into()));
        }
        let driver_key = keys::driver(&event.driver_id);
        let previous: Option<DriverState> = match self.cache.get(&driver_key).await? {
            Some(raw) => serde_json::from_slice(&raw).ok(),
            None => None,
        };
        let mut touched = vec![cell];
        if let Some(previous) = &previous {
            if previous.timestamp_ms >= event.timestamp {
                return Ok(Outcome::Skipped("stale", touched));
            }
        }
        let ttl = Some(self.counter_ttl());
        let state = DriverState {
            h3: event.h3.clone(),
            available: event.available,
            timestamp_ms: event.timestamp,
        };
        let state_bytes = serde_json::to_vec(&state)
            .map_err(|err| PortError::Invalid(format!("driver state: {err}")))?;
        let mut writes = vec![CacheWrite::Set {
            key: driver_key,
            value: Bytes::from(state_bytes),
            ttl,
        }];
        let oldest_counted = *self.window_buckets(self.clock.now_ms()).start();
        if let Some(previous) = previous.filter(|previous| previous.available) {
            let previous_bucket = self.bucket_of(previous.timestamp_ms);
            if let (Ok(previous_cell), true) = (
                parse_cell(&previous.h3),
                previous_bucket >= oldest_counted - 1,
            ) {
                writes.push(CacheWrite::IncrBy {
                    key: keys::supply(previous_cell, previous_bucket),
                    delta: -1,
                    ttl,
                });
                touched.push(previous_cell);
            }
        }
        if event.available {
            writes.push(CacheWrite::IncrBy {
                key: keys::supply(cell, self.bucket_of(event.timestamp)),
                delta: 1,
                ttl,
            });
        }
        self.cache.apply(writes).await?;
        Ok(Outcome::Applied(touched))
    }

    async fn dead_letter(&self, record: &ConsumedRecord, reason: &str) -> PortResult<()> {
        tracing::warn!(
            topic = %record.position.topic,
            partition = record.position.partition,
            offset = record.position.offset,
            reason,
            "dead-lettering a record"
        );
        let mut letter = OutgoingRecord {
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers: record.headers.clone(),
        };
        letter = letter
            .with_header("pulse.dlq.reason", reason.to_owned())
            .with_header("pulse.dlq.topic", record.position.topic.clone())
            .with_header("pulse.dlq.partition", record.position.partition.to_string())
            .with_header("pulse.dlq.offset", record.position.offset.to_string())
            .with_header("pulse.dlq.group", GROUP);
        self.log
            .append(DEAD_LETTER_TOPIC, vec![letter])
            .await
            .map(|_| ())
    }

    /// Window totals `(demand, supply)` of `cells` now.
    pub async fn window_totals(&self, cells: &[CellIndex]) -> PortResult<Vec<(u64, u64)>> {
        let buckets: Vec<i64> = self.window_buckets(self.clock.now_ms()).collect();
        let mut keys = Vec::with_capacity(cells.len() * buckets.len() * 2);
        for cell in cells {
            keys.extend(buckets.iter().map(|bucket| keys::demand(*cell, *bucket)));
            keys.extend(buckets.iter().map(|bucket| keys::supply(*cell, *bucket)));
        }
        let mut values = Vec::with_capacity(keys.len());
        // Bounded requests: a few thousand keys per MGET.
        for chunk in keys.chunks(4_096) {
            values.extend(self.cache.get_many(chunk).await?);
        }
        let sum = |slice: &[Option<Bytes>]| -> u64 {
            let total: i64 = slice
                .iter()
                .flatten()
                .filter_map(|raw| std::str::from_utf8(raw).ok()?.parse::<i64>().ok())
                .sum();
            total.max(0) as u64
        };
        Ok(values
            .chunks(buckets.len() * 2)
            .map(|cell_values| {
                let (demand, supply) = cell_values.split_at(buckets.len());
                (sum(demand), sum(supply))
            })
            .collect())
    }

    /// Recomputes `cells` and writes those whose multiplier changed or whose value is about to
    /// expire; forgets (and deletes) cells whose window is empty.
    async fn publish(&mut self, cells: Vec<CellIndex>) -> PortResult<()> {
        if cells.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let totals = self.window_totals(&cells).await?;
        let now_ms = self.clock.now_ms();
        let refresh_after_ms = self.settings.surge_ttl.as_millis() as i64 / 2;
        let mut writes = Vec::new();
        let mut forgotten = Vec::new();
        let mut published = Vec::new();
        for (cell, (demand, supply)) in cells.iter().zip(totals) {
            if demand == 0 && supply == 0 {
                writes.push(CacheWrite::Delete {
                    key: keys::surge(*cell),
                });
                forgotten.push(*cell);
                continue;
            }
            let value = SurgeValue {
                multiplier: round_multiplier(multiplier(demand, supply, self.settings.elasticity)),
                updated_at: now_ms.div_euclid(1_000),
                demand,
                supply,
            };
            let due = match self.active.get(cell).copied().flatten() {
                Some(last) => {
                    last.multiplier != value.multiplier
                        || now_ms - last.written_at_ms >= refresh_after_ms
                }
                None => true,
            };
            if due {
                let json = serde_json::to_vec(&value)
                    .map_err(|err| PortError::Invalid(format!("surge value: {err}")))?;
                writes.push(CacheWrite::Set {
                    key: keys::surge(*cell),
                    value: Bytes::from(json),
                    ttl: Some(self.settings.surge_ttl),
                });
                published.push((*cell, value.multiplier));
            }
        }
        if !writes.is_empty() {
            self.cache.apply(writes).await?;
        }
        for cell in forgotten {
            self.active.remove(&cell);
        }
        for (cell, value) in published {
            metrics::histogram!(MULTIPLIER).record(value);
            self.active.insert(
                cell,
                Some(Published {
                    multiplier: value,
                    written_at_ms: now_ms,
                }),
            );
        }
        metrics::gauge!(ACTIVE_CELLS).set(self.active.len() as f64);
        metrics::histogram!(SURGE_CALCULATION_DURATION).record(started.elapsed().as_secs_f64());
        Ok(())
    }
}
