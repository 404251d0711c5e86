//! The `reviewq` binary: parse, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use reviewq::{
    cli::{self, Cli},
    config::UsageError,
};

/// Async threads when `TOKIO_WORKER_THREADS` is unset. reviewq waits on Postgres, GitLab
/// and the LLM; one thread keeps a worker's claim loop and its jobs on one core (no
/// cross-thread wake-ups) and leaves the other cores to Postgres. CPU-heavy diff work runs
/// on the blocking pool, which this does not limit.
const DEFAULT_ASYNC_THREADS: usize = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    reviewq::telemetry::init(cli.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(DEFAULT_ASYNC_THREADS);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) if err.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
