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
//! * a driver on a ride never counts, whatever its pings say: the engine also reads
//!   `rides.events`, and a match takes its driver out of the supply (from the bucket its latest
//!   ping counts in), the ride's end puts it back. The ride lifecycle's store decides who is on a
//!   ride; the engine follows its events, ordered by their time, so a late or redelivered event
//!   never undoes a newer one.
//!
//! Because all state is in the cache, engines sharing a consumer group (or a restarted engine)
//! compute the same multipliers. Offsets are committed only after the counters are written, and the
//! published `surge:{h3}` is derived from them: both after every batch when caught up, and under
//! load at most every `commit_interval` and `publish_interval` respectively.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use h3o::CellIndex;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::clock::SharedClock;
use pulse_core::log::{ConsumedRecord, EventLog, LogConsumer, TopicSpec};
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::time::millis;
use pulse_core::{PortError, PortResult, TenantId};
use pulse_proto::v1::{DriverLocationUpdated, OrderCreatedEvent};
use pulse_proto::Message;
use pulse_runtime::processor::{ConsumerSettings, Poison, Processor, Tick};
use pulse_trace::TraceContext;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::pricing::{multiplier, round_multiplier};
use crate::SurgeValue;
use pulse_geo::parse_cell;

/// Consumer group of the engine (seed contract), before any deployment prefix.
pub const GROUP: &str = "pulse-engine-group";
/// Demand topic the engine reads (seed contract; the orders domain writes it).
pub const DEMAND_TOPIC: &str = "demand.orders";
/// Supply topic (seed contract; driver pings, written by the gateway).
pub const SUPPLY_TOPIC: &str = "supply.updates";
/// Where undecodable records go, with the reason in headers.
pub const DEAD_LETTER_TOPIC: &str = pulse_runtime::processor::DEAD_LETTER.name;

/// The topics the surge domain owns.
pub const TOPICS: &[TopicSpec] = &[TopicSpec {
    name: SUPPLY_TOPIC,
    carries: "DriverLocationUpdated pings, keyed by driver id",
}];

/// The log names and cache keys the engine uses in one deployment: the contract names behind a prefix (empty
/// by default), so deployments — or test runs — sharing one Kafka stay apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineNames {
    /// Consumer group.
    pub group: String,
    /// Demand topic.
    pub demand: String,
    /// Supply topic.
    pub supply: String,
    /// The rides' lifecycle events (who is on a ride).
    pub rides: String,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Cache key layout.
    pub keys: Keys,
}

impl EngineNames {
    /// The names under `prefix`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            group: format!("{prefix}{GROUP}"),
            demand: format!("{prefix}{DEMAND_TOPIC}"),
            supply: format!("{prefix}{SUPPLY_TOPIC}"),
            rides: pulse_marketplace::RIDE_EVENTS.named(prefix),
            dead_letter: pulse_runtime::processor::DEAD_LETTER.named(prefix),
            keys: Keys::with_prefix(prefix),
        }
    }
}

impl Default for EngineNames {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

/// A driver ping with its cell, or why it is poison.
fn decode_ping(record: &ConsumedRecord) -> Result<(CellIndex, DriverLocationUpdated), String> {
    let ping = DriverLocationUpdated::decode(record.payload.as_ref())
        .map_err(|err| format!("undecodable DriverLocationUpdated: {err}"))?;
    let cell = parse_cell(&ping.h3).map_err(|err| err.to_string())?;
    if ping.driver_id.is_empty() {
        return Err("ping without a driver id".into());
    }
    Ok((cell, ping))
}

/// A consumer span in a record's trace, for recorded traces only (see `pulse_trace`).
fn consume_span(record: &ConsumedRecord) -> Option<tracing::Span> {
    let header = |name: &str| {
        record
            .header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    let parent = TraceContext::from_headers(header).filter(TraceContext::is_sampled)?;
    let span = tracing::info_span!(
        parent: None,
        "engine.consume",
        otel.name = %format!("{} process", record.position.topic),
        otel.kind = "consumer",
        messaging.destination.name = %record.position.topic,
        messaging.destination.partition.id = record.position.partition,
        messaging.kafka.offset = record.position.offset,
    );
    Some(parent.adopt(span))
}

/// Time to compute and publish the multipliers of one batch of cells (seed metric name).
pub const SURGE_CALCULATION_DURATION: &str = "surge_calculation_duration";
/// Records consumed, by topic and outcome (`applied`, `duplicate`, `stale`, `dead_lettered`).
pub const ENGINE_RECORDS_TOTAL: &str = "pulse_engine_records_total";
/// Times an engine found the cache had lost the windows (and replayed the log to rebuild them).
pub const STATE_LOSSES_TOTAL: &str = "pulse_surge_state_losses_total";
/// Cells the engine currently keeps fresh.
pub const ACTIVE_CELLS: &str = "pulse_surge_active_cells";
/// Distribution of published multipliers.
pub const MULTIPLIER: &str = "pulse_surge_multiplier";

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
    /// Under load, the longest delay between applying a record and publishing its cell's
    /// multiplier (a caught-up engine publishes after every batch).
    pub publish_interval: Duration,
    /// Under load, the longest delay between applying a record and committing its offset (a
    /// caught-up engine commits after every batch). Records applied but not yet committed are
    /// redelivered after a crash or a rebalance, which the idempotent windows absorb.
    pub commit_interval: Duration,
    /// Re-read the last window of both topics when starting, so an engine whose cache was empty
    /// (the in-process one after a restart) rebuilds its windows; with a shared cache the replay
    /// is absorbed by the idempotency guards.
    pub replay_window_on_start: bool,
    /// Group and topic names.
    pub names: EngineNames,
}

impl EngineSettings {
    /// How the shared consumer loop runs the engine.
    pub fn consumer(&self) -> ConsumerSettings {
        ConsumerSettings {
            batch_size: self.batch_size,
            flush_interval: self.publish_interval,
            commit_interval: self.commit_interval,
            tick: self.tick,
            dead_letter_topic: self.names.dead_letter.clone(),
            ..ConsumerSettings::new(
                self.names.group.clone(),
                vec![
                    self.names.demand.clone(),
                    self.names.supply.clone(),
                    self.names.rides.clone(),
                ],
            )
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            bucket: Duration::from_secs(10),
            elasticity: 1.0,
            surge_ttl: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            batch_size: 5_000,
            publish_interval: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            replay_window_on_start: true,
            names: EngineNames::default(),
        }
    }
}

/// A driver's latest ping, as stored at `driver:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverState {
    /// Cell of the ping.
    pub h3: String,
    /// Whether the driver takes rides.
    pub available: bool,
    /// Report time, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Position of the ping (absent in state written before positions were kept).
    #[serde(default)]
    pub lat: f64,
    /// Position of the ping.
    #[serde(default)]
    pub lng: f64,
    /// On a ride (matched, not yet finished or cancelled): never counted as supply.
    #[serde(default)]
    pub on_ride: bool,
    /// Time of the ride event that last set `on_ride`, Unix milliseconds.
    #[serde(default)]
    pub ride_at_ms: i64,
    /// The order of the ride it is on (the map draws that ride's trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ride_order: Option<String>,
}

impl DriverState {
    /// Whether the driver counts as supply: its ping says available and it is on no ride.
    pub fn counts(&self) -> bool {
        self.available && !self.on_ride
    }
}

/// What the engine reads from the supply side: a ping, or a ride's start or end.
#[derive(Debug, Clone)]
enum SupplyChange {
    Ping(CellIndex, DriverLocationUpdated),
    Ride {
        driver_id: String,
        order_id: String,
        on_ride: bool,
        at_ms: i64,
    },
}

impl SupplyChange {
    fn driver_id(&self) -> &str {
        match self {
            SupplyChange::Ping(_, ping) => &ping.driver_id,
            SupplyChange::Ride { driver_id, .. } => driver_id,
        }
    }
}

/// How far back the ride events are re-read when the windows are rebuilt: rides last longer
/// than a window, and a driver matched before it is still on its ride.
const RIDE_REPLAY: Duration = Duration::from_secs(4 * 3600);

/// A ride event as the engine sees it (`None`: a step that changes no driver's supply), or
/// why it is poison.
fn decode_ride(record: &ConsumedRecord) -> Result<Option<SupplyChange>, String> {
    use pulse_proto::v1::ride_event::Kind;
    let event = pulse_proto::v1::RideEvent::decode(record.payload.as_ref())
        .map_err(|err| format!("undecodable RideEvent: {err}"))?;
    let on_ride = match Kind::try_from(event.kind) {
        Ok(Kind::Matched) => true,
        Ok(Kind::Finished | Kind::Cancelled) => false,
        _ => return Ok(None),
    };
    if event.driver_id.is_empty() {
        return Ok(None);
    }
    Ok(Some(SupplyChange::Ride {
        driver_id: event.driver_id,
        order_id: event.order_id,
        on_ride,
        at_ms: event.timestamp,
    }))
}

/// What the engine last published for a cell.
#[derive(Debug, Clone, Copy)]
struct Published {
    multiplier: f64,
    demand: u64,
    supply: u64,
    written_at_ms: i64,
}

/// One engine instance.
#[derive(Debug)]
pub struct SurgeEngine {
    log: Arc<dyn EventLog>,
    cache: Arc<dyn Cache>,
    clock: SharedClock,
    settings: EngineSettings,
    /// The live cells of each tenant (by its key layout).
    active: HashMap<Keys, HashMap<CellIndex, Option<Published>>>,
    /// Cells touched since the last flush, per tenant.
    dirty: HashMap<Keys, BTreeSet<CellIndex>>,
    /// The key layout of each tenant seen since start (see [`Keys::for_tenant`]).
    tenants: HashMap<Bytes, Keys>,
    /// The state generation this engine last saw in the cache (see [`Keys::state_generation`]).
    generation: Option<Bytes>,
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
            dirty: HashMap::new(),
            tenants: HashMap::new(),
            generation: None,
        }
    }

    /// Whether the windows in the cache were lost since this engine last looked: the generation
    /// marker is missing (the cache is empty, or was wiped) or another engine wrote a new one
    /// (it saw the loss first). A missing marker is written anew, so the next look is quiet.
    async fn state_lost(&mut self) -> PortResult<bool> {
        let stored = self
            .cache
            .get(&self.settings.names.keys.state_generation())
            .await?;
        match (stored, &self.generation) {
            (Some(stored), Some(known)) if stored == *known => Ok(false),
            (Some(stored), None) => {
                self.generation = Some(stored);
                Ok(false)
            }
            (Some(stored), Some(_)) => {
                self.generation = Some(stored);
                Ok(true)
            }
            (None, _) => {
                let generation = Bytes::from(uuid::Uuid::new_v4().to_string());
                self.cache
                    .set(
                        &self.settings.names.keys.state_generation(),
                        generation.clone(),
                        None,
                    )
                    .await?;
                self.generation = Some(generation);
                Ok(true)
            }
        }
    }

    /// Where a replay that rebuilds the windows starts: one window (and a bucket) back.
    fn replay_from_ms(&self) -> i64 {
        self.clock.now_ms() - millis(self.settings.window + self.settings.bucket)
    }

    fn bucket_ms(&self) -> i64 {
        millis(self.settings.bucket).max(1)
    }

    fn bucket_of(&self, timestamp_ms: i64) -> i64 {
        timestamp_ms.div_euclid(self.bucket_ms())
    }

    /// Buckets inside the window ending now.
    fn window_buckets(&self, now_ms: i64) -> std::ops::RangeInclusive<i64> {
        let count = (millis(self.settings.window) / self.bucket_ms()).max(1);
        let newest = self.bucket_of(now_ms);
        (newest - count + 1)..=newest
    }

    /// Counters outlive the window by two buckets so a bucket is never missing while counted.
    fn counter_ttl(&self) -> Duration {
        self.settings.window + self.settings.bucket * 2
    }

    /// Consumes until `shutdown` through the shared consumer loop.
    pub async fn run(self, shutdown: CancellationToken) -> PortResult<()> {
        let log = self.log.clone();
        let consumer = self.settings.consumer();
        pulse_runtime::processor::run(log, self, consumer, shutdown).await
    }

    /// Applies a batch to the windows and marks the cells it touched for the next
    /// [`SurgeEngine::flush`]; returns the records it cannot decode, for the dead-letter topic.
    /// Public for benchmarks that drive the engine without a consumer.
    pub async fn handle_batch(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        // Traced records get a consume span and, under it, one for the cache write their batch
        // makes; both end when the batch's writes are done.
        let consume_spans: Vec<tracing::Span> = records.iter().filter_map(consume_span).collect();
        let _write_spans: Vec<tracing::Span> = consume_spans
            .iter()
            .map(|parent| tracing::info_span!(parent: parent, "cache.write", otel.name = "surge window update"))
            .collect();
        let mut outcomes: HashMap<(&str, &'static str), u64> = HashMap::new();
        let (demand_topic, supply_topic) = (
            self.settings.names.demand.clone(),
            self.settings.names.supply.clone(),
        );
        let mut orders: Vec<(Keys, CellIndex, Guarded)> = Vec::new();
        let mut pings: Vec<(Keys, SupplyChange)> = Vec::new();
        let mut poison: Vec<Poison> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let topic = record.position.topic.as_str();
            let decoded = match self.keys_of(record) {
                Err(reason) => Err(reason),
                Ok(keys) if topic == self.settings.names.demand => self
                    .decode_order(&keys, record)
                    .map(|(cell, guarded)| orders.push((keys, cell, guarded))),
                Ok(keys) if topic == self.settings.names.supply => decode_ping(record)
                    .map(|(cell, ping)| pings.push((keys, SupplyChange::Ping(cell, ping)))),
                Ok(keys) if topic == self.settings.names.rides => {
                    decode_ride(record).map(|change| {
                        if let Some(change) = change {
                            pings.push((keys, change));
                        }
                    })
                }
                Ok(_) => Err(format!("unexpected topic {topic}")),
            };
            if let Err(reason) = decoded {
                poison.push(Poison { index, reason });
            }
        }
        let mut touched: BTreeSet<(Keys, CellIndex)> = BTreeSet::new();
        // A constant number of cache round trips per batch, whatever its size: the cost of a
        // record is the round trip, not the work. Demand and supply touch different keys, so
        // their round trips overlap.
        let demand = async {
            if orders.is_empty() {
                return Ok(Vec::new());
            }
            let guarded = orders
                .iter()
                .map(|(_, _, guarded)| guarded.clone())
                .collect();
            self.cache.apply_if_absent_many(guarded).await
        };
        let supply = async {
            if pings.is_empty() {
                return Ok(Vec::new());
            }
            self.apply_pings(&pings, &mut touched).await
        };
        let (demand, supply) = tokio::join!(demand, supply);
        for ((keys, cell, _), applied) in orders.iter().zip(demand?) {
            touched.insert((keys.clone(), *cell));
            let label = if applied { "applied" } else { "duplicate" };
            *outcomes.entry((demand_topic.as_str(), label)).or_default() += 1;
        }
        for (label, count) in supply? {
            *outcomes.entry((supply_topic.as_str(), label)).or_default() += count;
        }
        for refused in &poison {
            let topic = records[refused.index].position.topic.as_str();
            *outcomes.entry((topic, "dead_lettered")).or_default() += 1;
        }
        for ((topic, label), count) in outcomes {
            metrics::counter!(ENGINE_RECORDS_TOTAL, "topic" => topic.to_owned(), "outcome" => label)
                .increment(count);
        }
        for (keys, cell) in touched {
            self.active
                .entry(keys.clone())
                .or_default()
                .entry(cell)
                .or_insert(None);
            self.dirty.entry(keys).or_default().insert(cell);
        }
        Ok(poison)
    }

    /// Publishes the cells touched since the last flush. The counters (the effect of the
    /// records) are already in the cache; the published multiplier is derived from them, so a
    /// flush may lag the commit by up to `publish_interval`.
    pub async fn flush(&mut self) -> PortResult<()> {
        let dirty: Vec<Keys> = self.dirty.keys().cloned().collect();
        for keys in dirty {
            let cells: Vec<CellIndex> = self.dirty[&keys].iter().copied().collect();
            self.publish(&keys, cells).await?;
            self.dirty.remove(&keys);
        }
        Ok(())
    }

    /// The key layout of the record's tenant (its `pulse.tenant` header; absent = `default`),
    /// or why the record is poison.
    fn keys_of(&mut self, record: &ConsumedRecord) -> Result<Keys, String> {
        let Some(raw) = record.header(TENANT_HEADER) else {
            return Ok(self.settings.names.keys.clone());
        };
        if let Some(keys) = self.tenants.get(raw) {
            return Ok(keys.clone());
        }
        let tenant = TenantId::from_header(Some(raw)).map_err(|err| err.to_string())?;
        let keys = self.settings.names.keys.for_tenant(&tenant);
        self.tenants.insert(raw.clone(), keys.clone());
        Ok(keys)
    }

    /// The guarded demand increment of an order record, or why it is poison.
    fn decode_order(
        &self,
        keys: &Keys,
        record: &ConsumedRecord,
    ) -> Result<(CellIndex, Guarded), String> {
        let event = OrderCreatedEvent::decode(record.payload.as_ref())
            .map_err(|err| format!("undecodable OrderCreatedEvent: {err}"))?;
        let cell = parse_cell(&event.pickup_h3).map_err(|err| err.to_string())?;
        if event.order_id.is_empty() {
            return Err("order without an id".into());
        }
        let guarded = Guarded {
            guard: keys.seen_order(&event.order_id),
            guard_ttl: self.counter_ttl(),
            writes: vec![CacheWrite::IncrBy {
                key: keys.demand(cell, self.bucket_of(event.timestamp)),
                delta: 1,
                ttl: Some(self.counter_ttl()),
            }],
        };
        Ok((cell, guarded))
    }

    /// Applies driver pings and ride events in order: each newer ping moves its driver's count
    /// from the previous (cell, bucket) to its own; a match takes the driver out of the count,
    /// the ride's end puts it back; older or repeated ones are ignored. One read of the drivers'
    /// latest state and one atomic batch of writes for the whole slice.
    async fn apply_pings(
        &self,
        pings: &[(Keys, SupplyChange)],
        touched: &mut BTreeSet<(Keys, CellIndex)>,
    ) -> PortResult<Vec<(&'static str, u64)>> {
        // A driver is a driver of one tenant: the same id in two tenants is two drivers.
        let mut drivers: Vec<(&Keys, &str)> = pings
            .iter()
            .map(|(keys, change)| (keys, change.driver_id()))
            .collect();
        drivers.sort_unstable();
        drivers.dedup();
        let driver_keys: Vec<String> = drivers.iter().map(|(keys, id)| keys.driver(id)).collect();
        let stored = self.cache.get_many(&driver_keys).await?;
        let mut latest: HashMap<(&Keys, &str), Option<DriverState>> = drivers
            .iter()
            .zip(stored)
            .map(|(driver, raw)| {
                (
                    *driver,
                    raw.and_then(|raw| serde_json::from_slice(&raw).ok()),
                )
            })
            .collect();
        let ttl = Some(self.counter_ttl());
        let oldest_counted = *self.window_buckets(self.clock.now_ms()).start();
        let (mut applied, mut stale) = (0, 0);
        let mut writes = Vec::new();
        let mut changed = BTreeSet::new();
        for (keys, change) in pings {
            let driver = (keys, change.driver_id());
            let previous = latest.get(&driver).cloned().flatten();
            let next = match change {
                SupplyChange::Ping(cell, ping) => {
                    touched.insert((keys.clone(), *cell));
                    if previous
                        .as_ref()
                        .is_some_and(|previous| previous.timestamp_ms >= ping.timestamp)
                    {
                        stale += 1;
                        continue;
                    }
                    DriverState {
                        h3: ping.h3.clone(),
                        available: ping.available,
                        timestamp_ms: ping.timestamp,
                        lat: ping.lat,
                        lng: ping.lng,
                        on_ride: previous.as_ref().is_some_and(|previous| previous.on_ride),
                        ride_at_ms: previous.as_ref().map_or(0, |previous| previous.ride_at_ms),
                        ride_order: previous
                            .as_ref()
                            .and_then(|previous| previous.ride_order.clone()),
                    }
                }
                SupplyChange::Ride {
                    on_ride,
                    at_ms,
                    order_id,
                    ..
                } => {
                    if previous
                        .as_ref()
                        .is_some_and(|previous| previous.ride_at_ms >= *at_ms)
                    {
                        stale += 1;
                        continue;
                    }
                    // A driver matched before its first ping: remembered, so it never counts.
                    let base = previous.clone().unwrap_or(DriverState {
                        h3: String::new(),
                        available: false,
                        timestamp_ms: 0,
                        lat: 0.0,
                        lng: 0.0,
                        on_ride: false,
                        ride_at_ms: 0,
                        ride_order: None,
                    });
                    DriverState {
                        on_ride: *on_ride,
                        ride_at_ms: *at_ms,
                        ride_order: on_ride.then(|| order_id.clone()),
                        ..base
                    }
                }
            };
            // Take the driver out of where it counted, and count it where it counts now.
            for (state, delta) in [(previous.as_ref(), -1), (Some(&next), 1)] {
                let Some(state) = state.filter(|state| state.counts()) else {
                    continue;
                };
                let bucket = self.bucket_of(state.timestamp_ms);
                if let (Ok(cell), true) = (parse_cell(&state.h3), bucket >= oldest_counted - 1) {
                    writes.push(CacheWrite::IncrBy {
                        key: keys.supply(cell, bucket),
                        delta,
                        ttl,
                    });
                    touched.insert((keys.clone(), cell));
                }
            }
            latest.insert(driver, Some(next));
            changed.insert(driver);
            applied += 1;
        }
        for driver in changed {
            let (keys, driver_id) = driver;
            if let Some(Some(state)) = latest.get(&driver) {
                let json = serde_json::to_vec(state)
                    .map_err(|err| PortError::Invalid(format!("driver state: {err}")))?;
                writes.push(CacheWrite::Set {
                    key: keys.driver(driver_id),
                    value: Bytes::from(json),
                    ttl,
                });
                // The map lists available drivers and drivers on a ride apart.
                for (index, member) in [
                    (keys.available_drivers(), state.counts()),
                    (keys.drivers_on_ride(), state.on_ride),
                ] {
                    writes.push(if member {
                        CacheWrite::IndexAdd {
                            key: index,
                            member: driver_id.to_owned(),
                            score: state.timestamp_ms.max(state.ride_at_ms),
                            ttl,
                        }
                    } else {
                        CacheWrite::IndexRemove {
                            key: index,
                            member: driver_id.to_owned(),
                        }
                    });
                }
            }
        }
        // Counts and latest pings in one atomic batch: a crash leaves all or nothing, and a
        // redelivered ping is then recognised as stale.
        self.cache.apply(writes).await?;
        Ok(vec![("applied", applied), ("stale", stale)])
    }

    /// Drops index members that outlived what they point at: cells whose value expired (their
    /// engine stopped before forgetting them) and drivers whose latest ping left the window.
    async fn trim_indexes(&self) -> PortResult<()> {
        let now_ms = self.clock.now_ms();
        let window_start = self.window_start_ms();
        let tenants = std::iter::once(&self.settings.names.keys).chain(self.tenants.values());
        let writes = tenants
            .flat_map(|keys| {
                [
                    CacheWrite::IndexTrim {
                        key: keys.surge_cells(),
                        below: now_ms,
                    },
                    CacheWrite::IndexTrim {
                        key: keys.available_drivers(),
                        below: window_start,
                    },
                ]
            })
            .collect();
        self.cache.apply(writes).await
    }

    /// Start of the oldest bucket of the window ending now, Unix milliseconds.
    fn window_start_ms(&self) -> i64 {
        *self.window_buckets(self.clock.now_ms()).start() * self.bucket_ms()
    }

    /// Window totals `(demand, supply)` of `cells` of the tenant whose layout is `keys`, now.
    pub async fn window_totals(
        &self,
        keys: &Keys,
        cells: &[CellIndex],
    ) -> PortResult<Vec<(u64, u64)>> {
        let buckets: Vec<i64> = self.window_buckets(self.clock.now_ms()).collect();
        let mut counters = Vec::with_capacity(cells.len() * buckets.len() * 2);
        for cell in cells {
            counters.extend(buckets.iter().map(|bucket| keys.demand(*cell, *bucket)));
            counters.extend(buckets.iter().map(|bucket| keys.supply(*cell, *bucket)));
        }
        let mut values = Vec::with_capacity(counters.len());
        // Bounded requests: a few thousand keys per MGET.
        for chunk in counters.chunks(4_096) {
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
    async fn publish(&mut self, keys: &Keys, cells: Vec<CellIndex>) -> PortResult<()> {
        if cells.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let totals = self.window_totals(keys, &cells).await?;
        let active = self.active.entry(keys.clone()).or_default();
        let now_ms = self.clock.now_ms();
        let refresh_after_ms = millis(self.settings.surge_ttl) / 2;
        let mut writes = Vec::new();
        let mut forgotten = Vec::new();
        let mut published = Vec::new();
        for (cell, (demand, supply)) in cells.iter().zip(totals) {
            if demand == 0 && supply == 0 {
                writes.push(CacheWrite::Delete {
                    key: keys.surge(*cell),
                });
                writes.push(CacheWrite::IndexRemove {
                    key: keys.surge_cells(),
                    member: cell.to_string(),
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
            // The counts are part of the published value (the map shows them), so a change of
            // either is published too, not only a change of the multiplier.
            let due = match active.get(cell).copied().flatten() {
                Some(last) => {
                    last.multiplier != value.multiplier
                        || (last.demand, last.supply) != (demand, supply)
                        || now_ms - last.written_at_ms >= refresh_after_ms
                }
                None => true,
            };
            if due {
                let json = serde_json::to_vec(&value)
                    .map_err(|err| PortError::Invalid(format!("surge value: {err}")))?;
                writes.push(CacheWrite::Set {
                    key: keys.surge(*cell),
                    value: Bytes::from(json),
                    ttl: Some(self.settings.surge_ttl),
                });
                writes.push(CacheWrite::IndexAdd {
                    key: keys.surge_cells(),
                    member: cell.to_string(),
                    score: now_ms + millis(self.settings.surge_ttl),
                    ttl: Some(self.settings.surge_ttl),
                });
                published.push((*cell, value));
            }
        }
        if !writes.is_empty() {
            self.cache.apply(writes).await?;
        }
        let active = self.active.entry(keys.clone()).or_default();
        for cell in forgotten {
            active.remove(&cell);
        }
        for (cell, value) in published {
            metrics::histogram!(MULTIPLIER).record(value.multiplier);
            active.insert(
                cell,
                Some(Published {
                    multiplier: value.multiplier,
                    demand: value.demand,
                    supply: value.supply,
                    written_at_ms: now_ms,
                }),
            );
        }
        if active.is_empty() {
            self.active.remove(keys);
        }
        let cells: usize = self.active.values().map(HashMap::len).sum();
        metrics::gauge!(ACTIVE_CELLS).set(cells as f64);
        metrics::histogram!(SURGE_CALCULATION_DURATION).record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[async_trait]
impl Processor for SurgeEngine {
    fn name(&self) -> &'static str {
        "engine"
    }

    /// Seeks back one window when the windows may be lost — configured so (an in-process cache
    /// after a restart), or the cache holds no state generation (a new or wiped cache) — so they
    /// are rebuilt; with a shared cache the replay is absorbed by the idempotency guards.
    async fn start(&mut self, consumer: &mut dyn LogConsumer) -> PortResult<()> {
        let lost = match self.state_lost().await {
            Ok(lost) => lost,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the state generation; assuming the windows are there");
                false
            }
        };
        if !(self.settings.replay_window_on_start || lost) {
            return Ok(());
        }
        let window_start = self.replay_from_ms();
        let rides_start = window_start.min(self.clock.now_ms() - millis(RIDE_REPLAY));
        for (topic, from_ms) in [
            (&self.settings.names.demand, window_start),
            (&self.settings.names.supply, window_start),
            (&self.settings.names.rides, rides_start),
        ] {
            if let Err(err) = consumer.seek_to_timestamp(topic, from_ms).await {
                tracing::warn!(error = %err, topic, "cannot replay the window; resuming from commits");
            }
        }
        Ok(())
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        self.handle_batch(records).await
    }

    async fn flush(&mut self) -> PortResult<()> {
        SurgeEngine::flush(self).await
    }

    /// Checks that the windows are still in the cache (and asks for a replay when the cache
    /// lost them), recomputes the active cells (their windows slide without new events) and
    /// trims the indexes.
    async fn tick(&mut self) -> PortResult<Tick> {
        if self.state_lost().await? {
            metrics::counter!(STATE_LOSSES_TOTAL).increment(1);
            // What was published came from the lost counters; the replay republishes.
            self.active.clear();
            return Ok(Tick::Replay {
                from_ms: self.replay_from_ms(),
                reason: "cache_state_lost",
            });
        }
        let mut refreshed = Ok(());
        let tenants: Vec<(Keys, Vec<CellIndex>)> = self
            .active
            .iter()
            .map(|(keys, cells)| (keys.clone(), cells.keys().copied().collect()))
            .collect();
        for (keys, cells) in tenants {
            refreshed = refreshed.and(self.publish(&keys, cells).await);
        }
        let trimmed = self.trim_indexes().await;
        refreshed.and(trimmed).map(|()| Tick::Continue)
    }
}

#[cfg(test)]
mod window_tests {
    use pulse_core::clock::{Clock, ManualClock};
    use pulse_core::log::{OutgoingRecord, RecordPosition};
    use pulse_memory::MemoryCache;

    use super::*;
    use pulse_geo::Point;

    /// The engine's log is used only to dead-letter; these batches hold no poison.
    #[derive(Debug)]
    struct UnusedLog;

    #[async_trait]
    impl EventLog for UnusedLog {
        async fn create_topic(&self, _: &str, _: u32) -> PortResult<()> {
            Err(PortError::Invalid("no log in this test".into()))
        }
        async fn partition_count(&self, _: &str) -> PortResult<u32> {
            Err(PortError::Invalid("no log in this test".into()))
        }
        async fn append(&self, _: &str, _: Vec<OutgoingRecord>) -> PortResult<Vec<RecordPosition>> {
            Err(PortError::Invalid("no log in this test".into()))
        }
        async fn consumer(&self, _: &str, _: &[&str]) -> PortResult<Box<dyn LogConsumer>> {
            Err(PortError::Invalid("no log in this test".into()))
        }
        async fn ping(&self) -> PortResult<()> {
            Ok(())
        }
    }

    fn cell(offset: f64) -> CellIndex {
        Point::new(52.52 + offset, 13.405).expect("point").cell()
    }

    fn ping(driver: &str, cell: CellIndex, at_ms: i64, offset: i64) -> ConsumedRecord {
        let ping = DriverLocationUpdated {
            driver_id: driver.into(),
            h3: cell.to_string(),
            available: true,
            timestamp: at_ms,
            lat: 52.52,
            lng: 13.405,
            vehicle_type: String::new(),
        };
        ConsumedRecord {
            position: RecordPosition {
                topic: SUPPLY_TOPIC.into(),
                partition: 0,
                offset,
            },
            key: Some(Bytes::from(driver.to_owned())),
            payload: Bytes::from(ping.encode_to_vec()),
            headers: Vec::new(),
            timestamp_ms: at_ms,
        }
    }

    /// A driver whose previous ping sits in the oldest bucket of the window still counts there
    /// until it moves; when it moves, it stops counting there at once.
    #[tokio::test]
    async fn a_driver_moving_at_the_window_edge_leaves_its_old_cell() {
        let clock = ManualClock::new(1_700_000_000_000);
        let cache = MemoryCache::new(Arc::new(clock.clone()), 1_000);
        let settings = EngineSettings::default();
        let mut engine = SurgeEngine::new(
            Arc::new(UnusedLog),
            Arc::new(cache),
            Arc::new(clock.clone()),
            settings.clone(),
        );
        let (here, there) = (cell(0.0), cell(0.01));
        engine
            .handle_batch(&[ping("d1", here, clock.now_ms(), 0)])
            .await
            .expect("first ping");
        assert_eq!(
            engine
                .window_totals(&settings.names.keys, &[here])
                .await
                .expect("totals"),
            [(0, 1)]
        );

        clock.advance(settings.window - settings.bucket);
        engine
            .handle_batch(&[ping("d1", there, clock.now_ms(), 1)])
            .await
            .expect("second ping");
        assert_eq!(
            engine
                .window_totals(&settings.names.keys, &[here, there])
                .await
                .expect("totals"),
            [(0, 0), (0, 1)]
        );
    }

    fn ride(
        driver: &str,
        kind: pulse_proto::v1::ride_event::Kind,
        at_ms: i64,
        offset: i64,
    ) -> ConsumedRecord {
        let event = pulse_proto::v1::RideEvent {
            order_id: uuid::Uuid::now_v7().to_string(),
            kind: kind as i32,
            driver_id: driver.into(),
            timestamp: at_ms,
            ..Default::default()
        };
        ConsumedRecord {
            position: RecordPosition {
                topic: pulse_marketplace::RIDE_EVENTS.name.into(),
                partition: 0,
                offset,
            },
            key: None,
            payload: Bytes::from(event.encode_to_vec()),
            headers: Vec::new(),
            timestamp_ms: at_ms,
        }
    }

    /// A matched driver leaves the supply whatever its pings say, and comes back when the ride
    /// ends; a late, older ride event changes nothing.
    #[tokio::test]
    async fn a_driver_on_a_ride_never_counts_until_the_ride_ends() {
        use pulse_proto::v1::ride_event::Kind;
        let clock = ManualClock::new(1_700_000_000_000);
        let cache = MemoryCache::new(Arc::new(clock.clone()), 1_000);
        let settings = EngineSettings::default();
        let mut engine = SurgeEngine::new(
            Arc::new(UnusedLog),
            Arc::new(cache),
            Arc::new(clock.clone()),
            settings.clone(),
        );
        let here = cell(0.0);
        async fn totals(engine: &SurgeEngine, keys: &Keys, cell: CellIndex) -> Vec<(u64, u64)> {
            engine.window_totals(keys, &[cell]).await.expect("totals")
        }
        let keys = settings.names.keys.clone();
        let t0 = clock.now_ms();
        engine
            .handle_batch(&[ping("d1", here, t0, 0), ping("d2", here, t0, 1)])
            .await
            .expect("pings");
        assert_eq!(totals(&engine, &keys, here).await, [(0, 2)]);
        engine
            .handle_batch(&[ride("d1", Kind::Matched, t0 + 10, 0)])
            .await
            .expect("match");
        assert_eq!(
            totals(&engine, &keys, here).await,
            [(0, 1)],
            "the matched driver left the supply"
        );
        engine
            .handle_batch(&[
                ping("d1", here, t0 + 20, 2),
                ride("d1", Kind::Started, t0 + 30, 1),
            ])
            .await
            .expect("pings on the ride");
        assert_eq!(
            totals(&engine, &keys, here).await,
            [(0, 1)],
            "its pings do not count while on the ride"
        );
        engine
            .handle_batch(&[ride("d1", Kind::Finished, t0 + 40, 2)])
            .await
            .expect("finish");
        assert_eq!(
            totals(&engine, &keys, here).await,
            [(0, 2)],
            "back once the ride ended"
        );
        engine
            .handle_batch(&[ride("d1", Kind::Matched, t0 + 10, 0)])
            .await
            .expect("a redelivered, older match");
        assert_eq!(
            totals(&engine, &keys, here).await,
            [(0, 2)],
            "an older ride event changes nothing"
        );
    }
}
