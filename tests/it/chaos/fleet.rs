//! The fleet of worker processes a chaos scenario runs, kills and restarts.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use uuid::Uuid;

use crate::support::WorkerProcess;

use super::invariants::job_table;
use super::{CONCURRENCY, FLEET, KEY, LEASE, RESCUE_SLACK, Sims, TOKEN};

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
pub(super) async fn run_until_idle(
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
    let mut child = crate::support::reviewq()
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
pub(super) struct Fleet {
    /// The scenario, for messages and log directories.
    name: &'static str,
    /// The test's own connection to the fleet's database.
    pub(super) pool: PgPool,
    /// `DATABASE_URL` for the workers.
    pub(super) url: String,
    /// Environment for the workers (services, limits, timeouts).
    env: Vec<(String, String)>,
    /// Where worker logs go; printed and kept when the test fails, removed when it passes.
    logs: PathBuf,
    /// The [`FLEET`] places, each holding one process at a time.
    slots: Vec<Slot>,
    /// SIGKILLs sent.
    pub(super) kills: u32,
    /// Processes started after a kill.
    pub(super) restarts: u32,
    /// Killed workers, checked until their jobs are rescued.
    dead: Vec<Dead>,
    /// Longest a dead worker's job stayed `running` after the kill.
    pub(super) longest_rescue: Duration,
    /// Set by a clean [`Fleet::stop`]; otherwise the logs are shown on drop.
    passed: bool,
}

impl Fleet {
    /// Starts [`FLEET`] workers on `url` against `sims`, with `extra` environment.
    pub(super) fn start(
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
    pub(super) fn worker_id(&mut self, i: usize) -> Option<Uuid> {
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
    pub(super) async fn kill(&mut self, i: usize) -> Option<Uuid> {
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
    pub(super) fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.restarts += 1;
    }

    /// Checks that no dead worker's job stays `running` longer than a lease (plus the
    /// rescuer's slack) after the kill.
    pub(super) async fn check_rescues(&mut self) {
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
    pub(super) async fn wait_idle(&mut self, timeout: Duration, what: &str) {
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
    pub(super) async fn stop(&mut self) {
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
