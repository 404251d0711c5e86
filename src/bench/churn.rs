//! `bench churn`: steady enqueue-and-drain for a long time, with pruning on, to show what
//! accumulates. An enqueuer inserts no-op jobs at `--rate` per second; one worker drains
//! them and prunes finished jobs older than `--retention-secs`. Every `--sample-secs` the
//! bench reads the `jobs` table's size (heap, indexes, total), its live and dead tuples
//! and the period's throughput; at the end it compares every sample after the warm-up with
//! the first one after it.

use std::{
    io::Write,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::harness::{ensure_idle, memory_mib};
use crate::{
    config::DbArgs,
    jobs::{Dispatcher, noop::NoopArgs},
    queue::{Queue, Worker, WorkerConfig},
};

/// Arguments of `bench churn`.
#[derive(Debug, Args)]
pub struct ChurnBenchArgs {
    /// Jobs enqueued per second.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub rate: u32,
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub minutes: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub sample_secs: u32,
    /// Minutes of warm-up: sizes are compared with the first sample after it.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1440))]
    pub warmup_minutes: u32,
    /// Finished jobs older than this many seconds are pruned.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub retention_secs: u32,
    /// Worker concurrency.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One reading of the table and the period before it.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnSample {
    pub at_s: f64,
    pub total_mib: f64,
    pub heap_mib: f64,
    pub indexes_mib: f64,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    /// Jobs due but not yet claimed at the sample.
    pub backlog: i64,
    pub enqueued_per_s: f64,
    pub completed_per_s: f64,
    pub autovacuums: i64,
    pub rss_mib: Option<f64>,
}

/// Results of `bench churn`.
#[derive(Debug, Serialize)]
pub struct ChurnBenchReport {
    pub rate: u32,
    pub minutes: u32,
    pub retention_secs: u32,
    pub samples: Vec<ChurnSample>,
    /// Largest total size after the warm-up over the first total size after it.
    pub total_growth: f64,
    /// The same for the indexes alone.
    pub indexes_growth: f64,
    pub completed_per_s_min: f64,
    pub completed_per_s_max: f64,
    pub rss_peak_mib: Option<f64>,
}

/// Runs `bench churn` and prints its report.
///
/// # Errors
/// Usage errors for a busy queue; database and worker errors.
pub async fn run(db: &DbArgs, args: ChurnBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(args.concurrency / 2 + 8).await?;
    crate::migrate(&pool).await?;
    let queue = Queue::new(pool.clone());
    ensure_idle(&queue).await?;
    let report = churn(&queue, &args).await?;
    crate::bench::harness::write_report(&report, args.json, print_report)?;
    Ok(ExitCode::SUCCESS)
}

async fn churn(queue: &Queue, args: &ChurnBenchArgs) -> anyhow::Result<ChurnBenchReport> {
    let worker = Worker::new(
        queue.clone(),
        Dispatcher::new(),
        WorkerConfig {
            concurrency: args.concurrency as usize,
            retention: Duration::from_secs(u64::from(args.retention_secs)),
            ..WorkerConfig::default()
        },
    );
    let processed = worker.processed_counter();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run(stop.clone()));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        queue.clone(),
        args.rate,
        enqueued.clone(),
        stop.clone(),
    ));

    let started = Instant::now();
    let end = started + Duration::from_secs(u64::from(args.minutes) * 60);
    let every = Duration::from_secs(u64::from(args.sample_secs));
    let mut samples = Vec::new();
    let (mut last_enq, mut last_done, mut last_at) = (0, 0, started);
    while Instant::now() < end {
        tokio::time::sleep(every.min(end - Instant::now())).await;
        let now = Instant::now();
        let secs = (now - last_at).as_secs_f64();
        let (enq, done) = (
            enqueued.load(Ordering::Relaxed),
            processed.load(Ordering::Relaxed),
        );
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let sample = read_sample(
            queue,
            (now - started).as_secs_f64(),
            (enq - last_enq) as f64 / secs,
            (done - last_done) as f64 / secs,
        )
        .await?;
        if !args.json {
            print_sample(&mut std::io::stderr().lock(), &sample)?;
        }
        samples.push(sample);
        (last_enq, last_done, last_at) = (enq, done, now);
    }
    stop.cancel();
    producer.await.context("bench producer panicked")??;
    run.await.context("bench worker panicked")??;
    // Leave the database as it was found: the run's jobs are all finished by now, or
    // handed back (queued) if the worker stopped mid-job.
    sqlx::query!("delete from jobs where kind = 'noop'")
        .execute(queue.pool())
        .await?;
    Ok(summarise(args, samples))
}

/// Enqueues `rate` jobs per second in batches every 50 ms until `stop`.
async fn produce(
    queue: Queue,
    rate: u32,
    enqueued: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    const TICK: Duration = Duration::from_millis(50);
    let job = NoopArgs::default().job();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // Paced by the clock, not by ticks, so a slow insert is caught up on.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let n = usize::try_from(due - sent)?;
        if n > 0 {
            Queue::enqueue_many(queue.pool(), &vec![job.clone(); n]).await?;
            sent = due;
            enqueued.store(sent, Ordering::Relaxed);
        }
    }
}

async fn read_sample(
    queue: &Queue,
    at_s: f64,
    enqueued_per_s: f64,
    completed_per_s: f64,
) -> anyhow::Result<ChurnSample> {
    let r = sqlx::query!(
        r#"
        select pg_total_relation_size('jobs')::float8 / 1048576 as "total!",
               pg_relation_size('jobs')::float8 / 1048576 as "heap!",
               pg_indexes_size('jobs')::float8 / 1048576 as "indexes!",
               s.n_live_tup as "live!", s.n_dead_tup as "dead!",
               s.autovacuum_count as "autovacuums!"
        from pg_stat_user_tables s where s.relid = 'jobs'::regclass
        "#
    )
    .fetch_one(queue.pool())
    .await?;
    Ok(ChurnSample {
        at_s,
        total_mib: r.total,
        heap_mib: r.heap,
        indexes_mib: r.indexes,
        live_tuples: r.live,
        dead_tuples: r.dead,
        backlog: queue.available().await?,
        enqueued_per_s,
        completed_per_s,
        autovacuums: r.autovacuums,
        rss_mib: memory_mib("VmRSS:"),
    })
}

fn summarise(args: &ChurnBenchArgs, samples: Vec<ChurnSample>) -> ChurnBenchReport {
    let warm = f64::from(args.warmup_minutes) * 60.0;
    let after: Vec<&ChurnSample> = samples.iter().filter(|s| s.at_s >= warm).collect();
    let growth = |f: fn(&ChurnSample) -> f64| match after.first() {
        Some(first) if f(first) > 0.0 => after.iter().map(|s| f(s)).fold(0.0, f64::max) / f(first),
        _ => 0.0,
    };
    let rates = after.iter().map(|s| s.completed_per_s);
    ChurnBenchReport {
        rate: args.rate,
        minutes: args.minutes,
        retention_secs: args.retention_secs,
        total_growth: growth(|s| s.total_mib),
        indexes_growth: growth(|s| s.indexes_mib),
        completed_per_s_min: rates.clone().fold(f64::INFINITY, f64::min),
        completed_per_s_max: rates.fold(0.0, f64::max),
        rss_peak_mib: memory_mib("VmHWM:"),
        samples,
    }
}

fn print_sample(out: &mut impl Write, s: &ChurnSample) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6.0} s  total {:>7.2} MiB (heap {:>6.2}, indexes {:>6.2})  live {:>7} dead {:>7}  \
         backlog {:>5}  in {:>6.0}/s out {:>6.0}/s  autovacuums {:>4}  RSS {:.1} MiB",
        s.at_s,
        s.total_mib,
        s.heap_mib,
        s.indexes_mib,
        s.live_tuples,
        s.dead_tuples,
        s.backlog,
        s.enqueued_per_s,
        s.completed_per_s,
        s.autovacuums,
        s.rss_mib.unwrap_or(0.0)
    )
}

fn print_report(out: &mut impl Write, r: &ChurnBenchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "reviewq bench churn: {} jobs/s for {} min, retention {} s",
        r.rate, r.minutes, r.retention_secs
    )?;
    writeln!(
        out,
        "  after the warm-up: total size up to {:.2}x its first sample, indexes {:.2}x",
        r.total_growth, r.indexes_growth
    )?;
    writeln!(
        out,
        "  completed per sample: {:.0}-{:.0} jobs/s",
        r.completed_per_s_min, r.completed_per_s_max
    )?;
    if let Some(peak) = r.rss_peak_mib {
        writeln!(out, "  RSS peak: {peak:.1} MiB")?;
    }
    Ok(())
}
