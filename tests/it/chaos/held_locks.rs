//! Writes that wait: the test holds a lock on a row or table a worker is about to write.

use std::time::{Duration, Instant};

use reviewq::{
    queue::{JobId, Queue},
    sim::GlmBehaviour,
};
use sqlx::{Connection, PgConnection, PgPool};

use crate::support::{WorkerProcess, url_of};

use super::fleet::Fleet;
use super::invariants::job_table;
use super::{DRAIN_TIMEOUT, LEASE, Sims, enqueue, worker_url};

/// Starts a fleet reviewing MR 1 (one chunk) and returns once its LLM call has been
/// answered (and billed) while the test holds the ledger table, so the answer waits to be
/// stored; the lock is released when the returned transaction ends.
async fn hold_an_answer<'c>(
    pool: &PgPool,
    sims: &Sims,
    admin: &'c mut PgConnection,
) -> (JobId, sqlx::Transaction<'c, sqlx::Postgres>) {
    enqueue(pool, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The request is out, so its ledger row exists.
    while sims.glm.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "no LLM call\n{}",
            job_table(pool).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("lock table llm_calls in exclusive mode")
        .execute(&mut *hold)
        .await
        .unwrap();
    while !sims.glm.calls().iter().any(|c| c.status == 200) {
        assert!(Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let chunk: i64 =
        sqlx::query_scalar("select id from jobs where kind = 'review_chunk' and state = 'running'")
            .fetch_one(pool)
            .await
            .unwrap();
    (JobId::new(chunk), hold)
}

/// Waits for the fleet, stops it and checks that the ledger holds what GLM billed.
async fn assert_ledger_complete(pool: &PgPool, sims: &Sims, fleet: &mut Fleet) {
    fleet.wait_idle(DRAIN_TIMEOUT, "the review").await;
    fleet.stop().await;
    let (started, recorded): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'started'), coalesce(sum(total_tokens), 0)::int8
         from llm_calls",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        recorded as u64,
        sims.glm.billed_total_tokens(),
        "the ledger records what GLM billed ({started} rows left started)"
    );
}

#[sqlx::test]
async fn an_llm_answer_received_by_an_attempt_that_is_then_stopped_is_still_in_the_ledger(
    pool: PgPool,
) {
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(1_500))).await;
    sims.add([1]);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("stopped", &pool, &url, &sims, &[]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let (chunk, hold) = hold_an_answer(&pool, &sims, &mut admin).await;
    // The attempt loses its lease; the worker's next heartbeat (every third of the lease)
    // sees it and stops the attempt.
    Queue::new(pool.clone()).cancel(chunk).await.unwrap();
    tokio::time::sleep(LEASE).await;
    hold.commit().await.unwrap();
    assert_ledger_complete(&pool, &sims, &mut fleet).await;
}

#[sqlx::test]
async fn an_llm_answer_received_by_an_attempt_whose_database_write_fails_is_still_in_the_ledger(
    pool: PgPool,
) {
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(1_500))).await;
    sims.add([1]);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("dberror", &pool, &worker_url(&url), &sims, &[]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let (_, hold) = hold_an_answer(&pool, &sims, &mut admin).await;
    // The worker's write of the answer waits on the lock; its connection is cut.
    let mut killer = PgConnection::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cut: i64 = sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where application_name = 'chaos-worker' and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut killer)
        .await
        .unwrap();
        if cut > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the answer's write never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold.commit().await.unwrap();
    assert_ledger_complete(&pool, &sims, &mut fleet).await;
}

#[sqlx::test]
async fn a_worker_log_line_is_not_attributed_to_a_job_whose_failure_is_being_recorded(
    pool: PgPool,
) {
    let url = url_of(&pool);
    let job = reviewq::jobs::noop::NoopArgs {
        sleep_ms: 500,
        fail_times: 1,
        ..Default::default()
    };
    let id = Queue::enqueue(&pool, &job.job()).await.unwrap().id();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::start_logged(
        &url,
        &[],
        &[
            ("GITLAB_URL", "http://127.0.0.1:9"),
            ("GITLAB_TOKEN", "unused-gitlab-token"),
            ("GLM_API_KEY", "unused-glm-key"),
            ("NO_COLOR", "1"),
        ],
        &log,
    );
    let queue = Queue::new(pool.clone());
    crate::support::wait_until(Duration::from_secs(10), "the job to start", || async {
        queue.get(id).await.unwrap().state == reviewq::queue::JobState::Running
    })
    .await;
    // Hold the job's row: the failure the job is about to record waits for it.
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("select id from jobs where id = $1 for update")
        .bind(id.get())
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Logged by the signal task, which belongs to no job.
    worker.signal("TERM").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.commit().await.unwrap();
    assert!(worker.wait(Duration::from_secs(20)).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("shutdown requested"))
        .expect("the shutdown was logged");
    assert!(
        !line.contains("job{"),
        "a line that belongs to no job is logged in a job's span: {line}"
    );
}
