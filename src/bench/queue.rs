//! `bench queue`: the queue alone, with no-op jobs in this process.
//!
//! - W1 (drain): bulk-insert N jobs, then drain them with one worker at concurrency C.
//! - W2 (latency): with an idle worker running, enqueue 1,000 jobs one at a time at about
//!   100 per second; enqueue-to-start latency is `started_at - created_at`, both read
//!   from the database clock.
//!
//! `--backlog N` runs both on a table that already holds what production accumulates: N
//! jobs scheduled for the future (a tenth of them at a higher priority than the measured
//! jobs, the case an index ordered by priority first must not scan past), N/10 failed and
//! N/10 succeeded rows. The backlog is deleted afterwards.

use std::{
    io::Write,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::harness::{Percentiles, ensure_idle, memory_mib};
use crate::{
    config::DbArgs,
    jobs::{Dispatcher, noop::NoopArgs},
    queue::{Queue, Worker, WorkerConfig},
};

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
    /// Jobs scheduled for the future (plus a tenth as many failed and as many succeeded
    /// rows) seeded before the workloads run.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub backlog: u32,
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
    pub backlog: u32,
    /// Seconds spent seeding the backlog (and analysing the table after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_seed_s: Option<f64>,
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

/// Inserts go in batches of this size: large enough to amortise round trips, small
/// enough to keep each statement's arrays modest.
const INSERT_BATCH: usize = 5_000;

/// W2's enqueue pace.
const LATENCY_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `bench queue` and prints its report.
///
/// # Errors
/// Database errors.
pub async fn run(db: &DbArgs, args: QueueBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(args.concurrency / 2 + 8).await?;
    crate::migrate(&pool).await?;
    let report = queue_bench(&pool, &args).await?;
    crate::bench::harness::write_report(&report, args.json, print_report)?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(out: &mut impl Write, r: &QueueBenchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "reviewq bench queue: {} jobs, concurrency {}",
        r.jobs, r.concurrency
    )?;
    if let Some(secs) = r.backlog_seed_s {
        writeln!(
            out,
            "  backlog: {} scheduled, {} failed, {} succeeded (seeded in {secs:.1} s)",
            r.backlog,
            r.backlog / 10,
            r.backlog / 10
        )?;
    }
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
        backlog: args.backlog,
        ..QueueBenchReport::default()
    };
    let backlog = if args.backlog > 0 {
        let started = Instant::now();
        let ids = seed_backlog(queue.pool(), args.backlog).await?;
        report.backlog_seed_s = Some(started.elapsed().as_secs_f64());
        Some(ids)
    } else {
        None
    };
    let measured = measure(&queue, args, &mut report).await;
    // The backlog goes whether or not the workloads succeeded: it would make every later
    // run on this database refuse to start.
    if let Some((first, last)) = backlog {
        sqlx::query!(
            "delete from jobs where id between $1 and $2 and kind = 'noop'",
            first,
            last
        )
        .execute(queue.pool())
        .await?;
        // A million deleted rows left to autovacuum leave the claim's index full of dead
        // entries for the next run on this database (one ran at 2,385 jobs/s instead of
        // ~14,000): the bench cleans up after itself.
        sqlx::raw_sql("vacuum analyze jobs")
            .execute(queue.pool())
            .await?;
    }
    measured?;
    report.rss_peak_mib = memory_mib("VmHWM:");
    Ok(report)
}

async fn measure(
    queue: &Queue,
    args: &QueueBenchArgs,
    report: &mut QueueBenchReport,
) -> anyhow::Result<()> {
    if args.workload != Some(Workload::Latency) {
        drain(queue, args, report).await?;
    }
    if args.workload != Some(Workload::Drain) {
        latency(queue, args, report).await?;
    }
    Ok(())
}

/// Seeds `n` no-op jobs scheduled between one hour and about a month ahead, a tenth of them
/// at priority 5 (above the measured jobs' 0), then `n / 10` failed and `n / 10` succeeded
/// rows finished over the last week. Returns the range of ids it wrote.
///
/// Set-based SQL rather than `Queue::enqueue_many`: the backlog's shape (states, finish
/// times) is what matters here, and a million rows load in seconds this way.
async fn seed_backlog(pool: &PgPool, n: u32) -> anyhow::Result<(i64, i64)> {
    let n = i64::from(n);
    let first = sqlx::query_scalar!(
        r#"
        with ins as (
            insert into jobs (kind, payload, priority, run_at)
            select 'noop', '{}', case when g % 10 = 0 then 5 else 0 end,
                   now() + interval '1 hour' + g * interval '2.5 seconds'
            from generate_series(1, $1::int8) g
            returning id
        )
        select min(id) from ins
        "#,
        n
    )
    .fetch_one(pool)
    .await?
    .context("no backlog inserted")?;
    let last = sqlx::query_scalar!(
        r#"
        with ins as (
        insert into jobs (kind, payload, state, attempt, failed_attempts, run_at, started_at,
                          finished_at, last_error, created_at, updated_at)
        select 'noop', '{}', s.state, s.attempt, s.failed, t, t, t + interval '1 second',
               s.error, t, t + interval '1 second'
        from generate_series(1, $1::int8) g
        cross join lateral (select now() - g * interval '1 second' * (604800.0 / $1)) w(t)
        cross join lateral (values
            ('failed'::job_state, 5, 5, 'retryable: the simulated service was down'),
            ('succeeded'::job_state, 1, 0, null)) s(state, attempt, failed, error)
        returning id
        )
        select max(id) from ins
        "#,
        n / 10
    )
    .fetch_one(pool)
    .await?
    .unwrap_or(first);
    // As autovacuum would have by the time such a backlog had built up: the visibility map
    // set and the statistics current.
    sqlx::raw_sql("vacuum analyze jobs").execute(pool).await?;
    Ok((first, last))
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
