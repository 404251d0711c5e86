//! When a failed job runs again, and when it stops trying.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The default [`RetryPolicy::budget`].
pub const DEFAULT_FAILURE_BUDGET: Duration = Duration::from_secs(600);

/// Exponential backoff with jitter, capped, with a bounded number of attempts and a
/// failure budget in time.
///
/// The delay before retry `n` (1-based count of failed attempts) is
/// `min(base * factor^(n-1), cap)` plus up to 100% random jitter, so that jobs that
/// failed together (a provider outage) do not all come back in the same second.
///
/// A job gives up only when it has failed `max_attempts` times *and* its failures have
/// gone on for longer than `budget`: five quick failures in the first minute of a
/// ten-minute GitLab outage should not burn a review. Throttled attempts never count.
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
    /// How long a job keeps retrying non-throttling failures, counted from its first
    /// failure, even after `max_attempts` of them (`REVIEWQ_FAILURE_BUDGET_SECS`).
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// 5 s, 10 s, 20 s, 40 s, ... capped at 10 minutes: long enough for a provider's
    /// per-minute rate window to reset, short enough that a review still lands the same hour.
    /// A budget of 10 minutes outlasts a deploy's or a failover's outage of GitLab.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            factor: 2.0,
            cap: Duration::from_secs(600),
            jitter: true,
            budget: DEFAULT_FAILURE_BUDGET,
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
    /// Decides after the `failed_attempts`-th failure of a job allowed `max_attempts`,
    /// whose failures began `failing_for` ago.
    pub fn decide(
        &self,
        failed_attempts: i32,
        max_attempts: i32,
        failing_for: Duration,
    ) -> RetryDecision {
        if failed_attempts >= max_attempts && failing_for >= self.budget {
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
            budget: Duration::ZERO,
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
        let now = Duration::ZERO;
        assert_eq!(
            policy.decide(1, 3, now),
            RetryDecision::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            policy.decide(2, 3, now),
            RetryDecision::RetryIn(Duration::from_secs(10))
        );
        assert_eq!(policy.decide(3, 3, now), RetryDecision::GiveUp);
        assert_eq!(policy.decide(7, 3, now), RetryDecision::GiveUp);
    }

    #[test]
    fn a_job_out_of_attempts_keeps_retrying_until_its_failures_outlast_the_budget() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(300),
            ..exact()
        };
        assert_eq!(
            policy.decide(5, 5, Duration::from_secs(75)),
            RetryDecision::RetryIn(Duration::from_secs(80))
        );
        assert_eq!(
            policy.decide(7, 5, Duration::from_secs(299)),
            RetryDecision::RetryIn(Duration::from_secs(320))
        );
        assert_eq!(
            policy.decide(7, 5, Duration::from_secs(300)),
            RetryDecision::GiveUp
        );
        // The budget extends a job's tries; it never ends one early.
        assert_eq!(
            policy.decide(2, 5, Duration::from_secs(3600)),
            RetryDecision::RetryIn(Duration::from_secs(10))
        );
    }
}
