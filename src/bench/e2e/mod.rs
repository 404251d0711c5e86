//! `bench e2e`: one merge request of N chunks reviewed end to end, or (`--mrs N`) many small
//! ones at once (`many.rs`).

mod many;

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::harness::{
    SIM_KEY as KEY, SIM_TOKEN as TOKEN, ensure_idle, sim_deps, simulator_runtime, stop_worker,
    worker_process,
};
use crate::bench::harness::{Rereview, review_job};
use crate::{
    config::DbArgs,
    jobs::Dispatcher,
    jobs::LLM_RESOURCE,
    queue::{Limiter, Queue, Worker, WorkerConfig},
    review::{ChunkBudget, chunk::MIN_PROMPT_TOKENS},
    sim::{FakeGitLab, FakeGlm, GlmBehaviour, fixtures::sized_merge_request, glm::GlmCall},
};

/// Arguments of `bench e2e`.
#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Merge requests enqueued at once. 1 reviews one MR of `--chunks` chunks; more review
    /// that many small MRs (one to three chunks each, by index) and report per-MR times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub mrs: u32,
    /// Chunks (LLM prompts) in the reviewed merge request (with `--mrs 1`).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub chunks: u32,
    /// Simulated GLM latency per request, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub latency_ms: u64,
    /// Simulated GitLab latency per request, in milliseconds (GitLab.com takes 200-600 ms to
    /// create a discussion).
    #[arg(long, default_value_t = 0)]
    pub gitlab_latency_ms: u64,
    /// GLM_CONCURRENT_REQUESTS: the fleet-wide limit.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrent_requests: u32,
    /// Worker processes sharing the limit (1 runs the worker in this process).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub workers: u32,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Results of `bench e2e`.
#[derive(Debug, Serialize)]
pub struct E2eReport {
    pub chunks: i32,
    pub workers: u32,
    pub concurrent_requests: u32,
    pub latency_ms: u64,
    pub gitlab_latency_ms: u64,
    /// Enqueue to the summary note being posted.
    pub wall_s: f64,
    /// ceil(chunks / concurrent_requests) x latency.
    pub ideal_s: f64,
    pub ratio: f64,
    /// Enqueue to the first LLM request reaching the simulator: planning and the
    /// chunk jobs' start.
    pub first_request_s: f64,
    /// First LLM request to last LLM answer.
    pub llm_phase_s: f64,
    /// Last LLM answer to the summary being posted: storing the answer, the review job's
    /// turn, and posting.
    pub posting_s: f64,
    /// Mean time a slot of the limit stood empty during the LLM phase, per hand-over from
    /// one request to the next: (phase x limit - time requests spent in flight) divided by
    /// the hand-overs.
    pub idle_per_handover_ms: f64,
    /// Most LLM requests in flight at once, as the simulator saw it.
    pub peak_in_flight: usize,
    pub llm_requests: u64,
    pub comments_posted: u64,
}

/// Runs `bench e2e` and prints its report.
///
/// # Errors
/// Usage errors for a busy queue; database, simulator and worker errors.
pub async fn run(db: &DbArgs, args: E2eBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(args.concurrency / 2 + 8).await?;
    crate::migrate(&pool).await?;
    if args.mrs > 1 {
        return many::run(db, &pool, &args).await;
    }
    let report = measure(db, &pool, &args).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "reviewq bench e2e (simulated GitLab and GLM): {} chunks, {} worker(s), GLM_CONCURRENT_REQUESTS={}, latency {} ms, GitLab latency {} ms",
            report.chunks,
            report.workers,
            report.concurrent_requests,
            report.latency_ms,
            report.gitlab_latency_ms
        )?;
        writeln!(
            out,
            "  wall {:.2} s vs ideal {:.2} s ({:.3}x); peak in flight {}; {} LLM requests; {} comments",
            report.wall_s,
            report.ideal_s,
            report.ratio,
            report.peak_in_flight,
            report.llm_requests,
            report.comments_posted
        )?;
        writeln!(
            out,
            "  to first request {:.3} s; LLM phase {:.3} s ({:.1} ms idle per slot hand-over); posting {:.3} s",
            report.first_request_s,
            report.llm_phase_s,
            report.idle_per_handover_ms,
            report.posting_s
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

const PROJECT: &str = "bench/e2e";
/// Lines per file: one file (about 3,500 estimated tokens) fills one chunk of the
/// smallest budget (two do not fit), so the MR has exactly as many chunks as files.
const LINES_PER_FILE: u32 = 150;

async fn measure(db: &DbArgs, pool: &PgPool, args: &E2eBenchArgs) -> anyhow::Result<E2eReport> {
    let queue = Queue::new(pool.clone());
    ensure_idle(&queue).await?;
    let sim_runtime = simulator_runtime()?;
    let gitlab = sim_runtime.spawn(FakeGitLab::start(TOKEN)).await??;
    gitlab.set_latency(Duration::from_millis(args.gitlab_latency_ms));
    // One finding per chunk: the bench measures the pipeline, not GitLab's posting rate.
    let behaviour = GlmBehaviour {
        max_findings: 1,
        ..GlmBehaviour::with_latency(Duration::from_millis(args.latency_ms))
    };
    let glm = sim_runtime.spawn(FakeGlm::start(KEY, behaviour)).await??;
    let iid = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1);
    gitlab.add_merge_request(sized_merge_request(
        PROJECT,
        4242,
        iid,
        args.chunks as usize,
        LINES_PER_FILE,
    ))?;
    Limiter::set_capacity(pool, LLM_RESOURCE, args.concurrent_requests).await?;

    let workers = Workers::start(db, &queue, &gitlab, &glm, args, args.chunks)?;
    // Let the workers connect and reach their idle wait.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let job = review_job(&format!("{PROJECT}:{iid}"), Rereview::Forced)?;
    let started = Instant::now();
    let id = Queue::enqueue(pool, &job).await?.id();
    let deadline = started + Duration::from_secs(600);
    while gitlab.posted_notes() == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the review did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = started.elapsed().as_secs_f64();

    workers.stop().await?;
    let chunks = sqlx::query_scalar!(
        "select chunk_count from reviews where job_id = $1",
        id.get()
    )
    .fetch_one(pool)
    .await?;
    let rounds = (f64::from(args.chunks) / f64::from(args.concurrent_requests)).ceil();
    let ideal = rounds * args.latency_ms as f64 / 1000.0;
    let timeline = Timeline::of(&glm.calls(), started, args.concurrent_requests)
        .context("the simulator saw no LLM request")?;
    let report = E2eReport {
        chunks,
        workers: args.workers,
        concurrent_requests: args.concurrent_requests,
        latency_ms: args.latency_ms,
        gitlab_latency_ms: args.gitlab_latency_ms,
        wall_s: wall,
        ideal_s: ideal,
        ratio: wall / ideal,
        first_request_s: timeline.first_request.as_secs_f64(),
        llm_phase_s: timeline.llm_phase.as_secs_f64(),
        posting_s: wall - timeline.first_request.as_secs_f64() - timeline.llm_phase.as_secs_f64(),
        idle_per_handover_ms: timeline.idle_per_handover.as_secs_f64() * 1000.0,
        peak_in_flight: glm.peak_in_flight(),
        llm_requests: glm.request_count(),
        comments_posted: gitlab.posted_discussions() + gitlab.posted_notes(),
    };
    drop((gitlab, glm));
    sim_runtime.shutdown_background();
    Ok(report)
}

/// The workers under test: one in this process (`--workers 1`) or worker processes of this
/// binary, all pointed at the simulators and sharing the fleet-wide LLM limit.
pub(super) struct Workers {
    stop: CancellationToken,
    in_process: Option<tokio::task::JoinHandle<crate::queue::Result<crate::queue::RunSummary>>>,
    children: Vec<tokio::process::Child>,
}

impl Workers {
    /// Starts them; reviews of up to `max_chunks` chunks of the smallest budget.
    pub(super) fn start(
        db: &DbArgs,
        queue: &Queue,
        gitlab: &FakeGitLab,
        glm: &FakeGlm,
        args: &E2eBenchArgs,
        max_chunks: u32,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut children = Vec::new();
        let mut in_process = None;
        if args.workers == 1 {
            let deps = sim_deps(
                gitlab,
                glm,
                ChunkBudget::new(MIN_PROMPT_TOKENS)?,
                max_chunks as usize,
            )?;
            let config = WorkerConfig {
                concurrency: args.concurrency as usize,
                limits: vec![(LLM_RESOURCE.to_owned(), args.concurrent_requests)],
                ..WorkerConfig::default()
            };
            let worker = Worker::new(queue.clone(), Dispatcher::with_review(deps), config);
            in_process = Some(tokio::spawn(worker.run(stop.clone())));
        } else {
            // The configured URL, or local mode's cluster: the worker processes share it.
            let url = db.url()?;
            for _ in 0..args.workers {
                children.push(
                    worker_process(
                        &url,
                        gitlab,
                        glm,
                        args.concurrency,
                        args.concurrent_requests,
                    )?
                    .env("REVIEWQ_CHUNK_TOKENS", MIN_PROMPT_TOKENS.to_string())
                    .env("REVIEWQ_MAX_CHUNKS", max_chunks.to_string())
                    // The default, stated: no GitLab budget, whatever the shell that
                    // runs the bench exports, so that only the LLM limit paces the run.
                    .env_remove("GITLAB_REQUESTS_PER_MINUTE")
                    .env_remove("GITLAB_CONCURRENT_REQUESTS")
                    .spawn()
                    .context("could not start a worker process")?,
                );
            }
        }
        Ok(Self {
            stop,
            in_process,
            children,
        })
    }

    /// The worker processes' ids (none for the in-process worker).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    }

    /// Stops them and waits for them to exit.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(handle) = self.in_process {
            handle.await.context("bench worker panicked")??;
        }
        for child in self.children {
            stop_worker(child).await;
        }
        Ok(())
    }
}

/// Where the LLM phase's time went, from the simulator's record of each call.
pub(super) struct Timeline {
    pub first_request: Duration,
    pub llm_phase: Duration,
    pub idle_per_handover: Duration,
}

impl Timeline {
    /// `None` without calls.
    pub(super) fn of(calls: &[GlmCall], since: Instant, limit: u32) -> Option<Self> {
        let first = calls.iter().map(|c| c.arrived).min()?;
        let last = calls.iter().map(|c| c.arrived + c.elapsed).max()?;
        let llm_phase = last - first;
        let busy: Duration = calls.iter().map(|c| c.elapsed).sum();
        let capacity = llm_phase * limit;
        // Each slot's first request follows no hand-over.
        let handovers = calls.len().saturating_sub(limit as usize).max(1);
        Some(Self {
            first_request: first.saturating_duration_since(since),
            llm_phase,
            idle_per_handover: capacity.saturating_sub(busy) / handovers as u32,
        })
    }
}
