//! The wallet as riders and drivers see it: top-ups (idempotent per key), balances and entries.

use std::sync::Arc;

use pulse_core::clock::SharedClock;
use pulse_core::money::{Currency, Money};
use pulse_core::{PortError, TenantId};
use uuid::Uuid;

use crate::model::{reference, Account, Balance, EntryPage, LedgerSettings, Transfer};
use crate::ports::{Created, Ledger, LedgerTotals, NewTransfer};

/// Longest top-up idempotency key.
pub const MAX_KEY_LEN: usize = 64;
/// Top-ups written, by outcome (`new`, `repeat`, `mismatch`).
pub const TOP_UPS_TOTAL: &str = "pulse_wallet_top_ups_total";

/// Why a wallet call was refused.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The key was used before for another top-up.
    #[error("idempotency key {key:?} was used for a top-up of {} {}; this one asks for {} {}",
        original.amount.amount_minor, original.amount.currency, asked.amount_minor, asked.currency)]
    KeyReused {
        /// The key.
        key: String,
        /// The top-up it made.
        original: Box<Transfer>,
        /// What this request asked for.
        asked: Money,
    },
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] PortError),
}

/// A top-up, new or found again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUp {
    /// Its transfer.
    pub transfer: Transfer,
    /// `false` when the key had been used for this very top-up: nothing was written.
    pub created: bool,
    /// The wallet after it.
    pub balance: Balance,
}

/// Top-ups and wallet reads.
#[derive(Debug, Clone)]
pub struct WalletService {
    ledger: Arc<dyn Ledger>,
    settings: LedgerSettings,
    clock: SharedClock,
}

/// Checks an idempotency key: 1 to [`MAX_KEY_LEN`] printable ASCII characters, no `:` — the
/// key ends the top-up's reference (`top-up:{user_id}:{key}`), and a user id may hold a `:`,
/// so only a key without one keeps two riders' references apart.
fn check_key(key: &str) -> Result<(), WalletError> {
    let printable = key.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
        return Err(WalletError::Invalid(format!(
            "idempotency_key must be 1 to {MAX_KEY_LEN} printable ASCII characters other than ':'"
        )));
    }
    Ok(())
}

impl WalletService {
    /// Wallets in `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>, settings: LedgerSettings, clock: SharedClock) -> Self {
        Self {
            ledger,
            settings,
            clock,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LedgerSettings {
        &self.settings
    }

    /// The currency of a read that names `currency` or none.
    pub fn currency_or_default(&self, currency: Option<Currency>) -> Currency {
        currency.unwrap_or_else(|| self.settings.currency())
    }

    /// Adds `amount` to `user_id`'s wallet from the top-up clearing account, once per `key`.
    #[tracing::instrument(name = "wallet.top_up", skip(self, tenant, key))]
    pub async fn top_up(
        &self,
        tenant: &TenantId,
        user_id: &str,
        amount: Money,
        key: &str,
    ) -> Result<TopUp, WalletError> {
        check_key(key)?;
        if amount.amount_minor <= 0 || amount.amount_minor > self.settings.max_top_up_minor {
            return Err(WalletError::Invalid(format!(
                "amount_minor must be 1 to {} (a top-up's limit)",
                self.settings.max_top_up_minor
            )));
        }
        let reference = reference::top_up(user_id, key);
        let shard = self.settings.shard_of(&reference);
        let created = self
            .ledger
            .transfer(
                tenant,
                NewTransfer {
                    reference,
                    debit: Account::top_ups(),
                    credit: Account::rider(user_id),
                    amount,
                    shard,
                    description: "top-up".to_owned(),
                    at_ms: self.clock.now_ms(),
                },
            )
            .await?;
        let (transfer, new) = match created {
            Created::New(transfer) => (transfer, true),
            Created::Exists(transfer) => (transfer, false),
            Created::Mismatch(original) => {
                metrics::counter!(TOP_UPS_TOTAL, "outcome" => "mismatch").increment(1);
                return Err(WalletError::KeyReused {
                    key: key.to_owned(),
                    original: Box::new(original),
                    asked: amount,
                });
            }
        };
        let outcome = if new { "new" } else { "repeat" };
        metrics::counter!(TOP_UPS_TOTAL, "outcome" => outcome).increment(1);
        let balance = self
            .ledger
            .balance(tenant, &transfer.credit, transfer.amount.currency)
            .await?;
        Ok(TopUp {
            transfer,
            created: new,
            balance,
        })
    }

    /// `account`'s balance in `currency` (the default currency when `None`).
    pub async fn balance(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Option<Currency>,
    ) -> Result<Balance, WalletError> {
        let currency = self.currency_or_default(currency);
        Ok(self.ledger.balance(tenant, account, currency).await?)
    }

    /// Totals of `tenant`'s ledger in `currency` (the default currency when `None`).
    pub async fn totals(
        &self,
        tenant: &TenantId,
        currency: Option<Currency>,
    ) -> Result<(Currency, LedgerTotals), WalletError> {
        let currency = self.currency_or_default(currency);
        Ok((currency, self.ledger.totals(tenant, currency).await?))
    }

    /// A page of `account`'s entries, newest first.
    pub async fn entries(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Option<Currency>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<EntryPage, WalletError> {
        let currency = self.currency_or_default(currency);
        Ok(self
            .ledger
            .entries(tenant, account, currency, before, limit)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::clock::ManualClock;

    use super::*;
    use crate::testing::Scripted;

    fn usd(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::parse("USD").unwrap())
    }

    #[tokio::test]
    async fn a_top_up_is_bounded_and_moves_money_from_the_clearing_account() {
        let ledger = Arc::new(Scripted::default());
        let settings = LedgerSettings::default();
        let max = settings.max_top_up_minor;
        let wallet = WalletService::new(ledger.clone(), settings, Arc::new(ManualClock::new(7)));
        let tenant = TenantId::default_tenant();
        for refused in [0, -1, max + 1] {
            let err = wallet
                .top_up(&tenant, "u1", usd(refused), "k")
                .await
                .unwrap_err();
            assert!(matches!(err, WalletError::Invalid(_)), "{refused}: {err}");
        }
        for accepted in [1, max] {
            let done = wallet
                .top_up(&tenant, "u1", usd(accepted), "k")
                .await
                .unwrap();
            assert!(done.created);
        }
        let asked = ledger.transfers.lock().unwrap();
        assert_eq!(
            asked.len(),
            2,
            "nothing reached the ledger for the refused amounts"
        );
        assert_eq!(asked[0].debit, Account::top_ups());
        assert_eq!(asked[0].credit, Account::rider("u1"));
        assert_eq!(asked[0].reference, "top-up:u1:k");
        assert_eq!(asked[0].at_ms, 7);
        assert!((0..16).contains(&asked[0].shard));
    }

    #[test]
    fn keys_are_printable_ascii_without_a_colon() {
        for good in ["card-1", "8f2a_UUID.v4~x", &"k".repeat(MAX_KEY_LEN)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "a:b", "with space", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_riders_never_share_a_top_up_reference() {
        // A user id may hold a ':'; the key may not, so the key is what follows the last one.
        let (a, b) = (reference::top_up("a:b", "c"), reference::top_up("a", "b-c"));
        assert_ne!(a, b);
        assert!(
            check_key("b:c").is_err(),
            "the key that would collide is refused"
        );
    }
}
