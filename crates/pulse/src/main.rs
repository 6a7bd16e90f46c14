//! `pulse`: parses the command line, loads the configuration, runs the command, and turns any
//! failure into one line on stderr and a non-zero exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pulse::backends::{redact, Backends};
use pulse::cli::{CityArgs, Cli, Command, JobCommand, KeyCommand, TenantCommand};
use pulse::{telemetry, Application, Config};
use pulse_runtime::{parse_roles, CancellationToken, Role};
use pulse_sim::report::{Progress, Summary};
use pulse_sim::SimSettings;

/// glibc's allocator spent a fifth of the CPU of a loaded Pulse in `malloc`/`free` (request
/// buffers, JSON, futures) across the runtime's threads; mimalloc's thread-local heaps do the
/// same work for much less (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Simulate {
        target,
        duration,
        json,
        city,
        api_key,
        data_dir,
    } = &cli.command
    {
        let mut settings = city.settings(target.clone(), *duration);
        settings.api_key = match api_key {
            Some(key) => Some(key.clone()),
            None => pulse::wiring::tenants::read_key_file(data_dir)?,
        };
        anyhow::ensure!(
            settings.api_key.is_some(),
            "no API key: pass --api-key (or PULSE_API_KEY), or --data-dir of the `pulse up` \
             whose {} file holds one",
            pulse::wiring::tenants::API_KEY_FILE
        );
        return simulate(settings, *json).await;
    }
    let common = cli.command.common().context("command without settings")?;
    let mut config = Config::load(common.config.as_deref(), &common.flags)?;
    if let Command::Demo { .. } = &cli.command {
        // The demo's terminal belongs to the simulator's progress; only problems are logged.
        if config.log_level == Config::default().log_level && std::env::var_os("RUST_LOG").is_none()
        {
            config.log_level = "warn".to_owned();
            config.log_format = pulse::config::LogFormat::Pretty;
        }
    }
    let telemetry = telemetry::init(&config)?;
    let outcome = run_command(&cli, &config).await;
    telemetry.shutdown();
    outcome
}

async fn run_command(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    match &cli.command {
        Command::Up { .. } => serve(config, Role::ALL.into_iter().collect()).await,
        Command::Serve { role, .. } => serve(config, parse_roles(role)?).await,
        Command::Demo { duration, city, .. } => demo(config, city, *duration).await,
        Command::Simulate { .. } => unreachable!("handled above"),
        Command::Tenants { command } => {
            let store = open_migrated_store(config).await?;
            let outcome = tenant_command(&store, command).await;
            store.close().await;
            outcome
        }
        Command::Keys { command } => {
            let store = open_migrated_store(config).await?;
            let outcome = key_command(&store, command, config).await;
            store.close().await;
            outcome
        }
        Command::Jobs { command } => {
            let store = open_migrated_store(config).await?;
            let outcome = job_command(&store, command, config).await;
            store.close().await;
            outcome
        }
        Command::Profiles { command } => pulse::profiles_cli::run(command, config).await,
        Command::Ledger { command } => {
            let store = open_migrated_store(config).await?;
            let outcome = ledger_command(&store, command).await;
            store.close().await;
            outcome
        }
        Command::Migrate { .. } => {
            let store = Backends::open_store(config).await?;
            store.migrate().await?;
            store.close().await;
            eprintln!("migrations applied to {}", redact(&config.store_url()));
            Ok(())
        }
    }
}

async fn serve(config: &Config, roles: std::collections::BTreeSet<Role>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    pulse_runtime::cancel_on_signals(shutdown.clone());
    let app = Application::build(config, roles, shutdown)
        .await
        .context("pulse could not start")?;
    app.run_until_stopped().await
}

/// The store, migrated when the config says so (a `pulse tenants create` before the first
/// `pulse up` finds its tables).
async fn open_migrated_store(config: &Config) -> anyhow::Result<pulse_store::Database> {
    let store = Backends::open_store(config).await?;
    if config.migrate_on_start {
        store.migrate().await?;
    }
    Ok(store)
}

async fn ledger_command(
    store: &pulse_store::Database,
    command: &pulse::cli::LedgerCommand,
) -> anyhow::Result<()> {
    use pulse_core::clock::Clock;
    use pulse_ledger::ports::Ledger;
    let pulse::cli::LedgerCommand::Verify { grace, json, .. } = command;
    let now_ms = pulse_core::clock::SystemClock.now_ms();
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    store.analyze_ledger().await?;
    let violations = store.verify(now_ms, grace_ms, 1_000).await?;
    if *json {
        let listed: Vec<serde_json::Value> = violations
            .iter()
            .map(|v| serde_json::json!({"rule": v.rule, "detail": v.detail}))
            .collect();
        print_json(&serde_json::json!({"ok": violations.is_empty(), "violations": listed}))?;
    }
    match violations.first() {
        None => {
            eprintln!("ledger verified: every invariant holds");
            Ok(())
        }
        Some(first) => anyhow::bail!(
            "ledger violation: {} ({}){}",
            first.rule,
            first.detail,
            match violations.len() {
                1 => String::new(),
                n => format!("; {n} violations in all"),
            }
        ),
    }
}

fn tenants_on(store: &pulse_store::Database) -> pulse_tenants::Tenants {
    pulse::wiring::tenants::service(store, std::sync::Arc::new(pulse_core::clock::SystemClock))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn tenant_command(
    store: &pulse_store::Database,
    command: &TenantCommand,
) -> anyhow::Result<()> {
    let tenants = tenants_on(store);
    match command {
        TenantCommand::Create { name, rate, .. } => {
            let (_, key) = tenants.create(name, *rate).await?;
            print_json(&key)
        }
        TenantCommand::List { .. } => print_json(&tenants.list().await?),
        TenantCommand::SetRate {
            name,
            rate,
            class,
            burst,
            ..
        } => {
            let class = pulse_tenants::QuotaClass::parse(class).with_context(|| {
                format!("--class {class:?}: the classes are api, events and jobs")
            })?;
            let quota = pulse_tenants::QuotaSetting {
                per_second: *rate,
                burst: burst.unwrap_or(*rate),
            };
            print_json(&tenants.set_quota(name, class, Some(quota)).await?)
        }
    }
}

async fn job_command(
    store: &pulse_store::Database,
    command: &JobCommand,
    config: &Config,
) -> anyhow::Result<()> {
    use pulse_jobs::model::{JobFilter, JobState};
    let tenant = |name: &str| {
        pulse_core::TenantId::parse(name).with_context(|| format!("--tenant {name:?}"))
    };
    let job_id =
        |raw: &str| uuid::Uuid::parse_str(raw).with_context(|| format!("{raw:?} is not a job id"));
    let name_filter = |value: &Option<String>, flag: &str| -> anyhow::Result<Option<String>> {
        match value {
            Some(value) if !pulse_jobs::service::is_name(value) => {
                anyhow::bail!("--{flag} {value:?}: 1 to 128 of A-Z a-z 0-9 _ . : -")
            }
            other => Ok(other.clone()),
        }
    };
    let jobs = pulse::wiring::jobs::service_on(store, config);
    match command {
        JobCommand::List {
            tenant: name,
            state,
            job_type,
            queue,
            limit,
            ..
        } => {
            let state = state
                .as_deref()
                .map(|name| {
                    JobState::parse(name).with_context(|| {
                        format!("--state {name:?}: scheduled, queued, running, retrying, succeeded, dead or cancelled")
                    })
                })
                .transpose()?;
            let filter = JobFilter {
                state,
                job_type: name_filter(job_type, "job-type")?,
                queue: name_filter(queue, "queue")?,
            };
            anyhow::ensure!((1..=500).contains(limit), "--limit must be 1 to 500");
            let page = jobs.list(&tenant(name)?, &filter, None, *limit).await?;
            let page: Vec<serde_json::Value> =
                page.into_iter().map(pulse_http::api::job_json).collect();
            print_json(&page)
        }
        JobCommand::Show {
            job_id: id,
            tenant: name,
            ..
        } => print_json(&pulse_http::api::job_json(
            jobs.get(&tenant(name)?, job_id(id)?).await?,
        )),
        JobCommand::Retry {
            job_id: id,
            tenant: name,
            ..
        } => print_json(&pulse_http::api::job_json(
            jobs.retry(&tenant(name)?, job_id(id)?).await?,
        )),
        JobCommand::Cancel {
            job_id: id,
            tenant: name,
            ..
        } => print_json(&pulse_http::api::job_json(
            jobs.cancel(&tenant(name)?, job_id(id)?).await?,
        )),
        JobCommand::Redrive {
            tenant: name,
            job_type,
            queue,
            ..
        } => {
            let filter = JobFilter {
                state: None,
                job_type: name_filter(job_type, "job-type")?,
                queue: name_filter(queue, "queue")?,
            };
            let redriven = jobs.redrive(&tenant(name)?, &filter).await?;
            print_json(&serde_json::json!({ "redriven": redriven }))
        }
    }
}

async fn key_command(
    store: &pulse_store::Database,
    command: &KeyCommand,
    config: &Config,
) -> anyhow::Result<()> {
    let tenants = tenants_on(store);
    match command {
        KeyCommand::Create { tenant, scope, .. } => {
            let scope = pulse_tenants::Scope::parse(scope)
                .with_context(|| format!("--scope {scope:?}: the scopes are full and ingest"))?;
            print_json(&tenants.create_key(tenant, scope).await?)
        }
        KeyCommand::List { tenant, .. } => {
            let keys: Vec<serde_json::Value> = tenants
                .keys(tenant)
                .await?
                .into_iter()
                .map(|key| {
                    serde_json::json!({
                        "key_id": key.key_id,
                        "tenant_id": key.tenant,
                        "scope": key.scope,
                        "created_at_ms": key.created_at_ms,
                        "revoked_at_ms": key.revoked_at_ms,
                    })
                })
                .collect();
            print_json(&keys)
        }
        KeyCommand::Revoke { key_id, .. } => {
            let key = tenants.revoke_key(key_id).await?;
            eprintln!(
                "revoked key {} of tenant {}: refused everywhere within {} ms",
                key.key_id, key.tenant, config.auth.key_cache_ttl_ms
            );
            Ok(())
        }
    }
}

/// Runs the simulator against a running Pulse and prints its summary.
async fn simulate(settings: SimSettings, json: bool) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    pulse_runtime::cancel_on_signals(stop.clone());
    eprintln!(
        "simulating {} drivers and {} riders against {} (seed {}; Ctrl-C stops)",
        settings.drivers, settings.riders, settings.target, settings.seed
    );
    let summary = pulse_sim::run(settings, stop, Progress::stderr()).await?;
    print_summary(&summary, json)
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{summary}");
    }
    let sent = summary.orders.sent + summary.pings.sent;
    let succeeded = summary.orders.succeeded + summary.pings.succeeded;
    anyhow::ensure!(
        sent == 0 || succeeded > 0,
        "every one of the {sent} requests failed (see the errors above)"
    );
    Ok(())
}

/// `pulse up` with the simulator driving it: the first thing to try.
async fn demo(
    config: &Config,
    city: &CityArgs,
    duration: std::time::Duration,
) -> anyhow::Result<()> {
    // Ctrl-C stops the city first; its requests in flight finish, then Pulse drains. A Pulse
    // that stops on its own (a failed task) stops the city too.
    let city_stop = CancellationToken::new();
    pulse_runtime::cancel_on_signals(city_stop.clone());
    let pulse_stop = CancellationToken::new();
    // Checked before Pulse starts, so a bad value costs no start-up.
    city.settings(String::from("http://127.0.0.1"), duration)
        .validate()?;
    let app = Application::build(config, Role::ALL.into_iter().collect(), pulse_stop.clone())
        .await
        .context("pulse could not start")?;
    let host = match config.listen.ip() {
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    let url = format!("http://{}", std::net::SocketAddr::new(host, app.port()));
    let api_key = demo_key(config, &app).await?;
    let running = {
        let city_stop = city_stop.clone();
        tokio::spawn(async move {
            let outcome = app.run_until_stopped().await;
            city_stop.cancel();
            outcome
        })
    };
    let mut settings = city.settings(url.clone(), duration);
    settings.api_key = Some(api_key.clone());
    eprintln!(
        "\n  Pulse is running (embedded data in {}).\n  Watch the live surge map: {url}/map#key={api_key}\n  \
         Simulating {} drivers and {} riders (seed {}). Ctrl-C stops.\n",
        config.data_dir.display(),
        settings.drivers,
        settings.riders,
        settings.seed
    );
    let outcome = pulse_sim::run(settings, city_stop, Progress::stderr()).await;
    pulse_stop.cancel();
    running.await.context("pulse task")??;
    print_summary(&outcome?, false)
}

/// The key the demo's city and map use: the one this start created, else the one in the data
/// directory, else a new `full` key of the `default` tenant (written there for next time).
async fn demo_key(config: &Config, app: &Application) -> anyhow::Result<String> {
    use pulse::wiring::tenants;
    if let Some(key) = app.created_key() {
        return Ok(key.api_key.clone());
    }
    if let Some(key) = tenants::read_key_file(&config.data_dir)? {
        return Ok(key);
    }
    let service = tenants::service(
        &app.backends().store,
        std::sync::Arc::new(pulse_core::clock::SystemClock),
    );
    let key = service
        .create_key(pulse_core::TenantId::DEFAULT, pulse_tenants::Scope::Full)
        .await
        .context("cannot create a key for the demo")?;
    tenants::write_key_file(&config.data_dir, &key.api_key)?;
    Ok(key.api_key)
}

/// Prints help and version as clap does; any other parse error as one line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see pulse --help)");
            ExitCode::from(2)
        }
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    let message = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
