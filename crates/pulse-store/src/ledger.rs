//! The wallet's [`Ledger`] on SQL, and the ride's holds and voids written inside the ride's own
//! unit of work.
//!
//! Every transfer writes its entries (`transactions`) and the same amounts into the balances of
//! its accounts (`wallets`) in the unit of work that inserts it, so a balance is always the sum
//! of its entries. Exactly-once is the schema's: a reference is unique per tenant, and a pending
//! transfer is resolved at most once (`transfers_resolve_once` on `pending_id`), so a post that
//! loses a race or repeats inserts nothing — and writes nothing else, since its entries are
//! written only for the rows the insert returned.
//!
//! Balance rows are always changed in one order (riders, drivers, revenue, top-ups; then by
//! owner, currency and shard), so two units never wait on each other's rows crosswise.

use std::collections::BTreeMap;

use pulse_core::money::{Currency, Money};
use pulse_core::{PortError, PortResult, TenantId};
use pulse_ledger::model::{
    reference, split, Account, AccountKind, Balance, Entry, EntryPage, Phase, Transfer,
    TransferKind,
};
use pulse_ledger::ports::{
    Created, Ledger, LedgerTotals, NewTransfer, PostHold, Posted, Violation,
};
use pulse_orders::Order;
use uuid::Uuid;

use crate::sql::{value_rows_after, Sql, SqlRow, Value};
use crate::unit_of_work::Tx;
use crate::{Backend, Database};

/// Rows per multi-row statement: far below both engines' bound-parameter limits.
const CHUNK: usize = 1_000;

/// One entry to write: an amount on an account (and shard) in one phase.
#[derive(Debug, Clone)]
struct Line {
    account: Account,
    shard: i32,
    amount: i64,
    phase: Phase,
}

/// A transfer being written with its lines.
#[derive(Debug, Clone)]
struct Written {
    tenant: TenantId,
    transfer: Transfer,
    lines: Vec<Line>,
    description: &'static str,
}

fn line(account: &Account, shard: i32, amount: i64, phase: Phase) -> Line {
    Line {
        account: account.clone(),
        shard,
        amount,
        phase,
    }
}

/// The lines of a transfer of `kind` moving `amount` from `debit` to `credit`.
fn lines_of(
    kind: TransferKind,
    debit: &Account,
    credit: &Account,
    amount: i64,
    shard: i32,
) -> Vec<Line> {
    let shard_of = |account: &Account| if account.kind.is_platform() { shard } else { 0 };
    let (d, c) = (shard_of(debit), shard_of(credit));
    match kind {
        TransferKind::Single => vec![
            line(debit, d, -amount, Phase::Posted),
            line(credit, c, amount, Phase::Posted),
        ],
        TransferKind::Pending => vec![
            line(debit, d, -amount, Phase::Pending),
            line(credit, c, amount, Phase::Pending),
        ],
        TransferKind::Post => vec![
            line(debit, d, amount, Phase::Pending),
            line(credit, c, -amount, Phase::Pending),
            line(debit, d, -amount, Phase::Posted),
            line(credit, c, amount, Phase::Posted),
        ],
        TransferKind::Void => vec![
            line(debit, d, amount, Phase::Pending),
            line(credit, c, -amount, Phase::Pending),
        ],
    }
}

const TRANSFER_COLUMNS: &str = "id, reference, kind, debit_kind, debit_user, credit_kind, \
     credit_user, currency, amount_minor, pending_id, order_id, created_at_ms";

fn corrupt(what: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("ledger: {what}"))
}

fn account_of(kind: &str, owner: String) -> PortResult<Account> {
    let kind = AccountKind::parse(kind).ok_or_else(|| corrupt(format!("account kind {kind:?}")))?;
    Ok(Account { kind, owner })
}

fn currency_of(raw: &str) -> PortResult<Currency> {
    Currency::parse(raw).map_err(corrupt)
}

/// The transfer in a row of [`TRANSFER_COLUMNS`] (from `at`).
fn transfer_from_row(row: &SqlRow, at: usize) -> PortResult<Transfer> {
    let kind = row.text(at + 2)?;
    Ok(Transfer {
        id: row.uuid(at)?,
        reference: row.text(at + 1)?,
        kind: TransferKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("transfer kind {kind:?}")))?,
        debit: account_of(&row.text(at + 3)?, row.text(at + 4)?)?,
        credit: account_of(&row.text(at + 5)?, row.text(at + 6)?)?,
        amount: Money::new(row.i64(at + 8)?, currency_of(&row.text(at + 7)?)?),
        pending_id: row.opt_uuid(at + 9)?,
        order_id: row.opt_uuid(at + 10)?,
        created_at_ms: row.i64(at + 11)?,
    })
}

fn insert_transfers(transfers: &[&Written]) -> Sql {
    let rows = value_rows_after(0, transfers.len(), 13, |_, placeholder| placeholder);
    let mut sql = Sql::new(format!(
        "INSERT INTO transfers (id, tenant, reference, kind, debit_kind, debit_user, credit_kind, \
         credit_user, currency, amount_minor, pending_id, order_id, created_at_ms) VALUES {rows}"
    ));
    if transfers.len() > 2 {
        sql = sql.planned_each_time();
    }
    for written in transfers {
        let t = &written.transfer;
        sql = sql
            .bind(t.id)
            .bind(written.tenant.as_str())
            .bind(t.reference.as_str())
            .bind(t.kind.as_str())
            .bind(t.debit.kind.as_str())
            .bind(t.debit.owner.as_str())
            .bind(t.credit.kind.as_str())
            .bind(t.credit.owner.as_str())
            .bind(t.amount.currency.as_str())
            .bind(t.amount.amount_minor)
            .bind(Value::Uuid(t.pending_id))
            .bind(Value::Uuid(t.order_id))
            .bind(t.created_at_ms);
    }
    sql
}

/// The order balance rows are locked in.
fn rank(kind: AccountKind) -> u8 {
    match kind {
        AccountKind::Rider => 0,
        AccountKind::Driver => 1,
        AccountKind::Revenue => 2,
        AccountKind::TopUps => 3,
    }
}

type WalletKey = (u8, String, String, Currency, i32);

/// Writes the entries of `written` and adds them to their accounts' balances: one multi-row
/// insert of entries, one multi-row upsert of balances (each account once, in lock order).
async fn write_entries(tx: &mut Tx<'_>, written: &[Written]) -> PortResult<()> {
    let mut deltas: BTreeMap<WalletKey, (AccountKind, i64, i64, i64)> = BTreeMap::new();
    let mut entries = Vec::new();
    for w in written {
        for line in &w.lines {
            let key = (
                rank(line.account.kind),
                w.tenant.as_str().to_owned(),
                line.account.owner.clone(),
                w.transfer.amount.currency,
                line.shard,
            );
            let delta =
                deltas
                    .entry(key)
                    .or_insert((line.account.kind, 0, 0, w.transfer.created_at_ms));
            match line.phase {
                Phase::Posted => delta.1 += line.amount,
                Phase::Pending => delta.2 += line.amount,
            }
            delta.3 = delta.3.max(w.transfer.created_at_ms);
            entries.push((w, line));
        }
    }
    for chunk in entries.chunks(CHUNK) {
        let rows = value_rows_after(0, chunk.len(), 12, |_, placeholder| placeholder);
        let mut sql = Sql::new(format!(
            "INSERT INTO transactions (id, tenant, transfer_id, kind, wallet_id, currency, shard, \
             amount, phase, description, reference_id, created_at_ms) VALUES {rows}"
        ));
        if chunk.len() > 2 {
            sql = sql.planned_each_time();
        }
        for (w, line) in chunk {
            sql = sql
                .bind(Uuid::now_v7())
                .bind(w.tenant.as_str())
                .bind(w.transfer.id)
                .bind(line.account.kind.as_str())
                .bind(line.account.owner.as_str())
                .bind(w.transfer.amount.currency.as_str())
                .bind(Value::I32(Some(line.shard)))
                .bind(line.amount)
                .bind(line.phase.as_str())
                .bind(w.description)
                .bind(w.transfer.reference.as_str())
                .bind(w.transfer.created_at_ms);
        }
        tx.execute(&sql).await?;
    }
    let deltas: Vec<_> = deltas.into_iter().collect();
    for chunk in deltas.chunks(CHUNK) {
        let rows = value_rows_after(0, chunk.len(), 8, |_, placeholder| placeholder);
        let mut sql = Sql::new(format!(
            "INSERT INTO wallets (tenant, kind, user_id, currency, shard, balance, pending, \
             updated_at_ms) VALUES {rows} \
             ON CONFLICT (tenant, kind, user_id, currency, shard) DO UPDATE SET \
             balance = wallets.balance + excluded.balance, \
             pending = wallets.pending + excluded.pending, \
             updated_at_ms = excluded.updated_at_ms"
        ));
        if chunk.len() > 2 {
            sql = sql.planned_each_time();
        }
        for ((_, tenant, owner, currency, shard), (kind, posted, pending, at_ms)) in chunk {
            sql = sql
                .bind(tenant.as_str())
                .bind(kind.as_str())
                .bind(owner.as_str())
                .bind(currency.as_str())
                .bind(Value::I32(Some(*shard)))
                .bind(*posted)
                .bind(*pending)
                .bind(*at_ms);
        }
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// What [`hold_funds`] found.
pub(crate) enum Funds {
    /// The hold may go ahead.
    Enough,
    /// It may not: what the wallet has available.
    Short(i64),
}

/// Locks the rider's wallet row of `order`'s currency for the rest of the unit of work (making
/// it if need be, so two first holds queue on it too) and says whether it covers `fare`.
pub(crate) async fn hold_funds(tx: &mut Tx<'_>, order: &Order, fare: Money) -> PortResult<Funds> {
    let ensure = Sql::new(
        "INSERT INTO wallets (tenant, kind, user_id, currency, shard, balance, pending, \
         updated_at_ms) VALUES ($1, 'rider', $2, $3, 0, 0, 0, $4) ON CONFLICT DO NOTHING",
    )
    .bind(order.tenant.as_str())
    .bind(order.user_id.as_str())
    .bind(fare.currency.as_str())
    .bind(order.created_at_ms);
    tx.execute(&ensure).await?;
    let lock = match tx.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let read = Sql::new(format!(
        "SELECT balance, pending FROM wallets WHERE tenant = $1 AND kind = 'rider' \
         AND user_id = $2 AND currency = $3 AND shard = 0{lock}"
    ))
    .bind(order.tenant.as_str())
    .bind(order.user_id.as_str())
    .bind(fare.currency.as_str());
    let row = tx
        .fetch_optional(&read)
        .await?
        .ok_or_else(|| corrupt("the rider's wallet row vanished inside its unit of work"))?;
    let balance = Balance {
        posted_minor: row.i64(0)?,
        pending_minor: row.i64(1)?,
        currency: fare.currency,
    };
    Ok(if balance.available_minor() >= fare.amount_minor {
        Funds::Enough
    } else {
        Funds::Short(balance.available_minor())
    })
}

/// Writes `order`'s hold: its fare reserved on the rider's wallet for its driver's payable.
pub(crate) async fn hold(
    tx: &mut Tx<'_>,
    order: &Order,
    fare: Money,
    at_ms: i64,
) -> PortResult<()> {
    let driver = order.driver_id.as_deref().ok_or_else(|| {
        PortError::Invalid(format!("order {}: a hold needs its driver", order.id))
    })?;
    let transfer = Transfer {
        id: Uuid::now_v7(),
        reference: reference::hold(order.id),
        kind: TransferKind::Pending,
        debit: Account::rider(order.user_id.clone()),
        credit: Account::driver(driver),
        amount: fare,
        pending_id: None,
        order_id: Some(order.id),
        created_at_ms: at_ms,
    };
    let written = Written {
        tenant: order.tenant.clone(),
        lines: lines_of(
            TransferKind::Pending,
            &transfer.debit,
            &transfer.credit,
            fare.amount_minor,
            0,
        ),
        transfer,
        description: "ride fare held",
    };
    tx.execute(&insert_transfers(&[&written])).await?;
    write_entries(tx, &[written]).await
}

/// Resolves the pending transfers named in `v(tenant, hold_ref, id, reference, order_id,
/// amount, currency)` as `kind`, inserting only those not resolved yet; returns what it wrote.
fn resolve(kind: TransferKind, rows: usize, at_ms: i64, check_amount: bool) -> Sql {
    let values = value_rows_after(1, rows, 6, |_, placeholder| placeholder);
    let amount = if check_amount {
        " AND h.amount_minor = v.amount AND h.currency = v.currency"
    } else {
        ""
    };
    let sql = Sql::new(format!(
        "WITH v(tenant, hold_ref, id, reference, amount, currency) AS (VALUES {values}) \
         INSERT INTO transfers (id, tenant, reference, kind, debit_kind, debit_user, credit_kind, \
             credit_user, currency, amount_minor, pending_id, order_id, created_at_ms) \
         SELECT v.id, h.tenant, v.reference, '{kind}', h.debit_kind, h.debit_user, h.credit_kind, \
             h.credit_user, h.currency, h.amount_minor, h.id, h.order_id, $1 \
         FROM v JOIN transfers h ON h.tenant = v.tenant AND h.reference = v.hold_ref \
             AND h.kind = 'pending'{amount} \
         WHERE true ON CONFLICT DO NOTHING RETURNING {TRANSFER_COLUMNS}, tenant",
        kind = kind.as_str()
    ))
    .bind(at_ms);
    if rows > 2 {
        sql.planned_each_time()
    } else {
        sql
    }
}

/// Voids `order`'s hold if it has one not resolved yet.
pub(crate) async fn void(tx: &mut Tx<'_>, order: &Order, at_ms: i64) -> PortResult<()> {
    let sql = resolve(TransferKind::Void, 1, at_ms, false)
        .bind(order.tenant.as_str())
        .bind(reference::hold(order.id))
        .bind(Uuid::now_v7())
        .bind(reference::void(order.id))
        .bind(0_i64)
        .bind("");
    let Some(row) = tx.fetch_optional(&sql).await? else {
        return Ok(());
    };
    let transfer = transfer_from_row(&row, 0)?;
    let lines = lines_of(
        TransferKind::Void,
        &transfer.debit,
        &transfer.credit,
        transfer.amount.amount_minor,
        0,
    );
    let written = Written {
        tenant: order.tenant.clone(),
        transfer,
        lines,
        description: "ride cancelled: hold released",
    };
    write_entries(tx, &[written]).await
}

/// Why a post wrote nothing: the hold's state.
async fn classify(tx: &mut Tx<'_>, post: &PostHold) -> PortResult<Posted> {
    let sql = Sql::new(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE tenant = $1 AND order_id = $2 \
         AND kind IN ('pending', 'post', 'void')"
    ))
    .bind(post.tenant.as_str())
    .bind(post.order_id);
    let transfers = tx
        .fetch_all(&sql)
        .await?
        .iter()
        .map(|row| transfer_from_row(row, 0))
        .collect::<PortResult<Vec<_>>>()?;
    let of = |kind| transfers.iter().find(|t| t.kind == kind);
    Ok(
        match (
            of(TransferKind::Pending),
            of(TransferKind::Post),
            of(TransferKind::Void),
        ) {
            (None, ..) => Posted::NoHold,
            (Some(_), Some(_), _) => Posted::Already,
            (Some(_), None, Some(_)) => Posted::Voided,
            (Some(hold), None, None) => Posted::Mismatch { held: hold.amount },
        },
    )
}

async fn post_holds(tx: &mut Tx<'_>, posts: &[PostHold]) -> PortResult<Vec<Posted>> {
    let mut outcomes: Vec<Option<Posted>> = vec![None; posts.len()];
    // A batch may carry one payment twice (a redelivery): the first is posted, the rest found
    // posted.
    let mut first: BTreeMap<(&str, Uuid), usize> = BTreeMap::new();
    let mut unique = Vec::new();
    for (index, post) in posts.iter().enumerate() {
        match first.entry((post.tenant.as_str(), post.order_id)) {
            std::collections::btree_map::Entry::Occupied(_) => {
                outcomes[index] = Some(Posted::Already)
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(index);
                unique.push(index);
            }
        }
    }
    let at_ms = posts
        .iter()
        .map(|post| post.at_ms)
        .max()
        .unwrap_or_default();
    let mut written = Vec::new();
    for chunk in unique.chunks(CHUNK) {
        let mut sql = resolve(TransferKind::Post, chunk.len(), at_ms, true);
        for &index in chunk {
            let post = &posts[index];
            sql = sql
                .bind(post.tenant.as_str())
                .bind(reference::hold(post.order_id))
                .bind(Uuid::now_v7())
                .bind(reference::post(post.order_id))
                .bind(post.amount.amount_minor)
                .bind(post.amount.currency.as_str());
        }
        for row in tx.fetch_all(&sql).await? {
            let transfer = transfer_from_row(&row, 0)?;
            let tenant = TenantId::parse(&row.text(12)?).map_err(corrupt)?;
            let order_id = transfer
                .order_id
                .ok_or_else(|| corrupt(format!("hold of post {} has no order", transfer.id)))?;
            let index = first[&(tenant.as_str(), order_id)];
            let post = &posts[index];
            let fare = transfer.amount;
            let shares = split(fare.amount_minor, post.commission_bp);
            outcomes[index] = Some(Posted::Now(shares));
            let lines = lines_of(
                TransferKind::Post,
                &transfer.debit,
                &transfer.credit,
                fare.amount_minor,
                0,
            );
            let driver = transfer.credit.clone();
            written.push(Written {
                tenant: tenant.clone(),
                transfer,
                lines,
                description: "ride fare paid",
            });
            if shares.commission_minor > 0 {
                let commission = Transfer {
                    id: Uuid::now_v7(),
                    reference: reference::commission(order_id),
                    kind: TransferKind::Single,
                    debit: driver,
                    credit: Account::revenue(),
                    amount: Money::new(shares.commission_minor, fare.currency),
                    pending_id: None,
                    order_id: Some(order_id),
                    created_at_ms: at_ms,
                };
                let lines = lines_of(
                    TransferKind::Single,
                    &commission.debit,
                    &commission.credit,
                    shares.commission_minor,
                    post.revenue_shard,
                );
                written.push(Written {
                    tenant,
                    transfer: commission,
                    lines,
                    description: "platform commission",
                });
            }
        }
    }
    let commissions: Vec<&Written> = written
        .iter()
        .filter(|w| w.transfer.kind == TransferKind::Single)
        .collect();
    for chunk in commissions.chunks(CHUNK) {
        tx.execute(&insert_transfers(chunk)).await?;
    }
    write_entries(tx, &written).await?;
    let mut answers = Vec::with_capacity(posts.len());
    for (index, outcome) in outcomes.into_iter().enumerate() {
        answers.push(match outcome {
            Some(outcome) => outcome,
            None => classify(tx, &posts[index]).await?,
        });
    }
    Ok(answers)
}

/// One rule of [`Ledger::verify`]: a query whose rows are violations, and how to word one.
struct Rule {
    name: &'static str,
    query: &'static str,
    uses_cutoff: bool,
}

/// The bound of one invariant check on PostgreSQL.
const VERIFY_TIMEOUT: &str = "SET LOCAL statement_timeout = '10min'";

const RULES: &[Rule] = &[
    Rule {
        name: "transfer_unbalanced",
        query: "SELECT CAST(tr.id AS TEXT), tr.reference FROM transfers tr \
             LEFT JOIN transactions t ON t.transfer_id = tr.id \
             GROUP BY tr.id, tr.reference, tr.kind, tr.amount_minor \
             HAVING COALESCE(SUM(t.amount), 0) <> 0 \
                 OR COALESCE(SUM(CASE WHEN t.phase = 'posted' THEN t.amount ELSE 0 END), 0) <> 0 \
                 OR COALESCE(SUM(ABS(t.amount)), 0) <> tr.amount_minor \
                     * (CASE tr.kind WHEN 'post' THEN 4 ELSE 2 END)",
        uses_cutoff: false,
    },
    Rule {
        name: "transfer_unbalanced",
        query: "SELECT CAST(tr.id AS TEXT), tr.reference FROM transactions t \
             JOIN transfers tr ON tr.id = t.transfer_id \
             WHERE t.currency <> tr.currency OR t.tenant <> tr.tenant \
                 OR NOT ((t.kind = tr.debit_kind AND t.wallet_id = tr.debit_user) \
                     OR (t.kind = tr.credit_kind AND t.wallet_id = tr.credit_user))",
        uses_cutoff: false,
    },
    Rule {
        name: "transfer_unbalanced",
        query: "SELECT CAST(t.id AS TEXT), 'an entry without its transfer' FROM transactions t \
             LEFT JOIN transfers tr ON tr.id = t.transfer_id WHERE tr.id IS NULL",
        uses_cutoff: false,
    },
    Rule {
        name: "balance_drift",
        query: "SELECT w.tenant || ' ' || w.kind || ':' || w.user_id || ' ' || w.currency \
                 || ' shard ' || CAST(w.shard AS TEXT), \
             'balance ' || CAST(w.balance AS TEXT) || ' pending ' || CAST(w.pending AS TEXT) \
                 || ', its entries sum to ' || CAST(COALESCE(e.posted, 0) AS TEXT) || ' and ' \
                 || CAST(COALESCE(e.pending, 0) AS TEXT) \
             FROM wallets w LEFT JOIN (SELECT tenant, kind, wallet_id, currency, shard, \
                 SUM(CASE WHEN phase = 'posted' THEN amount ELSE 0 END) AS posted, \
                 SUM(CASE WHEN phase = 'pending' THEN amount ELSE 0 END) AS pending \
                 FROM transactions GROUP BY tenant, kind, wallet_id, currency, shard) e \
             ON e.tenant = w.tenant AND e.kind = w.kind AND e.wallet_id = w.user_id \
                 AND e.currency = w.currency AND e.shard = w.shard \
             WHERE w.balance <> COALESCE(e.posted, 0) OR w.pending <> COALESCE(e.pending, 0)",
        uses_cutoff: false,
    },
    Rule {
        name: "balance_drift",
        query: "SELECT t.tenant || ' ' || t.kind || ':' || t.wallet_id, 'entries without a wallet row' \
             FROM transactions t LEFT JOIN wallets w ON w.tenant = t.tenant AND w.kind = t.kind \
                 AND w.user_id = t.wallet_id AND w.currency = t.currency AND w.shard = t.shard \
             WHERE w.tenant IS NULL",
        uses_cutoff: false,
    },
    Rule {
        name: "charged_twice",
        query: "SELECT CAST(order_id AS TEXT), CAST(COUNT(*) AS TEXT) || ' ' || kind || ' transfers' \
             FROM transfers WHERE order_id IS NOT NULL AND kind IN ('pending', 'post') \
             GROUP BY tenant, order_id, kind HAVING COUNT(*) > 1",
        uses_cutoff: false,
    },
    Rule {
        name: "posted_and_voided",
        query: "SELECT CAST(pending_id AS TEXT), CAST(COUNT(*) AS TEXT) || ' resolutions' \
             FROM transfers WHERE pending_id IS NOT NULL GROUP BY pending_id HAVING COUNT(*) > 1",
        uses_cutoff: false,
    },
    Rule {
        name: "finished_unposted",
        query: "SELECT CAST(o.id AS TEXT), 'finished at ' || CAST(s.at_ms AS TEXT) || ', not charged' \
             FROM orders o JOIN order_transitions s ON s.order_id = o.id AND s.status = 'FINISHED' \
             WHERE o.status = 'FINISHED' AND o.price_total IS NOT NULL AND s.at_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM transfers p WHERE p.tenant = o.tenant \
                 AND p.order_id = o.id AND p.kind = 'post')",
        uses_cutoff: true,
    },
    Rule {
        name: "cancelled_unvoided",
        query: "SELECT CAST(o.id AS TEXT), 'cancelled at ' || CAST(s.at_ms AS TEXT) || ', its hold still reserved' \
             FROM orders o JOIN order_transitions s ON s.order_id = o.id AND s.status = 'CANCELLED' \
             JOIN transfers h ON h.tenant = o.tenant AND h.order_id = o.id AND h.kind = 'pending' \
             WHERE o.status = 'CANCELLED' AND s.at_ms < $1 \
             AND NOT EXISTS (SELECT 1 FROM transfers v WHERE v.pending_id = h.id AND v.kind = 'void')",
        uses_cutoff: true,
    },
    Rule {
        name: "matched_unheld",
        query: "SELECT CAST(o.id AS TEXT), o.status || ' without a hold of its fare' \
             FROM orders o WHERE o.status IN ('MATCHED', 'STARTED', 'FINISHED') \
             AND o.price_total IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM transfers h WHERE h.tenant = o.tenant \
                 AND h.order_id = o.id AND h.kind = 'pending')",
        uses_cutoff: false,
    },
];

impl Database {
    /// Refreshes the planner's statistics of the ledger's tables (PostgreSQL's `ANALYZE`), so a
    /// check right after a burst of writes is planned for the rows there are; `pulse ledger
    /// verify` runs it first. Nothing to do on SQLite.
    pub async fn analyze_ledger(&self) -> PortResult<()> {
        if self.backend() == Backend::Postgres {
            self.execute(Sql::new(
                "ANALYZE orders, order_transitions, transfers, transactions, wallets",
            ))
            .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Ledger for Database {
    async fn transfer(&self, tenant: &TenantId, new: NewTransfer) -> PortResult<Created> {
        let tenant = tenant.clone();
        self.write(move |mut tx| {
            Box::pin(async move {
                let transfer = Transfer {
                    id: Uuid::now_v7(),
                    reference: new.reference.clone(),
                    kind: TransferKind::Single,
                    debit: new.debit.clone(),
                    credit: new.credit.clone(),
                    amount: new.amount,
                    pending_id: None,
                    order_id: None,
                    created_at_ms: new.at_ms,
                };
                let lines = lines_of(
                    TransferKind::Single,
                    &new.debit,
                    &new.credit,
                    new.amount.amount_minor,
                    new.shard,
                );
                let written = Written {
                    tenant: tenant.clone(),
                    transfer,
                    lines,
                    description: "top-up",
                };
                let plain = insert_transfers(&[&written]);
                let text = format!("{} ON CONFLICT DO NOTHING RETURNING id", plain.text());
                let insert = plain.with_text(text);
                if tx.fetch_optional(&insert).await?.is_some() {
                    let transfer = written.transfer.clone();
                    write_entries(&mut tx, &[written]).await?;
                    return Ok(Created::New(transfer));
                }
                let find = Sql::new(format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE tenant = $1 AND reference = $2"
                ))
                .bind(tenant.as_str())
                .bind(new.reference.as_str());
                let row = tx.fetch_optional(&find).await?.ok_or_else(|| {
                    corrupt(format!(
                        "reference {:?} conflicted but is not there",
                        new.reference
                    ))
                })?;
                let original = transfer_from_row(&row, 0)?;
                let same = original.kind == TransferKind::Single
                    && original.debit == new.debit
                    && original.credit == new.credit
                    && original.amount == new.amount;
                Ok(if same {
                    Created::Exists(original)
                } else {
                    Created::Mismatch(original)
                })
            })
        })
        .await
    }

    async fn transfer_by_reference(
        &self,
        tenant: &TenantId,
        reference: &str,
    ) -> PortResult<Option<Transfer>> {
        let sql = Sql::new(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE tenant = $1 AND reference = $2"
        ))
        .bind(tenant.as_str())
        .bind(reference);
        self.fetch_optional(&sql)
            .await?
            .map(|row| transfer_from_row(&row, 0))
            .transpose()
    }

    async fn balance(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Currency,
    ) -> PortResult<Balance> {
        let sql = Sql::new(
            "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT), \
             CAST(COALESCE(SUM(pending), 0) AS BIGINT) FROM wallets \
             WHERE tenant = $1 AND kind = $2 AND user_id = $3 AND currency = $4",
        )
        .bind(tenant.as_str())
        .bind(account.kind.as_str())
        .bind(account.owner.as_str())
        .bind(currency.as_str());
        let row = self.fetch_optional(&sql).await?;
        Ok(match row {
            Some(row) => Balance {
                posted_minor: row.i64(0)?,
                pending_minor: row.i64(1)?,
                currency,
            },
            None => Balance::zero(currency),
        })
    }

    async fn entries(
        &self,
        tenant: &TenantId,
        account: &Account,
        currency: Currency,
        before: Option<Uuid>,
        limit: usize,
    ) -> PortResult<EntryPage> {
        let older = if before.is_some() {
            " AND t.id < $6"
        } else {
            ""
        };
        let mut sql = Sql::new(format!(
            "SELECT t.id, t.transfer_id, t.reference_id, tr.kind, t.amount, t.currency, t.phase, \
             COALESCE(t.description, ''), tr.order_id, t.created_at_ms \
             FROM transactions t JOIN transfers tr ON tr.id = t.transfer_id \
             WHERE t.tenant = $1 AND t.kind = $2 AND t.wallet_id = $3 AND t.currency = $4{older} \
             ORDER BY t.id DESC LIMIT $5"
        ))
        .bind(tenant.as_str())
        .bind(account.kind.as_str())
        .bind(account.owner.as_str())
        .bind(currency.as_str())
        .bind(limit as i64 + 1);
        if let Some(before) = before {
            sql = sql.bind(before);
        }
        let mut entries = Vec::new();
        for row in self.fetch_all(&sql).await? {
            let kind = row.text(3)?;
            let phase = row.text(6)?;
            entries.push(Entry {
                id: row.uuid(0)?,
                transfer_id: row.uuid(1)?,
                reference: row.opt_text(2)?.unwrap_or_default(),
                transfer_kind: TransferKind::parse(&kind)
                    .ok_or_else(|| corrupt(format!("transfer kind {kind:?}")))?,
                amount_minor: row.i64(4)?,
                currency: currency_of(&row.text(5)?)?,
                phase: Phase::parse(&phase).ok_or_else(|| corrupt(format!("phase {phase:?}")))?,
                description: row.text(7)?,
                order_id: row.opt_uuid(8)?,
                created_at_ms: row.i64(9)?,
            });
        }
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|entry| entry.id)
        } else {
            None
        };
        Ok(EntryPage { entries, next })
    }

    async fn post_holds(&self, posts: &[PostHold]) -> PortResult<Vec<Posted>> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let posts = posts.to_vec();
        self.write(move |mut tx| Box::pin(async move { post_holds(&mut tx, &posts).await }))
            .await
    }

    async fn verify(&self, now_ms: i64, grace_ms: i64, limit: usize) -> PortResult<Vec<Violation>> {
        let cutoff = now_ms - grace_ms.max(0);
        let statements: Vec<(&'static str, Sql)> = RULES
            .iter()
            .map(|rule| {
                let sql = Sql::new(format!("{} LIMIT {limit}", rule.query));
                let sql = if rule.uses_cutoff {
                    sql.bind(cutoff)
                } else {
                    sql
                };
                (rule.name, sql)
            })
            .collect();
        let rows = match self.backend() {
            // In a transaction of its own, with a bound fit for a scan of the whole ledger
            // rather than the pool's per-statement timeout of the hot path.
            Backend::Postgres => {
                self.write(move |mut tx| {
                    Box::pin(async move {
                        tx.execute(&Sql::new(VERIFY_TIMEOUT)).await?;
                        let mut found = Vec::new();
                        for (rule, sql) in &statements {
                            found.push((*rule, tx.fetch_all(sql).await?));
                        }
                        Ok(found)
                    })
                })
                .await?
            }
            // Reads on the pool: SQLite's single writer stays free for the hot path.
            Backend::Sqlite => {
                let mut found = Vec::new();
                for (rule, sql) in &statements {
                    found.push((*rule, self.fetch_all(sql).await?));
                }
                found
            }
        };
        let mut violations = Vec::new();
        for (rule, rows) in rows {
            for row in rows {
                violations.push(Violation {
                    rule,
                    detail: format!("{}: {}", row.text(0)?, row.text(1)?),
                });
            }
        }
        violations.truncate(limit);
        Ok(violations)
    }

    async fn totals(&self, tenant: &TenantId, currency: Currency) -> PortResult<LedgerTotals> {
        let sql = Sql::new(
            "SELECT \
             CAST(COALESCE((SELECT SUM(amount_minor) FROM transfers WHERE tenant = $1 \
                 AND currency = $2 AND kind = 'single' AND debit_kind = 'top_ups'), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(amount_minor) FROM transfers WHERE tenant = $1 \
                 AND currency = $2 AND kind = 'post'), 0) AS BIGINT), \
             CAST((SELECT COUNT(*) FROM transfers WHERE tenant = $1 AND currency = $2 \
                 AND kind = 'post') AS BIGINT), \
             CAST(COALESCE((SELECT SUM(balance) FROM wallets WHERE tenant = $1 \
                 AND currency = $2 AND kind = 'revenue'), 0) AS BIGINT), \
             CAST(COALESCE((SELECT SUM(balance) FROM wallets WHERE tenant = $1 \
                 AND currency = $2 AND kind = 'driver'), 0) AS BIGINT), \
             CAST(COALESCE((SELECT -SUM(pending) FROM wallets WHERE tenant = $1 \
                 AND currency = $2 AND kind = 'rider' AND pending < 0), 0) AS BIGINT)",
        )
        .bind(tenant.as_str())
        .bind(currency.as_str());
        let row = self
            .fetch_optional(&sql)
            .await?
            .ok_or_else(|| corrupt("the totals query returned no row"))?;
        Ok(LedgerTotals {
            topped_up_minor: row.i64(0)?,
            charged_minor: row.i64(1)?,
            rides_charged: row.i64(2)?,
            revenue_minor: row.i64(3)?,
            drivers_minor: row.i64(4)?,
            held_minor: row.i64(5)?,
        })
    }
}
