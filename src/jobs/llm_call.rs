//! What every LLM-calling job (chunks, descriptions) shares: recording usage through a
//! database outage, waiting on a budget, the fleet-wide pause, backoff and error text.

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::PgConnection;

use crate::{
    disposition::Disposition,
    jobs::LLM_RESOURCE,
    llm::{self, ChatRequest},
    queue::{
        Error as QueueError, JobContext, JobError, JobResult, Outcome, Permit, Queue, ResultExt,
        Waiting,
    },
    spend::{
        self, Admission,
        ledger::{self, CallContext},
    },
};

/// LLM requests one chunk attempt makes for transient errors (rate limit, overload, 5xx)
/// before handing the retry to the queue's slower backoff.
pub(super) const LLM_TRIES_PER_ATTEMPT: u32 = 4;
/// Answers that are not the JSON object asked for: retried once, then reported.
pub(super) const UNUSABLE_ANSWERS_TOLERATED: u32 = 1;
/// A `Retry-After` longer than this is not slept inside the job: the job is rescheduled.
pub(super) const MAX_INLINE_WAIT: Duration = Duration::from_secs(20);

use super::review::ReviewDeps;

/// How long a ledger write is retried through a database outage (a restart takes seconds).
pub(super) const LEDGER_RETRY_FOR: Duration = Duration::from_secs(60);

/// Writes what a call cost, retrying through a database outage: the tokens were spent
/// whatever becomes of the job, so their record must outlive a restart or a cut
/// connection.
pub(super) async fn keep_recording<F, Fut>(mut write: F) -> Result<(), JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), QueueError>>,
{
    let deadline = tokio::time::Instant::now() + LEDGER_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %err, retry_in = ?pause, "could not record an LLM call's usage; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Makes this chunk wait for a spending condition (a budget, the pause).
pub(super) async fn wait(ctx: &JobContext, until: DateTime<Utc>, waiting: &Waiting) -> JobResult {
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    Queue::wait(&mut tx, ctx.lease(), until, waiting).await?;
    tx.commit().await.retryable()?;
    tracing::info!(until = %until, reason = %waiting.reason, "chunk waits");
    Ok(Outcome::Settled)
}

/// The provider said the account cannot pay: record the call, pause LLM work for the
/// whole fleet and make this chunk wait for the probe, all in one transaction. Nothing
/// fails: every queued chunk waits instead of trying (and failing) one by one.
pub(super) async fn pause_llm(
    ctx: &JobContext,
    deps: &ReviewDeps,
    call_id: ledger::CallId,
    err: &llm::Error,
) -> JobResult {
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    ledger::failed(&mut *tx, call_id, err).await?;
    let probe_after = err.retry_after.unwrap_or(deps.spend.probe_interval);
    let pause = spend::pause(
        &mut *tx,
        &describe_llm_error(err),
        err.provider_code.as_deref(),
        probe_after,
    )
    .await?;
    let until = pause.probe_at + chrono::Duration::seconds(1);
    match Queue::wait(&mut tx, ctx.lease(), until, &pause.waiting()).await {
        Ok(()) => {}
        Err(QueueError::LeaseLost(lease)) => {
            // Keep the ledger row and the pause (both true whoever owns the job now).
            tx.commit().await.retryable()?;
            return Err(QueueError::LeaseLost(lease).into());
        }
        Err(other) => return Err(other.into()),
    }
    tx.commit().await.retryable()?;
    tracing::warn!(reason = %pause.reason, probe_at = %pause.probe_at, "the LLM account cannot pay: LLM work paused fleet-wide");
    Ok(Outcome::Settled)
}

/// After a transient error, the `tries`th of this attempt: sleeps as long as the error asks
/// (or the backoff says), or hands the retry to the queue when the attempt has tried enough
/// or the wait is too long to sit through.
pub(super) async fn pause_after(err: &llm::Error, tries: u32) -> Result<(), JobError> {
    match err.disposition() {
        _ if tries >= LLM_TRIES_PER_ATTEMPT => {
            Err(JobError::new(err.disposition(), describe_llm_error(err)))
        }
        Disposition::RetryAfter(wait) if wait > MAX_INLINE_WAIT => {
            Err(JobError::retry_after(wait, describe_llm_error(err)))
        }
        Disposition::RetryAfter(wait) => {
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Disposition::Retry | Disposition::Fatal => {
            tokio::time::sleep(backoff(tries)).await;
            Ok(())
        }
    }
}

/// Backoff between LLM tries inside one attempt: 1 s, 2 s, 4 s, with full jitter on top.
pub(super) fn backoff(tries: u32) -> Duration {
    use backon::{BackoffBuilder, ExponentialBuilder};
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(8))
        .with_jitter()
        .build()
        .nth(tries.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(8))
}

pub(super) fn describe_llm_error(err: &llm::Error) -> String {
    let what = match err.kind {
        llm::ErrorKind::QuotaExhausted => {
            "the LLM account is out of balance or over its quota; top it up or raise the limit"
        }
        llm::ErrorKind::Auth => "the LLM endpoint refused GLM_API_KEY; check the key",
        llm::ErrorKind::ContentFiltered => "the provider's content filter refused this chunk",
        llm::ErrorKind::RateLimited => "the LLM rate limit was hit",
        llm::ErrorKind::Overloaded => "the model is overloaded",
        _ => "the LLM call failed",
    };
    format!("{what} ({err})")
}

/// How getting an answer ended.
pub(super) enum Called<T> {
    /// The answer (stored with its usage).
    Answered(T),
    /// The job settled otherwise (it waits for a budget or the pause, or lost its lease).
    Settled(JobResult),
}

/// One kind of answer a job asks the model for: how it is read from the model's text, and
/// the write that stores it in the transaction that records its usage in the ledger.
pub(super) trait Answering: Clone + Send + Sync + 'static {
    /// The parsed answer.
    type Answer: Send + Sync + 'static;
    /// What the answer is, for the error after two unusable ones.
    const WHAT: &'static str;

    /// Reads the model's content; a reason when it is not the answer asked for.
    fn parse(&self, content: &str) -> Result<Self::Answer, String>;

    /// Stores the answer inside the ledger's transaction (already fenced by the lease).
    fn store(
        &self,
        tx: &mut PgConnection,
        answer: &Self::Answer,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// One answer from the model, under the fleet-wide limit and the spend limits, with every
/// request in the ledger (`call.purpose`). Transient errors are retried inside the attempt,
/// an unusable answer once.
pub(super) async fn ask<A: Answering>(
    ctx: &JobContext,
    deps: &ReviewDeps,
    call: CallContext,
    request: ChatRequest,
    answering: A,
) -> Result<Called<A::Answer>, JobError> {
    let pool = ctx.queue().pool().clone();
    let (mut transient_tries, mut unusable) = (0, 0);
    loop {
        let permit = ctx.acquire(LLM_RESOURCE).await?;
        let (call_id, probe) =
            match ledger::start_within_limits(&pool, &call, deps.spend.daily_tokens).await? {
                Some(call_id) => (call_id, false),
                None => match spend::admit(&pool, &deps.spend, &call.project).await? {
                    Admission::Go => (ledger::start(&pool, &call).await?, false),
                    Admission::Probe => (ledger::start(&pool, &call).await?, true),
                    Admission::Wait { until, waiting } => {
                        drop(permit);
                        return Ok(Called::Settled(wait(ctx, until, &waiting).await));
                    }
                },
            };
        // The call and its bookkeeping run as a task of their own, so a stopped attempt still
        // records what the answer cost.
        let sent = tokio::spawn(send(
            ctx.clone(),
            deps.clone(),
            request.clone(),
            Sending {
                call_id,
                permit: Some(permit),
                probe,
                answering: answering.clone(),
            },
        ))
        .await
        .map_err(|e| JobError::retryable(format!("the LLM call's task failed: {e}")))?;
        match sent {
            Sent::Answered(answer) => return Ok(Called::Answered(answer)),
            Sent::Settled(result) => return Ok(Called::Settled(result)),
            Sent::Unusable(reason) => {
                unusable += 1;
                if unusable > UNUSABLE_ANSWERS_TOLERATED {
                    return Err(JobError::fatal(format!(
                        "the model's {} was not the JSON object asked for, twice: {reason}",
                        A::WHAT
                    )));
                }
            }
            Sent::Transient(err) => {
                transient_tries += 1;
                pause_after(&err, transient_tries).await?;
            }
        }
    }
}

/// One call in flight.
struct Sending<A> {
    call_id: ledger::CallId,
    permit: Option<Permit>,
    probe: bool,
    answering: A,
}

/// How one call ended, with everything about it recorded.
enum Sent<T> {
    Answered(T),
    Settled(JobResult),
    Unusable(String),
    Transient(llm::Error),
}

async fn send<A: Answering>(
    ctx: JobContext,
    deps: ReviewDeps,
    request: ChatRequest,
    mut call: Sending<A>,
) -> Sent<A::Answer> {
    let pool = ctx.queue().pool().clone();
    let result = deps.llm.complete(&request).await;
    // Free the slot before the bookkeeping: another call may start now.
    if let Some(permit) = call.permit.take()
        && let Err(err) = permit.release().await
    {
        tracing::warn!(error = %err, "could not release the LLM slot; it frees itself when the lease lapses");
    }
    if call.probe
        && result.is_ok()
        && let Err(err) = spend::resume(&pool).await
    {
        tracing::warn!(error = %err, "could not end the LLM pause; the next probe will");
    }
    let call_id = call.call_id;
    match result {
        Ok(done) => match call.answering.parse(&done.content) {
            Ok(answer) => match store_answer(&ctx, &call, &done, &answer).await {
                Ok(()) => Sent::Answered(answer),
                Err(err) => Sent::Settled(Err(err)),
            },
            Err(reason) => {
                match keep_recording(|| ledger::unusable(&pool, call_id, &done, &reason)).await {
                    Ok(()) => Sent::Unusable(reason),
                    Err(err) => Sent::Settled(Err(err)),
                }
            }
        },
        Err(err) if err.kind == llm::ErrorKind::QuotaExhausted => {
            Sent::Settled(pause_llm(&ctx, &deps, call_id, &err).await)
        }
        Err(err) => {
            if let Err(db_err) = keep_recording(|| ledger::failed(&pool, call_id, &err)).await {
                return Sent::Settled(Err(db_err));
            }
            match err.disposition() {
                Disposition::Fatal => Sent::Settled(Err(JobError::fatal(describe_llm_error(&err)))),
                _ => Sent::Transient(err),
            }
        }
    }
}

/// Stores an answer with its usage in one transaction, fenced by the lease; if that fails, the
/// usage is still recorded on its own (the tokens were spent).
async fn store_answer<A: Answering>(
    ctx: &JobContext,
    call: &Sending<A>,
    done: &llm::Completion,
    answer: &A::Answer,
) -> Result<(), JobError> {
    let pool = ctx.queue().pool();
    let stored = async {
        let mut tx = pool.begin().await.retryable()?;
        Queue::fence(&mut tx, ctx.lease()).await?;
        ledger::succeeded(&mut *tx, call.call_id, done).await?;
        call.answering.store(&mut tx, answer).await?;
        tx.commit().await.retryable()
    }
    .await;
    if stored.is_err() {
        keep_recording(|| ledger::succeeded(pool, call.call_id, done)).await?;
    }
    stored
}
