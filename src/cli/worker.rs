//! `reviewq worker`: claim and run jobs until a signal.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConversationArgs, DbArgs, GitLabArgs, LlmArgs},
    jobs::{Dispatcher, LLM_RESOURCE},
    queue::{Queue, RetryPolicy, Worker, WorkerConfig},
    shutdown,
};

use super::args::{review_deps, set_gitlab_budget};

/// Arguments of `worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs run at once by this process.
    #[arg(long, env = "REVIEWQ_CONCURRENCY", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,

    /// Exit once no job is queued, running or waiting for a retry.
    #[arg(long, env = "REVIEWQ_EXIT_WHEN_IDLE")]
    pub exit_when_idle: bool,

    /// Seconds a claim stays valid without a heartbeat; a killed worker's jobs run again
    /// after about this long.
    #[arg(long, env = "REVIEWQ_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,

    /// Milliseconds between polls when no notification arrives.
    #[arg(long, env = "REVIEWQ_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub poll_ms: u64,

    /// Seconds in-flight jobs may take to finish after SIGINT/SIGTERM before they are
    /// handed back to the queue.
    #[arg(long, env = "REVIEWQ_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// Days finished jobs are kept before they are deleted (the LLM ledger is kept).
    #[arg(long, env = "REVIEWQ_RETENTION_DAYS", default_value_t = 14, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub retention_days: u64,

    /// Seconds a job keeps retrying failures that are not throttling (5xx that outlast the
    /// in-place retries, timeouts, killed workers), counted from its first failure: it
    /// ends `failed` only after this long *and* its attempts are spent. Rate limits never
    /// count.
    #[arg(long, env = "REVIEWQ_FAILURE_BUDGET_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=7 * 24 * 3600))]
    pub failure_budget_secs: u64,

    #[command(flatten)]
    pub gitlab: GitLabArgs,

    #[command(flatten)]
    pub llm: LlmArgs,

    #[command(flatten)]
    pub conversation: ConversationArgs,
}

pub(super) async fn worker(db: &DbArgs, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let deps = review_deps(&args.gitlab, &args.llm, &args.conversation)?;
    let pool = db.pool(args.concurrency / 2 + 5).await?;
    let lease = Duration::from_secs(args.lease_secs);
    let config = WorkerConfig {
        concurrency: args.concurrency as usize,
        lease,
        poll_interval: Duration::from_millis(args.poll_ms),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        rescue_interval: (lease / 6).max(Duration::from_millis(500)),
        retention: Duration::from_secs(args.retention_days * 24 * 3600),
        retry: RetryPolicy {
            budget: Duration::from_secs(args.failure_budget_secs),
            ..RetryPolicy::default()
        },
        exit_when_idle: args.exit_when_idle,
        limits: [(LLM_RESOURCE.to_owned(), args.llm.glm_concurrent_requests)]
            .into_iter()
            .chain(args.gitlab.limits())
            .collect(),
    };
    set_gitlab_budget(&pool, &args.gitlab).await?;
    let worker = Worker::new(Queue::new(pool), Dispatcher::with_review(deps), config);
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    let summary = worker.run(token).await?;
    if let Some(waiting) = summary.blocked {
        eprintln!(
            "reviewq: stopped with work left: every remaining job is waiting: {}",
            waiting.reason
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
