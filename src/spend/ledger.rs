//! The LLM spend ledger: one `llm_calls` row per HTTP request to the LLM.
//!
//! A row is inserted before the request is sent (fenced by the job's lease, so a worker
//! that lost its job starts no call) and updated with what the provider reported. A row
//! that stays `started` is a call cut off by a crash: it went out, its usage is unknown.

use sqlx::{PgExecutor, PgPool};

use crate::{
    llm::{self, Completion},
    queue::{Error, Lease, Result},
};

/// What a call was for (`llm_calls.purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPurpose {
    /// Reviewing a chunk (or probing a pause while doing so).
    Review,
    /// Describing a merge request.
    Describe,
    /// Answering in a conversation (reserved; the column accepts it).
    Conversation,
}

impl CallPurpose {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallPurpose::Review => "review",
            CallPurpose::Describe => "describe",
            CallPurpose::Conversation => "conversation",
        }
    }
}

/// Who made a call, for the audit columns.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The job (and attempt) making the call.
    pub lease: Lease,
    /// The review, when the call belongs to one.
    pub review_id: Option<i64>,
    /// The chunk reviewed.
    pub chunk_index: Option<i32>,
    pub project: String,
    pub mr_iid: i64,
    pub head_sha: String,
    pub review_type: String,
    pub model: String,
    pub purpose: CallPurpose,
}

/// A ledger row for a call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallId(i64);

impl CallId {
    /// The row id.
    pub fn get(self) -> i64 {
        self.0
    }
}

fn tokens(n: Option<u64>) -> Option<i64> {
    n.and_then(|n| i64::try_from(n).ok())
}

/// Records that a call is about to be sent.
///
/// # Errors
/// [`Error::LeaseLost`] if the job no longer holds its lease (then no call may start).
pub async fn start(pool: &PgPool, call: &CallContext) -> Result<CallId> {
    let id = sqlx::query_scalar!(
        r#"
        insert into llm_calls (job_id, job_attempt, review_id, chunk_index, project, mr_iid,
            head_sha, review_type, model, purpose)
        select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
        where lease_held($1, $2)
        returning id
        "#,
        call.lease.job_id.get(),
        call.lease.attempt,
        call.review_id,
        call.chunk_index,
        call.project,
        call.mr_iid,
        call.head_sha,
        call.review_type,
        call.model,
        call.purpose.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    id.map(CallId).ok_or(Error::LeaseLost(call.lease))
}

/// [`start`], but only if the call may start by the spend limits: no fleet-wide LLM pause
/// (`llm_pause`), the fleet's `daily_budget` and the project's budget (`project_budgets`)
/// not spent today (UTC). One statement, so the limits cost nothing extra on the hot path;
/// today's spend is read from `llm_usage_project_daily` (a row per project, model and purpose
/// today, not per call).
/// `None` when the call may not start, or the lease is lost: [`crate::spend::admit`] says
/// which, and why.
///
/// # Errors
/// Database errors.
pub async fn start_within_limits(
    pool: &PgPool,
    call: &CallContext,
    daily_budget: Option<u64>,
) -> Result<Option<CallId>> {
    let id = sqlx::query_scalar!(
        r#"
        insert into llm_calls (job_id, job_attempt, review_id, chunk_index, project, mr_iid,
            head_sha, review_type, model, purpose)
        select $1, $2, $3, $4, $5, $6, $7, $8, $9, $11
        where lease_held($1, $2)
          and not exists (select 1 from llm_pause)
          and ($10::int8 is null or (select coalesce(sum(total_tokens), 0) from llm_usage_project_daily
                                     where day = (now() at time zone 'UTC')::date) < $10)
          and not exists (
              select 1 from project_budgets b
              where b.project = $5 and b.daily_tokens <= (
                  select coalesce(sum(total_tokens), 0) from llm_usage_project_daily
                  where day = (now() at time zone 'UTC')::date and project = $5))
        returning id
        "#,
        call.lease.job_id.get(),
        call.lease.attempt,
        call.review_id,
        call.chunk_index,
        call.project,
        call.mr_iid,
        call.head_sha,
        call.review_type,
        call.model,
        daily_budget.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        call.purpose.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(id.map(CallId))
}

/// Records a successful call's usage. Run it in the transaction that stores the result,
/// so the tokens and the state change commit together.
///
/// # Errors
/// Database errors.
pub async fn succeeded<'e, E: PgExecutor<'e>>(
    exec: E,
    id: CallId,
    done: &Completion,
) -> Result<()> {
    sqlx::query!(
        r#"
        update llm_calls set status = 'ok', http_status = $2, finish_reason = $3,
            prompt_tokens = $4, completion_tokens = $5, total_tokens = $6, cached_tokens = $7,
            finished_at = now()
        where id = $1
        "#,
        id.get(),
        i32::from(done.http_status),
        done.finish_reason,
        tokens(done.usage.prompt_tokens),
        tokens(done.usage.completion_tokens),
        tokens(done.usage.total_tokens),
        tokens(done.usage.cached_tokens),
    )
    .execute(exec)
    .await?;
    Ok(())
}

/// Records a failed call, with any usage the provider still reported (a truncated answer
/// is billed).
///
/// # Errors
/// Database errors.
pub async fn failed<'e, E: PgExecutor<'e>>(exec: E, id: CallId, err: &llm::Error) -> Result<()> {
    let usage = &err.usage;
    sqlx::query!(
        r#"
        update llm_calls set status = 'error', http_status = $2, error_code = $3,
            error_message = $4, prompt_tokens = $5, completion_tokens = $6, total_tokens = $7,
            cached_tokens = $8, finished_at = now()
        where id = $1
        "#,
        id.get(),
        err.http_status.map(i32::from),
        err.provider_code
            .clone()
            .or_else(|| Some(format!("{:?}", err.kind))),
        err.message,
        tokens(usage.prompt_tokens),
        tokens(usage.completion_tokens),
        tokens(usage.total_tokens),
        tokens(usage.cached_tokens),
    )
    .execute(exec)
    .await?;
    Ok(())
}

/// Records a call whose answer arrived but could not be used (not JSON): billed, failed.
///
/// # Errors
/// Database errors.
pub async fn unusable<'e, E: PgExecutor<'e>>(
    exec: E,
    id: CallId,
    done: &Completion,
    reason: &str,
) -> Result<()> {
    sqlx::query!(
        r#"
        update llm_calls set status = 'error', http_status = $2, finish_reason = $3,
            error_code = 'unusable_answer', error_message = $4,
            prompt_tokens = $5, completion_tokens = $6, total_tokens = $7, cached_tokens = $8,
            finished_at = now()
        where id = $1
        "#,
        id.get(),
        i32::from(done.http_status),
        done.finish_reason,
        reason,
        tokens(done.usage.prompt_tokens),
        tokens(done.usage.completion_tokens),
        tokens(done.usage.total_tokens),
        tokens(done.usage.cached_tokens),
    )
    .execute(exec)
    .await?;
    Ok(())
}
