//! The command line: one clap-derived struct, and one file per command. Commands are the
//! edge: they parse and validate (bad input is a [`UsageError`], exit 2, nothing written),
//! then call the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    bench,
    config::{DbArgs, UsageError},
    queue::{JobId, Queue},
    telemetry,
};

mod args;
mod budget;
mod db;
mod demo;
mod describe;
mod enqueue;
mod review;
mod status;
mod watch;
mod worker;

pub use args::ReviewRequest;
pub use budget::{BudgetAction, BudgetArgs};
pub use db::DbAction;
pub use describe::DescribeCommandArgs;
pub use enqueue::EnqueueArgs;
pub use review::ReviewCommandArgs;
pub use status::StatusArgs;
pub use worker::WorkerArgs;

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
        Command::Enqueue(args) => enqueue::enqueue(&cli.db, args).await,
        Command::Worker(args) => worker::worker(&cli.db, args).await,
        Command::Review(args) => review::run(&cli.db, args).await,
        Command::Describe(args) => describe::enqueue_descriptions(&cli.db, args).await,
        Command::Codequality(args) => crate::codequality_report::run(&cli.db, args).await,
        Command::Status(args) => status::status(&cli.db, args).await,
        Command::Usage(args) => crate::spend::report::run(&cli.db, args).await,
        Command::Budget(args) => budget::budget(&cli.db, args).await,
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
        Command::Demo => demo::run(&cli.db).await,
        Command::Db { action } => db::local_db(action),
    }
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
