//! The ledger's nouns: accounts, transfers, entries, balances, and the split of a fare.

use std::fmt;

use pulse_core::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest owner id of an account (a rider's user id, a driver's id).
pub const MAX_OWNER_LEN: usize = 64;
/// Longest transfer reference.
pub const MAX_REFERENCE_LEN: usize = 120;
/// Owner of the platform's own accounts.
pub const PLATFORM: &str = "platform";

/// What an account is for. Riders' wallets and drivers' payables are the platform's liabilities
/// (money it holds for them: credits raise them); revenue is the platform's income; top-ups is
/// the clearing account money enters through (it goes negative by what was paid in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A rider's wallet.
    Rider,
    /// A driver's payable: what the platform owes the driver.
    Driver,
    /// The platform's commission, sharded (see [`LedgerSettings::platform_shards`]).
    Revenue,
    /// The clearing account top-ups are paid from, sharded like revenue.
    TopUps,
}

impl AccountKind {
    /// Every kind.
    pub const ALL: [AccountKind; 4] = [Self::Rider, Self::Driver, Self::Revenue, Self::TopUps];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rider => "rider",
            Self::Driver => "driver",
            Self::Revenue => "revenue",
            Self::TopUps => "top_ups",
        }
    }

    /// The kind stored as `raw`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// Whether the platform owns it (one account, split into shards so that it is no hot row).
    pub fn is_platform(self) -> bool {
        matches!(self, Self::Revenue | Self::TopUps)
    }
}

/// An account of a tenant in one currency. Accounts come into being with their first entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    /// What it is for.
    pub kind: AccountKind,
    /// Whose: the rider's user id, the driver's id, or [`PLATFORM`].
    pub owner: String,
}

impl Account {
    /// `user_id`'s wallet.
    pub fn rider(user_id: impl Into<String>) -> Self {
        Self {
            kind: AccountKind::Rider,
            owner: user_id.into(),
        }
    }

    /// `driver_id`'s payable.
    pub fn driver(driver_id: impl Into<String>) -> Self {
        Self {
            kind: AccountKind::Driver,
            owner: driver_id.into(),
        }
    }

    /// The platform's revenue.
    pub fn revenue() -> Self {
        Self {
            kind: AccountKind::Revenue,
            owner: PLATFORM.to_owned(),
        }
    }

    /// The top-up clearing account.
    pub fn top_ups() -> Self {
        Self {
            kind: AccountKind::TopUps,
            owner: PLATFORM.to_owned(),
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.owner)
    }
}

/// How a transfer moves money (TigerBeetle's flags, as kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Moves the amount at once (a top-up, a commission).
    Single,
    /// Reserves the amount on the debit account until posted or voided (a ride's hold).
    Pending,
    /// Moves the amount a pending transfer reserved.
    Post,
    /// Releases what a pending transfer reserved.
    Void,
}

impl TransferKind {
    /// Every kind.
    pub const ALL: [TransferKind; 4] = [Self::Single, Self::Pending, Self::Post, Self::Void];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Pending => "pending",
            Self::Post => "post",
            Self::Void => "void",
        }
    }

    /// The kind stored as `raw`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }
}

/// A transfer: one debit account, one credit account, an amount in one currency, a reference
/// unique in its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Its id (UUID v7).
    pub id: Uuid,
    /// Unique per tenant: creating a transfer again with it returns this one.
    pub reference: String,
    /// How it moves money.
    pub kind: TransferKind,
    /// Debited.
    pub debit: Account,
    /// Credited.
    pub credit: Account,
    /// How much, > 0.
    pub amount: Money,
    /// The pending transfer a post or a void resolves.
    pub pending_id: Option<Uuid>,
    /// The ride it belongs to.
    pub order_id: Option<Uuid>,
    /// When, Unix milliseconds.
    pub created_at_ms: i64,
}

/// Whether an entry's amount is final or only reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reserved by a pending transfer (released again by its post or void).
    Pending,
    /// Final.
    Posted,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Posted => "posted",
        }
    }

    /// The phase stored as `raw`.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Posted]
            .into_iter()
            .find(|phase| phase.as_str() == raw)
    }
}

/// One line of an account's history (the seed's `transactions` row): negative amounts debit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id (UUID v7: pages run on it).
    pub id: Uuid,
    /// The transfer that wrote it.
    pub transfer_id: Uuid,
    /// Its transfer's reference.
    pub reference: String,
    /// Its transfer's kind.
    pub transfer_kind: TransferKind,
    /// Signed minor units; negative debits the account.
    pub amount_minor: i64,
    /// Its currency.
    pub currency: Currency,
    /// Reserved or final.
    pub phase: Phase,
    /// What it was for, for people.
    pub description: String,
    /// The ride, if any.
    pub order_id: Option<Uuid>,
    /// When, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A page of entries, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPage {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<Uuid>,
}

/// An account's money in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// The sum of its posted entries.
    pub posted_minor: i64,
    /// The sum of its pending entries: negative while holds reserve money on it, positive while
    /// pending transfers will credit it.
    pub pending_minor: i64,
    /// Its currency.
    pub currency: Currency,
}

impl Balance {
    /// Nothing, in `currency`.
    pub fn zero(currency: Currency) -> Self {
        Self {
            posted_minor: 0,
            pending_minor: 0,
            currency,
        }
    }

    /// What holds reserve on it (≥ 0).
    pub fn held_minor(&self) -> i64 {
        (-self.pending_minor).max(0)
    }

    /// What pending transfers will credit to it (≥ 0).
    pub fn incoming_minor(&self) -> i64 {
        self.pending_minor.max(0)
    }

    /// What may still be spent: posted minus held.
    pub fn available_minor(&self) -> i64 {
        self.posted_minor - self.held_minor()
    }
}

/// Commission rates are in basis points: 2,000 = 20 %.
pub const BASIS_POINTS: i64 = 10_000;

/// How a posted fare is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// What the driver earns.
    pub driver_minor: i64,
    /// What the platform keeps.
    pub commission_minor: i64,
}

/// Splits `fare_minor` (> 0) at `commission_bp` basis points. The commission is rounded down to
/// the minor unit (so the driver gets any fraction) and the driver's share is the rest: the two
/// always sum to the fare exactly.
pub fn split(fare_minor: i64, commission_bp: u32) -> Split {
    let bp = i128::from(commission_bp.min(BASIS_POINTS as u32));
    let commission = (i128::from(fare_minor) * bp / i128::from(BASIS_POINTS)) as i64;
    Split {
        driver_minor: fare_minor - commission,
        commission_minor: commission,
    }
}

/// The references of a ride's transfers, one function so every writer and checker agrees.
pub mod reference {
    use uuid::Uuid;

    /// The hold placed at the match.
    pub fn hold(order_id: Uuid) -> String {
        format!("ride:{order_id}:hold")
    }

    /// Its post at the end of the ride.
    pub fn post(order_id: Uuid) -> String {
        format!("ride:{order_id}:post")
    }

    /// Its void at a cancellation.
    pub fn void(order_id: Uuid) -> String {
        format!("ride:{order_id}:void")
    }

    /// The platform's commission on the ride.
    pub fn commission(order_id: Uuid) -> String {
        format!("ride:{order_id}:commission")
    }

    /// A rider's top-up under the client's idempotency key.
    pub fn top_up(user_id: &str, key: &str) -> String {
        format!("top-up:{user_id}:{key}")
    }
}

/// How a deployment runs its ledger (section `[wallet]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// Refuse an order (402) and a hold whose fare exceeds the rider's available balance. Off
    /// by default: a hold may then take a wallet below zero, and the wallet shows it.
    pub require_funds: bool,
    /// The platform's commission on a posted fare, basis points (2,000 = 20 %).
    pub commission_bp: u32,
    /// Rows each platform account is spread over, so concurrent postings do not queue on one
    /// row lock; a balance read sums them.
    pub platform_shards: u16,
    /// The currency of a wallet read that names none.
    pub currency: String,
    /// Largest single top-up, minor units.
    pub max_top_up_minor: i64,
    /// How often the `wallet` processor checks the ledger's invariants, milliseconds.
    pub verify_every_ms: u64,
    /// A ride finished longer ago than this and still unposted is a violation, milliseconds.
    pub post_grace_ms: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            require_funds: false,
            commission_bp: 2_000,
            platform_shards: 16,
            currency: "USD".to_owned(),
            max_top_up_minor: 100_000_000,
            verify_every_ms: 60_000,
            post_grace_ms: 300_000,
        }
    }
}

impl LedgerSettings {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if i64::from(self.commission_bp) > BASIS_POINTS {
            return Err(format!(
                "wallet.commission_bp = {}: at most {BASIS_POINTS} (100 %)",
                self.commission_bp
            ));
        }
        if !(1..=256).contains(&self.platform_shards) {
            return Err(format!(
                "wallet.platform_shards = {}: 1 to 256",
                self.platform_shards
            ));
        }
        Currency::parse(&self.currency).map_err(|err| format!("wallet.currency: {err}"))?;
        if self.max_top_up_minor <= 0 {
            return Err("wallet.max_top_up_minor must be > 0".to_owned());
        }
        if self.verify_every_ms < 1_000 {
            return Err("wallet.verify_every_ms must be ≥ 1000".to_owned());
        }
        Ok(())
    }

    /// The default currency.
    pub fn currency(&self) -> Currency {
        Currency::parse(&self.currency).unwrap_or_else(|_| Currency::parse("USD").expect("USD"))
    }

    /// The platform shard a transfer with `reference` uses: stable, spread by hash.
    pub fn shard_of(&self, reference: &str) -> i32 {
        // FNV-1a: stable across builds and processes, unlike the std hasher.
        let hash = reference
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % u64::from(self.platform_shards.max(1))) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_always_sums_to_the_fare_and_rounds_the_commission_down() {
        assert_eq!(
            split(1_000, 2_000),
            Split {
                driver_minor: 800,
                commission_minor: 200
            }
        );
        // 20 % of 999 is 199.8: the platform keeps 199, the driver 800.
        assert_eq!(split(999, 2_000).commission_minor, 199);
        for fare in [1, 7, 99, 1_001, 123_457, i64::MAX / 2] {
            for bp in [0, 1, 1_250, 2_000, 3_333, 9_999, 10_000, 20_000] {
                let split = split(fare, bp);
                assert_eq!(split.driver_minor + split.commission_minor, fare);
                assert!(split.commission_minor >= 0 && split.driver_minor >= 0);
            }
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let settings = LedgerSettings::default();
        let a = settings.shard_of("ride:1:commission");
        assert_eq!(a, settings.shard_of("ride:1:commission"));
        let used: std::collections::HashSet<i32> = (0..200)
            .map(|n| settings.shard_of(&format!("ride:{n}:commission")))
            .collect();
        assert!(used.len() > 12, "{used:?}");
        assert!(used.iter().all(|shard| (0..16).contains(shard)));
    }

    #[test]
    fn a_balance_shows_what_is_held_and_what_is_available() {
        let usd = Currency::parse("USD").unwrap();
        let balance = Balance {
            posted_minor: 5_000,
            pending_minor: -1_200,
            currency: usd,
        };
        assert_eq!(balance.held_minor(), 1_200);
        assert_eq!(balance.available_minor(), 3_800);
        assert_eq!(balance.incoming_minor(), 0);
        let driver = Balance {
            posted_minor: 800,
            pending_minor: 1_250,
            currency: usd,
        };
        assert_eq!(driver.incoming_minor(), 1_250, "fares on their way in");
        assert_eq!(driver.held_minor(), 0);
        assert_eq!(driver.available_minor(), 800);
    }

    #[test]
    fn settings_are_checked() {
        assert!(LedgerSettings::default().validate().is_ok());
        let edge = LedgerSettings {
            commission_bp: 10_000,
            platform_shards: 256,
            verify_every_ms: 1_000,
            ..LedgerSettings::default()
        };
        assert!(edge.validate().is_ok(), "the bounds themselves are allowed");
        let bad = LedgerSettings {
            verify_every_ms: 999,
            ..LedgerSettings::default()
        };
        assert!(bad.validate().is_err());
        let bad = LedgerSettings {
            platform_shards: 257,
            ..LedgerSettings::default()
        };
        assert!(bad.validate().is_err());
        let bad = LedgerSettings {
            commission_bp: 10_001,
            ..LedgerSettings::default()
        };
        assert!(bad.validate().is_err());
        let bad = LedgerSettings {
            platform_shards: 0,
            ..LedgerSettings::default()
        };
        assert!(bad.validate().is_err());
    }
}
