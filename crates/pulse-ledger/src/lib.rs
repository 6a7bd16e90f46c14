//! The wallet (seed 004's wallet service): a double-entry ledger of riders' wallets, drivers'
//! payables, the platform's revenue and the top-up clearing account, with two-phase holds as
//! TigerBeetle's pending transfers.
//!
//! * A [`model::Transfer`] has one debit and one credit account, an amount in one currency and a
//!   reference unique per tenant: creating it again returns the original ("exists is ok"), or
//!   says it differs.
//! * A ride's fare is held (a pending transfer from the rider's wallet to the driver's payable)
//!   in the same unit of work as its match, posted by the [`processor::WalletProcessor`] once
//!   the ride finished, or voided with its cancellation — never both, by a unique constraint.
//! * A post splits the fare ([`model::split`]): the platform's commission moves on from the
//!   driver's payable to a shard of the revenue account.
//!
//! Invariants (checked by [`ports::Ledger::verify`], `pulse ledger verify` and the processor's
//! periodic check): every transfer balances; every balance equals the sum of its entries; no
//! ride is charged twice; no hold is both posted and voided; every finished ride is posted and
//! every cancelled ride's hold voided.
//!
//! No I/O of its own: [`ports::Ledger`] is implemented on SQL by `pulse-store`.

pub mod model;
pub mod ports;
pub mod processor;
pub mod wallet;

#[cfg(test)]
mod testing;

use pulse_core::log::TopicSpec;

/// Payments to make, keyed by order id (Atlas's `wallet-transactions`).
pub const WALLET_TRANSACTIONS: TopicSpec = TopicSpec {
    name: "wallet.transactions",
    carries: "WalletTransaction (post a finished ride's hold), keyed by order id",
};

/// The topics the wallet reads.
pub const TOPICS: &[TopicSpec] = &[WALLET_TRANSACTIONS];
