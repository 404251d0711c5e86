//! A durable job queue on Postgres. It knows nothing of GitLab, LLMs or reviews.
//!
//! - Claim: one CTE (`AS MATERIALIZED`, `FOR UPDATE SKIP LOCKED`, batch = free slots),
//!   committed at once; the job then runs under a lease, never inside a transaction.
//! - Fencing: every write after a claim names its [`Lease`] `(job id, attempt)` and
//!   matches nothing once another attempt owns the job.
//! - Recovery: a heartbeat extends leases; the rescuer requeues jobs whose lease lapsed.
//! - Parents and children: a parent waits with `pending_children > 0` and becomes
//!   runnable when the last child's terminal transition brings the count to zero.

mod browse;
mod error;
mod job;
mod limit;
mod rate;
mod retry;
mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction, postgres::types::PgInterval};

pub use self::{
    browse::{JobFilter, Latency, LiveWorker, SlotUse, StateCount},
    error::{Error, FailureKind, JobError, Result, ResultExt},
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

/// Advisory-lock key that elects one rescuer at a time across the fleet ("rq-rescu").
const RESCUER_LOCK_KEY: i64 = 0x7271_2d72_6573_6375;

/// How many expired leases one rescue pass handles; the rest wait for the next pass.
const RESCUE_BATCH: i64 = 1000;

/// How many finished jobs one prune pass deletes, to keep each delete short.
const PRUNE_BATCH: i64 = 5000;

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

    /// Inserts one job, inside the caller's transaction if `exec` is one.
    ///
    /// With a dedupe key, an unfinished job with the same key wins: its id comes back as
    /// [`Enqueued::Existing`] and nothing is inserted.
    ///
    /// # Errors
    /// Database errors.
    pub async fn enqueue<'e, E>(exec: E, job: &NewJob) -> Result<Enqueued>
    where
        E: PgExecutor<'e>,
    {
        // `do update` rather than `do nothing`: it waits for a concurrent enqueue of the same
        // key to commit and then returns that row, where `do nothing` plus a lookup in the
        // same statement would not see it. `xmax = 0` tells a fresh insert from an existing row.
        let row = sqlx::query!(
            r#"
            insert into jobs (kind, payload, priority, max_attempts, dedupe_key, run_at)
            values ($1, $2, $3, $4, $5, now() + $6::interval)
            on conflict (dedupe_key) where dedupe_key is not null and state in ('queued', 'running')
            do update set dedupe_key = excluded.dedupe_key
            returning id, (xmax = 0) as "inserted!"
            "#,
            job.kind,
            job.payload,
            job.priority,
            job.max_attempts,
            job.dedupe_key,
            interval(job.delay),
        )
        .fetch_one(exec)
        .await?;
        let id = JobId::new(row.id);
        Ok(if row.inserted {
            Enqueued::New(id)
        } else {
            Enqueued::Existing(id)
        })
    }

    /// Inserts many jobs in one statement (no dedupe keys; use [`Queue::enqueue`] for those).
    /// Returns the new ids in input order.
    ///
    /// # Errors
    /// Database errors.
    pub async fn enqueue_many<'e, E>(exec: E, jobs: &[NewJob]) -> Result<Vec<JobId>>
    where
        E: PgExecutor<'e>,
    {
        let (mut kinds, mut payloads, mut priorities, mut max_attempts, mut delays) = (
            Vec::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
            Vec::with_capacity(jobs.len()),
        );
        for job in jobs {
            kinds.push(job.kind.clone());
            payloads.push(job.payload.clone());
            priorities.push(job.priority);
            max_attempts.push(job.max_attempts);
            delays.push(interval(job.delay));
        }
        let ids = sqlx::query_scalar!(
            r#"
            insert into jobs (kind, payload, priority, max_attempts, run_at)
            select kind, payload, priority, max_attempts, now() + delay
            from unnest($1::text[], $2::jsonb[], $3::int2[], $4::int4[], $5::interval[])
                with ordinality as t(kind, payload, priority, max_attempts, delay, ord)
            order by ord
            returning id
            "#,
            &kinds,
            &payloads,
            &priorities,
            &max_attempts,
            &delays,
        )
        .fetch_all(exec)
        .await?;
        Ok(ids.into_iter().map(JobId::new).collect())
    }

    /// Inserts `children` under the running parent of `lease` and puts the parent back in
    /// the queue until the last child ends, all in `tx`. The parent's claim is settled by
    /// this: it does not count as a failed attempt.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the parent's lease lapsed; database errors.
    pub async fn await_children(
        tx: &mut Transaction<'_, Postgres>,
        lease: Lease,
        children: &[NewJob],
    ) -> Result<Vec<JobId>> {
        let count = i32::try_from(children.len()).unwrap_or(i32::MAX);
        let parked = sqlx::query_scalar!(
            r#"
            with parked as (
                update jobs set state = 'queued', pending_children = pending_children + $3,
                    lease_expires_at = null, updated_at = now(), run_at = now()
                where id = $1 and attempt = $2 and state = 'running'
                returning id, attempt, worker_id, started_at
            ), hist as (
                insert into job_attempts (job_id, attempt, worker_id, started_at, outcome)
                select id, attempt, worker_id, started_at, 'awaiting_children' from parked
            )
            select count(*) as "n!" from parked
            "#,
            lease.job_id.get(),
            lease.attempt,
            count,
        )
        .fetch_one(&mut **tx)
        .await?;
        if parked == 0 {
            return Err(Error::LeaseLost(lease));
        }
        let ids = Self::enqueue_many(&mut **tx, children).await?;
        let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        sqlx::query!(
            "update jobs set parent_id = $1 where id = any($2)",
            lease.job_id.get(),
            &raw
        )
        .execute(&mut **tx)
        .await?;
        Ok(ids)
    }

    /// Adds `children` to `parent`, which must still be waiting for children, in `tx`. A
    /// running child uses this to hand part of its work to new siblings (then completes).
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the parent is not waiting; database errors.
    pub async fn add_children(
        tx: &mut Transaction<'_, Postgres>,
        parent: JobId,
        children: &[NewJob],
    ) -> Result<Vec<JobId>> {
        let count = i32::try_from(children.len()).unwrap_or(i32::MAX);
        let waiting = sqlx::query_scalar!(
            r#"
            update jobs set pending_children = pending_children + $2, updated_at = now()
            where id = $1 and state = 'queued' and pending_children > 0
            returning id
            "#,
            parent.get(),
            count,
        )
        .fetch_optional(&mut **tx)
        .await?;
        if waiting.is_none() {
            let state = Self::lock_state(tx, parent).await?;
            return Err(Error::InvalidState {
                id: parent,
                state,
                hint: "children can only be added to a parent that waits for its children",
            });
        }
        let ids = Self::enqueue_many(&mut **tx, children).await?;
        let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        sqlx::query!(
            "update jobs set parent_id = $1 where id = any($2)",
            parent.get(),
            &raw
        )
        .execute(&mut **tx)
        .await?;
        Ok(ids)
    }

    /// Claims up to `limit` runnable jobs for `worker` under a lease of `lease` and commits
    /// at once. Highest priority first, then oldest `run_at`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim(
        &self,
        worker: WorkerId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>> {
        self.complete_and_claim(&[], worker, limit, lease).await
    }

    /// Marks `succeeded` jobs done (each fenced by its lease, releasing their parents'
    /// counts) and claims up to `limit` runnable jobs, in one statement and one commit.
    ///
    /// A worker's loop is "a job ended, take the next one"; doing both in one round trip
    /// halves the statements per job, which is what bounds a queue's throughput.
    ///
    /// # Errors
    /// Database errors (nothing was written then).
    pub async fn complete_and_claim(
        &self,
        succeeded: &[Lease],
        worker: WorkerId,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>> {
        if limit == 0 && succeeded.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = succeeded.iter().map(|l| l.job_id.get()).collect();
        let attempts: Vec<i32> = succeeded.iter().map(|l| l.attempt).collect();
        let rows = sqlx::query!(
            r#"
            with done as (
                update jobs j set state = 'succeeded', finished_at = now(), updated_at = now(),
                    lease_expires_at = null
                where j.id = any($4::int8[]) and j.state = 'running'
                  and (j.id, j.attempt) in (select * from unnest($4::int8[], $5::int4[]))
                returning j.parent_id
            ), parents as (
                update jobs p
                set pending_children = p.pending_children
                        - (select count(*) from done where done.parent_id = p.id)::int4,
                    updated_at = now()
                where p.id = any(array(select parent_id from done where parent_id is not null))
            ), picked as materialized (
                select id from jobs
                where state = 'queued' and pending_children = 0 and run_at <= now()
                order by priority desc, run_at, id
                limit $1
                for update skip locked
            )
            update jobs j set state = 'running', attempt = j.attempt + 1, worker_id = $2,
                lease_expires_at = now() + $3::interval, started_at = now(), updated_at = now(),
                waiting = null
            where j.id = any(array(select id from picked))
            returning j.id, j.kind, j.payload, j.attempt, j.failed_attempts, j.max_attempts,
                j.first_failed_at, j.parent_id, j.started_at as "started_at!"
            "#,
            i64::try_from(limit).unwrap_or(i64::MAX),
            worker.get(),
            interval(lease),
            &ids,
            &attempts,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ClaimedJob {
                lease: Lease {
                    job_id: JobId::new(r.id),
                    attempt: r.attempt,
                },
                kind: r.kind,
                payload: r.payload,
                failed_attempts: r.failed_attempts,
                max_attempts: r.max_attempts,
                first_failed_at: r.first_failed_at,
                parent_id: r.parent_id.map(JobId::new),
                started_at: r.started_at,
            })
            .collect())
    }

    /// Extends the lease of every job `worker` holds but the `abandoned` ones, and of the
    /// fleet-limit slots those jobs hold. Returns the leases it still holds, so the worker
    /// can stop work it lost (to a rescuer after a stall, or to an operator's cancel).
    ///
    /// An abandoned job is one whose attempt the worker stopped by its own clock, because
    /// its lease might have lapsed before a heartbeat got through: extending it now would
    /// keep a job nobody runs `running` forever. Its lease lapses and the rescuer requeues
    /// it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn heartbeat(
        &self,
        worker: WorkerId,
        lease: Duration,
        abandoned: &[JobId],
    ) -> Result<Vec<Lease>> {
        let abandoned: Vec<i64> = abandoned.iter().map(|id| id.get()).collect();
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query!(
            r#"
            update jobs set lease_expires_at = now() + $2::interval
            where worker_id = $1 and state = 'running' and id <> all($3::int8[])
            returning id, attempt
            "#,
            worker.get(),
            interval(lease),
            &abandoned,
        )
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query!(
            r#"
            update limit_slots s set lease_expires_at = now() + $2::interval
            where s.holder_worker_id = $1 and s.holder_job_id is not null
              and s.holder_job_id <> all($3::int8[])
              -- Only for attempts still running: a slot whose release never happened
              -- (a leaked permit) frees itself one lease after its job ended.
              and exists (select 1 from jobs j where j.id = s.holder_job_id
                          and j.attempt = s.holder_attempt and j.state = 'running')
            "#,
            worker.get(),
            interval(lease),
            &abandoned,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(held
            .into_iter()
            .map(|r| Lease {
                job_id: JobId::new(r.id),
                attempt: r.attempt,
            })
            .collect())
    }

    /// Marks many jobs succeeded in one statement, each fenced by its lease; releases
    /// their parents' counts. Returns how many were still held (the others were fenced out).
    ///
    /// The worker's hot loop uses [`Queue::complete_and_claim`], whose first CTEs are this
    /// statement; this one is for completions inside a caller's transaction, which need the
    /// count to detect a lost lease and must not claim.
    ///
    /// # Errors
    /// Database errors.
    pub async fn complete_many<'e, E>(exec: E, leases: &[Lease]) -> Result<u64>
    where
        E: PgExecutor<'e>,
    {
        let ids: Vec<i64> = leases.iter().map(|l| l.job_id.get()).collect();
        let attempts: Vec<i32> = leases.iter().map(|l| l.attempt).collect();
        let done = sqlx::query_scalar!(
            r#"
            with done as (
                update jobs j set state = 'succeeded', finished_at = now(), updated_at = now(),
                    lease_expires_at = null
                where j.id = any($1::int8[]) and j.state = 'running'
                  and (j.id, j.attempt) in (select * from unnest($1::int8[], $2::int4[]))
                returning j.parent_id
            ), parents as (
                update jobs p
                set pending_children = p.pending_children
                        - (select count(*) from done where done.parent_id = p.id)::int4,
                    updated_at = now()
                where p.id = any(array(select parent_id from done where parent_id is not null))
            )
            select count(*) as "n!" from done
            "#,
            &ids,
            &attempts,
        )
        .fetch_one(exec)
        .await?;
        Ok(u64::try_from(done).unwrap_or(0))
    }

    /// Marks one job succeeded, fenced by its lease, inside the caller's transaction so
    /// the handler's own writes (a ledger row, a result) commit with the state change.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if another attempt owns the job; database errors.
    pub async fn complete(tx: &mut Transaction<'_, Postgres>, lease: Lease) -> Result<()> {
        match Self::complete_many(&mut **tx, &[lease]).await? {
            0 => Err(Error::LeaseLost(lease)),
            _ => Ok(()),
        }
    }

    /// Locks the job row for the rest of `tx` if `lease` still holds it. Handlers call this
    /// first in any transaction whose writes belong to their attempt.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if another attempt owns the job; database errors.
    pub async fn fence(tx: &mut Transaction<'_, Postgres>, lease: Lease) -> Result<()> {
        let held = sqlx::query_scalar!(
            "select id from jobs where id = $1 and attempt = $2 and state = 'running' for update",
            lease.job_id.get(),
            lease.attempt,
        )
        .fetch_optional(&mut **tx)
        .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(Error::LeaseLost(lease)),
        }
    }

    /// Records a failed attempt: back to the queue after the policy's delay (or the
    /// handler's `RetryAfter`), or `failed` for good once fatal or out of attempts. A
    /// throttled attempt ([`FailureKind::Throttled`]) goes back after its delay without
    /// counting: a rate limit never uses up a job's attempts.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if another attempt owns the job; database errors.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        error: &JobError,
        policy: &RetryPolicy,
    ) -> Result<FailureRecorded> {
        use crate::disposition::Disposition;
        if error.kind == FailureKind::Throttled {
            let delay = match error.disposition {
                Disposition::RetryAfter(d) => d,
                Disposition::Retry | Disposition::Fatal => policy.delay(1),
            };
            let run_at = Self::transition(
                &self.pool,
                job.lease,
                Transition {
                    state: JobState::Queued,
                    delay,
                    failed: false,
                    error: Some(&error.message),
                    outcome: "throttled",
                },
            )
            .await?;
            return Ok(FailureRecorded::WillRetry { run_at });
        }
        let failed_attempts = job.failed_attempts + 1;
        // The worker's clock against the database's: a few seconds of skew do not matter
        // against a budget of minutes.
        let failing_for = job
            .first_failed_at
            .and_then(|since| (Utc::now() - since).to_std().ok())
            .unwrap_or_default();
        let decision = policy.decide(failed_attempts, job.max_attempts, failing_for);
        let retry_in = match (error.disposition, decision) {
            (Disposition::Fatal, _) | (_, RetryDecision::GiveUp) => None,
            (Disposition::Retry, RetryDecision::RetryIn(d)) => Some(d),
            (Disposition::RetryAfter(d), RetryDecision::RetryIn(_)) => Some(d),
        };
        let message = match (retry_in, error.disposition) {
            (None, Disposition::Fatal) | (Some(_), _) => error.message.clone(),
            (None, _) => format!(
                "gave up after {failed_attempts} failed attempts in {}s; last error: {}",
                failing_for.as_secs(),
                error.message
            ),
        };
        let (state, outcome) = match retry_in {
            Some(_) => (JobState::Queued, "retry"),
            None => (JobState::Failed, "failed"),
        };
        let run_at = Self::transition(
            &self.pool,
            job.lease,
            Transition {
                state,
                delay: retry_in.unwrap_or_default(),
                failed: true,
                error: Some(&message),
                outcome,
            },
        )
        .await?;
        Ok(match retry_in {
            Some(_) => FailureRecorded::WillRetry { run_at },
            None => FailureRecorded::Failed,
        })
    }

    /// The one fenced state change behind fail, cancel-by-handler and hand-back.
    async fn transition<'e, E>(exec: E, lease: Lease, t: Transition<'_>) -> Result<DateTime<Utc>>
    where
        E: PgExecutor<'e>,
    {
        let row = sqlx::query!(
            r#"
            with done as (
                update jobs j set state = $3::job_state, run_at = now() + $4::interval,
                    failed_attempts = j.failed_attempts + $5::int4,
                    first_failed_at = case when $5::int4 > 0
                                           then coalesce(j.first_failed_at, now())
                                           else j.first_failed_at end,
                    last_error = coalesce($6, j.last_error),
                    finished_at = case when $3::job_state in ('succeeded', 'failed', 'cancelled')
                                       then now() end,
                    lease_expires_at = null, updated_at = now()
                where j.id = $1 and j.attempt = $2 and j.state = 'running'
                returning j.id, j.attempt, j.worker_id, j.started_at, j.parent_id, j.state, j.run_at
            ), hist as (
                insert into job_attempts (job_id, attempt, worker_id, started_at, outcome, error)
                select id, attempt, worker_id, started_at, $7, $6 from done
            ), parents as (
                update jobs p set pending_children = p.pending_children - 1, updated_at = now()
                from done
                where p.id = done.parent_id and done.state in ('succeeded', 'failed', 'cancelled')
            )
            select run_at from done
            "#,
            lease.job_id.get(),
            lease.attempt,
            t.state as JobState,
            interval(t.delay),
            i32::from(t.failed),
            t.error,
            t.outcome,
        )
        .fetch_optional(exec)
        .await?;
        row.map(|r| r.run_at).ok_or(Error::LeaseLost(lease))
    }

    /// Puts every job `worker` still holds back in the queue to run at once elsewhere,
    /// and frees its fleet-limit slots. Used at shutdown after the grace period; the
    /// interrupted attempts do not count as failures.
    ///
    /// # Errors
    /// Database errors.
    pub async fn hand_back(&self, worker: WorkerId) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query_scalar!(
            r#"
            with done as (
                update jobs set state = 'queued', run_at = now(), lease_expires_at = null,
                    updated_at = now()
                where worker_id = $1 and state = 'running'
                returning id, attempt, worker_id, started_at
            ), hist as (
                insert into job_attempts (job_id, attempt, worker_id, started_at, outcome, error)
                select id, attempt, worker_id, started_at, 'handed_back',
                       'worker shut down before the job finished'
                from done
            )
            select count(*) as "n!" from done
            "#,
            worker.get(),
        )
        .fetch_one(&mut *tx)
        .await?;
        limit::release_all(&mut tx, worker).await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Requeues running jobs whose lease lapsed (their worker died or lost the database),
    /// or fails them when out of attempts and failing for longer than `failure_budget`, as
    /// [`RetryPolicy::decide`] does for a handler's failure. One worker in the fleet does
    /// this at a time. Returns how many jobs were rescued, or `None` if another worker
    /// holds the lock.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rescue_expired(&self, failure_budget: Duration) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let elected = sqlx::query_scalar!(
            r#"select pg_try_advisory_xact_lock($1) as "locked!""#,
            RESCUER_LOCK_KEY
        )
        .fetch_one(&mut *tx)
        .await?;
        if !elected {
            return Ok(None);
        }
        let n = sqlx::query_scalar!(
            r#"
            with expired as materialized (
                select id from jobs
                where state = 'running' and lease_expires_at < now()
                order by id
                limit $1
                for update skip locked
            ), done as (
                update jobs j set
                    failed_attempts = j.failed_attempts + 1,
                    first_failed_at = coalesce(j.first_failed_at, now()),
                    state = case when j.failed_attempts + 1 >= j.max_attempts
                                  and coalesce(j.first_failed_at, now()) <= now() - $2::interval
                                 then 'failed'::job_state else 'queued'::job_state end,
                    finished_at = case when j.failed_attempts + 1 >= j.max_attempts
                                        and coalesce(j.first_failed_at, now()) <= now() - $2::interval
                                       then now() end,
                    run_at = now(),
                    last_error = 'lease expired: worker ' || j.worker_id::text
                        || ' stopped heartbeating (killed, stalled or cut off from the database)',
                    lease_expires_at = null, updated_at = now()
                where j.id = any(array(select id from expired))
                returning j.id, j.attempt, j.worker_id, j.started_at, j.parent_id, j.state,
                    j.last_error
            ), hist as (
                insert into job_attempts (job_id, attempt, worker_id, started_at, outcome, error)
                select id, attempt, worker_id, started_at, 'lease_expired', last_error from done
            ), parents as (
                update jobs p
                set pending_children = p.pending_children
                        - (select count(*) from done
                           where done.parent_id = p.id and done.state = 'failed')::int4,
                    updated_at = now()
                where p.id = any(array(select parent_id from done where state = 'failed'))
            )
            select count(*) as "n!" from done
            "#,
            RESCUE_BATCH,
            interval(failure_budget),
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(u64::try_from(n).unwrap_or(0)))
    }

    /// Runs `ANALYZE jobs` when more than a fifth of the table (and at least 1,000 rows)
    /// changed since the last analyze. The claim's plan depends on knowing how many jobs
    /// are queued; after a bulk enqueue into a fresh table, autovacuum's analyze can be a
    /// minute away, and until then the planner may sort every queued row on each claim.
    ///
    /// # Errors
    /// Database errors.
    pub async fn refresh_stats_if_stale(&self) -> Result<bool> {
        let stale = sqlx::query_scalar!(
            r#"
            select coalesce(s.n_mod_since_analyze > greatest(1000, 0.2 * greatest(c.reltuples, 0)), false)
                as "stale!"
            from pg_class c left join pg_stat_user_tables s on s.relid = c.oid
            where c.oid = 'jobs'::regclass
            "#
        )
        .fetch_one(&self.pool)
        .await?;
        if stale {
            sqlx::query!("analyze jobs").execute(&self.pool).await?;
        }
        Ok(stale)
    }

    /// Deletes jobs that finished more than `retention` ago, with their attempt history
    /// and children. The LLM ledger is not touched: it is the audit record.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune(&self, retention: Duration) -> Result<u64> {
        let n = sqlx::query!(
            r#"
            delete from jobs where id in (
                select id from jobs
                where finished_at < now() - $1::interval and parent_id is null
                limit $2
            )
            "#,
            interval(retention),
            PRUNE_BATCH,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Cancels a queued or running job and its unfinished children. A running job's
    /// worker notices at its next heartbeat and stops; its late writes are fenced out.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidState`] if already finished; database errors.
    pub async fn cancel(&self, id: JobId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let state = Self::lock_state(&mut tx, id).await?;
        if state.is_finished() {
            return Err(Error::InvalidState {
                id,
                state,
                hint: "only queued or running jobs can be cancelled; `reviewq retry` runs it again",
            });
        }
        sqlx::query!(
            r#"
            update jobs set state = 'cancelled', finished_at = now(), updated_at = now(),
                lease_expires_at = null
            where parent_id = $1 and state in ('queued', 'running')
            "#,
            id.get()
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"
            with done as (
                update jobs set state = 'cancelled', finished_at = now(), updated_at = now(),
                    lease_expires_at = null, pending_children = 0,
                    last_error = coalesce(last_error || '; ', '') || 'cancelled by an operator'
                where id = $1
                returning parent_id
            )
            update jobs p set pending_children = p.pending_children - 1, updated_at = now()
            from done where p.id = done.parent_id
            "#,
            id.get()
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs a failed or cancelled job again with a fresh retry budget, or a queued job
    /// that waits for a retry right now.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidState`] if running or succeeded; database errors.
    pub async fn retry(&self, id: JobId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let state = Self::lock_state(&mut tx, id).await?;
        match state {
            JobState::Running | JobState::Succeeded => {
                return Err(Error::InvalidState {
                    id,
                    state,
                    hint: "only failed, cancelled or waiting jobs can be retried",
                });
            }
            JobState::Queued => {
                sqlx::query!(
                    "update jobs set run_at = now(), updated_at = now() where id = $1",
                    id.get()
                )
                .execute(&mut *tx)
                .await?;
            }
            JobState::Failed | JobState::Cancelled => {
                sqlx::query!(
                    r#"
                    with again as (
                        update jobs set state = 'queued', run_at = now(), failed_attempts = 0,
                            first_failed_at = null, finished_at = null, updated_at = now()
                        where id = $1
                        returning parent_id
                    )
                    update jobs p set pending_children = p.pending_children + 1,
                        updated_at = now()
                    from again
                    where p.id = again.parent_id and p.state in ('queued', 'running')
                    "#,
                    id.get()
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lock_state(tx: &mut Transaction<'_, Postgres>, id: JobId) -> Result<JobState> {
        sqlx::query_scalar!(
            r#"select state as "state: JobState" from jobs where id = $1 for update"#,
            id.get()
        )
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(Error::NotFound(id))
    }

    /// One job.
    ///
    /// # Errors
    /// [`Error::NotFound`]; database errors.
    pub async fn get(&self, id: JobId) -> Result<JobRow> {
        sqlx::query_as!(
            JobRow,
            r#"
            select id as "id: JobId", kind, state as "state: JobState", priority, attempt,
                failed_attempts, max_attempts, run_at, lease_expires_at, worker_id, last_error,
                dedupe_key, parent_id as "parent_id: JobId", pending_children, payload,
                created_at, started_at, finished_at, case when state = 'queued' then coalesce(waiting, (select c.waiting from jobs c
                    where c.parent_id = jobs.id and c.state = 'queued'
                    and c.waiting is not null limit 1)) end
                    as "waiting: sqlx::types::Json<Waiting>"
            from jobs where id = $1
            "#,
            id.get()
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound(id))
    }

    /// The most recent top-level jobs, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recent(&self, limit: i64) -> Result<Vec<JobRow>> {
        Ok(sqlx::query_as!(
            JobRow,
            r#"
            select id as "id: JobId", kind, state as "state: JobState", priority, attempt,
                failed_attempts, max_attempts, run_at, lease_expires_at, worker_id, last_error,
                dedupe_key, parent_id as "parent_id: JobId", pending_children, payload,
                created_at, started_at, finished_at, case when state = 'queued' then coalesce(waiting, (select c.waiting from jobs c
                    where c.parent_id = jobs.id and c.state = 'queued'
                    and c.waiting is not null limit 1)) end
                    as "waiting: sqlx::types::Json<Waiting>"
            from jobs where parent_id is null
            order by id desc
            limit $1
            "#,
            limit
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The attempt history of one job, oldest first. Attempts that did not succeed are
    /// in `job_attempts`; a successful last attempt is the job row itself.
    ///
    /// # Errors
    /// Database errors.
    pub async fn attempts(&self, id: JobId) -> Result<Vec<AttemptRow>> {
        Ok(sqlx::query_as!(
            AttemptRow,
            r#"
            select attempt as "attempt!", worker_id as "worker_id!", started_at as "started_at!",
                finished_at as "finished_at!", outcome as "outcome!", error
            from (
                select attempt, worker_id, started_at, finished_at, outcome, error
                from job_attempts where job_id = $1
                union all
                select attempt, worker_id, started_at, finished_at, 'succeeded', null
                from jobs where id = $1 and state = 'succeeded'
            ) a
            order by attempt
            "#,
            id.get()
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A parent's children counted by state (per-chunk progress).
    ///
    /// # Errors
    /// Database errors.
    pub async fn child_counts(&self, parent: JobId) -> Result<ChildCounts> {
        let r = sqlx::query!(
            r#"
            select
                count(*) filter (where state = 'queued') as "queued!",
                count(*) filter (where state = 'running') as "running!",
                count(*) filter (where state = 'succeeded') as "succeeded!",
                count(*) filter (where state = 'failed') as "failed!",
                count(*) filter (where state = 'cancelled') as "cancelled!"
            from jobs where parent_id = $1
            "#,
            parent.get()
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ChildCounts {
            queued: r.queued,
            running: r.running,
            succeeded: r.succeeded,
            failed: r.failed,
            cancelled: r.cancelled,
        })
    }

    /// Whether anything is left to do, fleet-wide. Each probe is an index-only lookup.
    ///
    /// # Errors
    /// Database errors.
    pub async fn backlog(&self) -> Result<Backlog> {
        let r = sqlx::query!(
            r#"
            select
                exists (select 1 from jobs where state = 'queued' and pending_children = 0
                        and run_at <= now() and waiting is null) as "runnable!",
                exists (select 1 from jobs where state = 'queued'
                        and (pending_children > 0 or run_at > now())) as "waiting!",
                exists (select 1 from jobs where state = 'running') as "running!",
                exists (select 1 from jobs where state = 'queued' and pending_children = 0
                        and waiting is null) as "unconditional!",
                (select waiting from jobs where state = 'queued' and pending_children = 0
                 and waiting is not null limit 1) as "blocked: sqlx::types::Json<Waiting>"
            "#
        )
        .fetch_one(&self.pool)
        .await?;
        // A job waiting for a condition whose recheck time has come counts as waiting, not
        // runnable: claiming it would only make it wait again.
        let blocked = (!r.running && !r.unconditional)
            .then_some(r.blocked)
            .flatten()
            .map(|w| w.0);
        Ok(Backlog {
            runnable: r.runnable,
            waiting: r.waiting || blocked.is_some(),
            running: r.running,
            blocked,
        })
    }

    /// Makes this attempt wait for a condition outside the queue, in `tx`: the job goes
    /// back to `queued` until `until` (when its handler checks the condition again), with
    /// `waiting` shown by `status`. The attempt is not counted as failed.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the attempt no longer holds the job; database errors.
    pub async fn wait(
        tx: &mut Transaction<'_, Postgres>,
        lease: Lease,
        until: DateTime<Utc>,
        waiting: &Waiting,
    ) -> Result<()> {
        let rows = sqlx::query!(
            r#"
            update jobs set state = 'queued', run_at = greatest($3, now()),
                lease_expires_at = null, waiting = $4, updated_at = now()
            where id = $1 and attempt = $2 and state = 'running'
            "#,
            lease.job_id.get(),
            lease.attempt,
            until,
            sqlx::types::Json(waiting) as _,
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if rows == 0 {
            return Err(Error::LeaseLost(lease));
        }
        Ok(())
    }

    /// Ends every wait on `key` now: those jobs become runnable (and workers are notified).
    /// Returns how many were woken.
    ///
    /// # Errors
    /// Database errors.
    pub async fn wake<'e, E>(exec: E, key: &str) -> Result<u64>
    where
        E: PgExecutor<'e>,
    {
        Ok(sqlx::query!(
            r#"update jobs set run_at = now(), updated_at = now()
               where state = 'queued' and waiting->>'key' = $1 and run_at > now()"#,
            key
        )
        .execute(exec)
        .await?
        .rows_affected())
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
