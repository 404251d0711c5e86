//! What the benchmarks share: simulators on a runtime of their own, review dependencies and
//! worker processes pointed at them, the idle-queue check, percentiles and memory readings.

use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;

use crate::{
    config::UsageError,
    gitlab::{GitLabClient, GitLabConfig},
    jobs::review::ReviewDeps,
    llm::{LlmClient, LlmConfig},
    queue::Queue,
    review::ChunkBudget,
    sim::{FakeGitLab, FakeGlm},
};

/// Whether a benchmark's review runs whatever the database says was reviewed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rereview {
    /// `--force`: the benches that review one fixture over and over, in one database.
    Forced,
    /// As a push would: the benches that measure rounds and conversations.
    AsPushed,
}

/// The general review job of `mr` (`PROJECT:IID`), as `reviewq enqueue` would build it.
///
/// # Errors
/// A reference that does not parse.
pub fn review_job(mr: &str, rereview: Rereview) -> anyhow::Result<crate::queue::NewJob> {
    let options = crate::jobs::review::ReviewOptions {
        review_type: crate::review::ReviewType::General,
        dry_run: false,
        force: rereview == Rereview::Forced,
        full: false,
    };
    let mr = mr.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::jobs::review::ReviewArgs::new(mr, &options).job(0))
}

/// Writes `report` to stdout: one JSON line with `--json`, else as `text` prints it.
///
/// # Errors
/// A write that fails.
pub fn write_report<R: Serialize>(
    report: &R,
    json: bool,
    text: impl FnOnce(&mut std::io::StdoutLock<'static>, &R) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        text(&mut out, report)?;
    }
    Ok(())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (all zero when there are none).
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            if values.is_empty() {
                return 0.0;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        Self {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

/// The GitLab token the benchmarks' simulated GitLab accepts.
pub(crate) const SIM_TOKEN: &str = "bench-gitlab-token";
/// The key the benchmarks' simulated GLM accepts.
pub(crate) const SIM_KEY: &str = "bench-glm-key";

/// Review dependencies pointed at the simulated servers, for an in-process worker.
///
/// # Errors
/// Invalid simulator URLs or client settings.
pub(crate) fn sim_deps(
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    budget: ChunkBudget,
    max_chunks: usize,
) -> anyhow::Result<ReviewDeps> {
    Ok(ReviewDeps {
        gitlab: GitLabClient::new(GitLabConfig::new(
            gitlab.base_url().parse()?,
            SecretString::from(SIM_TOKEN),
        ))?,
        llm: LlmClient::new(LlmConfig::new(
            glm.base_url().parse()?,
            Some(SecretString::from(SIM_KEY)),
            crate::llm::DEFAULT_MODEL,
        ))?,
        budget,
        chunk_timeout: Duration::from_secs(120),
        max_chunks,
        spend: crate::spend::SpendPolicy::default(),
        gitlab_budget: crate::jobs::gitlab_budget::GitLabBudget::default(),
        conversation: Default::default(),
    })
}

/// A `reviewq worker` process of this binary pointed at the simulators, quiet, killed if
/// dropped; callers add their own settings before spawning it.
///
/// # Errors
/// The path of this executable cannot be read.
pub(crate) fn worker_process(
    db_url: &str,
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    concurrency: u32,
    llm_limit: u32,
) -> std::io::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["worker", "--concurrency", &concurrency.to_string()])
        .env("DATABASE_URL", db_url)
        .env("GITLAB_URL", gitlab.base_url())
        .env("GITLAB_TOKEN", SIM_TOKEN)
        .env("GLM_BASE_URL", glm.base_url())
        .env("GLM_API_KEY", SIM_KEY)
        .env("GLM_CONCURRENT_REQUESTS", llm_limit.to_string())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(command)
}

/// Stops a worker process with SIGTERM and waits (at most 30 s) for it to exit.
pub(crate) async fn stop_worker(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

/// Fails with a usage error unless the queue is idle: a benchmark's numbers mean nothing on
/// a database other work is using.
///
/// # Errors
/// The usage error; database errors.
pub(crate) async fn ensure_idle(queue: &Queue) -> anyhow::Result<()> {
    if !queue.backlog().await?.is_empty() {
        return Err(UsageError(
            "the queue has unfinished jobs; run the benchmark against an idle database (set DATABASE_URL to a scratch one)".into(),
        )
        .into());
    }
    Ok(())
}

/// A runtime (and thread) of their own for the simulated servers, as real GitLab and GLM
/// servers would have: the measured worker does not share its thread with them.
///
/// # Errors
/// The runtime could not be built.
pub(crate) fn simulator_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// A field of /proc/self/status in MiB (Linux only).
pub(crate) fn memory_mib(field: &str) -> Option<f64> {
    status_mib("/proc/self/status", field)
}

/// A field of another process's /proc/PID/status in MiB (Linux only), e.g. `VmHWM`, the
/// peak resident set of a worker process, read before it is stopped.
pub(crate) fn process_memory_mib(pid: u32, field: &str) -> Option<f64> {
    status_mib(&format!("/proc/{pid}/status"), field)
}

fn status_mib(path: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
