//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        /// Comma-separated roles: gateway, engine, relay, worker
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
}

impl Command {
    /// The settings flags of whichever command was given.
    pub fn common(&self) -> &CommonArgs {
        match self {
            Command::Up { common }
            | Command::Serve { common, .. }
            | Command::Migrate { common } => common,
        }
    }
}
