//! What to do after one failed GitLab exchange: retry it, give up, or hand the caller a
//! request whose outcome is unknown. Decided from the error's variant (status codes and
//! headers were read into it where the answer came in), never from its text.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::Error;

/// First backoff delay; doubled per try up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest backoff delay: a GitLab restart or a proxy failing over takes tens of seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(16);

/// Whether a request may be sent again when it may already have been carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Reads, edits (`PUT` sets a state), deletes and the bulk publish (which publishes
    /// only what is still pending): doing them twice is doing them once.
    Safe,
    /// Creates a comment or draft: a second send would post it twice. Retried only when
    /// GitLab surely did nothing (a 429, a connection never made).
    Unsafe,
}

/// The next step after a failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Not retryable: return the error.
    GiveUp,
    /// An [`Replay::Unsafe`] request that may have been carried out: return
    /// [`Error::OutcomeUnknown`] for the caller's marker check.
    Unknown,
    /// Retry after exactly this long (GitLab said when).
    After(Duration),
    /// Retry after the exponential backoff.
    Backoff,
}

/// Classifies a failed exchange of a request that may (`Safe`) or may not be replayed.
pub(super) fn next_step(err: &Error, replay: Replay) -> Step {
    let may_have_landed = match err {
        // Throttled requests are refused before anything is done.
        Error::RateLimited {
            retry_after: Some(after),
            ..
        } => return Step::After(*after),
        Error::RateLimited {
            retry_after: None, ..
        } => return Step::Backoff,
        // A connection that was never made carried nothing.
        Error::Transport { source, .. } if source.is_connect() => return Step::Backoff,
        Error::Server { .. } | Error::Timeout { .. } | Error::Transport { .. } => true,
        _ => return Step::GiveUp,
    };
    match (may_have_landed, replay) {
        (true, Replay::Unsafe) => Step::Unknown,
        _ => Step::Backoff,
    }
}

/// The delay before retry `tries` (1-based): exponential from [`BACKOFF_MIN`], capped at
/// [`BACKOFF_MAX`], with full jitter (uniform between zero and the delay), so that clients
/// that failed together spread out instead of coming back together.
pub(super) fn backoff(tries: u32) -> Duration {
    let nth = tries.saturating_sub(1) as usize;
    let builder = ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times();
    let plain = builder.build().nth(nth).unwrap_or(BACKOFF_MAX);
    // backon adds a random jitter in [0, delay) on top of the delay: that jitter alone is
    // the full-jitter delay.
    let jittered = builder.with_jitter().build().nth(nth).unwrap_or(plain);
    jittered.saturating_sub(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16) -> Error {
        Error::Server {
            status,
            message: String::new(),
        }
    }

    #[test]
    fn a_429_waits_exactly_retry_after_even_for_a_post() {
        let err = Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: "Retry later".into(),
        };
        assert_eq!(
            next_step(&err, Replay::Unsafe),
            Step::After(Duration::from_secs(7))
        );
    }

    #[test]
    fn a_5xx_is_retried_for_a_get_and_unknown_for_a_post() {
        for status in [500, 502, 503, 504] {
            assert_eq!(next_step(&server(status), Replay::Safe), Step::Backoff);
            assert_eq!(next_step(&server(status), Replay::Unsafe), Step::Unknown);
        }
    }

    #[test]
    fn auth_and_not_found_are_never_retried() {
        let auth = Error::Auth {
            status: 401,
            message: String::new(),
        };
        let missing = Error::NotFound {
            what: String::new(),
            message: String::new(),
        };
        for replay in [Replay::Safe, Replay::Unsafe] {
            assert_eq!(next_step(&auth, replay), Step::GiveUp);
            assert_eq!(next_step(&missing, replay), Step::GiveUp);
        }
    }

    #[test]
    fn backoff_stays_between_zero_and_the_capped_exponential() {
        for tries in 1..=12 {
            let cap = BACKOFF_MIN
                .saturating_mul(1 << (tries - 1).min(10))
                .min(BACKOFF_MAX);
            for _ in 0..20 {
                assert!(backoff(tries) <= cap, "try {tries}");
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(5)).collect();
        assert!(spread.len() > 1, "the delays are jittered");
    }
}
