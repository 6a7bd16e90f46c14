//! `pulse`: parses the command line, loads the configuration, runs the command, and turns any
//! failure into one line on stderr and a non-zero exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pulse::backends::{redact, Backends};
use pulse::cli::{Cli, Command};
use pulse::{telemetry, Application, Config};
use pulse_runtime::{parse_roles, CancellationToken, Role};

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
    let common = cli.command.common();
    let config = Config::load(common.config.as_deref(), &common.flags)?;
    telemetry::init_logging(&config);
    match &cli.command {
        Command::Up { .. } => serve(&config, Role::ALL.into_iter().collect()).await,
        Command::Serve { role, .. } => serve(&config, parse_roles(role)?).await,
        Command::Migrate { .. } => {
            let store = Backends::open_store(&config).await?;
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
