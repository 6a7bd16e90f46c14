//! The `tracker` processor: keeps the geo index and the drivers' statuses up to date from the
//! drivers' pings (`supply.updates`) and the rides' events (`rides.events`), in its own group.
//!
//! * A ping moves its driver in the geo index unless it is not newer than the one indexed (out of
//!   order on the log, or redelivered): then it is ignored everywhere. An applied ping is
//!   reported to the store, which keeps the driver `available` or `offline` as the ping says —
//!   unless the driver is on a ride — and adds the point to the ride's trail when it is.
//! * A match marks its driver busy in the index (nearby searches skip it at once); the end of
//!   the ride frees it. The store's status decides the match itself; the index follows.
//!
//! Every effect is idempotent (ordered by report or event time), so redelivery is harmless and
//! offsets are committed after the batch's effects are written.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pulse_core::geo_index::{DriverPosition, GeoIndex};
use pulse_core::log::ConsumedRecord;
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::{PortResult, TenantId};
use pulse_proto::v1::{ride_event::Kind, DriverLocationUpdated, RideEvent};
use pulse_proto::Message;
use pulse_runtime::processor::{ConsumerSettings, Poison, Processor};

use crate::model::DriverReport;
use crate::ports::RideStore;

/// Consumer group of the `tracker` processor, before any deployment prefix.
pub const GROUP: &str = "pulse-tracker-group";
/// Records the tracker handled, by kind (`ping`, `ride_event`) and outcome (`applied`,
/// `stale`, `ignored`).
pub const RECORDS_TOTAL: &str = "pulse_tracker_records_total";

/// The `[tracker]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// A driver whose latest ping is older than this, ms, is never proposed or shown nearby.
    pub max_age_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { max_age_ms: 30_000 }
    }
}

impl TrackerConfig {
    /// How old a driver's latest ping may be.
    pub fn max_age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_age_ms)
    }

    /// Why the section is unusable, if it is.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age_ms == 0 {
            return Err("tracker.max_age_ms must be positive".into());
        }
        Ok(())
    }
}

/// The topics the tracker reads, named for one deployment.
#[derive(Debug, Clone)]
pub struct TrackerTopics {
    /// Drivers' pings.
    pub supply: String,
    /// Rides' events.
    pub rides: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct Tracker {
    geo: Arc<dyn GeoIndex>,
    store: Arc<dyn RideStore>,
    topics: TrackerTopics,
}

enum Decoded {
    Ping(TenantId, DriverLocationUpdated),
    Ride(TenantId, RideEvent),
}

impl Tracker {
    /// A tracker writing `geo` and `store`.
    pub fn new(geo: Arc<dyn GeoIndex>, store: Arc<dyn RideStore>, topics: TrackerTopics) -> Self {
        Self { geo, store, topics }
    }

    /// How it consumes: its own group on both topics.
    pub fn consumer(&self, group: String, dead_letter: String) -> ConsumerSettings {
        ConsumerSettings {
            dead_letter_topic: dead_letter,
            ..ConsumerSettings::new(
                group,
                vec![self.topics.supply.clone(), self.topics.rides.clone()],
            )
        }
    }

    fn decode(&self, record: &ConsumedRecord) -> Result<Decoded, String> {
        let tenant = TenantId::from_header(record.header(TENANT_HEADER).map(|raw| raw.as_ref()))
            .map_err(|err| err.to_string())?;
        let topic = record.position.topic.as_str();
        if topic == self.topics.supply {
            let ping = DriverLocationUpdated::decode(record.payload.as_ref())
                .map_err(|err| format!("undecodable DriverLocationUpdated: {err}"))?;
            if ping.driver_id.is_empty() {
                return Err("ping without a driver id".into());
            }
            let on_earth =
                (-90.0..=90.0).contains(&ping.lat) && (-180.0..=180.0).contains(&ping.lng);
            if !on_earth {
                return Err(format!(
                    "ping at an impossible position {},{}",
                    ping.lat, ping.lng
                ));
            }
            Ok(Decoded::Ping(tenant, ping))
        } else if topic == self.topics.rides {
            let event = RideEvent::decode(record.payload.as_ref())
                .map_err(|err| format!("undecodable RideEvent: {err}"))?;
            Ok(Decoded::Ride(tenant, event))
        } else {
            Err(format!("unexpected topic {topic}"))
        }
    }

    async fn apply_pings(
        &self,
        tenant: &TenantId,
        pings: Vec<DriverLocationUpdated>,
    ) -> PortResult<()> {
        let positions: Vec<DriverPosition> = pings
            .iter()
            .map(|ping| DriverPosition {
                driver_id: ping.driver_id.clone(),
                lat: ping.lat,
                lng: ping.lng,
                at_ms: ping.timestamp,
                available: ping.available,
                vehicle_type: (!ping.vehicle_type.is_empty()).then(|| ping.vehicle_type.clone()),
            })
            .collect();
        let applied = self.geo.update(tenant, &positions).await?;
        let reports: Vec<DriverReport> = positions
            .into_iter()
            .zip(&applied)
            .filter(|(_, applied)| **applied)
            .map(|(position, _)| DriverReport {
                driver_id: position.driver_id,
                available: position.available,
                vehicle_type: position.vehicle_type,
                at_ms: position.at_ms,
                lat: position.lat,
                lng: position.lng,
            })
            .collect();
        let fresh = reports.len() as u64;
        metrics::counter!(RECORDS_TOTAL, "kind" => "ping", "outcome" => "applied").increment(fresh);
        metrics::counter!(RECORDS_TOTAL, "kind" => "ping", "outcome" => "stale")
            .increment(applied.len() as u64 - fresh);
        if reports.is_empty() {
            return Ok(());
        }
        self.store.report_drivers(tenant, &reports).await
    }

    async fn apply_ride(&self, tenant: &TenantId, event: &RideEvent) -> PortResult<()> {
        let busy = match Kind::try_from(event.kind) {
            Ok(Kind::Matched) => true,
            Ok(Kind::Finished | Kind::Cancelled) => false,
            _ => {
                metrics::counter!(RECORDS_TOTAL, "kind" => "ride_event", "outcome" => "ignored")
                    .increment(1);
                return Ok(());
            }
        };
        if event.driver_id.is_empty() {
            return Ok(());
        }
        let applied = self
            .geo
            .set_busy(tenant, &event.driver_id, busy, event.timestamp)
            .await?;
        let outcome = if applied { "applied" } else { "stale" };
        metrics::counter!(RECORDS_TOTAL, "kind" => "ride_event", "outcome" => outcome).increment(1);
        Ok(())
    }
}

#[async_trait]
impl Processor for Tracker {
    fn name(&self) -> &'static str {
        "tracker"
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        let mut poison = Vec::new();
        let mut pings: BTreeMap<TenantId, Vec<DriverLocationUpdated>> = BTreeMap::new();
        let mut rides = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.decode(record) {
                Ok(Decoded::Ping(tenant, ping)) => pings.entry(tenant).or_default().push(ping),
                Ok(Decoded::Ride(tenant, event)) => rides.push((tenant, event)),
                Err(reason) => poison.push(Poison { index, reason }),
            }
        }
        for (tenant, pings) in pings {
            self.apply_pings(&tenant, pings).await?;
        }
        for (tenant, event) in &rides {
            self.apply_ride(tenant, event).await?;
        }
        Ok(poison)
    }
}
