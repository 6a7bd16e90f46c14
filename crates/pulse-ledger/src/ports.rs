//! The ledger's port: where transfers, entries and balances are kept, each write one unit of
//! work in which every balance changes with its entries.

use async_trait::async_trait;
use pulse_core::money::{Currency, Money};
use pulse_core::{PortResult, TenantId};
use uuid::Uuid;

use crate::model::{Account, Balance, EntryPage, Split, Transfer};

/// A transfer to create at once (a top-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    /// Unique per tenant.
    pub reference: String,
    /// Debited.
    pub debit: Account,
    /// Credited.
    pub credit: Account,
    /// How much (> 0) in which currency (the two accounts' currency).
    pub amount: Money,
    /// The shard of a platform account on either side (0 for others).
    pub shard: i32,
    /// For people.
    pub description: String,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// What creating a transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// It was written.
    New(Transfer),
    /// One with the same reference, accounts and amount existed: nothing was written, this is
    /// it (TigerBeetle's "exists is ok").
    Exists(Transfer),
    /// One with the same reference but other accounts or amount existed: nothing was written.
    Mismatch(Transfer),
}

/// A ride's hold to post: the fare it reserved moves from the rider's wallet to the driver's
/// payable, and the commission from the driver's payable to the platform's revenue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostHold {
    /// The ride's tenant.
    pub tenant: TenantId,
    /// The ride.
    pub order_id: Uuid,
    /// The amount the payment event names, checked against the hold.
    pub amount: Money,
    /// The platform's rate, basis points.
    pub commission_bp: u32,
    /// The revenue shard the commission goes to.
    pub revenue_shard: i32,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// What posting a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Posted now, split so.
    Now(Split),
    /// Posted before (a redelivery): nothing was written.
    Already,
    /// The hold was voided (the ride was cancelled): it can never be posted.
    Voided,
    /// The ride has no hold.
    NoHold,
    /// The hold reserved another amount than the payment names: nothing was written.
    Mismatch {
        /// What the hold reserved.
        held: Money,
    },
}

/// A broken invariant, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule (stable, for metrics and alerts): `transfer_unbalanced`, `balance_drift`,
    /// `charged_twice`, `posted_and_voided`, `finished_unposted`, `cancelled_unvoided`,
    /// `matched_unheld`.
    pub rule: &'static str,
    /// What was found, for people.
    pub detail: String,
}

/// Totals of a tenant's ledger in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Money paid in by top-ups.
    pub topped_up_minor: i64,
    /// Fares posted (riders charged).
    pub charged_minor: i64,
    /// Rides charged.
    pub rides_charged: i64,
    /// The platform's revenue (its shards summed).
    pub revenue_minor: i64,
    /// What drivers were paid, net of commission.
    pub drivers_minor: i64,
    /// What holds reserve right now.
    pub held_minor: i64,
}

/// Where the ledger lives.
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Creates a transfer that moves money at once, unless its reference exists.
    async fn transfer(&self, tenant: &TenantId, transfer: NewTransfer) -> PortResult<Created>;

    /// The transfer of `tenant` with `reference`, if any.
    async fn transfer_by_reference(
        &self,
        tenant: &TenantId,
        reference: &str,
    ) -> PortResult<Option<Transfer>>;

    /// `account`'s balance in `currency` (zero for an account with no entry yet).
    async fn balance(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Currency,
    ) -> PortResult<Balance>;

    /// A page of `account`'s entries in `currency` older than `before`, newest first.
    async fn entries(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Currency,
        before: Option<Uuid>,
        limit: usize,
    ) -> PortResult<EntryPage>;

    /// Posts these holds, all in one unit of work (a processor's batch), answering each in
    /// order. Posting is exactly once per hold by a unique constraint: a hold already posted
    /// answers [`Posted::Already`] and writes nothing.
    async fn post_holds(&self, posts: &[PostHold]) -> PortResult<Vec<Posted>>;

    /// Checks every invariant of every tenant's ledger; rides finished or cancelled longer
    /// than `grace_ms` before `now_ms` must be settled. At most `limit` violations.
    async fn verify(&self, now_ms: i64, grace_ms: i64, limit: usize) -> PortResult<Vec<Violation>>;

    /// Totals of `tenant`'s ledger in `currency`.
    async fn totals(&self, tenant: &TenantId, currency: Currency) -> PortResult<LedgerTotals>;
}
