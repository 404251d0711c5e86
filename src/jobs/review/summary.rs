//! The living summary: the one note per MR and review type, rebuilt every round from the
//! chunks, the outbox and the ledger, and edited in place.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::{
    gitlab,
    queue::{JobContext, JobError, ResultExt},
    review::{
        self, Finding, HeadSha, ListedBecause, ListedFinding, LivingSummary, Marker, MarkerKind,
        Round, RoundKind, Severity, SkippedFile, UnanchoredReason,
        placement::{CommentState, SummaryPlace, summary_place},
    },
};

use super::{
    ReviewArgs, gitlab_error,
    post::Target,
    posting,
    round::RoundSettings,
    store::{
        OutboxContent, chunk_outcomes, mark_attempted, outbox, record_summary, set_state,
        stage_summary,
    },
    threads::MrThreads,
};

/// The living summary note's body: this round's results, the bot's threads still open,
/// and every round so far with its tokens and cost.
pub(super) async fn living_summary_body(
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
        let because = match summary_place(row.kind, row.state) {
            SummaryPlace::BelowThreshold => {
                below_min_severity += 1;
                continue;
            }
            SummaryPlace::Hidden => continue,
            SummaryPlace::OpenInline => {
                open_inline.push(severity);
                continue;
            }
            SummaryPlace::OverInlineLimit => ListedBecause::OverInlineLimit {
                max_inline_comments: max_inline,
            },
            SummaryPlace::RejectedByGitLab => {
                ListedBecause::Unanchored(UnanchoredReason::RejectedByGitLab {
                    message: row.error.clone().unwrap_or_default(),
                })
            }
            SummaryPlace::Unanchored => ListedBecause::Unanchored(
                match &row.content {
                    OutboxContent::Listed(Some(reason)) => {
                        serde_json::from_value(reason.clone()).ok()
                    }
                    _ => None,
                }
                .unwrap_or(UnanchoredReason::UnknownPath),
            ),
        };
        // Rows without a finding (none today but the summary itself) list nothing.
        if let Some(finding) = finding {
            listed.push(ListedFinding { finding, because });
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
        .retryable()?;
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
        paused_by: crate::jobs::conversation::store::paused_by(
            pool,
            &args.project.to_string(),
            args.iid,
        )
        .await
        .retryable()?,
    };
    Ok(review::render::living_summary(&report))
}

/// Every finished round of this MR and review type plus the current one, newest first,
/// with the tokens and cost the ledger recorded for each.
pub(super) async fn rounds(
    pool: &PgPool,
    args: &ReviewArgs,
    current: i64,
) -> Result<Vec<Round>, JobError> {
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
    .retryable()?;
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
pub(super) fn with_earlier_rounds(mut rounds: Vec<Round>, threads: &MrThreads) -> Vec<Round> {
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
pub(super) async fn post_summary(
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
    .retryable()?
    .map(|s| s.parse::<CommentState>())
    .transpose()
    .map_err(JobError::fatal)?;
    if state.is_some_and(CommentState::is_final) {
        return Ok(());
    }
    stage_summary(ctx, review.id, body).await?;
    if args.dry_run {
        return set_state(ctx, review.id, "summary", CommentState::DryRun, None).await;
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
    .retryable()?
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
    record_summary(ctx, review.id, args, note_id).await
}
