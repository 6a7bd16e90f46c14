//! The jobs' tables on SQL: `jobs`, `job_errors` and `job_handlers`, and the jobs domain's ports
//! ([`JobQueue`], [`JobBook`], [`HandlerStore`]) on them. PostgreSQL leases with `FOR UPDATE SKIP
//! LOCKED`; SQLite leases through the one writer, whose group commit also batches every other
//! write here. [`enqueue_in`] joins a caller's unit of work: a domain enqueues a job in the same
//! transaction as its business rows.

use std::collections::{HashMap, HashSet};

use pulse_core::{PortError, PortResult, TenantId};
use pulse_jobs::fair;
use pulse_jobs::model::{
    AttemptError, Completion, Enqueued, Failure, Job, JobFilter, JobState, Lapsed, Lease, LeaseRef,
    LeaseRequest, NewJob, QueueDepth, StoredHandler, TenantShare,
};
use pulse_jobs::ports::{HandlerStore, JobBook, JobQueue};
use uuid::Uuid;

use crate::sql::{truncated, u32_of, value_rows_after, PerDialect, Sql, SqlRow, Value};
use crate::{Backend, Database, Tx};

/// The PostgreSQL channel an enqueue notifies (`pg_notify`, delivered at commit), with the
/// earliest `run_at` of the new jobs as the payload: workers in other processes wake at once, or
/// at that time.
pub const JOBS_CHANNEL: &str = "pulse_jobs";

/// Rows per multi-row statement: far below both engines' bound-parameter limits.
const CHUNK: usize = 300;
/// The states a lease takes from.
const READY: &str = "state IN ('scheduled', 'queued', 'retrying')";

/// The columns [`job_of`] reads, in order.
const COLUMNS: &str = "id, tenant_id, job_type, queue, payload, priority, state, attempt, \
     max_attempts, timeout_ms, run_at, created_at, started_at, finished_at, result, \
     idempotency_key, trace_parent, metadata, lease_token, locked_until";

fn qualified_columns() -> String {
    COLUMNS
        .split(", ")
        .map(|column| format!("jobs.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The state shown for a stored one: a `scheduled` job whose time has come is `queued`.
fn shown_state(stored: &str, run_at_ms: i64, now_ms: i64) -> PortResult<JobState> {
    let state = JobState::parse(stored)
        .ok_or_else(|| PortError::Corrupt(format!("job state {stored:?}")))?;
    Ok(match state {
        JobState::Scheduled if run_at_ms <= now_ms => JobState::Queued,
        state => state,
    })
}

/// A job of a row read with [`COLUMNS`]; its errors are not loaded.
fn job_of(row: &SqlRow, now_ms: i64) -> PortResult<(Job, i64, Option<i64>)> {
    let tenant = TenantId::parse(&row.text(1)?)
        .map_err(|err| PortError::Corrupt(format!("job tenant: {err}")))?;
    let run_at_ms = row.i64(10)?;
    let job = Job {
        id: row.uuid(0)?,
        tenant,
        job_type: row.text(2)?,
        queue: row.text(3)?,
        payload: row.bytes(4)?,
        priority: i32::try_from(row.i64(5)?)
            .map_err(|err| PortError::Corrupt(format!("job priority: {err}")))?,
        state: shown_state(&row.text(6)?, run_at_ms, now_ms)?,
        attempts: u32_of(row, 7)?,
        max_attempts: u32_of(row, 8)?,
        timeout_ms: u64::try_from(row.i64(9)?)
            .map_err(|err| PortError::Corrupt(format!("job timeout: {err}")))?,
        run_at_ms,
        created_at_ms: row.i64(11)?,
        started_at_ms: row.opt_i64(12)?,
        finished_at_ms: row.opt_i64(13)?,
        result: row.opt_bytes(14)?,
        errors: Vec::new(),
        idempotency_key: row.opt_text(15)?,
        traceparent: row.opt_text(16)?,
        metadata: row.opt_text(17)?,
    };
    Ok((job, row.i64(18)?, row.opt_i64(19)?))
}

/// The insert of `jobs` (one chunk), keyed for [`enqueue_in`].
fn insert_statement(jobs: &[NewJob]) -> Sql {
    let rows = value_rows_after(0, jobs.len(), 14, |_, placeholder| placeholder);
    let mut sql = Sql::new(format!(
        "INSERT INTO jobs (id, tenant_id, job_type, queue, payload, priority, state, max_attempts, \
         timeout_ms, run_at, created_at, idempotency_key, trace_parent, metadata) VALUES {rows} \
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING id"
    ));
    if jobs.len() > 2 {
        sql = sql.planned_each_time();
    }
    for job in jobs {
        let state = if job.run_at_ms > job.created_at_ms {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        sql = sql
            .bind(job.id)
            .bind(job.tenant.as_str())
            .bind(job.job_type.as_str())
            .bind(job.queue.as_str())
            .bind(job.payload.as_slice())
            .bind(i64::from(job.priority))
            .bind(state.as_str())
            .bind(i64::from(job.max_attempts))
            .bind(i64::try_from(job.timeout_ms).unwrap_or(i64::MAX))
            .bind(job.run_at_ms)
            .bind(job.created_at_ms)
            .bind(job.idempotency_key.clone())
            .bind(job.traceparent.clone())
            .bind(job.metadata.clone());
    }
    sql
}

/// Enqueues `jobs` inside the caller's unit of work `tx`: they commit with the caller's other
/// writes, or not at all. A job whose tenant already has its idempotency key is not written; the
/// answer is the stored one.
pub async fn enqueue_in(tx: &mut Tx<'_>, jobs: &[NewJob]) -> PortResult<Vec<Enqueued>> {
    let mut created = HashSet::new();
    for chunk in jobs.chunks(CHUNK) {
        for row in tx.fetch_all(&insert_statement(chunk)).await? {
            created.insert(row.uuid(0)?);
        }
    }
    if tx.backend() == Backend::Postgres {
        let due = jobs
            .iter()
            .filter(|job| created.contains(&job.id))
            .map(|job| job.run_at_ms)
            .min();
        if let Some(due) = due {
            notify_in(tx, due).await?;
        }
    }
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        if created.contains(&job.id) {
            answers.push(Enqueued::Created(stored_form(job)));
            continue;
        }
        let key = job
            .idempotency_key
            .as_deref()
            .ok_or_else(|| PortError::Conflict(format!("job id {} is taken", job.id)))?;
        let sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"
        ))
        .bind(job.tenant.as_str())
        .bind(key);
        let row = tx.fetch_optional(&sql).await?.ok_or_else(|| {
            PortError::unavailable("store", "an idempotency key conflicted with no row; retry")
        })?;
        let (mut existing, _, _) = job_of(&row, job.created_at_ms)?;
        existing.errors = errors_in(tx, existing.id).await?;
        answers.push(Enqueued::Existing(existing));
    }
    Ok(answers)
}

/// Tells the workers listening on [`JOBS_CHANNEL`] that jobs are ready at `due_ms` (PostgreSQL;
/// delivered when `tx` commits, not at all if it rolls back).
async fn notify_in(tx: &mut Tx<'_>, due_ms: i64) -> PortResult<()> {
    let sql = Sql::new("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(due_ms.to_string());
    tx.fetch_optional(&sql).await.map(|_| ())
}

impl Database {
    /// On PostgreSQL, calls `on_jobs` with the `run_at` of every enqueue any process notifies on
    /// [`JOBS_CHANNEL`] (and with 0 after a reconnect, when notifications may have been missed),
    /// until `stop` completes. Returns at once on SQLite, whose one process wakes its worker
    /// directly.
    pub async fn listen_for_jobs(
        &self,
        mut on_jobs: impl FnMut(i64) + Send,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        let Some(pool) = self.postgres_pool().cloned() else {
            return;
        };
        tokio::pin!(stop);
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?pause, "cannot listen for enqueued jobs");
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(err) = listener.listen(JOBS_CHANNEL).await {
                tracing::warn!(error = %err, "cannot listen for enqueued jobs");
                continue;
            }
            pause = std::time::Duration::from_millis(100);
            // Whatever was notified before the listener was up is found by this poll.
            on_jobs(0);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    received = listener.recv() => match received {
                        Ok(notification) => on_jobs(notification.payload().parse().unwrap_or(0)),
                        Err(err) => {
                            tracing::debug!(error = %err, "the jobs listener lost its connection; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}

/// A job as [`insert_statement`] stores it.
fn stored_form(job: &NewJob) -> Job {
    Job {
        id: job.id,
        tenant: job.tenant.clone(),
        job_type: job.job_type.clone(),
        queue: job.queue.clone(),
        payload: job.payload.clone(),
        priority: job.priority,
        state: if job.run_at_ms > job.created_at_ms {
            JobState::Scheduled
        } else {
            JobState::Queued
        },
        attempts: 0,
        max_attempts: job.max_attempts,
        timeout_ms: job.timeout_ms,
        run_at_ms: job.run_at_ms,
        created_at_ms: job.created_at_ms,
        started_at_ms: None,
        finished_at_ms: None,
        result: None,
        errors: Vec::new(),
        idempotency_key: job.idempotency_key.clone(),
        traceparent: job.traceparent.clone(),
        metadata: job.metadata.clone(),
    }
}

fn errors_sql(id: Uuid) -> Sql {
    Sql::new("SELECT attempt, at, error FROM job_errors WHERE job_id = $1 ORDER BY attempt")
        .bind(id)
}

fn errors_of(rows: Vec<SqlRow>) -> PortResult<Vec<AttemptError>> {
    rows.iter()
        .map(|row| {
            Ok(AttemptError {
                attempt: u32_of(row, 0)?,
                at_ms: row.i64(1)?,
                error: row.text(2)?,
            })
        })
        .collect()
}

async fn errors_in(tx: &mut Tx<'_>, id: Uuid) -> PortResult<Vec<AttemptError>> {
    errors_of(tx.fetch_all(&errors_sql(id)).await?)
}

/// Tenants with ready jobs, by a loose index scan over `jobs_ready` (one probe per tenant, not a
/// scan of the backlog).
const READY_TENANTS: &str = "WITH RECURSIVE ready(tenant_id) AS (\
     SELECT (SELECT tenant_id FROM jobs WHERE state IN ('scheduled', 'queued', 'retrying') \
       AND run_at <= $1 ORDER BY tenant_id LIMIT 1) \
     UNION ALL \
     SELECT (SELECT tenant_id FROM jobs WHERE state IN ('scheduled', 'queued', 'retrying') \
       AND run_at <= $1 AND tenant_id > ready.tenant_id ORDER BY tenant_id LIMIT 1) \
     FROM ready WHERE ready.tenant_id IS NOT NULL) \
     SELECT tenant_id FROM ready WHERE tenant_id IS NOT NULL";

/// Most rounds of one lease: a tenant that had fewer ready jobs than its share leaves the rest
/// to the others, in the next round.
const LEASE_ROUNDS: usize = 3;

/// The lease of `request` in `tx` (see [`JobQueue::lease`]): the ready tenants (a loose index
/// scan), their fair shares, one statement taking each share, and again for what a tenant with
/// fewer ready jobs than its share left to the others.
async fn lease_in(tx: &mut Tx<'_>, request: &LeaseRequest) -> PortResult<Vec<Lease>> {
    let mut ready: Vec<TenantId> = tx
        .fetch_all(&Sql::new(READY_TENANTS).bind(request.now_ms))
        .await?
        .iter()
        .map(|row| {
            TenantId::parse(&row.text(0)?)
                .map_err(|err| PortError::Corrupt(format!("job tenant: {err}")))
        })
        .collect::<PortResult<_>>()?;
    let mut room = request.room.clone();
    let mut leases = Vec::new();
    for _ in 0..LEASE_ROUNDS {
        let left = request.limit.saturating_sub(leases.len() as u32);
        let shares = fair::shares(&ready, left, &request.weights, &room, request.rotate);
        if shares.is_empty() {
            break;
        }
        let taken = lease_shares(tx, request, &shares).await?;
        let mut per_tenant: HashMap<TenantId, u32> = HashMap::new();
        for lease in &taken {
            *per_tenant.entry(lease.job.tenant.clone()).or_default() += 1;
        }
        // A tenant that filled its share may have more; one that did not has none left here.
        ready = shares
            .iter()
            .filter(|share| per_tenant.get(&share.tenant).copied().unwrap_or(0) == share.limit)
            .map(|share| share.tenant.clone())
            .collect();
        for (tenant, count) in per_tenant {
            if let Some(space) = room.get_mut(&tenant) {
                *space = space.saturating_sub(count);
            }
        }
        leases.extend(taken);
        // With every share filled nothing is left to hand out: the next round finds no share.
        if ready.is_empty() {
            break;
        }
    }
    Ok(leases)
}

/// One statement leasing each of `shares`.
async fn lease_shares(
    tx: &mut Tx<'_>,
    request: &LeaseRequest,
    shares: &[TenantShare],
) -> PortResult<Vec<Lease>> {
    let until = request.now_ms.saturating_add(request.visibility_ms);
    let mut sql_args: Vec<(String, i64, Vec<String>)> = Vec::new();
    let mut next = 4;
    let mut branches = Vec::new();
    for share in shares {
        let excluded = request
            .exclude_types
            .get(&share.tenant)
            .cloned()
            .unwrap_or_default();
        let exclusion = if excluded.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = (0..excluded.len())
                .map(|i| format!("${}", next + 2 + i))
                .collect();
            format!(" AND job_type NOT IN ({})", list.join(", "))
        };
        branches.push(format!(
            "SELECT id FROM jobs WHERE tenant_id = ${} AND {READY} AND run_at <= $1{exclusion} \
             ORDER BY priority, run_at, id LIMIT ${}",
            next,
            next + 1
        ));
        next += 2 + excluded.len();
        sql_args.push((share.tenant.to_string(), i64::from(share.limit), excluded));
    }
    let set = "state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
               locked_by = $2, locked_until = $3, started_at = $1";
    let text = match tx.backend() {
        // Row locks may not be taken under a UNION: each share locks in a CTE of its own.
        Backend::Postgres => {
            let ctes: Vec<String> = branches
                .iter()
                .enumerate()
                .map(|(n, pick)| format!("share{n} AS ({pick} FOR UPDATE SKIP LOCKED)"))
                .collect();
            let union: Vec<String> = (0..branches.len())
                .map(|n| format!("SELECT id FROM share{n}"))
                .collect();
            format!(
                "WITH {}, picked AS ({}) UPDATE jobs SET {set} FROM picked \
                 WHERE jobs.id = picked.id RETURNING {}",
                ctes.join(", "),
                union.join(" UNION ALL "),
                qualified_columns()
            )
        }
        Backend::Sqlite => {
            let picks: Vec<String> = branches
                .iter()
                .map(|pick| format!("SELECT id FROM ({pick})"))
                .collect();
            format!(
                "UPDATE jobs SET {set} WHERE id IN ({}) RETURNING {COLUMNS}",
                picks.join(" UNION ALL ")
            )
        }
    };
    let mut sql = Sql::new(text)
        .planned_each_time()
        .bind(request.now_ms)
        .bind(request.worker.as_str())
        .bind(until);
    for (tenant, limit, excluded) in sql_args {
        sql = sql.bind(tenant).bind(limit);
        for job_type in excluded {
            sql = sql.bind(job_type);
        }
    }
    tx.fetch_all(&sql)
        .await?
        .iter()
        .map(|row| {
            let (job, token, locked_until) = job_of(row, request.now_ms)?;
            Ok(Lease {
                job,
                token,
                locked_until_ms: locked_until.unwrap_or(until),
            })
        })
        .collect()
}

/// `rows` sorted by job id: the heartbeat, completion and failure statements of one worker run
/// concurrently over overlapping jobs, and rows locked in two orders deadlock on PostgreSQL
/// (which aborts one statement: a heartbeat lost that way let a lease lapse and its job run
/// twice).
fn in_lock_order<T: Clone>(rows: &[T], id: impl Fn(&T) -> Uuid) -> Vec<T> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(id);
    sorted
}

/// `WITH v(columns) AS (VALUES …) UPDATE jobs SET {set} FROM v WHERE the lease matches`, over
/// `rows` rows of `width` values after the statement's `fixed` first placeholders.
fn by_lease(columns: &str, fixed: usize, rows: usize, width: usize, set: &str) -> String {
    format!(
        "WITH v({columns}) AS (VALUES {}) UPDATE jobs SET {set} FROM v \
         WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.state = 'running' \
         RETURNING jobs.id",
        value_rows_after(fixed, rows, width, |_, placeholder| placeholder)
    )
}

impl Database {
    async fn ids_of(&self, statements: Vec<Sql>) -> PortResult<Vec<Uuid>> {
        self.write(move |mut tx| {
            Box::pin(async move {
                let mut ids = Vec::new();
                for sql in &statements {
                    for row in tx.fetch_all(sql).await? {
                        ids.push(row.uuid(0)?);
                    }
                }
                Ok(ids)
            })
        })
        .await
    }

    /// Runs `change` (which makes the job ready again when `wakes`), then reads the job back.
    async fn job_after(
        &self,
        tenant: &TenantId,
        id: Uuid,
        change: Sql,
        now_ms: i64,
        wakes: bool,
    ) -> PortResult<Option<Job>> {
        let tenant = tenant.clone();
        self.write(move |mut tx| {
            Box::pin(async move {
                let changed = tx.execute(&change).await?;
                if wakes && changed > 0 && tx.backend() == Backend::Postgres {
                    notify_in(&mut tx, now_ms).await?;
                }
                get_in(&mut tx, &tenant, id, now_ms).await
            })
        })
        .await
    }
}

/// The tenant's job `id`, with [`COLUMNS`].
fn job_sql(tenant: &TenantId, id: Uuid) -> Sql {
    Sql::new(format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.as_str())
    .bind(id)
}

async fn get_in(
    tx: &mut Tx<'_>,
    tenant: &TenantId,
    id: Uuid,
    now_ms: i64,
) -> PortResult<Option<Job>> {
    let Some(row) = tx.fetch_optional(&job_sql(tenant, id)).await? else {
        return Ok(None);
    };
    let (mut job, _, _) = job_of(&row, now_ms)?;
    job.errors = errors_in(tx, id).await?;
    Ok(Some(job))
}

#[async_trait::async_trait]
impl JobQueue for Database {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> PortResult<Vec<Enqueued>> {
        self.write(move |mut tx| Box::pin(async move { enqueue_in(&mut tx, &jobs).await }))
            .await
    }

    async fn lease(&self, request: &LeaseRequest) -> PortResult<Vec<Lease>> {
        let request = request.clone();
        self.write(move |mut tx| Box::pin(async move { lease_in(&mut tx, &request).await }))
            .await
    }

    async fn heartbeat(&self, leases: &[LeaseRef], until_ms: i64) -> PortResult<Vec<Uuid>> {
        let leases = in_lock_order(leases, |lease| lease.id);
        let statements = leases
            .chunks(CHUNK)
            .map(|chunk| {
                let mut sql = Sql::new(by_lease(
                    "id, token",
                    1,
                    chunk.len(),
                    2,
                    "locked_until = $1",
                ))
                .planned_each_time()
                .bind(until_ms);
                for lease in chunk {
                    sql = sql.bind(lease.id).bind(lease.token);
                }
                sql
            })
            .collect();
        self.ids_of(statements).await
    }

    async fn complete(&self, done: &[Completion], now_ms: i64) -> PortResult<Vec<Uuid>> {
        let done = in_lock_order(done, |completion| completion.lease.id);
        let statements = done
            .chunks(CHUNK)
            .map(|chunk| {
                let mut sql = Sql::new(by_lease(
                    "id, token, result, started",
                    1,
                    chunk.len(),
                    4,
                    "state = 'succeeded', finished_at = $1, result = v.result, \
                     started_at = v.started, locked_by = NULL, locked_until = NULL",
                ))
                .planned_each_time()
                .bind(now_ms);
                for completion in chunk {
                    sql = sql
                        .bind(completion.lease.id)
                        .bind(completion.lease.token)
                        .bind(completion.result.clone())
                        .bind(completion.started_at_ms);
                }
                sql
            })
            .collect();
        self.ids_of(statements).await
    }

    async fn fail(&self, failed: &[Failure], now_ms: i64) -> PortResult<Vec<Uuid>> {
        let failed = in_lock_order(failed, |failure| failure.lease.id);
        self.write(move |mut tx| {
            Box::pin(async move {
                let mut recorded = Vec::new();
                for chunk in failed.chunks(CHUNK) {
                    let mut sql = Sql::new(by_lease(
                        "id, token, retry_at, started",
                        1,
                        chunk.len(),
                        4,
                        "state = CASE WHEN v.retry_at IS NULL THEN 'dead' ELSE 'retrying' END, \
                         run_at = COALESCE(v.retry_at, jobs.run_at), \
                         finished_at = CASE WHEN v.retry_at IS NULL THEN $1 ELSE NULL END, \
                         started_at = COALESCE(v.started, jobs.started_at), \
                         locked_by = NULL, locked_until = NULL",
                    ))
                    .planned_each_time()
                    .bind(now_ms);
                    for failure in chunk {
                        sql = sql
                            .bind(failure.lease.id)
                            .bind(failure.lease.token)
                            .bind(failure.retry_at_ms)
                            .bind(failure.started_at_ms);
                    }
                    let ids: HashSet<Uuid> = tx
                        .fetch_all(&sql)
                        .await?
                        .iter()
                        .map(|row| row.uuid(0))
                        .collect::<PortResult<_>>()?;
                    let errors: Vec<&Failure> =
                        chunk.iter().filter(|f| ids.contains(&f.lease.id)).collect();
                    if !errors.is_empty() {
                        let mut insert = Sql::new(format!(
                            "INSERT INTO job_errors (job_id, attempt, at, error) VALUES {} \
                             ON CONFLICT (job_id, attempt) DO NOTHING",
                            value_rows_after(0, errors.len(), 4, |_, placeholder| placeholder)
                        ))
                        .planned_each_time();
                        for failure in &errors {
                            insert = insert
                                .bind(failure.lease.id)
                                .bind(i64::from(failure.attempt))
                                .bind(now_ms)
                                .bind(truncated(&failure.error));
                        }
                        tx.execute(&insert).await?;
                    }
                    recorded.extend(errors.iter().map(|f| f.lease.id));
                }
                Ok(recorded)
            })
        })
        .await
    }

    async fn release(&self, leases: &[LeaseRef]) -> PortResult<Vec<Uuid>> {
        let statements = leases
            .chunks(CHUNK)
            .map(|chunk| {
                let mut sql = Sql::new(by_lease(
                    "id, token",
                    0,
                    chunk.len(),
                    2,
                    "state = 'queued', attempt = jobs.attempt - 1, locked_by = NULL, \
                     locked_until = NULL",
                ))
                .planned_each_time();
                for lease in chunk {
                    sql = sql.bind(lease.id).bind(lease.token);
                }
                sql
            })
            .collect();
        self.ids_of(statements).await
    }

    async fn lapsed(&self, now_ms: i64, limit: u32) -> PortResult<Vec<Lapsed>> {
        let sql = Sql::new(
            "SELECT id, lease_token, tenant_id, job_type, attempt, max_attempts, locked_by \
             FROM jobs WHERE state = 'running' AND locked_until < $1 ORDER BY locked_until LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit));
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| {
                Ok(Lapsed {
                    lease: LeaseRef {
                        id: row.uuid(0)?,
                        token: row.i64(1)?,
                    },
                    tenant: TenantId::parse(&row.text(2)?)
                        .map_err(|err| PortError::Corrupt(format!("job tenant: {err}")))?,
                    job_type: row.text(3)?,
                    attempt: u32_of(row, 4)?,
                    max_attempts: u32_of(row, 5)?,
                    worker: row.opt_text(6)?,
                })
            })
            .collect()
    }
}

/// `AND …` for `filter` with its placeholders numbered from `$first`, and the values they bind
/// (`now_ms` when the state needs it).
fn filter_clause(filter: &JobFilter, now_ms: i64, first: usize) -> (String, Vec<Value>) {
    let mut clause = String::new();
    let mut values: Vec<Value> = Vec::new();
    let next = |values: &mut Vec<Value>, value: Value| {
        values.push(value);
        format!("${}", first + values.len() - 1)
    };
    if let Some(state) = filter.state {
        match state {
            JobState::Scheduled => {
                let now = next(&mut values, now_ms.into());
                clause.push_str(&format!(" AND state = 'scheduled' AND run_at > {now}"));
            }
            JobState::Queued => {
                let now = next(&mut values, now_ms.into());
                clause.push_str(&format!(
                    " AND (state = 'queued' OR (state = 'scheduled' AND run_at <= {now}))"
                ));
            }
            other => clause.push_str(&format!(" AND state = '{}'", other.as_str())),
        }
    }
    for (column, value) in [("job_type", &filter.job_type), ("queue", &filter.queue)] {
        if let Some(value) = value {
            let placeholder = next(&mut values, value.as_str().into());
            clause.push_str(&format!(" AND {column} = {placeholder}"));
        }
    }
    (clause, values)
}

/// The retry of dead (and, for one job, cancelled) jobs: queued now, one more attempt allowed
/// when none is left.
const REQUEUE: &str = "state = 'queued', run_at = $2, finished_at = NULL, \
     max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 ELSE max_attempts END";

static DEPTHS: PerDialect = PerDialect::new(|_| {
    format!(
        "SELECT tenant_id, queue, \
         SUM(CASE WHEN run_at <= $1 THEN 1 ELSE 0 END), \
         SUM(CASE WHEN run_at > $1 THEN 1 ELSE 0 END), \
         MIN(CASE WHEN run_at <= $1 THEN run_at END) \
         FROM jobs WHERE {READY} GROUP BY tenant_id, queue"
    )
});

#[async_trait::async_trait]
impl JobBook for Database {
    async fn get(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>> {
        let Some(row) = self.fetch_optional(&job_sql(tenant, id)).await? else {
            return Ok(None);
        };
        let (mut job, _, _) = job_of(&row, now_ms)?;
        job.errors = errors_of(self.fetch_all(&errors_sql(id)).await?)?;
        Ok(Some(job))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
        after: Option<Uuid>,
        limit: u32,
        now_ms: i64,
    ) -> PortResult<Vec<Job>> {
        let (clause, values) = filter_clause(filter, now_ms, 3);
        let after_clause = if after.is_some() {
            format!(" AND id < ${}", 3 + values.len())
        } else {
            String::new()
        };
        let mut sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant_id = $1{clause}{after_clause} \
             ORDER BY id DESC LIMIT $2"
        ))
        .planned_each_time()
        .bind(tenant.as_str())
        .bind(i64::from(limit));
        for value in values {
            sql = sql.bind(value);
        }
        if let Some(after) = after {
            sql = sql.bind(after);
        }
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| job_of(row, now_ms).map(|(job, _, _)| job))
            .collect()
    }

    async fn cancel(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>> {
        let change = Sql::new(
            "UPDATE jobs SET state = 'cancelled', finished_at = $3, locked_by = NULL, \
             locked_until = NULL WHERE tenant_id = $1 AND id = $2 \
             AND state IN ('scheduled', 'queued', 'running', 'retrying')",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(now_ms);
        self.job_after(tenant, id, change, now_ms, false).await
    }

    async fn retry(&self, tenant: &TenantId, id: Uuid, now_ms: i64) -> PortResult<Option<Job>> {
        let change = Sql::new(format!(
            "UPDATE jobs SET {REQUEUE} WHERE tenant_id = $1 AND id = $3 \
             AND state IN ('dead', 'cancelled')"
        ))
        .bind(tenant.as_str())
        .bind(now_ms)
        .bind(id);
        self.job_after(tenant, id, change, now_ms, true).await
    }

    async fn redrive(&self, tenant: &TenantId, filter: &JobFilter, now_ms: i64) -> PortResult<u64> {
        let filter = JobFilter {
            state: None,
            ..filter.clone()
        };
        let (clause, values) = filter_clause(&filter, now_ms, 3);
        let mut sql = Sql::new(format!(
            "UPDATE jobs SET {REQUEUE} WHERE tenant_id = $1 AND state = 'dead'{clause}"
        ))
        .planned_each_time()
        .bind(tenant.as_str())
        .bind(now_ms);
        for value in values {
            sql = sql.bind(value);
        }
        self.write(move |mut tx| {
            Box::pin(async move {
                let redriven = tx.execute(&sql).await?;
                if redriven > 0 && tx.backend() == Backend::Postgres {
                    notify_in(&mut tx, now_ms).await?;
                }
                Ok(redriven)
            })
        })
        .await
    }

    async fn depths(&self, now_ms: i64) -> PortResult<Vec<QueueDepth>> {
        let sql = Sql::new(DEPTHS.get(self.backend())).bind(now_ms);
        self.fetch_all(&sql)
            .await?
            .iter()
            .map(|row| {
                Ok(QueueDepth {
                    tenant: TenantId::parse(&row.text(0)?)
                        .map_err(|err| PortError::Corrupt(format!("job tenant: {err}")))?,
                    queue: row.text(1)?,
                    ready: u64::try_from(row.opt_i64(2)?.unwrap_or(0)).unwrap_or(0),
                    waiting: u64::try_from(row.opt_i64(3)?.unwrap_or(0)).unwrap_or(0),
                    oldest_ready_ms: row.opt_i64(4)?,
                })
            })
            .collect()
    }

    async fn purge(
        &self,
        finished_before_ms: i64,
        dead_before_ms: i64,
        limit: u32,
    ) -> PortResult<u64> {
        // A job that finished before the later cutoff was enqueued before it, and ids are
        // UUIDv7: the primary key bounds the scan.
        let enqueued_before = first_id_at(finished_before_ms.max(dead_before_ms));
        let sql = Sql::new(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE id < $4 AND \
             ((state IN ('succeeded', 'cancelled') AND finished_at < $1) \
             OR (state = 'dead' AND finished_at < $2)) LIMIT $3)",
        )
        .bind(finished_before_ms)
        .bind(dead_before_ms)
        .bind(i64::from(limit))
        .bind(enqueued_before);
        self.execute(sql).await
    }
}

/// The smallest UUIDv7 of Unix time `ms`: every job id made at or after `ms` sorts after it (as
/// `uuid` on PostgreSQL, as hyphenated lowercase text on SQLite).
fn first_id_at(ms: i64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.clamp(0, (1 << 48) - 1).to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

fn handler_of(row: &SqlRow) -> PortResult<StoredHandler> {
    Ok(StoredHandler {
        tenant: TenantId::parse(&row.text(0)?)
            .map_err(|err| PortError::Corrupt(format!("handler tenant: {err}")))?,
        job_type: row.text(1)?,
        url: row.text(2)?,
        secret: row.text(3)?,
        policy: row.text(4)?,
        version: row.opt_text(5)?,
        metadata: row.opt_text(6)?,
        created_at_ms: row.i64(7)?,
        updated_at_ms: row.i64(8)?,
    })
}

const HANDLER_COLUMNS: &str =
    "tenant_id, job_type, url, secret, policy, version, metadata, created_at, updated_at";

#[async_trait::async_trait]
impl HandlerStore for Database {
    async fn put_handler(&self, handler: StoredHandler) -> PortResult<(StoredHandler, bool)> {
        let sql = Sql::new(format!(
            "INSERT INTO job_handlers ({HANDLER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant_id, job_type) DO UPDATE SET url = excluded.url, \
             policy = excluded.policy, version = excluded.version, metadata = excluded.metadata, \
             updated_at = excluded.updated_at RETURNING {HANDLER_COLUMNS}"
        ))
        .bind(handler.tenant.as_str())
        .bind(handler.job_type.as_str())
        .bind(handler.url.as_str())
        .bind(handler.secret.as_str())
        .bind(handler.policy.as_str())
        .bind(handler.version.clone())
        .bind(handler.metadata.clone())
        .bind(handler.created_at_ms)
        .bind(handler.updated_at_ms);
        let row = self
            .write(move |mut tx| Box::pin(async move { tx.fetch_optional(&sql).await }))
            .await?
            .ok_or_else(|| PortError::Corrupt("an upsert returned no row".into()))?;
        let stored = handler_of(&row)?;
        // The secret is kept from the first registration: ours is in the row only if it is new.
        let created = stored.secret == handler.secret;
        Ok((stored, created))
    }

    async fn handler(
        &self,
        tenant: &TenantId,
        job_type: &str,
    ) -> PortResult<Option<StoredHandler>> {
        let sql = Sql::new(format!(
            "SELECT {HANDLER_COLUMNS} FROM job_handlers WHERE tenant_id = $1 AND job_type = $2"
        ))
        .bind(tenant.as_str())
        .bind(job_type);
        self.fetch_optional(&sql)
            .await?
            .as_ref()
            .map(handler_of)
            .transpose()
    }

    async fn handlers(&self) -> PortResult<Vec<StoredHandler>> {
        let sql = Sql::new(format!(
            "SELECT {HANDLER_COLUMNS} FROM job_handlers ORDER BY tenant_id, job_type"
        ));
        self.fetch_all(&sql).await?.iter().map(handler_of).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_update_names_the_id_the_token_and_the_running_state() {
        let text = by_lease("id, token", 1, 2, 2, "locked_until = $1");
        assert!(text.contains("VALUES ($2, $3), ($4, $5)"), "{text}");
        assert!(text.contains("jobs.lease_token = v.token"), "{text}");
        assert!(text.contains("jobs.state = 'running'"), "{text}");
    }

    #[test]
    fn the_first_id_of_a_time_sorts_before_every_job_id_made_then_and_after() {
        let at = 1_764_619_200_000;
        let bound = first_id_at(at);
        for ms in [at, at + 1, at + 86_400_000] {
            let made = Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                (ms / 1_000) as u64,
                ((ms % 1_000) * 1_000_000) as u32,
            ));
            assert!(made > bound, "{made} after {bound}");
            assert!(made.to_string() > bound.to_string(), "as text too");
        }
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            ((at - 1) / 1_000) as u64,
            (((at - 1) % 1_000) * 1_000_000) as u32,
        ));
        assert!(before < bound);
    }

    #[test]
    fn the_first_id_of_a_time_past_48_bits_is_the_largest_timestamp() {
        assert_eq!(first_id_at(i64::MAX).as_bytes()[..6], [0xff; 6]);
        assert_eq!(first_id_at(-5).as_bytes()[..6], [0; 6]);
    }

    #[test]
    fn a_scheduled_job_whose_time_came_is_shown_queued() {
        assert_eq!(
            shown_state("scheduled", 10, 5).unwrap(),
            JobState::Scheduled
        );
        assert_eq!(shown_state("scheduled", 10, 10).unwrap(), JobState::Queued);
        assert_eq!(shown_state("retrying", 10, 50).unwrap(), JobState::Retrying);
        assert!(shown_state("paused", 1, 1).is_err());
    }

    #[test]
    fn filters_bind_after_the_fixed_arguments() {
        let filter = JobFilter {
            state: Some(JobState::Queued),
            job_type: Some("email".into()),
            queue: Some("bulk".into()),
        };
        let (clause, values) = filter_clause(&filter, 77, 4);
        assert!(clause.contains("run_at <= $4"), "{clause}");
        assert!(
            clause.contains("job_type = $5") && clause.contains("queue = $6"),
            "{clause}"
        );
        assert_eq!(
            values,
            vec![
                Value::from(77_i64),
                Value::from("email"),
                Value::from("bulk")
            ]
        );
    }
}
