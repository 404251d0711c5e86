//! A throttling, flaky GitLab: requests are retried in place, a 429 backs the whole fleet
//! off and never fails a review, and the fleet's request budget holds across processes.

use std::time::{Duration, Instant};

use reviewq::sim::{GitLabFault, GlmBehaviour, GlmFault, Route};
use sqlx::PgPool;

use super::fleet::{Fleet, run_until_idle};
use super::invariants::{Expect, assert_invariants, job_table};
use super::{DRAIN_TIMEOUT, KILL_MRS, Sims, chaos_mr, enqueue, tag};
use crate::{support::PROJECT, support::url_of};

/// Longest wait for the chaos mix's dozen reviews (about a minute on a loaded runner).
const THROTTLED_DRAIN: Duration = Duration::from_secs(180);

/// The routes that create something on GitLab.
const POSTS: [Route; 3] = [
    Route::CreateDiscussion,
    Route::CreateNote,
    Route::CreateDraftNote,
];

#[sqlx::test]
async fn a_gitlab_throttling_one_request_in_five_and_failing_one_post_in_ten_after_storing_loses_no_review(
    pool: PgPool,
) {
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(100))).await;
    let iids: Vec<u64> = (1..=KILL_MRS).collect();
    sims.add(iids.iter().copied());
    sims.gitlab.fail_share(
        &[],
        20,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    sims.gitlab
        .fail_share(&POSTS, 10, GitLabFault::ServerErrorAfterStore);
    sims.glm.set_fault_share(Some((30, GlmFault::RateLimited)));
    let url = url_of(&pool);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    // One `worker --exit-when-idle` run, as a cron job or CI step would use it: it must
    // not exit while a throttled job waits for its retry. Every 429 holds every job for its
    // second: slower than each job on its own, and what GitLab asks for.
    run_until_idle("throttled", &url, &sims, &[], THROTTLED_DRAIN).await;
    let tally = assert_invariants(&pool, &sims, &iids, &Expect::default()).await;
    let requests = sims.gitlab.requests();
    let count = |status: u16| requests.iter().filter(|r| r.status == status).count();
    assert!(count(429) > 0 && count(500) > 0, "the faults were served");
    // No attempt of any job failed: every 429 was waited out, every 500 retried in place.
    let failed_attempts: i64 = sqlx::query_scalar(
        "select coalesce(sum(failed_attempts), 0)::int8 from jobs where kind = 'review'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(failed_attempts, 0, "{}", job_table(&pool).await);
    eprintln!(
        "chaos[throttled]: secs={:.1} requests={} 429s={} 500s={} {tally}",
        began.elapsed().as_secs_f64(),
        requests.len(),
        count(429),
        count(500),
    );
}

#[sqlx::test]
async fn a_gitlab_answering_429_to_everything_for_20_s_is_waited_out_by_a_quiet_fleet(
    pool: PgPool,
) {
    const STORM: Duration = Duration::from_secs(20);
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(100))).await;
    let iids: Vec<u64> = (1..=3).collect();
    sims.add(iids.iter().copied());
    sims.gitlab.fail_share(
        &[],
        100,
        GitLabFault::RateLimited {
            retry_after_secs: 5,
        },
    );
    let url = url_of(&pool);
    let mut fleet = Fleet::start("storm", &pool, &url, &sims, &[]);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    let storm_began = Instant::now();
    tokio::time::sleep(STORM).await;
    sims.gitlab.clear_faults();
    let during = sims.gitlab.requests().len();
    let failed: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0, "{}", job_table(&pool).await);
    // Each review's plan opens with two reads at once (the MR and its latest version), and
    // both meet the first 429; then one probe per Retry-After.
    assert!(
        during <= 2 * 3 + 5,
        "{during} requests in {:?} of throttling",
        storm_began.elapsed()
    );
    fleet
        .wait_idle(DRAIN_TIMEOUT, "the reviews after the storm")
        .await;
    fleet.stop().await;
    let tally = assert_invariants(&pool, &sims, &iids, &Expect::default()).await;
    eprintln!("chaos[storm]: requests during the storm={during} {tally}");
}

#[sqlx::test]
async fn gitlab_requests_per_minute_is_never_exceeded_across_three_worker_processes(pool: PgPool) {
    const CAP: usize = 30;
    let sims = Sims::start(GlmBehaviour::default()).await;
    let iids: Vec<u64> = (1..=6).collect();
    sims.add(iids.iter().copied());
    let url = url_of(&pool);
    let mut fleet = Fleet::start(
        "budget",
        &pool,
        &url,
        &sims,
        &[("GITLAB_REQUESTS_PER_MINUTE", "30")],
    );
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    // Six reviews need far more than 30 requests: the fleet meets the cap within seconds
    // and then waits (a minute, longer than this test looks).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let requests = sims.gitlab.requests();
    let first = requests.first().expect("requests arrived").arrived;
    let in_first_minute = requests
        .iter()
        .filter(|r| r.arrived < first + Duration::from_secs(60))
        .count();
    assert!(
        in_first_minute <= CAP,
        "{in_first_minute} requests in a minute"
    );
    assert!(
        in_first_minute >= CAP - 3,
        "the fleet had more to send than the cap: {in_first_minute}"
    );
    let failed: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0, "{}", job_table(&pool).await);
    fleet.stop().await;
    eprintln!("chaos[budget]: {in_first_minute} requests in the first minute, cap {CAP}");
}

#[sqlx::test]
async fn gitlab_throttling_failures_around_stores_and_a_push_mid_review_post_nothing_twice(
    pool: PgPool,
) {
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(200))).await;
    sims.gitlab.set_latency(Duration::from_millis(20));
    let iids: Vec<u64> = (1..=6).collect();
    sims.add(iids.iter().copied());
    // MR 1's chunk is slow to review, so its author pushes while the review runs.
    sims.glm.add_prompt_fault(
        &tag(1),
        GlmFault::Slow(Duration::from_millis(2_500)),
        Some(1),
    );
    let gitlab = &sims.gitlab;
    gitlab.fail_next(
        Route::MergeRequest,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    gitlab.fail_next(Route::Diffs, 1, GitLabFault::ServerError);
    gitlab.fail_next(Route::Versions, 1, GitLabFault::BadGateway);
    gitlab.fail_next(Route::CreateDiscussion, 1, GitLabFault::ServerError);
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::ServerErrorAfterStore,
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::RateLimitedWithoutHint,
    );
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerError);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("gitlab", &pool, &url, &sims, &[]);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    // The push: once MR 1's review is planned (against the first head), a new head.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let planned: i64 = sqlx::query_scalar("select count(*) from reviews where mr_iid = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        if planned > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MR 1 was never planned\n{}",
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pushed = chaos_mr(1, 1);
    gitlab
        .push(PROJECT, 1, pushed.files, &pushed.head_sha)
        .unwrap();
    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    fleet.stop().await;

    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            stale_positions: true,
            ..Expect::default()
        },
    )
    .await;
    // Every fault was served.
    let statuses: Vec<u16> = gitlab.requests().iter().map(|r| r.status).collect();
    for status in [429, 500, 502] {
        assert!(statuses.contains(&status), "no {status} was served");
    }
    // MR 1: the first head's review finished against that head (GitLab refused its inline
    // positions, now stale, so those findings are in its summary) and queued a review of
    // the new head, which posted them inline.
    let reviews: Vec<(String, i64, i64)> = sqlx::query_as(
        "select r.head_sha,
                count(*) filter (where o.kind = 'inline' and o.state = 'downgraded'),
                count(*) filter (where o.kind = 'inline' and o.state = 'posted')
         from reviews r join outbox o on o.review_id = r.id
         where r.mr_iid = 1 group by r.id, r.head_sha order by r.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        reviews.len(),
        2,
        "the new head was reviewed too: {reviews:?}"
    );
    assert_eq!(reviews[0].0, chaos_mr(1, 0).head_sha);
    assert!(reviews[0].1 > 0, "stale positions refused: {reviews:?}");
    assert_eq!(reviews[1].0, pushed.head_sha);
    assert!(
        reviews[1].1 == 0 && reviews[1].2 > 0,
        "the new head's findings are inline: {reviews:?}"
    );
    eprintln!(
        "chaos[gitlab]: secs={:.1} faults=9+push kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64()
    );
}
