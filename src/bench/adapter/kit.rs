//! The side-by-side kit's four modes, as its contract has them: one JSON line on stdout
//! each (logs go to stderr), `DATABASE_URL` from the environment, every clock started and
//! read here in the client, and "nothing left" confirmed by a connection of its own.

use std::{
    io::Write,
    process::ExitCode,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{BenchHandler, Latencies, bench_job, wall_ms};
use crate::{
    bench::harness::Percentiles,
    config::DbArgs,
    queue::{Queue, Worker, WorkerConfig},
};

/// The kit's batch size for `insert`.
const INSERT_BATCH: usize = 1_000;

/// How often `work` asks its second connection whether anything is left.
const EMPTY_POLL: Duration = Duration::from_millis(5);

/// `bench adapter insert N`.
#[derive(Debug, Args)]
pub struct InsertArgs {
    /// Jobs to insert (0 only creates the schema).
    #[arg(value_parser = clap::value_parser!(u32).range(0..=100_000_000))]
    pub n: u32,
}

/// `bench adapter work N C` and `bench adapter latworker N C`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs to wait for (`work`) or to time (`latworker`).
    #[arg(value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub n: u32,
    /// Worker concurrency.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub c: u32,
    /// Give up (and print `"ok": false`) after this many seconds.
    #[arg(long, env = "REVIEWQ_ADAPTER_TIMEOUT_S", default_value_t = 600)]
    pub timeout_s: u64,
}

/// `bench adapter produce N RATE`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Jobs to enqueue.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub n: u32,
    /// Jobs per second, on a fixed schedule.
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
}

fn print_line(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn worker_config(concurrency: u32) -> WorkerConfig {
    WorkerConfig {
        concurrency: concurrency as usize,
        ..WorkerConfig::default()
    }
}

/// Creates the schema (reviewq's migrations), then bulk-inserts with `Queue::enqueue_many`.
///
/// # Errors
/// Database errors.
pub async fn insert(db: &DbArgs, args: InsertArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(2).await?;
    crate::migrate(&pool).await?;
    let batch = vec![bench_job(None, 0); INSERT_BATCH];
    let started = Instant::now();
    let mut left = args.n as usize;
    while left > 0 {
        let n = left.min(INSERT_BATCH);
        Queue::enqueue_many(&pool, &batch[..n]).await?;
        left -= n;
    }
    let secs = started.elapsed().as_secs_f64();
    print_line(&json!({
        "insert_s": secs,
        "insert_per_s": if args.n == 0 { 0.0 } else { f64::from(args.n) / secs },
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the clock, opens the worker's pool, runs a worker until the handler ran N times
/// and a separate connection sees nothing queued, running or waiting.
///
/// # Errors
/// Database errors.
pub async fn work(db: &DbArgs, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // The observer's connection is the harness's, not the worker's: opened before the clock.
    let observer = Queue::new(db.pool(1).await?);
    let started = Instant::now();
    let queue = Queue::new(db.pool(args.c / 2 + 8).await?);
    let handler = BenchHandler::new(Duration::ZERO, Latencies::Ignored);
    let worker = Worker::new(queue, handler.clone(), worker_config(args.c));
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    let deadline = started + Duration::from_secs(args.timeout_s);
    let ok = loop {
        if handler.handled() >= u64::from(args.n) && observer.backlog().await?.is_empty() {
            break true;
        }
        if Instant::now() > deadline || run.is_finished() {
            break false;
        }
        tokio::time::sleep(EMPTY_POLL).await;
    };
    let wall = started.elapsed().as_secs_f64();
    stop.cancel();
    run.await.context("the bench worker panicked")??;
    let handled = handler.handled();
    #[allow(clippy::cast_precision_loss)]
    let report = json!({
        "ok": ok,
        "wall_s": wall,
        "jobs_per_s": f64::from(args.n) / wall,
        "first_job_s": handler.first_job().map(|t| t.duration_since(started).as_secs_f64()),
        "handled": handled,
    });
    print_line(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs an idle worker, prints `READY` after a second, then records handler start minus
/// each job's producer timestamp until N jobs ran.
///
/// # Errors
/// Database errors.
pub async fn latworker(db: &DbArgs, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::new(db.pool(args.c / 2 + 8).await?);
    let handler = BenchHandler::new(
        Duration::ZERO,
        Latencies::Every(Mutex::new(Vec::with_capacity(args.n as usize))),
    );
    let worker = Worker::new(queue, handler.clone(), worker_config(args.c));
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY")?;
        out.flush()?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let ok = loop {
        if handler.recorded() >= args.n as usize {
            break true;
        }
        if Instant::now() > deadline || run.is_finished() {
            break false;
        }
        tokio::time::sleep(EMPTY_POLL).await;
    };
    stop.cancel();
    run.await.context("the bench worker panicked")??;
    let mut latencies = handler.every();
    latencies.truncate(args.n as usize);
    let n = latencies.len();
    let p = Percentiles::of(latencies);
    print_line(&json!({
        "ok": ok,
        "n": n,
        "p50_ms": p.p50,
        "p95_ms": p.p95,
        "p99_ms": p.p99,
        "max_ms": p.max,
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// Enqueues N jobs with the single-job API on a fixed schedule, each payload stamped with
/// the wall clock just before its enqueue call.
///
/// # Errors
/// Database errors.
pub async fn produce(db: &DbArgs, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(2).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    // A fixed schedule: a late enqueue is followed by the ones due, not by a shifted plan.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for _ in 0..args.n {
        tick.tick().await;
        Queue::enqueue(&pool, &bench_job(Some(wall_ms()), 0)).await?;
    }
    print_line(&json!({ "produce_s": started.elapsed().as_secs_f64() }))?;
    Ok(ExitCode::SUCCESS)
}
