//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pulse_sim::city::CityBox;
use pulse_sim::SimSettings;

use crate::config::FlagOverrides;

/// Pulse: a real-time event platform for on-demand marketplaces.
#[derive(Debug, Parser)]
#[command(name = "pulse", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file (TOML); flags and PULSE_* variables override it
    #[arg(long, value_name = "FILE", env = "PULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides of single settings.
    #[command(flatten)]
    pub flags: FlagOverrides,
}

/// Pulse's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process (embedded backends unless told otherwise)
    Up {
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run only the named roles, for split deployments on PostgreSQL, Kafka and Redis
    Serve {
        /// Comma-separated roles: gateway (HTTP API), relay (outbox to log), engine (surge
        /// processor), pipeline (event gateway's sinks), worker (background jobs), tracker
        /// (driver positions), dispatch (matching), wallet (ride payments, ledger checks)
        #[arg(long, value_name = "ROLES", required = true)]
        role: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Apply the schema migrations to the store and exit
    Migrate {
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Drive a running Pulse with a simulated city of drivers and riders, over its HTTP API
    Simulate {
        /// Base URL of the Pulse to drive (http://)
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080", value_parser = parse_target)]
        target: String,
        /// How long to run, e.g. 90s or 10m (0 = until Ctrl-C)
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Print the closing summary as JSON on stdout (progress stays on stderr)
        #[arg(long)]
        json: bool,
        /// The API key to send (default: the key `pulse up` wrote into the data directory)
        #[arg(
            long,
            value_name = "KEY",
            env = "PULSE_API_KEY",
            hide_env_values = true
        )]
        api_key: Option<String>,
        /// Data directory of a local `pulse up`, where its key is found when --api-key is not given
        #[arg(long, value_name = "DIR", default_value = "data")]
        data_dir: std::path::PathBuf,
        /// The city.
        #[command(flatten)]
        city: CityArgs,
    },
    /// Manage tenants (they own orders, drivers, surge and keys)
    Tenants {
        /// What to do.
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Inspect and correct a tenant's background jobs
    Jobs {
        /// What to do.
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Reconcile or rebuild customer profiles (asks the running Pulse, where the hot copies live)
    Profiles {
        /// What to do.
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Check the wallet's ledger
    Ledger {
        /// What to do.
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Run Pulse (embedded, every role) with the simulator driving it, and print the map's URL
    Demo {
        /// How long to run, e.g. 10m (0 = until Ctrl-C)
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// The city.
        #[command(flatten)]
        city: CityArgs,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `pulse profiles …`: asks the running Pulse (its admin API, with the admin token of the
/// settings' data directory or `PULSE_ADMIN_TOKEN`), which does the work where the hot copies
/// live, and shows its progress.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Compare the hot copies with the store and repair those that differ (each repair is
    /// audited: `GET /admin/v1/profiles/repairs`)
    Reconcile {
        /// Every live profile (default: the most recently changed `profiles.reconcile_sample`)
        #[arg(long)]
        full: bool,
        /// Print the report as JSON on stdout
        #[arg(long)]
        json: bool,
        /// The running Pulse [default: http://<listen>]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Recompute profiles from the archive (events_raw), with a progress bar
    Rebuild {
        /// One tenant (default: every tenant with archived profile events)
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<String>,
        /// Print each tenant's report as JSON on stdout
        #[arg(long)]
        json: bool,
        /// The running Pulse [default: http://<listen>]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `pulse ledger …`: works on the store of the given settings, also while Pulse runs on it.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check every invariant of every tenant's ledger: each transfer balances, every balance
    /// equals the sum of its entries, no ride charged twice, no hold both posted and voided,
    /// every finished ride posted, every cancelled ride's hold voided, every match held. Exits
    /// 1 naming the first violation.
    Verify {
        /// How long a finished ride may wait for its payment before it counts as unposted,
        /// e.g. 0s, 30s, 5m
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Print every violation found (up to 1000) as JSON on stdout
        #[arg(long)]
        json: bool,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `pulse tenants …`: works on the store of the given settings, also while Pulse runs on it.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first (full) key as JSON {"tenant_id", "api_key", …}
    Create {
        /// Tenant id: 1 to 32 of a-z, 0-9, '_', '-' ("default" is reserved)
        name: String,
        /// Its `api` quota, requests per second (burst: one second's worth; default: [quotas] api)
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the tenants and their quotas as JSON
    List {
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Set a tenant's quota of one class (per second; burst defaults to one second's worth)
    SetRate {
        /// Tenant id
        name: String,
        /// Units per second
        rate: u32,
        /// Quota class: api (requests), events (ingested events), jobs (enqueued jobs)
        #[arg(long, default_value = "api")]
        class: String,
        /// Units allowed at once on a full bucket
        #[arg(long)]
        burst: Option<u32>,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `pulse keys …`: works on the store of the given settings, also while Pulse runs on it.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key for a tenant and print it as JSON (shown once)
    Create {
        /// The tenant it acts for
        #[arg(long)]
        tenant: String,
        /// full (every route of the tenant) or ingest (only event-ingest routes)
        #[arg(long, default_value = "full")]
        scope: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List a tenant's keys (never their secrets) as JSON
    List {
        /// The tenant
        #[arg(long)]
        tenant: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Revoke a key: every process refuses it within auth.key_cache_ttl_ms
    Revoke {
        /// The key id (the part after pk_ and before the next _)
        key_id: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `pulse jobs …`: works on the store of the given settings, also while Pulse runs on it; every
/// answer is the API's JSON.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List a tenant's jobs, newest first
    List {
        /// The tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Only in this state: scheduled, queued, running, retrying, succeeded, dead, cancelled
        #[arg(long)]
        state: Option<String>,
        /// Only of this type
        #[arg(long)]
        job_type: Option<String>,
        /// Only in this queue
        #[arg(long)]
        queue: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Show a job with every attempt's error
    Show {
        /// The job id
        job_id: String,
        /// The tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Queue a dead or cancelled job again
    Retry {
        /// The job id
        job_id: String,
        /// The tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Cancel a job that has not finished
    Cancel {
        /// The job id
        job_id: String,
        /// The tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Queue every dead job of a tenant again (all, or by type and queue)
    Redrive {
        /// The tenant
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Only of this type
        #[arg(long)]
        job_type: Option<String>,
        /// Only in this queue
        #[arg(long)]
        queue: Option<String>,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// The simulated city (`simulate` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct CityArgs {
    /// Drivers moving around and reporting their location (at most 100000)
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(..=100_000))]
    pub drivers: u32,
    /// Riders placing orders (1 to 10000000)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub riders: u32,
    /// Orders per second over the whole city (0 to 10000)
    #[arg(long, value_name = "PER_SECOND", default_value_t = 20.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Demand hotspots, drifting over time (at most 100)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(..=100))]
    pub hotspots: u32,
    /// Time between two location reports of one driver
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// Speed of a driver on a ride, metres per second: the city runs rides sped up so a demo
    /// sees them finish (1 to 10000)
    #[arg(long, value_name = "M_PER_S", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ride_speed: u32,
    /// `berlin`, or a box SOUTH,WEST,NORTH,EAST in degrees
    #[arg(long, default_value = "berlin", allow_hyphen_values = true)]
    pub city: CityBox,
    /// Seed of every random choice: the same seed sends the same requests (default: random)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most requests in flight at once (1 to 4096)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// What each rider's wallet is topped up with before its first order, minor units (0: no
    /// top-ups)
    #[arg(long, value_name = "MINOR_UNITS", default_value_t = 50_000, value_parser = clap::value_parser!(i64).range(0..=100_000_000))]
    pub top_up: i64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of orders per second"))?;
    if (0.0..=MAX_ORDER_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be between 0 and {MAX_ORDER_RATE} orders per second"
        ))
    }
}

fn parse_target(text: &str) -> Result<String, String> {
    if text.starts_with("http://") {
        Ok(text.to_owned())
    } else {
        Err("must be an http:// URL (this build speaks plain HTTP only)".to_owned())
    }
}

/// Highest `--rate`: far beyond what one machine serves, low enough to keep a tick's orders small.
const MAX_ORDER_RATE: f64 = 10_000.0;

impl CityArgs {
    /// Simulator settings against `target` for `duration` (zero = until stopped).
    pub fn settings(&self, target: String, duration: Duration) -> SimSettings {
        let seed = self.seed.unwrap_or_else(|| {
            // Any varying number will do; it is printed so the run can be repeated.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
        SimSettings {
            target,
            drivers: self.drivers as usize,
            riders: self.riders as usize,
            order_rate: self.rate,
            hotspots: self.hotspots as usize,
            ping_interval: self.ping_interval,
            ride_speed_mps: f64::from(self.ride_speed),
            city: self.city,
            seed,
            duration: (!duration.is_zero()).then_some(duration),
            concurrency: self.concurrency as usize,
            api_key: None,
            top_up_minor: self.top_up,
        }
    }
}

impl Command {
    /// The settings flags of the command, if it runs Pulse.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Up { common }
            | Command::Serve { common, .. }
            | Command::Migrate { common }
            | Command::Demo { common, .. } => Some(common),
            Command::Tenants { command } => Some(match command {
                TenantCommand::Create { common, .. }
                | TenantCommand::List { common }
                | TenantCommand::SetRate { common, .. } => common,
            }),
            Command::Keys { command } => Some(match command {
                KeyCommand::Create { common, .. }
                | KeyCommand::List { common, .. }
                | KeyCommand::Revoke { common, .. } => common,
            }),
            Command::Jobs { command } => Some(match command {
                JobCommand::List { common, .. }
                | JobCommand::Show { common, .. }
                | JobCommand::Retry { common, .. }
                | JobCommand::Cancel { common, .. }
                | JobCommand::Redrive { common, .. } => common,
            }),
            Command::Profiles { command } => Some(match command {
                ProfilesCommand::Reconcile { common, .. }
                | ProfilesCommand::Rebuild { common, .. } => common,
            }),
            Command::Ledger { command } => Some(match command {
                LedgerCommand::Verify { common, .. } => common,
            }),
            Command::Simulate { .. } => None,
        }
    }
}
