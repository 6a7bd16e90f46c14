//! A ledger for the crate's unit tests: it answers as told and counts what it was asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use pulse_core::money::Currency;
use pulse_core::{PortError, PortResult, TenantId};
use uuid::Uuid;

use crate::model::{Account, Balance, EntryPage, Split, Transfer, TransferKind};
use crate::ports::{Created, Ledger, LedgerTotals, NewTransfer, PostHold, Posted, Violation};

/// Posts the first payment of a batch and finds no hold for the rest; creates every transfer
/// asked for; fails every post when `fail`.
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    pub(crate) fail: bool,
    pub(crate) asked: Mutex<Vec<PostHold>>,
    pub(crate) transfers: Mutex<Vec<NewTransfer>>,
    pub(crate) verifies: AtomicUsize,
}

#[async_trait]
impl Ledger for Scripted {
    async fn transfer(&self, _: &TenantId, transfer: NewTransfer) -> PortResult<Created> {
        self.transfers.lock().unwrap().push(transfer.clone());
        Ok(Created::New(Transfer {
            id: Uuid::now_v7(),
            reference: transfer.reference,
            kind: TransferKind::Single,
            debit: transfer.debit,
            credit: transfer.credit,
            amount: transfer.amount,
            pending_id: None,
            order_id: None,
            created_at_ms: transfer.at_ms,
        }))
    }

    async fn transfer_by_reference(&self, _: &TenantId, _: &str) -> PortResult<Option<Transfer>> {
        Ok(None)
    }

    async fn balance(&self, _: &TenantId, _: &Account, currency: Currency) -> PortResult<Balance> {
        Ok(Balance::zero(currency))
    }

    async fn entries(
        &self,
        _: &TenantId,
        _: &Account,
        _: Currency,
        _: Option<Uuid>,
        _: usize,
    ) -> PortResult<EntryPage> {
        Ok(EntryPage {
            entries: Vec::new(),
            next: None,
        })
    }

    async fn post_holds(&self, posts: &[PostHold]) -> PortResult<Vec<Posted>> {
        if self.fail {
            return Err(PortError::unavailable("store", "connection refused"));
        }
        self.asked.lock().unwrap().extend_from_slice(posts);
        Ok((0..posts.len())
            .map(|n| match n {
                0 => Posted::Now(Split {
                    driver_minor: 800,
                    commission_minor: 200,
                }),
                _ => Posted::NoHold,
            })
            .collect())
    }

    async fn verify(&self, _: i64, _: i64, _: usize) -> PortResult<Vec<Violation>> {
        self.verifies.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }

    async fn totals(&self, _: &TenantId, _: Currency) -> PortResult<LedgerTotals> {
        Ok(LedgerTotals {
            topped_up_minor: 0,
            charged_minor: 0,
            rides_charged: 0,
            revenue_minor: 0,
            drivers_minor: 0,
            held_minor: 0,
        })
    }
}
