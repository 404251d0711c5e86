//! The bot's threads on the MR: listed once per posting phase, and resolved when a push
//! changed the code they point at.

use std::collections::HashMap;

use crate::{
    disposition::Disposition,
    gitlab::ProjectRef,
    queue::JobError,
    review::{self, HeadSha, Marker, MarkerKind, ParsedFile, ReviewType, Round},
};

use super::{ReviewDeps, gitlab_error, plan::to_review_diff, post::Target};

/// One of the bot's threads on the MR, from any earlier round.
#[derive(Debug, Clone)]
pub(super) struct BotThread {
    pub(super) discussion_id: String,
    /// The marker of the thread's first note.
    pub(super) marker: Marker,
    pub(super) resolved: bool,
    /// The new-side line the thread points at, on the head in its marker.
    pub(super) line: Option<(String, u32)>,
    /// Someone replied that the finding will not be fixed.
    pub(super) dismissed: bool,
}

/// The MR's threads, listed once per run of the posting phase.
pub(super) struct MrThreads {
    /// Every marker on the MR: marker to (note id, discussion id).
    pub(super) markers: HashMap<Marker, (u64, Option<String>)>,
    /// The bot's threads of this review type.
    pub(super) bot: Vec<BotThread>,
    /// The rounds history the newest summary note of this review type carries.
    pub(super) summary_rounds: Vec<Round>,
}

pub(super) async fn mr_threads(
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
                && review::conversation::find_reply_marker(&reply.body).is_none()
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

/// Resolves the bot's open threads of earlier rounds whose line this push changed.
/// Returns the ids of the threads resolved.
pub(super) async fn resolve_outdated(
    t: &Target<'_>,
    threads: &MrThreads,
) -> Result<Vec<String>, JobError> {
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
