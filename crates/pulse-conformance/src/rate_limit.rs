//! The rate limiter suite: what every [`RateLimiter`] adapter must do, i.e. GCRA as
//! [`pulse_core::rate_limit`] documents it. Keys are unique per case so the suite can share one
//! Redis server with other tests.
//!
//! Time is the adapter's: the in-process limiter runs on a [`ManualClock`] that the suite moves
//! (so it checks values to the microsecond), Redis on its own clock, which only real waiting
//! moves. A [`LimiterUnderTest`] says which, and the cases are written for both:
//! * most use a slow quota (one cell every ten seconds), so nothing refills while a case runs on
//!   real time, however loaded the machine — counts are exact and durations are checked to lie
//!   within [`REAL_SLACK`] below their value at the first call (real time only shrinks them);
//! * the cases that must see a cell come back use a quota of four a second and wait a quarter
//!   of a second or so.

use std::sync::Arc;
use std::time::Duration;

use pulse_core::clock::ManualClock;
use pulse_core::rate_limit::{Quota, RateDecision, RateLimiter};
use pulse_core::PortError;

use crate::unique_name;

/// How much of a duration may have elapsed, on real time, between a case's first call and the
/// call whose answer it checks.
pub const REAL_SLACK: Duration = Duration::from_secs(2);

/// Added to a real wait: Redis's clock and the test's sleep are read at different instants.
const REAL_MARGIN: Duration = Duration::from_millis(10);

/// Whose time the limiter runs on.
#[derive(Debug)]
enum Time {
    Manual(ManualClock),
    Real,
}

/// A limiter and the way to let its time pass.
#[derive(Debug)]
pub struct LimiterUnderTest {
    limiter: Arc<dyn RateLimiter>,
    time: Time,
}

impl LimiterUnderTest {
    /// A limiter reading time from `clock`, which the suite advances.
    pub fn on_manual_clock(limiter: impl RateLimiter + 'static, clock: ManualClock) -> Self {
        Self {
            limiter: Arc::new(limiter),
            time: Time::Manual(clock),
        }
    }

    /// A limiter on a clock the suite cannot move (Redis's): the suite sleeps.
    pub fn on_real_time(limiter: impl RateLimiter + 'static) -> Self {
        Self {
            limiter: Arc::new(limiter),
            time: Time::Real,
        }
    }

    /// Lets `duration` pass on the limiter's clock.
    async fn wait(&self, duration: Duration) {
        match &self.time {
            Time::Manual(clock) => clock.advance(duration),
            Time::Real => tokio::time::sleep(duration + REAL_MARGIN).await,
        }
    }

    fn is_manual(&self) -> bool {
        matches!(self.time, Time::Manual(_))
    }

    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> RateDecision {
        self.limiter
            .check(key, quota, cost)
            .await
            .unwrap_or_else(|err| panic!("check {key} cost {cost}: {err}"))
    }

    /// Asserts `actual` is `expected` (manual clock) or up to [`REAL_SLACK`] below it.
    #[track_caller]
    fn assert_about(&self, actual: Duration, expected: Duration, what: &str) {
        let lowest = match self.time {
            Time::Manual(_) => expected,
            Time::Real => expected.saturating_sub(REAL_SLACK),
        };
        assert!(
            (lowest..=expected).contains(&actual),
            "{what}: {actual:?}, expected {expected:?} (down to {lowest:?})"
        );
    }
}

fn key(name: &str) -> String {
    format!("{}:{name}", unique_name("conformance-rate"))
}

/// One cell every ten seconds, five at once: nothing refills while a case runs.
fn slow() -> Quota {
    Quota::new(0.1, 5).expect("valid quota")
}

const SLOW_INTERVAL: Duration = Duration::from_secs(10);

/// Four cells a second, three at once: a cell comes back in a quarter of a second.
fn fast() -> Quota {
    Quota::new(4.0, 3).expect("valid quota")
}

const FAST_INTERVAL: Duration = Duration::from_millis(250);

/// A fresh key passes `burst` calls, each with one cell less left, then refuses the next until
/// one emission interval has passed.
pub async fn a_fresh_key_allows_burst_calls_then_denies_for_one_interval(t: &LimiterUnderTest) {
    let k = key("burst");
    for left in (0..5).rev() {
        let decision = t.check(&k, &slow(), 1).await;
        assert!(
            decision.allowed,
            "call with {left} left after it: {decision:?}"
        );
        assert_eq!(decision.remaining, left);
        assert_eq!(decision.retry_after, Duration::ZERO);
    }
    let denied = t.check(&k, &slow(), 1).await;
    assert!(!denied.allowed, "the call past the burst: {denied:?}");
    assert_eq!(denied.remaining, 0);
    t.assert_about(denied.retry_after, SLOW_INTERVAL, "retry_after");
    t.assert_about(denied.reset, SLOW_INTERVAL * 5, "reset");
}

/// Once `retry_after` has passed, the denied call passes — and spends the cell that came back.
pub async fn a_denied_call_passes_once_its_retry_after_has_passed(t: &LimiterUnderTest) {
    let k = key("retry");
    for _ in 0..3 {
        assert!(t.check(&k, &fast(), 1).await.allowed);
    }
    let denied = t.check(&k, &fast(), 1).await;
    assert!(!denied.allowed, "{denied:?}");
    assert!(
        denied.retry_after > Duration::ZERO && denied.retry_after <= FAST_INTERVAL,
        "{denied:?}"
    );
    if t.is_manual() {
        assert_eq!(denied.retry_after, FAST_INTERVAL);
        t.wait(denied.retry_after - Duration::from_millis(1)).await;
        let early = t.check(&k, &fast(), 1).await;
        assert!(!early.allowed, "a millisecond early: {early:?}");
        assert_eq!(early.retry_after, Duration::from_millis(1));
        t.wait(early.retry_after).await;
    } else {
        t.wait(denied.retry_after).await;
    }
    let passed = t.check(&k, &fast(), 1).await;
    assert!(passed.allowed, "after retry_after: {passed:?}");
    assert_eq!(passed.remaining, 0);
    let again = t.check(&k, &fast(), 1).await;
    assert!(
        !again.allowed,
        "the cell that came back is spent: {again:?}"
    );
}

/// A call of cost 3 spends three cells; a call costing more than what is left is denied and
/// spends nothing, so a smaller one still fits.
pub async fn cost_spends_that_many_cells_and_a_batch_above_remaining_spends_none(
    t: &LimiterUnderTest,
) {
    let k = key("cost");
    let first = t.check(&k, &slow(), 3).await;
    assert!(first.allowed, "{first:?}");
    assert_eq!(first.remaining, 2);
    t.assert_about(first.reset, SLOW_INTERVAL * 3, "reset after three cells");

    let too_big = t.check(&k, &slow(), 3).await;
    assert!(!too_big.allowed, "three cells with two left: {too_big:?}");
    assert_eq!(too_big.remaining, 2, "the denied batch spent nothing");
    t.assert_about(
        too_big.retry_after,
        SLOW_INTERVAL,
        "retry_after of one cell short",
    );
    t.assert_about(too_big.reset, SLOW_INTERVAL * 3, "reset unchanged");

    let fits = t.check(&k, &slow(), 2).await;
    assert!(fits.allowed, "two cells with two left: {fits:?}");
    assert_eq!(fits.remaining, 0);
    t.assert_about(fits.reset, SLOW_INTERVAL * 5, "reset of an empty bucket");
}

/// A call costing more than the burst never passes — not even on a full bucket — reports the
/// time until the bucket is full, and spends nothing.
pub async fn a_cost_above_burst_is_always_denied(t: &LimiterUnderTest) {
    let k = key("above-burst");
    let fresh = t.check(&k, &slow(), 6).await;
    assert_eq!(
        fresh,
        RateDecision {
            allowed: false,
            remaining: 5,
            retry_after: Duration::ZERO,
            reset: Duration::ZERO,
        },
        "six cells from a full bucket of five"
    );
    let spent = t.check(&k, &slow(), 2).await;
    assert!(spent.allowed);
    assert_eq!(spent.remaining, 3, "the refused call spent nothing");
    let denied = t.check(&k, &slow(), 6).await;
    assert!(!denied.allowed, "{denied:?}");
    assert_eq!(denied.remaining, 3);
    t.assert_about(
        denied.retry_after,
        SLOW_INTERVAL * 2,
        "time to a full bucket",
    );
    t.assert_about(denied.reset, SLOW_INTERVAL * 2, "reset");
    assert_eq!(
        t.check(&k, &slow(), u32::MAX).await.remaining,
        3,
        "the largest cost neither passes nor overflows"
    );
}

/// Two tenants' keys share no cells: one spending its whole burst leaves the other's intact.
pub async fn keys_are_independent(t: &LimiterUnderTest) {
    let (acme, globex) = (key("tenant-acme"), key("tenant-globex"));
    assert!(t.check(&acme, &slow(), 5).await.allowed);
    assert!(!t.check(&acme, &slow(), 1).await.allowed);
    for left in (0..5).rev() {
        let decision = t.check(&globex, &slow(), 1).await;
        assert!(
            decision.allowed,
            "globex after acme spent all: {decision:?}"
        );
        assert_eq!(decision.remaining, left);
    }
    assert!(!t.check(&globex, &slow(), 1).await.allowed);
    assert!(!t.check(&acme, &slow(), 1).await.allowed);
}

/// `remaining` and `reset` follow the cells spent and the cells that came back: after one
/// interval one cell is back and the reset is one interval closer; after the reset the bucket
/// is full.
pub async fn remaining_and_reset_track_spending_and_refill(t: &LimiterUnderTest) {
    let k = key("refill");
    let one = t.check(&k, &fast(), 1).await;
    assert_eq!((one.allowed, one.remaining), (true, 2));
    assert!(one.reset <= FAST_INTERVAL && one.reset > Duration::ZERO);
    let empty = t.check(&k, &fast(), 2).await;
    assert_eq!((empty.allowed, empty.remaining), (true, 0));
    assert!(
        empty.reset <= FAST_INTERVAL * 3 && empty.reset > FAST_INTERVAL * 2,
        "{empty:?}"
    );

    t.wait(FAST_INTERVAL).await;
    let later = t.check(&k, &fast(), 0).await;
    assert!(later.allowed, "a read is always allowed: {later:?}");
    assert!(
        later.reset <= empty.reset - FAST_INTERVAL,
        "reset one interval closer: {later:?} after {empty:?}"
    );
    if t.is_manual() {
        assert_eq!(later.remaining, 1);
        assert_eq!(later.reset, FAST_INTERVAL * 2);
    } else {
        assert!(later.remaining >= 1, "{later:?}");
    }

    t.wait(later.reset).await;
    let full = t.check(&k, &fast(), 0).await;
    assert_eq!(
        full,
        RateDecision {
            allowed: true,
            remaining: 3,
            retry_after: Duration::ZERO,
            reset: Duration::ZERO,
        },
        "full after the reset"
    );
}

/// A call of cost zero reports the key's state and spends nothing.
pub async fn a_cost_of_zero_reads_without_spending(t: &LimiterUnderTest) {
    let k = key("read");
    let fresh = t.check(&k, &slow(), 0).await;
    assert_eq!((fresh.allowed, fresh.remaining), (true, 5));
    assert!(t.check(&k, &slow(), 2).await.allowed);
    for _ in 0..3 {
        let read = t.check(&k, &slow(), 0).await;
        assert_eq!((read.allowed, read.remaining), (true, 3), "{read:?}");
        t.assert_about(read.reset, SLOW_INTERVAL * 2, "reset");
    }
    let rest = t.check(&k, &slow(), 3).await;
    assert_eq!((rest.allowed, rest.remaining), (true, 0));
}

/// Concurrent calls on one key spend each cell once: exactly `burst` of them pass.
pub async fn concurrent_calls_spend_each_cell_once(t: &LimiterUnderTest) {
    let k = key("race");
    let quota = slow();
    let calls = (0..20).map(|_| t.limiter.check(&k, &quota, 1));
    let decisions = futures::future::join_all(calls).await;
    let allowed = decisions
        .into_iter()
        .filter(|decision| decision.as_ref().expect("check").allowed)
        .count();
    assert_eq!(allowed, 5);
}

/// A quota outside its limits is a caller error, refused without touching the key.
pub async fn an_invalid_quota_is_refused_without_retry(t: &LimiterUnderTest) {
    let k = key("invalid");
    for quota in [
        Quota {
            per_second: 0.0,
            burst: 5,
        },
        Quota {
            per_second: 1.0,
            burst: 0,
        },
    ] {
        let err = t
            .limiter
            .check(&k, &quota, 1)
            .await
            .expect_err("an invalid quota");
        assert!(matches!(err, PortError::Invalid(_)), "{err}");
        assert!(!err.is_retryable(), "{err}");
    }
    assert_eq!(t.check(&k, &slow(), 0).await.remaining, 5);
}
