//! `bench e2e --mrs N`: N small merge requests (one to three chunks each) enqueued at once
//! and reviewed by the workers under the fleet-wide LLM limit. Measures how close the fleet
//! comes to the limit's ideal, whether any MR starved, and what each MR costs besides its
//! LLM calls. "Done" is read from the database: each review job's `finished_at`.

use std::{
    collections::BTreeMap,
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{E2eBenchArgs, LINES_PER_FILE, PROJECT, Timeline, Workers};
use crate::bench::harness::{Rereview, review_job};
use crate::{
    bench::harness::{
        Percentiles, SIM_KEY as KEY, SIM_TOKEN as TOKEN, ensure_idle, process_memory_mib,
        simulator_runtime,
    },
    config::DbArgs,
    jobs::LLM_RESOURCE,
    queue::{JobId, Limiter, Queue},
    sim::{
        FakeGitLab, FakeGlm, GlmBehaviour,
        fixtures::sized_merge_request,
        glm::{CallPurpose, DEFAULT_MAX_FINDINGS, GlmCall},
    },
};

/// The largest MR of the mix: MR `i` has `1 + i % 3` files, one chunk each.
const MAX_CHUNKS_PER_MR: u32 = 3;

/// Results of `bench e2e --mrs N`. Times per MR are in milliseconds from the enqueue's
/// commit; `wall_s` ends at the last review job's `finished_at`.
#[derive(Debug, Serialize)]
pub struct ManyReport {
    pub mrs: u32,
    /// Chunks planned over all MRs (`reviews.chunk_count`).
    pub chunks: i64,
    pub workers: u32,
    pub concurrency: u32,
    pub concurrent_requests: u32,
    pub latency_ms: u64,
    pub gitlab_latency_ms: u64,
    /// The enqueue's commit to the last review job finished (database clock).
    pub wall_s: f64,
    /// ceil(llm_requests / concurrent_requests) x latency.
    pub ideal_s: f64,
    pub ratio: f64,
    /// Every request the simulated GLM saw (whatever its answer).
    pub llm_requests: u64,
    /// Those requests by what they asked for (review, describe, question).
    pub llm_requests_by_purpose: BTreeMap<String, u64>,
    /// Most LLM requests in flight at once, as the simulator saw it; the bench fails above
    /// `concurrent_requests`.
    pub peak_in_flight: usize,
    /// Enqueue to the first LLM request reaching the simulator.
    pub first_request_s: f64,
    /// First LLM request to last LLM answer.
    pub llm_phase_s: f64,
    /// Mean time a slot stood empty per hand-over during the LLM phase (see `E2eReport`).
    pub idle_per_handover_ms: f64,
    /// Last LLM answer to the last review job finished.
    pub tail_s: f64,
    /// Per MR, enqueue to its review job finished.
    pub per_mr_ms: Percentiles,
    /// Per MR, the stages of that time (see [`Stages`]).
    pub stages_ms: Stages,
    pub llm_calls_per_mr: f64,
    pub comments_per_mr: f64,
    pub gitlab_requests_per_mr: f64,
    /// GitLab requests per MR by endpoint (the simulator's `Route`).
    pub gitlab_requests_per_mr_by_route: BTreeMap<String, f64>,
    /// Peak resident set (`VmHWM`) of each worker process, read before stopping it; empty
    /// for the in-process worker.
    pub worker_peak_rss_mib: Vec<f64>,
}

/// Where one MR's enqueue-to-done time goes, each stage's per-MR percentiles.
#[derive(Debug, Serialize)]
pub struct Stages {
    /// Enqueue to the plan's commit (`reviews.created_at`): waiting for a worker, reading
    /// the MR, its settings and diffs.
    pub planned: Percentiles,
    /// Plan to the last chunk's answer stored: the chunk jobs' wait for the limit and the
    /// LLM calls.
    pub answered: Percentiles,
    /// Last answer to the summary posted (`reviews.finished_at`): the parent's turn, the
    /// threads read, the inline comments and the summary.
    pub posted: Percentiles,
    /// Summary posted to the review job finished.
    pub finished: Percentiles,
}

/// Runs `bench e2e --mrs N` and prints its report; fails if the LLM limit was exceeded.
///
/// # Errors
/// Usage errors for a busy queue; database, simulator and worker errors; a review job that
/// did not succeed.
pub(super) async fn run(
    db: &DbArgs,
    pool: &PgPool,
    args: &E2eBenchArgs,
) -> anyhow::Result<ExitCode> {
    let report = measure(db, pool, args).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &report)?;
    }
    if report.peak_in_flight > report.concurrent_requests as usize {
        eprintln!(
            "error: {} LLM requests were in flight at once, above GLM_CONCURRENT_REQUESTS={}",
            report.peak_in_flight, report.concurrent_requests
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(out: &mut impl Write, r: &ManyReport) -> std::io::Result<()> {
    writeln!(
        out,
        "reviewq bench e2e (simulated GitLab and GLM): {} MRs ({} chunks), {} worker(s) x {} jobs, GLM_CONCURRENT_REQUESTS={}, latency {} ms, GitLab latency {} ms",
        r.mrs,
        r.chunks,
        r.workers,
        r.concurrency,
        r.concurrent_requests,
        r.latency_ms,
        r.gitlab_latency_ms
    )?;
    let purposes: Vec<String> = r
        .llm_requests_by_purpose
        .iter()
        .map(|(purpose, n)| format!("{n} {purpose}"))
        .collect();
    writeln!(
        out,
        "  wall {:.2} s (enqueue to the last review job finished) vs ideal {:.2} s = ceil({} LLM requests ({}) / {}) x {} ms: {:.3}x",
        r.wall_s,
        r.ideal_s,
        r.llm_requests,
        purposes.join(", "),
        r.concurrent_requests,
        r.latency_ms,
        r.ratio
    )?;
    writeln!(
        out,
        "  peak LLM requests in flight {} (limit {}); to first request {:.3} s; LLM phase {:.2} s ({:.1} ms idle per slot hand-over); last answer to last MR done {:.3} s",
        r.peak_in_flight,
        r.concurrent_requests,
        r.first_request_s,
        r.llm_phase_s,
        r.idle_per_handover_ms,
        r.tail_s
    )?;
    let p = |p: &Percentiles| format!("p50 {:.0} / p99 {:.0} / max {:.0}", p.p50, p.p99, p.max);
    writeln!(out, "  per MR, enqueue to done (ms): {}", p(&r.per_mr_ms))?;
    writeln!(
        out,
        "    stages (ms): planned {}; answered {}; posted {}; job finished {}",
        p(&r.stages_ms.planned),
        p(&r.stages_ms.answered),
        p(&r.stages_ms.posted),
        p(&r.stages_ms.finished)
    )?;
    let routes: Vec<String> = r
        .gitlab_requests_per_mr_by_route
        .iter()
        .map(|(route, n)| format!("{route} {n:.2}"))
        .collect();
    writeln!(
        out,
        "  per MR: {:.2} LLM calls, {:.2} comments, {:.2} GitLab requests ({})",
        r.llm_calls_per_mr,
        r.comments_per_mr,
        r.gitlab_requests_per_mr,
        routes.join(", ")
    )?;
    let rss: Vec<String> = r
        .worker_peak_rss_mib
        .iter()
        .map(|m| format!("{m:.1}"))
        .collect();
    if !rss.is_empty() {
        writeln!(out, "  worker peak RSS (VmHWM, MiB): {}", rss.join(", "))?;
    }
    Ok(())
}

async fn measure(db: &DbArgs, pool: &PgPool, args: &E2eBenchArgs) -> anyhow::Result<ManyReport> {
    let queue = Queue::new(pool.clone());
    ensure_idle(&queue).await?;
    let sim_runtime = simulator_runtime()?;
    let gitlab = sim_runtime.spawn(FakeGitLab::start(TOKEN)).await??;
    gitlab.set_latency(Duration::from_millis(args.gitlab_latency_ms));
    // Ten findings per chunk (the prompt's own limit; a 150-line file has 15 unwraps): 10,
    // 20 or 30 per MR, 20 on average, all of them inline under max_inline_comments (30).
    let behaviour = GlmBehaviour {
        max_findings: DEFAULT_MAX_FINDINGS,
        ..GlmBehaviour::with_latency(Duration::from_millis(args.latency_ms))
    };
    let glm = sim_runtime.spawn(FakeGlm::start(KEY, behaviour)).await??;
    // Fresh iids each run: the database keeps earlier runs' reviews.
    let first_iid = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(1);
    for i in 0..u64::from(args.mrs) {
        let files = 1 + (i % u64::from(MAX_CHUNKS_PER_MR)) as usize;
        gitlab.add_merge_request(sized_merge_request(
            PROJECT,
            4242,
            first_iid + i,
            files,
            LINES_PER_FILE,
        ))?;
    }
    Limiter::set_capacity(pool, LLM_RESOURCE, args.concurrent_requests).await?;
    let workers = Workers::start(db, &queue, &gitlab, &glm, args, MAX_CHUNKS_PER_MR)?;
    // Let the workers connect and reach their idle wait.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (ids, enqueued_at) = enqueue_all(pool, first_iid, args.mrs).await?;
    let started = Instant::now();
    wait_finished(pool, &ids, started + Duration::from_secs(1800)).await?;
    // Before stopping them: a stopped process has no /proc entry.
    let worker_peak_rss_mib = workers
        .pids()
        .into_iter()
        .filter_map(|pid| process_memory_mib(pid, "VmHWM:"))
        .collect();
    workers.stop().await?;

    let rows = per_mr(pool, &ids, enqueued_at).await?;
    let calls = glm.calls();
    let report = report(args, &rows, &calls, &gitlab, &glm, started)?;
    drop((gitlab, glm));
    sim_runtime.shutdown_background();
    Ok(ManyReport {
        worker_peak_rss_mib,
        ..report
    })
}

/// Enqueues one review per MR in one transaction, so the workers see them all at once;
/// returns the job ids and the commit's time on the database clock.
async fn enqueue_all(
    pool: &PgPool,
    first_iid: u64,
    mrs: u32,
) -> anyhow::Result<(Vec<JobId>, DateTime<Utc>)> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(mrs as usize);
    for i in 0..u64::from(mrs) {
        let job = review_job(&format!("{PROJECT}:{}", first_iid + i), Rereview::Forced)?;
        ids.push(Queue::enqueue(&mut *tx, &job).await?.id());
    }
    tx.commit().await?;
    let committed = sqlx::query_scalar!(r#"select now() as "now!""#)
        .fetch_one(pool)
        .await?;
    Ok((ids, committed))
}

/// Waits until every review job has finished, whatever its state.
async fn wait_finished(pool: &PgPool, ids: &[JobId], deadline: Instant) -> anyhow::Result<()> {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    loop {
        let finished = sqlx::query_scalar!(
            r#"select count(*) as "n!" from jobs where id = any($1) and finished_at is not null"#,
            &ids
        )
        .fetch_one(pool)
        .await?;
        if finished == ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} reviews did not finish within 30 minutes",
            ids.len() as i64 - finished,
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One MR's review as the database recorded it: seconds from the enqueue's commit.
struct MrRow {
    state: String,
    chunks: i64,
    planned: Option<f64>,
    answered: Option<f64>,
    posted: Option<f64>,
    done: Option<f64>,
}

async fn per_mr(
    pool: &PgPool,
    ids: &[JobId],
    enqueued_at: DateTime<Utc>,
) -> anyhow::Result<Vec<MrRow>> {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let rows = sqlx::query!(
        r#"
        select j.state::text as "state!",
            coalesce(r.chunk_count, 0)::int8 as "chunks!",
            extract(epoch from r.created_at - $2)::float8 as planned,
            extract(epoch from (select max(c.finished_at) from review_chunks c
                                where c.review_id = r.id and not c.superseded) - $2)::float8
                as answered,
            extract(epoch from r.finished_at - $2)::float8 as posted,
            extract(epoch from j.finished_at - $2)::float8 as done
        from jobs j left join reviews r on r.job_id = j.id
        where j.id = any($1)
        "#,
        &ids,
        enqueued_at
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| MrRow {
            state: r.state,
            chunks: r.chunks,
            planned: r.planned,
            answered: r.answered,
            posted: r.posted,
            done: r.done,
        })
        .collect())
}

/// The report from the database's rows and the simulators' records; fails unless every
/// review succeeded.
fn report(
    args: &E2eBenchArgs,
    rows: &[MrRow],
    calls: &[GlmCall],
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    started: Instant,
) -> anyhow::Result<ManyReport> {
    let failed = rows.iter().filter(|r| r.state != "succeeded").count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} reviews did not succeed",
        rows.len()
    );
    let mrs = f64::from(args.mrs);
    let ms = |f: fn(&MrRow) -> Option<f64>| -> Vec<f64> {
        rows.iter().filter_map(f).map(|s| s * 1000.0).collect()
    };
    let gap = |to: fn(&MrRow) -> Option<f64>, from: fn(&MrRow) -> Option<f64>| -> Vec<f64> {
        rows.iter()
            .filter_map(|r| Some((to(r)? - from(r)?) * 1000.0))
            .collect()
    };
    let wall = rows.iter().filter_map(|r| r.done).fold(0.0, f64::max);
    let llm_requests = glm.request_count();
    let ideal = (llm_requests as f64 / f64::from(args.concurrent_requests)).ceil()
        * args.latency_ms as f64
        / 1000.0;
    let mut by_purpose = BTreeMap::new();
    for call in calls {
        let purpose = match call.purpose() {
            CallPurpose::Review => "review",
            CallPurpose::Describe => "describe",
            CallPurpose::Question => "question",
        };
        *by_purpose.entry(purpose.to_owned()).or_insert(0) += 1;
    }
    let mut by_route = BTreeMap::new();
    let requests = gitlab.requests();
    for request in &requests {
        let route = request
            .route
            .map_or_else(|| "unrouted".to_owned(), |r| format!("{r:?}"));
        *by_route.entry(route).or_insert(0.0) += 1.0 / mrs;
    }
    let timeline = Timeline::of(calls, started, args.concurrent_requests)
        .context("the simulator saw no LLM request")?;
    // The timeline starts at the bench's clock just after the commit; the wall at the
    // database's commit time: the same moment within a round trip.
    let llm_end = timeline.first_request + timeline.llm_phase;
    Ok(ManyReport {
        mrs: args.mrs,
        chunks: rows.iter().map(|r| r.chunks).sum(),
        workers: args.workers,
        concurrency: args.concurrency,
        concurrent_requests: args.concurrent_requests,
        latency_ms: args.latency_ms,
        gitlab_latency_ms: args.gitlab_latency_ms,
        wall_s: wall,
        ideal_s: ideal,
        ratio: wall / ideal,
        llm_requests,
        llm_requests_by_purpose: by_purpose,
        peak_in_flight: glm.peak_in_flight(),
        first_request_s: timeline.first_request.as_secs_f64(),
        llm_phase_s: timeline.llm_phase.as_secs_f64(),
        idle_per_handover_ms: timeline.idle_per_handover.as_secs_f64() * 1000.0,
        tail_s: wall - llm_end.as_secs_f64(),
        per_mr_ms: Percentiles::of(ms(|r| r.done)),
        stages_ms: Stages {
            planned: Percentiles::of(ms(|r| r.planned)),
            answered: Percentiles::of(gap(|r| r.answered, |r| r.planned)),
            posted: Percentiles::of(gap(|r| r.posted, |r| r.answered)),
            finished: Percentiles::of(gap(|r| r.done, |r| r.posted)),
        },
        llm_calls_per_mr: calls.len() as f64 / mrs,
        comments_per_mr: (gitlab.posted_discussions() + gitlab.posted_notes()) as f64 / mrs,
        gitlab_requests_per_mr: requests.len() as f64 / mrs,
        gitlab_requests_per_mr_by_route: by_route,
        worker_peak_rss_mib: Vec::new(),
    })
}
