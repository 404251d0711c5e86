//! The `conversation` job: one comment people wrote on a merge request (a reply in one of
//! reviewq's threads, or a note that mentions the bot), answered exactly once.
//!
//! 1. Read the note's thread; ignore system notes, the bot's own notes (by user id from
//!    `GET /user`) and notes that ask nothing of the bot (`review::conversation::classify`).
//! 2. Record the conversation (`conversations`, keyed by the note id) for this attempt.
//! 3. Check the author's role (members API, cached) and, for what spends tokens, the rate
//!    limits; say so at most once.
//! 4. Acknowledge with an `eyes` award, act (resolve, answer with one LLM call, enqueue a
//!    round, pause, resume, resolve all, help), and reply in the thread. The reply carries a
//!    marker keyed by the note id and is looked for on GitLab before posting, and an LLM
//!    answer is stored with its ledger usage before it is posted: a crash or retry never
//!    answers twice, nor pays twice.

mod act;
mod people;
mod question;
pub mod store;

use serde::{Deserialize, Serialize};

pub use self::people::{ConversationPolicy, MinRole};
use self::store::{ConversationState, NewConversation};
use super::{
    gitlab_budget,
    review::{ReviewDeps, gitlab_error},
};
use crate::{
    gitlab::{self, Discussion, Note, ProjectRef},
    mr_ref::{MrRef, Project},
    queue::{JobContext, JobError, JobResult, NewJob, Outcome, ResultExt},
    review::{
        MarkerKind,
        conversation::{self, Ask, Intent, ReplyMarker},
        find_marker,
    },
};

/// The stable kind name of a conversation job.
pub const KIND: &str = "conversation";

/// Attempts a conversation gets.
const MAX_ATTEMPTS: i32 = 5;

/// Conversations run before reviews: a person is waiting for the answer.
const PRIORITY: i16 = 5;

/// A conversation job's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationArgs {
    /// `project!iid`, for people reading `status`.
    pub mr: String,
    /// The project, by id or path.
    pub project: Project,
    /// The merge request's IID.
    pub iid: u64,
    /// The note to answer (GitLab note ids are instance-wide).
    pub note_id: u64,
    /// Its thread.
    pub discussion_id: String,
}

impl ConversationArgs {
    /// Arguments for answering note `note_id` of thread `discussion_id` on `mr`.
    pub fn new(mr: MrRef, note_id: u64, discussion_id: String) -> Self {
        Self {
            mr: mr.to_string(),
            project: mr.project,
            iid: mr.iid,
            note_id,
            discussion_id,
        }
    }

    /// The job row: one unfinished job per note (a redelivered hook finds it).
    pub fn job(&self) -> NewJob {
        NewJob::new(
            KIND,
            serde_json::to_value(self).expect("conversation args serialize"),
        )
        .priority(PRIORITY)
        .max_attempts(MAX_ATTEMPTS)
        .dedupe_key(format!("{KIND}:{}", self.note_id))
    }

    fn project_ref(&self) -> Result<ProjectRef, JobError> {
        self.project
            .to_string()
            .parse()
            .map_err(|e| JobError::fatal(format!("invalid project {}: {e}", self.project)))
    }
}

/// What one attempt works on: the note, its thread, who the bot is.
pub(super) struct Turn<'a> {
    pub(super) ctx: &'a JobContext,
    pub(super) deps: &'a ReviewDeps,
    pub(super) args: &'a ConversationArgs,
    pub(super) project: ProjectRef,
    pub(super) bot: gitlab::Author,
    pub(super) discussion: Discussion,
    pub(super) note: Note,
    pub(super) author: gitlab::Author,
    pub(super) ask: Ask,
    /// The thread was started by reviewq with a finding.
    pub(super) in_bot_thread: bool,
    /// The note's id and the MR's IID as the tables store them (checked once: an id that
    /// does not fit is a fatal error, never a saturated one).
    note_key: i64,
    iid_key: i64,
}

impl Turn<'_> {
    pub(super) fn note_id(&self) -> i64 {
        self.note_key
    }

    pub(super) fn project_key(&self) -> String {
        self.args.project.to_string()
    }

    pub(super) fn mr_iid(&self) -> i64 {
        self.iid_key
    }
}

/// Runs a conversation job.
///
/// # Errors
/// Classified failures of GitLab, the LLM and the database.
pub async fn run_conversation(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: ConversationArgs,
) -> JobResult {
    let deps = &ReviewDeps {
        gitlab: gitlab_budget::admitted(&deps.gitlab, ctx, deps.gitlab_budget),
        ..deps.clone()
    };
    let note_id = i64::try_from(args.note_id).map_err(JobError::fatal)?;
    let known = store::load(ctx.queue().pool(), note_id).await?;
    if known
        .as_ref()
        .is_some_and(|c| c.state != ConversationState::Acting)
    {
        tracing::info!(note = args.note_id, "conversation already answered");
        return Ok(Outcome::Succeeded);
    }
    let Some(turn) = read(ctx, deps, &args).await? else {
        return Ok(Outcome::Succeeded);
    };
    store::begin(
        ctx,
        &NewConversation {
            note_id,
            project: &turn.project_key(),
            mr_iid: turn.mr_iid(),
            discussion_id: &turn.discussion.id,
            author_id: i64::try_from(turn.author.id).map_err(JobError::fatal)?,
            author_username: &turn.author.username,
            intent: turn.ask.intent,
        },
    )
    .await?;
    act::run(&turn, known.and_then(|c| c.reply)).await
}

/// The note and its thread, or `None` (with the reason logged) when there is nothing to
/// answer.
async fn read<'a>(
    ctx: &'a JobContext,
    deps: &'a ReviewDeps,
    args: &'a ConversationArgs,
) -> Result<Option<Turn<'a>>, JobError> {
    let project = args.project_ref()?;
    let bot = deps
        .conversation
        .bot(&deps.gitlab)
        .await
        .map_err(gitlab_error)?;
    let discussion = match deps
        .gitlab
        .discussion(&project, args.iid, &args.discussion_id)
        .await
    {
        Ok(discussion) => discussion,
        Err(gitlab::Error::NotFound { .. }) => {
            tracing::info!(note = args.note_id, "the thread is gone: nothing to answer");
            return Ok(None);
        }
        Err(err) => return Err(gitlab_error(err)),
    };
    let Some(note) = discussion
        .notes
        .iter()
        .find(|n| n.id == args.note_id)
        .cloned()
    else {
        tracing::info!(note = args.note_id, "the note is gone: nothing to answer");
        return Ok(None);
    };
    let Some(author) = note.author.clone() else {
        tracing::debug!(note = args.note_id, "a note without an author: ignored");
        return Ok(None);
    };
    if note.system || author.id == bot.id {
        tracing::debug!(
            note = args.note_id,
            "a system note or the bot's own: ignored"
        );
        return Ok(None);
    }
    let in_bot_thread = discussion.notes.first().is_some_and(|first| {
        first.author.as_ref().is_some_and(|a| a.id == bot.id)
            && find_marker(&first.body).is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)))
    });
    let Some(ask) = conversation::classify(&note.body, &bot.username, in_bot_thread) else {
        tracing::debug!(
            note = args.note_id,
            "the note asks nothing of the bot: ignored"
        );
        return Ok(None);
    };
    Ok(Some(Turn {
        ctx,
        deps,
        args,
        project,
        bot,
        discussion,
        note_key: i64::try_from(note.id).map_err(JobError::fatal)?,
        iid_key: i64::try_from(args.iid).map_err(JobError::fatal)?,
        note,
        author,
        ask,
        in_bot_thread,
    }))
}

/// Posts `body` as the reply to the turn's note, unless GitLab already holds it (an earlier
/// attempt whose answer was lost): in the thread, or as an overview note when the note
/// stands alone (GitLab refuses replies to those). Returns the reply's note id.
pub(super) async fn post_reply(turn: &Turn<'_>, body: &str) -> Result<u64, JobError> {
    let marker = ReplyMarker(turn.note.id);
    let ours = |n: &Note| {
        n.author.as_ref().is_some_and(|a| a.id == turn.bot.id)
            && conversation::find_reply_marker(&n.body) == Some(marker)
    };
    let gitlab = &turn.deps.gitlab;
    if turn.discussion.individual_note {
        let notes = gitlab
            .notes(&turn.project, turn.args.iid)
            .await
            .map_err(gitlab_error)?;
        if let Some(found) = notes.iter().find(|n| ours(n)) {
            return Ok(found.id);
        }
        let note = gitlab
            .post_note(&turn.project, turn.args.iid, body)
            .await
            .map_err(gitlab_error)?;
        return Ok(note.id);
    }
    if let Some(found) = turn.discussion.notes.iter().find(|n| ours(n)) {
        return Ok(found.id);
    }
    let note = gitlab
        .reply(&turn.project, turn.args.iid, &turn.discussion.id, body)
        .await
        .map_err(gitlab_error)?;
    Ok(note.id)
}

/// Ends the conversation, with its reply if there is one.
pub(super) async fn finish(
    turn: &Turn<'_>,
    state: ConversationState,
    reply_note_id: Option<u64>,
) -> JobResult {
    let mut conn = turn.ctx.queue().pool().acquire().await.retryable()?;
    let reply = reply_note_id
        .map(i64::try_from)
        .transpose()
        .map_err(JobError::fatal)?;
    store::finish(&mut conn, turn.ctx, turn.note_id(), state, reply).await?;
    tracing::info!(note = turn.note.id, intent = %turn.ask.intent, state = state.as_str(), "conversation answered");
    Ok(Outcome::Succeeded)
}

/// For CI-only users (no webhook server): the conversation jobs of the comments on `mr`
/// still waiting for the bot, so `reviewq review` answers pending `done` replies, questions
/// and commands before it reviews. Read from GitLab alone (a CI database may be new on every
/// run): comments written after the bot's first note, that ask something of it
/// ([`conversation::classify`]), that it has not answered (no reply carries their marker)
/// and, for `done`, whose thread is still open.
///
/// # Errors
/// GitLab's, classified.
pub async fn catch_up(deps: &ReviewDeps, mr: &MrRef) -> Result<Vec<NewJob>, JobError> {
    let project: ProjectRef = mr
        .project
        .to_string()
        .parse()
        .map_err(|e| JobError::fatal(format!("invalid project {}: {e}", mr.project)))?;
    let bot = deps
        .conversation
        .bot(&deps.gitlab)
        .await
        .map_err(gitlab_error)?;
    let discussions = deps
        .gitlab
        .discussions(&project, mr.iid)
        .await
        .map_err(gitlab_error)?;
    let by_bot = |n: &Note| n.author.as_ref().is_some_and(|a| a.id == bot.id);
    let notes = || {
        discussions
            .iter()
            .flat_map(|d| d.notes.iter().map(move |n| (d, n)))
    };
    let Some(since) = notes()
        .filter(|(_, n)| by_bot(n))
        .filter_map(|(_, n)| n.created_at)
        .min()
    else {
        return Ok(Vec::new());
    };
    let answered: std::collections::HashSet<u64> = notes()
        .filter(|(_, n)| by_bot(n))
        .filter_map(|(_, n)| conversation::find_reply_marker(&n.body).map(|m| m.0))
        .collect();
    Ok(notes()
        .filter(|(_, n)| {
            !n.system
                && !by_bot(n)
                && n.created_at.is_some_and(|at| at > since)
                && !answered.contains(&n.id)
        })
        .filter(|(d, n)| {
            let first = d.notes.first();
            let in_bot_thread = first.is_some_and(|f| {
                by_bot(f)
                    && find_marker(&f.body)
                        .is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)))
            });
            match conversation::classify(&n.body, &bot.username, in_bot_thread) {
                None => false,
                Some(ask) if ask.intent == Intent::Resolve => first.is_some_and(|f| !f.resolved),
                Some(_) => true,
            }
        })
        .map(|(d, n)| ConversationArgs::new(mr.clone(), n.id, d.id.clone()).job())
        .collect())
}

/// Whether the intent is one reviewq acts on without replying.
fn silent(intent: Intent) -> bool {
    intent == Intent::Resolve
}
