//! The job kinds reviewq runs, and the dispatcher the worker calls.
//!
//! Dispatch is a `match` on [`JobKind`], parsed from the row's stable `kind` text and its
//! payload. An unknown kind or a payload that does not parse fails the job for good: it
//! would fail the same way on every attempt.

pub mod noop;
pub mod review;

use serde::de::DeserializeOwned;

use crate::queue::{JobContext, JobError, JobHandler, JobResult};

/// Every kind of job, with its arguments.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// A job that does nothing (or sleeps, fails or holds a limit slot as told): for
    /// tests, benchmarks and checking a deployment.
    Noop(noop::NoopArgs),
}

impl JobKind {
    /// Parses a claimed job's kind and payload.
    ///
    /// # Errors
    /// A fatal job error naming the unknown kind or the payload problem.
    pub fn parse(kind: &str, payload: &serde_json::Value) -> Result<Self, JobError> {
        match kind {
            noop::KIND => args(kind, payload).map(Self::Noop),
            other => Err(JobError::fatal(format!(
                "unknown job kind {other:?}: this worker version cannot run it"
            ))),
        }
    }
}

fn args<T: DeserializeOwned>(kind: &str, payload: &serde_json::Value) -> Result<T, JobError> {
    serde_json::from_value(payload.clone())
        .map_err(|e| JobError::fatal(format!("invalid payload for a {kind} job: {e}")))
}

/// The application's job handler: parses the kind and runs it.
#[derive(Debug, Clone, Default)]
pub struct Dispatcher {
    http: reqwest::Client,
}

impl Dispatcher {
    /// A dispatcher for every job kind.
    pub fn new() -> Self {
        Self::default()
    }
}

impl JobHandler for Dispatcher {
    async fn handle(&self, ctx: JobContext) -> JobResult {
        match JobKind::parse(&ctx.job.kind, &ctx.job.payload)? {
            JobKind::Noop(args) => noop::run(&ctx, &self.http, args).await,
        }
    }
}
