//! Shared test plumbing: the database for tests, worker processes, waiting, and (in
//! [`harness`]) the review pipeline's harness.

mod harness;

pub use harness::{Harness, KEY, PROJECT, TOKEN, mixed_mr, options};

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::process::{Child, Command};

/// Starts a throwaway Postgres from the local binaries when `DATABASE_URL` is unset, so
/// `cargo test` works on a machine with PostgreSQL installed but nothing configured.
/// Runs before `main`, while the process is still single-threaded.
#[ctor::ctor(unsafe)]
fn database_for_tests() {
    if std::env::var_os("DATABASE_URL").is_some() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-postgres");
    let cluster = reviewq::localdb::Cluster::new(&dir)
        .and_then(|c| c.start().map(|()| c))
        .unwrap_or_else(|e| {
            panic!("DATABASE_URL is unset and no throwaway Postgres could be started: {e}")
        });
    // SAFETY: constructors run before main, so no other thread reads the environment.
    unsafe { std::env::set_var("DATABASE_URL", cluster.url()) };
}

/// The URL of the database behind `pool` (each `#[sqlx::test]` gets its own).
pub fn url_of(pool: &PgPool) -> String {
    let base: url::Url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL")
        .parse()
        .expect("DATABASE_URL is a URL");
    let db = pool
        .connect_options()
        .get_database()
        .expect("test pools name their database")
        .to_owned();
    let mut url = base;
    url.set_path(&db);
    url.to_string()
}

/// The `reviewq` binary built for these tests.
pub fn reviewq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reviewq"));
    for var in [
        "DATABASE_URL",
        "GITLAB_URL",
        "GITLAB_TOKEN",
        "GLM_API_KEY",
        "GLM_BASE_URL",
        "GLM_MODEL",
        "GLM_CONCURRENT_REQUESTS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A `reviewq worker` process.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    /// Starts `reviewq worker` on `url` with extra flags.
    pub fn start(url: &str, args: &[&str]) -> Self {
        // Settings a worker needs; these tests run no-op jobs, which never use them.
        Self::start_with(
            url,
            args,
            &[
                ("GITLAB_URL", "http://127.0.0.1:9"),
                ("GITLAB_TOKEN", "unused-gitlab-token"),
                ("GLM_API_KEY", "unused-glm-key"),
            ],
        )
    }

    /// Starts `reviewq worker` on `url` with extra flags and environment.
    pub fn start_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = reviewq()
            .arg("worker")
            .args(args)
            .env("DATABASE_URL", url)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start reviewq worker");
        Self { child }
    }

    /// Starts `reviewq worker` on `url` with extra flags and environment, appending its log
    /// (stderr) to `log` so a failed test can show what each worker did.
    pub fn start_logged(url: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the worker's log file");
        let child = reviewq()
            .arg("worker")
            .args(args)
            .env("DATABASE_URL", url)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start reviewq worker");
        Self { child }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("worker is running")).expect("pid fits")
    }

    /// Sends a signal (by name, e.g. "KILL", "TERM") with the system's `kill`.
    pub async fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("worker exits in time")
            .expect("wait for worker")
    }
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many jobs are in `state`.
pub async fn count_in_state(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state::text = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count jobs")
}

/// Makes a running job's lease lapse now, as if its worker had stopped heartbeating.
pub async fn lapse_lease(pool: &PgPool, id: reviewq::queue::JobId) {
    sqlx::query("update jobs set lease_expires_at = now() - interval '1 second' where id = $1")
        .bind(id.get())
        .execute(pool)
        .await
        .expect("lapse the lease");
}

/// A finished process's standard output and error, one after the other, for messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
