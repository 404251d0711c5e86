//! What every LLM-calling job (chunks, descriptions) shares: recording usage through a
//! database outage, waiting on a budget, the fleet-wide pause, backoff and error text.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    llm,
    queue::{Error as QueueError, JobContext, JobError, JobResult, Outcome, Queue, Waiting},
    spend::{self, ledger},
};

/// LLM requests one chunk attempt makes for transient errors (rate limit, overload, 5xx)
/// before handing the retry to the queue's slower backoff.
pub(super) const LLM_TRIES_PER_ATTEMPT: u32 = 4;
/// Answers that are not the JSON object asked for: retried once, then reported.
pub(super) const UNUSABLE_ANSWERS_TOLERATED: u32 = 1;
/// A `Retry-After` longer than this is not slept inside the job: the job is rescheduled.
pub(super) const MAX_INLINE_WAIT: Duration = Duration::from_secs(20);

use super::review::{ReviewDeps, db};

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
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
    Queue::wait(&mut tx, ctx.lease(), until, waiting).await?;
    tx.commit().await.map_err(db)?;
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
    let mut tx = ctx.queue().pool().begin().await.map_err(db)?;
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
            tx.commit().await.map_err(db)?;
            return Err(QueueError::LeaseLost(lease).into());
        }
        Err(other) => return Err(other.into()),
    }
    tx.commit().await.map_err(db)?;
    tracing::warn!(reason = %pause.reason, probe_at = %pause.probe_at, "the LLM account cannot pay: LLM work paused fleet-wide");
    Ok(Outcome::Settled)
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
