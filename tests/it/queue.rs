//! The queue's operations against a real database, driven step by step.

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use reviewq::{
    jobs::{Dispatcher, noop::NoopArgs},
    queue::{
        Enqueued, Error, FailureRecorded, JobError, JobId, JobState, Lease, NewJob, Processed,
        Queue, RetryPolicy, Worker, WorkerConfig, WorkerId,
    },
};
use sqlx::PgPool;

use crate::support::lapse_lease;

const LEASE: Duration = Duration::from_secs(30);

fn exact_policy() -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        budget: Duration::ZERO,
        ..RetryPolicy::default()
    }
}

/// Moves a job's first failure `secs` into the past, as if it had been failing that long.
async fn backdate_first_failure(pool: &PgPool, id: JobId, secs: f64) {
    sqlx::query(
        "update jobs set first_failed_at = now() - make_interval(secs => $2) where id = $1",
    )
    .bind(id.get())
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

async fn state_of(pool: &PgPool, id: JobId) -> JobState {
    Queue::new(pool.clone()).get(id).await.unwrap().state
}

/// Moves a job's retry time to now, as if its backoff had elapsed.
async fn make_due(pool: &PgPool, id: JobId) {
    sqlx::query("update jobs set run_at = now() where id = $1")
        .bind(id.get())
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test]
async fn eight_concurrent_claimers_run_each_of_5000_jobs_exactly_once(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let jobs = vec![NoopArgs::default().job(); 5000];
    let ids = Queue::enqueue_many(&pool, &jobs).await.unwrap();

    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let queue = queue.clone();
        claimers.spawn(async move {
            let worker = WorkerId::random();
            let mut seen = Vec::new();
            let mut done: Vec<Lease> = Vec::new();
            loop {
                let claimed = queue
                    .complete_and_claim(&done, worker, 16, LEASE)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return seen;
                }
                done = claimed.iter().map(|j| j.lease).collect();
                seen.extend(claimed.iter().map(|j| j.id()));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(seen) = claimers.join_next().await {
        all.extend(seen.unwrap());
    }

    let unique: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(all.len(), 5000, "every job claimed once, none twice");
    assert_eq!(unique, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where attempt = 1")
            .fetch_one(&pool)
            .await
            .unwrap(),
        5000
    );
}

#[sqlx::test]
async fn claims_take_the_highest_due_priority_first_and_future_jobs_hold_nothing_up(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let job = |priority: i16| NoopArgs::default().job().priority(priority);
    // Scheduled ahead at the top priority: never claimed now, and never in the way.
    Queue::enqueue_many(&pool, &vec![job(9).delay(Duration::from_secs(3600)); 50])
        .await
        .unwrap();
    let low = Queue::enqueue_many(&pool, &vec![job(-3); 2]).await.unwrap();
    let mid = Queue::enqueue_many(&pool, &vec![job(0); 3]).await.unwrap();
    let high = Queue::enqueue_many(&pool, &vec![job(5); 2]).await.unwrap();
    // A priority no enqueue used, set by hand as an operator might.
    let bumped = Queue::enqueue(&pool, &job(0)).await.unwrap().id();
    sqlx::query("update jobs set priority = 7 where id = $1")
        .bind(bumped.get())
        .execute(&pool)
        .await
        .unwrap();

    // A claim returns its jobs in no particular order; which jobs it took is the point.
    let claim = async |limit: usize| -> HashSet<JobId> {
        let claimed = queue.claim(WorkerId::random(), limit, LEASE).await.unwrap();
        claimed.iter().map(|j| j.id()).collect()
    };
    let set = |ids: &[JobId]| ids.iter().copied().collect::<HashSet<_>>();
    assert_eq!(claim(4).await, set(&[bumped, high[0], high[1], mid[0]]));
    assert_eq!(
        claim(2).await,
        set(&mid[1..]),
        "a priority is used up before a lower one"
    );
    assert_eq!(claim(10).await, set(&low));
    assert!(claim(10).await.is_empty());
}

#[sqlx::test]
async fn retryable_failures_back_off_exponentially_then_fail_for_good(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job().max_attempts(3))
        .await
        .unwrap()
        .id();
    let policy = exact_policy();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let job = queue
            .claim(WorkerId::random(), 1, LEASE)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(job.lease.attempt, attempt);
        let before = Utc::now();
        let recorded = queue
            .fail(
                &job,
                &JobError::retryable(format!("boom {attempt}")),
                &policy,
            )
            .await
            .unwrap();
        match recorded {
            FailureRecorded::WillRetry { run_at } => {
                delays.push((run_at - before).num_milliseconds());
                make_due(&pool, id).await;
            }
            FailureRecorded::Failed => assert_eq!(attempt, 3, "fails only on the last attempt"),
        }
    }
    assert_eq!(delays.len(), 2);
    assert!(
        (4_500..=5_500).contains(&delays[0]),
        "first retry after ~5 s: {delays:?}"
    );
    assert!(
        (9_500..=10_500).contains(&delays[1]),
        "second retry after ~10 s: {delays:?}"
    );
    let row = queue.get(id).await.unwrap();
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.failed_attempts, 3);
    assert!(
        row.last_error
            .unwrap()
            .contains("gave up after 3 failed attempts in 0s; last error: boom 3")
    );
    let outcomes: Vec<String> = queue
        .attempts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "failed"]);
}

#[sqlx::test]
async fn retry_after_delays_the_next_attempt_by_the_time_given(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap();
    let job = queue
        .claim(WorkerId::random(), 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let before = Utc::now();
    let err = JobError::retry_after(Duration::from_secs(90), "429 from the provider");
    let FailureRecorded::WillRetry { run_at } =
        queue.fail(&job, &err, &exact_policy()).await.unwrap()
    else {
        panic!("a retry-after is retried");
    };
    let waited = (run_at - before).num_seconds();
    assert!((89..=91).contains(&waited), "waits as told: {waited} s");
    assert!(
        queue
            .claim(WorkerId::random(), 1, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "not claimable before then"
    );
}

#[sqlx::test]
async fn fatal_errors_fail_the_job_at_once_with_the_error_kept(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    let job = queue
        .claim(WorkerId::random(), 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let recorded = queue
        .fail(
            &job,
            &JobError::fatal("401: token revoked"),
            &exact_policy(),
        )
        .await
        .unwrap();
    assert_eq!(recorded, FailureRecorded::Failed);
    let row = queue.get(id).await.unwrap();
    assert_eq!(
        (row.state, row.last_error.as_deref()),
        (JobState::Failed, Some("401: token revoked"))
    );
}

#[sqlx::test]
async fn a_late_write_from_an_expired_attempt_changes_nothing(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    let stale = queue
        .claim(WorkerId::random(), 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    lapse_lease(&pool, id).await;
    assert_eq!(queue.rescue_expired(Duration::ZERO).await.unwrap(), Some(1));
    let fresh = queue
        .claim(WorkerId::random(), 1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(fresh.lease.attempt, 2);

    // The stale attempt wakes up and tries every kind of write.
    assert_eq!(
        Queue::complete_many(&pool, &[stale.lease]).await.unwrap(),
        0
    );
    assert!(matches!(
        queue
            .fail(&stale, &JobError::fatal("late"), &exact_policy())
            .await,
        Err(Error::LeaseLost(_))
    ));
    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        Queue::fence(&mut tx, stale.lease).await,
        Err(Error::LeaseLost(_))
    ));
    drop(tx);

    let row = queue.get(id).await.unwrap();
    assert_eq!(
        (row.state, row.attempt, row.last_error.is_some()),
        (JobState::Running, 2, true)
    );
    let history = queue.attempts(id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, "lease_expired");
    // The fresh attempt still completes.
    assert_eq!(
        Queue::complete_many(&pool, &[fresh.lease]).await.unwrap(),
        1
    );
    assert_eq!(state_of(&pool, id).await, JobState::Succeeded);
}

#[sqlx::test]
async fn a_job_out_of_attempts_keeps_retrying_until_its_failures_outlast_the_failure_budget(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job().max_attempts(2))
        .await
        .unwrap()
        .id();
    let policy = RetryPolicy {
        budget: Duration::from_secs(60),
        ..exact_policy()
    };
    let fail_once = async |n: i32| {
        let job = queue
            .claim(WorkerId::random(), 1, LEASE)
            .await
            .unwrap()
            .pop()
            .expect("the job is due");
        let recorded = queue
            .fail(&job, &JobError::retryable(format!("boom {n}")), &policy)
            .await
            .unwrap();
        make_due(&pool, id).await;
        recorded
    };
    // Twice the job's two attempts, all within the first minute of failing: still retried.
    for n in 1..=4 {
        assert!(
            matches!(fail_once(n).await, FailureRecorded::WillRetry { .. }),
            "failure {n} within the budget"
        );
    }
    backdate_first_failure(&pool, id, 61.0).await;
    assert_eq!(fail_once(5).await, FailureRecorded::Failed);
    let row = queue.get(id).await.unwrap();
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.failed_attempts, 5);
    let last = row.last_error.unwrap();
    assert!(
        last.contains("gave up after 5 failed attempts in 61s") && last.ends_with("boom 5"),
        "{last}"
    );
}

#[sqlx::test]
async fn the_rescuer_requeues_a_job_out_of_attempts_until_its_failures_outlast_the_budget(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job().max_attempts(1))
        .await
        .unwrap()
        .id();
    let budget = Duration::from_secs(60);
    let lapse = async || {
        queue.claim(WorkerId::random(), 1, LEASE).await.unwrap();
        lapse_lease(&pool, id).await;
        queue.rescue_expired(budget).await.unwrap();
    };
    lapse().await;
    assert_eq!(state_of(&pool, id).await, JobState::Queued, "first failure");
    lapse().await;
    assert_eq!(
        state_of(&pool, id).await,
        JobState::Queued,
        "within the budget"
    );
    backdate_first_failure(&pool, id, 61.0).await;
    lapse().await;
    let row = queue.get(id).await.unwrap();
    assert_eq!((row.state, row.failed_attempts), (JobState::Failed, 3));
}

#[sqlx::test]
async fn the_rescuer_fails_a_job_whose_leases_lapsed_max_attempts_times(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(&pool, &NoopArgs::default().job().max_attempts(2))
        .await
        .unwrap()
        .id();
    for _ in 0..2 {
        queue.claim(WorkerId::random(), 1, LEASE).await.unwrap();
        lapse_lease(&pool, id).await;
        queue.rescue_expired(Duration::ZERO).await.unwrap();
    }
    let row = queue.get(id).await.unwrap();
    assert_eq!(row.state, JobState::Failed);
    assert!(row.last_error.unwrap().contains("lease expired"));
}

#[sqlx::test]
async fn cancel_stops_a_queued_job_and_fences_out_a_running_one(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let worker = WorkerId::random();
    let running = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    let job = queue.claim(worker, 1, LEASE).await.unwrap().pop().unwrap();
    let queued = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();

    queue.cancel(queued).await.unwrap();
    queue.cancel(running).await.unwrap();

    assert_eq!(state_of(&pool, queued).await, JobState::Cancelled);
    assert_eq!(state_of(&pool, running).await, JobState::Cancelled);
    assert!(
        queue
            .heartbeat(worker, LEASE, &[])
            .await
            .unwrap()
            .is_empty(),
        "the worker sees it lost the job"
    );
    assert_eq!(Queue::complete_many(&pool, &[job.lease]).await.unwrap(), 0);
    assert_eq!(state_of(&pool, running).await, JobState::Cancelled);
    assert!(matches!(
        queue.cancel(queued).await,
        Err(Error::InvalidState { .. })
    ));

    queue.retry(queued).await.unwrap();
    assert_eq!(state_of(&pool, queued).await, JobState::Queued);
}

#[sqlx::test]
async fn an_unfinished_job_with_the_same_dedupe_key_is_returned_instead_of_a_new_one(pool: PgPool) {
    let job = NewJob::new("noop", serde_json::json!({})).dedupe_key("review:g/p!1");
    let first = Queue::enqueue(&pool, &job).await.unwrap();
    let again = Queue::enqueue(&pool, &job).await.unwrap();
    assert!(matches!(first, Enqueued::New(_)));
    assert_eq!(again, Enqueued::Existing(first.id()));

    let queue = Queue::new(pool.clone());
    let claimed = queue.claim(WorkerId::random(), 1, LEASE).await.unwrap();
    Queue::complete_many(&pool, &[claimed[0].lease])
        .await
        .unwrap();
    let after = Queue::enqueue(&pool, &job).await.unwrap();
    assert!(
        matches!(after, Enqueued::New(id) if id != first.id()),
        "a finished job does not block"
    );
}

#[sqlx::test]
async fn a_parent_runs_exactly_once_more_after_its_last_child_ends(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let args = NoopArgs {
        children: 3,
        child: Some(Box::new(NoopArgs {
            fail_times: 1,
            ..NoopArgs::default()
        })),
        ..NoopArgs::default()
    };
    let parent = Queue::enqueue(&pool, &args.job()).await.unwrap().id();
    let worker = Worker::new(
        queue.clone(),
        Dispatcher::new(),
        WorkerConfig {
            retry: exact_policy(),
            ..WorkerConfig::default()
        },
    );

    // First run spawns the children; the parent then waits with nothing runnable for it.
    let ran = worker.drain().await.unwrap();
    assert_eq!(
        ran.len(),
        4,
        "the parent and its three children ran: {ran:?}"
    );
    assert_eq!(
        queue.child_counts(parent).await.unwrap().queued,
        3,
        "children wait for their retry"
    );
    assert_eq!(queue.get(parent).await.unwrap().pending_children, 3);

    // Children retry and succeed; the last one releases the parent, which runs once.
    sqlx::query("update jobs set run_at = now() where parent_id = $1")
        .bind(parent.get())
        .execute(&pool)
        .await
        .unwrap();
    let ran = worker.drain().await.unwrap();
    let parent_runs = ran
        .iter()
        .filter(|p| matches!(p, Processed::Ran { id, .. } if *id == parent))
        .count();
    assert_eq!(parent_runs, 1);
    assert_eq!(ran.len(), 4);
    let row = queue.get(parent).await.unwrap();
    assert_eq!(
        (row.state, row.attempt, row.pending_children),
        (JobState::Succeeded, 2, 0)
    );
    let outcomes: Vec<String> = queue
        .attempts(parent)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["awaiting_children", "succeeded"]);
    assert_eq!(queue.child_counts(parent).await.unwrap().succeeded, 3);
    assert_eq!(worker.process_next().await.unwrap(), Processed::QueueEmpty);
}

#[sqlx::test]
async fn a_started_parents_children_and_its_wake_up_run_before_jobs_enqueued_after_it(
    pool: PgPool,
) {
    let queue = Queue::new(pool.clone());
    let parent_args = NoopArgs {
        children: 2,
        ..NoopArgs::default()
    };
    // One statement, as `reviewq enqueue` inserts a burst of MRs: the jobs after the
    // parent differ from it only by their insertion order.
    let plain = NoopArgs::default().job();
    let ids = Queue::enqueue_many(&pool, &[parent_args.job(), plain.clone(), plain])
        .await
        .unwrap();
    let (parent, later) = (ids[0], &ids[1..]);
    let worker = Worker::new(queue.clone(), Dispatcher::new(), WorkerConfig::default());

    let mut order = Vec::new();
    while let Processed::Ran { id, .. } = worker.process_next().await.unwrap() {
        order.push(id);
    }
    let mut children = Vec::new();
    for id in &order {
        if queue.get(*id).await.unwrap().parent_id == Some(parent) {
            children.push(*id);
        }
    }
    assert_eq!(children.len(), 2, "both children ran: {order:?}");
    assert_eq!(
        order,
        [parent, children[0], children[1], parent, later[0], later[1]],
        "the parent's children take its place in line, and so does its second run"
    );
}

#[sqlx::test]
async fn a_parent_still_runs_when_its_children_fail_for_good(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let args = NoopArgs {
        children: 2,
        child: Some(Box::new(NoopArgs {
            fatal: true,
            ..NoopArgs::default()
        })),
        ..NoopArgs::default()
    };
    let parent = Queue::enqueue(&pool, &args.job()).await.unwrap().id();
    let worker = Worker::new(queue.clone(), Dispatcher::new(), WorkerConfig::default());
    let ran = worker.drain().await.unwrap();
    assert_eq!(ran.len(), 4);
    assert_eq!(queue.child_counts(parent).await.unwrap().failed, 2);
    assert_eq!(state_of(&pool, parent).await, JobState::Succeeded);
}

#[sqlx::test]
async fn concurrent_enqueues_with_one_dedupe_key_all_get_the_same_job(pool: PgPool) {
    let job = NewJob::new("noop", serde_json::json!({})).dedupe_key("review:g/p!9:general:post");
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (pool, job) = (pool.clone(), job.clone());
        racers.spawn(async move { Queue::enqueue(&pool, &job).await.unwrap() });
    }
    let mut results = Vec::new();
    while let Some(r) = racers.join_next().await {
        results.push(r.unwrap());
    }
    let new = results
        .iter()
        .filter(|r| matches!(r, Enqueued::New(_)))
        .count();
    assert_eq!(new, 1, "{results:?}");
    assert!(results.iter().all(|r| r.id() == results[0].id()));
    let count: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[sqlx::test]
async fn prune_deletes_every_job_finished_before_the_retention_in_one_call(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    // More than one delete batch of old finished jobs, one recent one, one still queued.
    sqlx::query(
        "insert into jobs (kind, state, finished_at)
         select 'noop', 'succeeded', now() - interval '2 hours' from generate_series(1, 12001)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let recent = sqlx::query_scalar::<_, i64>(
        "insert into jobs (kind, state, finished_at) values ('noop', 'failed', now()) returning id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let queued = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();

    assert_eq!(queue.prune(Duration::from_secs(3600)).await.unwrap(), 12001);
    let left: Vec<i64> = sqlx::query_scalar("select id from jobs order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec![recent, queued.get()]);
}
