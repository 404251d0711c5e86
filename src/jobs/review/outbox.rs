//! Anchoring this round's findings and writing them to the outbox, each with the state that
//! decides whether it is posted.

use crate::{
    queue::{JobContext, JobError},
    review::{
        self, Anchor, Finding, FindingKey, Fingerprint, Marker, Severity,
        placement::{CommentKind, CommentState, InlineFacts, inline_state, reviewed_files},
    },
};

use super::{
    ReviewArgs, ReviewRow, head_sha,
    round::RoundSettings,
    store::{OutboxColumns, chunk_results, write_outbox},
    threads::{BotThread, MrThreads},
};

/// A finding of this round, anchored and keyed.
pub(super) struct Placed {
    pub(super) finding: Finding,
    pub(super) anchor: Anchor,
    pub(super) key: FindingKey,
    pub(super) fingerprint: Fingerprint,
}

/// Anchors every finding and writes the comments to the outbox, then moves to posting.
/// Each finding gets its state here: `pending` (to post), `open` (an earlier round's
/// thread about the same code is still open), `dismissed` (someone answered "won't fix" to
/// it), `below_threshold` (under the project's `min_severity`), or `over_limit` (beyond
/// `max_inline_comments`, listed in the summary instead).
pub(super) async fn build_outbox(
    ctx: &JobContext,
    args: &ReviewArgs,
    review: &ReviewRow,
    round: &RoundSettings,
    threads: &MrThreads,
) -> Result<(), JobError> {
    let pool = ctx.queue().pool();
    let chunks = chunk_results(pool, review.id).await?;
    let files = reviewed_files(chunks.iter().map(|c| &c.chunk));
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
        let (kind, position, body, reason, state) = match &p.anchor {
            Anchor::Inline(position) => {
                let state = inline_state(InlineFacts {
                    below_threshold: below,
                    dismissed: dismissed.contains(&p.fingerprint),
                    open_elsewhere: open.contains(&p.fingerprint),
                    code_quality_only: round.code_quality_only,
                    inline_limit_reached: inline_count >= max_inline,
                });
                if state == CommentState::Pending {
                    inline_count += 1;
                }
                let m = Marker::finding(
                    args.review_type,
                    head.clone(),
                    p.key.clone(),
                    Some(p.fingerprint.clone()),
                );
                (
                    CommentKind::Inline,
                    Some(serde_json::to_value(position).map_err(JobError::fatal)?),
                    Some(review::render::inline_comment(&p.finding, position, &m)),
                    None,
                    state,
                )
            }
            Anchor::Summary(reason) => (
                CommentKind::Summary,
                None,
                None,
                Some(serde_json::to_value(reason).map_err(JobError::fatal)?),
                if below {
                    CommentState::BelowThreshold
                } else {
                    CommentState::Pending
                },
            ),
        };
        rows.key.push(p.key.as_str().to_owned());
        rows.kind.push(kind);
        rows.severity.push(p.finding.severity);
        rows.finding
            .push(serde_json::to_value(&p.finding).map_err(JobError::fatal)?);
        rows.position.push(position);
        rows.body.push(body);
        rows.unanchored_reason.push(reason);
        rows.state.push(state);
        rows.fingerprint.push(p.fingerprint.as_str().to_owned());
    }

    write_outbox(ctx, review.id, &rows).await
}
