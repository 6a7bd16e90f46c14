//! A [`DedupStore`] that answers `record` at once and writes the keys behind, batched, while
//! serving the keys not yet written from memory.
//!
//! For a store whose writes queue behind each other on one writer (SQLite's single writer, which
//! the pipeline's archive inserts share): the ingest answer then waits for the log append only.
//! Exactness holds in the process — a retry that arrives before its key is written finds it in
//! memory — and the embedded default is one process (its data directory is locked). What a crash
//! loses is the keys of the last few milliseconds: a retry of one of those appends the event
//! again, and the sinks drop the repeat (ADR 0007). A store shared by several gateway processes
//! (PostgreSQL) is used directly, so another process sees a key as soon as its event is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::retry::backoff;
use pulse_core::{PortResult, TenantId};
use tokio::sync::mpsc;

use crate::ingest::DEDUP_RECORD_FAILURES_TOTAL;
use crate::ports::{DedupEntry, DedupStore, Recorded};

/// Most keys waiting to be written; past it `record` waits (backpressure, not memory growth).
const QUEUE: usize = 65_536;
/// Most keys one write takes.
const BATCH: usize = 2_000;
/// Attempts of one write before its keys are given up on (their events are safe on the log).
const ATTEMPTS: usize = 5;

type Pending = HashMap<(TenantId, String), Recorded>;

/// Dedup keys written behind the answer.
#[derive(Debug, Clone)]
pub struct WriteBehindDedup {
    inner: Arc<dyn DedupStore>,
    pending: Arc<Mutex<Pending>>,
    queue: mpsc::Sender<(TenantId, DedupEntry)>,
}

impl WriteBehindDedup {
    /// Keys recorded in `inner` behind the callers; the writer runs until the last clone drops,
    /// then writes what is left. Call within a Tokio runtime.
    pub fn new(inner: Arc<dyn DedupStore>) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        tokio::spawn(write_behind(inner.clone(), pending.clone(), entries));
        Self {
            inner,
            pending,
            queue,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn write_behind(
    inner: Arc<dyn DedupStore>,
    pending: Arc<Mutex<Pending>>,
    mut entries: mpsc::Receiver<(TenantId, DedupEntry)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while entries.recv_many(&mut batch, BATCH).await > 0 {
        let mut by_tenant: HashMap<TenantId, Vec<DedupEntry>> = HashMap::new();
        for (tenant, entry) in batch.drain(..) {
            by_tenant.entry(tenant).or_default().push(entry);
        }
        for (tenant, entries) in by_tenant {
            let mut delays = backoff(Duration::from_millis(20), Duration::from_secs(1));
            let mut written = false;
            for attempt in 1..=ATTEMPTS {
                match inner.record(&tenant, &entries).await {
                    Ok(()) => {
                        written = true;
                        break;
                    }
                    Err(err) if attempt < ATTEMPTS => {
                        tracing::debug!(%tenant, error = %err, attempt, "dedup keys not written yet; retrying");
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                    }
                    Err(err) => {
                        tracing::warn!(%tenant, error = %err, keys = entries.len(), "dedup keys not written; their events are on the log, and a retry of one reaches the sinks once all the same");
                    }
                }
            }
            if !written {
                metrics::counter!(DEDUP_RECORD_FAILURES_TOTAL).increment(entries.len() as u64);
            }
            // Written (or given up on): the store answers for them from now on.
            let mut pending = pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in entries {
                let key = (tenant.clone(), entry.key);
                if pending
                    .get(&key)
                    .is_some_and(|recorded| recorded.event_id == entry.event_id)
                {
                    pending.remove(&key);
                }
            }
        }
    }
}

#[async_trait]
impl DedupStore for WriteBehindDedup {
    async fn recorded(
        &self,
        tenant: &TenantId,
        keys: &[String],
        now_ms: i64,
    ) -> PortResult<HashMap<String, Recorded>> {
        let mut found = HashMap::new();
        let mut unknown = Vec::new();
        {
            let pending = self.pending();
            for key in keys {
                match pending.get(&(tenant.clone(), key.clone())) {
                    Some(recorded) => {
                        found.insert(key.clone(), recorded.clone());
                    }
                    None => unknown.push(key.clone()),
                }
            }
        }
        if !unknown.is_empty() {
            found.extend(self.inner.recorded(tenant, &unknown, now_ms).await?);
        }
        Ok(found)
    }

    async fn record(&self, tenant: &TenantId, entries: &[DedupEntry]) -> PortResult<()> {
        {
            let mut pending = self.pending();
            for entry in entries {
                pending
                    .entry((tenant.clone(), entry.key.clone()))
                    .or_insert_with(|| Recorded {
                        event_id: entry.event_id.clone(),
                        received_at_ms: entry.received_at_ms,
                    });
            }
        }
        for entry in entries {
            if self
                .queue
                .send((tenant.clone(), entry.clone()))
                .await
                .is_err()
            {
                // The writer is gone (the runtime is shutting down): write this one directly.
                return self.inner.record(tenant, std::slice::from_ref(entry)).await;
            }
        }
        Ok(())
    }

    async fn expire(&self, now_ms: i64) -> PortResult<u64> {
        self.inner.expire(now_ms).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use pulse_core::PortError;

    use super::*;

    /// A store in memory whose writes can be held back or refused.
    #[derive(Debug, Default)]
    struct Slow {
        rows: Mutex<HashMap<(TenantId, String), Recorded>>,
        hold: AtomicBool,
        refuse: AtomicBool,
    }

    #[async_trait]
    impl DedupStore for Slow {
        async fn recorded(
            &self,
            tenant: &TenantId,
            keys: &[String],
            _: i64,
        ) -> PortResult<HashMap<String, Recorded>> {
            let rows = self.rows.lock().unwrap();
            Ok(keys
                .iter()
                .filter_map(|key| {
                    rows.get(&(tenant.clone(), key.clone()))
                        .map(|r| (key.clone(), r.clone()))
                })
                .collect())
        }
        async fn record(&self, tenant: &TenantId, entries: &[DedupEntry]) -> PortResult<()> {
            while self.hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(PortError::unavailable("test", "refused"));
            }
            let mut rows = self.rows.lock().unwrap();
            for entry in entries {
                rows.entry((tenant.clone(), entry.key.clone()))
                    .or_insert(Recorded {
                        event_id: entry.event_id.clone(),
                        received_at_ms: entry.received_at_ms,
                    });
            }
            Ok(())
        }
        async fn expire(&self, _: i64) -> PortResult<u64> {
            Ok(0)
        }
    }

    fn entry(key: &str, event: &str) -> DedupEntry {
        DedupEntry {
            key: key.into(),
            event_id: event.into(),
            received_at_ms: 7,
            expires_at_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn a_key_not_yet_written_is_found_in_memory_and_then_in_the_store() {
        let store = Arc::new(Slow::default());
        store.hold.store(true, Ordering::SeqCst);
        let dedup = WriteBehindDedup::new(store.clone());
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        dedup.record(&acme, &[entry("e:1", "1")]).await.unwrap();
        let keys = vec!["e:1".to_owned()];
        let found = dedup.recorded(&acme, &keys, 0).await.unwrap();
        assert_eq!(
            found["e:1"].event_id, "1",
            "served from memory while the write waits"
        );
        assert!(
            dedup.recorded(&other, &keys, 0).await.unwrap().is_empty(),
            "per tenant"
        );
        assert!(store.rows.lock().unwrap().is_empty(), "not written yet");
        store.hold.store(false, Ordering::SeqCst);
        for _ in 0..200 {
            if dedup.pending().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            dedup.pending().is_empty(),
            "written, so no longer held in memory"
        );
        assert_eq!(store.rows.lock().unwrap().len(), 1);
        assert_eq!(
            dedup.recorded(&acme, &keys, 0).await.unwrap()["e:1"].event_id,
            "1"
        );
    }

    #[tokio::test]
    async fn keys_the_store_refuses_are_counted_and_let_go() {
        let store = Arc::new(Slow::default());
        store.refuse.store(true, Ordering::SeqCst);
        let dedup = WriteBehindDedup::new(store.clone());
        let acme = TenantId::parse("acme").unwrap();
        dedup.record(&acme, &[entry("k:a", "a")]).await.unwrap();
        for _ in 0..400 {
            if dedup.pending().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dedup.pending().is_empty(), "given up on after its attempts");
        assert!(store.rows.lock().unwrap().is_empty());
    }
}
