//! The `profiles` processor: its own consumer group on `events.processed` (after each tenant's
//! transforms, so PII scrubbing and bot filtering apply), one [`ProfileEngine::apply`] per
//! tenant of a batch, and a periodic reconciliation of a sample of hot copies.
//!
//! The offset is committed only after the batch's profiles are committed; a redelivered or
//! replayed event finds its id among the applied ones and changes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pulse_core::log::ConsumedRecord;
use pulse_core::{PortResult, TenantId};
use pulse_gateway::envelope::CanonicalEvent;
use pulse_runtime::processor::{ConsumerSettings, Poison, Processor, Tick};
use pulse_trace::TraceContext;

use crate::engine::{Incoming, ProfileEngine};
use crate::reconcile::reconcile_sample;

/// The processor's consumer group.
pub const GROUP: &str = "pulse-profiles-group";

/// The `profiles` processor.
#[derive(Debug)]
pub struct ProfilesProcessor {
    engine: ProfileEngine,
    reconcile_every: Duration,
    next_reconcile: Instant,
}

impl ProfilesProcessor {
    /// A processor applying through `engine`.
    pub fn new(engine: ProfileEngine) -> Self {
        let reconcile_every = Duration::from_millis(engine.settings().reconcile_every_ms);
        Self {
            engine,
            reconcile_every,
            next_reconcile: Instant::now() + reconcile_every,
        }
    }

    /// How it consumes: `group` on `processed_topic`, refusals to `dead_letter`.
    pub fn consumer(
        &self,
        group: String,
        processed_topic: String,
        dead_letter: String,
    ) -> ConsumerSettings {
        ConsumerSettings {
            batch_size: self.engine.settings().batch_size,
            dead_letter_topic: dead_letter,
            ..ConsumerSettings::new(group, vec![processed_topic])
        }
    }
}

fn trace_of(record: &ConsumedRecord) -> Option<TraceContext> {
    TraceContext::from_headers(|name| {
        record
            .header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    })
}

#[async_trait]
impl Processor for ProfilesProcessor {
    fn name(&self) -> &'static str {
        "profiles"
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        let mut poison = Vec::new();
        let mut tenants: Vec<TenantId> = Vec::new();
        let mut by_tenant: HashMap<TenantId, Vec<Incoming>> = HashMap::new();
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
            if !by_tenant.contains_key(&event.tenant) {
                tenants.push(event.tenant.clone());
            }
            by_tenant
                .entry(event.tenant.clone())
                .or_default()
                .push(Incoming {
                    trace: trace_of(record),
                    event,
                });
        }
        for tenant in tenants {
            let events = by_tenant.remove(&tenant).unwrap_or_default();
            self.engine.apply(&tenant, &events).await?;
        }
        Ok(poison)
    }

    async fn tick(&mut self) -> PortResult<Tick> {
        if Instant::now() >= self.next_reconcile {
            self.next_reconcile = Instant::now() + self.reconcile_every;
            let sample = self.engine.settings().reconcile_sample;
            // A pass that cannot read the cache or the store is retried at the next interval;
            // it must not stop the processor.
            if let Err(err) = reconcile_sample(&self.engine, sample).await {
                tracing::warn!(error = %err, "profile reconciliation failed; retrying at the next interval");
            }
        }
        Ok(Tick::Continue)
    }
}
