//! The marketplace's [`RideStore`] on SQL: each transition — the order's move, its driver's
//! claim or release, its history entry and its outbox event — in one unit of work; the drivers'
//! statuses; the rides' trails; the dispatch schedule of unmatched orders.
//!
//! The order row is locked first (`FOR UPDATE` on PostgreSQL; SQLite's single writer serialises
//! units anyway), so the domain's rule sees the status it changes. A claim is the conditional
//! `UPDATE drivers … WHERE status = 'available'`: of two orders racing for one driver, one
//! changes the row and the other changes nothing and writes nothing (on PostgreSQL without
//! waiting for the first to commit: `FOR UPDATE SKIP LOCKED`).

use pulse_core::{PortResult, TenantId};
use pulse_marketplace::model::{DriverRecord, DriverReport, DriverStatus, RideStep, TrailPoint};
use pulse_marketplace::ports::{
    Decide, Decision, DriverChange, MoneyChange, RidePage, RideParty, RideStore, TransitionOutcome,
};
use pulse_orders::{Order, OrderStatus};
use uuid::Uuid;

use crate::orders::{corrupt, order_from_row, ORDER_COLUMNS};
use crate::sql::{value_rows_after, PerDialect, Sql};
use crate::{ledger, outbox, Backend, Database};

/// Rows per multi-row statement: far below both engines' bound-parameter limits.
const CHUNK: usize = 300;

static LOCK_ORDER: PerDialect = PerDialect::new(|backend| {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND tenant = $2{lock}")
});

/// The claim of the first available of `candidates` (nearest first), returning the driver it
/// took. On PostgreSQL a driver whose row another transaction holds (another order is claiming
/// it right now) is passed over at once rather than waited for: racing dispatches spread over
/// the candidates instead of queueing behind the nearest one.
fn claim_driver(
    backend: Backend,
    tenant: &TenantId,
    order_id: Uuid,
    at_ms: i64,
    candidates: &[String],
) -> Sql {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let rows = value_rows_after(3, candidates.len(), 2, |_, placeholder| placeholder);
    let mut sql = Sql::new(format!(
        "WITH c(driver_id, rank) AS (VALUES {rows}) \
         UPDATE drivers SET status = 'on_ride', order_id = $2, updated_at_ms = $3 \
         WHERE tenant = $1 AND status = 'available' AND driver_id = (SELECT d.driver_id \
             FROM drivers d JOIN c ON c.driver_id = d.driver_id \
             WHERE d.tenant = $1 AND d.status = 'available' ORDER BY c.rank LIMIT 1{lock}) \
         RETURNING driver_id"
    ))
    .bind(tenant.as_str())
    .bind(order_id)
    .bind(at_ms);
    if candidates.len() > 2 {
        sql = sql.planned_each_time();
    }
    for (rank, driver) in candidates.iter().enumerate() {
        sql = sql.bind(driver.as_str()).bind(rank as i64);
    }
    sql
}

const RELEASE_DRIVER: &str = "UPDATE drivers SET status = 'available', order_id = NULL, \
     updated_at_ms = $4 WHERE tenant = $1 AND driver_id = $2 AND order_id = $3";

/// The order's move; a match also ends its dispatch schedule and any `no_driver` mark.
const MOVE_ORDER: &str = "UPDATE orders SET status = $3, driver_id = $4, \
     dispatch_next_ms = NULL, no_driver_reason = NULL WHERE id = $1 AND tenant = $2";

const INSERT_STEP: &str =
    "INSERT INTO order_transitions (order_id, status, tenant, at_ms, driver_id) \
     VALUES ($1, $2, $3, $4, $5)";

static TAKE_DUE: PerDialect = PerDialect::new(|backend| {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    format!(
        "UPDATE orders SET dispatch_next_ms = $2 WHERE id IN (SELECT id FROM orders \
         WHERE status = 'PENDING' AND dispatch_next_ms IS NOT NULL AND dispatch_next_ms <= $1 \
         ORDER BY dispatch_next_ms LIMIT $3{lock}) \
         RETURNING tenant, id, COALESCE(dispatch_until_ms, 0)"
    )
});

/// The latest report of each driver in `reports` (ties: the later in the slice).
fn latest_per_driver(reports: &[DriverReport]) -> Vec<&DriverReport> {
    let mut latest: std::collections::HashMap<&str, &DriverReport> = Default::default();
    for report in reports {
        match latest.get(report.driver_id.as_str()) {
            Some(kept) if kept.at_ms > report.at_ms => {}
            _ => {
                latest.insert(&report.driver_id, report);
            }
        }
    }
    let mut latest: Vec<&DriverReport> = latest.into_values().collect();
    // A stable order of row locks, so two trackers never deadlock on each other's batches.
    latest.sort_unstable_by(|a, b| a.driver_id.cmp(&b.driver_id));
    latest
}

/// A new driver takes its report's status; a known one follows it unless on a ride. A row is
/// rewritten only when something changed, so a steady stream of pings writes nothing.
fn upsert_drivers(tenant: &TenantId, reports: &[&DriverReport]) -> Sql {
    let rows = value_rows_after(1, reports.len(), 4, |column, placeholder| match column {
        0 => format!("$1, {placeholder}"),
        _ => placeholder,
    });
    let mut sql = Sql::new(format!(
        "INSERT INTO drivers (tenant, driver_id, status, vehicle_type, updated_at_ms) VALUES {rows} \
         ON CONFLICT (tenant, driver_id) DO UPDATE SET status = excluded.status, \
             vehicle_type = COALESCE(excluded.vehicle_type, drivers.vehicle_type), \
             updated_at_ms = excluded.updated_at_ms \
         WHERE drivers.status <> 'on_ride' AND (drivers.status <> excluded.status \
             OR COALESCE(drivers.vehicle_type, '') <> COALESCE(excluded.vehicle_type, drivers.vehicle_type, ''))"
    ))
    .bind(tenant.as_str());
    if reports.len() > 2 {
        sql = sql.planned_each_time();
    }
    for report in reports {
        let status = if report.available {
            DriverStatus::Available
        } else {
            DriverStatus::Offline
        };
        sql = sql
            .bind(report.driver_id.as_str())
            .bind(status.as_str())
            .bind(report.vehicle_type.as_deref())
            .bind(report.at_ms);
    }
    sql
}

/// The points of drivers on a ride, added to that ride's trail.
fn insert_trail(tenant: &TenantId, reports: &[DriverReport]) -> Sql {
    let rows = value_rows_after(1, reports.len(), 4, |_, placeholder| placeholder);
    let mut sql = Sql::new(format!(
        "WITH v(driver_id, at_ms, lat, lng) AS (VALUES {rows}) \
         INSERT INTO ride_trail (order_id, at_ms, tenant, lat, lng) \
         SELECT d.order_id, v.at_ms, d.tenant, v.lat, v.lng FROM v \
         JOIN drivers d ON d.tenant = $1 AND d.driver_id = v.driver_id \
         WHERE d.status = 'on_ride' AND d.order_id IS NOT NULL \
         ON CONFLICT (order_id, at_ms) DO NOTHING"
    ))
    .bind(tenant.as_str());
    if reports.len() > 2 {
        sql = sql.planned_each_time();
    }
    for report in reports {
        sql = sql
            .bind(report.driver_id.as_str())
            .bind(report.at_ms)
            .bind(report.lat)
            .bind(report.lng);
    }
    sql
}

#[async_trait::async_trait]
impl RideStore for Database {
    async fn transition(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        decide: Decide,
    ) -> PortResult<TransitionOutcome> {
        let tenant = tenant.clone();
        self.write(move |mut tx| {
            Box::pin(async move {
                let lock = Sql::new(LOCK_ORDER.get(tx.backend()))
                    .bind(order_id)
                    .bind(tenant.as_str());
                let Some(row) = tx.fetch_optional(&lock).await? else {
                    return Ok(TransitionOutcome::NotFound);
                };
                let mut order = order_from_row(&row)?;
                let transition = match decide(&order) {
                    Decision::Answer(answer) => {
                        return Ok(TransitionOutcome::Answered(answer, Box::new(order)))
                    }
                    Decision::Apply(transition) => transition,
                };
                // The funds first: a refused hold must not have claimed a driver.
                let fare = order.price.as_ref().map(|price| price.total);
                if let (
                    MoneyChange::Hold {
                        require_funds: true,
                    },
                    Some(fare),
                ) = (transition.money, fare)
                {
                    if let ledger::Funds::Short(available_minor) =
                        ledger::hold_funds(&mut tx, &order, fare).await?
                    {
                        return Ok(TransitionOutcome::InsufficientFunds {
                            fare,
                            available_minor,
                        });
                    }
                }
                match &transition.driver {
                    DriverChange::Claim(candidates) if candidates.is_empty() => {
                        return Ok(TransitionOutcome::DriverTaken);
                    }
                    DriverChange::Claim(candidates) => {
                        let claim = claim_driver(
                            tx.backend(),
                            &tenant,
                            order_id,
                            transition.at_ms,
                            candidates,
                        );
                        let Some(claimed) = tx.fetch_optional(&claim).await? else {
                            return Ok(TransitionOutcome::DriverTaken);
                        };
                        order.driver_id = Some(claimed.text(0)?);
                    }
                    DriverChange::Release(driver) => {
                        let release = Sql::new(RELEASE_DRIVER)
                            .bind(tenant.as_str())
                            .bind(driver.as_str())
                            .bind(order_id)
                            .bind(transition.at_ms);
                        tx.execute(&release).await?;
                    }
                    DriverChange::Keep => {}
                }
                order.status = transition.to;
                order.no_driver = None;
                let moved = Sql::new(MOVE_ORDER)
                    .bind(order_id)
                    .bind(tenant.as_str())
                    .bind(order.status.as_str())
                    .bind(order.driver_id.as_deref());
                tx.execute(&moved).await?;
                let step = Sql::new(INSERT_STEP)
                    .bind(order_id)
                    .bind(order.status.as_str())
                    .bind(tenant.as_str())
                    .bind(transition.at_ms)
                    .bind(order.driver_id.as_deref());
                tx.execute(&step).await?;
                match (transition.money, fare) {
                    (MoneyChange::Hold { .. }, Some(fare)) => {
                        ledger::hold(&mut tx, &order, fare, transition.at_ms).await?
                    }
                    (MoneyChange::Void, _) => {
                        ledger::void(&mut tx, &order, transition.at_ms).await?
                    }
                    _ => {}
                }
                let events = (transition.announce)(&order);
                outbox::enqueue(&mut tx, &events).await?;
                Ok(TransitionOutcome::Applied(Box::new(order)))
            })
        })
        .await
    }

    async fn order(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Option<Order>> {
        let sql = Sql::new(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND tenant = $2"
        ))
        .bind(order_id)
        .bind(tenant.as_str());
        let row = self.fetch_optional(&sql).await?;
        row.as_ref().map(order_from_row).transpose()
    }

    async fn steps(&self, tenant: &TenantId, order_id: Uuid) -> PortResult<Vec<RideStep>> {
        let sql = Sql::new(
            "SELECT status, at_ms, driver_id FROM order_transitions \
             WHERE order_id = $1 AND tenant = $2",
        )
        .bind(order_id)
        .bind(tenant.as_str());
        let mut steps = Vec::new();
        for row in self.fetch_all(&sql).await? {
            let status = row.text(0)?;
            steps.push(RideStep {
                status: OrderStatus::parse(&status)
                    .ok_or_else(|| corrupt(order_id, format!("step status {status:?}")))?,
                at_ms: row.i64(1)?,
                driver_id: row.opt_text(2)?,
            });
        }
        // Steps of one millisecond keep the lifecycle's order.
        let rank = |status: OrderStatus| OrderStatus::ALL.iter().position(|s| *s == status);
        steps.sort_by_key(|step| (step.at_ms, rank(step.status)));
        Ok(steps)
    }

    async fn rides(
        &self,
        tenant: &TenantId,
        party: RideParty<'_>,
        before: Option<Uuid>,
        limit: usize,
    ) -> PortResult<RidePage> {
        let (column, id) = match party {
            RideParty::Rider(user_id) => ("user_id", user_id),
            RideParty::Driver(driver_id) => ("driver_id", driver_id),
        };
        let older = if before.is_some() { " AND id < $4" } else { "" };
        let mut sql = Sql::new(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE tenant = $1 AND {column} = $2{older} \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .bind(limit as i64 + 1);
        if let Some(before) = before {
            sql = sql.bind(before);
        }
        let mut rides = self
            .fetch_all(&sql)
            .await?
            .iter()
            .map(order_from_row)
            .collect::<PortResult<Vec<Order>>>()?;
        let next = if rides.len() > limit {
            rides.truncate(limit);
            rides.last().map(|ride| ride.id)
        } else {
            None
        };
        Ok(RidePage { rides, next })
    }

    async fn report_drivers(&self, tenant: &TenantId, reports: &[DriverReport]) -> PortResult<()> {
        if reports.is_empty() {
            return Ok(());
        }
        let latest = latest_per_driver(reports);
        let mut statements: Vec<Sql> = latest
            .chunks(CHUNK)
            .map(|chunk| upsert_drivers(tenant, chunk))
            .collect();
        statements.extend(
            reports
                .chunks(CHUNK)
                .map(|chunk| insert_trail(tenant, chunk)),
        );
        self.write(move |mut tx| {
            Box::pin(async move {
                for sql in &statements {
                    tx.execute(sql).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn driver(&self, tenant: &TenantId, driver_id: &str) -> PortResult<Option<DriverRecord>> {
        let sql = Sql::new(
            "SELECT driver_id, status, vehicle_type, order_id, updated_at_ms FROM drivers \
             WHERE tenant = $1 AND driver_id = $2",
        )
        .bind(tenant.as_str())
        .bind(driver_id);
        let Some(row) = self.fetch_optional(&sql).await? else {
            return Ok(None);
        };
        let status = row.text(1)?;
        Ok(Some(DriverRecord {
            driver_id: row.text(0)?,
            status: DriverStatus::parse(&status).ok_or_else(|| {
                pulse_core::PortError::Corrupt(format!("driver {driver_id}: status {status:?}"))
            })?,
            vehicle_type: row.opt_text(2)?,
            order_id: row.opt_uuid(3)?,
            updated_at_ms: row.i64(4)?,
        }))
    }

    async fn trail(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        limit: usize,
    ) -> PortResult<Vec<TrailPoint>> {
        let sql = Sql::new(
            "SELECT at_ms, lat, lng FROM ride_trail WHERE order_id = $1 AND tenant = $2 \
             ORDER BY at_ms LIMIT $3",
        )
        .bind(order_id)
        .bind(tenant.as_str())
        .bind(limit as i64);
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| {
                Ok(TrailPoint {
                    at_ms: row.i64(0)?,
                    lat: row.f64(1)?,
                    lng: row.f64(2)?,
                })
            })
            .collect()
    }

    async fn schedule_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        next_ms: i64,
        until_ms: i64,
    ) -> PortResult<()> {
        let sql = Sql::new(
            "UPDATE orders SET dispatch_next_ms = $3, \
             dispatch_until_ms = COALESCE(dispatch_until_ms, $4) \
             WHERE tenant = $1 AND id = $2 AND status = 'PENDING'",
        )
        .bind(tenant.as_str())
        .bind(order_id)
        .bind(next_ms)
        .bind(until_ms);
        self.execute(sql).await.map(drop)
    }

    async fn take_due_dispatches(
        &self,
        now_ms: i64,
        retry_at_ms: i64,
        limit: usize,
    ) -> PortResult<Vec<(TenantId, Uuid, i64)>> {
        let sql = Sql::new(TAKE_DUE.get(self.backend()))
            .bind(now_ms)
            .bind(retry_at_ms)
            .bind(limit as i64);
        let rows = self
            .write(move |mut tx| Box::pin(async move { tx.fetch_all(&sql).await }))
            .await?;
        rows.iter()
            .map(|row| {
                let id = row.uuid(1)?;
                let tenant = TenantId::parse(&row.text(0)?).map_err(|err| corrupt(id, err))?;
                Ok((tenant, id, row.i64(2)?))
            })
            .collect()
    }

    async fn give_up_dispatch(
        &self,
        tenant: &TenantId,
        order_id: Uuid,
        reason: &str,
    ) -> PortResult<()> {
        let sql = Sql::new(
            "UPDATE orders SET dispatch_next_ms = NULL, no_driver_reason = $3 \
             WHERE tenant = $1 AND id = $2 AND status = 'PENDING'",
        )
        .bind(tenant.as_str())
        .bind(order_id)
        .bind(crate::sql::truncated(reason));
        self.execute(sql).await.map(drop)
    }
}
