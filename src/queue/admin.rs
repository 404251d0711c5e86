//! What operators and commands ask of the queue: cancel, retry, and reading jobs, attempts,
//! children and the backlog.

use sqlx::{Postgres, Transaction};

use super::{
    AttemptRow, Backlog, ChildCounts, Error, JobId, JobRow, JobState, Queue, Result, Waiting,
};

impl Queue {
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

    pub(super) async fn lock_state(
        tx: &mut Transaction<'_, Postgres>,
        id: JobId,
    ) -> Result<JobState> {
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

    /// Jobs that a worker could claim right now: queued, due, not waiting for children or a
    /// condition. A scan of the claim index, so a gauge for benchmarks and dashboards, not
    /// something to call per job.
    ///
    /// # Errors
    /// Database errors.
    pub async fn available(&self) -> Result<i64> {
        Ok(sqlx::query_scalar!(
            r#"
            select count(*) as "n!" from jobs
            where state = 'queued' and run_at <= now() and pending_children = 0
              and waiting is null
            "#
        )
        .fetch_one(&self.pool)
        .await?)
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
                exists (select 1 from jobs where lease_expires_at is not null) as "running!",
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
}
