//! A durable job queue on Postgres. It knows nothing of GitLab, LLMs or reviews.
//!
//! - Claim: one CTE (`AS MATERIALIZED`, `FOR UPDATE SKIP LOCKED`, batch = free slots),
//!   committed at once; the job then runs under a lease, never inside a transaction.
//! - Fencing: every write after a claim names its [`Lease`] `(job id, attempt)` and
//!   matches nothing once another attempt owns the job.
//! - Recovery: a heartbeat extends leases; the rescuer requeues jobs whose lease lapsed.
//! - Parents and children: a parent waits with `pending_children > 0` and becomes
//!   runnable when the last child's terminal transition brings the count to zero.

mod admin;
mod browse;
mod claim;
mod enqueue;
mod error;
mod fail;
mod floor;
mod heartbeat;
mod job;
mod limit;
mod maintain;
mod rate;
mod retry;
mod wait;
mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, postgres::types::PgInterval};

pub use self::{
    browse::{
        FinishedTimes, JobFilter, Latency, LiveWorker, Progress, Runnable, SlotUse, StateCount,
    },
    error::{Error, FailureKind, JobError, Result, ResultExt},
    floor::{FLOOR_LAG, FLOOR_LOOKBACK, FloorReach},
    job::{
        ClaimedJob, DEFAULT_MAX_ATTEMPTS, Enqueued, InvalidJobId, JobId, JobState, Lease, NewJob,
        Waiting, WorkerId,
    },
    limit::{Limiter, Permit, SlotWaiters},
    rate::{Admission, Pause, RateGate, WaitReason},
    retry::{RetryDecision, RetryPolicy},
    worker::{
        JobContext, JobHandler, JobResult, Outcome, Processed, RunSummary, Worker, WorkerConfig,
    },
};

/// The channel an idle worker listens on for new runnable jobs (sent by triggers).
pub const JOBS_CHANNEL: &str = "reviewq_jobs";
/// The channel a released fleet-limit slot is announced on.
pub const SLOTS_CHANNEL: &str = "reviewq_slots";

/// Handle to the queue tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
}

/// How a handler-reported failure was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRecorded {
    /// The job will run again at `run_at`.
    WillRetry {
        /// When.
        run_at: DateTime<Utc>,
    },
    /// The job failed for good.
    Failed,
}

/// One job as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub failed_attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub worker_id: Option<uuid::Uuid>,
    pub last_error: Option<String>,
    pub dedupe_key: Option<String>,
    pub parent_id: Option<JobId>,
    pub pending_children: i32,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the job waits, or for a parent, why its first waiting child does.
    pub waiting: Option<sqlx::types::Json<Waiting>>,
}

/// One finished attempt from the history table.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: i32,
    pub worker_id: uuid::Uuid,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub error: Option<String>,
}

/// Children of a parent, counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChildCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl ChildCounts {
    /// All children.
    pub fn total(&self) -> i64 {
        self.queued + self.running + self.succeeded + self.failed + self.cancelled
    }
}

/// Whether the fleet has anything left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Queued jobs that can run now.
    pub runnable: bool,
    /// Queued jobs waiting for a retry time, for children or for a condition.
    pub waiting: bool,
    /// Jobs some worker holds.
    pub running: bool,
    /// Set when every job left is waiting for a condition ([`Waiting`]): one of them.
    /// Nothing will happen until that condition changes.
    pub blocked: Option<Waiting>,
}

impl Backlog {
    /// Nothing queued, waiting or running.
    pub fn is_empty(&self) -> bool {
        !(self.runnable || self.waiting || self.running)
    }
}

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

impl Queue {
    /// A queue over `pool`, whose database has the migrations applied.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for callers that need their own transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A fenced state change (see [`Queue::transition`]).
struct Transition<'a> {
    state: JobState,
    delay: Duration,
    /// Whether this attempt counts against `max_attempts`.
    failed: bool,
    error: Option<&'a str>,
    /// The history row's outcome.
    outcome: &'a str,
}
