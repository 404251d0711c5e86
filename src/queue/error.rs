//! Errors of the queue itself, and the error type job handlers return.

use std::{fmt, time::Duration};

use crate::{disposition::Disposition, queue::JobId};

/// A failure of a queue operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// No job has this id.
    #[error("no job with id {0}")]
    NotFound(JobId),
    /// The operation does not apply to the job's current state.
    #[error("job {id} is {state}: {hint}")]
    InvalidState {
        /// The job.
        id: JobId,
        /// Its current state.
        state: super::JobState,
        /// What the user can do instead.
        hint: &'static str,
    },
    /// The lease this write was fenced by has lapsed: another attempt owns the job now
    /// (or it was cancelled), so this write was discarded.
    #[error("lease of job {} attempt {} is no longer held", .0.job_id, .0.attempt)]
    LeaseLost(super::Lease),
}

/// Result alias for queue operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a job handler failed, classified where the failure happened.
#[derive(Debug)]
pub struct JobError {
    /// Retry, retry after a delay, or give up.
    pub disposition: Disposition,
    /// A message for `last_error` and the logs. Never contains a secret.
    pub message: String,
    /// Whether the attempt counts against `max_attempts`.
    pub kind: FailureKind,
    /// What went wrong underneath (a `sqlx` or client error), kept so that its chain reaches
    /// the logs (`Error::source`) rather than only its one-line message.
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Whether a handler's error is a failure or a wait the service asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Something went wrong: the attempt counts against `max_attempts`.
    Failure,
    /// The service throttled us (a rate limit): waiting is not failing, so the job goes
    /// back to the queue after the delay without the attempt counting.
    Throttled,
}

impl JobError {
    /// A transient failure: retry under the job's backoff policy.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self::new(Disposition::Retry, message)
    }

    /// A failure retrying cannot fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::new(Disposition::Fatal, message)
    }

    /// A transient failure with a known earliest retry time.
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        Self::new(Disposition::RetryAfter(delay), message)
    }

    /// The service asked to wait `delay` (a rate limit that outlasted the handler's own
    /// patience): not a failure, the attempt does not count against `max_attempts`.
    pub fn throttled(delay: Duration, message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Throttled,
            ..Self::retry_after(delay, message)
        }
    }

    /// A failure with an explicit disposition.
    pub fn new(disposition: Disposition, message: impl fmt::Display) -> Self {
        Self {
            disposition,
            message: message.to_string(),
            kind: FailureKind::Failure,
            source: None,
        }
    }

    /// The same error, remembering what caused it.
    #[must_use]
    pub fn with_source(self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            source: Some(Box::new(source)),
            ..self
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for JobError {
    /// Queue errors inside a handler are transient (the database came back or another
    /// attempt took over, in which case the retry write is fenced out anyway).
    fn from(err: Error) -> Self {
        Self::retryable(&err).with_source(err)
    }
}

/// Classifies an error at the call site: `.retryable()?`, `.fatal()?`.
pub trait ResultExt<T> {
    /// Any error becomes a retryable job error.
    fn retryable(self) -> Result<T, JobError>;
    /// Any error becomes a fatal job error.
    fn fatal(self) -> Result<T, JobError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, JobError> {
        self.map_err(|e| JobError::retryable(&e).with_source(e))
    }

    fn fatal(self) -> Result<T, JobError> {
        self.map_err(|e| JobError::fatal(&e).with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_classified_error_keeps_its_cause_for_the_logs() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err = Err::<(), _>(io).retryable().unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry);
        assert_eq!(err.message, "reset by peer");
        assert_eq!(err.source().unwrap().to_string(), "reset by peer");

        assert!(JobError::fatal("no cause").source().is_none());
    }
}
