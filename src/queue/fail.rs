//! Recording a failed attempt: retry with backoff, wait for a rate limit, or fail for good;
//! every change fenced by the attempt's lease.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{
    ClaimedJob, Error, FailureKind, FailureRecorded, JobError, JobState, Lease, Queue, Result,
    RetryDecision, RetryPolicy, Transition, interval,
};

impl Queue {
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
    pub(super) async fn transition<'e, E>(
        exec: E,
        lease: Lease,
        t: Transition<'_>,
    ) -> Result<DateTime<Utc>>
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
}
