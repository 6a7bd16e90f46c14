//! When a failed attempt runs again: a backoff with a cap and jitter, and the per-job-type
//! policy a handler carries (timeout, concurrency, attempts, backoff).

use serde::{Deserialize, Serialize};

/// How long to wait after the `n`th failed attempt.
///
/// `polynomial` (the default, River's shape): `base_ms × n^exponent`, so 1 s, 16 s, 81 s, 256 s, …
/// with the defaults; `exponential`: `base_ms × exponent^(n−1)`. Either is capped at `max_ms`,
/// then spread by ±`jitter` (a fraction) so jobs that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// `polynomial` or `exponential`.
    pub shape: BackoffShape,
    /// The first wait, ms.
    pub base_ms: u64,
    /// The power (polynomial) or the factor (exponential).
    pub exponent: f64,
    /// The longest wait, ms.
    pub max_ms: u64,
    /// ± this fraction of the wait, at random (0 to 1).
    pub jitter: f64,
}

/// See [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffShape {
    /// `base × n^exponent`.
    Polynomial,
    /// `base × exponent^(n−1)`.
    Exponential,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            shape: BackoffShape::Polynomial,
            base_ms: 1_000,
            exponent: 4.0,
            max_ms: 3_600_000,
            jitter: 0.1,
        }
    }
}

/// The longest wait a policy may set: a week.
pub const MAX_BACKOFF_MS: u64 = 7 * 24 * 3_600_000;

impl Backoff {
    /// Why the policy is unusable, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.base_ms == 0 || self.base_ms > MAX_BACKOFF_MS {
            return Err(format!("backoff.base_ms must be 1 to {MAX_BACKOFF_MS}"));
        }
        if self.max_ms < self.base_ms || self.max_ms > MAX_BACKOFF_MS {
            return Err(format!(
                "backoff.max_ms must be at least backoff.base_ms and at most {MAX_BACKOFF_MS}"
            ));
        }
        let exponent_ok = match self.shape {
            BackoffShape::Polynomial => (0.0..=10.0).contains(&self.exponent),
            BackoffShape::Exponential => (1.0..=10.0).contains(&self.exponent),
        };
        if !exponent_ok || !self.exponent.is_finite() {
            return Err(
                "backoff.exponent must be 0 to 10 (polynomial) or 1 to 10 (exponential)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("backoff.jitter must be 0 to 1".into());
        }
        Ok(())
    }

    /// The wait before the next attempt, unjittered, after `failed` attempts (1 or more).
    pub fn nominal_ms(&self, failed: u32) -> u64 {
        let n = f64::from(failed.max(1));
        let wait = match self.shape {
            BackoffShape::Polynomial => self.base_ms as f64 * n.powf(self.exponent),
            BackoffShape::Exponential => self.base_ms as f64 * self.exponent.powf(n - 1.0),
        };
        // `as` saturates: an overflowing power is the cap.
        (wait as u64).min(self.max_ms)
    }

    /// The wait, jittered with `unit` (a uniform sample in [0, 1)).
    pub fn delay_ms(&self, failed: u32, unit: f64) -> u64 {
        let nominal = self.nominal_ms(failed) as f64;
        let spread = nominal * self.jitter * (2.0 * unit - 1.0);
        ((nominal + spread).max(0.0) as u64).min(self.max_ms)
    }
}

/// A job type's policy: set by its handler, each field falling back to the deployment's default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerPolicy {
    /// One attempt's timeout, ms, for jobs that set none.
    pub timeout_ms: Option<u64>,
    /// Most attempts of this type running at once in one worker.
    pub concurrency: Option<u32>,
    /// Attempts for jobs that set none.
    pub max_attempts: Option<u32>,
    /// The retry backoff.
    pub backoff: Option<Backoff>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_rivers_attempt_to_the_fourth_in_seconds_capped_at_an_hour() {
        let backoff = Backoff::default();
        let waits: Vec<u64> = (1..=5).map(|n| backoff.nominal_ms(n)).collect();
        assert_eq!(waits, vec![1_000, 16_000, 81_000, 256_000, 625_000]);
        assert_eq!(backoff.nominal_ms(100), 3_600_000);
        assert_eq!(backoff.nominal_ms(u32::MAX), 3_600_000);
    }

    #[test]
    fn exponential_doubles_from_the_base() {
        let backoff = Backoff {
            shape: BackoffShape::Exponential,
            base_ms: 100,
            exponent: 2.0,
            max_ms: 1_000,
            jitter: 0.0,
        };
        let waits: Vec<u64> = (1..=6).map(|n| backoff.delay_ms(n, 0.7)).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_spreads_within_its_fraction_and_never_past_the_cap() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay_ms(2, 0.0), 14_400);
        assert_eq!(backoff.delay_ms(2, 0.5), 16_000);
        assert!(backoff.delay_ms(2, 0.999_999) <= 17_600);
        assert_eq!(backoff.delay_ms(50, 0.999), 3_600_000);
    }

    #[test]
    fn unusable_policies_are_refused_by_field() {
        let refused = |backoff: Backoff, field: &str| {
            let err = backoff.validate().unwrap_err();
            assert!(err.contains(field), "{err}");
        };
        let base = Backoff::default();
        refused(Backoff { base_ms: 0, ..base }, "base_ms");
        refused(Backoff { max_ms: 10, ..base }, "max_ms");
        refused(
            Backoff {
                jitter: 1.5,
                ..base
            },
            "jitter",
        );
        refused(
            Backoff {
                shape: BackoffShape::Exponential,
                exponent: 0.5,
                ..base
            },
            "exponent",
        );
        assert_eq!(base.validate(), Ok(()));
    }

    #[test]
    fn the_bounds_are_a_week_inclusive_and_the_cap_may_equal_the_base() {
        let week = 7 * 24 * 3_600_000;
        assert_eq!(MAX_BACKOFF_MS, week);
        let at = |base_ms, max_ms| Backoff {
            base_ms,
            max_ms,
            ..Backoff::default()
        };
        assert_eq!(at(week, week).validate(), Ok(()));
        assert_eq!(at(5 * 24 * 3_600_000, week).validate(), Ok(()));
        assert_eq!(
            at(1_000, 1_000).validate(),
            Ok(()),
            "the cap may be the base"
        );
        assert!(at(week + 1, week + 1)
            .validate()
            .unwrap_err()
            .contains("base_ms"));
        assert!(at(1_000, week + 1)
            .validate()
            .unwrap_err()
            .contains("max_ms"));
    }
}
