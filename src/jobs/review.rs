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

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    disposition::Disposition,
    gitlab::{self, DiffShas, GitLabClient, LineAnchor, ProjectRef},
    jobs::LLM_RESOURCE,
    jobs::gitlab_budget::{self, GitLabBudget},
    ledger::{self, CallContext},
    llm::{self, ChatRequest, LlmClient, Message},
    mr_ref::{MrRef, Project},
    queue::{
        Error as QueueError, JobContext, JobError, JobResult, NewJob, Outcome, Queue, Waiting,
    },
    review::{
        self, Anchor, Chunk, ChunkBudget, ChunkConfig, FileDiff, Finding, FindingKey, Fingerprint,
        HeadSha, Instructions, Language, ListedBecause, ListedFinding, LivingSummary, Marker,
        MarkerKind, ParsedFile, PromptOptions, ReviewType, Round, RoundKind, Screening, Severity,
        SkippedFile, UnanchoredReason,
        chunk::{split_for_findings, split_in_two},
        diff::Content,
        render::FailedChunk,
        settings::{ProjectSettings, PublishMode},
    },
    spend::{self, Admission, SpendPolicy},
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
/// LLM requests one chunk attempt makes for transient errors (rate limit, overload, 5xx)
/// before handing the retry to the queue's slower backoff.
pub(super) const LLM_TRIES_PER_ATTEMPT: u32 = 4;
/// Answers that are not the JSON object asked for: retried once, then reported.
pub(super) const UNUSABLE_ANSWERS_TOLERATED: u32 = 1;
/// A `Retry-After` longer than this is not slept inside the job: the job is rescheduled.
pub(super) const MAX_INLINE_WAIT: Duration = Duration::from_secs(20);
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
}

/// A GitLab failure as a job error. A throttle that outlasted the request's retries is a
/// wait, not a failure: the job comes back after it without using up an attempt.
pub(super) fn gitlab_error(err: gitlab::Error) -> JobError {
    match err {
        gitlab::Error::RateLimited { retry_after, .. } => {
            JobError::throttled(retry_after.unwrap_or(THROTTLE_WAIT), err)
        }
        err => JobError::new(err.disposition(), err),
    }
}

pub(super) fn db(err: sqlx::Error) -> JobError {
    JobError::retryable(format!("database error: {err}"))
}

mod posting;

// ---------------------------------------------------------------------------------------
// The review job.

/// The review row as the job needs it.
#[derive(Debug, Clone)]
struct ReviewRow {
    id: i64,
    state: String,
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
    let existing = sqlx::query_as!(
        ReviewRow,
        r#"select id, state, head_sha, base_sha, start_sha, skipped, chunk_count, settings,
                  settings_problem
           from reviews where job_id = $1"#,
        ctx.job.id().get()
    )
    .fetch_optional(&pool)
    .await
    .map_err(db)?;
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
    if review.state == "reviewing" {
        build_outbox(ctx, &args, &review, &round, &threads).await?;
    }
    post(ctx, deps, &args, &review, &round, &threads).await
}

enum Planned {
    /// Chunk jobs were created; the review job waits for them.
    Waiting,
    /// The project's settings exclude this MR or review type (and `--force` was not given).
    NotReviewed,
    /// This head was reviewed before (and `--force` was not given).
    AlreadyReviewed,
    /// Every file was skipped: go straight to posting the summary.
    NothingToReview(ReviewRow),
}

pub(super) fn to_review_diff(file: gitlab::DiffFile) -> FileDiff {
    FileDiff {
        old_path: file.old_path,
        new_path: file.new_path,
        a_mode: file.a_mode,
        b_mode: file.b_mode,
        diff: file.diff,
        new_file: file.new_file,
        renamed_file: file.renamed_file,
        deleted_file: file.deleted_file,
        generated_file: file.generated_file,
        collapsed: file.collapsed,
        too_large: file.too_large,
    }
}

async fn plan(ctx: &JobContext, deps: &ReviewDeps, args: &ReviewArgs) -> Result<Planned, JobError> {
    let project = args.project_ref()?;
    let (mr, _) = deps
        .gitlab
        .merge_request_with_diff_refs(&project, args.iid)
        .await
        .map_err(gitlab_error)?;
    let version = deps
        .gitlab
        .latest_version(&project, args.iid)
        .await
        .map_err(gitlab_error)?;
    let shas = DiffShas::from(&version);
    let pool = ctx.queue().pool();
    let review_type = args.review_type.as_str();
    let project_text = args.project.to_string();
    let iid = i64::try_from(args.iid).map_err(JobError::fatal)?;
    let description = mr.description.clone().unwrap_or_default();

    // The project's settings come from its target branch (the version's start commit), not
    // from the MR's head: an MR must not be able to switch off or steer its own review.
    let (settings, settings_problem) =
        load_settings(deps, pool, &project, &project_text, &shas.start_sha).await?;
    if !args.force {
        if let Err(reason) = settings.should_review(mr.draft, &mr.labels) {
            tracing::info!(mr = %args.mr, %reason, "not reviewed by the project's settings; --force reviews it");
            return Ok(Planned::NotReviewed);
        }
        if !settings.review_types().contains(&args.review_type) {
            tracing::info!(mr = %args.mr, review_type, "the project's review_types do not include this type; --force reviews it");
            return Ok(Planned::NotReviewed);
        }
    }

    if !args.force && !args.dry_run {
        let reviewed = sqlx::query_scalar!(
            r#"select exists (select 1 from reviews where project = $1 and mr_iid = $2
                   and head_sha = $3 and review_type = $4 and state = 'done' and not dry_run)
               as "e!""#,
            project_text,
            iid,
            shas.head_sha,
            review_type,
        )
        .fetch_one(pool)
        .await
        .map_err(db)?;
        if reviewed {
            tracing::info!(mr = %args.mr, head = %shas.head_sha, "head already reviewed; --force reviews it again");
            return Ok(Planned::AlreadyReviewed);
        }
    }

    let diffs: Vec<FileDiff> = deps
        .gitlab
        .diffs(&project, args.iid)
        .await
        .map_err(gitlab_error)?
        .into_iter()
        .map(to_review_diff)
        .collect();
    let since = if settings.incremental() && !args.full {
        incremental_base(deps, pool, args, &project, &shas.head_sha).await?
    } else {
        None
    };
    let round = RoundSettings::new(&settings, &description);
    let options = round.prompt_options();
    let config = ChunkConfig {
        budget: deps.budget,
        skip: settings.skip_rules(),
        max_chunks: deps.max_chunks,
    };
    let since_sha = since.as_ref().map(|(sha, _)| sha.clone());
    // Parsing and packing a giant MR is CPU work: keep it off the async thread.
    let plan = tokio::task::spawn_blocking(move || match since {
        None => review::chunk::plan_with(&diffs, &config, &options),
        Some((_, delta)) => {
            let (mut skipped, mut files) = (Vec::new(), Vec::new());
            for screening in diffs.iter().map(|d| config.skip.screen(d)) {
                match screening {
                    Screening::Review(file) => files.push(file),
                    Screening::Skip(file) => skipped.push(Screening::Skip(file)),
                }
            }
            let delta: Vec<ParsedFile> = delta.iter().map(review::diff::parse).collect();
            let restricted = review::restrict(&files, &delta);
            review::chunk::pack(
                skipped
                    .into_iter()
                    .chain(restricted.files.into_iter().map(Screening::Review)),
                &config,
                &options,
            )
        }
    })
    .await
    .map_err(|e| JobError::retryable(format!("planning the chunks failed: {e}")))?;
    let skipped = serde_json::to_value(&plan.skipped).map_err(JobError::fatal)?;
    let chunk_count = i32::try_from(plan.chunks.len()).unwrap_or(i32::MAX);
    let file_count = i32::try_from(plan.reviewed.len()).unwrap_or(i32::MAX);
    let scope = if since_sha.is_some() {
        "incremental"
    } else {
        "full"
    };

    let round_json = serde_json::to_value(&round).map_err(JobError::fatal)?;
    let mut tx = pool.begin().await.map_err(db)?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    let review_id = sqlx::query_scalar!(
        r#"
        insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha, base_sha,
            start_sha, mr_title, mr_description, skipped, chunk_count, file_count, scope,
            since_sha, settings_problem, settings)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
        returning id
        "#,
        ctx.job.id().get(),
        project_text,
        iid,
        review_type,
        args.dry_run,
        shas.head_sha,
        shas.base_sha,
        shas.start_sha,
        mr.title,
        description,
        skipped,
        chunk_count,
        file_count,
        scope,
        since_sha,
        settings_problem,
        round_json,
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    tracing::info!(mr = %args.mr, review.id = review_id, chunks = chunk_count, skipped = plan.skipped.len(), scope, "review planned");

    let priority = job_priority(pool, ctx).await?;
    // The other review types the project asks for run as reviews of their own.
    if args.review_type == ReviewType::General && !args.dry_run {
        for &other in settings.review_types() {
            if other != args.review_type {
                let sibling = ReviewArgs {
                    review_type: other,
                    ..args.clone()
                };
                Queue::enqueue(&mut *tx, &sibling.job(priority)).await?;
            }
        }
        // The description is a job of its own, asked for by the settings or by markers the
        // author put in the description.
        if settings.describe() || review::describe::has_markers(&description) {
            let describe = super::describe::DescribeArgs {
                mr: args.mr.clone(),
                project: args.project.clone(),
                iid: args.iid,
            };
            Queue::enqueue(&mut *tx, &describe.job(priority)).await?;
        }
    }

    if plan.chunks.is_empty() {
        tx.commit().await.map_err(db)?;
        return Ok(Planned::NothingToReview(ReviewRow {
            id: review_id,
            state: "reviewing".into(),
            head_sha: shas.head_sha,
            base_sha: shas.base_sha,
            start_sha: shas.start_sha,
            skipped: serde_json::to_value(&plan.skipped).map_err(JobError::fatal)?,
            chunk_count: 0,
            settings: round_json,
            settings_problem,
        }));
    }
    let jobs: Vec<NewJob> = (0..chunk_count)
        .map(|chunk_index| {
            ChunkArgs {
                review_id,
                chunk_index,
            }
            .job(priority)
        })
        .collect();
    let ids = Queue::await_children(&mut tx, ctx.lease(), &jobs).await?;
    insert_chunks(&mut tx, review_id, plan.chunks.iter().zip(ids)).await?;
    tx.commit().await.map_err(db)?;
    Ok(Planned::Waiting)
}

/// The project's settings: its `.reviewq.toml` at `git_ref`, then the operator's override
/// from `project_settings`. A broken file or override is not an error: the defaults (or the
/// file alone) are used and the problem is returned for the summary.
pub(super) async fn load_settings(
    deps: &ReviewDeps,
    pool: &PgPool,
    project: &ProjectRef,
    project_text: &str,
    git_ref: &str,
) -> Result<(ProjectSettings, Option<String>), JobError> {
    let mut problem = None;
    let mut settings = match deps
        .gitlab
        .get_file_raw(project, review::settings::SETTINGS_FILE, git_ref)
        .await
    {
        Ok(bytes) => match std::str::from_utf8(&bytes).map(ProjectSettings::from_toml) {
            Ok(Ok(settings)) => settings,
            Ok(Err(err)) => {
                problem = Some(format!("{err}; the defaults are used"));
                ProjectSettings::default()
            }
            Err(_) => {
                problem = Some(format!(
                    "`{}` is not UTF-8 text; the defaults are used",
                    review::settings::SETTINGS_FILE
                ));
                ProjectSettings::default()
            }
        },
        Err(gitlab::Error::NotFound { .. }) => ProjectSettings::default(),
        Err(err) => return Err(gitlab_error(err)),
    };
    let overrides = sqlx::query_scalar!(
        "select overrides from project_settings where project = $1",
        project_text
    )
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    if let Some(overrides) = overrides {
        match settings.clone().overridden_by(&overrides) {
            Ok(overridden) => settings = overridden,
            Err(err) => {
                problem = Some(format!(
                    "the operator's override in project_settings: {err}; it is ignored"
                ));
            }
        }
    }
    if let Some(problem) = &problem {
        tracing::warn!(project = %project_text, %problem, "project settings problem");
    }
    Ok((settings, problem))
}

/// The head of the last finished round, with what changed since, when only that needs a
/// review: the MR still contains that head (no force-push rewrote it) and GitLab compared
/// the two in full. `None` means a full review.
async fn incremental_base(
    deps: &ReviewDeps,
    pool: &PgPool,
    args: &ReviewArgs,
    project: &ProjectRef,
    head: &str,
) -> Result<Option<(String, Vec<FileDiff>)>, JobError> {
    let previous = sqlx::query_scalar!(
        r#"select head_sha from reviews where project = $1 and mr_iid = $2 and review_type = $3
               and state = 'done' and not dry_run
           order by finished_at desc limit 1"#,
        args.project.to_string(),
        i64::try_from(args.iid).map_err(JobError::fatal)?,
        args.review_type.as_str(),
    )
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    // No round in this database (a CI job on a fresh local cluster): the living summary
    // note on the MR names the head its last round reviewed.
    let previous = match previous {
        Some(previous) => Some(previous),
        None => deps
            .gitlab
            .notes(project, args.iid)
            .await
            .map_err(gitlab_error)?
            .iter()
            .filter_map(|n| review::find_marker(&n.body))
            .find(|m| m.review_type == args.review_type && m.kind == MarkerKind::Summary)
            .map(|m| m.head_sha.as_str().to_owned()),
    };
    let Some(previous) = previous.filter(|p| p != head) else {
        return Ok(None);
    };
    let commits = deps
        .gitlab
        .mr_commits(project, args.iid)
        .await
        .map_err(gitlab_error)?;
    if !commits.iter().any(|c| c.id == previous) {
        tracing::info!(mr = %args.mr, %previous, "the last reviewed head is gone from the MR (force-push or rebase): full review");
        return Ok(None);
    }
    let compare = match deps.gitlab.compare(project, &previous, head).await {
        Ok(compare) => compare,
        Err(err) if err.disposition() == Disposition::Fatal => {
            tracing::warn!(mr = %args.mr, error = %err, "GitLab could not compare the heads: full review");
            return Ok(None);
        }
        Err(err) => return Err(gitlab_error(err)),
    };
    if compare.is_partial() {
        tracing::info!(mr = %args.mr, "GitLab's comparison is incomplete: full review");
        return Ok(None);
    }
    Ok(Some((
        previous,
        compare.diffs.into_iter().map(to_review_diff).collect(),
    )))
}

/// What a round needs of the project's settings after planning, stored on the review so
/// every chunk job and the posting phase see the same values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RoundSettings {
    /// Language of the comments.
    language: Option<String>,
    /// The project's custom instructions.
    instructions: Option<String>,
    /// Findings below are neither posted nor listed.
    min_severity: Option<Severity>,
    /// Inline comments per round; `None` (older rows): no limit.
    max_inline_comments: Option<usize>,
    /// Resolve the bot's threads whose code changed.
    resolve_outdated: bool,
    /// Stage inline comments as draft notes and publish them at once.
    publish_drafts: bool,
    /// `output = "codequality"`: findings go to the Code Quality report only, none inline.
    #[serde(default)]
    code_quality_only: bool,
}

impl RoundSettings {
    fn new(settings: &ProjectSettings, description: &str) -> Self {
        let options = settings.prompt_options(description);
        Self {
            language: options.language.map(|l| l.to_string()),
            instructions: options.instructions.map(|i| i.as_str().to_owned()),
            min_severity: Some(settings.min_severity()),
            max_inline_comments: Some(settings.max_inline_comments()),
            resolve_outdated: settings.resolve_outdated(),
            publish_drafts: settings.publish() == PublishMode::Draft,
            code_quality_only: !settings.output().posts_inline(),
        }
    }

    fn read(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_default()
    }

    fn prompt_options(&self) -> PromptOptions {
        PromptOptions {
            language: self
                .language
                .as_deref()
                .and_then(|l| Language::parse(l).ok()),
            instructions: self
                .instructions
                .as_deref()
                .and_then(|i| Instructions::parse(i).ok()),
        }
    }
}

pub(super) async fn job_priority(pool: &PgPool, ctx: &JobContext) -> Result<i16, JobError> {
    sqlx::query_scalar!(
        "select priority from jobs where id = $1",
        ctx.job.id().get()
    )
    .fetch_one(pool)
    .await
    .map_err(db)
}

/// Stores chunks with their job ids in one statement (one round trip whatever their
/// number; large statements also pay TCP's small-packet delay once, not per chunk).
async fn insert_chunks<'c>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    review_id: i64,
    chunks: impl Iterator<Item = (&'c Chunk, crate::queue::JobId)>,
) -> Result<(), JobError> {
    let (mut indexes, mut job_ids, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    for (chunk, job_id) in chunks {
        indexes.push(i32::try_from(chunk.index).map_err(JobError::fatal)?);
        job_ids.push(job_id.get());
        bodies.push(serde_json::to_string(chunk).map_err(JobError::fatal)?);
    }
    sqlx::query!(
        r#"
        insert into review_chunks (review_id, chunk_index, job_id, chunk)
        select $1, i, j, c::json from unnest($2::int4[], $3::int8[], $4::text[]) as t(i, j, c)
        "#,
        review_id,
        &indexes,
        &job_ids,
        &bodies,
    )
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// One stored chunk with the findings of its answer (none if it has no answer).
struct ChunkResult {
    chunk: Chunk,
    findings: Option<Vec<Finding>>,
}

async fn chunk_results(pool: &PgPool, review_id: i64) -> Result<Vec<ChunkResult>, JobError> {
    let rows = sqlx::query!(
        r#"
        select chunk, findings from review_chunks
        where review_id = $1 and not superseded
        order by chunk_index
        "#,
        review_id
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|r| {
            Ok(ChunkResult {
                chunk: serde_json::from_value(r.chunk).map_err(JobError::fatal)?,
                findings: r
                    .findings
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(JobError::fatal)?,
            })
        })
        .collect()
}

/// What the summary needs of a chunk: its answer's summary, the findings its answer lost,
/// and, if its job did not succeed, which files it held and why it failed.
struct ChunkOutcome {
    summary: Option<String>,
    dropped: i32,
    /// Findings past the per-answer hard limit.
    beyond_limit: i32,
    failed: Option<FailedChunk>,
}

/// Every live chunk's [`ChunkOutcome`]. A chunk's content (most of a review's stored bytes:
/// about 1 MB for 60 chunks) is read only for the chunks that failed.
async fn chunk_outcomes(pool: &PgPool, review_id: i64) -> Result<Vec<ChunkOutcome>, JobError> {
    let rows = sqlx::query!(
        r#"
        select c.summary, coalesce(c.dropped_findings, 0) as "dropped!",
               c.findings_beyond_limit as beyond_limit,
               coalesce(j.state::text, 'failed') as "job_state!", j.last_error,
               case when j.state is distinct from 'succeeded' then c.chunk end as failed_chunk
        from review_chunks c left join jobs j on j.id = c.job_id
        where c.review_id = $1 and not c.superseded
        order by c.chunk_index
        "#,
        review_id
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|r| {
            let failed = match r.failed_chunk {
                Some(chunk) => {
                    let chunk: Chunk = serde_json::from_value(chunk).map_err(JobError::fatal)?;
                    Some(FailedChunk {
                        index: chunk.index,
                        total: chunk.total,
                        paths: chunk.files.into_iter().map(|f| f.new_path).collect(),
                        reason: r
                            .last_error
                            .unwrap_or_else(|| format!("the chunk job ended {}", r.job_state)),
                    })
                }
                None => None,
            };
            Ok(ChunkOutcome {
                summary: r.summary,
                dropped: r.dropped,
                beyond_limit: r.beyond_limit,
                failed,
            })
        })
        .collect()
}

/// The reviewed files, rebuilt from the chunks (a file split across chunks is joined).
fn reviewed_files(chunks: &[ChunkResult]) -> Vec<ParsedFile> {
    let mut files: Vec<ParsedFile> = Vec::new();
    for c in chunks {
        for f in &c.chunk.files {
            match files
                .iter_mut()
                .find(|p| p.old_path == f.old_path && p.new_path == f.new_path)
            {
                Some(p) => p.hunks.extend(f.hunks.iter().cloned()),
                None => files.push(ParsedFile {
                    old_path: f.old_path.clone(),
                    new_path: f.new_path.clone(),
                    change: f.change,
                    content: Content::Text,
                    hunks: f.hunks.clone(),
                    issues: Vec::new(),
                }),
            }
        }
    }
    files
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

/// One of the bot's threads on the MR, from any earlier round.
#[derive(Debug, Clone)]
struct BotThread {
    discussion_id: String,
    /// The marker of the thread's first note.
    marker: Marker,
    resolved: bool,
    /// The new-side line the thread points at, on the head in its marker.
    line: Option<(String, u32)>,
    /// Someone replied that the finding will not be fixed.
    dismissed: bool,
}

/// The MR's threads, listed once per run of the posting phase.
struct MrThreads {
    /// Every marker on the MR: marker to (note id, discussion id).
    markers: HashMap<Marker, (u64, Option<String>)>,
    /// The bot's threads of this review type.
    bot: Vec<BotThread>,
    /// The rounds history the newest summary note of this review type carries.
    summary_rounds: Vec<Round>,
}

async fn mr_threads(
    deps: &ReviewDeps,
    project: &ProjectRef,
    iid: u64,
    review_type: ReviewType,
) -> Result<MrThreads, JobError> {
    let mut markers = HashMap::new();
    let mut bot = Vec::new();
    let mut summary: Option<(u64, Vec<Round>)> = None;
    for discussion in deps
        .gitlab
        .discussions(project, iid)
        .await
        .map_err(gitlab_error)?
    {
        for note in &discussion.notes {
            if let Some(m) = review::find_marker(&note.body) {
                if m.review_type == review_type
                    && m.kind == MarkerKind::Summary
                    && !note.system
                    && summary.as_ref().is_none_or(|(id, _)| note.id > *id)
                {
                    summary = Some((note.id, review::find_round_history(&note.body)));
                }
                markers
                    .entry(m)
                    .or_insert((note.id, Some(discussion.id.clone())));
            }
        }
        let Some(first) = discussion.notes.first() else {
            continue;
        };
        let Some(marker) = review::find_marker(&first.body).filter(|m| {
            m.review_type == review_type
                && matches!(m.kind, MarkerKind::Finding(_))
                && !first.system
        }) else {
            continue;
        };
        let line = first.position.as_ref().and_then(|p| {
            p.new_path
                .clone()
                .zip(p.new_line)
                .filter(|_| p.old_line.is_none() || p.new_line.is_some())
        });
        let dismissed = discussion.notes[1..].iter().any(|reply| {
            !reply.system
                && review::find_marker(&reply.body).is_none()
                && review::dismisses(&reply.body)
        });
        bot.push(BotThread {
            discussion_id: discussion.id.clone(),
            marker,
            resolved: first.resolved,
            line,
            dismissed,
        });
    }
    Ok(MrThreads {
        markers,
        bot,
        summary_rounds: summary.map(|(_, rounds)| rounds).unwrap_or_default(),
    })
}

/// A finding of this round, anchored and keyed.
struct Placed {
    finding: Finding,
    anchor: Anchor,
    key: FindingKey,
    fingerprint: Fingerprint,
}

/// Anchors every finding and writes the comments to the outbox, then moves to posting.
/// Each finding gets its state here: `pending` (to post), `open` (an earlier round's
/// thread about the same code is still open), `dismissed` (someone answered "won't fix" to
/// it), `below_threshold` (under the project's `min_severity`), or `over_limit` (beyond
/// `max_inline_comments`, listed in the summary instead).
async fn build_outbox(
    ctx: &JobContext,
    args: &ReviewArgs,
    review: &ReviewRow,
    round: &RoundSettings,
    threads: &MrThreads,
) -> Result<(), JobError> {
    let pool = ctx.queue().pool();
    let chunks = chunk_results(pool, review.id).await?;
    let files = reviewed_files(&chunks);
    let head = head_sha(review)?;
    let fingerprints = |pick: fn(&BotThread) -> bool| -> std::collections::HashSet<Fingerprint> {
        threads
            .bot
            .iter()
            .filter(|t| pick(t) && t.marker.head_sha != head)
            .filter_map(|t| t.marker.fingerprint.clone())
            .collect()
    };
    let open = fingerprints(|t| !t.resolved && !t.dismissed);
    let dismissed = fingerprints(|t| t.dismissed);

    let mut seen = std::collections::HashSet::new();
    let mut placed = Vec::new();
    for finding in chunks.iter().flat_map(|c| c.findings.iter().flatten()) {
        let anchor = review::anchor::anchor(&files, finding);
        let key = FindingKey::derive(args.review_type, finding, &anchor);
        // A finding repeated by two chunks (a file split in parts) is posted once.
        if !seen.insert(key.clone()) {
            continue;
        }
        let fingerprint = Fingerprint::derive(args.review_type, finding, &anchor, &files);
        placed.push(Placed {
            finding: finding.clone(),
            anchor,
            key,
            fingerprint,
        });
    }
    // Most severe first (stable), so the inline limit keeps the findings that matter.
    placed.sort_by_key(|p| p.finding.severity);
    let min = round.min_severity.unwrap_or(Severity::Info);
    let max_inline = round.max_inline_comments.unwrap_or(usize::MAX);
    let mut inline_count = 0;

    // One row per finding, written in one statement (column arrays through `unnest`).
    let mut rows = OutboxColumns::default();
    for p in &placed {
        let below = p.finding.severity > min;
        let (kind, position, body, state) = match &p.anchor {
            Anchor::Inline(position) => {
                let state = if below {
                    "below_threshold"
                } else if dismissed.contains(&p.fingerprint) {
                    "dismissed"
                } else if open.contains(&p.fingerprint) {
                    "open"
                } else if round.code_quality_only {
                    "codequality"
                } else if inline_count >= max_inline {
                    "over_limit"
                } else {
                    inline_count += 1;
                    "pending"
                };
                let m = Marker::finding(
                    args.review_type,
                    head.clone(),
                    p.key.clone(),
                    Some(p.fingerprint.clone()),
                );
                (
                    "inline",
                    Some(serde_json::to_value(position).map_err(JobError::fatal)?),
                    review::render::inline_comment(&p.finding, position, &m),
                    state,
                )
            }
            Anchor::Summary(reason) => (
                "summary",
                None,
                serde_json::to_string(reason).map_err(JobError::fatal)?,
                if below { "below_threshold" } else { "pending" },
            ),
        };
        rows.key.push(p.key.as_str().to_owned());
        rows.kind.push(kind.to_owned());
        rows.severity.push(p.finding.severity.as_str().to_owned());
        rows.finding
            .push(serde_json::to_value(&p.finding).map_err(JobError::fatal)?);
        rows.position.push(position);
        rows.body.push(body);
        rows.state.push(state.to_owned());
        rows.fingerprint.push(p.fingerprint.as_str().to_owned());
    }

    let mut tx = pool.begin().await.map_err(db)?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"
        insert into outbox (review_id, key, kind, severity, finding, position, body, state,
            fingerprint)
        select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::text[], $9::text[])
        on conflict (review_id, key) do nothing
        "#,
        review.id,
        &rows.key,
        &rows.kind,
        &rows.severity,
        &rows.finding,
        &rows.position as &[Option<serde_json::Value>],
        &rows.body,
        &rows.state,
        &rows.fingerprint,
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query!(
        "update reviews set state = 'posting' where id = $1",
        review.id
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// New outbox rows, column by column, for one `unnest` insert.
#[derive(Default)]
struct OutboxColumns {
    key: Vec<String>,
    kind: Vec<String>,
    severity: Vec<String>,
    finding: Vec<serde_json::Value>,
    position: Vec<Option<serde_json::Value>>,
    body: Vec<String>,
    state: Vec<String>,
    fingerprint: Vec<String>,
}

struct OutboxRow {
    key: String,
    kind: String,
    severity: Option<String>,
    finding: Option<serde_json::Value>,
    position: Option<serde_json::Value>,
    body: String,
    state: String,
    error: Option<String>,
    fingerprint: Option<String>,
}

async fn outbox(pool: &PgPool, review_id: i64) -> Result<Vec<OutboxRow>, JobError> {
    sqlx::query_as!(
        OutboxRow,
        r#"select key, kind, severity, finding, position, body, state, error, fingerprint
           from outbox where review_id = $1 and key <> 'summary'
           order by position->>'new_path', (position->>'new_line')::int, key"#,
        review_id
    )
    .fetch_all(pool)
    .await
    .map_err(db)
}

/// A single-statement write fenced by the job's lease: it matches no row once another
/// attempt owns the job.
pub(super) fn fenced(rows: u64, ctx: &JobContext) -> Result<(), JobError> {
    if rows == 0 {
        return Err(QueueError::LeaseLost(ctx.lease()).into());
    }
    Ok(())
}

/// Records that POSTs are about to go out for every pending comment, so a crash leaves a
/// trace of the unknown outcome (the markers on GitLab are checked before any re-post).
async fn mark_attempted(ctx: &JobContext, review_id: i64) -> Result<(), JobError> {
    let lease = ctx.lease();
    let held = sqlx::query_scalar!(
        r#"
        with held as (select 1 from jobs where id = $2 and attempt = $3 and state = 'running'),
        marked as (
            update outbox set attempted_at = now()
            where review_id = $1 and state = 'pending' and exists (select 1 from held)
        )
        select exists (select 1 from held) as "held!"
        "#,
        review_id,
        lease.job_id.get(),
        lease.attempt,
    )
    .fetch_one(ctx.queue().pool())
    .await
    .map_err(db)?;
    fenced(u64::from(held), ctx)
}

fn line_anchor(position: &review::Position) -> Option<LineAnchor> {
    match (position.old_line, position.new_line) {
        (None, Some(new_line)) => Some(LineAnchor::Added { new_line }),
        (Some(old_line), None) => Some(LineAnchor::Removed { old_line }),
        (Some(old_line), Some(new_line)) => Some(LineAnchor::Unchanged { old_line, new_line }),
        (None, None) => None,
    }
}

/// Posts the outbox: inline comments first (directly, or as draft notes published at
/// once), resolves the bot's threads whose code changed, then writes the living summary
/// note; then finishes the review. Safe to run again after any crash: posted rows are
/// skipped, and a comment whose earlier POST had an unknown outcome is looked up by its
/// marker before it is re-sent.
async fn post(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: &ReviewArgs,
    review: &ReviewRow,
    round: &RoundSettings,
    threads: &MrThreads,
) -> Result<Outcome, JobError> {
    let pool = ctx.queue().pool().clone();
    let project = args.project_ref()?;
    let head = head_sha(review)?;
    let shas = DiffShas {
        base_sha: review.base_sha.clone(),
        start_sha: review.start_sha.clone(),
        head_sha: review.head_sha.clone(),
    };
    if !args.dry_run {
        mark_attempted(ctx, review.id).await?;
    }
    let target = Target {
        deps,
        args,
        review,
        project: &project,
        head: &head,
    };

    // Posted comments are recorded in batches: a crash before a batch is written loses
    // nothing, since the next attempt finds those comments by their markers.
    let mut posted: Vec<Posted> = Vec::new();
    let result = if round.publish_drafts && !args.dry_run {
        post_drafts(ctx, &target, &shas, &threads.markers, &mut posted).await
    } else {
        post_inline(ctx, &target, &shas, &threads.markers, &mut posted).await
    };
    record_posted(ctx, review.id, &posted).await?;
    result?;

    let resolved = if round.resolve_outdated && !args.dry_run {
        resolve_outdated(&target, threads).await?
    } else {
        Vec::new()
    };
    let summary = living_summary_body(&pool, &target, round, threads, &resolved).await?;
    post_summary(ctx, &target, &summary, &threads.markers).await?;
    finish(ctx, deps, args, review, &project).await
}

/// Who and what a posting phase writes to.
struct Target<'a> {
    deps: &'a ReviewDeps,
    args: &'a ReviewArgs,
    review: &'a ReviewRow,
    project: &'a ProjectRef,
    head: &'a HeadSha,
}

/// A comment GitLab has, not yet recorded in the outbox.
struct Posted {
    key: String,
    note_id: u64,
    discussion_id: Option<String>,
}

/// The GitLab position of an outbox row, or `None` (after marking the row downgraded)
/// when it has no line to anchor to.
async fn row_position(
    ctx: &JobContext,
    review_id: i64,
    row: &OutboxRow,
    shas: &DiffShas,
) -> Result<Option<gitlab::Position>, JobError> {
    let position: review::Position =
        serde_json::from_value(row.position.clone().unwrap_or_default())
            .map_err(JobError::fatal)?;
    let Some(line) = line_anchor(&position) else {
        set_state(
            ctx,
            review_id,
            &row.key,
            "downgraded",
            Some("no line to anchor to"),
        )
        .await?;
        return Ok(None);
    };
    Ok(Some(gitlab::Position {
        shas: shas.clone(),
        old_path: position.old_path,
        new_path: position.new_path,
        line,
    }))
}

/// The marker of an inline outbox row, and its comment if GitLab already has it (an
/// earlier attempt posted it but did not record it).
fn inline_marker(
    t: &Target<'_>,
    row: &OutboxRow,
    existing: &HashMap<Marker, (u64, Option<String>)>,
) -> Result<(Marker, Option<Posted>), JobError> {
    let key = FindingKey::parse(&row.key).map_err(JobError::fatal)?;
    let m = marker(t.args.review_type, t.head, MarkerKind::Finding(key));
    let found = existing.get(&m).map(|(note_id, discussion_id)| Posted {
        key: row.key.clone(),
        note_id: *note_id,
        discussion_id: discussion_id.clone(),
    });
    Ok((m, found))
}

/// Posts the pending inline comments, a few at a time ([`posting::INLINE_POSTS_IN_FLIGHT`]),
/// collecting what GitLab stored in `posted`.
async fn post_inline(
    ctx: &JobContext,
    t: &Target<'_>,
    shas: &DiffShas,
    existing: &HashMap<Marker, (u64, Option<String>)>,
    posted: &mut Vec<Posted>,
) -> Result<(), JobError> {
    let (args, review) = (t.args, t.review);
    let mut to_post = Vec::new();
    for row in outbox(ctx.queue().pool(), review.id).await? {
        if row.kind != "inline" || row.state != "pending" {
            continue;
        }
        if args.dry_run {
            set_state(ctx, review.id, &row.key, "dry_run", None).await?;
            continue;
        }
        let (m, found) = inline_marker(t, &row, existing)?;
        if let Some(found) = found {
            posted.push(found);
            continue;
        }
        let Some(position) = row_position(ctx, review.id, &row, shas).await? else {
            continue;
        };
        let body = row.body.clone();
        to_post.push((row.key, body, position, m));
    }
    // Every answer is taken in (and recorded by the caller) before an error is returned:
    // the threads GitLab did create are not re-checked on the next attempt.
    let mut failure = None;
    for (key, position, result) in posting::post_discussions(t, to_post).await {
        match result {
            Ok(done) => posted.push(Posted {
                key,
                note_id: done.note_id,
                discussion_id: Some(done.discussion_id),
            }),
            Err(err @ gitlab::Error::PositionRejected { .. }) => {
                tracing::info!(error = %err, path = %position.new_path, "GitLab refused the position; the finding goes to the summary");
                set_state(ctx, review.id, &key, "downgraded", Some(&err.to_string())).await?;
            }
            // The comment exists, just not inline: never post it twice.
            Err(gitlab::Error::NotDiffNote {
                discussion_id,
                note_id,
                ..
            }) => posted.push(Posted {
                key,
                note_id,
                discussion_id: Some(discussion_id),
            }),
            Err(err) => {
                failure.get_or_insert(gitlab_error(err));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Stages the pending inline comments as draft notes, then publishes them all in one
/// `bulk_publish`, so the review appears on the MR as one event. Idempotent like the rest:
/// a draft whose creation had an unknown outcome is found by its marker among the drafts;
/// a publish whose outcome is unknown is found by the markers on the MR.
async fn post_drafts(
    ctx: &JobContext,
    t: &Target<'_>,
    shas: &DiffShas,
    existing: &HashMap<Marker, (u64, Option<String>)>,
    posted: &mut Vec<Posted>,
) -> Result<(), JobError> {
    let (args, review, gitlab) = (t.args, t.review, &t.deps.gitlab);
    let pool = ctx.queue().pool();
    let drafts: HashMap<Marker, u64> = gitlab
        .draft_notes(t.project, args.iid)
        .await
        .map_err(gitlab_error)?
        .into_iter()
        .filter_map(|d| review::find_marker(&d.note).map(|m| (m, d.id)))
        .collect();
    // The comments that must end up published, with their markers.
    let mut staged: Vec<(String, Marker)> = Vec::new();
    for row in outbox(pool, review.id).await? {
        if row.kind != "inline" || !matches!(row.state.as_str(), "pending" | "drafted") {
            continue;
        }
        let (m, found) = inline_marker(t, &row, existing)?;
        if let Some(found) = found {
            // Published already (by an earlier attempt's bulk publish).
            posted.push(found);
            continue;
        }
        if row.state == "drafted" || drafts.contains_key(&m) {
            staged.push((row.key, m));
            continue;
        }
        let Some(position) = row_position(ctx, review.id, &row, shas).await? else {
            continue;
        };
        match posting::create_draft_once(t, &row.body, &position, &m).await {
            Ok(draft) => {
                let rows = sqlx::query!(
                    r#"update outbox set state = 'drafted', gitlab_draft_id = $3
                       where review_id = $1 and key = $2
                         and exists (select 1 from jobs where id = $4 and attempt = $5
                                     and state = 'running')"#,
                    review.id,
                    row.key,
                    i64::try_from(draft.id).unwrap_or(i64::MAX),
                    ctx.lease().job_id.get(),
                    ctx.lease().attempt,
                )
                .execute(pool)
                .await
                .map_err(db)?
                .rows_affected();
                fenced(rows, ctx)?;
                staged.push((row.key, m));
            }
            Err(err @ gitlab::Error::PositionRejected { .. }) => {
                set_state(
                    ctx,
                    review.id,
                    &row.key,
                    "downgraded",
                    Some(&err.to_string()),
                )
                .await?;
            }
            Err(err) => return Err(gitlab_error(err)),
        }
    }
    if staged.is_empty() {
        return Ok(());
    }
    gitlab
        .bulk_publish_draft_notes(t.project, args.iid)
        .await
        .map_err(gitlab_error)?;
    // The published notes' ids, found by marker.
    let now = mr_threads(t.deps, t.project, args.iid, args.review_type).await?;
    let mut missing = 0;
    for (key, m) in staged {
        match now.markers.get(&m) {
            Some((note_id, discussion_id)) => posted.push(Posted {
                key,
                note_id: *note_id,
                discussion_id: discussion_id.clone(),
            }),
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(JobError::retryable(format!(
            "{missing} draft notes were not found on the merge request after publishing; trying again"
        )));
    }
    Ok(())
}

/// Resolves the bot's open threads of earlier rounds whose line this push changed.
/// Returns the ids of the threads resolved.
async fn resolve_outdated(t: &Target<'_>, threads: &MrThreads) -> Result<Vec<String>, JobError> {
    let mut by_head: HashMap<&HeadSha, Vec<&BotThread>> = HashMap::new();
    for thread in threads
        .bot
        .iter()
        .filter(|th| !th.resolved && th.line.is_some() && th.marker.head_sha != *t.head)
    {
        by_head
            .entry(&thread.marker.head_sha)
            .or_default()
            .push(thread);
    }
    let mut resolved = Vec::new();
    for (old_head, stale) in by_head {
        let compare = match t
            .deps
            .gitlab
            .compare(t.project, old_head.as_str(), t.head.as_str())
            .await
        {
            Ok(compare) if !compare.is_partial() => compare,
            Ok(_) => continue,
            Err(err) if err.disposition() == Disposition::Fatal => {
                tracing::info!(head = %old_head, error = %err, "cannot compare with an earlier head; its threads stay as they are");
                continue;
            }
            Err(err) => return Err(gitlab_error(err)),
        };
        let delta: Vec<ParsedFile> = compare
            .diffs
            .into_iter()
            .map(|d| review::diff::parse(&to_review_diff(d)))
            .collect();
        for thread in stale {
            let Some((path, line)) = &thread.line else {
                continue;
            };
            if review::line_changed(&delta, path, *line) {
                t.deps
                    .gitlab
                    .resolve_discussion(t.project, t.args.iid, &thread.discussion_id, true)
                    .await
                    .map_err(gitlab_error)?;
                tracing::info!(discussion = %thread.discussion_id, %path, line, "the code changed: thread resolved");
                resolved.push(thread.discussion_id.clone());
            }
        }
    }
    Ok(resolved)
}

async fn record_posted(
    ctx: &JobContext,
    review_id: i64,
    posted: &[Posted],
) -> Result<(), JobError> {
    if posted.is_empty() {
        return Ok(());
    }
    let lease = ctx.lease();
    let keys: Vec<String> = posted.iter().map(|p| p.key.clone()).collect();
    let notes: Vec<i64> = posted
        .iter()
        .map(|p| i64::try_from(p.note_id).unwrap_or(i64::MAX))
        .collect();
    let discussions: Vec<Option<String>> = posted.iter().map(|p| p.discussion_id.clone()).collect();
    let rows = sqlx::query!(
        r#"
        update outbox o set state = 'posted', gitlab_note_id = p.note_id,
            gitlab_discussion_id = p.discussion_id, posted_at = now(), error = null
        from unnest($2::text[], $3::int8[], $4::text[]) as p(key, note_id, discussion_id)
        where o.review_id = $1 and o.key = p.key
          and exists (select 1 from jobs where id = $5 and attempt = $6 and state = 'running')
        "#,
        review_id,
        &keys,
        &notes,
        &discussions as &[Option<String>],
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .map_err(db)?
    .rows_affected();
    fenced(rows, ctx)
}

async fn set_state(
    ctx: &JobContext,
    review_id: i64,
    key: &str,
    state: &str,
    error: Option<&str>,
) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update outbox set state = $3, error = $4
           where review_id = $1 and key = $2
             and exists (select 1 from jobs where id = $5 and attempt = $6 and state = 'running')"#,
        review_id,
        key,
        state,
        error,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .map_err(db)?
    .rows_affected();
    fenced(rows, ctx)
}

/// The living summary note's body: this round's results, the bot's threads still open,
/// and every round so far with its tokens and cost.
async fn living_summary_body(
    pool: &PgPool,
    t: &Target<'_>,
    round: &RoundSettings,
    threads: &MrThreads,
    resolved_now: &[String],
) -> Result<String, JobError> {
    let (args, review) = (t.args, t.review);
    let mut chunks = chunk_outcomes(pool, review.id).await?;
    let rows = outbox(pool, review.id).await?;
    let max_inline = round.max_inline_comments.unwrap_or(usize::MAX);
    let mut open_inline = Vec::new();
    let mut listed = Vec::new();
    let mut below_min_severity = 0;
    let mut fingerprints_now = std::collections::HashSet::new();
    for row in &rows {
        let severity = row
            .severity
            .as_deref()
            .map(Severity::lenient)
            .unwrap_or(Severity::Info);
        let finding: Option<Finding> = row
            .finding
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(JobError::fatal)?;
        if let Some(fp) = &row.fingerprint {
            fingerprints_now.insert(fp.clone());
        }
        match (row.kind.as_str(), row.state.as_str(), finding) {
            (_, "below_threshold", _) => below_min_severity += 1,
            (_, "dismissed", _) => {}
            (
                "inline",
                "posted" | "dry_run" | "pending" | "drafted" | "open" | "codequality",
                _,
            ) => {
                open_inline.push(severity);
            }
            ("inline", "over_limit", Some(finding)) => listed.push(ListedFinding {
                finding,
                because: ListedBecause::OverInlineLimit {
                    max_inline_comments: max_inline,
                },
            }),
            ("inline", _, Some(finding)) => listed.push(ListedFinding {
                finding,
                because: ListedBecause::Unanchored(UnanchoredReason::RejectedByGitLab {
                    message: row.error.clone().unwrap_or_default(),
                }),
            }),
            (_, _, Some(finding)) => listed.push(ListedFinding {
                finding,
                because: ListedBecause::Unanchored(
                    serde_json::from_str(&row.body).unwrap_or(UnanchoredReason::UnknownPath),
                ),
            }),
            _ => {}
        }
    }
    // Earlier rounds' threads still open (not resolved now, not raised again this round).
    let earlier: Vec<String> = threads
        .bot
        .iter()
        .filter(|th| {
            !th.resolved
                && !th.dismissed
                && th.marker.head_sha != *t.head
                && !resolved_now.contains(&th.discussion_id)
                && th
                    .marker
                    .fingerprint
                    .as_ref()
                    .is_none_or(|fp| !fingerprints_now.contains(fp.as_str()))
        })
        .map(|th| th.discussion_id.clone())
        .collect();
    if !earlier.is_empty() {
        let severities = sqlx::query_scalar!(
            r#"select o.severity from outbox o join reviews r on r.id = o.review_id
               where r.project = $1 and r.mr_iid = $2 and o.gitlab_discussion_id = any($3)"#,
            args.project.to_string(),
            i64::try_from(args.iid).map_err(JobError::fatal)?,
            &earlier,
        )
        .fetch_all(pool)
        .await
        .map_err(db)?;
        // Threads without an outbox row here (posted by hand, or pruned): counted as info.
        open_inline.extend((severities.len()..earlier.len()).map(|_| Severity::Info));
        open_inline.extend(severities.into_iter().map(|s| {
            s.as_deref()
                .map(Severity::lenient)
                .unwrap_or(Severity::Info)
        }));
    }
    let failed_chunks = chunks.iter_mut().filter_map(|c| c.failed.take()).collect();
    let skipped: Vec<SkippedFile> =
        serde_json::from_value(review.skipped.clone()).map_err(JobError::fatal)?;
    let dropped: i32 = chunks.iter().map(|c| c.dropped).sum();
    let beyond_limit: i32 = chunks.iter().map(|c| c.beyond_limit).sum();
    let report = LivingSummary {
        review_type: args.review_type,
        head_sha: t.head.clone(),
        latest_summaries: chunks
            .iter()
            .filter_map(|c| c.summary.clone())
            .chain((dropped > 0).then(|| {
                format!("{dropped} finding(s) in the model's answers could not be read and were left out.")
            }))
            .chain((beyond_limit > 0).then(|| {
                format!(
                    "{beyond_limit} finding(s) beyond the per-answer limit of {} were not used.",
                    review::finding::MAX_FINDINGS_PER_ANSWER
                )
            }))
            .collect(),
        open_inline,
        listed,
        min_severity: round.min_severity.unwrap_or(Severity::Info),
        below_min_severity,
        rounds: with_earlier_rounds(rounds(pool, args, review.id).await?, threads),
        skipped,
        failed_chunks,
        settings_problem: review.settings_problem.clone(),
    };
    Ok(review::render::living_summary(&report))
}

/// Every finished round of this MR and review type plus the current one, newest first,
/// with the tokens and cost the ledger recorded for each.
async fn rounds(pool: &PgPool, args: &ReviewArgs, current: i64) -> Result<Vec<Round>, JobError> {
    let rows = sqlx::query!(
        r#"
        select r.head_sha, r.scope, r.since_sha, r.chunk_count,
            coalesce(r.finished_at, now()) as "at!",
            r.file_count,
            coalesce((select sum(prompt_tokens) from llm_calls l where l.review_id = r.id), 0)::int8
                as "prompt!",
            coalesce((select sum(completion_tokens) from llm_calls l where l.review_id = r.id), 0)::int8
                as "completion!",
            (select sum(cost_usd)::float8 from llm_call_costs l where l.review_id = r.id) as cost
        from reviews r
        where r.project = $1 and r.mr_iid = $2 and r.review_type = $3 and not r.dry_run
          and (r.state = 'done' or r.id = $4)
        order by r.id desc
        "#,
        args.project.to_string(),
        i64::try_from(args.iid).map_err(JobError::fatal)?,
        args.review_type.as_str(),
        current,
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|r| {
            Ok(Round {
                head_sha: HeadSha::parse(&r.head_sha).map_err(JobError::fatal)?,
                kind: match (r.scope.as_str(), r.since_sha) {
                    ("incremental", Some(since)) => RoundKind::Incremental {
                        since: HeadSha::parse(&since).map_err(JobError::fatal)?,
                    },
                    _ => RoundKind::Full,
                },
                files_reviewed: usize::try_from(r.file_count).unwrap_or(0),
                chunks: usize::try_from(r.chunk_count).unwrap_or(0),
                prompt_tokens: u64::try_from(r.prompt).unwrap_or(0),
                completion_tokens: u64::try_from(r.completion).unwrap_or(0),
                cost_usd: r.cost,
                at: r.at,
            })
        })
        .collect()
}

/// `rounds` (newest first), with the earlier rounds the summary note remembers when the
/// database knows only the current one (a CI job on a fresh local cluster, or a project
/// spelled differently before). A remembered round of the current head and scope is this
/// round itself, written by an attempt that crashed after editing the note.
fn with_earlier_rounds(mut rounds: Vec<Round>, threads: &MrThreads) -> Vec<Round> {
    if let [current] = rounds.as_slice() {
        let (head, kind) = (current.head_sha.clone(), current.kind.clone());
        rounds.extend(
            threads
                .summary_rounds
                .iter()
                .filter(|r| !(r.head_sha == head && r.kind == kind))
                .cloned(),
        );
    }
    rounds
}

/// Writes the living summary: the one note per MR and review type, edited in place
/// (`PUT`) every round. Its id is kept in `mr_summaries`; without one (first round, or a
/// crash between GitLab storing the note and reviewq recording it) the MR's notes are
/// searched for the bot's summary marker of this type before a new note is posted. A note
/// someone deleted is posted again.
async fn post_summary(
    ctx: &JobContext,
    t: &Target<'_>,
    body: &str,
    existing: &HashMap<Marker, (u64, Option<String>)>,
) -> Result<(), JobError> {
    let (args, review, gitlab) = (t.args, t.review, &t.deps.gitlab);
    let pool = ctx.queue().pool();
    let state = sqlx::query_scalar!(
        "select state from outbox where review_id = $1 and key = 'summary'",
        review.id
    )
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    if matches!(state.as_deref(), Some("posted" | "dry_run")) {
        return Ok(());
    }
    {
        let mut tx = pool.begin().await.map_err(db)?;
        Queue::fence(&mut tx, ctx.lease()).await?;
        sqlx::query!(
            r#"insert into outbox (review_id, key, kind, body) values ($1, 'summary', 'summary', $2)
               on conflict (review_id, key) do update set body = excluded.body"#,
            review.id,
            body
        )
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
    if args.dry_run {
        return set_state(ctx, review.id, "summary", "dry_run", None).await;
    }
    let project_text = args.project.to_string();
    let iid = i64::try_from(args.iid).map_err(JobError::fatal)?;
    let known = sqlx::query_scalar!(
        "select gitlab_note_id from mr_summaries where project = $1 and mr_iid = $2 and review_type = $3",
        project_text,
        iid,
        args.review_type.as_str(),
    )
    .fetch_optional(pool)
    .await
    .map_err(db)?
    .and_then(|id| u64::try_from(id).ok());
    let is_ours = |m: &Marker| m.review_type == args.review_type && m.kind == MarkerKind::Summary;
    let found = match known {
        Some(id) => Some(id),
        None => match existing.iter().find(|(m, _)| is_ours(m)) {
            Some((_, (note_id, _))) => Some(*note_id),
            // Overview notes are not always listed as discussions on older GitLab.
            None => gitlab
                .notes(t.project, args.iid)
                .await
                .map_err(gitlab_error)?
                .into_iter()
                .find(|n| review::find_marker(&n.body).as_ref().is_some_and(is_ours))
                .map(|n| n.id),
        },
    };
    let note_id = match found {
        Some(id) => match gitlab.update_note(t.project, args.iid, id, body).await {
            Ok(note) => note.id,
            Err(gitlab::Error::NotFound { .. }) => {
                tracing::info!(note = id, "the summary note was deleted; posting a new one");
                mark_attempted(ctx, review.id).await?;
                posting::post_note_once(t, body, is_ours)
                    .await
                    .map_err(gitlab_error)?
                    .id
            }
            Err(err) => return Err(gitlab_error(err)),
        },
        None => {
            mark_attempted(ctx, review.id).await?;
            posting::post_note_once(t, body, is_ours)
                .await
                .map_err(gitlab_error)?
                .id
        }
    };
    let mut tx = pool.begin().await.map_err(db)?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"insert into mr_summaries (project, mr_iid, review_type, gitlab_note_id)
           values ($1, $2, $3, $4)
           on conflict (project, mr_iid, review_type) do update
               set gitlab_note_id = excluded.gitlab_note_id, updated_at = now()"#,
        project_text,
        iid,
        args.review_type.as_str(),
        i64::try_from(note_id).unwrap_or(i64::MAX),
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sqlx::query!(
        r#"update outbox set state = 'posted', gitlab_note_id = $2, posted_at = now(), error = null
           where review_id = $1 and key = 'summary'"#,
        review.id,
        i64::try_from(note_id).unwrap_or(i64::MAX),
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// Marks the review done and completes the job in one transaction; if the MR moved on
/// while it was reviewed, enqueues a review of the new head in that same transaction.
async fn finish(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: &ReviewArgs,
    review: &ReviewRow,
    project: &ProjectRef,
) -> Result<Outcome, JobError> {
    let current = deps
        .gitlab
        .merge_request(project, args.iid)
        .await
        .map_err(gitlab_error)?;
    let moved = current
        .sha
        .as_deref()
        .is_some_and(|sha| sha != review.head_sha)
        && current.state == "opened";
    let pool = ctx.queue().pool();
    // Every chunk failed: the summary says why, and the job fails with that reason so that
    // `reviewq review` in CI exits non-zero instead of reporting an empty review as done.
    let all_failed = sqlx::query_scalar!(
        r#"
        select c.last_error from review_chunks rc join jobs c on c.id = rc.job_id
        where rc.review_id = $1 and not rc.superseded and c.state <> 'succeeded'
          and not exists (select 1 from review_chunks ok join jobs oj on oj.id = ok.job_id
                          where ok.review_id = $1 and not ok.superseded and oj.state = 'succeeded')
        limit 1
        "#,
        review.id
    )
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    let mut tx = pool.begin().await.map_err(db)?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        "update reviews set state = 'done', finished_at = now() where id = $1",
        review.id
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if let Some(reason) = all_failed {
        tx.commit().await.map_err(db)?;
        return Err(JobError::fatal(format!(
            "no chunk could be reviewed: {}",
            reason.unwrap_or_else(|| "the chunk jobs failed".into())
        )));
    }
    Queue::complete(&mut tx, ctx.lease()).await?;
    if moved {
        let next = ReviewArgs {
            force: false,
            ..args.clone()
        };
        let priority = job_priority(pool, ctx).await?;
        let id = Queue::enqueue(&mut *tx, &next.job(priority)).await?.id();
        tracing::info!(mr = %args.mr, next.job = %id, "the MR moved on during the review; reviewing the new head next");
    }
    tx.commit().await.map_err(db)?;
    tracing::info!(mr = %args.mr, review.id = review.id, chunks = review.chunk_count, "review done");
    Ok(Outcome::Settled)
}

// ---------------------------------------------------------------------------------------
// The chunk job.

struct ChunkRow {
    chunk: serde_json::Value,
    summary: Option<String>,
    superseded: bool,
    project: String,
    mr_iid: i64,
    head_sha: String,
    review_type: String,
    mr_title: String,
    mr_description: String,
    settings: serde_json::Value,
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

async fn review_chunk(ctx: &JobContext, deps: &ReviewDeps, args: ChunkArgs) -> JobResult {
    let pool = ctx.queue().pool().clone();
    let row = sqlx::query_as!(
        ChunkRow,
        r#"
        select c.chunk, c.summary, c.superseded, r.project, r.mr_iid, r.head_sha, r.review_type,
               r.mr_title, r.mr_description, r.settings
        from review_chunks c join reviews r on r.id = c.review_id
        where c.review_id = $1 and c.chunk_index = $2
        "#,
        args.review_id,
        args.chunk_index
    )
    .fetch_optional(&pool)
    .await
    .map_err(db)?
    .ok_or_else(|| {
        JobError::fatal(format!(
            "chunk {} of review {} does not exist",
            args.chunk_index, args.review_id
        ))
    })?;
    if row.summary.is_some() || row.superseded {
        return Ok(Outcome::Succeeded);
    }
    let chunk: Chunk = serde_json::from_value(row.chunk).map_err(JobError::fatal)?;
    let review_type: ReviewType = row.review_type.parse().map_err(JobError::fatal)?;
    let prompt = review::prompt::render_with(
        review_type,
        &chunk,
        &row.mr_title,
        &row.mr_description,
        &RoundSettings::read(&row.settings).prompt_options(),
    );
    let mut request = ChatRequest::new(vec![
        Message::system(prompt.system),
        Message::user(prompt.user),
    ]);
    request.json_object = true;
    request.temperature = Some(0.2);
    request.max_tokens = Some(MAX_ANSWER_TOKENS);
    let call = CallContext {
        lease: ctx.lease(),
        review_id: Some(args.review_id),
        chunk_index: Some(args.chunk_index),
        project: row.project,
        mr_iid: row.mr_iid,
        head_sha: row.head_sha,
        review_type: row.review_type,
        model: deps.llm.model().to_owned(),
        purpose: ledger::CallPurpose::Review,
    };

    let mut transient_tries = 0;
    let mut unusable = 0;
    loop {
        let permit = ctx.acquire(LLM_RESOURCE).await?;
        let started = ledger::start_within_limits(&pool, &call, deps.spend.daily_tokens).await?;
        let (call_id, probe) = match started {
            Some(call_id) => (call_id, false),
            // Paused, over a budget, or the lease is lost: the slow path says which.
            None => match spend::admit(&pool, &deps.spend, &call.project).await? {
                Admission::Go => (ledger::start(&pool, &call).await?, false),
                Admission::Probe => (ledger::start(&pool, &call).await?, true),
                Admission::Wait { until, waiting } => {
                    drop(permit);
                    return wait(ctx, until, &waiting).await;
                }
            },
        };
        // From here the call and its bookkeeping are a task of their own: if this attempt
        // is stopped (its lease lost, CHUNK_TIMEOUT), the answer still arrives and its usage
        // is still recorded. Only a killed process leaves the ledger row `started`.
        let call_task = tokio::spawn(finish_call(
            ctx.clone(),
            deps.clone(),
            args,
            chunk.clone(),
            request.clone(),
            call_id,
            permit,
            probe,
        ));
        let end = call_task
            .await
            .map_err(|e| JobError::retryable(format!("the LLM call's task failed: {e}")))?;
        match end {
            CallEnd::Done(result) => return result,
            CallEnd::Unusable(err) => {
                unusable += 1;
                if unusable > UNUSABLE_ANSWERS_TOLERATED {
                    return Err(JobError::fatal(format!(
                        "the model's answer was not the JSON object asked for, twice: {err}"
                    )));
                }
                tracing::warn!(error = %err, "unusable answer; asking once more");
            }
            CallEnd::Transient(err) => {
                transient_tries += 1;
                match err.disposition() {
                    _ if transient_tries >= LLM_TRIES_PER_ATTEMPT => {
                        return Err(JobError::new(err.disposition(), describe_llm_error(&err)));
                    }
                    Disposition::RetryAfter(wait) if wait > MAX_INLINE_WAIT => {
                        return Err(JobError::retry_after(wait, describe_llm_error(&err)));
                    }
                    Disposition::RetryAfter(wait) => tokio::time::sleep(wait).await,
                    Disposition::Retry | Disposition::Fatal => {
                        tokio::time::sleep(backoff(transient_tries)).await;
                    }
                }
                tracing::info!(error = %err, try_number = transient_tries, "transient LLM error; retrying");
            }
        }
    }
}

/// How one LLM call of a chunk ended, with everything about it recorded.
enum CallEnd {
    /// The attempt's outcome is decided: answer stored, chunk split, LLM paused, or failed.
    Done(JobResult),
    /// The answer was not the JSON object asked for.
    Unusable(String),
    /// A transient failure: the attempt may try again.
    Transient(llm::Error),
}

/// Sends one call and records how it ended: the usage with the answer and the job's
/// completion in one transaction, or the failure. Runs as a task of its own (see
/// [`review_chunk`]), so it owns everything it uses.
#[allow(clippy::too_many_arguments)]
async fn finish_call(
    ctx: JobContext,
    deps: ReviewDeps,
    args: ChunkArgs,
    chunk: Chunk,
    request: ChatRequest,
    call_id: ledger::CallId,
    permit: crate::queue::Permit,
    probe: bool,
) -> CallEnd {
    let pool = ctx.queue().pool().clone();
    let result = deps.llm.complete(&request).await;
    // Free the slot before the bookkeeping: another chunk may start its call now.
    if let Err(err) = permit.release().await {
        tracing::warn!(error = %err, "could not release the LLM slot; it frees itself when the lease lapses");
    }
    if probe
        && result.is_ok()
        && let Err(err) = spend::resume(&pool).await
    {
        tracing::warn!(error = %err, "could not end the LLM pause; the next probe will");
    }
    match result {
        Ok(done) => match review::parse_answer(&done.content) {
            Ok(answer) => CallEnd::Done(match split_for_findings(&chunk, &answer) {
                Some(halves) => {
                    split_overflowing(&ctx, args, call_id, &done, &answer, halves).await
                }
                None => store_answer(&ctx, args, call_id, &done, answer).await,
            }),
            Err(err) => {
                let reason = err.to_string();
                match keep_recording(|| ledger::unusable(&pool, call_id, &done, &reason)).await {
                    Ok(()) => CallEnd::Unusable(reason),
                    Err(err) => CallEnd::Done(Err(err)),
                }
            }
        },
        Err(err) if err.kind == llm::ErrorKind::QuotaExhausted => {
            CallEnd::Done(pause_llm(&ctx, &deps, call_id, &err).await)
        }
        Err(err) => {
            if let Err(db_err) = keep_recording(|| ledger::failed(&pool, call_id, &err)).await {
                return CallEnd::Done(Err(db_err));
            }
            if err.kind == llm::ErrorKind::ContextTooLong {
                return CallEnd::Done(split(&ctx, args, &chunk, &err).await);
            }
            match err.disposition() {
                Disposition::Fatal => CallEnd::Done(Err(JobError::fatal(describe_llm_error(&err)))),
                _ => CallEnd::Transient(err),
            }
        }
    }
}

/// How long a ledger write is retried through a database outage (a restart takes seconds).
const LEDGER_RETRY_FOR: Duration = Duration::from_secs(60);

/// Writes what a call cost, retrying through a database outage: the tokens were spent
/// whatever becomes of the job, so their record must outlive a restart or a cut
/// connection.
pub(super) async fn keep_recording<F, Fut>(mut write: F) -> Result<(), JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), QueueError>>,
{
    let deadline = tokio::time::Instant::now() + LEDGER_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %err, retry_in = ?pause, "could not record an LLM call's usage; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Makes this chunk wait for a spending condition (a budget, the pause).
pub(super) async fn wait(ctx: &JobContext, until: DateTime<Utc>, waiting: &Waiting) -> JobResult {
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
    Queue::wait(&mut tx, ctx.lease(), until, waiting).await?;
    tx.commit().await.map_err(db)?;
    tracing::info!(until = %until, reason = %waiting.reason, "chunk waits");
    Ok(Outcome::Settled)
}

/// The provider said the account cannot pay: record the call, pause LLM work for the
/// whole fleet and make this chunk wait for the probe, all in one transaction. Nothing
/// fails: every queued chunk waits instead of trying (and failing) one by one.
pub(super) async fn pause_llm(
    ctx: &JobContext,
    deps: &ReviewDeps,
    call_id: ledger::CallId,
    err: &llm::Error,
) -> JobResult {
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
    ledger::failed(&mut *tx, call_id, err).await?;
    let probe_after = err.retry_after.unwrap_or(deps.spend.probe_interval);
    let pause = spend::pause(
        &mut *tx,
        &describe_llm_error(err),
        err.provider_code.as_deref(),
        probe_after,
    )
    .await?;
    let until = pause.probe_at + chrono::Duration::seconds(1);
    match Queue::wait(&mut tx, ctx.lease(), until, &pause.waiting()).await {
        Ok(()) => {}
        Err(QueueError::LeaseLost(lease)) => {
            // Keep the ledger row and the pause (both true whoever owns the job now).
            tx.commit().await.map_err(db)?;
            return Err(QueueError::LeaseLost(lease).into());
        }
        Err(other) => return Err(other.into()),
    }
    tx.commit().await.map_err(db)?;
    tracing::warn!(reason = %pause.reason, probe_at = %pause.probe_at, "the LLM account cannot pay: LLM work paused fleet-wide");
    Ok(Outcome::Settled)
}

/// Backoff between LLM tries inside one attempt: 1 s, 2 s, 4 s, with full jitter on top.
pub(super) fn backoff(tries: u32) -> Duration {
    use backon::{BackoffBuilder, ExponentialBuilder};
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(8))
        .with_jitter()
        .build()
        .nth(tries.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(8))
}

pub(super) fn describe_llm_error(err: &llm::Error) -> String {
    let what = match err.kind {
        llm::ErrorKind::QuotaExhausted => {
            "the LLM account is out of balance or over its quota; top it up or raise the limit"
        }
        llm::ErrorKind::Auth => "the LLM endpoint refused GLM_API_KEY; check the key",
        llm::ErrorKind::ContentFiltered => "the provider's content filter refused this chunk",
        llm::ErrorKind::RateLimited => "the LLM rate limit was hit",
        llm::ErrorKind::Overloaded => "the model is overloaded",
        _ => "the LLM call failed",
    };
    format!("{what} ({err})")
}

/// Stores a chunk's answer and its usage with the job's completion, in one transaction.
/// If the lease was lost meanwhile, or the transaction fails (the database restarted, the
/// connection was cut), the usage is still recorded on its own: the tokens were spent.
async fn store_answer(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: review::Answer,
) -> JobResult {
    let pool = ctx.queue().pool();
    match store_answer_tx(ctx, args, call_id, done, &answer).await {
        Ok(()) => Ok(Outcome::Settled),
        Err(err) => {
            keep_recording(|| ledger::succeeded(pool, call_id, done)).await?;
            Err(err)
        }
    }
}

async fn store_answer_tx(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: &review::Answer,
) -> Result<(), JobError> {
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
    ledger::succeeded(&mut *tx, call_id, done).await?;
    store_chunk_answer(&mut tx, args, answer).await?;
    // The completion is the fence: if another attempt owns the job, nothing of this
    // transaction is kept (the caller then records the usage on its own).
    Queue::complete(&mut tx, ctx.lease()).await?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// Writes a chunk's answer to its row.
async fn store_chunk_answer(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    args: ChunkArgs,
    answer: &review::Answer,
) -> Result<(), JobError> {
    sqlx::query!(
        r#"update review_chunks set summary = $3, findings = $4, dropped_findings = $5,
               findings_beyond_limit = $6, finished_at = now()
           where review_id = $1 and chunk_index = $2"#,
        args.review_id,
        args.chunk_index,
        answer.summary,
        serde_json::to_value(&answer.findings).map_err(JobError::fatal)?,
        i32::try_from(answer.dropped_findings).unwrap_or(i32::MAX),
        i32::try_from(answer.beyond_limit).unwrap_or(i32::MAX),
    )
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// The answer holds so many findings that the chunk asked about too much at once
/// ([`split_for_findings`]): record its usage, keep the answer on the chunk's row for the
/// audit, and replace the chunk by two halves that are asked again, in one transaction.
///
/// The first answer's findings are not used: each half's answer covers the same code with
/// room to spare, so using both would post the findings found twice (worded differently,
/// hence not recognised as the same) and the first answer is the one a model cut short.
/// Its tokens are billed and in the ledger either way. As in [`store_answer`], the usage is
/// recorded on its own if the transaction cannot be kept.
async fn split_overflowing(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: &review::Answer,
    halves: (Chunk, Chunk),
) -> JobResult {
    let pool = ctx.queue().pool();
    let result: Result<(), JobError> = async {
        let mut tx = pool.begin().await.map_err(db)?;
        ledger::succeeded(&mut *tx, call_id, done).await?;
        store_chunk_answer(&mut tx, args, answer).await?;
        replace_by_halves(&mut tx, ctx, args, halves).await?;
        tx.commit().await.map_err(db)
    }
    .await;
    if let Err(err) = result {
        keep_recording(|| ledger::succeeded(pool, call_id, done)).await?;
        return Err(err);
    }
    tracing::info!(
        chunk = args.chunk_index,
        findings = answer.findings.len() + answer.beyond_limit,
        "the answer holds too many findings for one chunk; split in two and asked again"
    );
    Ok(Outcome::Settled)
}

/// The model found the chunk too big: replace it by two halves, each with its own job
/// under the same review, and complete this one.
async fn split(ctx: &JobContext, args: ChunkArgs, chunk: &Chunk, err: &llm::Error) -> JobResult {
    let Some(halves) = split_in_two(chunk) else {
        return Err(JobError::fatal(format!(
            "the chunk is too big for the model even as a single line ({err})"
        )));
    };
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    replace_by_halves(&mut tx, ctx, args, halves).await?;
    tx.commit().await.map_err(db)?;
    tracing::info!(
        chunk = args.chunk_index,
        "chunk too big for the model; split in two"
    );
    Ok(Outcome::Settled)
}

/// Replaces this chunk by two halves under the same review, each with its own job, and
/// completes this chunk's job (the fence), inside `tx`.
async fn replace_by_halves(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ctx: &JobContext,
    args: ChunkArgs,
    (first, second): (Chunk, Chunk),
) -> Result<(), JobError> {
    let pool = ctx.queue().pool();
    let parent = ctx
        .job
        .parent_id
        .ok_or_else(|| JobError::fatal("a chunk job has no parent review"))?;
    let next = sqlx::query_scalar!(
        r#"select coalesce(max(chunk_index), 0) + 1 as "next!" from review_chunks where review_id = $1"#,
        args.review_id
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    let priority = job_priority(pool, ctx).await?;
    let halves = [(next, first), (next + 1, second)];
    let jobs: Vec<NewJob> = halves
        .iter()
        .map(|(index, _)| {
            ChunkArgs {
                review_id: args.review_id,
                chunk_index: *index,
            }
            .job(priority)
        })
        .collect();
    let ids = Queue::add_children(tx, parent, &jobs).await?;
    let halves: Vec<Chunk> = halves
        .into_iter()
        .map(|(index, half)| Chunk {
            index: usize::try_from(index).unwrap_or(usize::MAX),
            ..half
        })
        .collect();
    insert_chunks(tx, args.review_id, halves.iter().zip(ids)).await?;
    sqlx::query!(
        "update review_chunks set superseded = true, finished_at = now() where review_id = $1 and chunk_index = $2",
        args.review_id,
        args.chunk_index
    )
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Queue::complete(tx, ctx.lease()).await?;
    Ok(())
}
