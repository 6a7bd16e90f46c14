//! The rate limiter suite against the in-process limiter, on a clock the suite moves.

use std::sync::Arc;

use pulse_conformance::rate_limit::LimiterUnderTest;
use pulse_conformance::Fixture;
use pulse_core::clock::ManualClock;
use pulse_memory::MemoryRateLimiter;

async fn memory() -> Fixture<LimiterUnderTest> {
    let clock = ManualClock::new(1_764_000_000_000);
    let limiter = MemoryRateLimiter::new(Arc::new(clock.clone()), 1_000);
    Fixture::new(LimiterUnderTest::on_manual_clock(limiter, clock))
}

pulse_conformance::rate_limiter_suite!(memory());
