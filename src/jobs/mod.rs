//! The job kinds reviewq runs, and the dispatcher the worker calls.
//!
//! Dispatch is a `match` on [`JobKind`], parsed from the row's stable `kind` text and its
//! payload. An unknown kind or a payload that does not parse fails the job for good: it
//! would fail the same way on every attempt.

pub mod conversation;
pub mod describe;
pub mod gitlab_budget;
mod llm_call;
pub mod noop;
pub mod review;

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::queue::{JobContext, JobError, JobHandler, JobResult};

/// The fleet-wide limit every LLM call holds a slot of (`limits` row name). Jobs take it and
/// the worker command sizes it, so it is named here rather than in either.
pub const LLM_RESOURCE: &str = "llm";

/// The benchmark adapter's job kind (`reviewq bench adapter`). Named here so that this
/// dispatcher can refuse it by name: only the adapter's own handler runs it, and no command
/// but the adapter enqueues it.
pub const BENCH_KIND: &str = "bench";

/// A single-statement write fenced by the job's lease: it matches no row once another
/// attempt owns the job.
pub(crate) fn fenced(rows: u64, ctx: &JobContext) -> Result<(), JobError> {
    if rows == 0 {
        return Err(crate::queue::Error::LeaseLost(ctx.lease()).into());
    }
    Ok(())
}

/// Every kind of job, with its arguments.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// A job that does nothing (or sleeps, fails or holds a limit slot as told): for
    /// tests, benchmarks and checking a deployment.
    Noop(noop::NoopArgs),
    /// Review a merge request.
    Review(review::ReviewArgs),
    /// Review one chunk of a merge request (a review's subtask).
    ReviewChunk(review::ChunkArgs),
    /// Write the type, summary and walkthrough into a merge request's description.
    Describe(describe::DescribeArgs),
    /// Answer one comment people wrote on a merge request.
    Conversation(conversation::ConversationArgs),
}

impl JobKind {
    /// Parses a claimed job's kind and payload.
    ///
    /// # Errors
    /// A fatal job error naming the unknown kind or the payload problem.
    pub fn parse(kind: &str, payload: &serde_json::Value) -> Result<Self, JobError> {
        match kind {
            noop::KIND => args(kind, payload).map(Self::Noop),
            review::KIND => args(kind, payload).map(Self::Review),
            review::CHUNK_KIND => args(kind, payload).map(Self::ReviewChunk),
            describe::KIND => args(kind, payload).map(Self::Describe),
            conversation::KIND => args(kind, payload).map(Self::Conversation),
            BENCH_KIND => Err(JobError::fatal(
                "bench jobs run only under `reviewq bench adapter`; this database is a benchmark's",
            )),
            other => Err(JobError::fatal(format!(
                "unknown job kind {other:?}: this worker version cannot run it"
            ))),
        }
    }
}

fn args<T: DeserializeOwned>(kind: &str, payload: &serde_json::Value) -> Result<T, JobError> {
    T::deserialize(payload)
        .map_err(|e| JobError::fatal(format!("invalid payload for a {kind} job: {e}")))
}

/// The application's job handler: parses the kind and runs it.
#[derive(Debug, Clone, Default)]
pub struct Dispatcher {
    http: reqwest::Client,
    /// GitLab and LLM clients; `None` on a worker set up for no-op jobs only.
    review: Option<Arc<review::ReviewDeps>>,
}

impl Dispatcher {
    /// A dispatcher that runs no-op jobs only (benchmarks, queue tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// A dispatcher for every job kind.
    pub fn with_review(deps: review::ReviewDeps) -> Self {
        Self {
            http: reqwest::Client::new(),
            review: Some(Arc::new(deps)),
        }
    }

    fn review_deps(&self) -> Result<&review::ReviewDeps, JobError> {
        self.review.as_deref().ok_or_else(|| {
            JobError::fatal("this worker was started without GitLab and LLM settings")
        })
    }
}

impl JobHandler for Dispatcher {
    async fn handle(&self, ctx: JobContext) -> JobResult {
        match JobKind::parse(&ctx.job.kind, &ctx.job.payload)? {
            JobKind::Noop(args) => noop::run(&ctx, &self.http, args).await,
            JobKind::Review(args) => review::run_review(&ctx, self.review_deps()?, args).await,
            JobKind::ReviewChunk(args) => review::run_chunk(&ctx, self.review_deps()?, args).await,
            JobKind::Describe(args) => {
                describe::run_describe(&ctx, self.review_deps()?, args).await
            }
            JobKind::Conversation(args) => {
                conversation::run_conversation(&ctx, self.review_deps()?, args).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::Disposition;

    #[test]
    fn a_bench_job_is_refused_fatally_by_name_and_an_unknown_kind_names_itself() {
        let bench = JobKind::parse(BENCH_KIND, &serde_json::json!({})).unwrap_err();
        assert_eq!(bench.disposition, Disposition::Fatal);
        assert!(bench.message.contains("bench adapter"), "{bench}");

        let unknown = JobKind::parse("reindex", &serde_json::json!({})).unwrap_err();
        assert_eq!(unknown.disposition, Disposition::Fatal);
        assert!(unknown.message.contains("\"reindex\""), "{unknown}");
    }
}
