//! Retry delays: exponential backoff with jitter and a cap, for loops that wait out an outage.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Endless delays from `min` doubling up to `max`, each jittered so that many instances
/// recovering from the same outage do not retry in lockstep.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap_plus_jitter() {
        let delays: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_secs(1))
            .take(10)
            .collect();
        assert_eq!(delays.len(), 10, "never runs out");
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(
            delays[9] >= Duration::from_secs(1),
            "reaches the cap: {delays:?}"
        );
    }
}
