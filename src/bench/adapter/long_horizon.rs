//! `bench adapter long-horizon`: the adapter process of the independent long-horizon harness
//! (hardbyte/postgresql-job-queue-benchmarking). Its environment in; on stdout one
//! descriptor, then every `SAMPLE_EVERY_S`, on the wall-clock boundary, one line per metric.
//!
//! The harness restarts Postgres, kills backends and holds snapshots open while this runs,
//! so nothing here gives up on a database error: the producer keeps what it could not
//! enqueue and tries again, the worker is the real one (it retries and reconnects), and
//! the depth gauge keeps its last value. The process leaves only on SIGTERM or Ctrl-C,
//! after flushing a last sample, within 5 s.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BenchHandler, Latencies, TickHistograms, bench_job, wall_ms,
    window::{Quantiles, Rolling},
};
use crate::{
    config::DbArgs,
    queue::{NewJob, Queue, Worker, WorkerConfig},
};

/// The adapter's settings, named as the harness sets them.
#[derive(Debug, Clone, Args)]
pub struct LongHorizonArgs {
    /// The harness scenario; only `long_horizon` exists.
    #[arg(long, env = "SCENARIO", value_enum, default_value_t = Scenario::LongHorizon)]
    pub scenario: Scenario,
    /// `fixed` offers PRODUCER_RATE; `depth-target` keeps TARGET_DEPTH jobs available.
    #[arg(long, env = "PRODUCER_MODE", value_enum, default_value_t = ProducerMode::Fixed)]
    pub producer_mode: ProducerMode,
    /// Jobs per second offered in fixed mode.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 800.0)]
    pub producer_rate: f64,
    /// Available jobs kept in depth-target mode.
    #[arg(long, env = "TARGET_DEPTH", default_value_t = 1000)]
    pub target_depth: i64,
    /// Who paces a fixed producer: the harness (`ENQUEUE n` lines on stdin) or this process.
    #[arg(long, env = "PRODUCER_PACING", value_enum, default_value_t = Pacing::Adapter)]
    pub producer_pacing: Pacing,
    /// A file whose number, when present, replaces PRODUCER_RATE (the high-load phase).
    #[arg(long, env = "PRODUCER_RATE_CONTROL_FILE")]
    pub producer_rate_control_file: Option<PathBuf>,
    /// Most jobs per insert statement.
    #[arg(long, env = "PRODUCER_BATCH_MAX", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub producer_batch_max: u32,
    /// The producer's tick, in milliseconds.
    #[arg(long, env = "PRODUCER_BATCH_MS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub producer_batch_ms: u64,
    /// Worker concurrency.
    #[arg(long, env = "WORKER_COUNT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub worker_count: u32,
    /// Payload size of each job.
    #[arg(long, env = "JOB_PAYLOAD_BYTES", default_value_t = 256)]
    pub job_payload_bytes: usize,
    /// Synthetic work per job, in milliseconds.
    #[arg(long, env = "JOB_WORK_MS", default_value_t = 1)]
    pub job_work_ms: u64,
    /// Seconds between samples.
    #[arg(long, env = "SAMPLE_EVERY_S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sample_every_s: u64,
    /// The rolling window of the latency percentiles, in milliseconds.
    #[arg(long, env = "LATENCY_WINDOW_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub latency_window_ms: u64,
    /// This replica's number; replica 0 alone reports the queue depth.
    #[arg(long, env = "BENCH_INSTANCE_ID", default_value_t = 0)]
    pub bench_instance_id: u32,
}

/// Harness scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Scenario {
    /// Steady production and consumption while the harness injects faults.
    LongHorizon,
}

/// How the producer decides how much to enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProducerMode {
    /// A fixed offered rate.
    Fixed,
    /// Enough to keep a target number of jobs available.
    DepthTarget,
}

/// Who paces a fixed-rate producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pacing {
    /// The harness writes `ENQUEUE n` lines on stdin.
    Harness,
    /// This process credits the rate on real elapsed time.
    Adapter,
}

/// The tables whose bloat the harness watches (also in `bench/adapter.json`).
const EVENT_TABLES: [&str; 2] = ["public.jobs", "public.job_attempts"];
const EVENT_INDEXES: [&str; 3] = [
    "public.jobs_queued",
    "public.jobs_leased",
    "public.jobs_finished_at",
];

/// How often the depth gauge is read.
const DEPTH_EVERY: Duration = Duration::from_millis(200);
/// Wait before retrying an insert that failed (Postgres restarting, backend killed).
const INSERT_RETRY: Duration = Duration::from_millis(100);
/// Longest the worker may take to hand its jobs back at SIGTERM; the harness allows 5 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Counters shared by the producer, the depth gauge and the sampler.
#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    /// Available jobs at the last reading; -1 before the first.
    depth: AtomicI64,
    /// The producer's current offered rate, for the samples.
    target_rate_milli: AtomicU64,
}

/// Runs the adapter until SIGTERM.
///
/// # Errors
/// Database errors before the descriptor is written; the process keeps going after that.
pub async fn run(db: &DbArgs, args: LongHorizonArgs) -> anyhow::Result<ExitCode> {
    let Scenario::LongHorizon = args.scenario;
    let stop = CancellationToken::new();
    crate::shutdown::on_signal(stop.clone());
    let pool = db.pool(args.worker_count / 2 + 12).await?;
    crate::migrate(&pool).await?;
    let queue = Queue::new(pool);
    print_json(&descriptor(&queue, &args).await?);

    let every = Duration::from_secs(args.sample_every_s);
    let handler = BenchHandler::new(
        Duration::from_millis(args.job_work_ms),
        Latencies::Histograms(Mutex::new(TickHistograms::new())),
    );
    let counters = Arc::new(Counters {
        depth: AtomicI64::new(-1),
        ..Counters::default()
    });
    let worker = tokio::spawn(run_worker(
        queue.clone(),
        handler.clone(),
        args.worker_count,
        stop.clone(),
    ));
    let producer = tokio::spawn(produce(
        queue.clone(),
        args.clone(),
        counters.clone(),
        stop.clone(),
    ));
    let gauge = tokio::spawn(read_depth(queue.clone(), counters.clone(), stop.clone()));
    let sampler = Sampler {
        every,
        window: Duration::from_millis(args.latency_window_ms),
        instance: args.bench_instance_id,
        handler,
        counters,
    };
    let sampling = tokio::spawn(sampler.run(stop.clone()));

    stop.cancelled().await;
    // Whatever is still running after the grace is abandoned: the process exits, and the
    // queue's rescuer hands those leases to the next worker.
    let _ = tokio::time::timeout(Duration::from_secs(4), async {
        let _ = sampling.await;
        let _ = producer.await;
        let _ = gauge.await;
        let _ = worker.await;
    })
    .await;
    Ok(ExitCode::SUCCESS)
}

/// The descriptor line: what ran, against which schema and database.
async fn descriptor(queue: &Queue, args: &LongHorizonArgs) -> anyhow::Result<serde_json::Value> {
    let db_name = sqlx::query_scalar!(r#"select current_database() as "name!""#)
        .fetch_one(queue.pool())
        .await?;
    Ok(serde_json::json!({
        "kind": "descriptor",
        "system": "reviewq",
        "instance_id": args.bench_instance_id,
        "event_tables": EVENT_TABLES,
        "event_indexes": EVENT_INDEXES,
        "extensions": [],
        "version": env!("CARGO_PKG_VERSION"),
        "schema_version": crate::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0).to_string(),
        "db_name": db_name,
        "started_at": iso_now(),
    }))
}

fn print_json(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the harness is gone; there is no one left to tell.
    let _ = serde_json::to_writer(&mut out, value);
    let _ = writeln!(out);
    let _ = out.flush();
}

fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Runs the real worker; if it cannot start (Postgres down), tries again each second.
async fn run_worker(
    queue: Queue,
    handler: BenchHandler,
    concurrency: u32,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let config = WorkerConfig {
            concurrency: concurrency as usize,
            shutdown_grace: SHUTDOWN_GRACE,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), handler.clone(), config);
        match worker.run(stop.clone()).await {
            Ok(_) => return,
            Err(err) => {
                tracing::warn!(error = %err, "bench worker could not start; retrying in 1 s");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

impl LongHorizonArgs {
    /// The offered rate now: the control file's number when it holds one.
    fn current_rate(&self) -> f64 {
        self.producer_rate_control_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|r| r.is_finite() && *r >= 0.0)
            .unwrap_or(self.producer_rate)
    }
}

/// `ENQUEUE n` lines from the harness, read on a thread of their own (stdin blocks; a
/// plain thread, unlike a blocking task, never holds up the runtime's shutdown).
fn harness_tokens() -> mpsc::UnboundedReceiver<u64> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line
                .strip_prefix("ENQUEUE ")
                .and_then(|n| n.trim().parse().ok())
                && tx.send(n).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Offers jobs as planned. Credit that could not be enqueued (the database was away) is
/// kept and enqueued when it is back: offered load is not silently dropped.
async fn produce(
    queue: Queue,
    plan: LongHorizonArgs,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut tokens = (plan.producer_mode == ProducerMode::Fixed
        && plan.producer_pacing == Pacing::Harness)
        .then(harness_tokens);
    let mut pending: u64 = 0;
    let mut credit = 0.0_f64;
    let mut last = Instant::now();
    let mut next = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        if let Some(rx) = tokens.as_mut() {
            tokio::select! {
                () = stop.cancelled() => return,
                n = rx.recv() => match n {
                    Some(n) => pending += n,
                    // The harness stopped pacing: pace here from now on.
                    None => tokens = None,
                },
            }
            counters
                .target_rate_milli
                .store(milli(plan.producer_rate), Ordering::Relaxed);
        } else {
            next = (next + Duration::from_millis(plan.producer_batch_ms))
                .max(tokio::time::Instant::now());
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            match plan.producer_mode {
                ProducerMode::Fixed => {
                    let rate = plan.current_rate();
                    counters
                        .target_rate_milli
                        .store(milli(rate), Ordering::Relaxed);
                    credit += rate * dt;
                    let whole = credit.floor();
                    credit -= whole;
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    {
                        pending += whole as u64;
                    }
                }
                ProducerMode::DepthTarget => {
                    // Read here, not from the 200 ms gauge: a stale depth would top up
                    // again on every tick. A failed reading tops up nothing.
                    let depth = queue.available().await.unwrap_or(plan.target_depth);
                    pending = u64::try_from(plan.target_depth - depth).unwrap_or(0);
                }
            }
        }
        while pending > 0 && !stop.is_cancelled() {
            let n = pending.min(u64::from(plan.producer_batch_max));
            let at = wall_ms();
            let jobs: Vec<NewJob> = (0..n)
                .map(|_| bench_job(Some(at), plan.job_payload_bytes))
                .collect();
            match Queue::enqueue_many(queue.pool(), &jobs).await {
                Ok(_) => {
                    pending -= n;
                    counters.enqueued.fetch_add(n, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(error = %err, pending, "enqueue failed; keeping the jobs and retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(INSERT_RETRY) => {}
                    }
                    break;
                }
            }
        }
    }
}

fn milli(rate: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = (rate.max(0.0) * 1000.0) as u64;
    m
}

/// Keeps the available-jobs gauge fresh; on an error it keeps the last reading.
async fn read_depth(queue: Queue, counters: Arc<Counters>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DEPTH_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.available().await {
            Ok(n) => counters.depth.store(n, Ordering::Relaxed),
            Err(err) => tracing::debug!(error = %err, "depth gauge unavailable"),
        }
    }
}

/// One metric record of the harness's sample stream.
#[derive(Debug, Serialize)]
struct Record<'a> {
    t: &'a str,
    system: &'static str,
    kind: &'static str,
    subject_kind: &'static str,
    subject: &'static str,
    metric: &'a str,
    value: f64,
    window_s: f64,
    instance_id: u32,
}

struct Sampler {
    every: Duration,
    window: Duration,
    instance: u32,
    handler: BenchHandler,
    counters: Arc<Counters>,
}

impl Sampler {
    /// Samples on every wall-clock multiple of the period; at `stop`, one last sample.
    async fn run(self, stop: CancellationToken) {
        let mut claim = Rolling::new(self.window, self.every);
        let mut end_to_end = Rolling::new(self.window, self.every);
        let mut last = Instant::now();
        let (mut enqueued, mut completed) = (0, 0);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(until_boundary(self.every)) => false,
            };
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64().max(1e-3);
            last = now;
            let tick = self.handler.take_tick().unwrap_or_else(TickHistograms::new);
            let e = self.counters.enqueued.load(Ordering::Relaxed);
            let c = self.handler.handled();
            #[allow(clippy::cast_precision_loss)]
            let rates = [
                ("enqueue_rate", (e - enqueued) as f64 / dt),
                ("completion_rate", (c - completed) as f64 / dt),
            ];
            (enqueued, completed) = (e, c);
            self.emit(
                rates,
                claim.push(tick.claim),
                end_to_end.push(tick.end_to_end),
                dt,
            );
            if stopping {
                return;
            }
        }
    }

    fn emit(
        &self,
        rates: [(&str, f64); 2],
        claim: Option<Quantiles>,
        end_to_end: Option<Quantiles>,
        dt: f64,
    ) {
        let t = iso_now();
        let window_s = self.window.as_secs_f64();
        let mut out = std::io::stdout().lock();
        let mut line = |metric: &str, value: f64, window_s: f64| {
            let r = Record {
                t: &t,
                system: "reviewq",
                kind: "adapter",
                subject_kind: "adapter",
                subject: "",
                metric,
                value,
                window_s,
                instance_id: self.instance,
            };
            let _ = serde_json::to_writer(&mut out, &r);
            let _ = writeln!(out);
        };
        // `subscriber_*` is the same pickup latency under the name the harness's report
        // tabulates; `end_to_end_*` adds the synthetic work.
        for (prefix, q) in [
            ("claim", claim),
            ("subscriber", claim),
            ("end_to_end", end_to_end),
        ] {
            if let Some(q) = q {
                line(&format!("{prefix}_p50_ms"), q.p50, window_s);
                line(&format!("{prefix}_p95_ms"), q.p95, window_s);
                line(&format!("{prefix}_p99_ms"), q.p99, window_s);
            }
        }
        // Rates cover the real time since the last sample, which the harness multiplies
        // back into job counts.
        for (metric, value) in rates {
            line(metric, value, dt);
        }
        if self.instance == 0 {
            let depth = self.counters.depth.load(Ordering::Relaxed);
            if depth >= 0 {
                #[allow(clippy::cast_precision_loss)]
                line("queue_depth", depth as f64, 0.0);
            }
            #[allow(clippy::cast_precision_loss)]
            let target = self.counters.target_rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            line("producer_target_rate", target, 0.0);
        }
        let _ = out.flush();
    }
}

/// Time until the next multiple of `every` on the wall clock.
fn until_boundary(every: Duration) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let every_ms = every.as_millis().max(1);
    let into = now.as_millis() % every_ms;
    #[allow(clippy::cast_possible_truncation)]
    Duration::from_millis((every_ms - into) as u64)
}
