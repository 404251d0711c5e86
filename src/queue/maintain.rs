//! Keeping the queue healthy: handing back a stopping worker's jobs, rescuing lapsed
//! leases, fresh planner statistics, pruning finished jobs.

use std::time::Duration;

use super::{Queue, Result, WorkerId, interval, limit};

/// Advisory-lock key that elects one rescuer at a time across the fleet ("rq-rescu").
const RESCUER_LOCK_KEY: i64 = 0x7271_2d72_6573_6375;

/// How many expired leases one rescue pass handles; the rest wait for the next pass.
const RESCUE_BATCH: i64 = 1000;

/// How many finished jobs one prune pass deletes, to keep each delete short.
const PRUNE_BATCH: i64 = 5000;

/// Most batches one prune call deletes (a million rows), so that a first prune after a long
/// outage does not keep the maintenance loop from rescuing leases for minutes.
const PRUNE_MAX_BATCHES: usize = 200;

impl Queue {
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
                -- `lease_expires_at is not null` (implied by 'running') lets jobs_leased
                -- serve this.
                update jobs set state = 'queued', run_at = now(), lease_expires_at = null,
                    updated_at = now()
                where worker_id = $1 and state = 'running' and lease_expires_at is not null
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
                where lease_expires_at < now() and state = 'running'
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
    /// and children, in batches of [`PRUNE_BATCH`] until none are left (at most
    /// [`PRUNE_MAX_BATCHES`] per call; the next call goes on). Returns how many it deleted.
    /// The LLM ledger is not touched: it is the audit record.
    ///
    /// Batches keep each delete's locks and WAL short; draining rather than one batch per
    /// call is what keeps the table bounded: at 500 jobs/s a pass every ten minutes has
    /// 300,000 rows to delete.
    ///
    /// # Errors
    /// Database errors (the batches before the error stay deleted).
    pub async fn prune(&self, retention: Duration) -> Result<u64> {
        let mut total = 0;
        for _ in 0..PRUNE_MAX_BATCHES {
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
            total += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(total)
    }
}
