//! When a failed job runs again, and when it stops trying.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff with jitter, capped, with a bounded number of attempts.
///
/// The delay before retry `n` (1-based count of failed attempts) is
/// `min(base * factor^(n-1), cap)` plus up to 100% random jitter, so that jobs that
/// failed together (a provider outage) do not all come back in the same second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub base: Duration,
    /// Growth per failed attempt.
    pub factor: f32,
    /// Longest delay before the jitter; keeps a job that failed many times from
    /// disappearing for hours.
    pub cap: Duration,
    /// Whether to add jitter. Off only in tests that check the exact schedule.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 5 s, 10 s, 20 s, 40 s, ... capped at 10 minutes: long enough for a provider's
    /// per-minute rate window to reset, short enough that a review still lands the same hour.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            factor: 2.0,
            cap: Duration::from_secs(600),
            jitter: true,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again after this delay.
    RetryIn(Duration),
    /// The retry budget is spent: fail the job for good.
    GiveUp,
}

impl RetryPolicy {
    /// Decides after the `failed_attempts`-th failure of a job allowed `max_attempts`.
    pub fn decide(&self, failed_attempts: i32, max_attempts: i32) -> RetryDecision {
        if failed_attempts >= max_attempts {
            return RetryDecision::GiveUp;
        }
        RetryDecision::RetryIn(self.delay(failed_attempts))
    }

    /// The delay before the retry that follows the `failed_attempts`-th failure.
    pub fn delay(&self, failed_attempts: i32) -> Duration {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_factor(self.factor)
            .with_max_delay(self.cap)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let nth = usize::try_from(failed_attempts.max(1) - 1).unwrap_or(0);
        builder.build().nth(nth).unwrap_or(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn delays_double_from_the_base_until_the_cap() {
        let policy = exact();
        let delays: Vec<u64> = (1..=10).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn jitter_stays_between_the_delay_and_twice_the_delay() {
        let policy = RetryPolicy::default();
        for n in 1..=10 {
            let plain = exact().delay(n);
            for _ in 0..50 {
                let d = policy.delay(n);
                assert!(
                    d >= plain && d <= plain * 2,
                    "attempt {n}: {d:?} vs {plain:?}"
                );
            }
        }
    }

    #[test]
    fn the_job_gives_up_once_failures_reach_max_attempts() {
        let policy = exact();
        assert_eq!(
            policy.decide(1, 3),
            RetryDecision::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            policy.decide(2, 3),
            RetryDecision::RetryIn(Duration::from_secs(10))
        );
        assert_eq!(policy.decide(3, 3), RetryDecision::GiveUp);
        assert_eq!(policy.decide(7, 3), RetryDecision::GiveUp);
    }
}
