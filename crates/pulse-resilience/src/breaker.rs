//! A circuit breaker: after `failure_threshold` consecutive failures it opens and refuses calls
//! at once; after a jittered pause (growing from `open_min` to `open_max` while the backend stays
//! down) it lets **one** probe through (half-open); the probe's success closes it, its failure
//! opens it again.
//!
//! The state machine and its backoff are `failsafe`'s; this adds what a hot path needs on top:
//! a single probe while half-open (failsafe admits every call then, so a burst would queue behind
//! a hung backend) and the state as a metric.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};

/// Breaker state by breaker: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "pulse_circuit_breaker_state";
/// State changes by breaker and new state.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "pulse_circuit_breaker_transitions_total";
/// Calls refused without trying, by breaker.
pub const BREAKER_REJECTED_TOTAL: &str = "pulse_circuit_breaker_rejected_total";

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe call may go through.
    HalfOpen,
    /// Calls are refused.
    Open,
}

impl BreakerState {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::HalfOpen,
            2 => Self::Open,
            _ => Self::Closed,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    /// `closed`, `half_open` or `open`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// How a breaker trips and recovers.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// First pause before a probe.
    pub open_min: Duration,
    /// Longest pause before a probe.
    pub open_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_min: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
        }
    }
}

/// A breaker and the call timeout it guards, as a configuration section (`[quote_breaker]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Longest one guarded call waits before it counts as failed, milliseconds.
    pub call_timeout_ms: u64,
    /// Consecutive failed calls that open the breaker.
    pub failure_threshold: u32,
    /// First pause before probing again, milliseconds (doubles while the backend stays down).
    pub open_min_ms: u64,
    /// Longest pause before probing, milliseconds.
    pub open_max_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            call_timeout_ms: 100,
            failure_threshold: 5,
            open_min_ms: 500,
            open_max_ms: 10_000,
        }
    }
}

impl BreakerConfig {
    /// Why the section (named `section` in the file) is unusable, naming the key.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.call_timeout_ms == 0 || self.failure_threshold == 0 || self.open_min_ms == 0 {
            return Err(format!(
                "{section}.call_timeout_ms, failure_threshold and open_min_ms must be positive"
            ));
        }
        if self.open_max_ms < self.open_min_ms {
            return Err(format!(
                "{section}.open_max_ms must be at least open_min_ms"
            ));
        }
        Ok(())
    }

    /// The breaker's settings.
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: self.failure_threshold,
            open_min: Duration::from_millis(self.open_min_ms),
            open_max: Duration::from_millis(self.open_max_ms),
        }
    }

    /// The guarded call's timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

/// Publishes state changes as metrics and log lines.
#[derive(Debug, Clone)]
struct StateReporter {
    name: &'static str,
    state: Arc<AtomicU8>,
}

impl StateReporter {
    fn enter(&self, state: BreakerState) {
        let previous = self.state.swap(state.code(), Ordering::SeqCst);
        metrics::gauge!(BREAKER_STATE, "breaker" => self.name).set(f64::from(state.code()));
        if previous == state.code() {
            return;
        }
        metrics::counter!(BREAKER_TRANSITIONS_TOTAL, "breaker" => self.name, "state" => state.name())
            .increment(1);
        match state {
            BreakerState::Open => {
                tracing::warn!(
                    breaker = self.name,
                    "circuit breaker opened: calls fail fast"
                )
            }
            BreakerState::HalfOpen => {
                tracing::info!(breaker = self.name, "circuit breaker half-open: probing")
            }
            BreakerState::Closed => tracing::info!(breaker = self.name, "circuit breaker closed"),
        }
    }
}

impl Instrument for StateReporter {
    fn on_call_rejected(&self) {
        metrics::counter!(BREAKER_REJECTED_TOTAL, "breaker" => self.name).increment(1);
    }

    fn on_open(&self) {
        self.enter(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.enter(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.enter(BreakerState::Closed);
    }
}

/// Pauses before a probe: doubling from `min` up to `max`, each between half and all of that
/// ("equal jitter"), so instances that lost the same backend do not probe in lockstep.
/// (failsafe's own backoffs start at whole seconds; the quote path wants sub-second ones.)
#[derive(Debug, Clone)]
struct Pause {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Iterator for Pause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let full = self
            .min
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        let jitter = fastrand::u64(0..=half.as_millis() as u64);
        Some(half + Duration::from_millis(jitter))
    }
}

type Machine = StateMachine<ConsecutiveFailures<Pause>, StateReporter>;

/// A circuit breaker. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    machine: Machine,
    state: Arc<AtomicU8>,
    probing: Arc<AtomicBool>,
    /// Serialises the state machine's transitions with the state they report: failsafe calls
    /// its instrument after releasing its own lock, so without this a late `on_half_open` could
    /// overwrite a newer `on_closed` and leave `admit` believing the breaker half-open.
    transitions: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Leave to make one call; report how it went with [`Permit::succeeded`] or [`Permit::failed`].
/// A permit dropped without a report counts as neither, and frees the probe slot.
#[derive(Debug)]
#[must_use = "report the call's outcome"]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
}

impl Permit {
    /// The call worked (or failed in a way that says nothing about the backend's health).
    pub fn succeeded(self) {
        let _transition = self.breaker.lock();
        self.breaker.machine.on_success();
    }

    /// The backend failed or did not answer in time.
    pub fn failed(self) {
        let _transition = self.breaker.lock();
        self.breaker.machine.on_error();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::SeqCst);
        }
    }
}

impl Breaker {
    /// A closed breaker named `name` (the `breaker` label of its metrics).
    pub fn new(name: &'static str, settings: &BreakerSettings) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed.code()));
        let reporter = StateReporter {
            name,
            state: state.clone(),
        };
        let pause = Pause {
            min: settings.open_min,
            max: settings.open_max.max(settings.open_min),
            attempt: 0,
        };
        let policy = failure_policy::consecutive_failures(settings.failure_threshold.max(1), pause);
        Self {
            name,
            machine: StateMachine::new(policy, reporter),
            state,
            probing: Arc::new(AtomicBool::new(false)),
            transitions: Arc::new(Mutex::new(())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // Guards no data, so a panic while holding it leaves nothing half-done.
        self.transitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the breaker is now.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_code(self.state.load(Ordering::SeqCst))
    }

    /// Leave to call the backend, or `None` when the breaker refuses (open, or half-open with
    /// its probe already out).
    pub fn admit(&self) -> Option<Permit> {
        let _transition = self.lock();
        if !self.machine.is_call_permitted() {
            return None;
        }
        if self.state() != BreakerState::HalfOpen {
            return Some(Permit {
                breaker: self.clone(),
                probe: false,
            });
        }
        let first = self
            .probing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if first {
            Some(Permit {
                breaker: self.clone(),
                probe: true,
            })
        } else {
            metrics::counter!(BREAKER_REJECTED_TOTAL, "breaker" => self.name).increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "test",
            &BreakerSettings {
                failure_threshold: 3,
                open_min: Duration::from_millis(100),
                open_max: Duration::from_millis(100),
            },
        )
    }

    /// A breaker opened by three failures whose pause has passed: the next call may probe.
    fn opened_and_paused() -> Breaker {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.admit().expect("closed").failed();
        }
        // The pause is jittered between half of 100 ms and 100 ms.
        std::thread::sleep(Duration::from_millis(150));
        breaker
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let breaker = breaker();
        breaker.admit().expect("closed").failed();
        breaker.admit().expect("closed").failed();
        breaker.admit().expect("closed").succeeded();
        breaker.admit().expect("closed").failed();
        breaker.admit().expect("closed").failed();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.admit().expect("closed").failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_none(), "open refuses at once");
    }

    #[test]
    fn after_the_pause_one_probe_goes_through_and_its_success_closes_it() {
        let breaker = opened_and_paused();
        let probe = breaker.admit().expect("a probe after the pause");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().is_none(), "one probe at a time");
        probe.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admit().is_some());
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let breaker = opened_and_paused();
        breaker.admit().expect("probe").failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let breaker = opened_and_paused();
        drop(breaker.admit().expect("probe"));
        assert!(breaker.admit().is_some(), "the next call may probe");
    }
}
