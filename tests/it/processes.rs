//! Real `reviewq worker` processes: killed, stopped, sharing a limit, woken, and
//! outliving a Postgres restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reviewq::{
    jobs::noop::NoopArgs,
    queue::{JobId, JobState, Queue},
};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{WorkerProcess, count_in_state, url_of, wait_until};

async fn state_of(pool: &PgPool, id: JobId) -> JobState {
    Queue::new(pool.clone()).get(id).await.unwrap().state
}

#[sqlx::test]
async fn a_worker_killed_mid_job_has_its_job_finished_by_another_after_the_lease(pool: PgPool) {
    let url = url_of(&pool);
    let queue = Queue::new(pool.clone());
    let job = NoopArgs {
        sleep_ms: 2_000,
        ..NoopArgs::default()
    };
    let id = Queue::enqueue(&pool, &job.job()).await.unwrap().id();

    let mut doomed = WorkerProcess::start(&url, &["--lease-secs", "3", "--concurrency", "1"]);
    wait_until(Duration::from_secs(10), "the job to start", || async {
        state_of(&pool, id).await == JobState::Running
    })
    .await;
    let doomed_id = queue.get(id).await.unwrap().worker_id.unwrap();
    doomed.signal("KILL").await;
    doomed.wait(Duration::from_secs(5)).await;

    let mut rescuer = WorkerProcess::start(&url, &["--lease-secs", "3", "--concurrency", "1"]);
    wait_until(
        Duration::from_secs(20),
        "another worker to finish the job",
        || async { state_of(&pool, id).await == JobState::Succeeded },
    )
    .await;
    rescuer.signal("TERM").await;
    assert!(rescuer.wait(Duration::from_secs(10)).await.success());

    let row = queue.get(id).await.unwrap();
    assert_eq!(row.attempt, 2, "ran exactly twice");
    assert_ne!(row.worker_id, Some(doomed_id));
    let history = queue.attempts(id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].outcome.as_str(), history[0].worker_id),
        ("lease_expired", doomed_id)
    );
    assert_eq!(history[1].outcome, "succeeded");
}

#[sqlx::test]
async fn sigterm_lets_in_flight_jobs_finish_before_the_worker_exits(pool: PgPool) {
    let url = url_of(&pool);
    let job = NoopArgs {
        sleep_ms: 1_500,
        ..NoopArgs::default()
    };
    Queue::enqueue_many(&pool, &vec![job.job(); 3])
        .await
        .unwrap();
    let mut worker = WorkerProcess::start(&url, &["--concurrency", "3"]);
    wait_until(Duration::from_secs(10), "three jobs running", || async {
        count_in_state(&pool, "running").await == 3
    })
    .await;
    worker.signal("TERM").await;
    let status = worker.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "graceful exit: {status:?}");
    assert_eq!(count_in_state(&pool, "succeeded").await, 3);
}

#[sqlx::test]
async fn sigterm_hands_back_jobs_that_outlast_the_grace_period(pool: PgPool) {
    let url = url_of(&pool);
    let queue = Queue::new(pool.clone());
    let job = NoopArgs {
        sleep_ms: 60_000,
        ..NoopArgs::default()
    };
    let id = Queue::enqueue(&pool, &job.job()).await.unwrap().id();
    let mut worker = WorkerProcess::start(&url, &["--shutdown-grace-secs", "1"]);
    wait_until(Duration::from_secs(10), "the job to start", || async {
        state_of(&pool, id).await == JobState::Running
    })
    .await;
    worker.signal("TERM").await;
    assert!(worker.wait(Duration::from_secs(10)).await.success());

    let row = queue.get(id).await.unwrap();
    assert_eq!(
        row.state,
        JobState::Queued,
        "handed back, ready for another worker now"
    );
    assert!(row.run_at <= chrono::Utc::now());
    assert_eq!(
        row.failed_attempts, 0,
        "an interrupted attempt is not a failure"
    );
    let history = queue.attempts(id).await.unwrap();
    assert_eq!(history[0].outcome, "handed_back");
}

/// A loopback HTTP server that holds each request for `hold` and records the most
/// requests it ever had in flight at once.
async fn concurrency_probe(hold: Duration) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/probe", listener.local_addr().unwrap());
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now_c, peak_c) = (now.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (now, peak) = (now_c.clone(), peak_c.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let inflight = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(inflight, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, now, peak)
}

#[sqlx::test]
async fn the_fleet_limit_never_admits_more_than_n_holders_across_three_worker_processes(
    pool: PgPool,
) {
    let url = url_of(&pool);
    let (probe_url, _now, peak) = concurrency_probe(Duration::from_millis(150)).await;
    let job = NoopArgs {
        resource: Some("llm".into()),
        probe_url: Some(probe_url),
        ..NoopArgs::default()
    };
    Queue::enqueue_many(&pool, &vec![job.job(); 30])
        .await
        .unwrap();
    let args = ["--concurrency", "4", "--glm-concurrent-requests", "2"];
    let mut workers: Vec<WorkerProcess> =
        (0..3).map(|_| WorkerProcess::start(&url, &args)).collect();

    wait_until(
        Duration::from_secs(60),
        "all 30 jobs to succeed",
        || async { count_in_state(&pool, "succeeded").await == 30 },
    )
    .await;
    for w in &workers {
        w.signal("TERM").await;
    }
    for w in &mut workers {
        assert!(w.wait(Duration::from_secs(10)).await.success());
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "the limit was reached and never exceeded"
    );
    let held: i64 =
        sqlx::query_scalar("select count(*) from limit_slots where holder_job_id is not null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(held, 0, "every slot released");
}

#[sqlx::test]
async fn a_job_enqueued_while_the_worker_idles_starts_without_waiting_for_the_poll(pool: PgPool) {
    let url = url_of(&pool);
    let queue = Queue::new(pool.clone());
    let mut worker = WorkerProcess::start(&url, &["--poll-ms", "60000"]);
    // Let the worker start, run its first (empty) claim and begin listening.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let id = Queue::enqueue(&pool, &NoopArgs::default().job())
        .await
        .unwrap()
        .id();
    wait_until(Duration::from_secs(5), "the job to run", || async {
        state_of(&pool, id).await == JobState::Succeeded
    })
    .await;
    let row = queue.get(id).await.unwrap();
    let waited = row.started_at.unwrap() - row.created_at;
    assert!(
        waited < chrono::Duration::milliseconds(500),
        "woken by NOTIFY, not the 60 s poll: started after {waited}"
    );
    worker.signal("TERM").await;
    assert!(worker.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn a_postgres_restart_during_a_run_is_survived_and_the_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = reviewq::localdb::Cluster::new(dir.path()).unwrap();
    cluster.start().unwrap();
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    reviewq::migrate(&pool).await.unwrap();
    let job = NoopArgs {
        sleep_ms: 100,
        ..NoopArgs::default()
    };
    Queue::enqueue_many(&pool, &vec![job.job(); 60])
        .await
        .unwrap();
    let mut worker =
        WorkerProcess::start(&cluster.url(), &["--concurrency", "2", "--lease-secs", "5"]);
    wait_until(Duration::from_secs(20), "some jobs to finish", || async {
        count_in_state(&pool, "succeeded").await >= 5
    })
    .await;

    pool.close().await;
    cluster.restart().unwrap();
    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();

    wait_until(
        Duration::from_secs(90),
        "all 60 jobs to succeed after the restart",
        || async { count_in_state(&pool, "succeeded").await == 60 },
    )
    .await;
    worker.signal("TERM").await;
    assert!(worker.wait(Duration::from_secs(15)).await.success());
    pool.close().await;
    cluster.stop().unwrap();
}

#[sqlx::test]
async fn a_worker_killed_after_gitlab_stored_a_comment_but_before_recording_it_posts_nothing_twice(
    pool: PgPool,
) {
    use reviewq::{
        jobs::review::ReviewArgs,
        sim::{FakeGitLab, FakeGlm, GitLabFault, GlmBehaviour, Route},
    };

    use crate::support::{PROJECT, mixed_mr};

    let url = url_of(&pool);
    let gitlab = FakeGitLab::start("kill-test-token").await.unwrap();
    let glm = FakeGlm::start("kill-test-key", GlmBehaviour::default())
        .await
        .unwrap();
    gitlab.add_merge_request(mixed_mr(1)).unwrap();
    // GitLab stores the first inline comment, then holds its answer: the worker is killed
    // inside that window, with the comment on the MR and not in its outbox.
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::StoreThenHang(Duration::from_secs(60)),
    );
    let env = [
        ("GITLAB_URL", gitlab.base_url()),
        ("GITLAB_TOKEN", "kill-test-token"),
        ("GLM_BASE_URL", glm.base_url()),
        ("GLM_API_KEY", "kill-test-key"),
    ];
    let args = ["--lease-secs", "3"];
    let options = crate::support::options();
    let mr = format!("{PROJECT}:1").parse().unwrap();
    let id = Queue::enqueue(&pool, &ReviewArgs::new(mr, &options).job(0))
        .await
        .unwrap()
        .id();

    let mut doomed = WorkerProcess::start_with(&url, &args, &env);
    wait_until(
        Duration::from_secs(30),
        "GitLab to store the first comment",
        || async { gitlab.posted_discussions() >= 1 },
    )
    .await;
    doomed.signal("KILL").await;
    doomed.wait(Duration::from_secs(5)).await;
    let recorded: i64 = sqlx::query_scalar("select count(*) from outbox where state = 'posted'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "killed before recording anything");

    let mut rescuer = WorkerProcess::start_with(&url, &args, &env);
    wait_until(
        Duration::from_secs(40),
        "the review to finish elsewhere",
        || async { state_of(&pool, id).await == JobState::Succeeded },
    )
    .await;
    rescuer.signal("TERM").await;
    assert!(rescuer.wait(Duration::from_secs(10)).await.success());

    assert_eq!(gitlab.total_duplicate_count(), 0, "no comment posted twice");
    let markers = gitlab.marker_counts(PROJECT, 1).unwrap();
    let comments: i64 = sqlx::query_scalar(
        "select count(*) from outbox where state = 'posted' and (kind = 'inline' or key = 'summary')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        markers.len() as i64,
        comments,
        "every comment on GitLab exactly once"
    );
    assert!(markers.values().all(|&n| n == 1));
}

#[sqlx::test]
async fn tokens_and_keys_never_reach_logs_output_or_the_database(pool: PgPool) {
    use reviewq::{
        jobs::review::ReviewArgs,
        sim::{FakeGitLab, FakeGlm, GlmBehaviour, GlmFault},
    };

    use crate::support::{PROJECT, mixed_mr};

    const TOKEN: &str = "glpat-SECRET-gitlab-7f3a9c";
    const KEY: &str = "glm-SECRET-key-41d8e2";
    let gitlab = FakeGitLab::start(TOKEN).await.unwrap();
    let glm = FakeGlm::start(KEY, GlmBehaviour::default()).await.unwrap();
    gitlab.add_merge_request(mixed_mr(1)).unwrap();
    // Errors too: their messages are where secrets usually leak.
    glm.push_faults([GlmFault::RateLimited, GlmFault::ServerError]);
    let url = url_of(&pool);
    let options = crate::support::options();
    let mr = format!("{PROJECT}:1").parse().unwrap();
    let id = Queue::enqueue(&pool, &ReviewArgs::new(mr, &options).job(0))
        .await
        .unwrap()
        .id();

    let worker = crate::support::reviewq()
        .args(["worker", "--exit-when-idle"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "debug")
        .env("GITLAB_URL", gitlab.base_url())
        .env("GITLAB_TOKEN", TOKEN)
        .env("GLM_BASE_URL", glm.base_url())
        .env("GLM_API_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), worker.wait_with_output())
        .await
        .expect("the worker exits when idle")
        .unwrap();
    let (status, err, out) = (
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
    assert!(status.success(), "{err}");
    assert_eq!(state_of(&pool, id).await, JobState::Succeeded);
    assert!(err.len() > 1000, "the debug log was captured");

    for secret in [TOKEN, KEY] {
        assert!(
            !err.contains(secret) && !out.contains(secret),
            "{secret} in the worker's output"
        );
        let in_db: i64 = sqlx::query_scalar(
            "select (select count(*) from jobs where payload::text like '%' || $1 || '%' or last_error like '%' || $1 || '%')
                  + (select count(*) from job_attempts where error like '%' || $1 || '%')
                  + (select count(*) from llm_calls where coalesce(error_message, '') like '%' || $1 || '%')
                  + (select count(*) from outbox where body like '%' || $1 || '%' or coalesce(error, '') like '%' || $1 || '%' or coalesce(unanchored_reason::text, '') like '%' || $1 || '%')",
        )
        .bind(secret)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(in_db, 0, "{secret} stored in the database");
    }
}
