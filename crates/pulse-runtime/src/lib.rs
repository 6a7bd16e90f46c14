//! Pulse's process runtime: which roles a process plays, the background tasks that serve them,
//! graceful shutdown, and the consumer loop every processor shares ([`processor`]).
//!
//! Every long-running piece (HTTP server, relay, consumers) is a named task under one
//! [`Supervisor`]. The first SIGTERM/SIGINT cancels a shared [`CancellationToken`]: tasks stop taking
//! new work, finish what is in flight and commit it, and the supervisor waits for them up to a
//! drain timeout. A second signal exits at once. If any task fails, the others are stopped too, so
//! a process never limps on with half its roles dead.

pub mod processor;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// A role a Pulse process can play: one service (the HTTP gateway, the outbox relay) or one
/// processor (named as its [`processor::Processor::name`]), so any of them can run alone in its
/// own process (`pulse serve --role engine`) and `pulse up` runs them all. A role is listed here
/// only once it does work: the marketplace, wallet and profiles processors join with their
/// domains.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP ingress: validation, idempotency, business rows + outbox in one transaction.
    Gateway,
    /// The surge processor: consumes demand and supply and keeps the surge windows.
    Engine,
    /// Moves committed outbox rows to the log.
    Relay,
    /// The event gateway's processor: runs each tenant's pipeline over `events.ingest` and
    /// delivers to its sinks (and redelivers parked events).
    Pipeline,
    /// The jobs' data plane: leases jobs and runs them through their handlers.
    Worker,
    /// The marketplace's tracker: keeps the geo index and the drivers' statuses from pings and
    /// ride events.
    Tracker,
    /// The marketplace's dispatcher: matches new orders to the nearest available driver.
    Dispatch,
    /// The wallet: posts finished rides' holds and checks the ledger's invariants.
    Wallet,
    /// Customer profiles: identity resolution and enrichment from `events.processed`, and the
    /// hot copies' reconciliation.
    Profiles,
}

impl Role {
    /// Every role, as `pulse up` runs them.
    pub const ALL: [Role; 9] = [
        Role::Gateway,
        Role::Engine,
        Role::Relay,
        Role::Pipeline,
        Role::Worker,
        Role::Tracker,
        Role::Dispatch,
        Role::Wallet,
        Role::Profiles,
    ];

    /// The role's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Engine => "engine",
            Role::Relay => "relay",
            Role::Pipeline => "pipeline",
            Role::Worker => "worker",
            Role::Tracker => "tracker",
            Role::Dispatch => "dispatch",
            Role::Wallet => "wallet",
            Role::Profiles => "profiles",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: expected one or more of gateway, engine, relay, pipeline, worker, tracker, dispatch, wallet, profiles (comma-separated)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == name.trim())
            .ok_or_else(|| UnknownRole(name.trim().to_owned()))
    }
}

/// Parses a comma-separated role list such as `gateway,relay`.
pub fn parse_roles(list: &str) -> Result<BTreeSet<Role>, UnknownRole> {
    let roles = list
        .split(',')
        .filter(|name| !name.trim().is_empty())
        .map(Role::from_str)
        .collect::<Result<BTreeSet<_>, _>>()?;
    if roles.is_empty() {
        return Err(UnknownRole(list.to_owned()));
    }
    Ok(roles)
}

/// Error returned by a supervised task.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Why a supervised process stopped uncleanly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A task failed; the others were stopped.
    #[error("task {task} failed: {error}")]
    TaskFailed {
        /// Task name.
        task: String,
        /// Its error.
        error: TaskError,
    },
    /// A task panicked.
    #[error("task {0} panicked")]
    TaskPanicked(String),
    /// Tasks were still running when the drain timeout elapsed.
    #[error("tasks still running after the {timeout:?} drain timeout: {tasks:?}")]
    DrainTimeout {
        /// The timeout.
        timeout: Duration,
        /// The tasks that were aborted.
        tasks: Vec<String>,
    },
}

/// Named background tasks sharing one shutdown token.
#[derive(Debug)]
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<(String, Result<(), TaskError>)>,
    /// Names of the tasks still running.
    names: Vec<String>,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            tasks: JoinSet::new(),
            names: Vec::new(),
        }
    }

    /// The token tasks watch to know when to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts `task` under `name`. It must return soon after the shutdown token is cancelled.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = Result<(), TaskError>> + Send + 'static,
    ) {
        let name = name.into();
        self.names.push(name.clone());
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Waits until shutdown is requested or a task ends, then gives every task up to
    /// `drain_timeout` to finish. Returns the first failure, if any.
    pub async fn run_until_stopped(mut self, drain_timeout: Duration) -> Result<(), RuntimeError> {
        let mut first_error = None;
        tokio::select! {
            // Checked first: a task that ends because shutdown was requested is not news.
            biased;
            () = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                first_error = self.finished(joined);
                if first_error.is_none() {
                    tracing::info!("a task finished on its own; stopping the others");
                }
                self.shutdown.cancel();
            }
        }
        let drained = tokio::time::timeout(drain_timeout, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Some(err) = self.finished(joined) {
                    first_error.get_or_insert(err);
                }
            }
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            return Err(first_error.unwrap_or(RuntimeError::DrainTimeout {
                timeout: drain_timeout,
                tasks: std::mem::take(&mut self.names),
            }));
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Supervisor {
    /// Notes that a task ended (so `names` lists only the running ones) and turns its outcome
    /// into an error, if it failed.
    fn finished(
        &mut self,
        joined: Result<(String, Result<(), TaskError>), tokio::task::JoinError>,
    ) -> Option<RuntimeError> {
        if let Ok((name, _)) = &joined {
            self.names.retain(|running| running != name);
        }
        outcome(joined)
    }
}

fn outcome(
    joined: Result<(String, Result<(), TaskError>), tokio::task::JoinError>,
) -> Option<RuntimeError> {
    match joined {
        Ok((name, Ok(()))) => {
            tracing::debug!(task = %name, "task stopped");
            None
        }
        Ok((task, Err(error))) => {
            tracing::error!(%task, %error, "task failed");
            Some(RuntimeError::TaskFailed { task, error })
        }
        Err(join_error) => Some(RuntimeError::TaskPanicked(format!("{join_error}"))),
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT and exits the process on the second.
pub fn cancel_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining (send the signal again to exit at once)");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

/// SIGTERM, SIGINT (Ctrl-C) or SIGHUP (the terminal went away): all mean "drain and stop"; Pulse
/// has nothing to reload.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut terminate), Ok(mut hangup)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "cannot listen for SIGTERM/SIGHUP; only Ctrl-C stops Pulse");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists_parse_and_reject_unknown_names() {
        let roles = parse_roles("gateway, relay").unwrap();
        assert_eq!(
            roles.into_iter().collect::<Vec<_>>(),
            vec![Role::Gateway, Role::Relay]
        );
        let err = parse_roles("gateway,pricing").unwrap_err();
        assert!(err.to_string().contains("\"pricing\""), "{err}");
        assert_eq!(
            parse_roles("worker")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![Role::Worker]
        );
        assert!(parse_roles("segments").is_err());
        assert!(parse_roles(" , ").is_err());
    }

    #[tokio::test]
    async fn tasks_drain_after_shutdown() {
        let token = CancellationToken::new();
        let mut supervisor = Supervisor::new(token.clone());
        let seen = token.clone();
        supervisor.spawn("waits", async move {
            seen.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        });
        token.cancel();
        supervisor
            .run_until_stopped(Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_is_reported() {
        let token = CancellationToken::new();
        let mut supervisor = Supervisor::new(token.clone());
        let watcher = token.clone();
        supervisor.spawn("steady", async move {
            watcher.cancelled().await;
            Ok(())
        });
        supervisor.spawn("broken", async { Err("backend gone".into()) });
        let err = supervisor
            .run_until_stopped(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("broken failed: backend gone"),
            "{err}"
        );
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_ignoring_shutdown_is_aborted_after_the_drain_timeout() {
        let token = CancellationToken::new();
        let mut supervisor = Supervisor::new(token.clone());
        supervisor.spawn("stubborn", std::future::pending());
        token.cancel();
        let err = supervisor
            .run_until_stopped(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::DrainTimeout { .. }), "{err}");
    }
}
