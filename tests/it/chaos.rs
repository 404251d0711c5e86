//! Chaos: fleets of real `reviewq worker` processes reviewing merge requests on real
//! Postgres, against the simulated GitLab and GLM over HTTP, while the test kills workers,
//! restarts or starves the database and makes both services misbehave. Every scenario ends
//! with the same checks ([`assert_invariants`]) and prints one summary line (the numbers in
//! `docs/RELIABILITY.md`).
//!
//! The kill scenario's fault phase lasts `REVIEWQ_CHAOS_SECS` seconds (default
//! [`DEFAULT_CHAOS_SECS`]); a soak run is
//! `REVIEWQ_CHAOS_SECS=600 cargo test --test it chaos::a_fleet_sigkilled -- --nocapture`.
//! Each run prints its random seed; `REVIEWQ_CHAOS_SEED=N` reuses it (the kill intervals
//! and random picks; which worker a targeted kill hits still depends on timing).
//! Worker logs are kept (and their tails printed) when a scenario fails, or always with
//! `REVIEWQ_CHAOS_KEEP_LOGS=1`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use reviewq::{
    jobs::review::ReviewArgs,
    queue::{JobId, Queue},
    review::{FindingKey, Fingerprint, HeadSha, Marker, MarkerKind, ReviewType},
    sim::{
        FakeGitLab, FakeGlm, GitLabFault, GlmBehaviour, GlmFault, MrSpec, Route,
        fixtures::sized_merge_request, gitlab::fake_sha,
    },
};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

mod throttling;

use crate::{
    helpers::{WorkerProcess, url_of},
    pipeline::{PROJECT, mixed_mr},
};

/// Worker processes in every fleet: a killed one leaves two to rescue its jobs.
const FLEET: usize = 3;
/// Jobs each worker runs at once: enough for a kill to interrupt several stages at once.
const CONCURRENCY: &str = "3";
/// Every worker's lease (`--lease-secs`, the CLI's minimum): a killed worker's jobs run
/// again about this long after it died, which keeps the scenarios short.
const LEASE: Duration = Duration::from_secs(3);
/// How much longer than a lease a dead worker's job may still show `running`: the
/// rescuer's period (a sixth of the lease) plus scheduling slack on a loaded 2-core runner.
const RESCUE_SLACK: Duration = Duration::from_secs(3);
/// `GLM_CONCURRENT_REQUESTS` of every fleet: below the fleet's 9 job slots, so the fleet
/// limit is what holds the fake GLM's in-flight peak down.
const GLM_LIMIT: usize = 2;
/// The simulated GitLab's token.
const TOKEN: &str = "glpat-chaos-token";
/// The simulated GLM's key.
const KEY: &str = "glm-chaos-key";
/// Default length of the kill scenario's fault phase; with the final drain the scenario
/// takes 38-45 s.
const DEFAULT_CHAOS_SECS: u64 = 38;
/// No new review starts this close to the end of the kill phase: a review under kills
/// takes about this long, so the scenario ends soon after the phase does.
const ROUND_HEADROOM: Duration = Duration::from_secs(6);
/// Longest wait for a fleet to settle once the faults stop; past it the test fails with
/// the job table instead of hanging.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Merge requests reviewed in each round of the kill scenario: "a dozen".
const KILL_MRS: u64 = 12;

/// A reproducible random schedule without a dependency (xorshift64*); the field is the
/// generator's state.
struct Rng(u64);

impl Rng {
    /// Seeded from `REVIEWQ_CHAOS_SEED`, else the clock; the seed is printed for replays.
    fn from_env(scenario: &str) -> Self {
        let seed = std::env::var("REVIEWQ_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("the clock is after 1970")
                    .as_nanos() as u64
            });
        eprintln!("chaos[{scenario}]: seed {seed} (REVIEWQ_CHAOS_SEED={seed} reuses it)");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// The kill scenario's fault phase, from `REVIEWQ_CHAOS_SECS`.
fn chaos_secs() -> Duration {
    Duration::from_secs(
        std::env::var("REVIEWQ_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_CHAOS_SECS),
    )
}

/// The two simulated services.
struct Sims {
    /// Serves the MRs, stores the comments and injects GitLab's failures.
    gitlab: FakeGitLab,
    /// Answers the chunks, bills usage, counts requests in flight, injects GLM's failures.
    glm: FakeGlm,
}

impl Sims {
    async fn start(glm: GlmBehaviour) -> Self {
        Self {
            gitlab: FakeGitLab::start(TOKEN).await.unwrap(),
            glm: FakeGlm::start(KEY, glm).await.unwrap(),
        }
    }

    /// Adds merge requests `iids` of the chaos project at their first head.
    fn add(&self, iids: impl IntoIterator<Item = u64>) {
        for iid in iids {
            self.gitlab.add_merge_request(chaos_mr(iid, 0)).unwrap();
        }
    }
}

/// The title tag of MR `iid`, unique in every prompt (a GLM prompt rule's needle).
fn tag(iid: u64) -> String {
    format!("[chaos-mr-{iid:02}]")
}

/// MR `iid` of the chaos project at push `round`: odd ones are the pipeline tests' mixed
/// MR (one chunk with inline, unanchorable and skipped parts), even ones generated code of
/// two chunks with a dozen findings.
fn chaos_mr(iid: u64, round: u32) -> MrSpec {
    let base = if iid % 2 == 1 {
        mixed_mr(iid)
    } else {
        sized_merge_request(PROJECT, 77, iid, 3, 150)
    };
    MrSpec {
        title: format!("Chaos change {}", tag(iid)),
        head_sha: fake_sha(&format!("chaos-{iid}-{round}")),
        ..base
    }
}

/// Enqueues a review of MR `iid` (an unfinished one for the MR is returned as is).
async fn enqueue(pool: &PgPool, iid: u64) -> JobId {
    let options = crate::pipeline::options();
    let mr = format!("{PROJECT}:{iid}").parse().unwrap();
    Queue::enqueue(pool, &ReviewArgs::new(mr, &options).job(0))
        .await
        .unwrap()
        .id()
}

/// The database URL workers get: tagged with an application name so that the test can
/// terminate their backends and no one else's.
fn worker_url(url: &str) -> String {
    let mut url: url::Url = url.parse().expect("database URL");
    url.query_pairs_mut()
        .append_pair("application_name", "chaos-worker");
    url.to_string()
}

/// One place in the fleet, holding a worker process through its restarts.
struct Slot {
    /// The running process, `None` between a kill and the restart.
    process: Option<WorkerProcess>,
    /// The current process's log (one file per start, so its worker id is unambiguous).
    log: PathBuf,
    /// Its worker id, once read from the log.
    id: Option<Uuid>,
    /// Processes started in this slot, for log file names.
    starts: u32,
}

/// A killed worker whose jobs must be rescued within a lease.
struct Dead {
    /// Its worker id, as the jobs it held name it.
    id: Uuid,
    /// When the test killed it: a lease after this its jobs must be back in the queue.
    killed: Instant,
    /// Set once none of its jobs is `running` any more.
    cleared: bool,
}

/// The environment every chaos worker runs with: the simulators, tight limits and
/// timeouts, and `extra` on top (replacing a default of the same name).
fn worker_env(sims: &Sims, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("GITLAB_URL", sims.gitlab.base_url()),
        ("GITLAB_TOKEN", TOKEN),
        ("GLM_BASE_URL", sims.glm.base_url()),
        ("GLM_API_KEY", KEY),
        ("GLM_CONCURRENT_REQUESTS", "2"),
        ("GITLAB_TIMEOUT", "10"),
        ("GLM_TIMEOUT", "10"),
        ("CHUNK_TIMEOUT", "60"),
        ("REVIEWQ_CHUNK_TOKENS", "8000"),
        ("NO_COLOR", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// Runs one `reviewq worker --exit-when-idle` process over the queued work, as a user's
/// cron or CI job would, and asserts it exits 0 within `timeout`.
async fn run_until_idle(
    name: &str,
    url: &str,
    sims: &Sims,
    extra: &[(&str, &str)],
    timeout: Duration,
) {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chaos-{name}-{}-{}.log",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = crate::helpers::reviewq()
        .args([
            "worker",
            "--exit-when-idle",
            "--concurrency",
            CONCURRENCY,
            "--poll-ms",
            "200",
        ])
        .env("DATABASE_URL", url)
        .envs(worker_env(sims, extra))
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start reviewq worker");
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Ok(Ok(status)) if status.success() => {
            let _ = std::fs::remove_file(&log);
        }
        Ok(status) => panic!(
            "{name}: the worker ended with {status:?}; its log:\n{}",
            text()
        ),
        Err(_) => panic!(
            "{name}: the worker was not idle after {timeout:?}; its log:\n{}",
            text()
        ),
    }
}

/// A fleet of worker processes and what the test did to it.
struct Fleet {
    /// The scenario, for messages and log directories.
    name: &'static str,
    /// The test's own connection to the fleet's database.
    pool: PgPool,
    /// `DATABASE_URL` for the workers.
    url: String,
    /// Environment for the workers (services, limits, timeouts).
    env: Vec<(String, String)>,
    /// Where worker logs go; printed and kept when the test fails, removed when it passes.
    logs: PathBuf,
    /// The [`FLEET`] places, each holding one process at a time.
    slots: Vec<Slot>,
    /// SIGKILLs sent.
    kills: u32,
    /// Processes started after a kill.
    restarts: u32,
    /// Killed workers, checked until their jobs are rescued.
    dead: Vec<Dead>,
    /// Longest a dead worker's job stayed `running` after the kill.
    longest_rescue: Duration,
    /// Set by a clean [`Fleet::stop`]; otherwise the logs are shown on drop.
    passed: bool,
}

impl Fleet {
    /// Starts [`FLEET`] workers on `url` against `sims`, with `extra` environment.
    fn start(
        name: &'static str,
        pool: &PgPool,
        url: &str,
        sims: &Sims,
        extra: &[(&str, &str)],
    ) -> Self {
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chaos-{name}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ));
        std::fs::create_dir_all(&logs).unwrap();
        let env = worker_env(sims, extra);
        let mut fleet = Self {
            name,
            pool: pool.clone(),
            url: url.to_owned(),
            env,
            logs,
            slots: Vec::new(),
            kills: 0,
            restarts: 0,
            dead: Vec::new(),
            longest_rescue: Duration::ZERO,
            passed: false,
        };
        for i in 0..FLEET {
            fleet.slots.push(Slot {
                process: None,
                log: PathBuf::new(),
                id: None,
                starts: 0,
            });
            fleet.spawn(i);
        }
        fleet
    }

    fn spawn(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.starts += 1;
        slot.log = self
            .logs
            .join(format!("worker{i}-start{}.log", slot.starts));
        slot.id = None;
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let lease = LEASE.as_secs().to_string();
        let args = [
            "--lease-secs",
            lease.as_str(),
            "--concurrency",
            CONCURRENCY,
            "--poll-ms",
            "200",
            "--shutdown-grace-secs",
            "10",
        ];
        slot.process = Some(WorkerProcess::start_logged(
            &self.url, &args, &env, &slot.log,
        ));
    }

    /// The worker id of slot `i`'s process, from its "worker started" log line.
    fn worker_id(&mut self, i: usize) -> Option<Uuid> {
        let slot = &mut self.slots[i];
        if slot.id.is_none() {
            let log = std::fs::read_to_string(&slot.log).unwrap_or_default();
            slot.id = log.find("worker.id=").and_then(|at| {
                let start = at + "worker.id=".len();
                log.get(start..start + 36)?.parse().ok()
            });
        }
        slot.id
    }

    /// SIGKILLs slot `i`'s process and returns its worker id (if it had started).
    async fn kill(&mut self, i: usize) -> Option<Uuid> {
        let id = self.worker_id(i);
        let mut process = self.slots[i].process.take().expect("a live worker");
        process.signal("KILL").await;
        process.wait(Duration::from_secs(10)).await;
        self.kills += 1;
        if let Some(id) = id {
            self.dead.push(Dead {
                id,
                killed: Instant::now(),
                cleared: false,
            });
        }
        id
    }

    /// Starts a new process in slot `i` after a kill.
    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.restarts += 1;
    }

    /// Checks that no dead worker's job stays `running` longer than a lease (plus the
    /// rescuer's slack) after the kill.
    async fn check_rescues(&mut self) {
        for dead in self.dead.iter_mut().filter(|d| !d.cleared) {
            let Ok(running) = sqlx::query_scalar::<_, i64>(
                "select count(*) from jobs where state = 'running' and worker_id = $1",
            )
            .bind(dead.id)
            .fetch_one(&self.pool)
            .await
            else {
                continue;
            };
            let since = dead.killed.elapsed();
            if running == 0 {
                dead.cleared = true;
                self.longest_rescue = self.longest_rescue.max(since);
            } else {
                assert!(
                    since <= LEASE + RESCUE_SLACK,
                    "{running} job(s) of worker {} still running {since:?} after it was killed (lease {LEASE:?})\n{}",
                    dead.id,
                    job_table(&self.pool).await
                );
            }
        }
    }

    /// Whether the fleet has nothing queued, waiting or running (false while the database
    /// cannot be reached).
    async fn idle(&self) -> bool {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from jobs where state in ('queued', 'running')",
        )
        .fetch_one(&self.pool)
        .await
        .is_ok_and(|n| n == 0)
    }

    /// Waits until the fleet is idle, checking rescues; fails with the job table after
    /// `timeout`.
    async fn wait_idle(&mut self, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_rescues().await;
            if self.idle().await {
                self.check_rescues().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chaos[{}]: {what} did not finish within {timeout:?}\n{}",
                self.name,
                job_table(&self.pool).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every worker with SIGTERM; each must exit cleanly.
    async fn stop(&mut self) {
        // A process installs its signal handlers just before it logs that it started; one
        // restarted a moment ago would die of the signal instead of draining.
        for i in 0..FLEET {
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.slots[i].process.is_some() && self.worker_id(i).is_none() {
                assert!(Instant::now() < deadline, "worker {i} never started");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for slot in &self.slots {
            if let Some(p) = &slot.process {
                p.signal("TERM").await;
            }
        }
        for slot in &mut self.slots {
            if let Some(mut p) = slot.process.take() {
                let status = p.wait(Duration::from_secs(30)).await;
                assert!(status.success(), "a worker exited with {status:?}");
            }
        }
        assert!(
            self.dead.iter().all(|d| d.cleared),
            "a dead worker's jobs were never rescued"
        );
        // Secrets: no log line of any worker of the run carries the token or the key.
        for entry in std::fs::read_dir(&self.logs).unwrap().flatten() {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
            for secret in [TOKEN, KEY] {
                assert!(
                    !text.contains(secret),
                    "a secret leaked into {}",
                    entry.path().display()
                );
            }
        }
        self.passed = true;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let keep = std::env::var_os("REVIEWQ_CHAOS_KEEP_LOGS").is_some();
        if self.passed && !keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
            return;
        }
        eprintln!(
            "chaos[{}]: worker logs kept in {}",
            self.name,
            self.logs.display()
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last 25 lines)", file.display());
            for line in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A job as a failure message shows it.
#[derive(sqlx::FromRow)]
struct JobLine {
    /// `jobs.id`.
    id: i64,
    /// `review` or `review_chunk`.
    kind: String,
    /// The state as text.
    state: String,
    /// Claims so far.
    attempt: i32,
    /// Claims that ended in an error or a lapsed lease.
    failed_attempts: i32,
    /// The MR of a review job.
    mr: Option<String>,
    /// Why the last attempt failed.
    last_error: Option<String>,
}

/// Every job with its state, attempts and last error: what a failure message needs.
async fn job_table(pool: &PgPool) -> String {
    let rows = sqlx::query_as::<_, JobLine>(
        "select id, kind, state::text as state, attempt, failed_attempts, payload->>'mr' as mr,
                last_error
         from jobs order by id",
    )
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|j| {
                format!(
                    "  job {} {} {} {} attempt {} ({} failed): {}",
                    j.id,
                    j.kind,
                    j.mr.unwrap_or_default(),
                    j.state,
                    j.attempt,
                    j.failed_attempts,
                    j.last_error.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(err) => format!("  (job table unavailable: {err})"),
    }
}

/// What a scenario's end state must show besides the invariants every scenario shares.
#[derive(Default)]
struct Expect<'a> {
    /// Reviews that must fail for an error fatal by nature: MR iid and a piece of the
    /// reason the job must give.
    fatal: &'a [(u64, &'a str)],
    /// GitLab may refuse inline positions (a push made their SHAs stale); those findings
    /// go to the summary instead.
    stale_positions: bool,
    /// Answered calls whose ledger rows may stay `started`: cut off between the answer and
    /// its recording by a kill.
    max_cut_off: usize,
}

/// The numbers a scenario reports.
#[derive(Debug, Default)]
struct Tally {
    /// Review jobs run (one per head reviewed).
    review_jobs: i64,
    /// Chunk jobs run (a split chunk counts three times: itself and its halves).
    chunk_jobs: i64,
    /// Review jobs that failed, each for the reason the scenario expected.
    failed_reviews: i64,
    /// Comments on GitLab (inline and summary notes), each recorded once in the outbox.
    comments: usize,
    /// Inline findings GitLab refused (stale positions), listed in a summary instead.
    downgraded: usize,
    /// Markers found on GitLab more than once (must be 0).
    duplicates: usize,
    /// LLM requests the fake GLM received.
    llm_requests: u64,
    /// Tokens the fake GLM billed.
    billed: u64,
    /// Tokens the ledger recorded.
    recorded: u64,
    /// Answered calls whose usage was lost to a kill (rows left `started`).
    cut_off: usize,
    /// Ledger rows left `started` (cut-off calls, answered or not).
    started_rows: i64,
    /// The most requests the fake GLM had in flight at once.
    peak_in_flight: usize,
    /// Failed attempts (errors and lapsed leases) summed over all jobs, and the most any
    /// one job had.
    failed_attempts: (i64, i32),
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "review_jobs={} (failed {}) chunk_jobs={} comments={} downgraded={} duplicates={} \
             llm_requests={} tokens_billed={} tokens_recorded={} cut_off_calls={} started_rows={} \
             peak_in_flight={}/{GLM_LIMIT} failed_attempts={} (max {} per job)",
            self.review_jobs,
            self.failed_reviews,
            self.chunk_jobs,
            self.comments,
            self.downgraded,
            self.duplicates,
            self.llm_requests,
            self.billed,
            self.recorded,
            self.cut_off,
            self.started_rows,
            self.peak_in_flight,
            self.failed_attempts.0,
            self.failed_attempts.1,
        )
    }
}

/// A job's end state.
#[derive(sqlx::FromRow)]
struct JobEnd {
    /// `jobs.id`.
    id: i64,
    /// `review` or `review_chunk`.
    kind: String,
    /// The state as text.
    state: String,
    /// The MR of a review job.
    iid: Option<i64>,
    /// The reason a failed job gives.
    last_error: Option<String>,
    /// A chunk's review job.
    parent_id: Option<i64>,
}

/// An outbox row with the review it belongs to.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    /// The review's project path.
    project: String,
    /// The review's MR.
    mr_iid: i64,
    /// The head reviewed, part of every marker.
    head_sha: String,
    /// The review type, part of every marker.
    review_type: String,
    /// The finding key, or `summary`.
    key: String,
    /// `inline` or `summary`.
    kind: String,
    /// pending, posted, downgraded or dry_run.
    state: String,
    /// The note GitLab stored, for a posted row.
    gitlab_note_id: Option<i64>,
    /// Why GitLab refused a downgraded row's position.
    error: Option<String>,
    /// The finding's cross-round fingerprint, part of its marker.
    fingerprint: Option<String>,
    /// The review row, to tell rounds apart.
    review_id: i64,
}

/// A ledger row's status and usage.
#[derive(sqlx::FromRow)]
struct LedgerRow {
    /// started, ok or error.
    status: String,
    /// Usage as the provider reported it; `None` while `started` or when not reported.
    prompt_tokens: Option<i64>,
    /// See `prompt_tokens`.
    completion_tokens: Option<i64>,
    /// Their sum, as reported.
    total_tokens: Option<i64>,
}

/// The invariants every scenario ends with:
/// - every job has ended; every review job `succeeded`, except those `expect.fatal` names,
///   which `failed` with their reason; every chunk job of a succeeding review succeeded;
///   every review row is `done`;
/// - no comment is on GitLab twice (by marker), and the comments on GitLab are exactly the
///   outbox rows in state `posted`, with the note ids the outbox recorded; no inline
///   comment is left `pending` (nor `downgraded`, unless positions could go stale);
/// - the ledger has a row for every request the fake GLM received; every usage it
///   records was billed by the fake, and what the fake billed beyond that is the usage of
///   answered calls cut off by a kill, whose rows stayed `started` (at most
///   `expect.max_cut_off` of them);
/// - the fake GLM never had more than [`GLM_LIMIT`] requests in flight, and no limit slot
///   is still held.
async fn assert_invariants(pool: &PgPool, sims: &Sims, iids: &[u64], expect: &Expect<'_>) -> Tally {
    let mut tally = Tally::default();
    let table = job_table(pool).await;

    // Jobs.
    let jobs: Vec<JobEnd> = sqlx::query_as(
        "select id, kind, state::text as state, (payload->>'iid')::int8 as iid, last_error,
                parent_id
         from jobs order by id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let iid_of_review: HashMap<i64, i64> = jobs
        .iter()
        .filter(|j| j.kind == "review")
        .map(|j| (j.id, j.iid.expect("a review names its MR")))
        .collect();
    let fatal_reason = |iid: i64| {
        expect
            .fatal
            .iter()
            .find(|(i, _)| *i as i64 == iid)
            .map(|(_, r)| *r)
    };
    for job in &jobs {
        let (id, state) = (job.id, job.state.as_str());
        match job.kind.as_str() {
            "review" => {
                tally.review_jobs += 1;
                let iid = job.iid.expect("a review names its MR");
                match fatal_reason(iid) {
                    Some(reason) => {
                        tally.failed_reviews += 1;
                        assert_eq!(state, "failed", "review job {id} of !{iid}\n{table}");
                        let error = job.last_error.as_deref().unwrap_or_default();
                        assert!(
                            error.contains(reason),
                            "review job {id} of !{iid} failed for another reason: {error}"
                        );
                    }
                    None => {
                        assert_eq!(state, "succeeded", "review job {id} of !{iid}\n{table}")
                    }
                }
            }
            "review_chunk" => {
                tally.chunk_jobs += 1;
                let iid = job
                    .parent_id
                    .and_then(|p| iid_of_review.get(&p))
                    .copied()
                    .expect("a chunk's review");
                if fatal_reason(iid).is_none() {
                    assert_eq!(state, "succeeded", "chunk job {id} of !{iid}\n{table}");
                } else {
                    assert!(
                        state == "succeeded" || state == "failed",
                        "chunk {id}: {state}"
                    );
                }
            }
            other => panic!("unexpected job kind {other}"),
        }
    }
    for (iid, _) in expect.fatal {
        assert!(
            iid_of_review.values().any(|i| *i == *iid as i64),
            "!{iid} was reviewed"
        );
    }
    tally.failed_attempts = sqlx::query_as(
        "select coalesce(sum(failed_attempts), 0)::int8, coalesce(max(failed_attempts), 0) from jobs",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let unfinished: i64 = sqlx::query_scalar("select count(*) from reviews where state <> 'done'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(unfinished, 0, "every review row is done\n{table}");

    // Comments: the outbox against GitLab, marker by marker.
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select r.project, r.mr_iid, r.head_sha, r.review_type, o.key, o.kind, o.state,
                o.gitlab_note_id, o.error, o.fingerprint, r.id as review_id
         from outbox o join reviews r on r.id = o.review_id where not r.dry_run",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut expected: BTreeMap<(i64, String), i64> = BTreeMap::new();
    // Per MR: (latest review id, summary note id, that review's head).
    let mut latest_summary: BTreeMap<i64, (i64, i64, String)> = BTreeMap::new();
    for row in rows {
        let (iid, key, error) = (row.mr_iid, row.key.as_str(), &row.error);
        assert_eq!(row.project, PROJECT);
        let marker_kind = match (row.kind.as_str(), key) {
            ("summary", "summary") => MarkerKind::Summary,
            // An unanchorable finding: listed in the summary, no comment of its own.
            ("summary", _) => continue,
            _ => MarkerKind::Finding(FindingKey::parse(key).unwrap()),
        };
        match row.state.as_str() {
            "posted" => {}
            // Not posted by design: still open from an earlier round at the same code,
            // dismissed, below the minimum severity, or over the inline limit.
            "open" | "dismissed" | "below_threshold" | "over_limit" => continue,
            "downgraded" if expect.stale_positions => {
                assert!(error.is_some(), "a refused position says why");
                tally.downgraded += 1;
                continue;
            }
            other => panic!("outbox row {key} of !{iid} ended {other}: {error:?}\n{table}"),
        }
        let note_id = row.gitlab_note_id.expect("a posted row records its note");
        if marker_kind == MarkerKind::Summary {
            // One living summary note per MR, edited by every round: all rounds record the
            // same note, whose marker names the head of the MR's latest round.
            let latest =
                latest_summary
                    .entry(iid)
                    .or_insert((row.review_id, note_id, row.head_sha.clone()));
            assert_eq!(
                latest.1, note_id,
                "!{iid}: every round edits the same summary note\n{table}"
            );
            if row.review_id > latest.0 {
                *latest = (row.review_id, note_id, row.head_sha.clone());
            }
            continue;
        }
        let marker = Marker {
            review_type: row.review_type.parse().unwrap(),
            head_sha: HeadSha::parse(&row.head_sha).unwrap(),
            kind: marker_kind,
            fingerprint: row
                .fingerprint
                .as_deref()
                .map(|f| Fingerprint::parse(f).unwrap()),
        };
        assert!(
            expected
                .insert((iid, marker.to_string()), note_id)
                .is_none(),
            "two outbox rows for one marker"
        );
    }
    for (iid, (_, note_id, head)) in latest_summary {
        let marker = Marker::summary(ReviewType::General, HeadSha::parse(&head).unwrap());
        assert!(
            expected
                .insert((iid, marker.to_string()), note_id)
                .is_none(),
            "two outbox rows for one marker"
        );
    }
    // Secrets: nothing the database keeps (errors, payloads, comments, the ledger)
    // carries the token or the key.
    for secret in [TOKEN, KEY] {
        let leaks: i64 = sqlx::query_scalar(
            "select count(*) from (
                 select last_error as t from jobs union all select payload::text from jobs
                 union all select error from job_attempts union all select error_message from llm_calls
                 union all select body from outbox union all select error from outbox
                 union all select unanchored_reason::text from outbox
             ) x where strpos(t, $1) > 0",
        )
        .bind(secret)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(leaks, 0, "a secret is stored in the database");
    }
    tally.duplicates = sims.gitlab.total_duplicate_count();
    assert_eq!(tally.duplicates, 0, "a comment was posted twice");
    let mut on_gitlab: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for &iid in iids {
        for note in sims.gitlab.notes(PROJECT, iid).unwrap() {
            if let Some(marker) = reviewq::sim::gitlab::markers(&note.body).first() {
                on_gitlab.insert((iid as i64, (*marker).to_owned()), note.id as i64);
            }
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !on_gitlab.contains_key(*k))
        .collect();
    let unrecorded: Vec<_> = on_gitlab
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && unrecorded.is_empty(),
        "outbox and GitLab disagree: recorded but not on GitLab {missing:?}; on GitLab but not recorded {unrecorded:?}"
    );
    assert_eq!(
        on_gitlab, expected,
        "each outbox row records the note GitLab stored"
    );
    tally.comments = expected.len();

    // The ledger against what the fake GLM billed.
    let ledger: Vec<LedgerRow> = sqlx::query_as(
        "select status, prompt_tokens, completion_tokens, total_tokens from llm_calls",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    tally.llm_requests = sims.glm.request_count();
    tally.billed = sims.glm.billed_total_tokens();
    tally.started_rows = ledger.iter().filter(|r| r.status == "started").count() as i64;
    let finished_rows = ledger.len() as i64 - tally.started_rows;
    assert!(
        finished_rows as u64 <= tally.llm_requests && tally.llm_requests <= ledger.len() as u64,
        "a ledger row before every request: {} rows ({} started) for {} requests",
        ledger.len(),
        tally.started_rows,
        tally.llm_requests
    );
    let mut unmatched: HashMap<(u64, u64), usize> = HashMap::new();
    for call in sims.glm.calls() {
        if let (Some(p), Some(c)) = (call.prompt_tokens, call.completion_tokens) {
            *unmatched.entry((p, c)).or_default() += 1;
        }
    }
    for row in &ledger {
        let (Some(p), Some(c), total, status) = (
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            &row.status,
        ) else {
            continue;
        };
        assert_eq!(total, Some(p + c), "total = prompt + completion");
        let left = unmatched
            .get_mut(&(p as u64, c as u64))
            .filter(|n| **n > 0)
            .unwrap_or_else(|| {
                panic!("the ledger records usage ({p}, {c}, {status}) the fake GLM never billed")
            });
        *left -= 1;
        tally.recorded += (p + c) as u64;
    }
    tally.cut_off = unmatched.values().sum();
    let allowed = expect.max_cut_off;
    let cut_off_tokens: u64 = unmatched
        .iter()
        .map(|((p, c), n)| (p + c) * *n as u64)
        .sum();
    assert_eq!(
        tally.billed,
        tally.recorded + cut_off_tokens,
        "billed = recorded + usage of cut-off calls"
    );
    assert!(
        tally.cut_off as i64 <= tally.started_rows && tally.cut_off <= allowed,
        "{} answered calls missing from the ledger ({} rows left started, at most {allowed} allowed)",
        tally.cut_off,
        tally.started_rows,
    );

    // The fleet limit.
    tally.peak_in_flight = sims.glm.peak_in_flight();
    assert!(
        tally.peak_in_flight <= GLM_LIMIT,
        "the fake GLM had {} requests in flight; GLM_CONCURRENT_REQUESTS is {GLM_LIMIT}",
        tally.peak_in_flight
    );
    let held: i64 = sqlx::query_scalar(
        "select count(*) from limit_slots where holder_job_id is not null and lease_expires_at > now()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "every limit slot released");
    tally
}

/// What a running job was doing, as the database shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// A review job before its plan is stored: fetching the MR, its versions and diffs.
    Fetch,
    /// A review job turning findings into outbox rows.
    Outbox,
    /// A chunk job with an LLM request in flight (its ledger row is `started`).
    Llm,
    /// A chunk job waiting for an LLM slot or storing an answer.
    Chunk,
    /// A review job posting inline comments; GitLab may hold some it has not recorded.
    Posting,
    /// A review job posting its summary note.
    Summary,
}

/// A running job's stage, worker and review.
struct RunningJob {
    /// The worker holding it.
    worker: Option<Uuid>,
    /// What it is doing.
    stage: Stage,
    /// (MR iid, head SHA, comments recorded as posted) of a review job past its plan.
    review: Option<(i64, String, i64)>,
    /// Attempts the job has left before it fails for good.
    attempts_left: i32,
}

/// A running job as [`running_jobs`] reads it.
#[derive(sqlx::FromRow)]
struct RunningRow {
    /// The worker holding the job.
    worker_id: Option<Uuid>,
    /// The stage's name (see [`Stage`]).
    stage: String,
    /// The MR of a review job past its plan.
    mr_iid: Option<i64>,
    /// The head it reviews.
    head_sha: Option<String>,
    /// Its comments recorded as posted.
    posted: i64,
    /// Attempts left before it fails for good.
    attempts_left: i32,
}

async fn running_jobs(pool: &PgPool) -> Vec<RunningJob> {
    let rows: Vec<RunningRow> = sqlx::query_as(
        r#"
        select j.worker_id,
               case when j.kind = 'review_chunk' then
                        case when exists (select 1 from llm_calls c where c.job_id = j.id
                                          and c.job_attempt = j.attempt and c.status = 'started')
                             then 'llm' else 'chunk' end
                    when r.id is null then 'fetch'
                    when r.state = 'reviewing' then 'outbox'
                    when exists (select 1 from outbox o where o.review_id = r.id
                                 and o.key = 'summary' and o.state = 'pending') then 'summary'
                    else 'posting' end as stage,
               r.mr_iid, r.head_sha,
               (select count(*) from outbox o where o.review_id = r.id and o.state = 'posted'
                  and (o.kind = 'inline' or o.key = 'summary')) as posted,
               j.max_attempts - j.failed_attempts as attempts_left
        from jobs j left join reviews r on r.job_id = j.id and j.kind = 'review'
        where j.state = 'running'
        "#,
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter()
        .map(|row| RunningJob {
            worker: row.worker_id,
            stage: match row.stage.as_str() {
                "fetch" => Stage::Fetch,
                "outbox" => Stage::Outbox,
                "llm" => Stage::Llm,
                "chunk" => Stage::Chunk,
                "summary" => Stage::Summary,
                _ => Stage::Posting,
            },
            review: row
                .mr_iid
                .zip(row.head_sha)
                .map(|(i, h)| (i, h, row.posted)),
            attempts_left: row.attempts_left,
        })
        .collect()
}

/// Comments GitLab holds for a review's head that its outbox does not record yet.
fn unrecorded(gitlab: &FakeGitLab, review: &Option<(i64, String, i64)>) -> i64 {
    let Some((iid, head, posted)) = review else {
        return 0;
    };
    let head = format!("head={head} ");
    let stored = gitlab
        .marker_counts(PROJECT, *iid as u64)
        .map(|m| m.keys().filter(|k| k.contains(&head)).count())
        .unwrap_or(0);
    stored as i64 - posted
}

/// The stages kills aim at, in turn.
const TARGETS: [Stage; 4] = [Stage::Fetch, Stage::Llm, Stage::Posting, Stage::Summary];

/// What the kills of a run hit.
#[derive(Default)]
struct KillLog {
    /// Kills by the stages of the victim's running jobs ("idle" if none).
    stages: BTreeMap<String, u32>,
    /// Comments GitLab had stored but the victims had not recorded, summed over kills.
    unrecorded: i64,
    /// Kills skipped because every worker ran a job low on attempts.
    spared: u32,
}

/// Attempts a job must have left for the test to kill its worker. A lapsed lease counts
/// as a failed attempt (a job that kills its worker every time must not loop forever), so
/// a job's budget (5 attempts for a review, 4 for a chunk) bounds the crashes it survives;
/// aiming several kills at one long review would exhaust it, which random crashes do not.
const SPARE_ATTEMPTS: i32 = 3;

/// Kills a worker with a job in stage `target` (waiting up to 2 s for one), else a random
/// one, sparing workers whose jobs are low on attempts; notes what the victim was doing;
/// restarts it.
async fn kill_in_stage(
    fleet: &mut Fleet,
    sims: &Sims,
    rng: &mut Rng,
    target: Stage,
    log: &mut KillLog,
) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let victim = loop {
        let ids: Vec<Option<Uuid>> = (0..FLEET).map(|i| fleet.worker_id(i)).collect();
        let running = running_jobs(&fleet.pool).await;
        let slot_of =
            |job: &RunningJob| ids.iter().position(|id| id.is_some() && *id == job.worker);
        let mut spared = [false; FLEET];
        for job in running.iter().filter(|j| j.attempts_left < SPARE_ATTEMPTS) {
            if let Some(slot) = slot_of(job) {
                spared[slot] = true;
            }
        }
        let found = running.iter().find_map(|job| {
            let slot = slot_of(job).filter(|s| !spared[*s])?;
            let in_window =
                job.stage != Stage::Posting || unrecorded(&sims.gitlab, &job.review) > 0;
            (job.stage == target && in_window).then_some(slot)
        });
        if let Some(slot) = found {
            break Some(slot);
        }
        if Instant::now() >= deadline {
            let eligible: Vec<usize> = (0..FLEET).filter(|s| !spared[*s]).collect();
            break (!eligible.is_empty())
                .then(|| eligible[rng.below(eligible.len() as u64) as usize]);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    let Some(victim) = victim else {
        log.spared += 1;
        return;
    };
    let id = fleet.kill(victim).await;
    let jobs: Vec<RunningJob> = running_jobs(&fleet.pool)
        .await
        .into_iter()
        .filter(|j| id.is_some() && j.worker == id)
        .collect();
    let mut stages: Vec<Stage> = jobs.iter().map(|j| j.stage).collect();
    stages.sort();
    stages.dedup();
    if stages.is_empty() {
        *log.stages.entry("idle".into()).or_default() += 1;
    }
    for stage in stages {
        *log.stages
            .entry(format!("{stage:?}").to_lowercase())
            .or_default() += 1;
    }
    log.unrecorded += jobs
        .iter()
        .filter(|j| matches!(j.stage, Stage::Posting | Stage::Summary))
        .map(|j| unrecorded(&sims.gitlab, &j.review).max(0))
        .sum::<i64>();
    tokio::time::sleep(rng.millis(0, 500)).await;
    fleet.restart(victim);
}

/// Widens the windows kills aim at: every diff fetch and every summary note is slow (the
/// summary is stored before the pause), and some inline comments are stored by GitLab
/// well before it answers. Called again for each new review to top up the inline ones.
fn widen_windows(gitlab: &FakeGitLab, first: bool) {
    if first {
        gitlab.fail_next(
            Route::Diffs,
            u32::MAX,
            GitLabFault::Delay(Duration::from_millis(700)),
        );
        gitlab.fail_next(
            Route::CreateNote,
            u32::MAX,
            GitLabFault::StoreThenHang(Duration::from_millis(1000)),
        );
    }
    gitlab.fail_next(
        Route::CreateDiscussion,
        2,
        GitLabFault::StoreThenHang(Duration::from_millis(1000)),
    );
}

#[sqlx::test]
async fn a_fleet_sigkilled_every_few_seconds_at_every_stage_reviews_everything_exactly_once(
    pool: PgPool,
) {
    let began = Instant::now();
    let phase = chaos_secs();
    let mut rng = Rng::from_env("kill");
    let sims = Sims::start(GlmBehaviour {
        max_findings: 6,
        ..GlmBehaviour::with_latency(Duration::from_millis(500))
    })
    .await;
    sims.gitlab.set_latency(Duration::from_millis(30));
    let iids: Vec<u64> = (1..=KILL_MRS).collect();
    sims.add(iids.iter().copied());
    let url = url_of(&pool);
    let mut fleet = Fleet::start("kill", &pool, &url, &sims, &[]);

    let mut log = KillLog::default();
    // Each MR is reviewed again at a new head as soon as its last review ends, so reviews
    // are at every stage at any time until the kill phase nears its end.
    let mut latest: BTreeMap<u64, (u32, JobId)> = BTreeMap::new();
    widen_windows(&sims.gitlab, true);
    for &iid in &iids {
        widen_windows(&sims.gitlab, false);
        latest.insert(iid, (0, enqueue(&pool, iid).await));
    }
    let mut enqueued = iids.len();
    let queue = Queue::new(pool.clone());
    let mut next_kill = Instant::now() + rng.millis(1_500, 3_000);
    while began.elapsed() < phase {
        fleet.check_rescues().await;
        if began.elapsed() + ROUND_HEADROOM < phase {
            for (&iid, (heads, job)) in latest.iter_mut() {
                if !queue.get(*job).await.unwrap().state.is_finished() {
                    continue;
                }
                *heads += 1;
                let next = chaos_mr(iid, *heads);
                sims.gitlab
                    .push(PROJECT, iid, next.files, &next.head_sha)
                    .unwrap();
                widen_windows(&sims.gitlab, false);
                *job = enqueue(&pool, iid).await;
                enqueued += 1;
            }
        }
        if Instant::now() >= next_kill {
            let target = TARGETS[fleet.kills as usize % TARGETS.len()];
            kill_in_stage(&mut fleet, &sims, &mut rng, target, &mut log).await;
            next_kill = Instant::now() + rng.millis(1_500, 4_000);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .wait_idle(DRAIN_TIMEOUT, "the reviews after the last kill")
        .await;
    fleet.stop().await;

    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            max_cut_off: fleet.kills as usize * GLM_LIMIT,
            ..Expect::default()
        },
    )
    .await;
    assert!(
        fleet.kills >= (phase.as_secs() / 6) as u32,
        "too few kills: {}",
        fleet.kills
    );
    assert_eq!(
        tally.review_jobs, enqueued as i64,
        "one review job per head pushed"
    );
    assert_eq!(
        tally.peak_in_flight, GLM_LIMIT,
        "the fleet limit was reached (and never exceeded)"
    );
    eprintln!(
        "chaos[kill]: secs={:.1} kills={} restarts={} kill_stages={:?} unrecorded_at_kill={} \
         kills_skipped={} longest_rescue={:.1}s {tally}",
        began.elapsed().as_secs_f64(),
        fleet.kills,
        fleet.restarts,
        log.stages,
        log.unrecorded,
        log.spared,
        fleet.longest_rescue.as_secs_f64(),
    );
}

#[sqlx::test]
async fn glm_rate_limits_errors_slowness_and_bad_answers_are_retried_or_reported_and_all_billed(
    pool: PgPool,
) {
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(200))).await;
    let iids: Vec<u64> = (1..=6).collect();
    sims.add(iids.iter().copied());
    // MR 5's answers are never JSON: its only chunk fails after one retry, and with no
    // chunk reviewed the review fails, saying why. Fatal by nature: asking again would
    // cost tokens for the same prose.
    sims.glm.add_prompt_fault(&tag(5), GlmFault::NotJson, None);
    // Everyone else meets each failure GLM produces once or twice, in arrival order.
    sims.glm.push_faults([
        GlmFault::RateLimited,
        GlmFault::ServerError,
        GlmFault::Slow(Duration::from_secs(4)),
        GlmFault::Truncated,
        GlmFault::NotJson,
        GlmFault::RateLimited,
        GlmFault::ServerError,
        GlmFault::Slow(Duration::from_millis(1_500)),
    ]);
    let url = url_of(&pool);
    // A 2-s request timeout turns the 4-s answer into a client-side timeout.
    let mut fleet = Fleet::start("glm", &pool, &url, &sims, &[("GLM_TIMEOUT", "2")]);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    fleet.stop().await;

    const NOT_JSON: &str = "the model's answer was not the JSON object asked for, twice";
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            fatal: &[(5, NOT_JSON)],
            ..Expect::default()
        },
    )
    .await;
    // Each failure left its trace in the ledger, billed or not.
    let codes: Vec<String> =
        sqlx::query_scalar("select distinct error_code from llm_calls where status = 'error'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for code in [
        "1302",
        "500",
        "Timeout",
        "unusable_answer",
        "ContextTooLong",
    ] {
        assert!(
            codes.iter().any(|c| c == code),
            "no ledger row with error {code}: {codes:?}"
        );
    }
    let split: i64 = sqlx::query_scalar("select count(*) from review_chunks where superseded")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(split >= 1, "the truncated answer's chunk was split in two");
    let summary = sims
        .gitlab
        .notes(PROJECT, 5)
        .unwrap()
        .into_iter()
        .find(|n| n.note_type.is_none())
        .expect("MR 5 still gets its summary");
    assert!(
        summary.body.contains("not the JSON object"),
        "the summary names the failure: {}",
        summary.body
    );
    eprintln!(
        "chaos[glm]: secs={:.1} faults=8+MR5-never-JSON kills=0 restarts=0 chunks_split={split} {tally}",
        began.elapsed().as_secs_f64()
    );
}

#[sqlx::test]
async fn gitlab_throttling_failures_around_stores_and_a_push_mid_review_post_nothing_twice(
    pool: PgPool,
) {
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(200))).await;
    sims.gitlab.set_latency(Duration::from_millis(20));
    let iids: Vec<u64> = (1..=6).collect();
    sims.add(iids.iter().copied());
    // MR 1's chunk is slow to review, so its author pushes while the review runs.
    sims.glm.add_prompt_fault(
        &tag(1),
        GlmFault::Slow(Duration::from_millis(2_500)),
        Some(1),
    );
    let gitlab = &sims.gitlab;
    gitlab.fail_next(
        Route::MergeRequest,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    gitlab.fail_next(Route::Diffs, 1, GitLabFault::ServerError);
    gitlab.fail_next(Route::Versions, 1, GitLabFault::BadGateway);
    gitlab.fail_next(Route::CreateDiscussion, 1, GitLabFault::ServerError);
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::ServerErrorAfterStore,
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::RateLimitedWithoutHint,
    );
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerError);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("gitlab", &pool, &url, &sims, &[]);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    // The push: once MR 1's review is planned (against the first head), a new head.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let planned: i64 = sqlx::query_scalar("select count(*) from reviews where mr_iid = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        if planned > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MR 1 was never planned\n{}",
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pushed = chaos_mr(1, 1);
    gitlab
        .push(PROJECT, 1, pushed.files, &pushed.head_sha)
        .unwrap();
    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    fleet.stop().await;

    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            stale_positions: true,
            ..Expect::default()
        },
    )
    .await;
    // Every fault was served.
    let statuses: Vec<u16> = gitlab.requests().iter().map(|r| r.status).collect();
    for status in [429, 500, 502] {
        assert!(statuses.contains(&status), "no {status} was served");
    }
    // MR 1: the first head's review finished against that head (GitLab refused its inline
    // positions, now stale, so those findings are in its summary) and queued a review of
    // the new head, which posted them inline.
    let reviews: Vec<(String, i64, i64)> = sqlx::query_as(
        "select r.head_sha,
                count(*) filter (where o.kind = 'inline' and o.state = 'downgraded'),
                count(*) filter (where o.kind = 'inline' and o.state = 'posted')
         from reviews r join outbox o on o.review_id = r.id
         where r.mr_iid = 1 group by r.id, r.head_sha order by r.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        reviews.len(),
        2,
        "the new head was reviewed too: {reviews:?}"
    );
    assert_eq!(reviews[0].0, chaos_mr(1, 0).head_sha);
    assert!(reviews[0].1 > 0, "stale positions refused: {reviews:?}");
    assert_eq!(reviews[1].0, pushed.head_sha);
    assert!(
        reviews[1].1 == 0 && reviews[1].2 > 0,
        "the new head's findings are inline: {reviews:?}"
    );
    eprintln!(
        "chaos[gitlab]: secs={:.1} faults=9+push kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64()
    );
}

/// Terminates every backend of the fleet's workers; returns how many.
async fn terminate_worker_backends(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
         where application_name = 'chaos-worker'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Enqueues reviews of `iids` as one wave; returns their job ids.
async fn wave(pool: &PgPool, iids: std::ops::RangeInclusive<u64>) -> Vec<JobId> {
    let mut ids = Vec::new();
    for iid in iids {
        ids.push(enqueue(pool, iid).await);
    }
    ids
}

/// Whether every job of `ids` has ended (false while the database cannot be reached).
async fn all_finished(pool: &PgPool, ids: &[JobId]) -> bool {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    sqlx::query_scalar::<_, i64>(
        "select count(*) from jobs where id = any($1) and state in ('queued', 'running')",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await
    .is_ok_and(|n| n == 0)
}

#[sqlx::test]
async fn killed_backends_a_starved_pool_and_an_idle_transaction_do_not_stop_the_queue(
    pool: PgPool,
) {
    /// How long the forgotten session stays idle in its transaction.
    const IDLE_FOR: Duration = Duration::from_secs(60);
    /// How long the lock on the limit table (what every LLM call needs) is held.
    const STALL: Duration = Duration::from_secs(10);
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(300))).await;
    let iids: Vec<u64> = (1..=12).collect();
    sims.add(iids.iter().copied());
    let url = url_of(&pool);

    // An operator's session left open mid-transaction, holding a snapshot and locks on
    // the queue's tables, for a minute.
    let mut idle = PgConnection::connect(&url).await.unwrap();
    let idle_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut idle)
        .await
        .unwrap();
    sqlx::query("begin isolation level repeatable read")
        .execute(&mut idle)
        .await
        .unwrap();
    sqlx::query("select count(*) from jobs, limit_slots")
        .execute(&mut idle)
        .await
        .unwrap();
    let idle_since = Instant::now();

    // Four connections per worker: the stall below holds them all.
    let mut fleet = Fleet::start(
        "database",
        &pool,
        &worker_url(&url),
        &sims,
        &[("REVIEWQ_DB_POOL_SIZE", "4")],
    );
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let mut waves = vec![(Instant::now(), wave(&pool, 1..=3).await, None)];
    let mut terminated = 0;
    let mut stall: Option<tokio::task::JoinHandle<()>> = None;
    let deadline = idle_since + IDLE_FOR + DRAIN_TIMEOUT;
    loop {
        let t = began.elapsed();
        // Backends killed under the workers, once a second for 8 s.
        if t >= Duration::from_secs(2) && t < Duration::from_secs(10) {
            terminated += terminate_worker_backends(&mut admin).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if waves.len() < 4 && t >= Duration::from_secs(14) * waves.len() as u32 {
            let first = 3 * waves.len() as u64 + 1;
            waves.push((Instant::now(), wave(&pool, first..=first + 2).await, None));
        }
        // A long statement holding the limit table, taken while LLM calls are in flight:
        // every LLM call and every heartbeat waits on it, each holding one of its worker's
        // four connections.
        let busy = sims.glm.in_flight() > 0 || t >= Duration::from_secs(24);
        if stall.is_none() && t >= Duration::from_secs(15) && busy {
            let url = url.clone();
            stall = Some(tokio::spawn(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("lock table limit_slots in exclusive mode")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("select pg_sleep($1)")
                    .bind(STALL.as_secs_f64())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }));
        }
        for (enqueued, ids, done) in &mut waves {
            if done.is_none() && all_finished(&pool, ids).await {
                *done = Some(enqueued.elapsed());
            }
        }
        let all_done = waves.len() == 4 && waves.iter().all(|w| w.2.is_some());
        if all_done && idle_since.elapsed() >= IDLE_FOR {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chaos[database]: the waves did not finish: {:?}\n{}",
            waves.iter().map(|w| w.2).collect::<Vec<_>>(),
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stall.expect("the stall ran").await.unwrap();

    // The session was idle in its transaction all along, and the queue kept going: the
    // last wave, which met no other fault, took as long as an unhindered one.
    let state: String = sqlx::query_scalar("select state from pg_stat_activity where pid = $1")
        .bind(idle_pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "idle in transaction");
    sqlx::query("rollback").execute(&mut idle).await.unwrap();
    let latencies: Vec<f64> = waves
        .iter()
        .map(|w| w.2.expect("finished").as_secs_f64())
        .collect();
    assert!(
        latencies[3] < 15.0,
        "the last wave took {:.1} s beside the idle transaction",
        latencies[3]
    );
    assert!(terminated > 0, "backends were terminated");
    fleet.stop().await;
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            ..Expect::default()
        },
    )
    .await;
    eprintln!(
        "chaos[database]: secs={:.1} backends_terminated={terminated} stall={}s idle_in_transaction={}s \
         wave_latencies_s={latencies:.1?} kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64(),
        STALL.as_secs(),
        IDLE_FOR.as_secs(),
    );
}

#[tokio::test]
async fn a_postgres_restart_and_a_full_connection_table_mid_run_lose_nothing() {
    /// How long every connection slot of the server stays taken.
    const FULL_FOR: Duration = Duration::from_secs(10);
    let began = Instant::now();
    // A private server: restarting it or filling its connection table must not disturb
    // the tests sharing the usual one.
    let dir = tempfile::tempdir().unwrap();
    let cluster = reviewq::localdb::Cluster::new(dir.path()).unwrap();
    let blocking = |f: fn(&reviewq::localdb::Cluster) -> Result<(), reviewq::localdb::Error>| {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || f(&cluster))
    };
    blocking(reviewq::localdb::Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    reviewq::migrate(&pool).await.unwrap();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(400))).await;
    let iids: Vec<u64> = (1..=12).collect();
    sims.add(iids.iter().copied());
    let mut fleet = Fleet::start("postgres", &pool, &worker_url(&url), &sims, &[]);
    let first = wave(&pool, 1..=8).await;

    // The restart, while LLM calls are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sims.glm.request_count() < 3 || sims.glm.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "no LLM call started\n{}",
            job_table(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restart_began = Instant::now();
    blocking(reviewq::localdb::Cluster::restart)
        .await
        .unwrap()
        .unwrap();
    let restart_took = restart_began.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Then every connection slot taken: the workers' connections are cut and they cannot
    // open new ones for a while. A second wave is enqueued meanwhile, on a slot we hold.
    let mut held: Vec<PgConnection> = Vec::new();
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let terminated = terminate_worker_backends(&mut admin).await;
    held.push(admin);
    let fill_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < fill_until && held.len() < 500 {
        match PgConnection::connect(&url).await {
            Ok(conn) => held.push(conn),
            // "sorry, too many clients already": keep trying for the slots workers free.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let slots_held = held.len();
    let mut second = Vec::new();
    for iid in 9..=12 {
        let mr = format!("{PROJECT}:{iid}").parse().unwrap();
        let options = crate::pipeline::options();
        second.push(
            Queue::enqueue(&mut held[0], &ReviewArgs::new(mr, &options).job(0))
                .await
                .unwrap()
                .id(),
        );
    }
    tokio::time::sleep(FULL_FOR).await;
    drop(held);

    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    assert!(all_finished(&pool, &first).await && all_finished(&pool, &second).await);
    fleet.stop().await;
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            ..Expect::default()
        },
    )
    .await;
    eprintln!(
        "chaos[postgres]: secs={:.1} restart={:.1}s backends_terminated={terminated} \
         connection_slots_held={slots_held} for {}s kills=0 restarts=0 {tally}",
        began.elapsed().as_secs_f64(),
        restart_took.as_secs_f64(),
        FULL_FOR.as_secs(),
    );
    pool.close().await;
    blocking(reviewq::localdb::Cluster::stop)
        .await
        .unwrap()
        .unwrap();
}

/// Starts a fleet reviewing MR 1 (one chunk) and returns once its LLM call has been
/// answered (and billed) while the test holds the ledger table, so the answer waits to be
/// stored; the lock is released when the returned transaction ends.
async fn hold_an_answer<'c>(
    pool: &PgPool,
    sims: &Sims,
    admin: &'c mut PgConnection,
) -> (JobId, sqlx::Transaction<'c, sqlx::Postgres>) {
    enqueue(pool, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The request is out, so its ledger row exists.
    while sims.glm.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "no LLM call\n{}",
            job_table(pool).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("lock table llm_calls in exclusive mode")
        .execute(&mut *hold)
        .await
        .unwrap();
    while !sims.glm.calls().iter().any(|c| c.status == 200) {
        assert!(Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let chunk: i64 =
        sqlx::query_scalar("select id from jobs where kind = 'review_chunk' and state = 'running'")
            .fetch_one(pool)
            .await
            .unwrap();
    (JobId::new(chunk), hold)
}

/// Waits for the fleet, stops it and checks that the ledger holds what GLM billed.
async fn assert_ledger_complete(pool: &PgPool, sims: &Sims, fleet: &mut Fleet) {
    fleet.wait_idle(DRAIN_TIMEOUT, "the review").await;
    fleet.stop().await;
    let (started, recorded): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'started'), coalesce(sum(total_tokens), 0)::int8
         from llm_calls",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        recorded as u64,
        sims.glm.billed_total_tokens(),
        "the ledger records what GLM billed ({started} rows left started)"
    );
}

#[sqlx::test]
async fn an_llm_answer_received_by_an_attempt_that_is_then_stopped_is_still_in_the_ledger(
    pool: PgPool,
) {
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(1_500))).await;
    sims.add([1]);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("stopped", &pool, &url, &sims, &[]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let (chunk, hold) = hold_an_answer(&pool, &sims, &mut admin).await;
    // The attempt loses its lease; the worker's next heartbeat (every third of the lease)
    // sees it and stops the attempt.
    Queue::new(pool.clone()).cancel(chunk).await.unwrap();
    tokio::time::sleep(LEASE).await;
    hold.commit().await.unwrap();
    assert_ledger_complete(&pool, &sims, &mut fleet).await;
}

#[sqlx::test]
async fn an_llm_answer_received_by_an_attempt_whose_database_write_fails_is_still_in_the_ledger(
    pool: PgPool,
) {
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(1_500))).await;
    sims.add([1]);
    let url = url_of(&pool);
    let mut fleet = Fleet::start("dberror", &pool, &worker_url(&url), &sims, &[]);
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let (_, hold) = hold_an_answer(&pool, &sims, &mut admin).await;
    // The worker's write of the answer waits on the lock; its connection is cut.
    let mut killer = PgConnection::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cut: i64 = sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where application_name = 'chaos-worker' and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut killer)
        .await
        .unwrap();
        if cut > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the answer's write never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold.commit().await.unwrap();
    assert_ledger_complete(&pool, &sims, &mut fleet).await;
}

#[sqlx::test]
async fn a_worker_log_line_is_not_attributed_to_a_job_whose_failure_is_being_recorded(
    pool: PgPool,
) {
    let url = url_of(&pool);
    let job = reviewq::jobs::noop::NoopArgs {
        sleep_ms: 500,
        fail_times: 1,
        ..Default::default()
    };
    let id = Queue::enqueue(&pool, &job.job()).await.unwrap().id();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut worker = WorkerProcess::start_logged(
        &url,
        &[],
        &[
            ("GITLAB_URL", "http://127.0.0.1:9"),
            ("GITLAB_TOKEN", "unused-gitlab-token"),
            ("GLM_API_KEY", "unused-glm-key"),
            ("NO_COLOR", "1"),
        ],
        &log,
    );
    let queue = Queue::new(pool.clone());
    crate::helpers::wait_until(Duration::from_secs(10), "the job to start", || async {
        queue.get(id).await.unwrap().state == reviewq::queue::JobState::Running
    })
    .await;
    // Hold the job's row: the failure the job is about to record waits for it.
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("select id from jobs where id = $1 for update")
        .bind(id.get())
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Logged by the signal task, which belongs to no job.
    worker.signal("TERM").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.commit().await.unwrap();
    assert!(worker.wait(Duration::from_secs(20)).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("shutdown requested"))
        .expect("the shutdown was logged");
    assert!(
        !line.contains("job{"),
        "a line that belongs to no job is logged in a job's span: {line}"
    );
}
