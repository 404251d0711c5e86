//! The worker runtime: claim up to the free slots, run handlers under a lease, complete
//! in batches, heartbeat, rescue, and shut down gracefully.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use sqlx::postgres::PgListener;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Backlog, ClaimedJob, Error, FailureRecorded, JOBS_CHANNEL, JobError, JobId, Lease, Limiter,
    Permit, Queue, Result, RetryPolicy, SLOTS_CHANNEL, SlotWaiters, Waiting, WorkerId, floor,
    heartbeat::{LEASE_MARGIN_DIVISOR, heartbeat, lease_may_lapse},
};

/// Most completions written by one statement. Larger batches stop paying off and hold
/// more row locks at once.
const COMPLETE_BATCH: usize = 512;

/// How often the maintenance loop prunes finished jobs, at most: with a retention shorter
/// than twice this, twice per retention period, so the table holds at most about one and a
/// half retentions of finished jobs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Pause after a failed claim (database down or restarting), doubled up to the cap.
const DB_RETRY_MIN: Duration = Duration::from_millis(100);
const DB_RETRY_MAX: Duration = Duration::from_secs(5);

/// What a handler reports when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the worker marks the job succeeded (batched, fenced by the lease).
    Succeeded,
    /// The handler already wrote the job's next state itself, in a fenced transaction
    /// together with its own data (`Queue::complete`, `Queue::await_children`, ...).
    Settled,
}

/// What a handler returns.
pub type JobResult = std::result::Result<Outcome, JobError>;

/// Runs jobs. The seam between the queue and the application: the application's one
/// implementation dispatches on the job kind; tests plug in their own.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one claimed job. Not called inside any transaction; the lease is extended in
    /// the background for as long as this runs.
    fn handle(&self, ctx: JobContext) -> impl Future<Output = JobResult> + Send;
}

/// Everything a handler gets with its job.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The claimed job.
    pub job: ClaimedJob,
    queue: Queue,
    worker: WorkerId,
    lease_duration: Duration,
    /// This process's jobs waiting for limit slots.
    slots: SlotWaiters,
    /// Fires when this attempt lost its lease (rescued elsewhere or cancelled by an
    /// operator) or the worker is shutting down hard. The worker also drops the
    /// handler's future then, so handlers only need it to stop background work.
    pub cancelled: CancellationToken,
}

impl JobContext {
    /// The fencing token of this attempt.
    pub fn lease(&self) -> Lease {
        self.job.lease
    }

    /// The queue, for fenced writes and enqueueing.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// This worker process's id.
    pub fn worker_id(&self) -> WorkerId {
        self.worker
    }

    /// Takes a slot of the fleet-wide limit on `resource`, waiting if all are held.
    ///
    /// # Errors
    /// [`Error::LeaseLost`]; database errors.
    pub async fn acquire(&self, resource: &str) -> Result<Permit> {
        Limiter::new(
            self.queue.pool().clone(),
            resource,
            self.lease_duration,
            self.slots.clone(),
        )
        .acquire(self.job.lease, self.worker)
        .await
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most jobs run at once by this process.
    pub concurrency: usize,
    /// How long a claim stays valid without a heartbeat. A killed worker's jobs run
    /// again elsewhere after at most about this long.
    pub lease: Duration,
    /// Fallback poll when no notification arrives (LISTEN/NOTIFY does the real work).
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight jobs may take before they are handed back.
    pub shutdown_grace: Duration,
    /// How often this worker tries to become the rescuer and requeue lapsed leases.
    pub rescue_interval: Duration,
    /// Finished jobs older than this are deleted.
    pub retention: Duration,
    /// Backoff for failed attempts.
    pub retry: RetryPolicy,
    /// Stop when nothing is queued, running or waiting anywhere in the fleet.
    pub exit_when_idle: bool,
    /// Fleet-wide limits this worker sets at start: resource name and capacity.
    pub limits: Vec<(String, u32)>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 3,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(25),
            rescue_interval: Duration::from_secs(5),
            retention: Duration::from_secs(14 * 24 * 3600),
            retry: RetryPolicy::default(),
            exit_when_idle: false,
            limits: Vec::new(),
        }
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs whose handler returned, whatever the result.
    pub processed: u64,
    /// Jobs handed back at shutdown.
    pub handed_back: u64,
    /// With `exit_when_idle`: the worker stopped because every job left waits for this
    /// condition, so the work is not done (the caller should say so and exit non-zero).
    pub blocked: Option<Waiting>,
}

/// What [`Worker::process_next`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Nothing was runnable.
    QueueEmpty,
    /// Ran one job.
    Ran {
        /// The job.
        id: JobId,
        /// How it ended.
        result: std::result::Result<Outcome, String>,
    },
}

/// Jobs this process is running, for the heartbeat to cancel lost ones.
pub(super) type InFlight = Arc<Mutex<HashMap<JobId, Running>>>;

/// Attempts this process stopped because their lease might have lapsed, until their failure
/// is recorded: the heartbeat does not extend them, so if the record cannot be written the
/// lease lapses and the rescuer requeues the job.
pub(super) type Abandoned = Arc<Mutex<HashSet<Lease>>>;

#[derive(Debug)]
pub(super) struct Running {
    pub(super) attempt: i32,
    pub(super) claimed: Instant,
    pub(super) cancel: CancellationToken,
    /// The lease's expiry by this process's clock, never later than the database's: set
    /// from the instant before the claim (or the last heartbeat that extended it) was sent.
    pub(super) valid_until: watch::Sender<Instant>,
}

/// A worker process's runtime.
pub struct Worker<H> {
    queue: Queue,
    handler: Arc<H>,
    config: WorkerConfig,
    id: WorkerId,
    slots: SlotWaiters,
    jobs_ready: Arc<Notify>,
    in_flight: InFlight,
    abandoned: Abandoned,
    processed: Arc<AtomicU64>,
}

impl<H: JobHandler> Worker<H> {
    /// A worker with a fresh id.
    pub fn new(queue: Queue, handler: H, config: WorkerConfig) -> Self {
        Self {
            queue,
            handler: Arc::new(handler),
            config,
            id: WorkerId::random(),
            slots: SlotWaiters::default(),
            jobs_ready: Arc::new(Notify::new()),
            in_flight: Arc::default(),
            abandoned: Arc::default(),
            processed: Arc::default(),
        }
    }

    /// This process's worker id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// A live count of jobs whose handler has returned, for progress displays and
    /// benchmarks.
    pub fn processed_counter(&self) -> Arc<AtomicU64> {
        self.processed.clone()
    }

    /// Claims one job and runs it to the end in this task, completing it directly.
    /// Lets tests drive the queue step by step without sleeping.
    ///
    /// # Errors
    /// Database errors from the claim or the final write.
    pub async fn process_next(&self) -> Result<Processed> {
        let asked = Instant::now();
        let Some(job) = self.queue.claim(self.id, 1, self.config.lease).await?.pop() else {
            return Ok(Processed::QueueEmpty);
        };
        let id = job.id();
        let lease = job.lease;
        let result = self.run_one(job, asked).await;
        let result = match result {
            Some(Ok(Outcome::Succeeded)) => {
                Queue::complete_many(self.queue.pool(), &[lease]).await?;
                Ok(Outcome::Succeeded)
            }
            Some(Ok(Outcome::Settled)) => Ok(Outcome::Settled),
            Some(Err(msg)) => Err(msg),
            None => Err("lease lost".to_owned()),
        };
        Ok(Processed::Ran { id, result })
    }

    /// Runs [`Worker::process_next`] until the queue has nothing runnable.
    ///
    /// # Errors
    /// Database errors.
    pub async fn drain(&self) -> Result<Vec<Processed>> {
        let mut ran = Vec::new();
        loop {
            match self.process_next().await? {
                Processed::QueueEmpty => return Ok(ran),
                p => ran.push(p),
            }
        }
    }

    /// Runs one job's handler under cancellation, records failures, and returns the
    /// handler's result (`None` if the attempt was cancelled).
    async fn run_one(
        &self,
        job: ClaimedJob,
        asked: Instant,
    ) -> Option<std::result::Result<Outcome, String>> {
        run_job(job, asked, self.runtime()).await
    }

    /// What every job task of this worker shares.
    fn runtime(&self) -> JobRuntime<H> {
        JobRuntime {
            queue: self.queue.clone(),
            handler: self.handler.clone(),
            worker: self.id,
            lease_duration: self.config.lease,
            retry: self.config.retry,
            slots: self.slots.clone(),
            in_flight: self.in_flight.clone(),
            abandoned: self.abandoned.clone(),
        }
    }

    /// Claims and runs jobs until `shutdown` fires (or, with `exit_when_idle`, until the
    /// fleet has nothing left), then drains within the grace period and hands back the
    /// rest.
    ///
    /// # Errors
    /// Database errors while starting up.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunSummary> {
        for (resource, capacity) in &self.config.limits {
            Limiter::set_capacity(self.queue.pool(), resource, *capacity).await?;
        }
        tracing::info!(worker.id = %self.id, concurrency = self.config.concurrency, "worker started");

        // Background tasks stop when `background` fires, after the jobs have drained.
        let background = CancellationToken::new();
        let listener = tokio::spawn(listen(
            self.queue.pool().clone(),
            self.jobs_ready.clone(),
            self.slots.clone(),
            background.clone(),
        ));
        let heartbeat = tokio::spawn(heartbeat(
            self.queue.clone(),
            self.id,
            self.config.lease,
            self.in_flight.clone(),
            self.abandoned.clone(),
            background.clone(),
        ));
        let maintenance = tokio::spawn(maintain(
            self.queue.clone(),
            self.config.rescue_interval,
            self.config.retention,
            self.config.retry.budget,
            background.clone(),
        ));
        let floors = tokio::spawn(floor::keep_claim_floors(
            self.queue.clone(),
            background.clone(),
        ));
        let mut tasks: JoinSet<Option<Lease>> = JoinSet::new();
        // Successful jobs whose completion is not written yet; written with the next claim.
        let mut succeeded: Vec<Lease> = Vec::new();
        let mut db_retry = DB_RETRY_MIN;
        let mut blocked = None;
        loop {
            // Let jobs that are finishing right now finish, so that one statement completes
            // them all and claims as many: yield, reap, and go on while that reaps more.
            if !tasks.is_empty() {
                tokio::task::yield_now().await;
            }
            loop {
                let before = succeeded.len();
                while let Some(joined) = tasks.try_join_next() {
                    succeeded.extend(joined.ok().flatten());
                }
                if succeeded.len() == before || tasks.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let free = self.config.concurrency.saturating_sub(tasks.len());
            let mut claimed = 0;
            if free > 0 || !succeeded.is_empty() {
                let batch = &succeeded[..succeeded.len().min(COMPLETE_BATCH)];
                // The claimed leases run from the database's clock during the statement,
                // so never before this instant.
                let asked = Instant::now();
                match self
                    .queue
                    .complete_and_claim(batch, self.id, free, self.config.lease)
                    .await
                {
                    Ok(jobs) => {
                        db_retry = DB_RETRY_MIN;
                        let written = batch.len();
                        succeeded.drain(..written);
                        claimed = jobs.len();
                        for job in jobs {
                            tasks.spawn(self.spawnable(job, asked));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?db_retry, "claim failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(db_retry) => {}
                        }
                        db_retry = (db_retry * 2).min(DB_RETRY_MAX);
                        continue;
                    }
                }
            }
            if !succeeded.is_empty() || (free > 0 && claimed == free) {
                // More completions to write, or the queue may hold more work.
                if tasks.len() < self.config.concurrency || !succeeded.is_empty() {
                    continue;
                }
            } else if self.config.exit_when_idle && tasks.is_empty() && claimed == 0 {
                match self.queue.backlog().await {
                    Ok(backlog) if backlog.is_empty() => {
                        tracing::info!("nothing queued, running or waiting: exiting");
                        break;
                    }
                    Ok(Backlog {
                        blocked: Some(waiting),
                        ..
                    }) => {
                        tracing::warn!(reason = %waiting.reason, "every job left is waiting for a condition: exiting");
                        blocked = Some(waiting);
                        break;
                    }
                    _ => {}
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    succeeded.extend(joined.ok().flatten());
                }
                () = self.jobs_ready.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }

        self.drain_in_flight(&mut tasks, &mut succeeded).await;
        self.flush_completions(&succeeded).await;
        let handed_back = match self.queue.hand_back(self.id).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %err, "could not hand back leases; they lapse and are rescued instead");
                0
            }
        };
        if handed_back > 0 {
            tracing::info!(handed_back, "handed unfinished jobs back to the queue");
        }
        background.cancel();
        let _ = tokio::join!(listener, heartbeat, maintenance, floors);
        let summary = RunSummary {
            processed: self.processed.load(Ordering::Relaxed),
            handed_back,
            blocked,
        };
        tracing::info!(processed = summary.processed, "worker stopped");
        Ok(summary)
    }

    /// At shutdown: lets in-flight jobs finish within the grace period, then cancels them,
    /// collecting the leases of those that succeeded.
    async fn drain_in_flight(
        &self,
        tasks: &mut JoinSet<Option<Lease>>,
        succeeded: &mut Vec<Lease>,
    ) {
        if tasks.is_empty() {
            return;
        }
        tracing::info!(in_flight = tasks.len(), grace = ?self.config.shutdown_grace, "stopping: waiting for in-flight jobs");
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while let Some(joined) = tasks.join_next().await {
                succeeded.extend(joined.ok().flatten());
            }
        })
        .await;
        if drained.is_err() {
            for running in self.in_flight.lock().expect("in-flight map").values() {
                running.cancel.cancel();
            }
            while let Some(joined) = tasks.join_next().await {
                succeeded.extend(joined.ok().flatten());
            }
        }
    }

    /// Writes the last completions at shutdown, retrying through a short outage; what
    /// cannot be written is rescued after the lease lapses (and runs again).
    async fn flush_completions(&self, succeeded: &[Lease]) {
        let mut pause = DB_RETRY_MIN;
        for chunk in succeeded.chunks(COMPLETE_BATCH) {
            for _ in 0..8 {
                match Queue::complete_many(self.queue.pool(), chunk).await {
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, jobs = chunk.len(), "could not record completions; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(DB_RETRY_MAX);
                    }
                }
            }
        }
    }

    /// The task that runs one claimed job; yields the lease to complete if it succeeded.
    fn spawnable(
        &self,
        job: ClaimedJob,
        asked: Instant,
    ) -> impl Future<Output = Option<Lease>> + Send + 'static {
        let (runtime, processed) = (self.runtime(), self.processed.clone());
        async move {
            let job_lease = job.lease;
            let result = run_job(job, asked, runtime).await;
            if result.is_some() {
                processed.fetch_add(1, Ordering::Relaxed);
            }
            matches!(result, Some(Ok(Outcome::Succeeded))).then_some(job_lease)
        }
    }
}

/// What a job task needs of its worker.
struct JobRuntime<H> {
    queue: Queue,
    handler: Arc<H>,
    worker: WorkerId,
    lease_duration: Duration,
    retry: RetryPolicy,
    slots: SlotWaiters,
    in_flight: InFlight,
    abandoned: Abandoned,
}

/// Runs a handler in its own task (so a panic is caught and recorded), stops it if the
/// attempt is cancelled or its lease may have lapsed, and records failures with the retry
/// policy. `asked` is the instant before the claim was sent: the lease runs from no
/// earlier than that.
async fn run_job<H: JobHandler>(
    job: ClaimedJob,
    asked: Instant,
    rt: JobRuntime<H>,
) -> Option<std::result::Result<Outcome, String>> {
    let JobRuntime {
        queue,
        handler,
        worker,
        lease_duration,
        retry,
        slots,
        in_flight,
        abandoned,
    } = rt;
    let cancel = CancellationToken::new();
    let id = job.id();
    let (valid_until, expiry) = watch::channel(asked + lease_duration);
    in_flight.lock().expect("in-flight map").insert(
        id,
        Running {
            attempt: job.lease.attempt,
            claimed: Instant::now(),
            cancel: cancel.clone(),
            valid_until,
        },
    );
    let span = tracing::info_span!("job", job.id = %id, job.kind = %job.kind, job.attempt = job.lease.attempt);
    let ctx = JobContext {
        job: job.clone(),
        queue: queue.clone(),
        worker,
        lease_duration,
        slots,
        cancelled: cancel.clone(),
    };
    // Caught here rather than by spawning the handler as its own task: one task per job
    // is measurably cheaper on the claim-run-complete hot path.
    let handled = AssertUnwindSafe(tracing::Instrument::instrument(
        handler.handle(ctx),
        span.clone(),
    ))
    .catch_unwind();
    let mut lapsed = false;
    let result = tokio::select! {
        handled = handled => Some(handled.unwrap_or_else(|_| {
            Err(JobError::retryable("the job handler panicked; see the worker's log"))
        })),
        () = cancel.cancelled() => None,
        () = lease_may_lapse(expiry, lease_duration / LEASE_MARGIN_DIVISOR) => {
            // No heartbeat got through in time (the database is unreachable or too slow):
            // past this point another worker may take the job and its limit slots, so the
            // attempt stops by itself rather than waiting to be told.
            tracing::warn!(job.id = %id, "lease could not be extended in time: stopping the attempt");
            abandoned.lock().expect("abandoned map").insert(job.lease);
            lapsed = true;
            Some(Err(JobError::retryable(
                "the worker could not extend the lease in time (database unreachable or too slow): the attempt stopped itself",
            )))
        }
    };
    in_flight.lock().expect("in-flight map").remove(&id);
    // Instrumented, not entered: a guard held across the await would put every other
    // task polled on this thread meanwhile inside this job's span.
    async move {
        match result {
            None => {
                tracing::info!("attempt cancelled: lease lost, job cancelled or hard shutdown");
                None
            }
            Some(Ok(outcome)) => Some(Ok(outcome)),
            Some(Err(err)) => {
                let message = err.message.clone();
                let settled = record_failure(&queue, &job, &err, &retry).await;
                if lapsed && settled {
                    abandoned.lock().expect("abandoned map").remove(&job.lease);
                }
                Some(Err(message))
            }
        }
    }
    .instrument(span)
    .await
}

/// Records a failed attempt, retrying database errors for about one lease. Returns whether
/// the attempt is settled (recorded, or found to belong to another attempt already).
async fn record_failure(
    queue: &Queue,
    job: &ClaimedJob,
    err: &JobError,
    retry: &RetryPolicy,
) -> bool {
    let mut pause = DB_RETRY_MIN;
    // Keep trying for about one lease; after that the rescuer owns the job anyway.
    for _ in 0..8 {
        match queue.fail(job, err, retry).await {
            Ok(FailureRecorded::WillRetry { run_at }) => {
                tracing::warn!(error = %err, %run_at, "job failed; will retry");
                return true;
            }
            Ok(FailureRecorded::Failed) => {
                tracing::error!(error = %err, "job failed for good");
                return true;
            }
            Err(Error::LeaseLost(_)) => {
                tracing::warn!(error = %err, "job failed after its lease was lost; nothing recorded");
                return true;
            }
            Err(db) => {
                tracing::warn!(error = %db, "could not record a job failure; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(DB_RETRY_MAX);
            }
        }
    }
    false
}

/// Rescues lapsed leases (when elected) and prunes old jobs.
async fn maintain(
    queue: Queue,
    every: Duration,
    retention: Duration,
    failure_budget: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<Instant> = None;
    let prune_every = PRUNE_EVERY.min(retention / 2).max(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.rescue_expired(failure_budget).await {
            Ok(Some(n)) => {
                if n > 0 {
                    tracing::warn!(rescued = n, "requeued jobs whose lease lapsed");
                }
                // Only the elected rescuer keeps the statistics fresh.
                if let Err(err) = queue.refresh_stats_if_stale().await {
                    tracing::warn!(error = %err, "could not refresh the jobs table's statistics");
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "rescue pass failed"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
            last_prune = Some(Instant::now());
            match queue.prune(retention).await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "deleted old finished jobs"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "prune pass failed"),
            }
        }
    }
}

/// Listens for "jobs ready" and "slot released" notifications, reconnecting after a
/// dropped connection. After any gap it wakes everyone, since notifications sent
/// meanwhile are lost.
async fn listen(
    pool: sqlx::PgPool,
    jobs_ready: Arc<Notify>,
    slots: SlotWaiters,
    stop: CancellationToken,
) {
    let mut pause = DB_RETRY_MIN;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all([JOBS_CHANNEL, SLOTS_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?pause, "could not LISTEN; polling meanwhile");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(DB_RETRY_MAX);
                    continue;
                }
            }
        };
        pause = DB_RETRY_MIN;
        jobs_ready.notify_one();
        slots.wake_all();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                // One released slot wakes one waiter: waking all of them would have every
                // waiter race to the database for a single slot.
                Ok(Some(n)) if n.channel() == SLOTS_CHANNEL => slots.slot_released(),
                Ok(Some(_)) => jobs_ready.notify_one(),
                Ok(None) => {
                    // Reconnected inside sqlx: anything sent meanwhile was missed.
                    jobs_ready.notify_one();
                    slots.wake_all();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
