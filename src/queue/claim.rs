//! Claiming jobs under a lease, extending it, and the fenced completions.

use std::time::Duration;

use sqlx::{PgExecutor, Postgres, Transaction};

use super::{ClaimedJob, Error, JobId, Lease, Queue, Result, WorkerId, interval};

impl Queue {
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
                -- Priority by priority, highest first, each reading only its due jobs
                -- from its claim floor on (see job_priorities); the nested loop stops at
                -- the limit, so a lower priority is only read when the higher ones had
                -- too few.
                select j.id
                from (select priority, claim_floor from job_priorities
                      order by priority desc) p
                cross join lateral (
                    select id from jobs
                    where state = 'queued' and priority = p.priority
                      and pending_children = 0
                      and run_at >= p.claim_floor and run_at <= now()
                    order by run_at, id
                    limit $1
                    for update skip locked
                ) j
                limit $1
            )
            update jobs j set state = 'running', attempt = j.attempt + 1, worker_id = $2,
                lease_expires_at = now() + $3::interval, started_at = now(), updated_at = now(),
                waiting = null
            where j.id = any(array(select id from picked))
            returning j.id, j.kind, j.payload, j.attempt, j.failed_attempts, j.max_attempts,
                j.priority, j.first_failed_at, j.parent_id, j.started_at as "started_at!"
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
                priority: r.priority,
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
        abandoned: &[Lease],
    ) -> Result<Vec<Lease>> {
        let (skip_ids, skip_attempts): (Vec<i64>, Vec<i32>) = abandoned
            .iter()
            .map(|l| (l.job_id.get(), l.attempt))
            .unzip();
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query!(
            r#"
            -- `lease_expires_at is not null` (implied by 'running') lets jobs_leased serve this.
            update jobs set lease_expires_at = now() + $2::interval
            where worker_id = $1 and state = 'running' and lease_expires_at is not null
              and not exists (select 1 from unnest($3::int8[], $4::int4[]) a(id, attempt)
                              where a.id = jobs.id and a.attempt = jobs.attempt)
            returning id, attempt
            "#,
            worker.get(),
            interval(lease),
            &skip_ids,
            &skip_attempts,
        )
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query!(
            r#"
            update limit_slots s set lease_expires_at = now() + $2::interval
            where s.holder_worker_id = $1 and s.holder_job_id is not null
              and not exists (select 1 from unnest($3::int8[], $4::int4[]) a(id, attempt)
                              where a.id = s.holder_job_id and a.attempt = s.holder_attempt)
              -- Only for attempts still running: a slot whose release never happened
              -- (a leaked permit) frees itself one lease after its job ended.
              and exists (select 1 from jobs j where j.id = s.holder_job_id
                          and j.attempt = s.holder_attempt and j.state = 'running')
            "#,
            worker.get(),
            interval(lease),
            &skip_ids,
            &skip_attempts,
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
}
