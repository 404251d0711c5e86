//! `reviewq bench gigantic`: the memory of a worker process reviewing a hostile, gigantic
//! merge request (thousands of files and one huge generated file sent whole), and proof
//! that no prompt goes over the model's context.
//!
//! The simulated GitLab and GLM run in this process on a runtime of their own; the worker
//! is a separate `reviewq worker` process, so its peak resident memory (`VmHWM` from
//! `/proc`, sampled until the summary is posted) is its own. The simulated model refuses
//! any prompt over `--context-tokens` with GLM's 1261, as a real model would; the report
//! counts such refusals (expected: 0) and the largest prompt it saw.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::bench::harness::{Rereview, review_job};
use crate::{
    bench::harness::{SIM_KEY as KEY, SIM_TOKEN as TOKEN},
    config::DbArgs,
    queue::Queue,
    sim::{FakeGitLab, FakeGlm, GlmBehaviour, fixtures::gigantic_merge_request},
};

const PROJECT: &str = "bench/gigantic";

/// Arguments of `bench gigantic`.
#[derive(Debug, Args)]
pub struct GiganticBenchArgs {
    /// Small changed files in the merge request.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub files: u32,
    /// Size of the one generated file's diff, in MiB.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub big_file_mib: u32,
    /// The simulated model's context: longer prompts are refused with GLM 1261.
    #[arg(long, default_value_t = 32_768)]
    pub context_tokens: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Results of `bench gigantic`.
#[derive(Debug, Serialize)]
pub struct GiganticReport {
    pub files: u32,
    pub big_file_mib: u32,
    /// Enqueue to the summary note being posted.
    pub wall_s: f64,
    /// The worker process's peak resident set (VmHWM), MiB.
    pub worker_peak_rss_mib: f64,
    /// Chunks (prompts) the review was split into.
    pub chunks: i32,
    /// Files listed as skipped in the review (with their reasons).
    pub skipped_files: usize,
    pub llm_requests: u64,
    /// Largest prompt the simulated model billed, tokens.
    pub largest_prompt_tokens: u64,
    pub context_tokens: u64,
    /// Requests refused as longer than the context (1261).
    pub over_context: usize,
    pub comments_posted: u64,
}

/// Runs `bench gigantic`.
///
/// # Errors
/// Database, process and simulator errors; a review that does not finish in 10 minutes.
pub async fn run(db: &DbArgs, args: GiganticBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(4).await?;
    crate::migrate(&pool).await?;
    let queue = Queue::new(pool.clone());
    super::harness::ensure_idle(&queue).await?;
    let sim_runtime = super::harness::simulator_runtime()?;
    let gitlab = sim_runtime.spawn(FakeGitLab::start(TOKEN)).await??;
    let behaviour = GlmBehaviour {
        max_prompt_tokens: Some(args.context_tokens),
        ..GlmBehaviour::default()
    };
    let glm = sim_runtime.spawn(FakeGlm::start(KEY, behaviour)).await??;
    let iid = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1);
    let big_bytes = usize::try_from(args.big_file_mib)? * 1024 * 1024;
    gitlab.add_merge_request(gigantic_merge_request(
        PROJECT,
        4343,
        iid,
        args.files as usize,
        big_bytes,
    ))?;

    let mut worker = super::harness::worker_process(&db.url()?, &gitlab, &glm, 8, 6)?
        .spawn()
        .context("could not start a worker process")?;
    let pid = worker.id().context("the worker exited at once")?;

    let job = review_job(&format!("{PROJECT}:{iid}"), Rereview::Forced)?;
    let started = Instant::now();
    let id = Queue::enqueue(&pool, &job).await?.id();
    let deadline = started + Duration::from_secs(600);
    let mut peak_kib = 0;
    while !queue.get(id).await?.state.is_finished() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the review did not finish within 10 minutes"
        );
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = worker.try_wait()? {
            anyhow::bail!("the worker process exited during the review: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(kib) = peak_rss_kib(pid) {
        peak_kib = peak_kib.max(kib);
    }
    super::harness::stop_worker(worker).await;

    let review = sqlx::query!(
        r#"select chunk_count, jsonb_array_length(skipped) as "skipped!" from reviews where job_id = $1"#,
        id.get()
    )
    .fetch_one(&pool)
    .await?;
    let calls = glm.calls();
    let report = GiganticReport {
        files: args.files,
        big_file_mib: args.big_file_mib,
        wall_s: wall,
        worker_peak_rss_mib: peak_kib as f64 / 1024.0,
        chunks: review.chunk_count,
        skipped_files: usize::try_from(review.skipped).unwrap_or(0),
        llm_requests: glm.request_count(),
        largest_prompt_tokens: calls
            .iter()
            .filter_map(|c| c.prompt_tokens)
            .max()
            .unwrap_or(0),
        context_tokens: args.context_tokens,
        over_context: calls
            .iter()
            .filter(|c| c.error_code.as_deref() == Some("1261"))
            .count(),
        comments_posted: gitlab.posted_discussions() + gitlab.posted_notes(),
    };
    drop((gitlab, glm));
    sim_runtime.shutdown_background();

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "reviewq bench gigantic: {} small files + one {} MiB generated file, model context {} tokens",
            report.files, report.big_file_mib, report.context_tokens
        )?;
        writeln!(
            out,
            "  worker peak RSS {:.1} MiB; wall {:.2} s; {} chunks, {} files skipped; {} LLM requests, largest prompt {} tokens, {} over the context; {} comments",
            report.worker_peak_rss_mib,
            report.wall_s,
            report.chunks,
            report.skipped_files,
            report.llm_requests,
            report.largest_prompt_tokens,
            report.over_context,
            report.comments_posted
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A process's peak resident set size (`VmHWM`), KiB; `None` off Linux or once it exited.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
