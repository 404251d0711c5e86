//! `reviewq bench adapter`: reviewq as the outside harnesses run every queue, timed from
//! outside (`../shared/reference/bench-contracts.md` in the project brief).
//!
//! - `insert`, `work`, `latworker`, `produce`: the side-by-side kit's four modes, one JSON
//!   line each on stdout ([`kit`]).
//! - `long-horizon`: the independent harness's long-running adapter process, configured by
//!   its environment ([`long_horizon`]).
//!
//! Every mode runs reviewq's real queue: `Queue::enqueue_many` and `Queue::enqueue`, and a
//! [`Worker`](crate::queue::Worker) with its claim, lease, heartbeat, batched completion,
//! rescue and pruning. Only the handler is the benchmark's: [`BenchHandler`] runs the
//! `bench` kind, which no other command enqueues and the production dispatcher refuses.

use std::{
    process::ExitCode,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;

use crate::{
    config::DbArgs,
    queue::{JobContext, JobError, JobHandler, JobResult, NewJob, Outcome},
};

pub mod kit;
pub mod long_horizon;
mod window;

/// The benchmark job kind. Only `bench adapter` enqueues it and only its handler runs it.
pub const KIND: &str = crate::jobs::BENCH_KIND;

/// The payload key holding the producer's wall-clock time, in milliseconds since the epoch,
/// taken just before the enqueue call.
const PRODUCED_AT: &str = "produced_at_ms";

/// Arguments of `bench adapter`.
#[derive(Debug, Args)]
pub struct AdapterArgs {
    #[command(subcommand)]
    pub mode: Mode,
}

/// The adapter's modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Create the schema, then bulk-insert N no-op jobs, 1,000 per call.
    Insert(kit::InsertArgs),
    /// Start a worker and run until N jobs ran and another connection sees none left.
    Work(kit::WorkerArgs),
    /// Start a worker, print READY, and time N jobs from their producer's timestamp.
    Latworker(kit::WorkerArgs),
    /// Enqueue N jobs one at a time at a fixed rate, each stamped with the wall clock.
    Produce(kit::ProduceArgs),
    /// The long-horizon harness's adapter process (configured by its environment).
    LongHorizon(long_horizon::LongHorizonArgs),
}

/// Runs `bench adapter`.
///
/// # Errors
/// Database errors; usage errors for bad arguments.
pub async fn run(db: &DbArgs, args: AdapterArgs) -> anyhow::Result<ExitCode> {
    match args.mode {
        Mode::Insert(args) => kit::insert(db, args).await,
        Mode::Work(args) => kit::work(db, args).await,
        Mode::Latworker(args) => kit::latworker(db, args).await,
        Mode::Produce(args) => kit::produce(db, args).await,
        Mode::LongHorizon(args) => long_horizon::run(db, args).await,
    }
}

/// Milliseconds since the Unix epoch on this machine's wall clock: producer and worker may
/// be different processes, so a monotonic clock would not compare.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A `bench` job. `produced_at` stamps it for latency modes; `pad` makes the payload about
/// `bytes` long (the harness's `JOB_PAYLOAD_BYTES`).
fn bench_job(produced_at: Option<f64>, bytes: usize) -> NewJob {
    let mut payload = serde_json::Map::new();
    if let Some(ms) = produced_at {
        payload.insert(PRODUCED_AT.into(), ms.into());
    }
    // What the keys, quotes and the timestamp take already.
    let pad = bytes.saturating_sub(40);
    if pad > 0 {
        payload.insert("pad".into(), "x".repeat(pad).into());
    }
    NewJob::new(KIND, payload.into())
}

/// What the handler keeps of each run's latency.
#[derive(Debug)]
enum Latencies {
    /// Nothing (throughput modes).
    Ignored,
    /// Every claim latency in ms: `latworker` reports exact nearest-rank percentiles of a
    /// bounded N.
    Every(Mutex<Vec<f64>>),
    /// Claim and end-to-end latency in µs for the current sample tick (bounded memory).
    Histograms(Mutex<TickHistograms>),
}

/// One sample tick's histograms, swapped out by the sampler.
#[derive(Debug, Clone)]
pub(crate) struct TickHistograms {
    /// Producer timestamp to handler start.
    pub claim: Histogram<u32>,
    /// Producer timestamp to handler end.
    pub end_to_end: Histogram<u32>,
}

impl TickHistograms {
    fn new() -> Self {
        Self {
            claim: window::histogram(),
            end_to_end: window::histogram(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Jobs whose handler ran to the end.
    handled: AtomicU64,
    /// When the first job started.
    first: OnceLock<Instant>,
    /// Synthetic work per job.
    work: Duration,
    latencies: Latencies,
}

/// The handler of `bench` jobs: counts runs in memory, records latency from the payload's
/// producer timestamp, and sleeps the synthetic work if asked.
#[derive(Debug, Clone)]
pub(crate) struct BenchHandler(Arc<Shared>);

impl BenchHandler {
    fn new(work: Duration, latencies: Latencies) -> Self {
        Self(Arc::new(Shared {
            handled: AtomicU64::new(0),
            first: OnceLock::new(),
            work,
            latencies,
        }))
    }

    fn handled(&self) -> u64 {
        self.0.handled.load(Ordering::Relaxed)
    }

    fn first_job(&self) -> Option<Instant> {
        self.0.first.get().copied()
    }

    /// Claim latencies recorded so far (`Latencies::Every` only).
    fn every(&self) -> Vec<f64> {
        match &self.0.latencies {
            Latencies::Every(v) => v.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            _ => Vec::new(),
        }
    }

    fn recorded(&self) -> usize {
        match &self.0.latencies {
            Latencies::Every(v) => v.lock().unwrap_or_else(|e| e.into_inner()).len(),
            _ => 0,
        }
    }

    /// Takes the current tick's histograms, leaving empty ones (`Latencies::Histograms`).
    fn take_tick(&self) -> Option<TickHistograms> {
        match &self.0.latencies {
            Latencies::Histograms(h) => Some(std::mem::replace(
                &mut *h.lock().unwrap_or_else(|e| e.into_inner()),
                TickHistograms::new(),
            )),
            _ => None,
        }
    }

    fn record(&self, claim_ms: f64, end_ms: Option<f64>) {
        match &self.0.latencies {
            Latencies::Ignored => {}
            Latencies::Every(v) => v.lock().unwrap_or_else(|e| e.into_inner()).push(claim_ms),
            Latencies::Histograms(h) => {
                let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                h.claim.saturating_record(window::micros(claim_ms));
                if let Some(end) = end_ms {
                    h.end_to_end.saturating_record(window::micros(end));
                }
            }
        }
    }
}

impl JobHandler for BenchHandler {
    async fn handle(&self, ctx: JobContext) -> JobResult {
        let started = wall_ms();
        if ctx.job.kind != KIND {
            return Err(JobError::fatal(format!(
                "the benchmark adapter runs only {KIND} jobs, not {:?}",
                ctx.job.kind
            )));
        }
        self.0.first.get_or_init(Instant::now);
        let produced = ctx
            .job
            .payload
            .get(PRODUCED_AT)
            .and_then(serde_json::Value::as_f64);
        let histograms = matches!(self.0.latencies, Latencies::Histograms(_));
        if let Some(at) = produced
            && !histograms
        {
            self.record((started - at).max(0.0), None);
        }
        if !self.0.work.is_zero() {
            tokio::time::sleep(self.0.work).await;
        }
        if let Some(at) = produced
            && histograms
        {
            self.record((started - at).max(0.0), Some((wall_ms() - at).max(0.0)));
        }
        self.0.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::Succeeded)
    }
}
