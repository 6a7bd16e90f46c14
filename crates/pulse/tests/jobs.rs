//! Background jobs end to end, on the embedded default and on PostgreSQL (+ Kafka + Redis): an
//! HTTP handler on a real local server, its backoff, dead jobs with every attempt's error,
//! timeouts, cancel, retry and redrive, idempotent enqueue, graceful shutdown, worker processes
//! killed with SIGKILL or paused with SIGSTOP mid-job, and 10,000 jobs of three tenants over four
//! workers, one restarted.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::job_handler::{self, HandlerState};
use common::TestApp;
use pulse::config::Secret;
use pulse::Config;
use pulse_conformance::services;
use pulse_runtime::Role;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "jobs-tests-admin-token-0123456789abc";

/// Where a test's Pulse keeps its state.
#[derive(Debug, Clone)]
enum Mode {
    Embedded,
    Distributed { store_url: String },
}

impl Mode {
    async fn distributed() -> Self {
        Mode::Distributed {
            store_url: services::fresh_postgres_database().await,
        }
    }

    fn configure(&self, config: &mut Config) {
        config.admin_token = Some(Secret(ADMIN_TOKEN.into()));
        config.webhooks.allow_private_targets = true;
        config.jobs.worker.visibility_ms = 2_000;
        config.jobs.worker.drain_timeout_ms = 1_000;
        config.jobs.worker.poll_interval_ms = 20;
        config.jobs.handler_refresh_ms = 200;
        // 10,000 jobs in a few seconds: far above the default jobs quota.
        config.quotas.jobs = pulse_tenants::QuotaSetting {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        if let Mode::Distributed { store_url } = self {
            common::distributed(config, store_url.clone());
        }
    }

    /// The flags and environment a worker process of this mode is started with.
    fn worker_command(&self, data_dir: &Path, prefix: &str, port: u16) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pulse"));
        command
            .args(["serve", "--role", "worker", "--log-level", "warn"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("PULSE_PREFIX", prefix)
            .env("PULSE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
            .env("PULSE_JOBS__WORKER__VISIBILITY_MS", "2000")
            .env("PULSE_JOBS__WORKER__DRAIN_TIMEOUT_MS", "1000")
            .env("PULSE_JOBS__WORKER__POLL_INTERVAL_MS", "20")
            .env("PULSE_JOBS__HANDLER_REFRESH_MS", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Mode::Distributed { store_url } = self {
            command
                .arg("--store")
                .arg(store_url)
                .arg("--log")
                .arg(services::kafka_url())
                .arg("--cache")
                .arg(services::redis_url());
        }
        command
    }
}

struct Setup {
    app: TestApp,
    handler: HandlerState,
    url: String,
    dir: tempfile::TempDir,
    prefix: String,
}

/// A Pulse playing `roles` in this process, a tenant-less default key, and the test handler
/// registered for job type `work`.
async fn setup(mode: &Mode, roles: &[Role]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let prefix = common::test_prefix();
    let app = TestApp::spawn_roles(dir.path(), roles, |config| mode.configure(config)).await;
    let handler = HandlerState::default();
    let url = job_handler::start(handler.clone()).await;
    register(
        &app,
        &handler,
        "work",
        &url,
        json!({"backoff": {"shape": "exponential",
        "base_ms": 200, "exponent": 2.0, "jitter": 0.1}}),
    )
    .await;
    Setup {
        app,
        handler,
        url,
        dir,
        prefix,
    }
}

async fn register(app: &TestApp, handler: &HandlerState, job_type: &str, url: &str, extra: Value) {
    register_with(&app.client(), &app.base, handler, job_type, url, extra).await;
}

/// Registers the test handler for `job_type` through `client` (a tenant's key) at `base`, and
/// tells the handler the signing secret it got.
async fn register_with(
    client: &reqwest::Client,
    base: &str,
    handler: &HandlerState,
    job_type: &str,
    url: &str,
    extra: Value,
) {
    let mut body = json!({"url": url});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let started = Instant::now();
    let response = loop {
        match client
            .put(format!("{base}/api/v1/handlers/{job_type}"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => break response,
            // A Pulse process just started may not listen yet.
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("Pulse does not answer at {base}: {err}"),
        }
    };
    assert!(
        matches!(response.status().as_u16(), 200 | 201),
        "{response:?}"
    );
    let registered: Value = response.json().await.unwrap();
    handler
        .handler
        .lock()
        .unwrap()
        .secrets
        .push(registered["signing_secret"].as_str().unwrap().to_owned());
}

async fn enqueue(app: &TestApp, body: Value) -> String {
    let (status, answer) = app.post_json("/api/v1/jobs", &body).await;
    assert_eq!(status, 201, "{answer}");
    answer["job_id"].as_str().unwrap().to_owned()
}

async fn job(app: &TestApp, id: &str) -> Value {
    let (status, job) = app.get_json(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job
}

/// Waits (60 s at most) until the job is in `state`; the job.
async fn wait_for_state(app: &TestApp, id: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let job = job(app, id).await;
        if job["state"] == state {
            return job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job {id} never reached {state}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn errors(job: &Value) -> Vec<String> {
    job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["error"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_handler_failing_twice_runs_three_times_on_its_backoff_in_one_trace(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = setup
        .app
        .client()
        .post(format!("{}/api/v1/jobs", setup.app.base))
        .header("traceparent", trace)
        .json(&json!({"job_type": "work", "payload": {"fail": 2, "status": 503}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_for_state(&setup.app, &id, "succeeded").await;
    let calls = setup.handler.calls_of(&id);
    assert_eq!(calls.len(), 3, "exactly three runs: {calls:?}");
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["result"], json!({"call": 3}));
    assert_eq!(errors(&done).len(), 2);
    assert!(errors(&done)[0].contains("503"), "{done}");
    assert_eq!(
        calls.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // 200 ms then 400 ms (±10 %), never sooner.
    let gaps: Vec<Duration> = calls
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    assert!(gaps[0] >= Duration::from_millis(180), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(360), "{gaps:?}");
    assert!(gaps[1] > gaps[0], "the backoff grows: {gaps:?}");
    // One trace: the enqueue request's, through every attempt.
    let trace_id = &trace[3..35];
    assert_eq!(done["trace_id"], trace_id);
    for call in &calls {
        let sent = call
            .traceparent
            .as_deref()
            .expect("a traceparent on every call");
        assert_eq!(&sent[3..35], trace_id, "{sent}");
    }
    assert_eq!(setup.handler.handler.lock().unwrap().bad_signatures, 0);
    setup.app.stop().await;
}

async fn a_job_failing_every_attempt_dies_and_retry_redrive_and_cancel_work(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    let app = &setup.app;
    let id = enqueue(
        app,
        json!({"job_type": "work", "payload": {"fail": 1000}, "max_attempts": 3}),
    )
    .await;
    let dead = wait_for_state(app, &id, "dead").await;
    assert_eq!(dead["attempts"], 3);
    assert_eq!(errors(&dead).len(), 3, "{dead}");
    assert!(
        errors(&dead).iter().all(|error| error.contains("HTTP 500")),
        "{dead}"
    );
    assert_eq!(setup.handler.calls_of(&id).len(), 3);
    let (_, dead_letters) = app.get_json("/api/v1/jobs/dead-letters").await;
    assert_eq!(dead_letters["jobs"][0]["job_id"], id.as_str());
    // Retry: one more attempt, which fails again (the handler still says no) and dies.
    let (status, retried) = app
        .post_json(&format!("/api/v1/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["max_attempts"], 4);
    let dead_again = wait_for_state(app, &id, "dead").await;
    assert_eq!(dead_again["attempts"], 4);
    assert_eq!(errors(&dead_again).len(), 4);
    // A handler refusing with 4xx fails the job for good at once; redrive queues it again.
    let refused = enqueue(
        app,
        json!({"job_type": "work", "payload": {"fail": 1, "status": 422}}),
    )
    .await;
    let refused_job = wait_for_state(app, &refused, "dead").await;
    assert_eq!(refused_job["attempts"], 1, "a 4xx is not retried");
    assert!(errors(&refused_job)[0].contains("422"), "{refused_job}");
    let (status, redriven) = app
        .post_json("/api/v1/jobs/redrive", &json!({"job_type": "work"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(redriven["redriven"], 2);
    let done = wait_for_state(app, &refused, "succeeded").await;
    assert_eq!(done["attempts"], 2);
    // Cancel a job scheduled for later: it never runs; cancelling a finished job is refused.
    let later = enqueue(app, json!({"job_type": "work", "delay_ms": 60_000})).await;
    assert_eq!(job(app, &later).await["state"], "scheduled");
    let (status, cancelled) = app
        .post_json(&format!("/api/v1/jobs/{later}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, refused) = app
        .post_json(&format!("/api/v1/jobs/{refused}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "wrong_state");
    assert!(setup.handler.calls_of(&later).is_empty());
    setup.app.stop().await;
}

async fn a_handler_past_its_timeout_is_cancelled_and_counted(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    let id = enqueue(
        &setup.app,
        json!({"job_type": "work", "payload": {"sleep_ms": 5000}, "timeout_ms": 300,
            "max_attempts": 2}),
    )
    .await;
    let started = Instant::now();
    let dead = wait_for_state(&setup.app, &id, "dead").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "each attempt cut at 300 ms"
    );
    assert_eq!(dead["attempts"], 2);
    for error in errors(&dead) {
        assert!(error.contains("300 ms"), "{error}");
    }
    setup.app.stop().await;
}

async fn the_same_idempotency_key_answers_the_original_job(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    let app = &setup.app;
    let body = json!({"job_type": "work", "idempotency_key": "receipt-42", "payload": {"n": 1}});
    let id = enqueue(app, body.clone()).await;
    wait_for_state(app, &id, "succeeded").await;
    let (status, again) = app.post_json("/api/v1/jobs", &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["job_id"], id.as_str());
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["result"], json!({"call": 1}));
    let (status, batch) = app
        .post_json(
            "/api/v1/jobs/batch",
            &json!({"jobs": [body, {"job_type": "work", "payload": {"n": 2}}]}),
        )
        .await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch["results"][0]["job_id"], id.as_str());
    assert_eq!(batch["results"][0]["duplicate"], true);
    assert_eq!(batch["results"][1]["duplicate"], false);
    assert_eq!(setup.handler.calls_of(&id).len(), 1, "ran once");
    let (status, unknown) = app
        .post_json("/api/v1/jobs", &json!({"job_type": "nobody"}))
        .await;
    assert_eq!(
        (status, unknown["error"]["code"].as_str()),
        (422, Some("unknown_job_type"))
    );
    setup.app.stop().await;
}

/// A handler's `concurrency` caps its attempts running at once, whatever the backlog.
async fn a_handlers_concurrency_cap_holds(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    register(
        &setup.app,
        &setup.handler,
        "solo",
        &setup.url,
        json!({"concurrency": 2}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            enqueue(
                &setup.app,
                json!({"job_type": "solo", "payload": {"sleep_ms": 100}}),
            )
            .await,
        );
    }
    for id in &ids {
        wait_for_state(&setup.app, id, "succeeded").await;
    }
    let most = setup.handler.handler.lock().unwrap().most_in_flight;
    assert_eq!(most, 2, "at most two at once, and the cap was reached");
    setup.app.stop().await;
}

/// On shutdown a worker stops leasing, lets a short attempt finish and hands a long one back at
/// once (its attempt not counted).
async fn shutdown_finishes_short_attempts_and_hands_long_ones_back(mode: Mode) {
    let setup = setup(&mode, &Role::ALL).await;
    let app = &setup.app;
    let short = enqueue(
        app,
        json!({"job_type": "work", "payload": {"sleep_ms": 300}}),
    )
    .await;
    let long = enqueue(
        app,
        json!({"job_type": "work", "payload": {"sleep_ms": 20000},
        "timeout_ms": 30000}),
    )
    .await;
    common::wait_until("both attempts started", || {
        !setup.handler.calls_of(&short).is_empty() && !setup.handler.calls_of(&long).is_empty()
    })
    .await;
    let base = app.base.clone();
    let key = app.api_key.clone();
    let stopping = Instant::now();
    setup.app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let _ = (base, key);
    // Read the jobs back through a gateway on the same data.
    let reader = TestApp::spawn_roles(setup.dir.path(), &[Role::Gateway], |config| {
        mode.configure(config)
    })
    .await;
    let short_job = job(&reader, &short).await;
    assert_eq!(
        short_job["state"], "succeeded",
        "finished within the drain: {short_job}"
    );
    let long_job = job(&reader, &long).await;
    assert_eq!(long_job["state"], "queued", "handed back: {long_job}");
    assert_eq!(long_job["attempts"], 0, "the attempt is not counted");
    reader.stop().await;
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn metric_of(port: u16, name: &str) -> f64 {
    let page = common::client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = page.text().await.unwrap();
    common::metric_sum(&text, name, &[]).unwrap_or(0.0)
}

/// A worker process killed with SIGKILL mid-job loses nothing: its lease lapses, another worker
/// runs the job again, and it completes once. A worker paused (SIGSTOP) past its lease cannot
/// record its late outcome once another worker ran the job: the fencing token refuses it.
async fn killed_and_paused_worker_processes_lose_no_job_and_are_fenced(mode: Mode) {
    let setup = setup(&mode, &[Role::Gateway]).await;
    let app = &setup.app;
    let port = common::free_port();
    let mut first = mode
        .worker_command(setup.dir.path(), &setup.prefix, port)
        .spawn()
        .expect("a worker process");
    let killed = enqueue(app, json!({"job_type": "work", "payload": {"hold": true}})).await;
    common::wait_until("the first worker took the job", || {
        !setup.handler.calls_of(&killed).is_empty()
    })
    .await;
    kill(&first, "KILL");
    let _ = first.wait();
    let second_port = common::free_port();
    let mut second = mode
        .worker_command(setup.dir.path(), &setup.prefix, second_port)
        .spawn()
        .expect("a second worker process");
    let done = wait_for_state(app, &killed, "succeeded").await;
    assert_eq!(done["attempts"], 2);
    assert!(errors(&done)[0].contains("lapsed"), "{done}");
    assert_eq!(done["result"], json!({"call": 2}));
    assert_eq!(setup.handler.calls_of(&killed).len(), 2, "run again, once");

    // Pause the second worker mid-job; a third rescues and finishes the job; the second, resumed,
    // is refused.
    let paused = enqueue(app, json!({"job_type": "work", "payload": {"hold": true}})).await;
    common::wait_until("the second worker took the job", || {
        !setup.handler.calls_of(&paused).is_empty()
    })
    .await;
    kill(&second, "STOP");
    let third_port = common::free_port();
    let mut third = mode
        .worker_command(setup.dir.path(), &setup.prefix, third_port)
        .spawn()
        .expect("a third worker process");
    let finished = wait_for_state(app, &paused, "succeeded").await;
    assert_eq!(finished["result"], json!({"call": 2}));
    setup.handler.release.notify_waiters();
    kill(&second, "CONT");
    // The resumed worker learns it lost the lease: at its heartbeat (the attempt is stopped) or
    // when it reports (the outcome is refused). Either way the job stays as the third left it.
    let started = Instant::now();
    loop {
        let fenced = metric_of(second_port, pulse_jobs::OUTCOMES_REFUSED_TOTAL).await
            + metric_of(second_port, pulse_jobs::LEASES_LOST_TOTAL).await;
        if fenced >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the resumed worker was never fenced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = job(app, &paused).await;
    assert_eq!(after["result"], json!({"call": 2}), "{after}");
    assert_eq!(after["state"], "succeeded");
    for child in [&mut second, &mut third] {
        let _ = child.kill();
        let _ = child.wait();
    }
    setup.app.stop().await;
}

/// 10,000 jobs of three tenants: on PostgreSQL over four worker processes, one of them stopped
/// (SIGTERM) and replaced half-way; on the embedded default (one process by design) over its
/// worker, the whole process restarted half-way. Each job succeeds, and the handler ran each
/// exactly once.
async fn ten_thousand_jobs_of_three_tenants_each_run_once_across_a_worker_restart(mode: Mode) {
    let embedded = matches!(mode, Mode::Embedded);
    let roles: &[Role] = if embedded {
        &Role::ALL
    } else {
        &[Role::Gateway]
    };
    let Setup {
        app,
        handler,
        url,
        dir,
        prefix,
    } = setup(&mode, roles).await;
    let mut app = Some(app);
    let admin = |base: String, path: &'static str, body: Value| {
        common::client()
            .post(format!("{base}/admin/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let mut base = app.as_ref().unwrap().base.clone();
    let mut keys = Vec::new();
    for tenant in ["alpha", "beta", "gamma"] {
        let created: Value = admin(
            base.clone(),
            "/tenants",
            json!({"tenant_id": tenant, "rate": 100000}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let key = created["api_key"].as_str().unwrap().to_owned();
        let client = common::client_with_key(&key);
        register_with(&client, &base, &handler, "work", &url, json!({})).await;
        keys.push((tenant, client));
    }
    let workers = |count: usize| {
        (0..count)
            .map(|_| {
                // Killed on drop: a failing assertion must not leave workers running (they
                // held the machine's cores through the rest of a CI run).
                common::Killed(
                    mode.worker_command(dir.path(), &prefix, common::free_port())
                        .spawn()
                        .expect("a worker process"),
                )
            })
            .collect::<Vec<common::Killed>>()
    };
    let mut running = if embedded { Vec::new() } else { workers(4) };
    let mut enqueued = 0;
    for round in 0..20 {
        for (tenant, client) in &keys {
            let jobs: Vec<Value> = (0..167)
                .map(|n| json!({"job_type": "work", "payload": {"n": n, "tenant": tenant}}))
                .collect();
            let answer: Value = client
                .post(format!("{base}/api/v1/jobs/batch"))
                .json(&json!({"jobs": jobs}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let results = answer["results"].as_array();
            enqueued += results
                .unwrap_or_else(|| panic!("a batch answer: {answer}"))
                .len();
        }
        if round == 10 {
            if embedded {
                app.take().unwrap().stop().await;
                let restarted =
                    TestApp::spawn_roles(dir.path(), &Role::ALL, |config| mode.configure(config))
                        .await;
                base = restarted.base.clone();
                app = Some(restarted);
            } else {
                let mut stopped = running.remove(0);
                kill(&stopped.0, "TERM");
                let _ = stopped.0.wait();
                running.extend(workers(1));
            }
        }
    }
    assert_eq!(enqueued, 10_020);
    let started = Instant::now();
    loop {
        let calls = handler.handler.lock().unwrap().calls.clone();
        assert!(
            calls.values().all(|calls| calls.len() == 1),
            "a job ran twice"
        );
        if calls.len() == enqueued {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of {enqueued} jobs ran",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = handler.handler.lock().unwrap().calls.clone();
    let mut per_tenant: HashMap<String, usize> = HashMap::new();
    for calls in calls.values() {
        *per_tenant.entry(calls[0].tenant.clone()).or_default() += 1;
    }
    assert_eq!(
        per_tenant,
        HashMap::from([
            ("alpha".to_owned(), 3_340),
            ("beta".to_owned(), 3_340),
            ("gamma".to_owned(), 3_340)
        ])
    );
    // Every job is succeeded in the store too (a page of 500 per tenant, none left in any other
    // state).
    for (_, client) in &keys {
        for state in ["queued", "running", "retrying", "dead"] {
            let page: Value = client
                .get(format!("{base}/api/v1/jobs?state={state}&limit=1"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(page["jobs"], json!([]), "{state}: {page}");
        }
    }
    drop(running);
    app.take().unwrap().stop().await;
}

/// Each job costs one unit of the tenant's `jobs` quota: a batch over what is left is refused
/// whole with 429 and the quota's headers, and nothing of it is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_jobs_are_charged_to_the_jobs_quota() {
    let app = TestApp::spawn(|config| {
        config.quotas.jobs = pulse_tenants::QuotaSetting {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let (status, first) = app
        .post_json("/api/v1/jobs", &json!({"job_type": "pulse.noop"}))
        .await;
    assert_eq!(status, 201, "{first}");
    let response = app
        .client()
        .post(format!("{}/api/v1/jobs/batch", app.base))
        .json(
            &json!({"jobs": [{"job_type": "pulse.noop"}, {"job_type": "pulse.noop"},
            {"job_type": "pulse.noop"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["ratelimit-policy"], "\"jobs\";q=3;w=3");
    let (_, page) = app.get_json("/api/v1/jobs?limit=10").await;
    assert_eq!(
        page["jobs"].as_array().map(Vec::len),
        Some(1),
        "nothing of the refused batch"
    );
    app.stop().await;
}

/// The embedded default is one process: killed with SIGKILL mid-job and started again on the
/// same data, it runs the job again once its lease lapsed, and the job completes once.
async fn a_killed_embedded_pulse_runs_the_job_again_once_after_restart(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let handler = HandlerState::default();
    let url = job_handler::start(handler.clone()).await;
    let port = common::free_port();
    let up = |port: u16| {
        let command = mode.worker_command(dir.path(), &common::test_prefix(), port);
        // `pulse up`: every role, as a user runs the embedded default.
        let args: Vec<std::ffi::OsString> = command.get_args().map(|arg| arg.to_owned()).collect();
        let mut up = Command::new(env!("CARGO_BIN_EXE_pulse"));
        up.arg("up")
            .args(args.iter().skip(3))
            .envs(
                command
                    .get_envs()
                    .filter_map(|(key, value)| Some((key, value?))),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        up.spawn().expect("pulse up")
    };
    let mut first = up(port);
    let base = format!("http://127.0.0.1:{port}");
    let key_file = dir.path().join("api-key");
    common::wait_until("pulse up wrote its key", || key_file.exists()).await;
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let client = common::client_with_key(&key);
    register_with(&client, &base, &handler, "work", &url, json!({})).await;
    let answer: Value = client
        .post(format!("{base}/api/v1/jobs"))
        .json(&json!({"job_type": "work", "payload": {"hold": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["job_id"].as_str().unwrap().to_owned();
    common::wait_until("the job started", || !handler.calls_of(&id).is_empty()).await;
    kill(&first, "KILL");
    let _ = first.wait();
    let second_port = common::free_port();
    let mut second = up(second_port);
    let base = format!("http://127.0.0.1:{second_port}");
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/api/v1/jobs/{id}")).send().await {
            let job: Value = response.json().await.unwrap();
            if job["state"] == "succeeded" {
                assert_eq!(job["attempts"], 2, "{job}");
                assert!(errors(&job)[0].contains("lapsed"), "{job}");
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never ran again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(handler.calls_of(&id).len(), 2, "run again, once");
    kill(&second, "TERM");
    let _ = second.wait();
}

macro_rules! in_both_modes {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Mode::Embedded).await;
                }
            )+
        }
        mod distributed {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Mode::distributed().await).await;
                }
            )+
        }
    };
}

in_both_modes!(
    a_handler_failing_twice_runs_three_times_on_its_backoff_in_one_trace,
    a_job_failing_every_attempt_dies_and_retry_redrive_and_cancel_work,
    a_handler_past_its_timeout_is_cancelled_and_counted,
    the_same_idempotency_key_answers_the_original_job,
    a_handlers_concurrency_cap_holds,
    shutdown_finishes_short_attempts_and_hands_long_ones_back,
    ten_thousand_jobs_of_three_tenants_each_run_once_across_a_worker_restart,
);

/// Worker processes beside a gateway share one store only on PostgreSQL: the embedded default
/// is one process, so its SIGKILL case restarts that process instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_killed_and_paused_worker_processes_lose_no_job_and_are_fenced() {
    killed_and_paused_worker_processes_lose_no_job_and_are_fenced(Mode::distributed().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_killed_pulse_runs_the_job_again_once_after_restart() {
    a_killed_embedded_pulse_runs_the_job_again_once_after_restart(Mode::Embedded).await;
}
