//! Creating comments exactly once through a flaky GitLab. The client retries a create only
//! while GitLab surely did nothing (a 429, a connection never made); when the outcome is
//! unknown (a 5xx, a timeout after sending) it returns [`gitlab::Error::OutcomeUnknown`],
//! and these helpers look for the comment's marker on the MR before sending it again.

use futures_util::{StreamExt, stream};

use super::{Marker, post::Target};
use crate::{
    gitlab::{self, DraftNote, Note, Position, PostedDiscussion},
    review,
};

/// Sends of one comment whose outcome stayed unknown before the review hands the job
/// back (whose next attempt finds the comment by its marker, too).
const UNKNOWN_OUTCOME_TRIES: u32 = 3;

/// Inline threads of one review created at once. A few in flight cut the posting phase
/// several-fold at GitLab.com's 200-600 ms per created discussion, while staying far
/// below its per-user note-creation limits (and under `GITLAB_CONCURRENT_REQUESTS`, which
/// every request also passes).
pub(super) const INLINE_POSTS_IN_FLIGHT: usize = 4;

/// Posts each `(item, body, position, marker)` as an inline thread, at most
/// [`INLINE_POSTS_IN_FLIGHT`] at a time, and returns each item with its result, in input
/// order (the outbox's file-and-line order).
pub(super) async fn post_discussions<T>(
    t: &Target<'_>,
    items: Vec<(T, String, Position, Marker)>,
) -> Vec<(T, Position, gitlab::Result<PostedDiscussion>)> {
    stream::iter(items)
        .map(|(item, body, position, marker)| async move {
            let result = post_discussion_once(t, &body, &position, &marker).await;
            (item, position, result)
        })
        .buffered(INLINE_POSTS_IN_FLIGHT)
        .collect()
        .await
}

/// Creates one inline thread unless the MR already has its marker.
async fn post_discussion_once(
    t: &Target<'_>,
    body: &str,
    position: &Position,
    marker: &Marker,
) -> gitlab::Result<PostedDiscussion> {
    let gitlab = &t.deps.gitlab;
    let mut tries = 0;
    loop {
        tries += 1;
        match gitlab
            .post_discussion(t.project, t.args.iid, body, position)
            .await
        {
            Err(err @ gitlab::Error::OutcomeUnknown { .. }) => {
                let landed = gitlab
                    .discussions(t.project, t.args.iid)
                    .await?
                    .into_iter()
                    .find_map(|d| {
                        let note = d.notes.iter().find(|n| has_marker(&n.body, marker))?;
                        Some(PostedDiscussion {
                            note_id: note.id,
                            discussion_id: d.id.clone(),
                        })
                    });
                if let Some(found) = landed {
                    tracing::info!(discussion = %found.discussion_id, "GitLab had stored the comment despite its error; not posting it again");
                    return Ok(found);
                }
                if tries >= UNKNOWN_OUTCOME_TRIES {
                    return Err(err);
                }
                tracing::info!(error = %err, "the comment is not on the merge request; posting it again");
            }
            other => return other,
        }
    }
}

/// Creates one overview note unless the MR already has a note matching `ours`.
pub(super) async fn post_note_once(
    t: &Target<'_>,
    body: &str,
    ours: impl Fn(&Marker) -> bool,
) -> gitlab::Result<Note> {
    let gitlab = &t.deps.gitlab;
    let mut tries = 0;
    loop {
        tries += 1;
        match gitlab.post_note(t.project, t.args.iid, body).await {
            Err(err @ gitlab::Error::OutcomeUnknown { .. }) => {
                let landed = gitlab
                    .notes(t.project, t.args.iid)
                    .await?
                    .into_iter()
                    .find(|n| review::find_marker(&n.body).as_ref().is_some_and(&ours));
                if let Some(found) = landed {
                    tracing::info!(
                        note = found.id,
                        "GitLab had stored the note despite its error; not posting it again"
                    );
                    return Ok(found);
                }
                if tries >= UNKNOWN_OUTCOME_TRIES {
                    return Err(err);
                }
                tracing::info!(error = %err, "the note is not on the merge request; posting it again");
            }
            other => return other,
        }
    }
}

/// Creates one draft note unless the token user's drafts already hold its marker.
pub(super) async fn create_draft_once(
    t: &Target<'_>,
    body: &str,
    position: &Position,
    marker: &Marker,
) -> gitlab::Result<DraftNote> {
    let gitlab = &t.deps.gitlab;
    let mut tries = 0;
    loop {
        tries += 1;
        match gitlab
            .create_draft_note(t.project, t.args.iid, body, Some(position))
            .await
        {
            Err(err @ gitlab::Error::OutcomeUnknown { .. }) => {
                let landed = gitlab
                    .draft_notes(t.project, t.args.iid)
                    .await?
                    .into_iter()
                    .find(|d| has_marker(&d.note, marker));
                if let Some(found) = landed {
                    return Ok(found);
                }
                if tries >= UNKNOWN_OUTCOME_TRIES {
                    return Err(err);
                }
            }
            other => return other,
        }
    }
}

fn has_marker(body: &str, marker: &Marker) -> bool {
    review::find_marker(body).as_ref() == Some(marker)
}
