//! The dead letters of a tenant, as the API serves them: listed by filter, and redriven through
//! the same pipeline with their original `event_id` (to the one sink that refused them, or the
//! whole pipeline when a transform did).

use std::sync::Arc;

use bytes::Bytes;
use pulse_core::clock::SharedClock;
use pulse_core::log::{EventLog, OutgoingRecord};
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::{PortResult, TenantId};

use crate::envelope::CanonicalEvent;
use crate::ingest::EVENT_ID_HEADER;
use crate::pipeline::REDRIVE_SINK_HEADER;
use crate::ports::{DeadLetter, DeadLetterFilter, DeadLetterStore};

/// Events sent through the pipeline again, by tenant.
pub const REDRIVEN_TOTAL: &str = "pulse_gateway_redriven_events_total";

/// Most dead letters one redrive call sends.
pub const MAX_REDRIVE: usize = 10_000;

/// Dead letters, per tenant.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    store: Arc<dyn DeadLetterStore>,
    log: Arc<dyn EventLog>,
    ingest_topic: String,
    clock: SharedClock,
}

impl DeadLetters {
    /// Dead letters in `store`, redriven onto `ingest_topic` of `log`.
    pub fn new(
        store: Arc<dyn DeadLetterStore>,
        log: Arc<dyn EventLog>,
        ingest_topic: String,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            log,
            ingest_topic,
            clock,
        }
    }

    /// A page of `tenant`'s dead letters not yet redriven.
    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &DeadLetterFilter,
        after: Option<i64>,
        limit: usize,
    ) -> PortResult<Vec<DeadLetter>> {
        self.store.list(tenant, filter, after, limit).await
    }

    /// Sends up to `limit` of `tenant`'s dead letters matching `filter` through the pipeline
    /// again; how many. Each is appended before it is marked redriven, so a crash between the
    /// two sends it twice (the sinks drop the repeat), never not at all.
    pub async fn redrive(
        &self,
        tenant: &TenantId,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> PortResult<usize> {
        let limit = limit.min(MAX_REDRIVE);
        let mut sent = 0;
        let mut after = None;
        while sent < limit {
            let page = self
                .store
                .list(tenant, filter, after, (limit - sent).min(500))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let mut records = Vec::with_capacity(page.len());
            let mut ids = Vec::with_capacity(page.len());
            for dead in &page {
                let letter = &dead.letter;
                let identity = CanonicalEvent::decode(&letter.envelope)
                    .map(|event| event.identity())
                    .unwrap_or_else(|_| letter.event_id.clone());
                let mut record = OutgoingRecord::keyed(
                    CanonicalEvent::partition_key(tenant, &identity),
                    Bytes::from(letter.envelope.clone()),
                )
                .with_header(EVENT_ID_HEADER, letter.event_id.clone())
                .with_header(REDRIVE_SINK_HEADER, letter.sink.clone());
                if !tenant.is_default() {
                    record = record.with_header(TENANT_HEADER, tenant.as_str().to_owned());
                }
                records.push(record);
                ids.push(dead.id);
            }
            self.log.append(&self.ingest_topic, records).await?;
            self.store
                .mark_redriven(tenant, &ids, self.clock.now_ms())
                .await?;
            sent += ids.len();
            metrics::counter!(REDRIVEN_TOTAL, "tenant" => tenant.to_string())
                .increment(ids.len() as u64);
        }
        Ok(sent)
    }
}
