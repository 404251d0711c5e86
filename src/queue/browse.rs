//! Read-only views of the queue for the web console: jobs filtered by state, kind and
//! payload, counts by kind and state, the workers that hold leases, the fleet-wide slots
//! in use and the enqueue-to-start latency. Nothing here writes; the console's actions
//! go through [`Queue::retry`] and [`Queue::cancel`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use super::{JobId, JobRow, JobState, Queue, Result, Waiting};

/// Which jobs a list shows. Every field left `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs whose payload contains this JSON (`payload @> filter`), so a caller that
    /// knows a payload's shape (the review job's project and IID) can select by it while
    /// the queue stays ignorant of what payloads mean.
    pub payload: Option<serde_json::Value>,
    /// Only top-level jobs (no chunk children).
    pub top_level: bool,
    /// Only jobs with a smaller id (the next page of a newest-first list).
    pub before: Option<JobId>,
    /// At most this many rows.
    pub limit: i64,
}

/// How many jobs of one kind are in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCount {
    pub kind: String,
    pub state: JobState,
    pub jobs: i64,
}

/// A worker process that holds at least one lease that has not lapsed. Idle workers hold
/// none and so are not seen: the queue has no heartbeat of its own for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveWorker {
    pub worker_id: uuid::Uuid,
    /// Jobs it runs now.
    pub running: i64,
    /// Its latest lease expiry: heartbeats push this forward every lease/3.
    pub lease_expires_at: DateTime<Utc>,
}

/// Slots of one fleet-wide limit (`limit_slots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotUse {
    pub resource: String,
    pub capacity: i64,
    /// Slots held under a lease that has not lapsed.
    pub in_use: i64,
}

/// Enqueue-to-start latency over a recent window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Jobs started in the window (first attempts only).
    pub started: i64,
    /// Median and 95th percentile, in seconds; `None` when nothing started.
    pub p50_secs: Option<f64>,
    pub p95_secs: Option<f64>,
    /// Jobs that could start now but no worker has claimed, and how long the oldest waited.
    pub runnable: i64,
    pub oldest_runnable_secs: f64,
}

/// Jobs that could start now but no worker has claimed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Runnable {
    pub jobs: i64,
    /// How long the oldest of them has waited (0 when none waits).
    pub oldest_secs: f64,
}

/// Quantiles (0.5, 0.95, 0.99) of one kind's jobs that finished in a recent window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinishedTimes {
    pub kind: String,
    /// Enqueue-to-start, of first attempts; `None` when none finished on its first.
    pub wait_secs: Option<Vec<f64>>,
    /// Run time of the final attempt.
    pub run_secs: Option<Vec<f64>>,
}

/// How far one job and its children have got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub state: JobState,
    /// Children that ended (succeeded, failed or cancelled), of `children`.
    pub children_ended: i64,
    pub children: i64,
    /// Why the job waits (its own reason or a queued child's), while it is queued.
    pub waiting: Option<String>,
}

impl Queue {
    /// How far job `id` and its children have got.
    ///
    /// # Errors
    /// [`super::Error::NotFound`]; database errors.
    pub async fn progress(&self, id: JobId) -> Result<Progress> {
        let r = sqlx::query!(
            r#"
            select j.state as "state: JobState",
                (select count(*) from jobs c where c.parent_id = j.id
                    and c.state in ('succeeded', 'failed', 'cancelled')) as "ended!",
                (select count(*) from jobs c where c.parent_id = j.id) as "children!",
                case when j.state = 'queued' then coalesce(j.waiting->>'reason',
                    (select c.waiting->>'reason' from jobs c where c.parent_id = j.id
                     and c.state = 'queued' and c.waiting is not null limit 1)) end as waiting
            from jobs j where j.id = $1
            "#,
            id.get()
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(super::Error::NotFound(id))?;
        Ok(Progress {
            state: r.state,
            children_ended: r.ended,
            children: r.children,
            waiting: r.waiting,
        })
    }

    /// Unfinished (queued or running) jobs with one of these dedupe keys.
    ///
    /// # Errors
    /// Database errors.
    pub async fn unfinished_with_keys(&self, keys: &[String]) -> Result<Vec<JobId>> {
        let ids = sqlx::query_scalar!(
            "select id from jobs where dedupe_key = any($1) and state in ('queued', 'running')",
            keys
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(JobId::new).collect())
    }

    /// `ids` and all their children.
    ///
    /// # Errors
    /// Database errors.
    pub async fn with_children(&self, ids: &[JobId]) -> Result<Vec<JobId>> {
        let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let all = sqlx::query_scalar!(
            "select id from jobs where id = any($1) or parent_id = any($1) order by id",
            &raw
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(all.into_iter().map(JobId::new).collect())
    }

    /// Jobs matching `filter`, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRow>> {
        Ok(sqlx::query_as!(
            JobRow,
            r#"
            select id as "id: JobId", kind, state as "state: JobState", priority, attempt,
                failed_attempts, max_attempts, run_at, lease_expires_at, worker_id, last_error,
                dedupe_key, parent_id as "parent_id: JobId", pending_children, payload,
                created_at, started_at, finished_at,
                waiting as "waiting: sqlx::types::Json<Waiting>"
            from jobs
            where ($1::job_state is null or state = $1)
              and ($2::text is null or kind = $2)
              and ($3::jsonb is null or payload @> $3)
              and (not $4 or parent_id is null)
              and id < coalesce($5, 9223372036854775807)
            order by id desc
            limit $6
            "#,
            filter.state as Option<JobState>,
            filter.kind,
            filter.payload,
            filter.top_level,
            filter.before.map(JobId::get),
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The children of `parent` (a review's chunk jobs), oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn children(&self, parent: JobId, limit: i64) -> Result<Vec<JobRow>> {
        Ok(sqlx::query_as!(
            JobRow,
            r#"
            select id as "id: JobId", kind, state as "state: JobState", priority, attempt,
                failed_attempts, max_attempts, run_at, lease_expires_at, worker_id, last_error,
                dedupe_key, parent_id as "parent_id: JobId", pending_children, payload,
                created_at, started_at, finished_at,
                waiting as "waiting: sqlx::types::Json<Waiting>"
            from jobs where parent_id = $1
            order by id
            limit $2
            "#,
            parent.get(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Jobs by kind and state; only the pairs that have jobs.
    ///
    /// # Errors
    /// Database errors.
    pub async fn state_counts(&self) -> Result<Vec<StateCount>> {
        Self::state_counts_in(&self.pool).await
    }

    /// [`Queue::state_counts`] read through `exec` (a caller's snapshot, as `/metrics`
    /// reads every family in one transaction).
    ///
    /// # Errors
    /// Database errors.
    pub async fn state_counts_in<'e>(exec: impl PgExecutor<'e>) -> Result<Vec<StateCount>> {
        Ok(sqlx::query_as!(
            StateCount,
            r#"select kind, state as "state: JobState", count(*) as "jobs!"
               from jobs group by kind, state order by kind, state"#
        )
        .fetch_all(exec)
        .await?)
    }

    /// Due jobs no worker has claimed, read through `exec`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn runnable_in<'e>(exec: impl PgExecutor<'e>) -> Result<Runnable> {
        let r = sqlx::query!(
            r#"select count(*) as "jobs!",
                      coalesce(extract(epoch from now() - min(run_at))::float8, 0) as "oldest!"
               from jobs where state = 'queued' and pending_children = 0 and run_at <= now()"#
        )
        .fetch_one(exec)
        .await?;
        Ok(Runnable {
            jobs: r.jobs,
            oldest_secs: r.oldest,
        })
    }

    /// Wait and run quantiles per kind of the jobs that finished in the last
    /// `window_secs`, read through `exec`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn finished_times_in<'e>(
        exec: impl PgExecutor<'e>,
        window_secs: f64,
    ) -> Result<Vec<FinishedTimes>> {
        Ok(sqlx::query_as!(
            FinishedTimes,
            r#"select kind,
                      percentile_cont(array[0.5, 0.95, 0.99]) within group (
                          order by extract(epoch from started_at - greatest(created_at, run_at))::float8)
                          filter (where attempt = 1) as wait_secs,
                      percentile_cont(array[0.5, 0.95, 0.99]) within group (
                          order by extract(epoch from finished_at - started_at)::float8) as run_secs
               from jobs
               where finished_at > now() - make_interval(secs => $1) and started_at is not null
               group by kind order by kind"#,
            window_secs
        )
        .fetch_all(exec)
        .await?)
    }

    /// How many queued jobs wait on each of `keys` (see [`Queue::wait`]), in `keys`' order,
    /// read through `exec`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn waiting_on_in<'e>(
        exec: impl PgExecutor<'e>,
        keys: &[&str],
    ) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query!(
            r#"select k.key as "key!", count(j.id) as "n!"
               from unnest($1::text[]) with ordinality as k(key, ord)
               left join jobs j on j.state = 'queued' and j.waiting->>'key' = k.key
               group by k.key, k.ord order by k.ord"#,
            keys as &[&str],
        )
        .fetch_all(exec)
        .await?;
        Ok(rows.into_iter().map(|r| (r.key, r.n)).collect())
    }

    /// Workers holding a lease that has not lapsed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_workers(&self) -> Result<Vec<LiveWorker>> {
        Ok(sqlx::query_as!(
            LiveWorker,
            r#"select worker_id as "worker_id!", count(*) as "running!",
                      max(lease_expires_at) as "lease_expires_at!"
               from jobs where state = 'running' and lease_expires_at > now()
               group by worker_id order by worker_id"#
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every fleet-wide limit with its slots in use.
    ///
    /// # Errors
    /// Database errors.
    pub async fn slot_use(&self) -> Result<Vec<SlotUse>> {
        Ok(sqlx::query_as!(
            SlotUse,
            r#"select resource, count(*) as "capacity!",
                      count(*) filter (where holder_job_id is not null
                                       and lease_expires_at > now()) as "in_use!"
               from limit_slots group by resource order by resource"#
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Enqueue-to-start latency of first attempts started in the last `window_secs`, and
    /// the runnable backlog.
    ///
    /// # Errors
    /// Database errors.
    pub async fn latency(&self, window_secs: f64) -> Result<Latency> {
        let r = sqlx::query!(
            r#"
            with started as (
                select extract(epoch from started_at - greatest(created_at, run_at))::float8 as wait
                from jobs
                where attempt = 1 and started_at > now() - make_interval(secs => $1)
            ), runnable as (
                select count(*) as n, min(run_at) as oldest from jobs
                where state = 'queued' and pending_children = 0 and run_at <= now()
                  and waiting is null
            )
            select (select count(*) from started) as "started!",
                   (select percentile_cont(0.5) within group (order by wait) from started) as p50,
                   (select percentile_cont(0.95) within group (order by wait) from started) as p95,
                   (select n from runnable) as "runnable!",
                   coalesce((select extract(epoch from now() - oldest)::float8 from runnable), 0)
                       as "oldest!"
            "#,
            window_secs
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Latency {
            started: r.started,
            p50_secs: r.p50,
            p95_secs: r.p95,
            runnable: r.runnable,
            oldest_runnable_secs: r.oldest,
        })
    }
}
