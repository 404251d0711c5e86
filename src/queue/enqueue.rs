//! Inserting jobs: one, many, and a parent's children.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, Transaction};

use super::{Enqueued, Error, JobId, Lease, NewJob, Queue, Result, interval};

impl Queue {
    /// Inserts one job, inside the caller's transaction if `exec` is one.
    ///
    /// A job is due from the moment it is inserted (`clock_timestamp()`, not the
    /// transaction's `now()`): jobs enqueued in one transaction then keep their order in
    /// line, and a child placed at its parent's `run_at` sorts before the jobs enqueued
    /// after its parent in the same batch.
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
            values ($1, $2, $3, $4, $5, clock_timestamp() + $6::interval)
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
        Self::insert_many(exec, jobs, None).await
    }

    /// Inserts `jobs`, as children of `parent` when given. A child without a delay takes
    /// its parent's place in line (the parent's `run_at`), not the back of it: the claim
    /// orders a priority's due jobs by `run_at`, and work an MR has already started should
    /// finish before MRs enqueued after it are planned, or a burst of a thousand MRs plans
    /// every one of them while the LLM stands idle.
    async fn insert_many<'e, E>(
        exec: E,
        jobs: &[NewJob],
        parent: Option<(JobId, DateTime<Utc>)>,
    ) -> Result<Vec<JobId>>
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
            insert into jobs (kind, payload, priority, max_attempts, run_at, parent_id)
            select kind, payload, priority, max_attempts,
                case when delay > interval '0' or $6::timestamptz is null
                     then clock_timestamp() + delay
                     else least($6::timestamptz, clock_timestamp()) end,
                $7::int8
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
            parent.map(|(_, run_at)| run_at),
            parent.map(|(id, _)| id.get()),
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
        // The parent keeps its `run_at` (when it became due): woken by its last child, it
        // is claimed in its old place, so the MR posts before later MRs are planned.
        let parked = sqlx::query_scalar!(
            r#"
            with parked as (
                update jobs set state = 'queued', pending_children = pending_children + $3,
                    lease_expires_at = null, updated_at = now()
                where id = $1 and attempt = $2 and state = 'running'
                returning id, attempt, worker_id, started_at, run_at
            ), hist as (
                insert into job_attempts (job_id, attempt, worker_id, started_at, outcome)
                select id, attempt, worker_id, started_at, 'awaiting_children' from parked
            )
            select run_at from parked
            "#,
            lease.job_id.get(),
            lease.attempt,
            count,
        )
        .fetch_optional(&mut **tx)
        .await?;
        let Some(run_at) = parked else {
            return Err(Error::LeaseLost(lease));
        };
        Self::insert_many(&mut **tx, children, Some((lease.job_id, run_at))).await
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
            returning run_at
            "#,
            parent.get(),
            count,
        )
        .fetch_optional(&mut **tx)
        .await?;
        let Some(run_at) = waiting else {
            let state = Self::lock_state(tx, parent).await?;
            return Err(Error::InvalidState {
                id: parent,
                state,
                hint: "children can only be added to a parent that waits for its children",
            });
        };
        Self::insert_many(&mut **tx, children, Some((parent, run_at))).await
    }
}
