//! The review job: its arguments, as producers enqueue them.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{
    mr_ref::{MrRef, Project},
    queue::NewJob,
};

/// The stable kind name of a merge-request review.
pub const KIND: &str = "review";

/// What the review looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReviewType {
    /// Correctness, clarity and maintainability.
    General,
    /// Vulnerabilities and unsafe handling of input and secrets.
    Security,
    /// Algorithmic cost, allocations, queries and I/O.
    Performance,
}

impl ReviewType {
    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::General => "general",
            Self::Security => "security",
            Self::Performance => "performance",
        }
    }
}

/// Options shared by `enqueue` and `review`.
#[derive(Debug, Clone, Args)]
pub struct ReviewOptions {
    /// What the review looks for.
    #[arg(long, env = "REVIEWQ_REVIEW_TYPE", value_enum, default_value_t = ReviewType::General)]
    pub review_type: ReviewType,

    /// Review, but post nothing: print the comments instead.
    #[arg(long, env = "REVIEWQ_DRY_RUN")]
    pub dry_run: bool,

    /// Review again even if this head commit was already reviewed.
    #[arg(long, env = "REVIEWQ_FORCE")]
    pub force: bool,
}

/// A review job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewArgs {
    /// `project!iid`, for people reading `status`.
    pub mr: String,
    /// The project, by id or path.
    pub project: Project,
    /// The merge request's IID.
    pub iid: u64,
    /// What to look for.
    pub review_type: ReviewType,
    /// Post nothing; record the comments as not posted.
    pub dry_run: bool,
    /// Review even an already reviewed head commit.
    pub force: bool,
}

/// Attempts a review gets: each one re-reads the MR, and failing chunks have their own
/// budgets, so a handful is plenty.
const REVIEW_MAX_ATTEMPTS: i32 = 5;

impl ReviewArgs {
    /// Arguments for reviewing `mr` with `options`.
    pub fn new(mr: MrRef, options: &ReviewOptions) -> Self {
        Self {
            mr: mr.to_string(),
            project: mr.project,
            iid: mr.iid,
            review_type: options.review_type,
            dry_run: options.dry_run,
            force: options.force,
        }
    }

    /// The job row. At most one unfinished review per MR, type and mode: enqueueing it
    /// again (a webhook redelivery, an impatient user) returns the existing job.
    pub fn job(&self, priority: i16) -> NewJob {
        let mode = if self.dry_run { "dry-run" } else { "post" };
        NewJob::new(
            KIND,
            serde_json::to_value(self).expect("review args serialize"),
        )
        .priority(priority)
        .max_attempts(REVIEW_MAX_ATTEMPTS)
        .dedupe_key(format!(
            "{KIND}:{}!{}:{}:{mode}",
            self.project,
            self.iid,
            self.review_type.as_str()
        ))
    }
}
