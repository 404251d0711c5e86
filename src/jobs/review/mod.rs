//! The review pipeline on the queue: the one module that wires the queue, the GitLab and
//! LLM clients, the ledger and the pure review domain together.
//!
//! A `review` job runs twice:
//! 1. **Plan.** Fetch the MR's latest diff version, skip and chunk the files, and in one
//!    transaction record the review, its chunks and one `review_chunk` child job per chunk;
//!    the job then waits for its children.
//! 2. **Post.** When the last chunk ends, anchor every finding, write the comments to the
//!    outbox, post them (inline first, then one summary note) and finish.
//!
//! A `review_chunk` job renders its prompt and calls the LLM under the fleet-wide limit,
//! recording every HTTP request in the ledger, and stores the answer together with its
//! completion.

mod chunk;
mod outbox;
mod plan;
mod post;
mod posting;
mod round;
mod store;
mod summary;
mod threads;

pub use self::store::{
    CommentProgress, ReportedComment, RoundReport, comment_progress, reported_head, round_report,
};

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    gitlab::{self, GitLabClient, ProjectRef},
    jobs::gitlab_budget::{self, GitLabBudget},
    llm::LlmClient,
    mr_ref::{MrRef, Project},
    queue::{JobContext, JobError, JobResult, NewJob, Outcome, ResultExt},
    review::{ChunkBudget, HeadSha, Marker, MarkerKind, ReviewType},
    spend::SpendPolicy,
};

pub(super) use self::plan::{to_review_diff, version_and_settings};
use self::{
    chunk::review_chunk,
    outbox::build_outbox,
    plan::{Planned, plan},
    post::post,
    round::RoundSettings,
    threads::mr_threads,
};

/// The stable kind name of a merge-request review.
pub const KIND: &str = "review";
/// The stable kind name of one chunk of a review.
pub const CHUNK_KIND: &str = "review_chunk";

/// Attempts a review gets: each one re-reads the MR, and failing chunks have their own
/// budgets, so a handful is plenty.
const REVIEW_MAX_ATTEMPTS: i32 = 5;
/// Attempts a chunk gets at the queue level. Each attempt also retries transient LLM
/// errors itself (see [`LLM_TRIES_PER_ATTEMPT`]).
const CHUNK_MAX_ATTEMPTS: i32 = 4;
/// When GitLab throttles without saying for how long, a review comes back after this.
const THROTTLE_WAIT: Duration = Duration::from_secs(30);
/// Output cap per chunk answer: room for ten findings with suggestions.
pub(super) const MAX_ANSWER_TOKENS: u32 = 4096;

/// Options shared by `enqueue` and `review`.
#[derive(Debug, Clone, Args)]
pub struct ReviewOptions {
    /// What the review looks for: general, security or performance.
    #[arg(long, env = "REVIEWQ_REVIEW_TYPE", default_value = "general")]
    pub review_type: ReviewType,

    /// Review, but post nothing: print the comments instead.
    #[arg(long, env = "REVIEWQ_DRY_RUN")]
    pub dry_run: bool,

    /// Review again even if this head commit was already reviewed (and even if the
    /// project's settings would skip the merge request).
    #[arg(long, env = "REVIEWQ_FORCE")]
    pub force: bool,

    /// Review the whole merge request even when an earlier round reviewed an ancestor of
    /// its head (by default only what changed since is reviewed).
    #[arg(long, env = "REVIEWQ_FULL")]
    pub full: bool,
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
    /// Review the whole MR, not only what changed since the last round.
    #[serde(default)]
    pub full: bool,
}

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
            full: options.full,
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
            self.project, self.iid, self.review_type
        ))
    }

    fn project_ref(&self) -> Result<ProjectRef, JobError> {
        self.project
            .to_string()
            .parse()
            .map_err(|e| JobError::fatal(format!("invalid project {}: {e}", self.project)))
    }

    /// The JSON a review job's payload contains when it is about `project` and `iid`
    /// (either may be left out), for [`crate::queue::JobFilter::payload`]. `None` when
    /// both are.
    pub fn payload_filter(project: Option<&str>, iid: Option<u64>) -> Option<serde_json::Value> {
        let mut filter = serde_json::Map::new();
        if let Some(project) = project {
            filter.insert("project".into(), project.into());
        }
        if let Some(iid) = iid {
            filter.insert("iid".into(), iid.into());
        }
        (!filter.is_empty()).then_some(serde_json::Value::Object(filter))
    }
}

/// A chunk job's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkArgs {
    /// The review.
    pub review_id: i64,
    /// Which chunk.
    pub chunk_index: i32,
}

impl ChunkArgs {
    fn job(self, priority: i16) -> NewJob {
        NewJob::new(
            CHUNK_KIND,
            serde_json::to_value(self).expect("chunk args serialize"),
        )
        .priority(priority)
        .max_attempts(CHUNK_MAX_ATTEMPTS)
    }
}

/// What a review needs besides the queue: the two clients and their settings.
#[derive(Debug, Clone)]
pub struct ReviewDeps {
    pub gitlab: GitLabClient,
    pub llm: LlmClient,
    /// Per-prompt token budget.
    pub budget: ChunkBudget,
    /// Longest a chunk may take in all (waiting for a slot and retries included).
    pub chunk_timeout: Duration,
    /// Most chunks one review sends; files beyond are skipped and listed (a spend cap).
    pub max_chunks: usize,
    /// Daily budgets and the quota pause.
    pub spend: SpendPolicy,
    /// The fleet's GitLab request budget.
    pub gitlab_budget: GitLabBudget,
    /// Who may talk to the bot, and how often.
    pub conversation: crate::jobs::conversation::ConversationPolicy,
}

/// A GitLab failure as a job error. A throttle that outlasted the request's retries is a
/// wait, not a failure: the job comes back after it without using up an attempt.
pub(super) fn gitlab_error(err: gitlab::Error) -> JobError {
    match err {
        gitlab::Error::RateLimited { retry_after, .. } => {
            JobError::throttled(retry_after.unwrap_or(THROTTLE_WAIT), &err).with_source(err)
        }
        err => JobError::new(err.disposition(), &err).with_source(err),
    }
}

/// Where a review is (`reviews.state`, whose CHECK constraint lists the same three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReviewState {
    /// Chunks asked; the outbox not yet written.
    Reviewing,
    /// The outbox is written; comments are being posted.
    Posting,
    /// Posted and summarised.
    Done,
}

impl std::str::FromStr for ReviewState {
    type Err = JobError;

    fn from_str(text: &str) -> Result<Self, JobError> {
        match text {
            "reviewing" => Ok(ReviewState::Reviewing),
            "posting" => Ok(ReviewState::Posting),
            "done" => Ok(ReviewState::Done),
            other => Err(JobError::fatal(format!("unknown review state {other:?}"))),
        }
    }
}

/// The review row as the job needs it.
#[derive(Debug, Clone)]
struct ReviewRow {
    id: i64,
    state: ReviewState,
    head_sha: String,
    base_sha: String,
    start_sha: String,
    skipped: serde_json::Value,
    chunk_count: i32,
    /// [`RoundSettings`] as stored.
    settings: serde_json::Value,
    /// Why the project's settings were not used as written, for the summary.
    settings_problem: Option<String>,
}

/// Runs a review job (either phase).
///
/// # Errors
/// Classified failures of GitLab, the database or the plan.
pub async fn run_review(ctx: &JobContext, deps: &ReviewDeps, args: ReviewArgs) -> JobResult {
    let deps = &ReviewDeps {
        gitlab: gitlab_budget::admitted(&deps.gitlab, ctx, deps.gitlab_budget),
        ..deps.clone()
    };
    let pool = ctx.queue().pool().clone();
    let existing = sqlx::query!(
        r#"select id, state, head_sha, base_sha, start_sha, skipped, chunk_count, settings,
                  settings_problem
           from reviews where job_id = $1"#,
        ctx.job.id().get()
    )
    .fetch_optional(&pool)
    .await
    .retryable()?
    .map(|r| {
        Ok::<_, JobError>(ReviewRow {
            id: r.id,
            state: r.state.parse()?,
            head_sha: r.head_sha,
            base_sha: r.base_sha,
            start_sha: r.start_sha,
            skipped: r.skipped,
            chunk_count: r.chunk_count,
            settings: r.settings,
            settings_problem: r.settings_problem,
        })
    })
    .transpose()?;
    let review = match existing {
        Some(review) => review,
        None => match plan(ctx, deps, &args).await? {
            Planned::Waiting => return Ok(Outcome::Settled),
            Planned::AlreadyReviewed | Planned::NotReviewed => return Ok(Outcome::Succeeded),
            Planned::NothingToReview(review) => review,
        },
    };
    let round = RoundSettings::read(&review.settings);
    let project = args.project_ref()?;
    let threads = mr_threads(deps, &project, args.iid, args.review_type).await?;
    if review.state == ReviewState::Reviewing {
        build_outbox(ctx, &args, &review, &round, &threads).await?;
    }
    post(ctx, deps, &args, &review, &round, &threads).await
}

fn marker(review_type: ReviewType, head: &HeadSha, kind: MarkerKind) -> Marker {
    Marker {
        review_type,
        head_sha: head.clone(),
        kind,
        fingerprint: None,
    }
}

fn head_sha(review: &ReviewRow) -> Result<HeadSha, JobError> {
    HeadSha::parse(&review.head_sha).map_err(JobError::fatal)
}

/// Runs a chunk job: one LLM review of one chunk, under the fleet limit and the chunk
/// timeout.
///
/// # Errors
/// Classified LLM, database and timeout failures.
pub async fn run_chunk(ctx: &JobContext, deps: &ReviewDeps, args: ChunkArgs) -> JobResult {
    match tokio::time::timeout(deps.chunk_timeout, review_chunk(ctx, deps, args)).await {
        Ok(result) => result,
        Err(_) => Err(JobError::retryable(format!(
            "the chunk took longer than CHUNK_TIMEOUT ({} s)",
            deps.chunk_timeout.as_secs()
        ))),
    }
}
