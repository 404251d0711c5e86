//! The queue's vocabulary: ids, states, what goes in and what comes out.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's primary key. Small and sequential so people can type it (`reviewq status 42`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    /// Wraps a raw id read from the database or typed by a user.
    pub fn new(id: i64) -> Self {
        Self(id)
    }

    /// The raw id, for binding in queries.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The error for a job id that is not a positive integer.
#[derive(Debug, thiserror::Error)]
#[error("invalid job id {0:?}: expected a positive integer such as 42")]
pub struct InvalidJobId(String);

impl FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(InvalidJobId(s.to_owned())),
        }
    }
}

/// Identifies one worker process start. Never reused, so a restarted process cannot be
/// mistaken for its dead predecessor (the orphan-rescue bug of oban#862).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Uuid);

impl WorkerId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The raw uuid, for binding in queries.
    pub fn get(self) -> Uuid {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A job's lifecycle state, mirrored by the Postgres enum `job_state`.
/// A job waiting for a retry is `Queued` with a future `run_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (now, at `run_at`, or once its children end).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Done; nothing more will happen.
    Succeeded,
    /// Ended in a fatal error or ran out of attempts; `last_error` says why.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended for good (until an operator retries it).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The state's name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a queued job is not running although nothing went wrong: a handler chose to wait
/// for a condition outside the queue (a spending limit, a paused provider). Waiting never
/// counts against `max_attempts`; the next claim clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// What would end the wait: [`crate::queue::Queue::wake`] with this key makes every job
    /// waiting on it runnable at once (e.g. when an operator raises a budget).
    pub key: String,
    /// For people: `status` shows it on the job (and on its parent).
    pub reason: String,
    /// Since when the condition holds, which may be long before this job began to wait.
    pub since: DateTime<Utc>,
}

/// A job to insert.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    /// Stable kind name; the worker dispatches on it.
    pub kind: String,
    /// Arguments for the handler.
    pub payload: serde_json::Value,
    /// Higher runs first.
    pub priority: i16,
    /// Retry budget: the job fails for good after this many failed attempts.
    pub max_attempts: i32,
    /// When set, enqueueing while an unfinished job with the same key exists returns that
    /// job instead of inserting a second one.
    pub dedupe_key: Option<String>,
    /// Not before this delay from now.
    pub delay: Duration,
}

/// Attempts a job gets unless its kind says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

impl NewJob {
    /// A job of `kind` with default priority, attempts and no dedupe key.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dedupe_key: None,
            delay: Duration::ZERO,
        }
    }

    /// Sets the priority (higher runs first).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the retry budget.
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Deduplicates against unfinished jobs with the same key.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Delays the first run.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new row was inserted.
    New(JobId),
    /// An unfinished job with the same dedupe key already existed; this is its id.
    Existing(JobId),
}

impl Enqueued {
    /// The job's id, new or existing.
    pub fn id(self) -> JobId {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }
}

/// The fencing token of one claim. Every write a worker makes after claiming a job names
/// its lease, and matches nothing once the lease has lapsed and another claim happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The claimed job.
    pub job_id: JobId,
    /// The attempt number this claim got.
    pub attempt: i32,
}

/// A job as handed to a worker by a claim.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The fencing token for this claim.
    pub lease: Lease,
    /// Stable kind name.
    pub kind: String,
    /// The handler's arguments.
    pub payload: serde_json::Value,
    /// Failed attempts so far, before this one.
    pub failed_attempts: i32,
    /// The retry budget.
    pub max_attempts: i32,
    /// Its priority (higher first), which the subtasks and follow-ups it enqueues inherit.
    pub priority: i16,
    /// When the current run of counted failures began (database clock); `None` before the
    /// first failure.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// Set for subtasks.
    pub parent_id: Option<JobId>,
    /// When this attempt was claimed (database clock).
    pub started_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.lease.job_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_parse_from_positive_integers_only() {
        assert_eq!("42".parse::<JobId>().unwrap(), JobId::new(42));
        for bad in ["0", "-1", "abc", "", "4.2"] {
            let err = bad.parse::<JobId>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn only_succeeded_failed_and_cancelled_are_finished() {
        assert!(!JobState::Queued.is_finished());
        assert!(!JobState::Running.is_finished());
        assert!(JobState::Succeeded.is_finished());
        assert!(JobState::Failed.is_finished());
        assert!(JobState::Cancelled.is_finished());
    }
}
