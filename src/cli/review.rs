//! `reviewq review` (one-shot, for CI): enqueue reviews, work them in this process until
//! they end, showing progress, then report what reached GitLab.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConversationArgs, DbArgs, GitLabArgs, LlmArgs},
    jobs::{Dispatcher, LLM_RESOURCE, describe::DescribeArgs},
    mr_ref::MrRef,
    queue::{JobId, JobState, Queue, Worker, WorkerConfig},
    review::{HeadSha, placement::CommentState},
    shutdown,
};

use super::{
    args::{ReviewRequest, parse_checked_refs, review_deps, set_gitlab_budget},
    enqueue::enqueue_reviews,
    watch::{OnWaiting, Watched, wait_for},
};

/// Arguments of `review`.
#[derive(Debug, Args)]
pub struct ReviewCommandArgs {
    #[command(flatten)]
    pub request: ReviewRequest,

    /// Also write GitLab's Code Quality report of the reviewed heads to FILE (for
    /// `artifacts: reports: codequality:`). Reviews the whole MR, as --full does: the
    /// report lists every finding of the head.
    #[arg(long, value_name = "FILE")]
    pub codequality: Option<std::path::PathBuf>,

    /// Jobs run at once by this process (chunks of the reviews).
    #[arg(long, env = "REVIEWQ_CONCURRENCY", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,

    #[command(flatten)]
    pub gitlab: GitLabArgs,

    #[command(flatten)]
    pub llm: LlmArgs,

    #[command(flatten)]
    pub conversation: ConversationArgs,
}

/// Runs `reviewq review`.
///
/// # Errors
/// Usage errors for bad input or settings (nothing written); runtime failures.
pub async fn run(db: &DbArgs, mut args: ReviewCommandArgs) -> anyhow::Result<ExitCode> {
    let refs = parse_checked_refs(&args.request.refs, &args.gitlab)?;
    let deps = review_deps(&args.gitlab, &args.llm, &args.conversation)?;
    if let Some(file) = &args.codequality {
        crate::codequality_report::check_target(file)?;
        // The report lists every finding of the head, so the whole MR is reviewed.
        args.request.review.full = true;
    }
    let pool = db.pool(args.concurrency / 2 + 5).await?;
    crate::migrate(&pool)
        .await
        .context("could not apply migrations")?;
    // A dry run answers nobody: it posts nothing at all.
    let chats = if args.request.review.dry_run {
        Vec::new()
    } else {
        enqueue_conversations(&pool, &deps, &refs).await?
    };
    let ids = enqueue_reviews(&pool, refs.clone(), &args.request).await?;
    let queue = Queue::new(pool.clone());
    let config = WorkerConfig {
        concurrency: args.concurrency as usize,
        limits: [(LLM_RESOURCE.to_owned(), args.llm.glm_concurrent_requests)]
            .into_iter()
            .chain(args.gitlab.limits())
            .collect(),
        ..WorkerConfig::default()
    };
    set_gitlab_budget(&pool, &args.gitlab).await?;
    let worker = Worker::new(queue.clone(), Dispatcher::with_review(deps), config);
    let stop = CancellationToken::new();
    shutdown::on_signal(stop.clone());
    let running = tokio::spawn(worker.run(stop.clone()));
    let watched = tokio::select! {
        watched = watch_with_descriptions(&queue, &ids, &refs) => watched?,
        () = stop.cancelled() => Watched::Ended(false),
    };
    // The conversations ran first (higher priority); wait for any still going.
    let watched = match watched {
        Watched::Ended(true) if !chats.is_empty() => {
            wait_for(&queue, &chats, OnWaiting::Stop).await?
        }
        other => other,
    };
    stop.cancel();
    running.await.context("the worker task panicked")??;
    report(&pool, &ids).await?;
    if let Some(file) = &args.codequality {
        write_code_quality(&pool, &ids, &refs, file).await?;
    }
    Ok(match watched {
        Watched::Ended(true) => ExitCode::SUCCESS,
        Watched::Ended(false) => ExitCode::from(1),
        Watched::Blocked(reason) => {
            eprintln!(
                "reviewq: not waiting: {reason}\nThe review stays queued; a `reviewq worker` on this database finishes it when that changes."
            );
            ExitCode::from(1)
        }
    })
}

/// Enqueues the conversations of the notes written since each MR's last round (the CI
/// mode's stand-in for the webhook's Note Hook).
async fn enqueue_conversations(
    pool: &PgPool,
    deps: &crate::jobs::review::ReviewDeps,
    refs: &[MrRef],
) -> anyhow::Result<Vec<JobId>> {
    let mut ids = Vec::new();
    for mr in refs {
        let jobs = crate::jobs::conversation::catch_up(deps, mr)
            .await
            .map_err(|e| anyhow::anyhow!("could not read the comments of {mr}: {e}"))?;
        for job in jobs {
            ids.push(Queue::enqueue(pool, &job).await?.id());
        }
    }
    Ok(ids)
}

/// Watches the review jobs, then the description jobs their rounds enqueued, so that a
/// one-shot run leaves no description half done.
async fn watch_with_descriptions(
    queue: &Queue,
    ids: &[JobId],
    refs: &[MrRef],
) -> anyhow::Result<Watched> {
    let reviews = wait_for(queue, ids, OnWaiting::Stop).await?;
    if reviews != Watched::Ended(true) {
        return Ok(reviews);
    }
    let keys: Vec<String> = refs
        .iter()
        .map(|r| DescribeArgs::dedupe_key(&r.project, r.iid))
        .collect();
    let descriptions = queue.unfinished_with_keys(&keys).await?;
    if descriptions.is_empty() {
        return Ok(reviews);
    }
    wait_for(queue, &descriptions, OnWaiting::Stop).await
}

/// Writes the Code Quality report of every reviewed head to `file`.
async fn write_code_quality(
    pool: &PgPool,
    ids: &[JobId],
    refs: &[MrRef],
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for (id, mr) in ids.iter().zip(refs) {
        // The head this run reviewed; for a head reviewed before, the last reviewed head.
        let head = crate::jobs::review::reported_head(
            pool,
            *id,
            &mr.project.to_string(),
            i64::try_from(mr.iid)?,
        )
        .await?;
        let issues = match head.as_deref().map(HeadSha::parse).transpose()? {
            Some(head) => crate::codequality_report::issues(pool, mr, &head)
                .await?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        all.extend(issues);
    }
    crate::codequality_report::write_file(file, &all)?;
    eprintln!(
        "reviewq: Code Quality report with {} findings written to {}",
        all.len(),
        file.display()
    );
    Ok(())
}

/// Prints each job's outcome, and the comments of dry runs.
async fn report(pool: &PgPool, ids: &[JobId]) -> anyhow::Result<()> {
    let queue = Queue::new(pool.clone());
    let mut out = std::io::stdout().lock();
    for &id in ids {
        let job = queue.get(id).await?;
        let mr = job
            .payload
            .get("mr")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let review = crate::jobs::review::round_report(pool, id).await?;
        match (job.state, review) {
            (JobState::Succeeded, None) => {
                writeln!(
                    out,
                    "{mr}: not reviewed: this head commit was already reviewed, or the project's .reviewq.toml skips it (draft, labels, review_types); --force reviews it"
                )?;
            }
            (state, Some(review)) => {
                let count = |state: CommentState| {
                    review.comments.iter().filter(|c| c.state == state).count()
                };
                let posted = count(CommentState::Posted);
                let downgraded = count(CommentState::Downgraded);
                writeln!(
                    out,
                    "{mr}: {state} at {}: {posted} comments posted, {downgraded} moved to the summary{}",
                    &review.head_sha[..review.head_sha.len().min(12)],
                    job.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )?;
                if review.dry_run {
                    writeln!(out, "--dry-run: nothing was posted. The comments would be:")?;
                    for r in &review.comments {
                        let place = r
                            .position
                            .as_ref()
                            .map(|p| {
                                format!(
                                    "{}:{}",
                                    p["new_path"].as_str().unwrap_or("?"),
                                    p["new_line"]
                                        .as_u64()
                                        .or(p["old_line"].as_u64())
                                        .unwrap_or(0)
                                )
                            })
                            .unwrap_or_else(|| "summary note".into());
                        writeln!(out, "\n--- {place} ---\n{}", r.body)?;
                    }
                }
            }
            (state, None) => {
                writeln!(
                    out,
                    "{mr}: {state}{}",
                    job.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}
