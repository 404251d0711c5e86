//! The no-op job: does nothing by default; its arguments make it sleep, fail, spawn
//! children or hold a fleet-limit slot, so tests and benchmarks can drive every path of
//! the queue through a real worker process.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::{JobContext, JobError, JobResult, NewJob, Outcome, Queue, ResultExt};

/// The stable kind name.
pub const KIND: &str = "noop";

/// What the no-op job should do. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoopArgs {
    /// Sleep this long before finishing (also before a requested retryable failure).
    pub sleep_ms: u64,
    /// Fail (retryably) while fewer than this many attempts have failed.
    pub fail_times: u32,
    /// Fail fatally.
    pub fatal: bool,
    /// Ask to be retried after this delay (like a rate-limited API would).
    pub retry_after_ms: Option<u64>,
    /// On the first run, spawn this many no-op children and wait for them.
    pub children: u32,
    /// Arguments for the children.
    pub child: Option<Box<NoopArgs>>,
    /// Hold a slot of this fleet-wide limit while sleeping and probing.
    pub resource: Option<String>,
    /// While holding the slot, GET this URL (a test server counting concurrent holders).
    pub probe_url: Option<String>,
}

impl NoopArgs {
    /// A job row for these arguments.
    pub fn job(&self) -> NewJob {
        NewJob::new(
            KIND,
            serde_json::to_value(self).expect("noop args serialize"),
        )
    }
}

/// Runs a no-op job.
///
/// # Errors
/// Whatever the arguments ask for.
pub async fn run(ctx: &JobContext, http: &reqwest::Client, args: NoopArgs) -> JobResult {
    if args.children > 0 {
        let counts = ctx.queue().child_counts(ctx.job.id()).await?;
        if counts.total() == 0 {
            let child = args.child.as_deref().cloned().unwrap_or_default().job();
            let children = vec![child; args.children as usize];
            let mut tx = ctx.queue().pool().begin().await.retryable()?;
            Queue::await_children(&mut tx, ctx.lease(), &children).await?;
            tx.commit().await.retryable()?;
            return Ok(Outcome::Settled);
        }
    }
    if args.fatal {
        return Err(JobError::fatal("noop job asked to fail fatally"));
    }
    let failed_so_far = u32::try_from(ctx.job.failed_attempts).unwrap_or(u32::MAX);
    if failed_so_far < args.fail_times {
        // A failing attempt runs as long as a succeeding one: a test watching for the
        // attempt to be running must not race a failure recorded within milliseconds.
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        return Err(JobError::retryable(format!(
            "noop job asked to fail {} times (failure {})",
            args.fail_times,
            failed_so_far + 1
        )));
    }
    if let Some(ms) = args.retry_after_ms
        && ctx.job.failed_attempts == 0
    {
        return Err(JobError::retry_after(
            Duration::from_millis(ms),
            "noop job asked to be retried later",
        ));
    }
    let permit = match &args.resource {
        Some(resource) => Some(ctx.acquire(resource).await?),
        None => None,
    };
    if let Some(url) = &args.probe_url {
        http.get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .retryable()?;
    }
    if args.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
    }
    if let Some(permit) = permit {
        permit.release().await?;
    }
    Ok(Outcome::Succeeded)
}
