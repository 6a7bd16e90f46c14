//! The wallet's routes: a rider's top-ups, wallet and entries; a driver's earnings and entries;
//! the tenant's ledger totals.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use pulse_core::money::{Currency, Money};
use pulse_ledger::model::{Account, Balance, Entry, Transfer};
use pulse_ledger::wallet::{WalletError, MAX_KEY_LEN};
use pulse_orders::validate_user_id;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::json::query_params;
use super::{rfc3339, ApiJson, WalletApi};
use crate::auth::Caller;
use crate::openapi::domain;
use crate::openapi::responses::*;
use crate::ApiError;

/// Most entries in one page.
pub(crate) const MAX_ENTRIES_PAGE: usize = 200;

impl From<WalletError> for ApiError {
    fn from(err: WalletError) -> Self {
        match &err {
            WalletError::Invalid(message) => ApiError::bad_request(message.clone()),
            WalletError::KeyReused { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                err.to_string(),
            ),
            WalletError::Backend(port) if port.is_retryable() => {
                tracing::warn!(error = %err, "wallet backend unavailable");
                ApiError::unavailable("the wallet is temporarily unavailable; retry")
            }
            WalletError::Backend(_) => {
                tracing::error!(error = %err, "wallet backend failed");
                ApiError::internal(
                    "the wallet could not be read or written; this is a bug on our side",
                )
            }
        }
    }
}

/// A rider's user id from the path: any printable text (an e-mail address), as orders take it.
fn rider_of(user_id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(user_id) =
        user_id.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    validate_user_id(&user_id)?;
    Ok(user_id)
}

fn driver_of(driver_id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(driver_id) =
        driver_id.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    crate::path::validate_id("driver_id", &driver_id)?;
    Ok(driver_id)
}

fn currency_of(raw: Option<&str>) -> Result<Option<Currency>, ApiError> {
    raw.map(|code| Currency::parse(code).map_err(|err| ApiError::bad_request(err.to_string())))
        .transpose()
}

/// A top-up.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TopUpRequest)]
pub(crate) struct TopUpBody {
    /// Minor units, > 0 (cents for USD).
    #[schema(minimum = 1, example = 5000)]
    amount_minor: i64,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
    /// The client's key (printable ASCII, no `:`): a retry with it answers 200 with the
    /// original top-up and writes nothing; reusing it for another amount is 409.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[!-9;-~]{1,64}$",
        example = "card-charge-8f2a"
    )]
    idempotency_key: String,
}

/// A transfer of the ledger.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Transfer)]
pub(crate) struct TransferBody {
    transfer_id: Uuid,
    /// Unique per tenant (`top-up:{user_id}:{key}`, `ride:{order_id}:hold|post|void|commission`).
    reference: String,
    /// `single`, `pending` (a hold), `post` or `void`.
    kind: String,
    /// The account debited, `kind:owner` (e.g. `top_ups:platform`).
    debit_account: String,
    /// The account credited (e.g. `rider:u-42`).
    credit_account: String,
    #[schema(value_type = domain::Money)]
    amount: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Uuid>,
    /// RFC 3339.
    created_at: String,
}

impl From<Transfer> for TransferBody {
    fn from(transfer: Transfer) -> Self {
        Self {
            transfer_id: transfer.id,
            reference: transfer.reference,
            kind: transfer.kind.as_str().to_owned(),
            debit_account: transfer.debit.to_string(),
            credit_account: transfer.credit.to_string(),
            amount: transfer.amount,
            order_id: transfer.order_id,
            created_at: rfc3339(transfer.created_at_ms),
        }
    }
}

/// A wallet in one currency.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Wallet)]
pub(crate) struct WalletBody {
    /// `rider:{user_id}` or `driver:{driver_id}`.
    account: String,
    /// The sum of its posted entries, minor units (below zero when a hold was taken without
    /// funds, `wallet.require_funds` off).
    balance_minor: i64,
    /// A rider's: what holds of matched rides reserve. A driver's: fares of rides not yet
    /// posted, on their way in.
    pending_minor: i64,
    /// A rider's: the balance minus what is held. A driver's: the balance.
    available_minor: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

fn wallet_body(account: &Account, balance: Balance) -> WalletBody {
    let (pending, available) = match account.kind {
        pulse_ledger::model::AccountKind::Rider => {
            (balance.held_minor(), balance.available_minor())
        }
        _ => (balance.incoming_minor(), balance.posted_minor),
    };
    WalletBody {
        account: account.to_string(),
        balance_minor: balance.posted_minor,
        pending_minor: pending,
        available_minor: available,
        currency: balance.currency.as_str().to_owned(),
    }
}

/// A top-up, with the wallet after it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TopUp)]
pub(crate) struct TopUpAnswer {
    /// `false` when this answers a retry with the same key.
    created: bool,
    transfer: TransferBody,
    wallet: WalletBody,
}

/// Add money to a rider's wallet (from the platform's top-up clearing account).
#[utoipa::path(
    post,
    path = "/api/v1/riders/{user_id}/wallet/top-ups",
    operation_id = "topUpWallet",
    tag = "wallet",
    params(("user_id" = String, Path, min_length = 1, max_length = 50,
        description = "The rider's user id (percent-encoded).")),
    request_body(content = TopUpBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Topped up.", body = TopUpAnswer),
        (status = 200, description = "A retry with the same key: the original top-up.", body = TopUpAnswer),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn top_up(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    user_id: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<TopUpBody>,
) -> Result<(StatusCode, Json<TopUpAnswer>), ApiError> {
    let user_id = rider_of(user_id)?;
    let currency =
        Currency::parse(&body.currency).map_err(|err| ApiError::bad_request(err.to_string()))?;
    if body.idempotency_key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "idempotency_key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    let done = state
        .wallet
        .top_up(
            &caller.tenant,
            &user_id,
            Money::new(body.amount_minor, currency),
            &body.idempotency_key,
        )
        .await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let account = done.transfer.credit.clone();
    Ok((
        status,
        Json(TopUpAnswer {
            created: done.created,
            wallet: wallet_body(&account, done.balance),
            transfer: TransferBody::from(done.transfer),
        }),
    ))
}

/// Which currency.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct CurrencyQuery {
    /// ISO 4217 code; default `wallet.currency` (USD).
    currency: Option<String>,
}

async fn wallet_of(
    state: &WalletApi,
    caller: &pulse_tenants::Principal,
    account: Account,
    query: Result<Query<CurrencyQuery>, QueryRejection>,
) -> Result<Json<WalletBody>, ApiError> {
    let query = query_params(query, "parameters: currency")?;
    let currency = currency_of(query.currency.as_deref())?;
    let balance = state
        .wallet
        .balance(&caller.tenant, &account, currency)
        .await?;
    Ok(Json(wallet_body(&account, balance)))
}

/// A rider's wallet: its balance, what matched rides hold on it, what is available.
#[utoipa::path(
    get,
    path = "/api/v1/riders/{user_id}/wallet",
    operation_id = "getRiderWallet",
    tag = "wallet",
    params(("user_id" = String, Path, min_length = 1, max_length = 50,
        description = "The rider's user id (percent-encoded)."), CurrencyQuery),
    responses(
        (status = 200, description = "The wallet (zero for a rider who never topped up).", body = WalletBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn rider_wallet(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<CurrencyQuery>, QueryRejection>,
) -> Result<Json<WalletBody>, ApiError> {
    let user_id = rider_of(user_id)?;
    wallet_of(&state, &caller, Account::rider(user_id), query).await
}

/// A driver's earnings: what the platform owes the driver, and fares on their way in.
#[utoipa::path(
    get,
    path = "/api/v1/drivers/{driver_id}/wallet",
    operation_id = "getDriverWallet",
    tag = "wallet",
    params(("driver_id" = String, Path, min_length = 1, max_length = 64,
        pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver's id."), CurrencyQuery),
    responses(
        (status = 200, description = "The driver's payable.", body = WalletBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn driver_wallet(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    driver_id: Result<Path<String>, PathRejection>,
    query: Result<Query<CurrencyQuery>, QueryRejection>,
) -> Result<Json<WalletBody>, ApiError> {
    let driver_id = driver_of(driver_id)?;
    wallet_of(&state, &caller, Account::driver(driver_id), query).await
}

/// Which page of entries.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EntriesQuery {
    /// ISO 4217 code; default `wallet.currency` (USD).
    currency: Option<String>,
    /// The `next` of the previous page.
    before: Option<Uuid>,
    /// At most this many (1 to 200, default 50).
    limit: Option<usize>,
}

/// One entry of an account.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WalletEntry)]
pub(crate) struct EntryBody {
    entry_id: Uuid,
    transfer_id: Uuid,
    /// The transfer's reference.
    reference: String,
    /// The transfer's kind: `single`, `pending`, `post`, `void`.
    transfer_kind: String,
    /// Signed minor units: negative debits the account.
    amount_minor: i64,
    currency: String,
    /// `pending` (reserved by a hold, released by its post or void) or `posted` (final).
    phase: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Uuid>,
    /// RFC 3339.
    created_at: String,
}

impl From<Entry> for EntryBody {
    fn from(entry: Entry) -> Self {
        Self {
            entry_id: entry.id,
            transfer_id: entry.transfer_id,
            reference: entry.reference,
            transfer_kind: entry.transfer_kind.as_str().to_owned(),
            amount_minor: entry.amount_minor,
            currency: entry.currency.as_str().to_owned(),
            phase: entry.phase.as_str().to_owned(),
            description: entry.description,
            order_id: entry.order_id,
            created_at: rfc3339(entry.created_at_ms),
        }
    }
}

/// A page of entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WalletEntryPage)]
pub(crate) struct EntryPageBody {
    entries: Vec<EntryBody>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Uuid>,
}

async fn entries_of(
    state: &WalletApi,
    caller: &pulse_tenants::Principal,
    account: Account,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntryPageBody>, ApiError> {
    let query = query_params(query, "parameters: currency, before, limit")?;
    let currency = currency_of(query.currency.as_deref())?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_ENTRIES_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_ENTRIES_PAGE}"
        )));
    }
    let page = state
        .wallet
        .entries(&caller.tenant, &account, currency, query.before, limit)
        .await?;
    Ok(Json(EntryPageBody {
        entries: page.entries.into_iter().map(EntryBody::from).collect(),
        next: page.next,
    }))
}

/// A rider's wallet entries, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/riders/{user_id}/wallet/entries",
    operation_id = "listRiderWalletEntries",
    tag = "wallet",
    params(("user_id" = String, Path, min_length = 1, max_length = 50,
        description = "The rider's user id (percent-encoded)."), EntriesQuery),
    responses(
        (status = 200, description = "A page of entries.", body = EntryPageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn rider_entries(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    user_id: Result<Path<String>, PathRejection>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntryPageBody>, ApiError> {
    let user_id = rider_of(user_id)?;
    entries_of(&state, &caller, Account::rider(user_id), query).await
}

/// A driver's payable entries, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/drivers/{driver_id}/wallet/entries",
    operation_id = "listDriverWalletEntries",
    tag = "wallet",
    params(("driver_id" = String, Path, min_length = 1, max_length = 64,
        pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver's id."), EntriesQuery),
    responses(
        (status = 200, description = "A page of entries.", body = EntryPageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn driver_entries(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    driver_id: Result<Path<String>, PathRejection>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntryPageBody>, ApiError> {
    let driver_id = driver_of(driver_id)?;
    entries_of(&state, &caller, Account::driver(driver_id), query).await
}

/// The tenant's ledger in one currency.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LedgerTotals)]
pub(crate) struct TotalsBody {
    currency: String,
    /// Paid into riders' wallets by top-ups.
    topped_up_minor: i64,
    /// Fares charged to riders (posted holds).
    charged_minor: i64,
    /// Rides charged.
    rides_charged: i64,
    /// The platform's commission (its revenue shards summed).
    revenue_minor: i64,
    /// What drivers earned, net of commission.
    drivers_minor: i64,
    /// What holds of matched rides reserve now.
    held_minor: i64,
}

/// The tenant's ledger totals: money in, fares charged, the platform's revenue.
#[utoipa::path(
    get,
    path = "/api/v1/ledger/totals",
    operation_id = "getLedgerTotals",
    tag = "wallet",
    params(CurrencyQuery),
    responses(
        (status = 200, description = "The totals.", body = TotalsBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub(crate) async fn totals(
    State(state): State<Arc<WalletApi>>,
    Caller(caller): Caller,
    query: Result<Query<CurrencyQuery>, QueryRejection>,
) -> Result<Json<TotalsBody>, ApiError> {
    let query = query_params(query, "parameters: currency")?;
    let currency = currency_of(query.currency.as_deref())?;
    let (currency, totals) = state.wallet.totals(&caller.tenant, currency).await?;
    Ok(Json(TotalsBody {
        currency: currency.as_str().to_owned(),
        topped_up_minor: totals.topped_up_minor,
        charged_minor: totals.charged_minor,
        rides_charged: totals.rides_charged,
        revenue_minor: totals.revenue_minor,
        drivers_minor: totals.drivers_minor,
        held_minor: totals.held_minor,
    }))
}
