//! The rate limiter port: per-key quotas (a tenant's requests, an API key's events) enforced with
//! the generic cell rate algorithm (GCRA), in-process or shared through Redis.
//!
//! # The algorithm, as every adapter implements it
//!
//! A [`Quota`] of `per_second` cells a second with a `burst` of cells has an *emission interval*
//! `T = 1 / per_second` (rounded to the microsecond, at least 1 µs) and a *tolerance*
//! `τ = T × burst`. Each key keeps one number, its *theoretical arrival time* (TAT): the instant
//! at which its bucket is full again. A key never seen, or whose TAT is in the past, has a full
//! bucket (TAT = now). A call of `cost` cells at `now`:
//!
//! * computes `tat = max(TAT, now)` and `new_tat = tat + cost × T`;
//! * is **allowed** iff `new_tat − now ≤ τ`: the key's TAT becomes `new_tat`;
//! * is otherwise **denied** and changes nothing — a denied call consumes no cell, so a client
//!   hammering a limiter does not push its own recovery further away.
//!
//! What a [`RateDecision`] reports, with `backlog = tat − now` before the call (the time until
//! the bucket is full) and `cells(d) = ⌊max(d, 0) / T⌋`:
//!
//! | | allowed | denied | `cost > burst` |
//! |---|---|---|---|
//! | `allowed` | `true` | `false` | `false` |
//! | `remaining` | `cells(τ − (new_tat − now))` | `cells(τ − backlog)` | `cells(τ − backlog)` |
//! | `retry_after` | zero | `new_tat − now − τ` | `backlog` |
//! | `reset` | `new_tat − now` | `backlog` | `backlog` |
//!
//! `remaining` is the number of single cells the next call could take at once; a denied call's
//! `retry_after` is the earliest time after which the *same* call passes (if nobody else spends
//! the key's cells meanwhile). A call costing more than `burst` can never pass, however long it
//! waits: it is denied with `retry_after` = the time until the bucket is full (zero when it
//! already is), so callers must check `cost <= quota.burst` themselves (or split the batch)
//! rather than retry. A `cost` of zero reads the key without consuming anything.
//!
//! Both adapters compute in integer microseconds so they agree to the microsecond given the same
//! clock: [`decide`] is the reference implementation the in-process adapter runs, and the Redis
//! adapter's script is a line-by-line copy of it running on Redis's clock.

use std::time::Duration;

use async_trait::async_trait;

use crate::{PortError, PortResult};

/// Highest sustained rate a quota may have: one cell per microsecond, the resolution of the
/// emission interval.
pub const MAX_PER_SECOND: f64 = 1_000_000.0;

/// Longest tolerance (`burst` emission intervals) a quota may have. It bounds how long a key
/// lives in a limiter, and keeps every time a limiter computes, in microseconds since the epoch,
/// far inside the integers an `f64` holds exactly (Redis's Lua has no other numbers).
pub const MAX_TOLERANCE: Duration = Duration::from_secs(31 * 24 * 3_600);

const MICROS_PER_SECOND: f64 = 1_000_000.0;

/// A quota: a sustained rate and how many cells may be spent at once.
///
/// The fields are public for configuration structs and literals; a limiter refuses an invalid
/// quota with [`PortError::Invalid`], so [`Quota::new`] (or [`Quota::validate`] when loading
/// configuration) is the way to find out early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained rate in cells per second; finite, `> 0` and at most [`MAX_PER_SECOND`].
    pub per_second: f64,
    /// Cells a full bucket holds: how many calls of cost 1 pass at once; `>= 1`.
    pub burst: u32,
}

/// Why a quota cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quota: {0}")]
pub struct InvalidQuota(String);

impl Quota {
    /// A quota of `per_second` cells a second, `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, InvalidQuota> {
        let quota = Self { per_second, burst };
        quota.validate()?;
        Ok(quota)
    }

    /// `n` cells a second, all of which may be spent at once.
    pub fn per_second(n: u32) -> Result<Self, InvalidQuota> {
        Self::new(f64::from(n), n)
    }

    /// `n` cells a minute, all of which may be spent at once.
    pub fn per_minute(n: u32) -> Result<Self, InvalidQuota> {
        Self::new(f64::from(n) / 60.0, n)
    }

    /// `n` cells an hour, all of which may be spent at once.
    pub fn per_hour(n: u32) -> Result<Self, InvalidQuota> {
        Self::new(f64::from(n) / 3_600.0, n)
    }

    /// The same rate with a bucket of `burst` cells.
    pub fn with_burst(self, burst: u32) -> Result<Self, InvalidQuota> {
        Self::new(self.per_second, burst)
    }

    /// Checks the limits documented on the fields and [`MAX_TOLERANCE`].
    pub fn validate(&self) -> Result<(), InvalidQuota> {
        let rate = self.per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_PER_SECOND) {
            return Err(InvalidQuota(format!(
                "per_second must be a number above 0 and at most {MAX_PER_SECOND}, got {rate}"
            )));
        }
        if self.burst == 0 {
            return Err(InvalidQuota("burst must be at least 1".into()));
        }
        let tolerance_us = (MICROS_PER_SECOND / rate).round() * f64::from(self.burst);
        if tolerance_us > MAX_TOLERANCE.as_micros() as f64 {
            return Err(InvalidQuota(format!(
                "a burst of {} at {rate}/s takes longer than {MAX_TOLERANCE:?} to refill",
                self.burst
            )));
        }
        Ok(())
    }

    /// `T`: the time one cell takes to come back, in whole microseconds (at least one).
    pub fn emission_interval_us(&self) -> i64 {
        // Saturating float-to-int conversion; a valid quota's interval is at most
        // MAX_TOLERANCE, far inside i64.
        ((MICROS_PER_SECOND / self.per_second).round() as i64).max(1)
    }

    /// `T`, as a duration.
    pub fn emission_interval(&self) -> Duration {
        micros(self.emission_interval_us())
    }

    /// `τ = T × burst`: the time an empty bucket takes to fill.
    pub fn tolerance(&self) -> Duration {
        micros(self.emission_interval_us() * i64::from(self.burst))
    }
}

/// The answer to one [`RateLimiter::check`]; see the [module docs](self) for each field's
/// value in each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the call may go ahead; its cells are spent only when it may.
    pub allowed: bool,
    /// Cells left after this call (for `X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Zero when allowed; else how long until the same call would pass (for `Retry-After`).
    pub retry_after: Duration,
    /// How long until the key's bucket is full again (for `X-RateLimit-Reset`).
    pub reset: Duration,
}

/// What [`decide`] found: the decision, and the TAT to store when the call was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The answer to the caller.
    pub decision: RateDecision,
    /// The key's new TAT (µs since the epoch) when the call spent cells; `None` when nothing
    /// changes (denied, or a cost of zero). The entry may be dropped once the TAT has passed.
    pub new_tat_us: Option<i64>,
}

/// GCRA for one call, as described in the [module docs](self): `stored_tat_us` is the key's TAT
/// (`None` when absent), `now_us` the limiter's time, both in microseconds since the epoch.
///
/// The reference implementation of the port: the in-process adapter runs it, the Redis
/// adapter's script mirrors it.
pub fn decide(
    quota: &Quota,
    cost: u32,
    stored_tat_us: Option<i64>,
    now_us: i64,
) -> PortResult<Verdict> {
    quota
        .validate()
        .map_err(|err| PortError::Invalid(err.to_string()))?;
    let interval = quota.emission_interval_us();
    let tolerance = interval * i64::from(quota.burst);
    let tat = stored_tat_us.map_or(now_us, |stored| stored.max(now_us));
    let backlog = tat - now_us;
    let cells = |room: i64| u32::try_from(room.max(0) / interval).unwrap_or(u32::MAX);
    let denied = |retry_after: i64| Verdict {
        decision: RateDecision {
            allowed: false,
            remaining: cells(tolerance - backlog),
            retry_after: micros(retry_after),
            reset: micros(backlog),
        },
        new_tat_us: None,
    };
    if cost > quota.burst {
        return Ok(denied(backlog));
    }
    // cost <= burst, so cost × T <= τ <= MAX_TOLERANCE: no overflow.
    let new_tat = tat + interval * i64::from(cost);
    let new_backlog = new_tat - now_us;
    if new_backlog > tolerance {
        return Ok(denied(new_backlog - tolerance));
    }
    Ok(Verdict {
        decision: RateDecision {
            allowed: true,
            remaining: cells(tolerance - new_backlog),
            retry_after: Duration::ZERO,
            reset: micros(new_backlog),
        },
        new_tat_us: (cost > 0).then_some(new_tat),
    })
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Per-key quotas. Keys are the caller's (already namespaced per tenant and deployment); two
/// keys never share cells.
///
/// An adapter that cannot answer returns a retryable [`PortError`]; whether a request then
/// passes is the caller's policy: wrap the limiter to fail open (`pulse_resilience`'s
/// `FailOpenRateLimiter`), or use it as is to fail closed.
#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Spends `cost` cells of `key`'s bucket under `quota` if they are there (see the
    /// [module docs](self)). An invalid quota is refused with [`PortError::Invalid`].
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000_000;

    fn quota(per_second: f64, burst: u32) -> Quota {
        Quota::new(per_second, burst).expect("valid quota")
    }

    /// Runs calls of `costs` at `NOW`, threading the stored TAT through them.
    fn run(quota: &Quota, costs: &[u32]) -> (Vec<RateDecision>, Option<i64>) {
        let mut tat = None;
        let decisions = costs
            .iter()
            .map(|cost| {
                let verdict = decide(quota, *cost, tat, NOW).expect("decide");
                tat = verdict.new_tat_us.or(tat);
                verdict.decision
            })
            .collect();
        (decisions, tat)
    }

    #[test]
    fn quotas_outside_the_limits_are_refused() {
        for (per_second, burst) in [
            (0.0, 1),
            (-1.0, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (MAX_PER_SECOND * 2.0, 1),
            (1.0, 0),
            (1.0 / 86_400.0, 32),
        ] {
            assert!(
                Quota::new(per_second, burst).is_err(),
                "{per_second}/s burst {burst}"
            );
        }
        let err = decide(
            &Quota {
                per_second: 0.0,
                burst: 1,
            },
            1,
            None,
            NOW,
        )
        .expect_err("invalid quota");
        assert!(matches!(err, PortError::Invalid(_)), "{err}");
    }

    #[test]
    fn a_zero_rate_of_either_sign_is_refused_as_a_rate() {
        for zero in [0.0, -0.0] {
            let err = Quota::new(zero, 1).expect_err("a zero rate");
            assert!(
                err.to_string()
                    .contains("per_second must be a number above 0"),
                "{zero}: {err}"
            );
        }
        assert!(Quota::new(f64::MIN_POSITIVE, 1).is_err(), "never refills");
        assert_eq!(
            quota(MAX_PER_SECOND, 1).emission_interval_us(),
            1,
            "the fastest rate"
        );
    }

    #[test]
    fn a_tolerance_of_exactly_31_days_is_accepted_and_one_interval_more_refused() {
        let month = Duration::from_secs(31 * 86_400);
        let once_a_second = quota(1.0, 2_678_400);
        assert_eq!(once_a_second.tolerance(), month);
        assert!(Quota::new(1.0, 2_678_401).is_err());
        let once_a_day = quota(1.0 / 86_400.0, 31);
        assert_eq!(once_a_day.tolerance(), month);
        assert!(once_a_day.with_burst(32).is_err());
        let at_once = decide(&once_a_day, 31, None, NOW).expect("decide");
        assert!(at_once.decision.allowed, "a full month's worth at once");
        assert_eq!(at_once.decision.reset, month);
    }

    #[test]
    fn helpers_spread_n_cells_over_their_period_with_a_burst_of_n() {
        let minute = Quota::per_minute(120).expect("valid");
        assert_eq!(minute.emission_interval(), Duration::from_millis(500));
        assert_eq!(minute.tolerance(), Duration::from_secs(60));
        assert_eq!(
            Quota::per_hour(3_600).expect("valid").emission_interval(),
            Duration::from_secs(1)
        );
        let second = Quota::per_second(20).expect("valid");
        assert_eq!(second.emission_interval(), Duration::from_millis(50));
        assert_eq!(second.with_burst(5).expect("valid").burst, 5);
        assert!(Quota::per_minute(0).is_err());
    }

    #[test]
    fn a_fresh_key_allows_burst_calls_then_denies_for_one_interval() {
        let (decisions, _) = run(&quota(20.0, 3), &[1, 1, 1, 1]);
        let remaining: Vec<u32> = decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0, 0]);
        assert!(decisions[..3].iter().all(|d| d.allowed));
        assert_eq!(
            decisions[3],
            RateDecision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(50),
                reset: Duration::from_millis(150),
            }
        );
    }

    #[test]
    fn a_denied_call_changes_nothing_and_passes_exactly_at_retry_after() {
        let q = quota(20.0, 3);
        let (_, tat) = run(&q, &[3]);
        let denied = decide(&q, 2, tat, NOW).expect("decide");
        assert_eq!(denied.new_tat_us, None);
        assert_eq!(denied.decision.retry_after, Duration::from_millis(100));
        let early = decide(&q, 2, tat, NOW + 99_999).expect("decide");
        assert!(!early.decision.allowed);
        let on_time = decide(&q, 2, tat, NOW + 100_000).expect("decide");
        assert!(on_time.decision.allowed);
        assert_eq!(on_time.decision.remaining, 0);
    }

    #[test]
    fn a_cost_above_burst_never_passes_and_reports_the_time_to_a_full_bucket() {
        let q = quota(20.0, 3);
        let fresh = decide(&q, 4, None, NOW).expect("decide");
        assert_eq!(
            fresh.decision,
            RateDecision {
                allowed: false,
                remaining: 3,
                retry_after: Duration::ZERO,
                reset: Duration::ZERO,
            }
        );
        let (_, tat) = run(&q, &[1]);
        let spent = decide(&q, 4, tat, NOW).expect("decide");
        assert_eq!(spent.decision.retry_after, Duration::from_millis(50));
        assert_eq!(spent.decision.remaining, 2);
        assert_eq!(spent.new_tat_us, None);
    }

    #[test]
    fn a_cost_of_zero_reads_without_spending() {
        let q = quota(20.0, 3);
        let (decisions, tat) = run(&q, &[1, 0]);
        assert_eq!(decisions[1].remaining, 2);
        assert_eq!(decisions[1].reset, Duration::from_millis(50));
        assert_eq!(tat, Some(NOW + 50_000), "only the first call spent");
        assert_eq!(decide(&q, 0, None, NOW).expect("decide").new_tat_us, None);
    }

    #[test]
    fn a_tat_in_the_past_is_a_full_bucket() {
        let q = quota(20.0, 3);
        let stale = decide(&q, 1, Some(NOW - 10_000_000), NOW).expect("decide");
        assert_eq!(stale, decide(&q, 1, None, NOW).expect("decide"));
    }

    #[test]
    fn a_quota_lowered_below_the_backlog_reports_no_cells_and_waits_for_the_excess() {
        // Spent under a burst of 10, checked under a burst of 2: the backlog (0.5 s) exceeds
        // the new tolerance (0.1 s).
        let (_, tat) = run(&quota(20.0, 10), &[10]);
        let lowered = decide(&quota(20.0, 2), 1, tat, NOW).expect("decide");
        assert!(!lowered.decision.allowed);
        assert_eq!(lowered.decision.remaining, 0);
        assert_eq!(lowered.decision.retry_after, Duration::from_millis(450));
    }
}
