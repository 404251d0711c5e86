//! The chunk job: one LLM review of one chunk, its answer stored with the ledger row and the
//! job's completion in one transaction, or the chunk split when it asked too much.

use crate::{
    disposition::Disposition,
    jobs::LLM_RESOURCE,
    llm::{self, ChatRequest, Message},
    queue::{JobContext, JobError, JobResult, NewJob, Outcome, Queue, ResultExt},
    review::{
        self, Chunk, ReviewType,
        chunk::{split_for_findings, split_in_two},
    },
    spend::{
        self, Admission,
        ledger::{self, CallContext},
    },
};

use super::{
    ChunkArgs, MAX_ANSWER_TOKENS, ReviewDeps,
    round::RoundSettings,
    store::{insert_chunks, store_chunk_answer, supersede_chunk},
};
use crate::jobs::llm_call::{
    UNUSABLE_ANSWERS_TOLERATED, describe_llm_error, keep_recording, pause_after, pause_llm, wait,
};

pub(super) struct ChunkRow {
    pub(super) chunk: serde_json::Value,
    pub(super) summary: Option<String>,
    pub(super) superseded: bool,
    pub(super) project: String,
    pub(super) mr_iid: i64,
    pub(super) head_sha: String,
    pub(super) review_type: String,
    pub(super) mr_title: String,
    pub(super) mr_description: String,
    pub(super) settings: serde_json::Value,
}

pub(super) async fn review_chunk(
    ctx: &JobContext,
    deps: &ReviewDeps,
    args: ChunkArgs,
) -> JobResult {
    let pool = ctx.queue().pool().clone();
    let row = sqlx::query_as!(
        ChunkRow,
        r#"
        select c.chunk, c.summary, c.superseded, r.project, r.mr_iid, r.head_sha, r.review_type,
               r.mr_title, r.mr_description, r.settings
        from review_chunks c join reviews r on r.id = c.review_id
        where c.review_id = $1 and c.chunk_index = $2
        "#,
        args.review_id,
        args.chunk_index
    )
    .fetch_optional(&pool)
    .await
    .retryable()?
    .ok_or_else(|| {
        JobError::fatal(format!(
            "chunk {} of review {} does not exist",
            args.chunk_index, args.review_id
        ))
    })?;
    if row.summary.is_some() || row.superseded {
        return Ok(Outcome::Succeeded);
    }
    let chunk: Chunk = serde_json::from_value(row.chunk).map_err(JobError::fatal)?;
    let review_type: ReviewType = row.review_type.parse().map_err(JobError::fatal)?;
    let prompt = review::prompt::render_with(
        review_type,
        &chunk,
        &row.mr_title,
        &row.mr_description,
        &RoundSettings::read(&row.settings).prompt_options(),
    );
    let mut request = ChatRequest::new(vec![
        Message::system(prompt.system),
        Message::user(prompt.user),
    ]);
    request.json_object = true;
    request.temperature = Some(0.2);
    request.max_tokens = Some(MAX_ANSWER_TOKENS);
    let call = CallContext {
        lease: ctx.lease(),
        review_id: Some(args.review_id),
        chunk_index: Some(args.chunk_index),
        project: row.project,
        mr_iid: row.mr_iid,
        head_sha: row.head_sha,
        review_type: row.review_type,
        model: deps.llm.model().to_owned(),
        purpose: ledger::CallPurpose::Review,
    };

    let mut transient_tries = 0;
    let mut unusable = 0;
    loop {
        let permit = ctx.acquire(LLM_RESOURCE).await?;
        let started = ledger::start_within_limits(&pool, &call, deps.spend.daily_tokens).await?;
        let (call_id, probe) = match started {
            Some(call_id) => (call_id, false),
            // Paused, over a budget, or the lease is lost: the slow path says which.
            None => match spend::admit(&pool, &deps.spend, &call.project).await? {
                Admission::Go => (ledger::start(&pool, &call).await?, false),
                Admission::Probe => (ledger::start(&pool, &call).await?, true),
                Admission::Wait { until, waiting } => {
                    drop(permit);
                    return wait(ctx, until, &waiting).await;
                }
            },
        };
        // From here the call and its bookkeeping are a task of their own: if this attempt
        // is stopped (its lease lost, CHUNK_TIMEOUT), the answer still arrives and its usage
        // is still recorded. Only a killed process leaves the ledger row `started`.
        let call_task = tokio::spawn(
            Call {
                ctx: ctx.clone(),
                deps: deps.clone(),
                args,
                chunk: chunk.clone(),
                request: request.clone(),
                call_id,
                permit,
                probe,
            }
            .finish(),
        );
        let end = call_task
            .await
            .map_err(|e| JobError::retryable(format!("the LLM call's task failed: {e}")))?;
        match end {
            CallEnd::Done(result) => return result,
            CallEnd::Unusable(err) => {
                unusable += 1;
                if unusable > UNUSABLE_ANSWERS_TOLERATED {
                    return Err(JobError::fatal(format!(
                        "the model's answer was not the JSON object asked for, twice: {err}"
                    )));
                }
                tracing::warn!(error = %err, "unusable answer; asking once more");
            }
            CallEnd::Transient(err) => {
                transient_tries += 1;
                pause_after(&err, transient_tries).await?;
                tracing::info!(error = %err, try_number = transient_tries, "transient LLM error; retrying");
            }
        }
    }
}

/// How one LLM call of a chunk ended, with everything about it recorded.
pub(super) enum CallEnd {
    /// The attempt's outcome is decided: answer stored, chunk split, LLM paused, or failed.
    Done(JobResult),
    /// The answer was not the JSON object asked for.
    Unusable(String),
    /// A transient failure: the attempt may try again.
    Transient(llm::Error),
}

/// One admitted LLM call of a chunk: everything it needs to be sent and recorded. It runs as
/// a task of its own (see [`review_chunk`]), so it owns all of it.
struct Call {
    ctx: JobContext,
    deps: ReviewDeps,
    args: ChunkArgs,
    chunk: Chunk,
    request: ChatRequest,
    /// Its ledger row, `started`.
    call_id: ledger::CallId,
    /// The LLM slot it holds, released as soon as the answer is in.
    permit: crate::queue::Permit,
    /// Whether this call probes a paused LLM (its success ends the pause).
    probe: bool,
}

impl Call {
    /// Sends the call and records how it ended: the usage with the answer and the job's
    /// completion in one transaction, or the failure.
    async fn finish(self) -> CallEnd {
        let Self {
            ctx,
            deps,
            args,
            chunk,
            request,
            call_id,
            permit,
            probe,
        } = self;
        let pool = ctx.queue().pool().clone();
        let result = deps.llm.complete(&request).await;
        // Free the slot before the bookkeeping: another chunk may start its call now.
        if let Err(err) = permit.release().await {
            tracing::warn!(error = %err, "could not release the LLM slot; it frees itself when the lease lapses");
        }
        if probe
            && result.is_ok()
            && let Err(err) = spend::resume(&pool).await
        {
            tracing::warn!(error = %err, "could not end the LLM pause; the next probe will");
        }
        match result {
            Ok(done) => match review::parse_answer(&done.content) {
                Ok(answer) => CallEnd::Done(match split_for_findings(&chunk, &answer) {
                    Some(halves) => {
                        split_overflowing(&ctx, args, call_id, &done, &answer, halves).await
                    }
                    None => store_answer(&ctx, args, call_id, &done, answer).await,
                }),
                Err(err) => {
                    let reason = err.to_string();
                    match keep_recording(|| ledger::unusable(&pool, call_id, &done, &reason)).await
                    {
                        Ok(()) => CallEnd::Unusable(reason),
                        Err(err) => CallEnd::Done(Err(err)),
                    }
                }
            },
            Err(err) if err.kind == llm::ErrorKind::QuotaExhausted => {
                CallEnd::Done(pause_llm(&ctx, &deps, call_id, &err).await)
            }
            Err(err) => {
                if let Err(db_err) = keep_recording(|| ledger::failed(&pool, call_id, &err)).await {
                    return CallEnd::Done(Err(db_err));
                }
                if err.kind == llm::ErrorKind::ContextTooLong {
                    return CallEnd::Done(split(&ctx, args, &chunk, &err).await);
                }
                match err.disposition() {
                    Disposition::Fatal => {
                        CallEnd::Done(Err(JobError::fatal(describe_llm_error(&err))))
                    }
                    _ => CallEnd::Transient(err),
                }
            }
        }
    }
}

/// Stores a chunk's answer and its usage with the job's completion, in one transaction.
/// If the lease was lost meanwhile, or the transaction fails (the database restarted, the
/// connection was cut), the usage is still recorded on its own: the tokens were spent.
pub(super) async fn store_answer(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: review::Answer,
) -> JobResult {
    let pool = ctx.queue().pool();
    match store_answer_tx(ctx, args, call_id, done, &answer).await {
        Ok(()) => Ok(Outcome::Settled),
        Err(err) => {
            keep_recording(|| ledger::succeeded(pool, call_id, done)).await?;
            Err(err)
        }
    }
}

pub(super) async fn store_answer_tx(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: &review::Answer,
) -> Result<(), JobError> {
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    ledger::succeeded(&mut *tx, call_id, done).await?;
    store_chunk_answer(&mut tx, args.review_id, args.chunk_index, answer).await?;
    // The completion is the fence: if another attempt owns the job, nothing of this
    // transaction is kept (the caller then records the usage on its own).
    Queue::complete(&mut tx, ctx.lease()).await?;
    tx.commit().await.retryable()?;
    Ok(())
}

/// The answer holds so many findings that the chunk asked about too much at once
/// ([`split_for_findings`]): record its usage, keep the answer on the chunk's row for the
/// audit, and replace the chunk by two halves that are asked again, in one transaction.
///
/// The first answer's findings are not used: each half's answer covers the same code with
/// room to spare, so using both would post the findings found twice (worded differently,
/// hence not recognised as the same) and the first answer is the one a model cut short.
/// Its tokens are billed and in the ledger either way. As in [`store_answer`], the usage is
/// recorded on its own if the transaction cannot be kept.
pub(super) async fn split_overflowing(
    ctx: &JobContext,
    args: ChunkArgs,
    call_id: ledger::CallId,
    done: &llm::Completion,
    answer: &review::Answer,
    halves: (Chunk, Chunk),
) -> JobResult {
    let pool = ctx.queue().pool();
    let result: Result<(), JobError> = async {
        let mut tx = pool.begin().await.retryable()?;
        ledger::succeeded(&mut *tx, call_id, done).await?;
        store_chunk_answer(&mut tx, args.review_id, args.chunk_index, answer).await?;
        replace_by_halves(&mut tx, ctx, args, halves).await?;
        tx.commit().await.retryable()
    }
    .await;
    if let Err(err) = result {
        keep_recording(|| ledger::succeeded(pool, call_id, done)).await?;
        return Err(err);
    }
    tracing::info!(
        chunk = args.chunk_index,
        findings = answer.findings.len() + answer.beyond_limit,
        "the answer holds too many findings for one chunk; split in two and asked again"
    );
    Ok(Outcome::Settled)
}

/// The model found the chunk too big: replace it by two halves, each with its own job
/// under the same review, and complete this one.
pub(super) async fn split(
    ctx: &JobContext,
    args: ChunkArgs,
    chunk: &Chunk,
    err: &llm::Error,
) -> JobResult {
    let Some(halves) = split_in_two(chunk) else {
        return Err(JobError::fatal(format!(
            "the chunk is too big for the model even as a single line ({err})"
        )));
    };
    let mut tx = ctx.queue().pool().begin().await.retryable()?;
    Queue::fence(&mut tx, ctx.lease()).await?;
    replace_by_halves(&mut tx, ctx, args, halves).await?;
    tx.commit().await.retryable()?;
    tracing::info!(
        chunk = args.chunk_index,
        "chunk too big for the model; split in two"
    );
    Ok(Outcome::Settled)
}

/// Replaces this chunk by two halves under the same review, each with its own job, and
/// completes this chunk's job (the fence), inside `tx`.
pub(super) async fn replace_by_halves(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ctx: &JobContext,
    args: ChunkArgs,
    (first, second): (Chunk, Chunk),
) -> Result<(), JobError> {
    let parent = ctx
        .job
        .parent_id
        .ok_or_else(|| JobError::fatal("a chunk job has no parent review"))?;
    let next = sqlx::query_scalar!(
        r#"select coalesce(max(chunk_index), 0) + 1 as "next!" from review_chunks where review_id = $1"#,
        args.review_id
    )
    .fetch_one(&mut **tx)
    .await
    .retryable()?;
    let priority = ctx.job.priority;
    let halves = [(next, first), (next + 1, second)];
    let jobs: Vec<NewJob> = halves
        .iter()
        .map(|(index, _)| {
            ChunkArgs {
                review_id: args.review_id,
                chunk_index: *index,
            }
            .job(priority)
        })
        .collect();
    let ids = Queue::add_children(tx, parent, &jobs).await?;
    let halves: Vec<Chunk> = halves
        .into_iter()
        .map(|(index, half)| Chunk {
            index: usize::try_from(index).unwrap_or(usize::MAX),
            ..half
        })
        .collect();
    insert_chunks(tx, args.review_id, halves.iter().zip(ids)).await?;
    supersede_chunk(tx, args.review_id, args.chunk_index).await?;
    Queue::complete(tx, ctx.lease()).await?;
    Ok(())
}
