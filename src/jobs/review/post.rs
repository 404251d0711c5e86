//! The posting phase: inline comments (directly or as drafts published at once) from the
//! outbox, then the end of the review.

use std::collections::HashMap;

use crate::{
    gitlab::{self, DiffShas, LineAnchor, ProjectRef},
    queue::{JobContext, JobError, Outcome, Queue, ResultExt},
    review::{
        self, FindingKey, HeadSha, Marker, MarkerKind,
        placement::{CommentKind, CommentState},
    },
};

use super::{
    ReviewArgs, ReviewDeps, ReviewRow, gitlab_error, head_sha, marker, posting,
    round::RoundSettings,
    store::{
        OutboxContent, OutboxRow, every_chunk_failed, mark_attempted, mark_done, outbox,
        record_drafted, record_posted, set_state,
    },
    summary::{living_summary_body, post_summary},
    threads::{MrThreads, mr_threads, resolve_outdated},
};

pub(super) fn line_anchor(position: &review::Position) -> Option<LineAnchor> {
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
pub(super) async fn post(
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
    // Whether the MR moved on is read alongside the summary's write, not after it: a round
    // trip less per review, and the read is no staler, since both end before the commit.
    let ((), current) = tokio::try_join!(
        post_summary(ctx, &target, &summary, &threads.markers),
        async {
            deps.gitlab
                .merge_request(&project, args.iid)
                .await
                .map_err(gitlab_error)
        },
    )?;
    finish(ctx, args, review, &current).await
}

/// Who and what a posting phase writes to.
pub(super) struct Target<'a> {
    pub(super) deps: &'a ReviewDeps,
    pub(super) args: &'a ReviewArgs,
    pub(super) review: &'a ReviewRow,
    pub(super) project: &'a ProjectRef,
    pub(super) head: &'a HeadSha,
}

/// A comment GitLab has, not yet recorded in the outbox.
pub(super) struct Posted {
    pub(super) key: String,
    pub(super) note_id: u64,
    pub(super) discussion_id: Option<String>,
}

/// The GitLab position of an outbox row, or `None` (after marking the row downgraded)
/// when it has no line to anchor to.
pub(super) async fn row_position(
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
            CommentState::Downgraded,
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
pub(super) fn inline_marker(
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
pub(super) async fn post_inline(
    ctx: &JobContext,
    t: &Target<'_>,
    shas: &DiffShas,
    existing: &HashMap<Marker, (u64, Option<String>)>,
    posted: &mut Vec<Posted>,
) -> Result<(), JobError> {
    let (args, review) = (t.args, t.review);
    let mut to_post = Vec::new();
    for row in outbox(ctx.queue().pool(), review.id).await? {
        if row.kind != CommentKind::Inline || row.state != CommentState::Pending {
            continue;
        }
        if args.dry_run {
            set_state(ctx, review.id, &row.key, CommentState::DryRun, None).await?;
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
        let body = inline_body(&row)?.to_owned();
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
                set_state(
                    ctx,
                    review.id,
                    &key,
                    CommentState::Downgraded,
                    Some(&err.to_string()),
                )
                .await?;
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
pub(super) async fn post_drafts(
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
        if row.kind != CommentKind::Inline
            || !matches!(row.state, CommentState::Pending | CommentState::Drafted)
        {
            continue;
        }
        let (m, found) = inline_marker(t, &row, existing)?;
        if let Some(found) = found {
            // Published already (by an earlier attempt's bulk publish).
            posted.push(found);
            continue;
        }
        if row.state == CommentState::Drafted || drafts.contains_key(&m) {
            staged.push((row.key, m));
            continue;
        }
        let Some(position) = row_position(ctx, review.id, &row, shas).await? else {
            continue;
        };
        match posting::create_draft_once(t, inline_body(&row)?, &position, &m).await {
            Ok(draft) => {
                record_drafted(ctx, review.id, &row.key, draft.id).await?;
                staged.push((row.key, m));
            }
            Err(err @ gitlab::Error::PositionRejected { .. }) => {
                set_state(
                    ctx,
                    review.id,
                    &row.key,
                    CommentState::Downgraded,
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

/// Marks the review done and completes the job in one transaction; if the MR moved on
/// while it was reviewed (`current` is GitLab's MR, read after the comments were posted), enqueues a review of the new head in that same transaction.
pub(super) async fn finish(
    ctx: &JobContext,
    args: &ReviewArgs,
    review: &ReviewRow,
    current: &gitlab::MergeRequest,
) -> Result<Outcome, JobError> {
    let moved = current
        .sha
        .as_deref()
        .is_some_and(|sha| sha != review.head_sha)
        && current.state == "opened";
    let pool = ctx.queue().pool();
    // Every chunk failed: the summary says why, and the job fails with that reason so that
    // `reviewq review` in CI exits non-zero instead of reporting an empty review as done.
    let all_failed = every_chunk_failed(pool, review.id).await?;
    let mut tx = pool.begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    mark_done(&mut tx, review.id).await?;
    if let Some(reason) = all_failed {
        tx.commit().await.retryable()?;
        return Err(JobError::fatal(format!(
            "no chunk could be reviewed: {}",
            reason.unwrap_or_else(|| "the chunk jobs failed".into())
        )));
    }
    Queue::complete(&mut tx, ctx.lease()).await?;
    let paused =
        crate::jobs::conversation::store::paused_by(pool, &args.project.to_string(), args.iid)
            .await
            .retryable()?;
    if let Some(by) = &paused {
        tracing::info!(mr = %args.mr, %by, "reviews on push are paused: the new head waits for `resume`");
    }
    if moved && paused.is_none() {
        let next = ReviewArgs {
            force: false,
            ..args.clone()
        };
        let priority = ctx.job.priority;
        let id = Queue::enqueue(&mut *tx, &next.job(priority)).await?.id();
        tracing::info!(mr = %args.mr, next.job = %id, "the MR moved on during the review; reviewing the new head next");
    }
    tx.commit().await.retryable()?;
    tracing::info!(mr = %args.mr, review.id = review.id, chunks = review.chunk_count, "review done");
    Ok(Outcome::Settled)
}

/// An inline row's Markdown: the outbox's CHECK constraint gives every row but the findings
/// listed in the summary one, so a missing body is a schema this code does not know.
fn inline_body(row: &OutboxRow) -> Result<&str, JobError> {
    match &row.content {
        OutboxContent::Comment(body) => Ok(body),
        OutboxContent::Listed(_) => Err(JobError::fatal(format!(
            "outbox row {} has no comment body",
            row.key
        ))),
    }
}
