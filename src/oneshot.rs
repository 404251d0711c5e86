//! `reviewq review` (one-shot, for CI) and `enqueue --wait`: run or watch given review jobs
//! until they end, showing progress, then report what reached GitLab.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{ReviewCommandArgs, enqueue_reviews, parse_checked_refs, review_deps, set_gitlab_budget},
    config::DbArgs,
    jobs::{Dispatcher, LLM_RESOURCE, describe::DescribeArgs},
    mr_ref::MrRef,
    queue::{JobId, JobState, Queue, Worker, WorkerConfig},
    review::HeadSha,
    shutdown,
};

/// How often progress is read from the database.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs `reviewq review`.
///
/// # Errors
/// Usage errors for bad input or settings (nothing written); runtime failures.
pub async fn run(db: &DbArgs, mut args: ReviewCommandArgs) -> anyhow::Result<ExitCode> {
    let refs = parse_checked_refs(&args.request.refs, &args.gitlab)?;
    let deps = review_deps(&args.gitlab, &args.llm)?;
    if let Some(file) = &args.codequality {
        crate::codequality_report::check_target(file)?;
        // The report lists every finding of the head, so the whole MR is reviewed.
        args.request.review.full = true;
    }
    let pool = db.pool(args.concurrency / 2 + 5).await?;
    crate::migrate(&pool)
        .await
        .context("could not apply migrations")?;
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
    let descriptions: Vec<JobId> = sqlx::query_scalar!(
        "select id from jobs where dedupe_key = any($1) and state in ('queued', 'running')",
        &keys
    )
    .fetch_all(queue.pool())
    .await?
    .into_iter()
    .map(JobId::new)
    .collect();
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
        let mut head =
            sqlx::query_scalar!("select head_sha from reviews where job_id = $1", id.get())
                .fetch_optional(pool)
                .await?;
        if head.is_none() {
            head = sqlx::query_scalar!(
                r#"select head_sha from reviews where project = $1 and mr_iid = $2
                       and state = 'done' order by finished_at desc limit 1"#,
                mr.project.to_string(),
                i64::try_from(mr.iid)?,
            )
            .fetch_optional(pool)
            .await?;
        }
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

/// Progress of one review job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    state: JobState,
    chunks_done: i64,
    chunks: i64,
    posted: i64,
    comments: i64,
    /// Why the review waits (its own reason or a chunk's), while it does.
    waiting: Option<String>,
}

async fn progress(pool: &PgPool, id: JobId) -> anyhow::Result<Progress> {
    let r = sqlx::query!(
        r#"
        select j.state as "state: JobState",
            (select count(*) from jobs c where c.parent_id = j.id
                and c.state in ('succeeded', 'failed', 'cancelled')) as "chunks_done!",
            (select count(*) from jobs c where c.parent_id = j.id) as "chunks!",
            (select count(*) from outbox o join reviews r on r.id = o.review_id
                where r.job_id = j.id and o.state in ('posted', 'dry_run')) as "posted!",
            (select count(*) from outbox o join reviews r on r.id = o.review_id
                where r.job_id = j.id and (o.kind = 'inline' or o.key = 'summary')) as "comments!",
            case when j.state = 'queued' then coalesce(j.waiting->>'reason',
                (select c.waiting->>'reason' from jobs c where c.parent_id = j.id
                 and c.state = 'queued' and c.waiting is not null limit 1)) end as waiting
        from jobs j where j.id = $1
        "#,
        id.get()
    )
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        state: r.state,
        chunks_done: r.chunks_done,
        chunks: r.chunks,
        posted: r.posted,
        comments: r.comments,
        waiting: r.waiting,
    })
}

/// How watching jobs ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// Every job ended; `true` if all succeeded.
    Ended(bool),
    /// A job waits for a condition (a spent budget, a paused provider), and the caller
    /// asked not to wait for it: the reason.
    Blocked(String),
}

/// What to do when a job waits for a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWaiting {
    /// Keep watching (the reason is shown): `enqueue --wait`, where workers elsewhere
    /// resume the job when the condition ends.
    Watch,
    /// Stop and report it: `review` in CI must not sit waiting for a budget or a top-up.
    Stop,
}

/// Prints a line whenever a job's progress changes, until every job has ended (or, with
/// [`OnWaiting::Stop`], until one waits for a condition).
///
/// # Errors
/// Database errors.
pub async fn wait_for(
    queue: &Queue,
    ids: &[JobId],
    on_waiting: OnWaiting,
) -> anyhow::Result<Watched> {
    // On a terminal: one live bar per job (chunks reviewed, comments posted). Otherwise
    // (CI logs, pipes): a plain line whenever a job's progress changes.
    let bars = std::io::stderr().is_terminal().then(|| {
        let all = MultiProgress::new();
        let style =
            ProgressStyle::with_template("job {prefix:>5} [{bar:30}] {pos}/{len} chunks  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bars: HashMap<JobId, ProgressBar> = ids
            .iter()
            .map(|&id| {
                let bar = all.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(id.to_string());
                (id, bar)
            })
            .collect();
        (all, bars)
    });
    let mut last: HashMap<JobId, Progress> = HashMap::new();
    loop {
        let mut all_done = true;
        let mut all_ok = true;
        for &id in ids {
            let p = progress(queue.pool(), id).await?;
            if on_waiting == OnWaiting::Stop
                && let Some(reason) = &p.waiting
            {
                if let Some((all, _)) = &bars {
                    all.clear().ok();
                }
                return Ok(Watched::Blocked(format!("job {id}: {reason}")));
            }
            if last.get(&id) != Some(&p) {
                let mut message =
                    format!("{}  comments posted {}/{}", p.state, p.posted, p.comments);
                if let Some(reason) = &p.waiting {
                    message.push_str("  waiting: ");
                    message.push_str(reason);
                }
                match bars.as_ref().and_then(|(_, bars)| bars.get(&id)) {
                    Some(bar) => {
                        bar.set_length(u64::try_from(p.chunks).unwrap_or(0));
                        bar.set_position(u64::try_from(p.chunks_done).unwrap_or(0));
                        bar.set_message(message);
                        if p.state.is_finished() {
                            bar.finish();
                        }
                    }
                    None => writeln!(
                        std::io::stderr().lock(),
                        "job {id}: chunks {}/{}  {message}",
                        p.chunks_done,
                        p.chunks
                    )?,
                }
                last.insert(id, p.clone());
            }
            all_done &= p.state.is_finished();
            all_ok &= p.state == JobState::Succeeded;
        }
        if all_done {
            return Ok(Watched::Ended(all_ok));
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
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
        let review = sqlx::query!(
            "select id, head_sha, dry_run from reviews where job_id = $1",
            id.get()
        )
        .fetch_optional(pool)
        .await?;
        match (job.state, review) {
            (JobState::Succeeded, None) => {
                writeln!(
                    out,
                    "{mr}: not reviewed: this head commit was already reviewed, or the project's .reviewq.toml skips it (draft, labels, review_types); --force reviews it"
                )?;
            }
            (state, Some(review)) => {
                let rows = sqlx::query!(
                    r#"select key, kind, state, body, position from outbox
                       where review_id = $1 and (kind = 'inline' or key = 'summary')
                       order by key = 'summary', key"#,
                    review.id
                )
                .fetch_all(pool)
                .await?;
                let posted = rows.iter().filter(|r| r.state == "posted").count();
                let downgraded = rows.iter().filter(|r| r.state == "downgraded").count();
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
                    for r in rows {
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
