//! Every SQL statement on the review tables (`reviews`, `review_chunks`, `outbox`,
//! `mr_summaries`) that the review job and its chunks run. Writes after a claim are fenced by the
//! job's lease.

use sqlx::{PgConnection, PgPool};

use crate::{
    gitlab::DiffShas,
    queue::{JobContext, JobError, JobId, Queue, ResultExt},
    review::{
        self, Chunk, Finding,
        placement::{CommentKind, CommentState},
        render::FailedChunk,
    },
};

use super::{ReviewArgs, post::Posted};
use crate::jobs::fenced;

/// How many of a review job's comments (inline threads and the summary) are posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommentProgress {
    /// Posted, or rendered by a dry run.
    pub posted: i64,
    pub total: i64,
}

/// The comment counts of review job `job` (zero before it planned its round).
///
/// # Errors
/// Database errors.
pub async fn comment_progress(pool: &PgPool, job: JobId) -> sqlx::Result<CommentProgress> {
    let r = sqlx::query!(
        r#"select count(*) filter (where o.state in ('posted', 'dry_run')) as "posted!",
                  count(*) filter (where o.kind = 'inline' or o.key = 'summary') as "total!"
           from outbox o join reviews r on r.id = o.review_id
           where r.job_id = $1"#,
        job.get()
    )
    .fetch_one(pool)
    .await?;
    Ok(CommentProgress {
        posted: r.posted,
        total: r.total,
    })
}

/// When no chunk of the review succeeded, the error of one that did not (`Some(None)` if
/// it recorded none); `None` when a chunk succeeded.
pub(super) async fn every_chunk_failed(
    pool: &PgPool,
    review_id: i64,
) -> Result<Option<Option<String>>, JobError> {
    sqlx::query_scalar!(
        r#"
        select c.last_error from review_chunks rc join job_outcomes c on c.job_id = rc.job_id
        where rc.review_id = $1 and not rc.superseded and c.state <> 'succeeded'
          and not exists (select 1 from review_chunks ok join job_outcomes oj on oj.job_id = ok.job_id
                          where ok.review_id = $1 and not ok.superseded and oj.state = 'succeeded')
        limit 1
        "#,
        review_id
    )
    .fetch_optional(pool)
    .await
    .retryable()
}

/// The head a review job's round reviewed or, when the job reviewed nothing (the head was
/// reviewed before), the MR's last finished round's head: what `reviewq review
/// --code-quality` reports on.
///
/// # Errors
/// Database errors.
pub async fn reported_head(
    pool: &PgPool,
    job: JobId,
    project: &str,
    iid: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        r#"select head_sha as "head_sha!" from (
               (select head_sha, 0 as pick from reviews where job_id = $1)
               union all
               (select head_sha, 1 from reviews where project = $2 and mr_iid = $3
                    and state = 'done' order by finished_at desc limit 1)
           ) r order by pick limit 1"#,
        job.get(),
        project,
        iid,
    )
    .fetch_optional(pool)
    .await
}

/// A review job's round as `reviewq review` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    pub head_sha: String,
    pub dry_run: bool,
    /// Its inline comments by key, then the summary note.
    pub comments: Vec<ReportedComment>,
}

/// One comment of a [`RoundReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedComment {
    pub state: CommentState,
    /// GitLab's position of an inline comment; `None` for the summary note.
    pub position: Option<serde_json::Value>,
    /// Its Markdown (inline rows and the summary both have one: CHECK constraint).
    pub body: String,
}

/// The round review job `job` ran, if it planned one.
///
/// # Errors
/// Database errors; a state the outbox's CHECK constraint does not allow.
pub async fn round_report(pool: &PgPool, job: JobId) -> Result<Option<RoundReport>, JobError> {
    let Some(review) = sqlx::query!(
        "select id, head_sha, dry_run from reviews where job_id = $1",
        job.get()
    )
    .fetch_optional(pool)
    .await
    .retryable()?
    else {
        return Ok(None);
    };
    let rows = sqlx::query!(
        r#"select state, body, position from outbox
           where review_id = $1 and (kind = 'inline' or key = 'summary')
           order by key = 'summary', key"#,
        review.id
    )
    .fetch_all(pool)
    .await
    .retryable()?;
    let comments = rows
        .into_iter()
        .map(|r| {
            Ok(ReportedComment {
                state: r.state.parse().map_err(JobError::fatal)?,
                position: r.position,
                body: r.body.unwrap_or_default(),
            })
        })
        .collect::<Result<_, JobError>>()?;
    Ok(Some(RoundReport {
        head_sha: review.head_sha,
        dry_run: review.dry_run,
        comments,
    }))
}

/// Whether a finished, posted round of `review_type` already reviewed `head`.
pub(super) async fn head_reviewed(
    pool: &PgPool,
    project: &str,
    iid: i64,
    head: &str,
    review_type: &str,
) -> Result<bool, JobError> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from reviews where project = $1 and mr_iid = $2
               and head_sha = $3 and review_type = $4 and state = 'done' and not dry_run)
           as "e!""#,
        project,
        iid,
        head,
        review_type,
    )
    .fetch_one(pool)
    .await
    .retryable()
}

/// Stores chunks with their job ids in one statement (one round trip whatever their
/// number; large statements also pay TCP's small-packet delay once, not per chunk).
pub(super) async fn insert_chunks<'c>(
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
    .retryable()?;
    Ok(())
}

/// One stored chunk with the findings of its answer (none if it has no answer).
pub(super) struct ChunkResult {
    pub(super) chunk: Chunk,
    pub(super) findings: Option<Vec<Finding>>,
}

pub(super) async fn chunk_results(
    pool: &PgPool,
    review_id: i64,
) -> Result<Vec<ChunkResult>, JobError> {
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
    .retryable()?;
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
pub(super) struct ChunkOutcome {
    pub(super) summary: Option<String>,
    pub(super) dropped: i32,
    /// Findings past the per-answer hard limit.
    pub(super) beyond_limit: i32,
    pub(super) failed: Option<FailedChunk>,
}

/// Every live chunk's [`ChunkOutcome`]. A chunk's content (most of a review's stored bytes:
/// about 1 MB for 60 chunks) is read only for the chunks that failed.
pub(super) async fn chunk_outcomes(
    pool: &PgPool,
    review_id: i64,
) -> Result<Vec<ChunkOutcome>, JobError> {
    let rows = sqlx::query!(
        r#"
        select c.summary, coalesce(c.dropped_findings, 0) as "dropped!",
               c.findings_beyond_limit as beyond_limit,
               coalesce(j.state::text, 'failed') as "job_state!", j.last_error,
               case when j.state is distinct from 'succeeded' then c.chunk end as failed_chunk
        from review_chunks c left join job_outcomes j on j.job_id = c.job_id
        where c.review_id = $1 and not c.superseded
        order by c.chunk_index
        "#,
        review_id
    )
    .fetch_all(pool)
    .await
    .retryable()?;
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

/// New outbox rows, column by column, for one `unnest` insert. Kinds, severities and states
/// stay typed until the statement's text arrays are built in [`write_outbox`].
#[derive(Default)]
pub(super) struct OutboxColumns {
    pub(super) key: Vec<String>,
    pub(super) kind: Vec<CommentKind>,
    pub(super) severity: Vec<review::Severity>,
    pub(super) finding: Vec<serde_json::Value>,
    pub(super) position: Vec<Option<serde_json::Value>>,
    /// The inline comment's Markdown; `None` on a finding listed in the summary.
    pub(super) body: Vec<Option<String>>,
    /// Why a finding listed in the summary has no line (`review::UnanchoredReason`).
    pub(super) unanchored_reason: Vec<Option<serde_json::Value>>,
    pub(super) state: Vec<CommentState>,
    pub(super) fingerprint: Vec<String>,
}

pub(super) struct OutboxRow {
    pub(super) key: String,
    pub(super) kind: CommentKind,
    pub(super) severity: Option<String>,
    pub(super) finding: Option<serde_json::Value>,
    pub(super) position: Option<serde_json::Value>,
    pub(super) content: OutboxContent,
    pub(super) state: CommentState,
    pub(super) error: Option<String>,
    pub(super) fingerprint: Option<String>,
}

/// What an outbox row holds besides its finding: the two columns the CHECK constraint keeps
/// apart, as one value.
pub(super) enum OutboxContent {
    /// The Markdown to post (an inline comment).
    Comment(String),
    /// A finding listed in the summary, with why it has no line (`review::UnanchoredReason`
    /// as JSON; `None` if an older version wrote something else).
    Listed(Option<serde_json::Value>),
}

pub(super) async fn outbox(pool: &PgPool, review_id: i64) -> Result<Vec<OutboxRow>, JobError> {
    let rows = sqlx::query!(
        r#"select key, kind, severity, finding, position, body, unanchored_reason, state, error,
                  fingerprint
           from outbox where review_id = $1 and key <> 'summary'
           order by position->>'new_path', (position->>'new_line')::int, key"#,
        review_id
    )
    .fetch_all(pool)
    .await
    .retryable()?;
    // The CHECK constraints hold the same lists, so a value that does not parse is a
    // schema the code does not know: fatal, not retried.
    rows.into_iter()
        .map(|r| {
            Ok(OutboxRow {
                key: r.key,
                kind: r.kind.parse().map_err(JobError::fatal)?,
                severity: r.severity,
                finding: r.finding,
                position: r.position,
                content: match r.body {
                    Some(body) => OutboxContent::Comment(body),
                    None => OutboxContent::Listed(r.unanchored_reason),
                },
                state: r.state.parse().map_err(JobError::fatal)?,
                error: r.error,
                fingerprint: r.fingerprint,
            })
        })
        .collect()
}

/// Records that POSTs are about to go out for every pending comment, so a crash leaves a
/// trace of the unknown outcome (the markers on GitLab are checked before any re-post).
pub(super) async fn mark_attempted(ctx: &JobContext, review_id: i64) -> Result<(), JobError> {
    let lease = ctx.lease();
    let held = sqlx::query_scalar!(
        r#"
        with held as (select 1 where lease_held($2, $3)),
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
    .retryable()?;
    fenced(u64::from(held), ctx)
}

pub(super) async fn record_posted(
    ctx: &JobContext,
    review_id: i64,
    posted: &[Posted],
) -> Result<(), JobError> {
    if posted.is_empty() {
        return Ok(());
    }
    let lease = ctx.lease();
    let keys: Vec<String> = posted.iter().map(|p| p.key.clone()).collect();
    let notes = posted
        .iter()
        .map(|p| gitlab_id(p.note_id))
        .collect::<Result<Vec<i64>, _>>()?;
    let discussions: Vec<Option<String>> = posted.iter().map(|p| p.discussion_id.clone()).collect();
    let rows = sqlx::query!(
        r#"
        update outbox o set state = 'posted', gitlab_note_id = p.note_id,
            gitlab_discussion_id = p.discussion_id, posted_at = now(), error = null
        from unnest($2::text[], $3::int8[], $4::text[]) as p(key, note_id, discussion_id)
        where o.review_id = $1 and o.key = p.key
          and lease_held($5, $6)
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
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

pub(super) async fn set_state(
    ctx: &JobContext,
    review_id: i64,
    key: &str,
    state: CommentState,
    error: Option<&str>,
) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update outbox set state = $3, error = $4
           where review_id = $1 and key = $2
             and lease_held($5, $6)"#,
        review_id,
        key,
        state.as_str(),
        error,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// Writes a round's outbox rows and moves the review to posting, in one fenced transaction
/// (rows already there, from an attempt that crashed after this, are kept as they are).
pub(super) async fn write_outbox(
    ctx: &JobContext,
    review_id: i64,
    rows: &OutboxColumns,
) -> Result<(), JobError> {
    let kinds: Vec<&str> = rows.kind.iter().map(|k| k.as_str()).collect();
    let severities: Vec<&str> = rows.severity.iter().map(|s| s.as_str()).collect();
    let states: Vec<&str> = rows.state.iter().map(|s| s.as_str()).collect();
    let pool = ctx.queue().pool();
    let mut tx = pool.begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"
        insert into outbox (review_id, key, kind, severity, finding, position, body,
            unanchored_reason, state, fingerprint)
        select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::jsonb[], $9::text[], $10::text[])
        on conflict (review_id, key) do nothing
        "#,
        review_id,
        &rows.key,
        &kinds as &[&str],
        &severities as &[&str],
        &rows.finding,
        &rows.position as &[Option<serde_json::Value>],
        &rows.body as &[Option<String>],
        &rows.unanchored_reason as &[Option<serde_json::Value>],
        &states as &[&str],
        &rows.fingerprint,
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    sqlx::query!(
        "update reviews set state = 'posting' where id = $1",
        review_id
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    tx.commit().await.retryable()?;
    Ok(())
}

/// Records the draft note staged for an outbox row, to be published with the others.
pub(super) async fn record_drafted(
    ctx: &JobContext,
    review_id: i64,
    key: &str,
    draft_id: u64,
) -> Result<(), JobError> {
    let rows = sqlx::query!(
        r#"update outbox set state = 'drafted', gitlab_draft_id = $3
           where review_id = $1 and key = $2
             and lease_held($4, $5)"#,
        review_id,
        key,
        gitlab_id(draft_id)?,
        ctx.lease().job_id.get(),
        ctx.lease().attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// Marks a review done, in the caller's transaction (with its job's completion).
pub(super) async fn mark_done(tx: &mut PgConnection, review_id: i64) -> Result<(), JobError> {
    sqlx::query!(
        "update reviews set state = 'done', finished_at = now() where id = $1",
        review_id
    )
    .execute(tx)
    .await
    .retryable()?;
    Ok(())
}

/// Writes a chunk's answer to its row.
pub(super) async fn store_chunk_answer(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    review_id: i64,
    chunk_index: i32,
    answer: &review::Answer,
) -> Result<(), JobError> {
    sqlx::query!(
        r#"update review_chunks set summary = $3, findings = $4, dropped_findings = $5,
               findings_beyond_limit = $6, finished_at = now()
           where review_id = $1 and chunk_index = $2"#,
        review_id,
        chunk_index,
        answer.summary,
        serde_json::to_value(&answer.findings).map_err(JobError::fatal)?,
        count(answer.dropped_findings)?,
        count(answer.beyond_limit)?,
    )
    .execute(&mut **tx)
    .await
    .retryable()?;
    Ok(())
}

/// Marks a chunk replaced by its halves, in the caller's transaction (with the halves).
pub(super) async fn supersede_chunk(
    tx: &mut PgConnection,
    review_id: i64,
    chunk_index: i32,
) -> Result<(), JobError> {
    sqlx::query!(
        "update review_chunks set superseded = true, finished_at = now() where review_id = $1 and chunk_index = $2",
        review_id,
        chunk_index
    )
    .execute(tx)
    .await
    .retryable()?;
    Ok(())
}

/// Stores this round's summary body in the outbox (its row is the record that the summary
/// is due), in a fenced transaction.
pub(super) async fn stage_summary(
    ctx: &JobContext,
    review_id: i64,
    body: &str,
) -> Result<(), JobError> {
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"insert into outbox (review_id, key, kind, body) values ($1, 'summary', 'summary', $2)
           on conflict (review_id, key) do update set body = excluded.body"#,
        review_id,
        body
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    tx.commit().await.retryable()
}

/// Records the living summary's note: the MR's one note of this type, and this round's
/// summary row posted, in one fenced transaction.
pub(super) async fn record_summary(
    ctx: &JobContext,
    review_id: i64,
    args: &ReviewArgs,
    note_id: u64,
) -> Result<(), JobError> {
    let project_text = args.project.to_string();
    let iid = i64::try_from(args.iid).map_err(JobError::fatal)?;
    let note_id = gitlab_id(note_id)?;
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    sqlx::query!(
        r#"insert into mr_summaries (project, mr_iid, review_type, gitlab_note_id)
           values ($1, $2, $3, $4)
           on conflict (project, mr_iid, review_type) do update
               set gitlab_note_id = excluded.gitlab_note_id, updated_at = now()"#,
        project_text,
        iid,
        args.review_type.as_str(),
        note_id,
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    sqlx::query!(
        r#"update outbox set state = 'posted', gitlab_note_id = $2, posted_at = now(), error = null
           where review_id = $1 and key = 'summary'"#,
        review_id,
        note_id,
    )
    .execute(&mut *tx)
    .await
    .retryable()?;
    tx.commit().await.retryable()?;
    Ok(())
}

/// A new round's `reviews` row.
pub(super) struct NewReview<'a> {
    pub(super) job_id: i64,
    pub(super) project: &'a str,
    pub(super) mr_iid: i64,
    pub(super) review_type: &'a str,
    pub(super) dry_run: bool,
    pub(super) shas: &'a DiffShas,
    pub(super) mr_title: &'a str,
    pub(super) mr_description: &'a str,
    /// The skipped files (`review::SkippedFile` JSON).
    pub(super) skipped: &'a serde_json::Value,
    pub(super) chunk_count: i32,
    pub(super) file_count: i32,
    pub(super) scope: &'a str,
    pub(super) since_sha: Option<&'a str>,
    pub(super) settings_problem: Option<&'a str>,
    /// The round's resolved settings (`RoundSettings` JSON).
    pub(super) settings: &'a serde_json::Value,
}

/// Inserts a round's `reviews` row in the caller's (fenced) transaction; returns its id.
pub(super) async fn insert_review(
    tx: &mut PgConnection,
    r: &NewReview<'_>,
) -> Result<i64, JobError> {
    sqlx::query_scalar!(
        r#"
        insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha, base_sha,
            start_sha, mr_title, mr_description, skipped, chunk_count, file_count, scope,
            since_sha, settings_problem, settings)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
        returning id
        "#,
        r.job_id,
        r.project,
        r.mr_iid,
        r.review_type,
        r.dry_run,
        r.shas.head_sha,
        r.shas.base_sha,
        r.shas.start_sha,
        r.mr_title,
        r.mr_description,
        r.skipped,
        r.chunk_count,
        r.file_count,
        r.scope,
        r.since_sha,
        r.settings_problem,
        r.settings,
    )
    .fetch_one(tx)
    .await
    .retryable()
}

/// A GitLab id as the database stores it (`bigint`). GitLab's ids are far below `i64::MAX`;
/// one that is not is a corrupt answer, never to be saturated into another id.
fn gitlab_id(id: u64) -> Result<i64, JobError> {
    i64::try_from(id).map_err(|_| JobError::fatal(format!("GitLab id {id} does not fit a bigint")))
}

/// A count as the database stores it (`integer`).
fn count(n: usize) -> Result<i32, JobError> {
    i32::try_from(n).map_err(|_| JobError::fatal(format!("count {n} does not fit an integer")))
}
