//! The `describe` job: writes the change type, a summary and a walkthrough of the changed
//! files into the MR description, between reviewq's markers (`review::describe`).
//!
//! 1. **Plan** (first attempt): read the MR (its `updated_at` too), its latest version and
//!    diffs; chunk them like a review; record the description and one part per chunk (plus a
//!    merge part above one chunk) in one transaction.
//! 2. **Answers**: one LLM call per part without an answer, under the fleet-wide limit and the
//!    budgets, each answer stored in the transaction that records its usage in the ledger;
//!    then the block, rendered and stored. A crash loses no answer: the next attempt starts
//!    from the stored ones.
//! 3. **Write**: read the MR again; if its `updated_at` moved since the last read (the author
//!    is editing), wait and read again, leaving the write to a later attempt if it keeps
//!    moving; then splice the block in (everything outside the markers stays byte for byte)
//!    and `PUT` it, unless the description already holds exactly this block (an earlier
//!    attempt's `PUT` whose outcome was lost): never written twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::{
    fenced,
    llm_call::{self, Answering, Called},
    review::{ReviewDeps, gitlab_error, to_review_diff, version_and_settings},
};
use crate::{
    gitlab::ProjectRef,
    llm::{ChatRequest, Message},
    mr_ref::{MrRef, Project},
    queue::{JobContext, JobError, JobResult, NewJob, Outcome, Queue, ResultExt},
    review::{
        Chunk, ChunkConfig, FileDiff, HeadSha, Language, Prompt, PromptOptions,
        describe::{self, ChangedFile, Description, Splice},
        skip::SkippedFile,
    },
    spend::ledger::{CallContext, CallPurpose},
};

/// The stable kind name of a description job.
pub const KIND: &str = "describe";

/// Attempts a description gets; each resumes from the stored answers.
const MAX_ATTEMPTS: i32 = 5;
/// Output cap per answer: a summary and a line per file of a large chunk.
const MAX_DESCRIBE_TOKENS: u32 = 2048;
/// Reads of the MR before the write is left to a later attempt, each after the description
/// was seen changing.
const SETTLE_READS: u32 = 4;
/// Pause after a read that saw the MR edited: an author at work saves more than once.
const SETTLE_PAUSE: Duration = Duration::from_secs(1);

/// A description job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeArgs {
    /// `project!iid`, for people reading `status`.
    pub mr: String,
    /// The project, by id or path.
    pub project: Project,
    /// The merge request's IID.
    pub iid: u64,
}

impl DescribeArgs {
    /// Arguments for describing `mr`.
    pub fn new(mr: MrRef) -> Self {
        Self {
            mr: mr.to_string(),
            project: mr.project,
            iid: mr.iid,
        }
    }

    /// The job key: at most one unfinished description per MR (a description that ends while
    /// the MR has moved on enqueues the next one itself).
    pub fn dedupe_key(project: &Project, iid: u64) -> String {
        format!("{KIND}:{project}!{iid}")
    }

    /// The job row.
    pub fn job(&self, priority: i16) -> NewJob {
        NewJob::new(
            KIND,
            serde_json::to_value(self).expect("describe args serialize"),
        )
        .priority(priority)
        .max_attempts(MAX_ATTEMPTS)
        .dedupe_key(Self::dedupe_key(&self.project, self.iid))
    }

    fn project_ref(&self) -> Result<ProjectRef, JobError> {
        self.project
            .to_string()
            .parse()
            .map_err(|e| JobError::fatal(format!("invalid project {}: {e}", self.project)))
    }
}

/// The description row as the job needs it.
#[derive(Debug, Clone)]
struct DescriptionRow {
    id: i64,
    state: String,
    project: String,
    mr_iid: i64,
    head_sha: String,
    mr_title: String,
    author_text: String,
    language: Option<String>,
    seen_updated_at: Option<DateTime<Utc>>,
    files: serde_json::Value,
    part_count: i32,
    block: Option<String>,
}

/// Runs a description job.
///
/// # Errors
/// Classified failures of GitLab, the LLM and the database.
pub async fn run_describe(ctx: &JobContext, deps: &ReviewDeps, args: DescribeArgs) -> JobResult {
    let pool = ctx.queue().pool().clone();
    let existing = sqlx::query_as!(
        DescriptionRow,
        r#"select id, state, project, mr_iid, head_sha, mr_title, author_text, language,
                  seen_updated_at, files, part_count, block
           from mr_descriptions where job_id = $1"#,
        ctx.job.id().get()
    )
    .fetch_optional(&pool)
    .await
    .retryable()?;
    let row = match existing {
        Some(row) => row,
        None => plan(ctx, deps, &args).await?,
    };
    if row.state != "describing" {
        // Written or skipped by an attempt whose completion was lost.
        let mut tx = pool.begin().await.retryable()?;
        Queue::complete(&mut tx, ctx.lease()).await?;
        tx.commit().await.retryable()?;
        return Ok(Outcome::Settled);
    }
    let block = match &row.block {
        Some(block) => block.clone(),
        None => match answer(ctx, deps, &row).await? {
            Called::Answered(block) => block,
            Called::Settled(result) => return result,
        },
    };
    write(ctx, deps, &args, &row, &block).await
}

/// What a changed file is, in the walkthrough's words.
fn changed_file(diff: &FileDiff, skipped: &[SkippedFile]) -> ChangedFile {
    let path = if diff.deleted_file {
        &diff.old_path
    } else {
        &diff.new_path
    };
    let change = if diff.new_file {
        "added"
    } else if diff.deleted_file {
        "deleted"
    } else if diff.renamed_file {
        "renamed"
    } else {
        "modified"
    };
    ChangedFile {
        path: path.clone(),
        change: change.to_owned(),
        skipped: skipped
            .iter()
            .find(|s| &s.path == path)
            .map(|s| s.reason.to_string()),
    }
}

async fn plan(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: &DescribeArgs,
) -> Result<DescriptionRow, JobError> {
    let project = args.project_ref()?;
    let pool = ctx.queue().pool();
    let project_text = args.project.to_string();
    // The target branch's settings (never the MR's own): language and ignore globs.
    let (mr, (shas, (settings, _))) = tokio::try_join!(
        async {
            deps.gitlab
                .merge_request(&project, args.iid)
                .await
                .map_err(gitlab_error)
        },
        version_and_settings(deps, pool, &project, &project_text, args.iid),
    )?;
    let author_text =
        describe::author_text(mr.description.as_deref().unwrap_or_default()).into_owned();
    let language = settings.language_for(&author_text);
    let diffs: Vec<FileDiff> = deps
        .gitlab
        .diffs(&project, args.iid)
        .await
        .map_err(gitlab_error)?
        .into_iter()
        .map(to_review_diff)
        .collect();
    let config = ChunkConfig {
        budget: deps.budget,
        skip: settings.skip_rules(),
        max_chunks: deps.max_chunks,
    };
    let options = PromptOptions {
        language: Some(language.clone()),
        instructions: None,
    };
    // Parsing and packing a giant MR is CPU work: keep it off the async thread.
    let (chunks, files) = tokio::task::spawn_blocking(move || {
        let plan = review_plan(&diffs, &config, &options);
        let files: Vec<ChangedFile> = diffs
            .iter()
            .map(|d| changed_file(d, &plan.skipped))
            .collect();
        (plan.chunks, files)
    })
    .await
    .map_err(|e| JobError::retryable(format!("planning the description failed: {e}")))?;
    let part_count = i32::try_from(chunks.len()).unwrap_or(i32::MAX);
    // One part per chunk, and a merge part (no chunk) when there are several.
    let mut indexes: Vec<i32> = (0..part_count).collect();
    let mut bodies: Vec<Option<String>> = chunks
        .iter()
        .map(|c| serde_json::to_string(c).map(Some))
        .collect::<Result<_, _>>()
        .map_err(JobError::fatal)?;
    if part_count > 1 {
        indexes.push(part_count);
        bodies.push(None);
    }
    let files_json = serde_json::to_value(&files).map_err(JobError::fatal)?;
    let iid = i64::try_from(args.iid).map_err(JobError::fatal)?;

    let mut tx = pool.begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    let id = sqlx::query_scalar!(
        r#"
        insert into mr_descriptions (job_id, project, mr_iid, head_sha, mr_title, author_text,
            language, seen_updated_at, files, part_count)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        returning id
        "#,
        ctx.job.id().get(),
        project_text,
        iid,
        shas.head_sha,
        mr.title,
        author_text,
        language.to_string(),
        mr.updated_at,
        files_json,
        part_count,
    )
    .fetch_one(&mut *tx)
    .await
    .retryable()?;
    sqlx::query!(
        r#"insert into mr_description_parts (description_id, part_index, chunk)
           select $1, i, c::json from unnest($2::int4[], $3::text[]) as t(i, c)"#,
        id,
        &indexes,
        &bodies as &[Option<String>],
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    tx.commit().await.retryable()?;
    tracing::info!(mr = %args.mr, description.id = id, parts = part_count, "description planned");
    Ok(DescriptionRow {
        id,
        state: "describing".to_owned(),
        project: project_text,
        mr_iid: iid,
        head_sha: shas.head_sha,
        mr_title: mr.title,
        author_text,
        language: Some(language.to_string()),
        seen_updated_at: mr.updated_at,
        files: files_json,
        part_count,
        block: None,
    })
}

/// The review's chunk plan, reused: the same budget, skip rules and packing.
fn review_plan(
    diffs: &[FileDiff],
    config: &ChunkConfig,
    options: &PromptOptions,
) -> crate::review::ChunkPlan {
    crate::review::pack::plan_with(diffs, config, options)
}

/// Asks for every missing answer, then renders and stores the block.
async fn answer(
    ctx: &JobContext,
    deps: &ReviewDeps,
    row: &DescriptionRow,
) -> Result<Called<String>, JobError> {
    let pool = ctx.queue().pool();
    let parts = sqlx::query!(
        r#"select part_index, chunk, answer from mr_description_parts
           where description_id = $1 order by part_index"#,
        row.id
    )
    .fetch_all(pool)
    .await
    .retryable()?;
    let language = row
        .language
        .as_deref()
        .and_then(|l| Language::parse(l).ok());
    let mut answers: Vec<Description> = Vec::new();
    let mut merged = None;
    for part in parts {
        let known: Option<Description> = part
            .answer
            .map(serde_json::from_value)
            .transpose()
            .map_err(JobError::fatal)?;
        let answer = match (known, part.chunk) {
            (Some(answer), _) => answer,
            (None, Some(chunk)) => {
                let chunk: Chunk = serde_json::from_value(chunk).map_err(JobError::fatal)?;
                let prompt =
                    describe::prompt(&chunk, &row.mr_title, &row.author_text, language.as_ref());
                match ask(ctx, deps, row, part.part_index, prompt).await? {
                    Called::Answered(answer) => answer,
                    Called::Settled(result) => return Ok(Called::Settled(result)),
                }
            }
            (None, None) => {
                let prompt = describe::merge_prompt(
                    &answers,
                    &row.mr_title,
                    &row.author_text,
                    language.as_ref(),
                );
                match ask(ctx, deps, row, part.part_index, prompt).await? {
                    Called::Answered(answer) => answer,
                    Called::Settled(result) => return Ok(Called::Settled(result)),
                }
            }
        };
        if part.part_index < row.part_count {
            answers.push(answer);
        } else {
            merged = Some(answer);
        }
    }
    let files: Vec<ChangedFile> =
        serde_json::from_value(row.files.clone()).map_err(JobError::fatal)?;
    let head = HeadSha::parse(&row.head_sha).map_err(JobError::fatal)?;
    let block =
        describe::render_block(&describe::combine(&answers, merged.as_ref()), &files, &head);
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update mr_descriptions set block = $2 where id = $1
             and lease_held($3, $4)"#,
        row.id,
        block,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(pool)
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)?;
    Ok(Called::Answered(block))
}

/// Where a description part's answer goes: parsed as a description, stored on its part.
#[derive(Debug, Clone)]
struct DescriptionPart {
    description_id: i64,
    part_index: i32,
}

impl Answering for DescriptionPart {
    type Answer = Description;
    const WHAT: &'static str = "description";

    fn parse(&self, content: &str) -> Result<Description, String> {
        describe::parse_answer(content).map_err(|e| e.to_string())
    }

    async fn store(&self, tx: &mut PgConnection, answer: &Description) -> Result<(), JobError> {
        sqlx::query!(
            r#"update mr_description_parts set answer = $3, answered_at = now()
               where description_id = $1 and part_index = $2"#,
            self.description_id,
            self.part_index,
            serde_json::to_value(answer).map_err(JobError::fatal)?,
        )
        .execute(tx)
        .await
        .retryable()?;
        Ok(())
    }
}

/// One answer from the model (purpose `describe`), see [`llm_call::ask`].
async fn ask(
    ctx: &JobContext,
    deps: &ReviewDeps,
    row: &DescriptionRow,
    part_index: i32,
    prompt: Prompt,
) -> Result<Called<Description>, JobError> {
    let mut request = ChatRequest::new(vec![
        Message::system(prompt.system),
        Message::user(prompt.user),
    ]);
    request.json_object = true;
    request.temperature = Some(0.2);
    request.max_tokens = Some(MAX_DESCRIBE_TOKENS);
    let call = CallContext {
        lease: ctx.lease(),
        review_id: None,
        chunk_index: Some(part_index),
        project: row.project.clone(),
        mr_iid: row.mr_iid,
        head_sha: row.head_sha.clone(),
        review_type: KIND.to_owned(),
        model: deps.llm.model().to_owned(),
        purpose: CallPurpose::Describe,
    };
    let part = DescriptionPart {
        description_id: row.id,
        part_index,
    };
    llm_call::ask(ctx, deps, call, request, part).await
}

/// Writes the block into the description (see the module docs) and finishes the job.
async fn write(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: &DescribeArgs,
    row: &DescriptionRow,
    block: &str,
) -> JobResult {
    let project = args.project_ref()?;
    let mut seen = row.seen_updated_at;
    for read in 1..=SETTLE_READS {
        let mr = deps
            .gitlab
            .merge_request(&project, args.iid)
            .await
            .map_err(gitlab_error)?;
        let moved_on = mr.sha.as_deref().is_some_and(|sha| sha != row.head_sha);
        if mr.updated_at != seen {
            // Edited since the last read: perhaps the author at work, so not now.
            seen = mr.updated_at;
            set_seen(ctx, row.id, seen).await?;
            tracing::info!(mr = %args.mr, read, "the merge request changed since it was read; waiting before writing its description");
            if read < SETTLE_READS {
                tokio::time::sleep(SETTLE_PAUSE).await;
            }
            continue;
        }
        let current = mr.description.unwrap_or_default();
        let next = match describe::splice(&current, block) {
            Splice::Unchanged => return finish(ctx, args, row, Ended::Written, moved_on).await,
            Splice::Malformed(why) => {
                let reason = format!("{why}; the description was left as it is");
                return finish(ctx, args, row, Ended::Skipped(reason), moved_on).await;
            }
            Splice::Write(next) => next,
        };
        if let Some(line) = describe::quick_action_line(&next) {
            let reason = format!(
                "line {line} of the description starts with `/` outside code, and GitLab would run it as a quick action on any edit; the description was left as it is"
            );
            return finish(ctx, args, row, Ended::Skipped(reason), moved_on).await;
        }
        mark_attempted(ctx, row.id).await?;
        deps.gitlab
            .update_description(&project, args.iid, &next)
            .await
            .map_err(gitlab_error)?;
        return finish(ctx, args, row, Ended::Written, moved_on).await;
    }
    Err(JobError::retryable(
        "the merge request kept changing while reviewq waited to write its description; trying again later",
    ))
}

async fn set_seen(ctx: &JobContext, id: i64, seen: Option<DateTime<Utc>>) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update mr_descriptions set seen_updated_at = $2 where id = $1
             and lease_held($3, $4)"#,
        id,
        seen,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// Records that a `PUT` is about to go out (its outcome is unknown until recorded).
async fn mark_attempted(ctx: &JobContext, id: i64) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update mr_descriptions set attempted_at = now() where id = $1
             and lease_held($2, $3)"#,
        id,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// How a description ended.
enum Ended {
    Written,
    Skipped(String),
}

/// Records the end and completes the job in one transaction; if the MR moved on meanwhile,
/// enqueues the description of its new head in that transaction too.
async fn finish(
    ctx: &JobContext,
    args: &DescribeArgs,
    row: &DescriptionRow,
    ended: Ended,
    moved_on: bool,
) -> JobResult {
    let pool = ctx.queue().pool();
    let (state, outcome) = match &ended {
        Ended::Written => ("written", None),
        Ended::Skipped(reason) => ("skipped", Some(reason.as_str())),
    };
    let priority = ctx.job.priority;
    let mut tx = pool.begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"update mr_descriptions set state = $2, outcome = $3,
               written_at = case when $2 = 'written' then now() end
           where id = $1"#,
        row.id,
        state,
        outcome,
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    Queue::complete(&mut tx, ctx.lease()).await?;
    if moved_on {
        Queue::enqueue(&mut *tx, &args.job(priority)).await?;
    }
    tx.commit().await.retryable()?;
    match ended {
        Ended::Written => {
            tracing::info!(mr = %args.mr, description.id = row.id, "description written");
        }
        Ended::Skipped(reason) => {
            tracing::warn!(mr = %args.mr, description.id = row.id, %reason, "description not written");
        }
    }
    Ok(Outcome::Settled)
}
