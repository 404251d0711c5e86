//! `reviewq enqueue`: insert review jobs, print their ids, and with `--wait` watch them.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::Args;

use crate::{
    config::{DbArgs, GitLabArgs},
    jobs::review,
    queue::{JobId, Queue},
};

use super::{
    args::{ReviewRequest, parse_checked_refs},
    watch::{OnWaiting, Watched, wait_for},
};

/// Arguments of `enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub request: ReviewRequest,

    /// Show progress until the jobs end (exit 0 only if all succeeded).
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub gitlab: GitLabArgs,
}

pub(super) async fn enqueue(db: &DbArgs, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    // Validate everything before touching the database.
    let refs = parse_checked_refs(&args.request.refs, &args.gitlab)?;
    let pool = db.pool(2).await?;
    let ids = enqueue_reviews(&pool, refs, &args.request).await?;
    print_and_watch(pool, &ids, args.wait).await
}

/// Prints the new jobs' ids, one per line, and with `wait` shows their progress until they
/// end (exit 0 only if all succeeded).
pub(super) async fn print_and_watch(
    pool: sqlx::PgPool,
    ids: &[JobId],
    wait: bool,
) -> anyhow::Result<ExitCode> {
    {
        let mut out = std::io::stdout().lock();
        for id in ids {
            writeln!(out, "{id}")?;
        }
    }
    if wait {
        let watched = wait_for(&Queue::new(pool), ids, OnWaiting::Watch).await?;
        return Ok(if watched == Watched::Ended(true) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// Inserts one review job per MR in one transaction; returns their ids (an unfinished
/// identical review is reused).
///
/// # Errors
/// Database errors.
pub async fn enqueue_reviews(
    pool: &sqlx::PgPool,
    refs: Vec<crate::mr_ref::MrRef>,
    request: &ReviewRequest,
) -> anyhow::Result<Vec<JobId>> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        let job = review::ReviewArgs::new(r, &request.review).job(request.priority);
        ids.push(Queue::enqueue(&mut *tx, &job).await?.id());
    }
    tx.commit().await.context("could not commit the new jobs")?;
    Ok(ids)
}
