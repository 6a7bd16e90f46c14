//! The job queue suite, for any adapter of the jobs' ports ([`JobQueue`] and [`JobBook`]; the
//! relational store on SQLite and on PostgreSQL today, Redis later): idempotent enqueue, leases
//! and their fencing tokens, lapsed leases, delays, priorities, fairness across tenants, racing
//! workers, retries and dead jobs, cancel, retry, redrive, release, listing, depths and purge.
//! Every case expects a store of its own, empty.

use std::collections::{HashMap, HashSet};

use pulse_core::TenantId;
use pulse_jobs::model::{
    Completion, Enqueued, Failure, JobFilter, JobState, Lease, LeaseRef, LeaseRequest, NewJob,
};
use pulse_jobs::ports::{JobBook, JobQueue};
use uuid::Uuid;

/// "Now" of the cases, Unix ms.
const T0: i64 = 1_700_000_000_000;
/// How long a lease holds.
const VISIBILITY: i64 = 30_000;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

fn job(tenant_name: &str, job_type: &str) -> NewJob {
    NewJob {
        id: pulse_jobs::model::job_id_at(T0),
        tenant: tenant(tenant_name),
        job_type: job_type.to_owned(),
        queue: "default".to_owned(),
        payload: br#"{"n":1}"#.to_vec(),
        priority: 0,
        run_at_ms: T0,
        created_at_ms: T0,
        max_attempts: 3,
        timeout_ms: 1_000,
        idempotency_key: None,
        traceparent: None,
        metadata: None,
    }
}

fn request(worker: &str, limit: u32, now_ms: i64) -> LeaseRequest {
    LeaseRequest {
        worker: worker.to_owned(),
        limit,
        weights: HashMap::new(),
        room: HashMap::new(),
        exclude_types: HashMap::new(),
        rotate: 0,
        now_ms,
        visibility_ms: VISIBILITY,
    }
}

async fn enqueue<Q: JobQueue>(queue: &Q, jobs: Vec<NewJob>) -> Vec<Uuid> {
    queue
        .enqueue(jobs)
        .await
        .expect("enqueue")
        .iter()
        .map(|done| done.job().id)
        .collect()
}

async fn lease<Q: JobQueue>(queue: &Q, worker: &str, limit: u32, now_ms: i64) -> Vec<Lease> {
    queue
        .lease(&request(worker, limit, now_ms))
        .await
        .expect("lease")
}

async fn state<Q: JobBook>(book: &Q, tenant_name: &str, id: Uuid, now_ms: i64) -> JobState {
    book.get(&tenant(tenant_name), id, now_ms)
        .await
        .expect("get")
        .expect("the job")
        .state
}

fn done(lease: &Lease, result: &str) -> Completion {
    Completion {
        lease: lease.reference(),
        result: Some(result.as_bytes().to_vec()),
        started_at_ms: lease.job.started_at_ms.unwrap_or(T0) + 5,
    }
}

fn failure(lease: &Lease, error: &str, retry_at_ms: Option<i64>) -> Failure {
    Failure {
        lease: lease.reference(),
        attempt: lease.job.attempts,
        error: error.to_owned(),
        retry_at_ms,
        started_at_ms: None,
    }
}

/// The same key for the same tenant enqueues once, answering the stored job; another tenant's
/// same key is its own job.
pub async fn enqueue_is_idempotent_per_tenant_and_key<Q: JobQueue + JobBook>(queue: &Q) {
    let keyed = |tenant_name: &str| NewJob {
        idempotency_key: Some("order-42".into()),
        ..job(tenant_name, "email")
    };
    let first = queue.enqueue(vec![keyed("acme")]).await.expect("enqueue");
    assert!(matches!(first[0], Enqueued::Created(_)));
    let again = queue
        .enqueue(vec![keyed("acme"), keyed("acme")])
        .await
        .expect("enqueue");
    for answer in &again {
        match answer {
            Enqueued::Existing(job) => assert_eq!(job.id, first[0].job().id),
            other => panic!("expected the stored job, got {other:?}"),
        }
    }
    let other = queue.enqueue(vec![keyed("globex")]).await.expect("enqueue");
    assert!(matches!(other[0], Enqueued::Created(_)));
    assert_ne!(other[0].job().id, first[0].job().id);
    let stored = queue
        .get(&tenant("acme"), first[0].job().id, T0)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.payload, br#"{"n":1}"#.to_vec());
    assert_eq!(stored.state, JobState::Queued);
}

/// A lease counts an attempt, takes a new token, and holds the job against other workers until it
/// lapses.
pub async fn a_lease_holds_the_job_against_other_workers<Q: JobQueue + JobBook>(queue: &Q) {
    let id = enqueue(queue, vec![job("acme", "email")]).await[0];
    let first = lease(queue, "worker-a", 10, T0).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job.id, id);
    assert_eq!(first[0].job.attempts, 1);
    assert_eq!(first[0].job.state, JobState::Running);
    assert!(lease(queue, "worker-b", 10, T0 + VISIBILITY - 1)
        .await
        .is_empty());
    assert_eq!(state(queue, "acme", id, T0).await, JobState::Running);
    assert!(queue
        .lapsed(T0 + VISIBILITY - 1, 10)
        .await
        .expect("lapsed")
        .is_empty());
    let lapsed = queue.lapsed(T0 + VISIBILITY + 1, 10).await.expect("lapsed");
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].lease, first[0].reference());
    assert_eq!(lapsed[0].worker.as_deref(), Some("worker-a"));
}

/// A heartbeat extends the lease: it does not lapse at its first deadline.
pub async fn a_heartbeat_extends_the_lease<Q: JobQueue + JobBook>(queue: &Q) {
    enqueue(queue, vec![job("acme", "email")]).await;
    let held = lease(queue, "worker-a", 1, T0).await;
    let kept = queue
        .heartbeat(&[held[0].reference()], T0 + 2 * VISIBILITY)
        .await
        .expect("heartbeat");
    assert_eq!(kept, vec![held[0].job.id]);
    assert!(queue
        .lapsed(T0 + VISIBILITY + 1, 10)
        .await
        .expect("lapsed")
        .is_empty());
    assert_eq!(
        queue
            .lapsed(T0 + 2 * VISIBILITY + 1, 10)
            .await
            .expect("lapsed")
            .len(),
        1
    );
}

/// Fencing: once a lapsed lease is rescued and the job leased again, the first worker can no
/// longer heartbeat, complete or fail it; the second worker's completion stands.
pub async fn a_stale_lease_can_neither_heartbeat_complete_nor_fail<Q: JobQueue + JobBook>(
    queue: &Q,
) {
    let id = enqueue(queue, vec![job("acme", "email")]).await[0];
    let stale = lease(queue, "worker-a", 1, T0).await.remove(0);
    let later = T0 + VISIBILITY + 1;
    let lapsed = queue.lapsed(later, 10).await.expect("lapsed");
    let rescued = queue
        .fail(
            &[Failure {
                lease: lapsed[0].lease,
                attempt: lapsed[0].attempt,
                error: "lease lapsed".into(),
                retry_at_ms: Some(later),
                started_at_ms: None,
            }],
            later,
        )
        .await
        .expect("rescue");
    assert_eq!(rescued, vec![id]);
    let fresh = lease(queue, "worker-b", 1, later).await.remove(0);
    assert!(fresh.token > stale.token, "a new lease takes a newer token");
    assert_eq!(fresh.job.attempts, 2);
    assert!(queue
        .heartbeat(&[stale.reference()], later + VISIBILITY)
        .await
        .expect("heartbeat")
        .is_empty());
    assert!(queue
        .complete(&[done(&stale, "stale")], later)
        .await
        .expect("complete")
        .is_empty());
    assert!(queue
        .fail(&[failure(&stale, "stale", None)], later)
        .await
        .expect("fail")
        .is_empty());
    assert_eq!(
        queue
            .complete(&[done(&fresh, "fresh")], later)
            .await
            .expect("complete"),
        vec![id]
    );
    let finished = queue
        .get(&tenant("acme"), id, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.state, JobState::Succeeded);
    assert_eq!(finished.result.as_deref(), Some(&b"fresh"[..]));
    assert_eq!(
        finished.started_at_ms,
        Some(later + 5),
        "the handler's start, as the worker reports it"
    );
    assert_eq!(
        finished.errors.len(),
        1,
        "the lapsed attempt's error: {:?}",
        finished.errors
    );
    // Completing twice changes nothing either.
    assert!(queue
        .complete(&[done(&fresh, "again")], later)
        .await
        .expect("complete")
        .is_empty());
}

/// A job is not leased before its `run_at`; it shows `scheduled`, then `queued`.
pub async fn a_delayed_job_waits_for_its_time<Q: JobQueue + JobBook>(queue: &Q) {
    let id = enqueue(
        queue,
        vec![NewJob {
            run_at_ms: T0 + 5_000,
            ..job("acme", "email")
        }],
    )
    .await[0];
    assert_eq!(state(queue, "acme", id, T0).await, JobState::Scheduled);
    assert!(lease(queue, "worker-a", 10, T0 + 4_999).await.is_empty());
    assert_eq!(state(queue, "acme", id, T0 + 5_000).await, JobState::Queued);
    assert_eq!(lease(queue, "worker-a", 10, T0 + 5_000).await.len(), 1);
}

/// Lower priorities lease first, then older `run_at`.
pub async fn priorities_then_time_order_a_lease<Q: JobQueue>(queue: &Q) {
    let late = NewJob {
        run_at_ms: T0 - 10,
        priority: 5,
        ..job("acme", "email")
    };
    let urgent = NewJob {
        priority: -5,
        ..job("acme", "email")
    };
    let old = NewJob {
        run_at_ms: T0 - 100,
        ..job("acme", "email")
    };
    let new = job("acme", "email");
    let ids = enqueue(queue, vec![late, urgent, old, new]).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(lease(queue, "worker-a", 1, T0).await[0].job.id);
    }
    assert_eq!(order, vec![ids[1], ids[2], ids[3], ids[0]]);
}

/// A tenant with a deep backlog does not crowd out another: one lease takes from both.
pub async fn one_lease_shares_among_tenants<Q: JobQueue>(queue: &Q) {
    enqueue(queue, (0..300).map(|_| job("big", "email")).collect()).await;
    let small = enqueue(queue, (0..5).map(|_| job("small", "email")).collect()).await;
    let leased = lease(queue, "worker-a", 20, T0).await;
    assert_eq!(leased.len(), 20);
    let small_leased: HashSet<Uuid> = leased
        .iter()
        .filter(|held| held.job.tenant == tenant("small"))
        .map(|held| held.job.id)
        .collect();
    assert_eq!(
        small_leased,
        small.into_iter().collect::<HashSet<_>>(),
        "all five at once"
    );
    // A weight and a cap shape the share.
    let mut weighted = request("worker-a", 10, T0);
    weighted.weights.insert(tenant("big"), 4);
    let more = queue.lease(&weighted).await.expect("lease");
    assert_eq!(
        more.len(),
        10,
        "the small tenant has none left: all ten to the big one"
    );
    let mut capped = request("worker-a", 10, T0);
    capped.room.insert(tenant("big"), 3);
    assert_eq!(queue.lease(&capped).await.expect("lease").len(), 3);
}

/// Job types a worker excludes (at their cap there) are left for others.
pub async fn excluded_job_types_are_not_leased<Q: JobQueue>(queue: &Q) {
    enqueue(
        queue,
        vec![
            job("acme", "video"),
            job("acme", "audio"),
            job("acme", "email"),
            job("globex", "video"),
            job("globex", "email"),
        ],
    )
    .await;
    // Two types excluded for the first tenant, one for the second: each share's placeholders
    // follow the ones before.
    let mut asking = request("worker-a", 10, T0);
    asking
        .exclude_types
        .insert(tenant("acme"), vec!["video".to_owned(), "audio".to_owned()]);
    asking
        .exclude_types
        .insert(tenant("globex"), vec!["email".to_owned()]);
    let mut leased: Vec<(String, String)> = queue
        .lease(&asking)
        .await
        .expect("lease")
        .into_iter()
        .map(|held| (held.job.tenant.to_string(), held.job.job_type))
        .collect();
    leased.sort();
    assert_eq!(
        leased,
        vec![
            ("acme".to_owned(), "email".to_owned()),
            ("globex".to_owned(), "video".to_owned())
        ]
    );
}

/// Workers leasing at the same time never get the same job, and together get every job.
pub async fn racing_workers_never_share_a_job<Q: JobQueue + Clone + 'static>(queue: &Q) {
    let ids: HashSet<Uuid> = enqueue(queue, (0..200).map(|_| job("acme", "email")).collect())
        .await
        .into_iter()
        .collect();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let leased = lease(&queue, &format!("worker-{worker}"), 7, T0).await;
                if leased.is_empty() {
                    return mine;
                }
                mine.extend(leased.into_iter().map(|held| held.job.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for worker in workers {
        for id in worker.await.expect("worker") {
            assert!(seen.insert(id), "job {id} leased twice");
        }
    }
    assert_eq!(seen, ids);
}

/// A job failing every attempt retries at its time and dies after `max_attempts`, each attempt's
/// error kept in order.
pub async fn a_job_failing_every_attempt_dies_with_each_error<Q: JobQueue + JobBook>(queue: &Q) {
    let id = enqueue(queue, vec![job("acme", "email")]).await[0];
    let mut now = T0;
    for attempt in 1..=3 {
        let held = lease(queue, "worker-a", 1, now).await;
        assert_eq!(held.len(), 1, "attempt {attempt}");
        assert_eq!(held[0].job.attempts, attempt);
        let retry_at = (attempt < 3).then_some(now + 1_000);
        let recorded = queue
            .fail(
                &[failure(&held[0], &format!("boom {attempt}"), retry_at)],
                now,
            )
            .await
            .expect("fail");
        assert_eq!(recorded, vec![id]);
        if attempt < 3 {
            assert_eq!(state(queue, "acme", id, now).await, JobState::Retrying);
            assert!(
                lease(queue, "worker-a", 1, now + 999).await.is_empty(),
                "backoff kept"
            );
            now += 1_000;
        }
    }
    let dead = queue.get(&tenant("acme"), id, now).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.attempts, 3);
    let errors: Vec<(u32, String)> = dead
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "boom 1".into()),
            (2, "boom 2".into()),
            (3, "boom 3".into())
        ]
    );
    assert_eq!(dead.finished_at_ms, Some(now));
    assert!(lease(queue, "worker-a", 1, now + 60_000).await.is_empty());
}

/// Cancel stops a queued job from running, and refuses a running job's completion.
pub async fn cancel_stops_a_queued_job_and_fences_a_running_one<Q: JobQueue + JobBook>(queue: &Q) {
    let ids = enqueue(queue, vec![job("acme", "email"), job("acme", "email")]).await;
    let cancelled = queue
        .cancel(&tenant("acme"), ids[0], T0)
        .await
        .expect("cancel")
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let held = lease(queue, "worker-a", 10, T0).await;
    assert_eq!(
        held.iter().map(|h| h.job.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    queue
        .cancel(&tenant("acme"), ids[1], T0)
        .await
        .expect("cancel");
    assert!(queue
        .complete(&[done(&held[0], "late")], T0)
        .await
        .expect("complete")
        .is_empty());
    assert!(queue
        .heartbeat(&[held[0].reference()], T0 + 1)
        .await
        .expect("hb")
        .is_empty());
    assert_eq!(state(queue, "acme", ids[1], T0).await, JobState::Cancelled);
    assert!(
        queue
            .cancel(&tenant("globex"), ids[1], T0)
            .await
            .expect("cancel")
            .is_none(),
        "another tenant's job is not found"
    );
}

/// Retry queues a dead or cancelled job again (one more attempt when it has none left); redrive
/// does it for every dead job matching a filter, of the tenant only.
pub async fn retry_and_redrive_queue_dead_jobs_again<Q: JobQueue + JobBook>(queue: &Q) {
    let one_attempt = |job_type: &str| NewJob {
        max_attempts: 1,
        ..job("acme", job_type)
    };
    let ids = enqueue(
        queue,
        vec![
            one_attempt("email"),
            one_attempt("email"),
            one_attempt("sms"),
        ],
    )
    .await;
    enqueue(
        queue,
        vec![NewJob {
            max_attempts: 1,
            ..job("globex", "email")
        }],
    )
    .await;
    for held in lease(queue, "worker-a", 10, T0).await {
        queue
            .fail(&[failure(&held, "no", None)], T0)
            .await
            .expect("fail");
    }
    let retried = queue
        .retry(&tenant("acme"), ids[0], T0 + 1)
        .await
        .expect("retry")
        .unwrap();
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(retried.max_attempts, 2, "one more attempt");
    // A state in the filter is ignored: redrive takes dead jobs.
    let filter = JobFilter {
        state: Some(JobState::Queued),
        job_type: Some("email".into()),
        ..JobFilter::default()
    };
    assert_eq!(
        queue
            .redrive(&tenant("acme"), &filter, T0 + 1)
            .await
            .expect("redrive"),
        1
    );
    assert_eq!(state(queue, "acme", ids[1], T0 + 1).await, JobState::Queued);
    assert_eq!(
        state(queue, "acme", ids[2], T0 + 1).await,
        JobState::Dead,
        "sms not matched"
    );
    let leased = lease(queue, "worker-a", 10, T0 + 1).await;
    let mut tenants: Vec<String> = leased.iter().map(|h| h.job.tenant.to_string()).collect();
    tenants.sort();
    assert_eq!(
        tenants,
        vec!["acme", "acme"],
        "globex's dead job stays dead"
    );
    assert!(leased.iter().all(|held| held.job.attempts == 2));
}

/// A released lease goes back to the queue at once, its attempt not counted.
pub async fn release_hands_a_job_back_without_counting_the_attempt<Q: JobQueue + JobBook>(
    queue: &Q,
) {
    let id = enqueue(queue, vec![job("acme", "email")]).await[0];
    let held = lease(queue, "worker-a", 1, T0).await.remove(0);
    assert_eq!(
        queue.release(&[held.reference()]).await.expect("release"),
        vec![id]
    );
    let again = lease(queue, "worker-b", 1, T0).await.remove(0);
    assert_eq!(again.job.attempts, 1);
    assert!(again.token > held.token);
    assert!(queue
        .complete(&[done(&held, "old")], T0)
        .await
        .expect("complete")
        .is_empty());
}

/// Listing filters by state, type and queue, newest first, in pages.
pub async fn listing_filters_and_pages<Q: JobQueue + JobBook>(queue: &Q) {
    let mut jobs = Vec::new();
    for n in 0..5 {
        jobs.push(NewJob {
            queue: if n % 2 == 0 {
                "bulk".into()
            } else {
                "default".into()
            },
            ..job("acme", if n < 3 { "email" } else { "sms" })
        });
    }
    jobs.push(NewJob {
        run_at_ms: T0 + 60_000,
        ..job("acme", "email")
    });
    let ids = enqueue(queue, jobs).await;
    let acme = tenant("acme");
    let all = queue
        .list(&acme, &JobFilter::default(), None, 100, T0)
        .await
        .expect("list");
    let listed: Vec<Uuid> = all.iter().map(|job| job.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let page = queue
        .list(&acme, &JobFilter::default(), None, 4, T0)
        .await
        .expect("list");
    let rest = queue
        .list(&acme, &JobFilter::default(), Some(page[3].id), 4, T0)
        .await
        .expect("list");
    assert_eq!(page.len() + rest.len(), 6);
    let by = |state, job_type: Option<&str>, queue_name: Option<&str>| JobFilter {
        state,
        job_type: job_type.map(str::to_owned),
        queue: queue_name.map(str::to_owned),
    };
    let acme_ref = &acme;
    let count = |filter: JobFilter| async move {
        queue
            .list(acme_ref, &filter, None, 100, T0)
            .await
            .expect("list")
            .len()
    };
    assert_eq!(count(by(Some(JobState::Scheduled), None, None)).await, 1);
    assert_eq!(count(by(Some(JobState::Queued), None, None)).await, 5);
    assert_eq!(count(by(None, Some("sms"), None)).await, 2);
    assert_eq!(
        count(by(Some(JobState::Queued), Some("email"), Some("bulk"))).await,
        2
    );
    assert!(queue
        .list(&tenant("globex"), &JobFilter::default(), None, 100, T0)
        .await
        .expect("list")
        .is_empty());
}

/// Depths count ready and waiting jobs per tenant and queue; purge deletes finished jobs past
/// their retention, dead ones by their own.
pub async fn depths_count_backlogs_and_purge_honours_retention<Q: JobQueue + JobBook>(queue: &Q) {
    enqueue(
        queue,
        vec![
            job("acme", "email"),
            NewJob {
                run_at_ms: T0 - 500,
                ..job("acme", "email")
            },
            NewJob {
                run_at_ms: T0 + 10_000,
                ..job("acme", "email")
            },
        ],
    )
    .await;
    let depths = queue.depths(T0).await.expect("depths");
    assert_eq!(depths.len(), 1);
    assert_eq!((depths[0].ready, depths[0].waiting), (2, 1));
    assert_eq!(depths[0].oldest_ready_ms, Some(T0 - 500));
    let held = lease(queue, "worker-a", 2, T0).await;
    queue
        .complete(&[done(&held[0], "ok")], T0)
        .await
        .expect("complete");
    queue
        .fail(&[failure(&held[1], "no", None)], T0)
        .await
        .expect("fail");
    assert_eq!(
        queue.purge(T0, T0, 100).await.expect("purge"),
        0,
        "not yet past retention"
    );
    assert_eq!(
        queue.purge(T0 + 1, T0, 100).await.expect("purge"),
        1,
        "the succeeded one"
    );
    assert_eq!(
        queue.purge(T0 + 1, T0 + 1, 100).await.expect("purge"),
        1,
        "the dead one"
    );
    assert!(queue
        .get(&tenant("acme"), held[1].job.id, T0)
        .await
        .expect("get")
        .is_none());
}

/// A worker heartbeats every lease it holds while its finished attempts complete, each list in
/// its own order: the statements must take the rows' locks in one order, or PostgreSQL aborts
/// one of them as a deadlock — and a lost heartbeat lets a lease lapse, so its job runs twice.
pub async fn heartbeats_racing_completions_never_deadlock<Q: JobQueue + JobBook>(queue: &Q) {
    for round in 0..6 {
        let now = T0 + round * 10;
        enqueue(queue, (0..250).map(|_| job("acme", "email")).collect()).await;
        let held = lease(queue, "worker-a", 250, now).await;
        assert_eq!(held.len(), 250, "round {round}: the whole batch is leased");
        let mut beats: Vec<LeaseRef> = held.iter().map(Lease::reference).collect();
        beats.reverse();
        let finished: Vec<Completion> = held.iter().map(|lease| done(lease, "ok")).collect();
        let (beat, completed) = tokio::join!(
            queue.heartbeat(&beats, now + VISIBILITY),
            queue.complete(&finished, now + 1),
        );
        beat.unwrap_or_else(|err| panic!("round {round}: heartbeat failed: {err}"));
        let completed =
            completed.unwrap_or_else(|err| panic!("round {round}: completion failed: {err}"));
        assert_eq!(
            completed.len(),
            250,
            "round {round}: every attempt completed"
        );
    }
}
