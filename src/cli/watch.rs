//! Watching jobs until they end (`review`, `enqueue --wait`, `describe --wait`, `demo`):
//! one line whenever a job's progress changes.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    time::Duration,
};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::queue::{JobId, JobState, Queue};

/// How often progress is read from the database.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

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
    let job = Queue::new(pool.clone()).progress(id).await?;
    let comments = crate::jobs::review::comment_progress(pool, id).await?;
    Ok(Progress {
        state: job.state,
        chunks_done: job.children_ended,
        chunks: job.children,
        posted: comments.posted,
        comments: comments.total,
        waiting: job.waiting,
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
