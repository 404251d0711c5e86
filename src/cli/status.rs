//! `reviewq status`: job states, attempts, errors and per-chunk progress.

use std::{io::Write, process::ExitCode};

use clap::Args;
use serde::Serialize;

use crate::{
    config::DbArgs,
    queue::{AttemptRow, ChildCounts, JobId, JobRow, Queue, RateGate},
};

use super::state_error;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One job in detail; without it, the most recent jobs.
    pub id: Option<JobId>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

/// `status ID --json`: the job, its attempts and its children.
#[derive(Debug, Serialize)]
struct JobDetail {
    #[serde(flatten)]
    job: JobRow,
    attempts: Vec<AttemptRow>,
    children: ChildCounts,
}

pub(super) async fn status(db: &DbArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::new(db.pool(2).await?);
    let mut out = std::io::stdout().lock();
    if !args.json
        && let Some(pause) = crate::spend::current_pause(queue.pool()).await?
    {
        writeln!(
            out,
            "LLM WORK PAUSED since {}: {}\n  next probe call at {} ({} probes so far); work resumes by itself when one succeeds\n",
            pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.reason,
            pause.probe_at.format("%Y-%m-%d %H:%M:%S UTC"),
            pause.probes
        )?;
    }
    if !args.json {
        for pause in RateGate::pauses(queue.pool()).await? {
            writeln!(
                out,
                "{} BACKING OFF since {}: {}\n  no request before {}, then one probe at a time; work resumes by itself\n",
                pause.resource.to_uppercase(),
                pause.since.format("%Y-%m-%d %H:%M:%S UTC"),
                pause.reason,
                pause.until.format("%Y-%m-%d %H:%M:%S UTC"),
            )?;
        }
    }
    match args.id {
        Some(id) => {
            let job = queue.get(id).await.map_err(state_error)?;
            let detail = JobDetail {
                attempts: queue.attempts(id).await?,
                children: queue.child_counts(id).await?,
                job,
            };
            if args.json {
                serde_json::to_writer_pretty(&mut out, &detail)?;
                writeln!(out)?;
            } else {
                print_detail(&mut out, &detail)?;
            }
        }
        None => {
            let jobs = queue.recent(args.limit).await?;
            let mut rows = Vec::with_capacity(jobs.len());
            for job in jobs {
                let children = queue.child_counts(job.id).await?;
                rows.push(JobDetail {
                    job,
                    attempts: Vec::new(),
                    children,
                });
            }
            if args.json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                print_table(&mut out, &rows)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(job: &JobRow) -> String {
    match job.payload.get("mr").and_then(|v| v.as_str()) {
        Some(mr) => mr.to_owned(),
        None => job.kind.clone(),
    }
}

fn progress(children: &ChildCounts) -> String {
    if children.total() == 0 {
        "-".into()
    } else {
        let ended = children.succeeded + children.failed + children.cancelled;
        format!("{ended}/{}", children.total())
    }
}

fn print_table(out: &mut impl Write, rows: &[JobDetail]) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(
            out,
            "no jobs yet: `reviewq enqueue group/project:42` adds one"
        );
    }
    writeln!(
        out,
        "{:>6}  {:<10}  {:<28}  {:>7}  {:>6}  {:<20}  ERROR",
        "ID", "STATE", "WHAT", "ATTEMPT", "CHUNKS", "UPDATED"
    )?;
    for r in rows {
        let j = &r.job;
        let when = j.finished_at.or(j.started_at).unwrap_or(j.created_at);
        let mut state = j.state.to_string();
        if j.state == crate::queue::JobState::Queued && j.run_at > chrono::Utc::now() {
            state.push('*');
        }
        writeln!(
            out,
            "{:>6}  {:<10}  {:<28}  {:>7}  {:>6}  {:<20}  {}",
            j.id,
            state,
            truncate(&describe(j), 28),
            format!("{}/{}", j.attempt, j.max_attempts),
            progress(&r.children),
            when.format("%Y-%m-%d %H:%M:%S"),
            match (&j.waiting, &j.last_error) {
                // Only a queued job has `waiting` (see `Queue::get`).
                (Some(w), _) => truncate(&format!("waiting: {}", w.reason), 60),
                (_, Some(e)) => truncate(e, 60),
                _ => String::new(),
            },
        )?;
    }
    writeln!(
        out,
        "(* waiting for a retry or a condition; `reviewq status ID` shows why)"
    )
}

fn print_detail(out: &mut impl Write, d: &JobDetail) -> std::io::Result<()> {
    let j = &d.job;
    writeln!(out, "job {} ({})", j.id, describe(j))?;
    writeln!(out, "  kind:      {}", j.kind)?;
    writeln!(out, "  state:     {}", j.state)?;
    writeln!(
        out,
        "  attempts:  {} run, {} failed of {} allowed",
        j.attempt, j.failed_attempts, j.max_attempts
    )?;
    writeln!(out, "  run at:    {}", j.run_at)?;
    if let Some(lease) = j.lease_expires_at {
        writeln!(
            out,
            "  lease:     until {lease} (worker {})",
            j.worker_id.map(|w| w.to_string()).unwrap_or_default()
        )?;
    }
    if d.children.total() > 0 {
        let c = &d.children;
        writeln!(
            out,
            "  chunks:    {} total: {} succeeded, {} failed, {} cancelled, {} running, {} queued",
            c.total(),
            c.succeeded,
            c.failed,
            c.cancelled,
            c.running,
            c.queued
        )?;
    }
    if let Some(w) = &j.waiting {
        writeln!(
            out,
            "  waiting:   {} (since {})",
            w.reason,
            w.since.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    if let Some(err) = &j.last_error {
        writeln!(out, "  error:     {err}")?;
    }
    for a in &d.attempts {
        let secs = (a.finished_at - a.started_at).num_milliseconds() as f64 / 1000.0;
        writeln!(
            out,
            "  attempt {}: {} after {:.1}s on worker {}{}",
            a.attempt,
            a.outcome,
            secs,
            a.worker_id,
            a.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
