//! Every write to `conversations` and `mr_pauses`, each fenced by the job's lease.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::{
    jobs::fenced,
    queue::{JobContext, JobError, ResultExt},
    review::conversation::Intent,
};

/// Where a conversation is (`conversations.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationState {
    /// Being handled.
    Acting,
    /// Done: resolved, or answered with a reply.
    Answered,
    /// The author's role is below the minimum.
    Refused,
    /// Over the question rate limit.
    Limited,
}

impl ConversationState {
    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Acting => "acting",
            ConversationState::Answered => "answered",
            ConversationState::Refused => "refused",
            ConversationState::Limited => "limited",
        }
    }
}

impl FromStr for ConversationState {
    type Err = JobError;

    fn from_str(text: &str) -> Result<Self, JobError> {
        Ok(match text {
            "acting" => ConversationState::Acting,
            "answered" => ConversationState::Answered,
            "refused" => ConversationState::Refused,
            "limited" => ConversationState::Limited,
            other => {
                return Err(JobError::fatal(format!(
                    "unknown conversation state {other:?}"
                )));
            }
        })
    }
}

/// A conversation as recorded.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub intent: Intent,
    pub state: ConversationState,
    /// The reply as rendered, once known (an LLM answer is stored with its usage).
    pub reply: Option<String>,
}

/// The conversation of `note_id`, if one was started.
pub async fn load(pool: &PgPool, note_id: i64) -> Result<Option<Conversation>, JobError> {
    let row = sqlx::query!(
        "select intent, state, reply from conversations where note_id = $1",
        note_id
    )
    .fetch_optional(pool)
    .await
    .retryable()?;
    row.map(|r| {
        Ok(Conversation {
            intent: r.intent.parse().map_err(JobError::fatal)?,
            state: r.state.parse()?,
            reply: r.reply,
        })
    })
    .transpose()
}

/// Who wrote the note and where.
#[derive(Debug, Clone)]
pub struct NewConversation<'a> {
    pub note_id: i64,
    pub project: &'a str,
    pub mr_iid: i64,
    pub discussion_id: &'a str,
    pub author_id: i64,
    pub author_username: &'a str,
    pub intent: Intent,
}

/// Starts (or takes over) the conversation of a note for this attempt.
pub async fn begin(ctx: &JobContext, new: &NewConversation<'_>) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"insert into conversations
               (note_id, project, mr_iid, discussion_id, author_id, author_username, intent,
                job_id, job_attempt)
           select $1, $2, $3, $4, $5, $6, $7, $8, $9 where lease_held($8, $9)
           on conflict (note_id) do update
               set job_id = excluded.job_id, job_attempt = excluded.job_attempt
               where conversations.state = 'acting'"#,
        new.note_id,
        new.project,
        new.mr_iid,
        new.discussion_id,
        new.author_id,
        new.author_username,
        new.intent.as_str(),
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(ctx.queue().pool())
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// Records the reply before it is posted (inside the ledger's transaction for an answer).
pub async fn set_reply(
    conn: &mut PgConnection,
    (job_id, attempt): (i64, i32),
    note_id: i64,
    reply: &str,
) -> Result<u64, JobError> {
    Ok(sqlx::query!(
        r#"update conversations set reply = $2
           where note_id = $1 and state = 'acting' and lease_held($3, $4)"#,
        note_id,
        reply,
        job_id,
        attempt,
    )
    .execute(conn)
    .await
    .retryable()?
    .rows_affected())
}

/// Ends the conversation in `state`, with the note its reply became.
pub async fn finish(
    conn: &mut PgConnection,
    ctx: &JobContext,
    note_id: i64,
    state: ConversationState,
    reply_note_id: Option<i64>,
) -> Result<(), JobError> {
    let lease = ctx.lease();
    let rows = sqlx::query!(
        r#"update conversations set state = $2, reply_note_id = $3, finished_at = now()
           where note_id = $1 and state = 'acting' and lease_held($4, $5)"#,
        note_id,
        state.as_str(),
        reply_note_id,
        lease.job_id.get(),
        lease.attempt,
    )
    .execute(conn)
    .await
    .retryable()?
    .rows_affected();
    fenced(rows, ctx)
}

/// Whether the author was already told once on this MR that they may not ask.
pub async fn refusal_replied(
    pool: &PgPool,
    project: &str,
    mr_iid: i64,
    author_id: i64,
) -> Result<bool, JobError> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from conversations
             where project = $1 and mr_iid = $2 and author_id = $3 and state = 'refused'
               and reply_note_id is not null) as "replied!""#,
        project,
        mr_iid,
        author_id
    )
    .fetch_one(pool)
    .await
    .retryable()
}

/// The questions answered in the last hour (those that spend tokens), by the author
/// anywhere and on this MR by anyone, each with the oldest one's time.
pub async fn recent_questions(
    pool: &PgPool,
    project: &str,
    mr_iid: i64,
    author_id: i64,
) -> Result<[(i64, Option<DateTime<Utc>>); 2], JobError> {
    let row = sqlx::query!(
        r#"select count(*) filter (where author_id = $3) as "by_author!",
                  min(created_at) filter (where author_id = $3) as by_author_oldest,
                  count(*) filter (where project = $1 and mr_iid = $2) as "by_mr!",
                  min(created_at) filter (where project = $1 and mr_iid = $2) as by_mr_oldest
           from conversations
           where created_at > now() - interval '1 hour' and state = 'answered'
             and intent in ('question', 'review', 'full_review')
             and (author_id = $3 or (project = $1 and mr_iid = $2))"#,
        project,
        mr_iid,
        author_id
    )
    .fetch_one(pool)
    .await
    .retryable()?;
    Ok([
        (row.by_author, row.by_author_oldest),
        (row.by_mr, row.by_mr_oldest),
    ])
}

/// Pauses reviews on push of the MR (a second pause keeps the first).
pub async fn pause(
    conn: &mut PgConnection,
    project: &str,
    mr_iid: i64,
    by: &str,
    note_id: i64,
) -> Result<(), JobError> {
    sqlx::query!(
        r#"insert into mr_pauses (project, mr_iid, paused_by, note_id) values ($1, $2, $3, $4)
           on conflict (project, mr_iid) do nothing"#,
        project,
        mr_iid,
        by,
        note_id
    )
    .execute(conn)
    .await
    .retryable()?;
    Ok(())
}

/// Ends the pause of the MR, if any.
pub async fn resume(conn: &mut PgConnection, project: &str, mr_iid: i64) -> Result<(), JobError> {
    sqlx::query!(
        "delete from mr_pauses where project = $1 and mr_iid = $2",
        project,
        mr_iid
    )
    .execute(conn)
    .await
    .retryable()?;
    Ok(())
}

/// Who paused reviews of the MR on push (`@bot pause`), if anyone.
///
/// # Errors
/// The database's.
pub async fn paused_by(
    pool: &PgPool,
    project: &str,
    mr_iid: u64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select paused_by from mr_pauses where project = $1 and mr_iid = $2",
        project,
        // An IID past bigint matches no row, which is the truth: nothing paused it.
        i64::try_from(mr_iid).ok()
    )
    .fetch_optional(pool)
    .await
}
