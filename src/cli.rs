//! The command line: one clap-derived struct, and one library call per command.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    bench,
    config::{DbArgs, GitLabArgs, LlmArgs, UsageError},
    jobs::{Dispatcher, LLM_RESOURCE, gitlab_budget::GITLAB_RESOURCE, review},
    mr_ref::parse_refs,
    queue::{
        AttemptRow, ChildCounts, JobId, JobRow, Queue, RateGate, RetryPolicy, Worker, WorkerConfig,
    },
    shutdown, telemetry,
};

/// reviewq: GitLab merge-request reviews with GLM, on a durable Postgres job queue.
#[derive(Debug, Parser)]
#[command(name = "reviewq", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    /// Log format on stderr.
    #[arg(long, env = "REVIEWQ_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text, global = true)]
    pub log_format: telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (idempotent).
    Migrate,
    /// Insert review jobs; prints one job id per line.
    Enqueue(EnqueueArgs),
    /// Claim and run jobs until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// One-shot (CI): enqueue reviews, then work them in this process until they end;
    /// exit 0 only if all succeeded.
    Review(ReviewCommandArgs),
    /// Insert description jobs (type, summary and walkthrough written into each merge
    /// request's description, between reviewq's markers); prints one job id per line.
    Describe(DescribeCommandArgs),
    /// Print the GitLab Code Quality report (JSON) of a reviewed head, from the database.
    Codequality(crate::codequality_report::CodeQualityArgs),
    /// Job states, attempts, errors and per-chunk progress.
    Status(StatusArgs),
    /// Token spend and cost from the LLM ledger, by day, project, merge request or model.
    Usage(crate::spend::report::UsageArgs),
    /// Daily token budgets: list them with today's use, or set or clear a project's.
    Budget(BudgetArgs),
    /// Run a failed or cancelled job again (or a waiting one now).
    Retry {
        /// The job's id.
        id: JobId,
    },
    /// Cancel a queued or running job and its subtasks.
    Cancel {
        /// The job's id.
        id: JobId,
    },
    /// GitLab webhook receiver (merge request events to review jobs), /healthz, /metrics.
    Serve(crate::server::ServeArgs),
    /// Built-in benchmarks.
    Bench(bench::BenchArgs),
    /// The whole pipeline on this machine, against simulated GitLab and GLM servers.
    Demo,
    /// Manage local mode's private PostgreSQL cluster (used when DATABASE_URL is unset).
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
}

/// `reviewq db` actions.
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Where the local cluster is and whether it runs.
    Status,
    /// Start it (it also starts on first use).
    Start,
    /// Stop it.
    Stop,
}

/// The reviews a producer asks for: shared by `enqueue` and `review`.
#[derive(Debug, Args)]
pub struct ReviewRequest {
    /// Merge requests: PROJECT:IID, PROJECT!IID or a merge request URL; comma-separated
    /// lists are accepted too.
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,

    #[command(flatten)]
    pub review: review::ReviewOptions,

    /// Priority: higher runs first.
    #[arg(
        long,
        env = "REVIEWQ_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i16,
}

/// Arguments of `enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub request: ReviewRequest,

    /// Show progress until the jobs end (exit 0 only if all succeeded).
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub gitlab: GitLabArgs,
}

/// Arguments of `describe`.
#[derive(Debug, Args)]
pub struct DescribeCommandArgs {
    /// Merge requests: PROJECT:IID, PROJECT!IID or a merge request URL; comma-separated
    /// lists are accepted too.
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,

    /// Priority: higher runs first.
    #[arg(
        long,
        env = "REVIEWQ_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i16,

    /// Show progress until the jobs end (exit 0 only if all succeeded).
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub gitlab: GitLabArgs,
}

/// Arguments of `review`.
#[derive(Debug, Args)]
pub struct ReviewCommandArgs {
    #[command(flatten)]
    pub request: ReviewRequest,

    /// Also write GitLab's Code Quality report of the reviewed heads to FILE (for
    /// `artifacts: reports: codequality:`). Reviews the whole MR, as --full does: the
    /// report lists every finding of the head.
    #[arg(long, value_name = "FILE")]
    pub codequality: Option<std::path::PathBuf>,

    /// Jobs run at once by this process (chunks of the reviews).
    #[arg(long, env = "REVIEWQ_CONCURRENCY", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,

    #[command(flatten)]
    pub gitlab: GitLabArgs,

    #[command(flatten)]
    pub llm: LlmArgs,
}

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
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One job in detail; without it, the most recent jobs.
    pub id: Option<JobId>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

/// Arguments of `budget`.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub action: Option<BudgetAction>,

    /// The fleet-wide budget workers use (shown in the list; set it on the workers).
    #[arg(long, env = "REVIEWQ_DAILY_TOKEN_BUDGET", value_parser = clap::value_parser!(u64).range(1..))]
    pub daily_token_budget: Option<u64>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `reviewq budget` actions.
#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// Set a project's daily token budget (reviews waiting for a budget look again at once).
    Set {
        /// The project as reviews name it: `group/project` or its numeric id.
        project: String,
        /// Tokens per UTC day (0 stops its reviews from calling the LLM).
        tokens: u64,
    },
    /// Remove a project's budget.
    Clear {
        /// The project.
        project: String,
    },
}

/// Runs a parsed command line.
///
/// # Errors
/// [`UsageError`] for bad input (exit 2), anything else for runtime failures (exit 1).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate => {
            let pool = cli.db.pool(2).await?;
            crate::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue(args) => enqueue(&cli.db, args).await,
        Command::Worker(args) => worker(&cli.db, args).await,
        Command::Review(args) => crate::oneshot::run(&cli.db, args).await,
        Command::Describe(args) => enqueue_descriptions(&cli.db, args).await,
        Command::Codequality(args) => crate::codequality_report::run(&cli.db, args).await,
        Command::Status(args) => status(&cli.db, args).await,
        Command::Usage(args) => crate::spend::report::run(&cli.db, args).await,
        Command::Budget(args) => budget(&cli.db, args).await,
        Command::Retry { id } => {
            let queue = Queue::new(cli.db.pool(2).await?);
            queue.retry(id).await.map_err(state_error)?;
            println!("job {id} queued to run again");
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => {
            let queue = Queue::new(cli.db.pool(2).await?);
            queue.cancel(id).await.map_err(state_error)?;
            println!("job {id} cancelled");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => crate::server::run(&cli.db, args).await,
        Command::Bench(args) => bench::run(&cli.db, args).await,
        Command::Demo => crate::demo::run(&cli.db).await,
        Command::Db { action } => local_db(action),
    }
}

fn local_db(action: DbAction) -> anyhow::Result<ExitCode> {
    let cluster = crate::config::local_cluster_config()?;
    match action {
        DbAction::Status => {
            let running = cluster.is_running();
            println!(
                "local cluster: {} ({})
URL: {}",
                crate::config::describe_local_cluster(&cluster),
                if running { "running" } else { "stopped" },
                cluster.url()
            );
        }
        DbAction::Start => {
            cluster.start()?;
            println!("local cluster running at {}", cluster.url());
        }
        DbAction::Stop => {
            cluster.stop()?;
            println!("local cluster stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A job that does not exist or is in the wrong state is the user's input problem.
fn state_error(err: crate::queue::Error) -> anyhow::Error {
    match err {
        crate::queue::Error::NotFound(_) | crate::queue::Error::InvalidState { .. } => {
            UsageError(err.to_string()).into()
        }
        other => anyhow::Error::new(other),
    }
}

async fn enqueue(db: &DbArgs, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    // Validate everything before touching the database.
    let refs = parse_checked_refs(&args.request.refs, &args.gitlab)?;
    let pool = db.pool(2).await?;
    let ids = enqueue_reviews(&pool, refs, &args.request).await?;
    print_and_watch(pool, &ids, args.wait).await
}

/// Prints the new jobs' ids, one per line, and with `wait` shows their progress until they
/// end (exit 0 only if all succeeded).
async fn print_and_watch(
    pool: sqlx::PgPool,
    ids: &[JobId],
    wait: bool,
) -> anyhow::Result<ExitCode> {
    {
        let mut out = std::io::stdout().lock();
        for id in ids {
            writeln!(out, "{id}")?;
        }
    }
    if wait {
        let watched =
            crate::oneshot::wait_for(&Queue::new(pool), ids, crate::oneshot::OnWaiting::Watch)
                .await?;
        return Ok(if watched == crate::oneshot::Watched::Ended(true) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    Ok(ExitCode::SUCCESS)
}

async fn enqueue_descriptions(db: &DbArgs, args: DescribeCommandArgs) -> anyhow::Result<ExitCode> {
    let refs = parse_checked_refs(&args.refs, &args.gitlab)?;
    let pool = db.pool(2).await?;
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        let job = crate::jobs::describe::DescribeArgs::new(r).job(args.priority);
        ids.push(Queue::enqueue(&mut *tx, &job).await?.id());
    }
    tx.commit().await.context("could not commit the new jobs")?;
    print_and_watch(pool, &ids, args.wait).await
}

/// Parses REF arguments and checks that URL refs point at the configured GitLab.
///
/// # Errors
/// A usage error naming the bad reference.
pub fn parse_checked_refs(
    refs: &[String],
    gitlab: &GitLabArgs,
) -> Result<Vec<crate::mr_ref::MrRef>, UsageError> {
    let refs = parse_refs(refs).map_err(|e| UsageError(e.to_string()))?;
    let gitlab_host = gitlab.host();
    for r in &refs {
        if let Some(host) = r.host.as_deref().filter(|h| *h != gitlab_host) {
            return Err(UsageError(format!(
                "merge request {r} is on {host}, but GITLAB_URL is {}: set GITLAB_URL to that instance",
                gitlab.gitlab_url
            )));
        }
    }
    Ok(refs)
}

/// Inserts one review job per MR in one transaction; returns their ids (an unfinished
/// identical review is reused).
///
/// # Errors
/// Database errors.
pub async fn enqueue_reviews(
    pool: &sqlx::PgPool,
    refs: Vec<crate::mr_ref::MrRef>,
    request: &ReviewRequest,
) -> anyhow::Result<Vec<JobId>> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        let job = review::ReviewArgs::new(r, &request.review).job(request.priority);
        ids.push(Queue::enqueue(&mut *tx, &job).await?.id());
    }
    tx.commit().await.context("could not commit the new jobs")?;
    Ok(ids)
}

/// Builds the review dependencies from the settings.
///
/// # Errors
/// A usage error naming a missing or invalid setting.
pub fn review_deps(gitlab: &GitLabArgs, llm: &LlmArgs) -> Result<review::ReviewDeps, UsageError> {
    Ok(review::ReviewDeps {
        gitlab: gitlab.client()?,
        llm: llm.client()?,
        budget: llm.budget()?,
        chunk_timeout: Duration::from_secs(llm.chunk_timeout),
        max_chunks: llm.max_chunks.max(1),
        spend: llm.spend(),
        gitlab_budget: gitlab.budget(),
    })
}

/// Writes the fleet's `GITLAB_REQUESTS_PER_MINUTE` (every worker does at start; the last
/// to start wins, as for the limits).
///
/// # Errors
/// Database errors.
pub async fn set_gitlab_budget(pool: &sqlx::PgPool, gitlab: &GitLabArgs) -> anyhow::Result<()> {
    RateGate::configure(pool, GITLAB_RESOURCE, gitlab.gitlab_requests_per_minute)
        .await
        .context("could not set the GitLab request budget")
}

async fn worker(db: &DbArgs, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let deps = review_deps(&args.gitlab, &args.llm)?;
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

async fn budget(db: &DbArgs, args: BudgetArgs) -> anyhow::Result<ExitCode> {
    let project = |raw: &str| {
        crate::mr_ref::Project::parse(raw)
            .map(|p| p.to_string())
            .map_err(|e| UsageError(format!("invalid project {raw:?}: {e}")))
    };
    let action = match &args.action {
        Some(BudgetAction::Set { project: p, tokens }) => Some((project(p)?, Some(*tokens))),
        Some(BudgetAction::Clear { project: p }) => Some((project(p)?, None)),
        None => None,
    };
    let pool = db.pool(2).await?;
    if let Some((project, tokens)) = action {
        let woken = crate::spend::set_project_budget(&pool, &project, tokens).await?;
        match tokens {
            Some(t) => println!("project {project}: daily budget {t} tokens"),
            None => println!("project {project}: no budget"),
        }
        if woken > 0 {
            println!("{woken} waiting jobs look at their budget again now");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let policy = crate::spend::SpendPolicy {
        daily_tokens: args.daily_token_budget,
        ..crate::spend::SpendPolicy::default()
    };
    let rows = crate::spend::budgets(&pool, &policy).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<40}  {:>14}  {:>14}",
            "PROJECT", "DAILY BUDGET", "USED TODAY"
        )?;
        for r in rows {
            writeln!(
                out,
                "{:<40}  {:>14}  {:>14}",
                if r.project == "*" {
                    "* (fleet, REVIEWQ_DAILY_TOKEN_BUDGET)".to_owned()
                } else {
                    r.project
                },
                r.daily_tokens
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "none".into()),
                r.used_today
            )?;
        }
        writeln!(out, "(a day is a UTC calendar day)")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `status ID --json`: the job, its attempts and its children.
#[derive(Debug, Serialize)]
struct JobDetail {
    #[serde(flatten)]
    job: JobRow,
    attempts: Vec<AttemptRow>,
    children: ChildCounts,
}

async fn status(db: &DbArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::new(db.pool(2).await?);
    let mut out = std::io::stdout().lock();
    if !args.json
        && let Some(pause) = crate::spend::current_pause(queue.pool()).await?
    {
        writeln!(
            out,
            "LLM WORK PAUSED since {}: {}\n  next probe call at {} ({} probes so far); work resumes by itself when one succeeds\n",
            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.reason,
            pause.probe_at.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.probes
        )?;
    }
    if !args.json {
        for pause in RateGate::pauses(queue.pool()).await? {
            writeln!(
                out,
                "{} BACKING OFF since {}: {}\n  no request before {}, then one probe at a time; work resumes by itself\n",
                pause.resource.to_uppercase(),
                pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
                pause.reason,
                pause.until.format("%Y-%m-%d %H:%M:%S UTC"),
            )?;
        }
    }
    match args.id {
        Some(id) => {
            let job = queue.get(id).await.map_err(state_error)?;
            let detail = JobDetail {
                attempts: queue.attempts(id).await?,
                children: queue.child_counts(id).await?,
                job,
            };
            if args.json {
                serde_json::to_writer_pretty(&mut out, &detail)?;
                writeln!(out)?;
            } else {
                print_detail(&mut out, &detail)?;
            }
        }
        None => {
            let jobs = queue.recent(args.limit).await?;
            let mut rows = Vec::with_capacity(jobs.len());
            for job in jobs {
                let children = queue.child_counts(job.id).await?;
                rows.push(JobDetail {
                    job,
                    attempts: Vec::new(),
                    children,
                });
            }
            if args.json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                print_table(&mut out, &rows)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(job: &JobRow) -> String {
    match job.payload.get("mr").and_then(|v| v.as_str()) {
        Some(mr) => mr.to_owned(),
        None => job.kind.clone(),
    }
}

fn progress(children: &ChildCounts) -> String {
    if children.total() == 0 {
        "-".into()
    } else {
        let ended = children.succeeded + children.failed + children.cancelled;
        format!("{ended}/{}", children.total())
    }
}

fn print_table(out: &mut impl Write, rows: &[JobDetail]) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(
            out,
            "no jobs yet: `reviewq enqueue group/project:42` adds one"
        );
    }
    writeln!(
        out,
        "{:>6}  {:<10}  {:<28}  {:>7}  {:>6}  {:<20}  ERROR",
        "ID", "STATE", "WHAT", "ATTEMPT", "CHUNKS", "UPDATED"
    )?;
    for r in rows {
        let j = &r.job;
        let when = j.finished_at.or(j.started_at).unwrap_or(j.created_at);
        let mut state = j.state.to_string();
        if j.state == crate::queue::JobState::Queued && j.run_at > chrono::Utc::now() {
            state.push('*');
        }
        writeln!(
            out,
            "{:>6}  {:<10}  {:<28}  {:>7}  {:>6}  {:<20}  {}",
            j.id,
            state,
            truncate(&describe(j), 28),
            format!("{}/{}", j.attempt, j.max_attempts),
            progress(&r.children),
            when.format("%Y-%m-%d %H:%M:%S"),
            match (&j.waiting, &j.last_error) {
                // Only a queued job has `waiting` (see `Queue::get`).
                (Some(w), _) => truncate(&format!("waiting: {}", w.reason), 60),
                (_, Some(e)) => truncate(e, 60),
                _ => String::new(),
            },
        )?;
    }
    writeln!(
        out,
        "(* waiting for a retry or a condition; `reviewq status ID` shows why)"
    )
}

fn print_detail(out: &mut impl Write, d: &JobDetail) -> std::io::Result<()> {
    let j = &d.job;
    writeln!(out, "job {} ({})", j.id, describe(j))?;
    writeln!(out, "  kind:      {}", j.kind)?;
    writeln!(out, "  state:     {}", j.state)?;
    writeln!(
        out,
        "  attempts:  {} run, {} failed of {} allowed",
        j.attempt, j.failed_attempts, j.max_attempts
    )?;
    writeln!(out, "  run at:    {}", j.run_at)?;
    if let Some(lease) = j.lease_expires_at {
        writeln!(
            out,
            "  lease:     until {lease} (worker {})",
            j.worker_id.map(|w| w.to_string()).unwrap_or_default()
        )?;
    }
    if d.children.total() > 0 {
        let c = &d.children;
        writeln!(
            out,
            "  chunks:    {} total: {} succeeded, {} failed, {} cancelled, {} running, {} queued",
            c.total(),
            c.succeeded,
            c.failed,
            c.cancelled,
            c.running,
            c.queued
        )?;
    }
    if let Some(w) = &j.waiting {
        writeln!(
            out,
            "  waiting:   {} (since {})",
            w.reason,
            w.since.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    if let Some(err) = &j.last_error {
        writeln!(out, "  error:     {err}")?;
    }
    for a in &d.attempts {
        let secs = (a.finished_at - a.started_at).num_milliseconds() as f64 / 1000.0;
        writeln!(
            out,
            "  attempt {}: {} after {:.1}s on worker {}{}",
            a.attempt,
            a.outcome,
            secs,
            a.worker_id,
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
