//! `reviewq bench`: built-in benchmarks, in the spirit of `river bench`.
//!
//! `queue` measures the queue alone with no-op jobs in this process:
//! - W1 (drain): bulk-insert N jobs, then drain them with one worker at concurrency C.
//! - W2 (latency): with an idle worker running, enqueue 1,000 jobs one at a time at about
//!   100 per second; enqueue-to-start latency is `started_at - created_at`, both read
//!   from the database clock.

use std::{
    io::Write,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use secrecy::SecretString;

use crate::{
    config::DbArgs,
    config::UsageError,
    gitlab::{GitLabClient, GitLabConfig},
    jobs::{Dispatcher, noop::NoopArgs, review::ReviewDeps},
    llm::{LlmClient, LlmConfig},
    queue::{Queue, Worker, WorkerConfig},
    review::ChunkBudget,
    sim::{FakeGitLab, FakeGlm},
};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Bench,
}

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Queue throughput (W1) and enqueue-to-start latency (W2) with no-op jobs.
    Queue(QueueBenchArgs),
    /// One review end to end against simulated GitLab and GLM on loopback.
    E2e(E2eBenchArgs),
    /// Webhook answer latency of `serve` under a steady delivery rate.
    Serve(crate::bench_serve::ServeBenchArgs),
    /// Worker memory and prompt sizes while reviewing a hostile, gigantic merge request.
    Gigantic(crate::bench_gigantic::GiganticBenchArgs),
    /// Tokens per review round: a full review, then incremental reviews of two pushes.
    Rounds(crate::bench_rounds::RoundsBenchArgs),
    /// Console page latency on 100,000 jobs and 1,000,000 ledger rows.
    Ui(crate::bench_ui::UiBenchArgs),
}

/// Arguments of `bench e2e`.
#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Chunks (LLM prompts) in the reviewed merge request.
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

/// Arguments of `bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Jobs to insert and drain in W1.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub jobs: u32,
    /// Worker concurrency.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Run one workload only.
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// Jobs enqueued one at a time in W2.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub latency_jobs: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The two queue workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// W1: bulk insert, then drain.
    Drain,
    /// W2: enqueue-to-start latency under a trickle.
    Latency,
}

/// Results of `bench queue`.
#[derive(Debug, Default, Serialize)]
pub struct QueueBenchReport {
    pub jobs: u32,
    pub concurrency: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insert_jobs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_jobs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
    /// Resident memory of this process when the worker was idle, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_idle_mib: Option<f64>,
    /// Peak resident memory of this process over the run, in MiB.
    pub rss_peak_mib: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Inserts go in batches of this size: large enough to amortise round trips, small
/// enough to keep each statement's arrays modest.
const INSERT_BATCH: usize = 5_000;

/// W2's enqueue pace.
const LATENCY_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `bench`.
///
/// # Errors
/// Usage errors for a busy queue; database errors.
pub async fn run(db: &DbArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Queue(args) => {
            let pool = db.pool(args.concurrency / 2 + 8).await?;
            crate::migrate(&pool).await?;
            let report = queue_bench(&pool, &args).await?;
            let mut out = std::io::stdout().lock();
            if args.json {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                print_report(&mut out, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Bench::Serve(args) => crate::bench_serve::run(db, args).await,
        Bench::Gigantic(args) => crate::bench_gigantic::run(db, args).await,
        Bench::Rounds(args) => crate::bench_rounds::run(db, args).await,
        Bench::Ui(args) => crate::bench_ui::run(db, args).await,
        Bench::E2e(args) => {
            let pool = db.pool(args.concurrency / 2 + 8).await?;
            crate::migrate(&pool).await?;
            let report = e2e::run(db, &pool, &args).await?;
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
    }
}

/// The GitLab token the benchmarks' simulated GitLab accepts.
pub(crate) const SIM_TOKEN: &str = "bench-gitlab-token";
/// The key the benchmarks' simulated GLM accepts.
pub(crate) const SIM_KEY: &str = "bench-glm-key";

/// Review dependencies pointed at the simulated servers, for an in-process worker.
///
/// # Errors
/// Invalid simulator URLs or client settings.
pub(crate) fn sim_deps(
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    budget: ChunkBudget,
    max_chunks: usize,
) -> anyhow::Result<ReviewDeps> {
    Ok(ReviewDeps {
        gitlab: GitLabClient::new(GitLabConfig::new(
            gitlab.base_url().parse()?,
            SecretString::from(SIM_TOKEN),
        ))?,
        llm: LlmClient::new(LlmConfig::new(
            glm.base_url().parse()?,
            Some(SecretString::from(SIM_KEY)),
            crate::llm::DEFAULT_MODEL,
        ))?,
        budget,
        chunk_timeout: Duration::from_secs(120),
        max_chunks,
        spend: crate::spend::SpendPolicy::default(),
        gitlab_budget: crate::jobs::gitlab_budget::GitLabBudget::default(),
    })
}

/// A `reviewq worker` process of this binary pointed at the simulators, quiet, killed if
/// dropped; callers add their own settings before spawning it.
///
/// # Errors
/// The path of this executable cannot be read.
pub(crate) fn worker_process(
    db_url: &str,
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    concurrency: u32,
    llm_limit: u32,
) -> std::io::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["worker", "--concurrency", &concurrency.to_string()])
        .env("DATABASE_URL", db_url)
        .env("GITLAB_URL", gitlab.base_url())
        .env("GITLAB_TOKEN", SIM_TOKEN)
        .env("GLM_BASE_URL", glm.base_url())
        .env("GLM_API_KEY", SIM_KEY)
        .env("GLM_CONCURRENT_REQUESTS", llm_limit.to_string())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(command)
}

/// Stops a worker process with SIGTERM and waits (at most 30 s) for it to exit.
pub(crate) async fn stop_worker(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

/// Fails with a usage error unless the queue is idle: a benchmark's numbers mean nothing on
/// a database other work is using.
///
/// # Errors
/// The usage error; database errors.
pub(crate) async fn ensure_idle(queue: &Queue) -> anyhow::Result<()> {
    if !queue.backlog().await?.is_empty() {
        return Err(UsageError(
            "the queue has unfinished jobs; run the benchmark against an idle database (set DATABASE_URL to a scratch one)".into(),
        )
        .into());
    }
    Ok(())
}

/// A runtime (and thread) of their own for the simulated servers, as real GitLab and GLM
/// servers would have: the measured worker does not share its thread with them.
///
/// # Errors
/// The runtime could not be built.
pub(crate) fn simulator_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

mod e2e {
    //! `bench e2e`: one merge request of N chunks reviewed end to end.

    use std::time::{Duration, Instant};

    use anyhow::Context;
    use sqlx::PgPool;
    use tokio_util::sync::CancellationToken;

    use super::{E2eBenchArgs, E2eReport, SIM_KEY as KEY, SIM_TOKEN as TOKEN};
    use crate::{
        config::DbArgs,
        jobs::LLM_RESOURCE,
        jobs::{
            Dispatcher,
            review::{ReviewArgs, ReviewOptions},
        },
        queue::{Limiter, Queue, Worker, WorkerConfig},
        review::{ChunkBudget, ReviewType, chunk::MIN_PROMPT_TOKENS},
        sim::{FakeGitLab, FakeGlm, GlmBehaviour, fixtures::sized_merge_request, glm::GlmCall},
    };

    const PROJECT: &str = "bench/e2e";
    /// Lines per file: one file (about 3,500 estimated tokens) fills one chunk of the
    /// smallest budget (two do not fit), so the MR has exactly as many chunks as files.
    const LINES_PER_FILE: u32 = 150;

    pub async fn run(db: &DbArgs, pool: &PgPool, args: &E2eBenchArgs) -> anyhow::Result<E2eReport> {
        let queue = Queue::new(pool.clone());
        super::ensure_idle(&queue).await?;
        let sim_runtime = super::simulator_runtime()?;
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

        let stop = CancellationToken::new();
        let mut children = Vec::new();
        let mut in_process = None;
        if args.workers == 1 {
            let deps = super::sim_deps(
                &gitlab,
                &glm,
                ChunkBudget::new(MIN_PROMPT_TOKENS)?,
                args.chunks as usize,
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
                    super::worker_process(
                        &url,
                        &gitlab,
                        &glm,
                        args.concurrency,
                        args.concurrent_requests,
                    )?
                    .env("REVIEWQ_CHUNK_TOKENS", MIN_PROMPT_TOKENS.to_string())
                    .env("REVIEWQ_MAX_CHUNKS", args.chunks.to_string())
                    .spawn()
                    .context("could not start a worker process")?,
                );
            }
        }
        // Let the workers connect and reach their idle wait.
        tokio::time::sleep(Duration::from_millis(800)).await;

        let options = ReviewOptions {
            review_type: ReviewType::General,
            dry_run: false,
            force: true,
            full: false,
        };
        let mr = format!("{PROJECT}:{iid}")
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let started = Instant::now();
        let id = Queue::enqueue(pool, &ReviewArgs::new(mr, &options).job(0))
            .await?
            .id();
        let deadline = started + Duration::from_secs(600);
        while gitlab.posted_notes() == 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the review did not finish within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wall = started.elapsed().as_secs_f64();

        stop.cancel();
        if let Some(handle) = in_process {
            handle.await.context("bench worker panicked")??;
        }
        for child in children {
            super::stop_worker(child).await;
        }
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
            posting_s: wall
                - timeline.first_request.as_secs_f64()
                - timeline.llm_phase.as_secs_f64(),
            idle_per_handover_ms: timeline.idle_per_handover.as_secs_f64() * 1000.0,
            peak_in_flight: glm.peak_in_flight(),
            llm_requests: glm.request_count(),
            comments_posted: gitlab.posted_discussions() + gitlab.posted_notes(),
        };
        drop((gitlab, glm));
        sim_runtime.shutdown_background();
        Ok(report)
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
}

fn print_report(out: &mut impl Write, r: &QueueBenchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "reviewq bench queue: {} jobs, concurrency {}",
        r.jobs, r.concurrency
    )?;
    if let (Some(ins), Some(drain), Some(secs)) =
        (r.insert_jobs_per_s, r.drain_jobs_per_s, r.drain_s)
    {
        writeln!(out, "  W1 insert: {ins:>10.0} jobs/s")?;
        writeln!(out, "  W1 drain:  {drain:>10.0} jobs/s ({secs:.2} s)")?;
    }
    if let Some(l) = &r.latency_ms {
        writeln!(
            out,
            "  W2 enqueue-to-start: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50, l.p95, l.p99, l.max
        )?;
    }
    if let Some(idle) = r.rss_idle_mib {
        writeln!(out, "  RSS idle: {idle:.1} MiB")?;
    }
    if let Some(peak) = r.rss_peak_mib {
        writeln!(out, "  RSS peak: {peak:.1} MiB")?;
    }
    Ok(())
}

async fn queue_bench(pool: &PgPool, args: &QueueBenchArgs) -> anyhow::Result<QueueBenchReport> {
    let queue = Queue::new(pool.clone());
    ensure_idle(&queue).await?;
    let mut report = QueueBenchReport {
        jobs: args.jobs,
        concurrency: args.concurrency,
        ..QueueBenchReport::default()
    };
    if args.workload != Some(Workload::Latency) {
        drain(&queue, args, &mut report).await?;
    }
    if args.workload != Some(Workload::Drain) {
        latency(&queue, args, &mut report).await?;
    }
    report.rss_peak_mib = memory_mib("VmHWM:");
    Ok(report)
}

fn config(concurrency: u32) -> WorkerConfig {
    WorkerConfig {
        concurrency: concurrency as usize,
        ..WorkerConfig::default()
    }
}

async fn drain(
    queue: &Queue,
    args: &QueueBenchArgs,
    report: &mut QueueBenchReport,
) -> anyhow::Result<()> {
    let job = NoopArgs::default().job();
    let started = Instant::now();
    let mut first = None;
    let mut last = None;
    let mut left = args.jobs as usize;
    while left > 0 {
        let n = left.min(INSERT_BATCH);
        let ids = Queue::enqueue_many(queue.pool(), &vec![job.clone(); n]).await?;
        first = first.or(ids.first().copied());
        last = ids.last().copied().or(last);
        left -= n;
    }
    let insert_secs = started.elapsed().as_secs_f64();
    report.insert_jobs_per_s = Some(f64::from(args.jobs) / insert_secs);
    // After a bulk load, as Postgres advises: fresh statistics for the claim's plan
    // (otherwise they arrive with autovacuum, up to a minute later).
    sqlx::query!("analyze jobs").execute(queue.pool()).await?;

    let worker = Worker::new(queue.clone(), Dispatcher::new(), config(args.concurrency));
    let processed = worker.processed_counter();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(worker.run(stop.clone()));
    while processed.load(Ordering::Relaxed) < u64::from(args.jobs) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    run.await.context("bench worker panicked")??;
    let secs = started.elapsed().as_secs_f64();
    report.drain_s = Some(secs);
    report.drain_jobs_per_s = Some(f64::from(args.jobs) / secs);

    let (first, last) = (
        first.context("no jobs inserted")?,
        last.context("no jobs inserted")?,
    );
    let done = sqlx::query_scalar!(
        r#"select count(*) as "n!" from jobs where id between $1 and $2 and state = 'succeeded'"#,
        first.get(),
        last.get()
    )
    .fetch_one(queue.pool())
    .await?;
    anyhow::ensure!(
        done == i64::from(args.jobs),
        "only {done} of {} bench jobs succeeded",
        args.jobs
    );
    cleanup(queue.pool(), first.get(), last.get()).await
}

async fn latency(
    queue: &Queue,
    args: &QueueBenchArgs,
    report: &mut QueueBenchReport,
) -> anyhow::Result<()> {
    let worker = Worker::new(queue.clone(), Dispatcher::new(), config(args.concurrency));
    let processed = worker.processed_counter();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    // Let the worker reach its idle wait (listener connected) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.rss_idle_mib = memory_mib("VmRSS:");

    let job = NoopArgs::default().job();
    let mut ids = Vec::with_capacity(args.latency_jobs as usize);
    let mut tick = tokio::time::interval(LATENCY_INTERVAL);
    for _ in 0..args.latency_jobs {
        tick.tick().await;
        ids.push(Queue::enqueue(queue.pool(), &job).await?.id());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed.load(Ordering::Relaxed) < u64::from(args.latency_jobs) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "latency jobs did not all run within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    run.await.context("bench worker panicked")??;

    let (first, last) = (ids[0].get(), ids[ids.len() - 1].get());
    let p = sqlx::query!(
        r#"
        select
            percentile_cont(0.50) within group (order by ms) as "p50!",
            percentile_cont(0.95) within group (order by ms) as "p95!",
            percentile_cont(0.99) within group (order by ms) as "p99!",
            max(ms) as "max!"
        from (
            select extract(epoch from (started_at - created_at))::float8 * 1000 as ms
            from jobs where id between $1 and $2
        ) t
        "#,
        first,
        last
    )
    .fetch_one(queue.pool())
    .await?;
    report.latency_ms = Some(Percentiles {
        p50: p.p50,
        p95: p.p95,
        p99: p.p99,
        max: p.max,
    });
    cleanup(queue.pool(), first, last).await
}

/// Deletes the bench's jobs so repeated runs do not grow the table.
async fn cleanup(pool: &PgPool, first: i64, last: i64) -> anyhow::Result<()> {
    sqlx::query!(
        "delete from jobs where id between $1 and $2 and kind = 'noop'",
        first,
        last
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A field of /proc/self/status in MiB (Linux only).
fn memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
