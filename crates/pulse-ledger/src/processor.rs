//! The `wallet` processor (Atlas's payment worker): its own group on `wallet.transactions`,
//! posting each finished ride's hold — a batch in one unit of work, exactly once per ride by the
//! store's unique constraint, whatever is redelivered. A poison payment goes to the dead-letter
//! topic with its reason; a store error fails the batch, which the consumer loop retries with
//! backoff without committing its offsets. Now and then it checks the ledger's invariants and
//! exports what it found.

use std::sync::Arc;

use async_trait::async_trait;
use pulse_core::clock::SharedClock;
use pulse_core::log::ConsumedRecord;
use pulse_core::money::{Currency, Money};
use pulse_core::tenant::TENANT_HEADER;
use pulse_core::{PortResult, TenantId};
use pulse_proto::v1::{wallet_transaction::Kind, WalletTransaction};
use pulse_proto::Message;
use pulse_runtime::processor::{ConsumerSettings, Poison, Processor, Tick};
use uuid::Uuid;

use crate::model::LedgerSettings;
use crate::ports::{Ledger, PostHold, Posted};

/// The processor's consumer group.
pub const GROUP: &str = "pulse-wallet-group";
/// Holds posted, by outcome (`posted`, `already`, `voided`, `no_hold`, `mismatch`).
pub const POSTINGS_TOTAL: &str = "pulse_wallet_postings_total";
/// Minor units charged to riders by posted holds, by currency.
pub const CHARGED_MINOR_TOTAL: &str = "pulse_wallet_charged_minor_total";
/// Violations the last invariant check found (0: the ledger is sound).
pub const VIOLATIONS: &str = "pulse_ledger_violations";
/// When the invariants were last checked, Unix seconds.
pub const VERIFIED_AT: &str = "pulse_ledger_verified_timestamp_seconds";
/// Most violations one periodic check collects.
const VIOLATIONS_KEPT: usize = 100;

/// The `wallet` processor.
#[derive(Debug)]
pub struct WalletProcessor {
    ledger: Arc<dyn Ledger>,
    settings: LedgerSettings,
    clock: SharedClock,
    next_verify_ms: i64,
    /// The check running in the background, if any: a long scan never holds up the payments.
    check: Option<tokio::task::JoinHandle<()>>,
}

/// A payment to post, or why its record is poison.
fn decode(
    record: &ConsumedRecord,
    at_ms: i64,
    settings: &LedgerSettings,
    revenue_shard: i32,
) -> Result<PostHold, String> {
    let tenant = TenantId::from_header(record.header(TENANT_HEADER).map(|raw| raw.as_ref()))
        .map_err(|err| err.to_string())?;
    let event = WalletTransaction::decode(record.payload.as_ref())
        .map_err(|err| format!("undecodable WalletTransaction: {err}"))?;
    if event.kind != Kind::PostHold as i32 {
        return Err(format!("unknown payment kind {}", event.kind));
    }
    let order_id = Uuid::parse_str(&event.order_id)
        .map_err(|err| format!("order id {:?}: {err}", event.order_id))?;
    if event.amount_minor <= 0 {
        return Err(format!(
            "amount_minor {} of order {order_id}: a payment is > 0",
            event.amount_minor
        ));
    }
    let currency =
        Currency::parse(&event.currency).map_err(|err| format!("order {order_id}: {err}"))?;
    Ok(PostHold {
        tenant,
        order_id,
        amount: Money::new(event.amount_minor, currency),
        commission_bp: settings.commission_bp,
        revenue_shard,
        at_ms,
    })
}

/// The revenue shard of a batch: one for the whole batch, and another for the next, so that
/// concurrent batches (other partitions, other processes) credit different rows instead of
/// queueing on one.
fn batch_shard(records: &[ConsumedRecord], settings: &LedgerSettings) -> i32 {
    // Hashed, not taken modulo: full batches start at offsets that share their low bits.
    records.first().map_or(0, |first| {
        settings.shard_of(&format!(
            "{}:{}",
            first.position.partition, first.position.offset
        ))
    })
}

impl WalletProcessor {
    /// The processor over `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>, settings: LedgerSettings, clock: SharedClock) -> Self {
        let next_verify_ms = clock.now_ms() + settings.verify_every_ms as i64;
        Self {
            ledger,
            settings,
            clock,
            next_verify_ms,
            check: None,
        }
    }

    /// How it consumes: its own group on `payments_topic`.
    pub fn consumer(
        &self,
        group: String,
        payments_topic: String,
        dead_letter: String,
    ) -> ConsumerSettings {
        ConsumerSettings {
            batch_size: 1_000,
            dead_letter_topic: dead_letter,
            ..ConsumerSettings::new(group, vec![payments_topic])
        }
    }

    /// Checks the invariants now and exports the result.
    pub async fn verify_now(&self) -> PortResult<usize> {
        verify(
            self.ledger.as_ref(),
            &self.clock,
            self.settings.post_grace_ms as i64,
        )
        .await
    }
}

/// One check of the invariants, exported as [`VIOLATIONS`] and [`VERIFIED_AT`].
async fn verify(ledger: &dyn Ledger, clock: &SharedClock, grace_ms: i64) -> PortResult<usize> {
    let violations = ledger
        .verify(clock.now_ms(), grace_ms, VIOLATIONS_KEPT)
        .await?;
    metrics::gauge!(VIOLATIONS).set(violations.len() as f64);
    metrics::gauge!(VERIFIED_AT).set(clock.now_ms() as f64 / 1_000.0);
    if let Some(first) = violations.first() {
        tracing::error!(
            rule = first.rule,
            detail = %first.detail,
            count = violations.len(),
            "the ledger breaks an invariant"
        );
    }
    Ok(violations.len())
}

#[async_trait]
impl Processor for WalletProcessor {
    fn name(&self) -> &'static str {
        "wallet"
    }

    async fn handle(&mut self, records: &[ConsumedRecord]) -> PortResult<Vec<Poison>> {
        let now_ms = self.clock.now_ms();
        let revenue_shard = batch_shard(records, &self.settings);
        let mut poison = Vec::new();
        let mut posts = Vec::new();
        let mut indexes = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match decode(record, now_ms, &self.settings, revenue_shard) {
                Ok(post) => {
                    posts.push(post);
                    indexes.push(index);
                }
                Err(reason) => poison.push(Poison { index, reason }),
            }
        }
        if posts.is_empty() {
            return Ok(poison);
        }
        let outcomes = self.ledger.post_holds(&posts).await?;
        for ((post, outcome), index) in posts.iter().zip(&outcomes).zip(indexes) {
            let label = match outcome {
                Posted::Now(_) => {
                    metrics::counter!(CHARGED_MINOR_TOTAL, "currency" => post.amount.currency.as_str().to_owned())
                        .increment(post.amount.amount_minor as u64);
                    "posted"
                }
                Posted::Already => "already",
                Posted::Voided => {
                    poison.push(Poison {
                        index,
                        reason: format!(
                            "order {}: its hold was voided (the ride was cancelled)",
                            post.order_id
                        ),
                    });
                    "voided"
                }
                Posted::NoHold => {
                    poison.push(Poison {
                        index,
                        reason: format!("order {}: no hold to post", post.order_id),
                    });
                    "no_hold"
                }
                Posted::Mismatch { held } => {
                    poison.push(Poison {
                        index,
                        reason: format!(
                            "order {}: the payment names {}, the hold reserved {}",
                            post.order_id, post.amount, held
                        ),
                    });
                    "mismatch"
                }
            };
            metrics::counter!(POSTINGS_TOTAL, "outcome" => label).increment(1);
        }
        poison.sort_by_key(|poison| poison.index);
        Ok(poison)
    }

    async fn tick(&mut self) -> PortResult<Tick> {
        let now_ms = self.clock.now_ms();
        let idle = self.check.as_ref().is_none_or(|check| check.is_finished());
        if now_ms >= self.next_verify_ms && idle {
            self.next_verify_ms = now_ms + self.settings.verify_every_ms as i64;
            let (ledger, clock) = (self.ledger.clone(), self.clock.clone());
            let grace_ms = self.settings.post_grace_ms as i64;
            // A failed check is reported and tried again at the next interval; it never stops
            // the payments.
            self.check = Some(tokio::spawn(async move {
                if let Err(err) = verify(ledger.as_ref(), &clock, grace_ms).await {
                    tracing::warn!(error = %err, "the ledger check failed; it runs again later");
                }
            }));
        }
        Ok(Tick::Continue)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use pulse_core::clock::ManualClock;
    use pulse_core::log::RecordPosition;

    use super::*;
    use crate::testing::Scripted;

    fn record(offset: i64, payload: Vec<u8>) -> ConsumedRecord {
        ConsumedRecord {
            position: RecordPosition {
                topic: "wallet.transactions".into(),
                partition: 2,
                offset,
            },
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: 1,
        }
    }

    fn payment(order_id: Uuid, amount_minor: i64) -> Vec<u8> {
        WalletTransaction {
            order_id: order_id.to_string(),
            kind: Kind::PostHold as i32,
            user_id: "u1".into(),
            driver_id: "d1".into(),
            amount_minor,
            currency: "USD".into(),
            timestamp: 1,
        }
        .encode_to_vec()
    }

    fn processor(ledger: Arc<Scripted>) -> WalletProcessor {
        WalletProcessor::new(
            ledger,
            LedgerSettings::default(),
            Arc::new(ManualClock::new(1_000)),
        )
    }

    #[test]
    fn it_consumes_as_the_wallet_role_in_its_own_group() {
        let wallet = processor(Arc::new(Scripted::default()));
        assert_eq!(
            wallet.name(),
            "wallet",
            "the role's name and the metrics' label"
        );
        let settings = wallet.consumer("g".into(), "p.wallet.transactions".into(), "p.dlq".into());
        assert_eq!(settings.group, "g");
        assert_eq!(settings.topics, ["p.wallet.transactions"]);
        assert_eq!(settings.dead_letter_topic, "p.dlq");
        assert_eq!(
            settings.batch_size, 1_000,
            "a batch is one unit of work of the store"
        );
        assert_eq!(settings.tick, Duration::from_secs(1));
    }

    #[test]
    fn batches_spread_over_the_revenue_shards() {
        let settings = LedgerSettings::default();
        let shards: std::collections::HashSet<i32> = (0..64)
            .map(|offset| batch_shard(&[record(offset * 1_000, Vec::new())], &settings))
            .collect();
        assert!(shards.len() >= 8, "{shards:?}");
        assert!(
            shards.iter().all(|shard| (0..16).contains(shard)),
            "{shards:?}"
        );
        assert_eq!(batch_shard(&[], &settings), 0);
    }

    #[tokio::test]
    async fn the_ledger_is_checked_when_due_and_not_before() {
        let ledger = Arc::new(Scripted::default());
        let clock = ManualClock::new(1_000);
        let settings = LedgerSettings::default();
        let every = Duration::from_millis(settings.verify_every_ms);
        let mut wallet = WalletProcessor::new(ledger.clone(), settings, Arc::new(clock.clone()));
        let checks = || ledger.verifies.load(Ordering::SeqCst);
        assert_eq!(wallet.tick().await.unwrap(), Tick::Continue);
        tokio::task::yield_now().await;
        assert_eq!(checks(), 0, "not due yet");
        clock.advance(every);
        wallet.tick().await.unwrap();
        let started = std::time::Instant::now();
        while checks() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the check never ran"
            );
            tokio::task::yield_now().await;
        }
        wallet.tick().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(checks(), 1, "the next one waits a whole interval");
        clock.advance(every);
        let started = std::time::Instant::now();
        while checks() == 1 {
            wallet.tick().await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the second check never ran"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(checks(), 2);
    }

    #[tokio::test]
    async fn a_store_error_fails_the_batch_so_that_nothing_is_committed() {
        let ledger = Arc::new(Scripted {
            fail: true,
            ..Default::default()
        });
        let mut wallet = processor(ledger);
        let batch = [record(7, payment(Uuid::now_v7(), 1_000))];
        let outcome = wallet.handle(&batch).await;
        assert!(
            outcome.is_err(),
            "an error, not poison: the loop retries it uncommitted"
        );
    }

    #[tokio::test]
    async fn poison_is_refused_with_its_reason_and_the_rest_posted_in_one_call() {
        let ledger = Arc::new(Scripted::default());
        let mut wallet = processor(ledger.clone());
        let (good, unheld) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            record(10, payment(good, 1_000)),
            record(11, vec![0xff, 0x01]),
            record(12, payment(Uuid::now_v7(), 0)),
            record(13, payment(unheld, 500)),
        ];
        let poison = wallet.handle(&batch).await.expect("handled");
        let refused: Vec<(usize, bool)> = poison
            .iter()
            .map(|p| (p.index, !p.reason.is_empty()))
            .collect();
        assert_eq!(refused, [(1, true), (2, true), (3, true)]);
        assert!(poison[0].reason.contains("WalletTransaction"), "{poison:?}");
        assert!(poison[1].reason.contains("> 0"), "{poison:?}");
        assert!(poison[2].reason.contains("no hold"), "{poison:?}");
        let asked = ledger.asked.lock().unwrap();
        assert_eq!(asked.len(), 2, "the decodable payments, in one call");
        assert_eq!(asked[0].order_id, good);
        assert_eq!(
            asked[0].revenue_shard, asked[1].revenue_shard,
            "one shard per batch"
        );
        assert_eq!(asked[0].commission_bp, 2_000);
    }
}
