//! `reviewq bench`: built-in benchmarks, in the spirit of `river bench`. One file per
//! benchmark; `harness` holds what they share.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::DbArgs;

pub mod adapter;
pub mod chat;
pub mod churn;
pub mod e2e;
pub mod gigantic;
pub(crate) mod harness;
pub mod ledger;
pub mod queue;
pub mod rounds;
pub mod serve;
pub mod ui;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Bench,
}

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// reviewq as the outside harnesses run every queue: the side-by-side kit's modes and
    /// the long-horizon adapter process.
    Adapter(adapter::AdapterArgs),
    /// Queue throughput (W1) and enqueue-to-start latency (W2) with no-op jobs.
    Queue(queue::QueueBenchArgs),
    /// Steady enqueue-and-drain with pruning on: the jobs table's size and throughput over
    /// time.
    Churn(churn::ChurnBenchArgs),
    /// One review end to end against simulated GitLab and GLM on loopback.
    E2e(e2e::E2eBenchArgs),
    /// Questions in the bot's threads answered end to end: Note Hook to reply.
    Chat(chat::ChatBenchArgs),
    /// The spend reports and the budget check on a year of ledger (10 million calls).
    Ledger(ledger::LedgerBenchArgs),
    /// Webhook answer latency of `serve` under a steady delivery rate.
    Serve(serve::ServeBenchArgs),
    /// Worker memory and prompt sizes while reviewing a hostile, gigantic merge request.
    Gigantic(gigantic::GiganticBenchArgs),
    /// Tokens per review round: a full review, then incremental reviews of two pushes.
    Rounds(rounds::RoundsBenchArgs),
    /// Console page latency on 100,000 jobs and 1,000,000 ledger rows.
    Ui(ui::UiBenchArgs),
}

/// Runs `bench`.
///
/// # Errors
/// Usage errors for a busy queue; database, simulator and worker errors.
pub async fn run(db: &DbArgs, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Bench::Adapter(args) => adapter::run(db, args).await,
        Bench::Queue(args) => queue::run(db, args).await,
        Bench::Churn(args) => churn::run(db, args).await,
        Bench::E2e(args) => e2e::run(db, args).await,
        Bench::Chat(args) => chat::run(db, args).await,
        Bench::Ledger(args) => ledger::run(db, args).await,
        Bench::Serve(args) => serve::run(db, args).await,
        Bench::Gigantic(args) => gigantic::run(db, args).await,
        Bench::Rounds(args) => rounds::run(db, args).await,
        Bench::Ui(args) => ui::run(db, args).await,
    }
}
