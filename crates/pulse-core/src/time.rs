//! Instants as Unix milliseconds, and durations in milliseconds, without bare `as` casts.

use std::time::Duration;

/// A wall-clock instant: milliseconds since the Unix epoch (what events, rows and records carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The milliseconds since the epoch.
    pub fn get(self) -> i64 {
        self.0
    }

    /// `by` later, saturating.
    pub fn after(self, by: Duration) -> Self {
        Self(self.0.saturating_add(millis(by)))
    }

    /// `by` earlier, saturating.
    pub fn before(self, by: Duration) -> Self {
        Self(self.0.saturating_sub(millis(by)))
    }

    /// How long after `earlier` this is (zero when it is not later).
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// `duration` in whole milliseconds, saturating at `i64::MAX` (a `Duration` may hold more).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_move_by_durations_and_saturate() {
        let at = UnixMillis(1_000);
        assert_eq!(at.after(Duration::from_millis(500)), UnixMillis(1_500));
        assert_eq!(at.before(Duration::from_secs(2)), UnixMillis(-1_000));
        assert_eq!(UnixMillis(1_500).since(at), Duration::from_millis(500));
        assert_eq!(at.since(UnixMillis(1_500)), Duration::ZERO);
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(
            UnixMillis(i64::MAX).after(Duration::from_secs(1)),
            UnixMillis(i64::MAX)
        );
    }
}
