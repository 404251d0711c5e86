//! `reviewq describe`: insert description jobs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::{
    config::{DbArgs, GitLabArgs},
    queue::Queue,
};

use super::{args::parse_checked_refs, enqueue::print_and_watch};

/// Arguments of `describe`.
#[derive(Debug, Args)]
pub struct DescribeCommandArgs {
    /// Merge requests: PROJECT:IID, PROJECT!IID or a merge request URL; comma-separated
    /// lists are accepted too.
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,

    /// Priority: higher runs first.
    #[arg(
        long,
        env = "REVIEWQ_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i16,

    /// Show progress until the jobs end (exit 0 only if all succeeded).
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub gitlab: GitLabArgs,
}

pub(super) async fn enqueue_descriptions(
    db: &DbArgs,
    args: DescribeCommandArgs,
) -> anyhow::Result<ExitCode> {
    let refs = parse_checked_refs(&args.refs, &args.gitlab)?;
    let pool = db.pool(2).await?;
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(refs.len());
    for r in refs {
        let job = crate::jobs::describe::DescribeArgs::new(r).job(args.priority);
        ids.push(Queue::enqueue(&mut *tx, &job).await?.id());
    }
    tx.commit().await.context("could not commit the new jobs")?;
    print_and_watch(pool, &ids, args.wait).await
}
