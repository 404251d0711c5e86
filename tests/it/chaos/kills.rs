//! Killed workers: SIGKILLs aimed at every stage of a review, and the rescue of their jobs.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use reviewq::{
    queue::{JobId, Queue},
    sim::{FakeGitLab, GitLabFault, GlmBehaviour, Route},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{support::PROJECT, support::url_of};

use super::fleet::Fleet;
use super::invariants::{Expect, assert_invariants};
use super::{
    DRAIN_TIMEOUT, FLEET, GLM_LIMIT, KILL_MRS, ROUND_HEADROOM, Rng, Sims, chaos_mr, chaos_secs,
    enqueue,
};

/// What a running job was doing, as the database shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// A review job before its plan is stored: fetching the MR, its versions and diffs.
    Fetch,
    /// A review job turning findings into outbox rows.
    Outbox,
    /// A chunk job with an LLM request in flight (its ledger row is `started`).
    Llm,
    /// A chunk job waiting for an LLM slot or storing an answer.
    Chunk,
    /// A review job posting inline comments; GitLab may hold some it has not recorded.
    Posting,
    /// A review job posting its summary note.
    Summary,
}

/// A running job's stage, worker and review.
struct RunningJob {
    /// The worker holding it.
    worker: Option<Uuid>,
    /// What it is doing.
    stage: Stage,
    /// (MR iid, head SHA, comments recorded as posted) of a review job past its plan.
    review: Option<(i64, String, i64)>,
    /// Attempts the job has left before it fails for good.
    attempts_left: i32,
}

/// A running job as [`running_jobs`] reads it.
#[derive(sqlx::FromRow)]
struct RunningRow {
    /// The worker holding the job.
    worker_id: Option<Uuid>,
    /// The stage's name (see [`Stage`]).
    stage: String,
    /// The MR of a review job past its plan.
    mr_iid: Option<i64>,
    /// The head it reviews.
    head_sha: Option<String>,
    /// Its comments recorded as posted.
    posted: i64,
    /// Attempts left before it fails for good.
    attempts_left: i32,
}

async fn running_jobs(pool: &PgPool) -> Vec<RunningJob> {
    let rows: Vec<RunningRow> = sqlx::query_as(
        r#"
        select j.worker_id,
               case when j.kind = 'review_chunk' then
                        case when exists (select 1 from llm_calls c where c.job_id = j.id
                                          and c.job_attempt = j.attempt and c.status = 'started')
                             then 'llm' else 'chunk' end
                    when r.id is null then 'fetch'
                    when r.state = 'reviewing' then 'outbox'
                    when exists (select 1 from outbox o where o.review_id = r.id
                                 and o.key = 'summary' and o.state = 'pending') then 'summary'
                    else 'posting' end as stage,
               r.mr_iid, r.head_sha,
               (select count(*) from outbox o where o.review_id = r.id and o.state = 'posted'
                  and (o.kind = 'inline' or o.key = 'summary')) as posted,
               j.max_attempts - j.failed_attempts as attempts_left
        from jobs j left join reviews r on r.job_id = j.id and j.kind = 'review'
        where j.state = 'running'
        "#,
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .map(|row| RunningJob {
            worker: row.worker_id,
            stage: match row.stage.as_str() {
                "fetch" => Stage::Fetch,
                "outbox" => Stage::Outbox,
                "llm" => Stage::Llm,
                "chunk" => Stage::Chunk,
                "summary" => Stage::Summary,
                _ => Stage::Posting,
            },
            review: row
                .mr_iid
                .zip(row.head_sha)
                .map(|(i, h)| (i, h, row.posted)),
            attempts_left: row.attempts_left,
        })
        .collect()
}

/// Comments GitLab holds for a review's head that its outbox does not record yet.
fn unrecorded(gitlab: &FakeGitLab, review: &Option<(i64, String, i64)>) -> i64 {
    let Some((iid, head, posted)) = review else {
        return 0;
    };
    let head = format!("head={head} ");
    let stored = gitlab
        .marker_counts(PROJECT, *iid as u64)
        .map(|m| m.keys().filter(|k| k.contains(&head)).count())
        .unwrap_or(0);
    stored as i64 - posted
}

/// The stages kills aim at, in turn.
const TARGETS: [Stage; 4] = [Stage::Fetch, Stage::Llm, Stage::Posting, Stage::Summary];

/// What the kills of a run hit.
#[derive(Default)]
struct KillLog {
    /// Kills by the stages of the victim's running jobs ("idle" if none).
    stages: BTreeMap<String, u32>,
    /// Comments GitLab had stored but the victims had not recorded, summed over kills.
    unrecorded: i64,
    /// Kills skipped because every worker ran a job low on attempts.
    spared: u32,
}

/// Attempts a job must have left for the test to kill its worker. A lapsed lease counts
/// as a failed attempt (a job that kills its worker every time must not loop forever), so
/// a job's budget (5 attempts for a review, 4 for a chunk) bounds the crashes it survives;
/// aiming several kills at one long review would exhaust it, which random crashes do not.
const SPARE_ATTEMPTS: i32 = 3;

/// Kills a worker with a job in stage `target` (waiting up to 2 s for one), else a random
/// one, sparing workers whose jobs are low on attempts; notes what the victim was doing;
/// restarts it.
async fn kill_in_stage(
    fleet: &mut Fleet,
    sims: &Sims,
    rng: &mut Rng,
    target: Stage,
    log: &mut KillLog,
) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let victim = loop {
        let ids: Vec<Option<Uuid>> = (0..FLEET).map(|i| fleet.worker_id(i)).collect();
        let running = running_jobs(&fleet.pool).await;
        let slot_of =
            |job: &RunningJob| ids.iter().position(|id| id.is_some() && *id == job.worker);
        let mut spared = [false; FLEET];
        for job in running.iter().filter(|j| j.attempts_left < SPARE_ATTEMPTS) {
            if let Some(slot) = slot_of(job) {
                spared[slot] = true;
            }
        }
        let found = running.iter().find_map(|job| {
            let slot = slot_of(job).filter(|s| !spared[*s])?;
            let in_window =
                job.stage != Stage::Posting || unrecorded(&sims.gitlab, &job.review) > 0;
            (job.stage == target && in_window).then_some(slot)
        });
        if let Some(slot) = found {
            break Some(slot);
        }
        if Instant::now() >= deadline {
            let eligible: Vec<usize> = (0..FLEET).filter(|s| !spared[*s]).collect();
            break (!eligible.is_empty())
                .then(|| eligible[rng.below(eligible.len() as u64) as usize]);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    let Some(victim) = victim else {
        log.spared += 1;
        return;
    };
    let id = fleet.kill(victim).await;
    let jobs: Vec<RunningJob> = running_jobs(&fleet.pool)
        .await
        .into_iter()
        .filter(|j| id.is_some() && j.worker == id)
        .collect();
    let mut stages: Vec<Stage> = jobs.iter().map(|j| j.stage).collect();
    stages.sort();
    stages.dedup();
    if stages.is_empty() {
        *log.stages.entry("idle".into()).or_default() += 1;
    }
    for stage in stages {
        *log.stages
            .entry(format!("{stage:?}").to_lowercase())
            .or_default() += 1;
    }
    log.unrecorded += jobs
        .iter()
        .filter(|j| matches!(j.stage, Stage::Posting | Stage::Summary))
        .map(|j| unrecorded(&sims.gitlab, &j.review).max(0))
        .sum::<i64>();
    tokio::time::sleep(rng.millis(0, 500)).await;
    fleet.restart(victim);
}

/// Widens the windows kills aim at: every diff fetch and every summary note is slow (the
/// summary is stored before the pause), and some inline comments are stored by GitLab
/// well before it answers. Called again for each new review to top up the inline ones.
fn widen_windows(gitlab: &FakeGitLab, first: bool) {
    if first {
        gitlab.fail_next(
            Route::Diffs,
            u32::MAX,
            GitLabFault::Delay(Duration::from_millis(700)),
        );
        gitlab.fail_next(
            Route::CreateNote,
            u32::MAX,
            GitLabFault::StoreThenHang(Duration::from_millis(1000)),
        );
    }
    gitlab.fail_next(
        Route::CreateDiscussion,
        2,
        GitLabFault::StoreThenHang(Duration::from_millis(1000)),
    );
}

#[sqlx::test]
async fn a_fleet_sigkilled_every_few_seconds_at_every_stage_reviews_everything_exactly_once(
    pool: PgPool,
) {
    let began = Instant::now();
    let phase = chaos_secs();
    let mut rng = Rng::from_env("kill");
    let sims = Sims::start(GlmBehaviour {
        max_findings: 6,
        ..GlmBehaviour::with_latency(Duration::from_millis(500))
    })
    .await;
    sims.gitlab.set_latency(Duration::from_millis(30));
    let iids: Vec<u64> = (1..=KILL_MRS).collect();
    sims.add(iids.iter().copied());
    let url = url_of(&pool);
    let mut fleet = Fleet::start("kill", &pool, &url, &sims, &[]);

    let mut log = KillLog::default();
    // Each MR is reviewed again at a new head as soon as its last review ends, so reviews
    // are at every stage at any time until the kill phase nears its end.
    let mut latest: BTreeMap<u64, (u32, JobId)> = BTreeMap::new();
    widen_windows(&sims.gitlab, true);
    for &iid in &iids {
        widen_windows(&sims.gitlab, false);
        latest.insert(iid, (0, enqueue(&pool, iid).await));
    }
    let mut enqueued = iids.len();
    let queue = Queue::new(pool.clone());
    let mut next_kill = Instant::now() + rng.millis(1_500, 3_000);
    while began.elapsed() < phase {
        fleet.check_rescues().await;
        if began.elapsed() + ROUND_HEADROOM < phase {
            for (&iid, (heads, job)) in latest.iter_mut() {
                if !queue.get(*job).await.unwrap().state.is_finished() {
                    continue;
                }
                *heads += 1;
                let next = chaos_mr(iid, *heads);
                sims.gitlab
                    .push(PROJECT, iid, next.files, &next.head_sha)
                    .unwrap();
                widen_windows(&sims.gitlab, false);
                *job = enqueue(&pool, iid).await;
                enqueued += 1;
            }
        }
        if Instant::now() >= next_kill {
            let target = TARGETS[fleet.kills as usize % TARGETS.len()];
            kill_in_stage(&mut fleet, &sims, &mut rng, target, &mut log).await;
            next_kill = Instant::now() + rng.millis(1_500, 4_000);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .wait_idle(DRAIN_TIMEOUT, "the reviews after the last kill")
        .await;
    fleet.stop().await;

    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            max_cut_off: fleet.kills as usize * GLM_LIMIT,
            ..Expect::default()
        },
    )
    .await;
    assert!(
        fleet.kills >= (phase.as_secs() / 6) as u32,
        "too few kills: {}",
        fleet.kills
    );
    assert_eq!(
        tally.review_jobs, enqueued as i64,
        "one review job per head pushed"
    );
    assert_eq!(
        tally.peak_in_flight, GLM_LIMIT,
        "the fleet limit was reached (and never exceeded)"
    );
    eprintln!(
        "chaos[kill]: secs={:.1} kills={} restarts={} kill_stages={:?} unrecorded_at_kill={} \
         kills_skipped={} longest_rescue={:.1}s {tally}",
        began.elapsed().as_secs_f64(),
        fleet.kills,
        fleet.restarts,
        log.stages,
        log.unrecorded,
        log.spared,
        fleet.longest_rescue.as_secs_f64(),
    );
}
