//! A question about a finding or a line: the context the model reads (the finding, the code
//! around the line at the reviewed head, the last notes of the thread) and one LLM call,
//! whose reply is stored with its ledger usage before it is posted.

use sqlx::PgConnection;

use super::{KIND, Turn, store};
use crate::{
    disposition::Disposition,
    gitlab::NotePosition,
    jobs::{
        llm_call::{self, Answering, Called},
        review::gitlab_error,
    },
    llm::{ChatRequest, Message},
    queue::{Error as QueueError, JobError, Lease},
    review::conversation::{self, QuestionContext, ReplyMarker, ThreadNote},
    spend::ledger::{CallContext, CallPurpose},
};

/// Output cap of an answer.
const MAX_ANSWER_TOKENS: u32 = 1024;

/// Where an answer goes: rendered as the reply (sanitised, with its marker) and stored on
/// the conversation.
#[derive(Debug, Clone)]
struct Reply {
    note_id: u64,
    lease: Lease,
    on_new_line: bool,
}

impl Answering for Reply {
    type Answer = String;
    const WHAT: &'static str = "answer";

    fn parse(&self, content: &str) -> Result<String, String> {
        let answer = conversation::parse_answer(content)?;
        Ok(conversation::reply_body(
            &conversation::answer_text(&answer, self.on_new_line),
            ReplyMarker(self.note_id),
        ))
    }

    async fn store(&self, tx: &mut PgConnection, reply: &String) -> Result<(), JobError> {
        let note_id = i64::try_from(self.note_id).map_err(JobError::fatal)?;
        let lease = (self.lease.job_id.get(), self.lease.attempt);
        match store::set_reply(tx, lease, note_id, reply).await? {
            0 => Err(QueueError::LeaseLost(self.lease).into()),
            _ => Ok(()),
        }
    }
}

/// The reply to the turn's question, from the model.
pub(super) async fn answer(turn: &Turn<'_>) -> Result<Called<String>, JobError> {
    let position = turn
        .discussion
        .notes
        .first()
        .and_then(|n| n.position.clone())
        .or_else(|| turn.note.position.clone());
    let location = position.as_ref().and_then(line_of);
    let context = QuestionContext {
        finding: turn
            .in_bot_thread
            .then(|| turn.discussion.notes.first())
            .flatten()
            .map(|n| conversation::strip_markers(&n.body)),
        code: code(turn, position.as_ref(), location.as_ref()).await?,
        location: location.clone(),
        thread: thread(turn),
        question: turn.ask.question.clone(),
    };
    let prompt = conversation::question_prompt(&context);
    let mut request = ChatRequest::new(vec![
        Message::system(prompt.system),
        Message::user(prompt.user),
    ]);
    request.json_object = true;
    request.temperature = Some(0.2);
    request.max_tokens = Some(MAX_ANSWER_TOKENS);
    let call = CallContext {
        lease: turn.ctx.lease(),
        review_id: None,
        chunk_index: None,
        project: turn.project_key(),
        mr_iid: turn.mr_iid(),
        head_sha: position
            .as_ref()
            .and_then(|p| p.head_sha.clone())
            .unwrap_or_default(),
        review_type: KIND.to_owned(),
        model: turn.deps.llm.model().to_owned(),
        purpose: CallPurpose::Conversation,
    };
    let reply = Reply {
        note_id: turn.note.id,
        lease: turn.ctx.lease(),
        on_new_line: position.as_ref().is_some_and(|p| p.new_line.is_some()),
    };
    llm_call::ask(turn.ctx, turn.deps, call, request, reply).await
}

/// The file and line a position points at (the new side when it has one).
fn line_of(position: &NotePosition) -> Option<(String, u32)> {
    match (position.new_line, position.old_line) {
        (Some(line), _) => position.new_path.clone().map(|p| (p, line)),
        (None, Some(line)) => position.old_path.clone().map(|p| (p, line)),
        (None, None) => None,
    }
}

/// The code around the line at the head the thread was written on; `None` when GitLab has
/// no such file there (a removed line, a deleted file).
async fn code(
    turn: &Turn<'_>,
    position: Option<&NotePosition>,
    location: Option<&(String, u32)>,
) -> Result<Option<String>, JobError> {
    let (Some(position), Some((path, line))) = (position, location) else {
        return Ok(None);
    };
    let git_ref = match (position.new_line, &position.head_sha, &position.base_sha) {
        (Some(_), Some(head), _) => head,
        (None, _, Some(base)) => base,
        _ => return Ok(None),
    };
    match turn
        .deps
        .gitlab
        .get_file_raw(&turn.project, path, git_ref)
        .await
    {
        Ok(bytes) => Ok(conversation::code_excerpt(
            &String::from_utf8_lossy(&bytes),
            *line,
        )),
        Err(err) if err.disposition() == Disposition::Fatal => {
            tracing::debug!(%path, error = %err, "no code for the question");
            Ok(None)
        }
        Err(err) => Err(gitlab_error(err)),
    }
}

/// The notes of the thread before the question (the finding itself aside), bounded.
fn thread(turn: &Turn<'_>) -> Vec<ThreadNote> {
    let skip = usize::from(turn.in_bot_thread);
    let notes = turn
        .discussion
        .notes
        .iter()
        .skip(skip)
        .take_while(|n| n.id != turn.note.id)
        .filter(|n| !n.system)
        .map(|n| ThreadNote {
            author: n
                .author
                .as_ref()
                .map_or_else(|| "someone".to_owned(), |a| a.username.clone()),
            body: conversation::strip_markers(&n.body),
        })
        .collect();
    conversation::recent_notes(notes)
}
