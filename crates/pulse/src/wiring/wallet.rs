//! The wallet, wired: the ledger is the SQL database; the `wallet` processor on the log; the
//! wallet's HTTP routes; the funds check orders are placed with when `wallet.require_funds`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pulse_core::clock::SharedClock;
use pulse_core::money::Currency;
use pulse_core::{PortResult, TenantId};
use pulse_ledger::model::Account;
use pulse_ledger::ports::Ledger;
use pulse_ledger::processor::WalletProcessor;
use pulse_ledger::wallet::WalletService;
use pulse_runtime::processor::ConsumerSettings;

use crate::backends::Backends;
use crate::config::Config;

fn ledger(backends: &Backends) -> Arc<dyn Ledger> {
    Arc::new(backends.store.clone())
}

/// The wallet service of this deployment.
pub fn service(config: &Config, backends: &Backends, clock: SharedClock) -> WalletService {
    WalletService::new(ledger(backends), config.wallet.clone(), clock)
}

/// The wallet's `/api/v1` routes.
pub fn router(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
    backend_timeout: Duration,
) -> Router {
    pulse_http::api::wallet_router(
        pulse_http::api::WalletApi {
            wallet: service(config, backends, clock),
        },
        backend_timeout,
        config.http.api_body_limits(),
    )
}

/// The `wallet` processor and how it consumes.
pub fn processor(
    config: &Config,
    backends: &Backends,
    clock: SharedClock,
) -> (WalletProcessor, ConsumerSettings) {
    let processor = WalletProcessor::new(ledger(backends), config.wallet.clone(), clock);
    let settings = processor.consumer(
        format!("{}{}", config.prefix, pulse_ledger::processor::GROUP),
        pulse_ledger::WALLET_TRANSACTIONS.named(&config.prefix),
        pulse_runtime::processor::DEAD_LETTER.named(&config.prefix),
    );
    (processor, settings)
}

/// What a rider can spend, as order placement asks it.
#[derive(Debug)]
struct WalletFunds(Arc<dyn Ledger>);

#[async_trait::async_trait]
impl pulse_orders::Funds for WalletFunds {
    async fn available(
        &self,
        tenant: &TenantId,
        user_id: &str,
        currency: Currency,
    ) -> PortResult<i64> {
        let balance = self
            .0
            .balance(tenant, &Account::rider(user_id), currency)
            .await?;
        Ok(balance.available_minor())
    }
}

/// The funds check of order placement, when `wallet.require_funds` is on.
pub fn funds(config: &Config, backends: &Backends) -> Option<Arc<dyn pulse_orders::Funds>> {
    config
        .wallet
        .require_funds
        .then(|| Arc::new(WalletFunds(ledger(backends))) as Arc<dyn pulse_orders::Funds>)
}
