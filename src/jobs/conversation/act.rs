//! What a conversation does once the note is read: the gates (role, rate), the
//! acknowledgement, the action, the reply.

use chrono::Utc;

use super::{
    ConversationPolicy, Turn, finish, post_reply, question, silent,
    store::{self, ConversationState},
};
use crate::{
    gitlab,
    jobs::{
        llm_call::Called,
        review::{ReviewArgs, ReviewOptions, gitlab_error},
    },
    mr_ref::MrRef,
    queue::{JobError, JobResult, NewJob, Outcome, Queue, ResultExt},
    review::{
        MarkerKind, ReviewType,
        conversation::{self, Intent, ReplyMarker},
        find_marker,
    },
};

/// What the conversation's last transaction does besides ending it.
enum After {
    Nothing,
    Enqueue(NewJob),
    Pause,
    /// Ends the pause and reviews what was pushed meanwhile.
    Resume(NewJob),
}

/// Gates, acknowledgement, action and reply. `known_reply`: the reply an earlier attempt
/// already decided (an answer already paid for), posted as it is.
pub(super) async fn run(turn: &Turn<'_>, known_reply: Option<String>) -> JobResult {
    let policy = &turn.deps.conversation;
    if let Some(result) = gate(turn, policy).await? {
        return Ok(result);
    }
    // A question's 👀 goes out while the answer is worked on: a GitLab round trip less.
    if !silent(turn.ask.intent) && (turn.ask.intent != Intent::Question || known_reply.is_some()) {
        acknowledge(turn).await?;
    }
    if let Some(reply) = known_reply {
        let id = post_reply(turn, &reply).await?;
        return finish(turn, ConversationState::Answered, Some(id)).await;
    }
    let bot = turn.bot.username.as_str();
    let (text, after) = match turn.ask.intent {
        Intent::Resolve => {
            resolve_thread(turn).await?;
            return finish(turn, ConversationState::Answered, None).await;
        }
        Intent::Question => {
            let (answered, ()) = tokio::try_join!(question::answer(turn), acknowledge(turn))?;
            return match answered {
                Called::Answered(reply) => {
                    let id = post_reply(turn, &reply).await?;
                    finish(turn, ConversationState::Answered, Some(id)).await
                }
                Called::Settled(result) => result,
            };
        }
        Intent::Dismiss => (
            "Noted: I will not raise this finding again on this merge request.".to_owned(),
            After::Nothing,
        ),
        Intent::Review | Intent::FullReview => round(turn),
        Intent::Pause => (
            "Paused: I will not review pushes to this merge request until someone mentions \
             me with `resume`."
                .to_owned(),
            After::Pause,
        ),
        Intent::Resume => {
            let job = round_job(turn, false);
            (
                "Resumed: I will review this merge request's pushes again, starting with what \
                 was pushed while I was paused."
                    .to_owned(),
                After::Resume(job),
            )
        }
        Intent::ResolveAll => {
            let resolved = resolve_all(turn).await?;
            (
                format!("Resolved {resolved} of my open threads."),
                After::Nothing,
            )
        }
        Intent::Help => (conversation::help_text(bot), After::Nothing),
    };
    reply_and_settle(turn, &text, ConversationState::Answered, after).await
}

/// The role and rate gates: `Some` when the conversation ended there.
async fn gate(turn: &Turn<'_>, policy: &ConversationPolicy) -> Result<Option<Outcome>, JobError> {
    let pool = turn.ctx.queue().pool();
    let (project, iid) = (turn.project_key(), turn.mr_iid());
    let author_id = i64::try_from(turn.author.id).map_err(JobError::fatal)?;
    let role = policy
        .role(&turn.deps.gitlab, &turn.project, turn.author.id)
        .await
        .map_err(gitlab_error)?;
    if role.is_none_or(|level| level < policy.min_role.level()) {
        tracing::info!(note = turn.note.id, user = %turn.author.username, "below the minimum role: refused");
        if store::refusal_replied(pool, &project, iid, author_id).await? {
            return finish(turn, ConversationState::Refused, None)
                .await
                .map(Some);
        }
        let text = conversation::refusal_text(policy.min_role.name());
        return reply_and_settle(turn, &text, ConversationState::Refused, After::Nothing)
            .await
            .map(Some);
    }
    if !turn.ask.intent.spends_tokens() || policy.questions_per_hour == 0 {
        return Ok(None);
    }
    let limit = i64::from(policy.questions_per_hour);
    let over = store::recent_questions(pool, &project, iid, author_id)
        .await?
        .into_iter()
        .find(|(count, _)| *count >= limit)
        .and_then(|(_, oldest)| oldest);
    let Some(oldest) = over else {
        return Ok(None);
    };
    let wait = oldest + chrono::Duration::hours(1) - Utc::now();
    let minutes = (wait.num_seconds() + 59) / 60;
    tracing::info!(note = turn.note.id, minutes, "over the question rate limit");
    let text = conversation::limited_text(minutes);
    reply_and_settle(turn, &text, ConversationState::Limited, After::Nothing)
        .await
        .map(Some)
}

/// Adds `eyes` to the note. No lookup first: GitLab refuses a second identical award (with a
/// 404, as for a deleted note), so a retried attempt cannot award twice, and the request saved
/// is a GitLab round trip off every answer.
async fn acknowledge(turn: &Turn<'_>) -> Result<(), JobError> {
    match turn
        .deps
        .gitlab
        .award_emoji(&turn.project, turn.args.iid, turn.note.id, "eyes")
        .await
    {
        Ok(()) | Err(gitlab::Error::NotFound { .. }) => Ok(()),
        Err(err) => Err(gitlab_error(err)),
    }
}

/// `done` in the bot's thread: resolve it (nothing is posted).
async fn resolve_thread(turn: &Turn<'_>) -> Result<(), JobError> {
    let first = turn.discussion.notes.first();
    if first.is_some_and(|n| n.resolvable && !n.resolved) {
        turn.deps
            .gitlab
            .resolve_discussion(&turn.project, turn.args.iid, &turn.discussion.id, true)
            .await
            .map_err(gitlab_error)?;
    }
    Ok(())
}

/// `@bot resolve`: every open thread reviewq started with a finding.
async fn resolve_all(turn: &Turn<'_>) -> Result<usize, JobError> {
    let gitlab = &turn.deps.gitlab;
    let discussions = gitlab
        .discussions(&turn.project, turn.args.iid)
        .await
        .map_err(gitlab_error)?;
    let mut resolved = 0;
    for discussion in discussions {
        let Some(first) = discussion.notes.first() else {
            continue;
        };
        let ours = first.author.as_ref().is_some_and(|a| a.id == turn.bot.id)
            && find_marker(&first.body).is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)));
        if ours && first.resolvable && !first.resolved {
            gitlab
                .resolve_discussion(&turn.project, turn.args.iid, &discussion.id, true)
                .await
                .map_err(gitlab_error)?;
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// `@bot review` / `@bot full review`: the round's job and the reply announcing it.
fn round(turn: &Turn<'_>) -> (String, After) {
    let full = turn.ask.intent == Intent::FullReview;
    let text = if full {
        "Starting a full review of this merge request."
    } else {
        "Starting a review of what changed since my last round."
    };
    (text.to_owned(), After::Enqueue(round_job(turn, full)))
}

/// A round of the MR: incremental, or `full` (even of a head reviewed already).
fn round_job(turn: &Turn<'_>, full: bool) -> NewJob {
    let options = ReviewOptions {
        review_type: ReviewType::General,
        dry_run: false,
        force: full,
        full,
    };
    let mr = MrRef {
        project: turn.args.project.clone(),
        iid: turn.args.iid,
        host: None,
    };
    ReviewArgs::new(mr, &options).job(0)
}

/// Records the reply, posts it (unless GitLab has it already), then ends the conversation
/// together with what it changes.
async fn reply_and_settle(
    turn: &Turn<'_>,
    text: &str,
    state: ConversationState,
    after: After,
) -> JobResult {
    let body = conversation::reply_body(text, ReplyMarker(turn.note.id));
    let pool = turn.ctx.queue().pool();
    let lease = turn.ctx.lease();
    let mut conn = pool.acquire().await.retryable()?;
    let rows = store::set_reply(
        &mut conn,
        (lease.job_id.get(), lease.attempt),
        turn.note_id(),
        &body,
    )
    .await?;
    crate::jobs::fenced(rows, turn.ctx)?;
    drop(conn);
    let reply_id = post_reply(turn, &body).await?;
    let mut tx = pool.begin().await.retryable()?;
    let (project, iid) = (turn.project_key(), turn.mr_iid());
    match after {
        After::Nothing => {}
        After::Enqueue(job) => {
            Queue::enqueue(&mut *tx, &job).await?;
        }
        After::Pause => {
            store::pause(
                &mut tx,
                &project,
                iid,
                &turn.author.username,
                turn.note_id(),
            )
            .await?;
        }
        After::Resume(job) => {
            store::resume(&mut tx, &project, iid).await?;
            Queue::enqueue(&mut *tx, &job).await?;
        }
    }
    let reply = i64::try_from(reply_id).map_err(JobError::fatal)?;
    store::finish(&mut tx, turn.ctx, turn.note_id(), state, Some(reply)).await?;
    tx.commit().await.retryable()?;
    tracing::info!(note = turn.note.id, intent = %turn.ask.intent, state = state.as_str(), "conversation answered");
    Ok(Outcome::Succeeded)
}
