//! `reviewq bench chat`: people asking the bot questions in its threads, end to end.
//!
//! Simulated GitLab and GLM (with latency) on a runtime of their own; the webhook server in
//! this process; worker processes. One merge request is reviewed first; then questions are
//! written as replies in the bot's threads by Developer members and their Note Hooks
//! delivered at a fixed rate (open loop). Reported: the webhook's answer latency, each
//! question's time from delivery to answered (`conversations.finished_at`), the GitLab
//! requests and LLM calls per conversation, and replies per question (exactly one).

use std::{
    collections::HashMap,
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::harness::{
    Percentiles, SIM_KEY as KEY, SIM_TOKEN as TOKEN, ensure_idle, simulator_runtime, stop_worker,
    worker_process,
};
use crate::bench::harness::{Rereview, review_job};
use crate::{
    config::DbArgs,
    queue::{JobId, JobState, Queue},
    review::{MarkerKind, conversation::find_reply_marker, find_marker},
    server::{AppState, WebhookConfig, serve},
    sim::{FakeGitLab, FakeGlm, FileSpec, GlmBehaviour, MrSpec, gitlab::access},
};

/// Arguments of `bench chat`.
#[derive(Debug, Args)]
pub struct ChatBenchArgs {
    /// Questions asked.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub questions: u32,
    /// Questions delivered per second.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Simulated GLM latency per request, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub latency_ms: u64,
    /// Simulated GitLab latency per request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub gitlab_latency_ms: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub workers: u32,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// GLM_CONCURRENT_REQUESTS: the fleet-wide limit.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrent_requests: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Results of `bench chat`.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    pub questions: u32,
    pub rate: u32,
    pub latency_ms: u64,
    pub gitlab_latency_ms: u64,
    /// Webhook answers other than 202.
    pub hook_errors: usize,
    pub hook_latency_ms: Percentiles,
    /// From the delivery to the conversation recorded as answered.
    pub answer_latency_ms: Percentiles,
    pub wall_secs: f64,
    pub gitlab_requests_per_question: f64,
    pub llm_calls_per_question: f64,
    /// Questions without exactly one reply (0 expected).
    pub not_answered_once: usize,
}

/// Runs `bench chat`.
///
/// # Errors
/// Database, simulator and worker errors; a phase that does not end in time.
pub async fn run(db: &DbArgs, args: ChatBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(10).await?;
    crate::migrate(&pool).await?;
    let queue = Queue::new(pool.clone());
    ensure_idle(&queue).await?;
    let sims = simulator_runtime()?;
    let gitlab = sims.spawn(FakeGitLab::start(TOKEN)).await??;
    let glm = sims
        .spawn(FakeGlm::start(
            KEY,
            GlmBehaviour::with_latency(Duration::from_millis(args.latency_ms)),
        ))
        .await??;
    gitlab.set_latency(Duration::from_millis(args.gitlab_latency_ms));
    let project = format!(
        "bench/chat-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    gitlab.add_merge_request(MrSpec {
        project_path: project.clone(),
        project_id: 5555,
        iid: 1,
        title: "Questions welcome".into(),
        files: vec![FileSpec::modified("src/cart.rs", CART)],
        ..MrSpec::default()
    })?;
    for n in 0..ASKERS {
        gitlab.set_member(&project, &format!("dev-{n}"), access::DEVELOPER)?;
    }
    let url = db.url()?;
    let mut children = Vec::new();
    for _ in 0..args.workers {
        children.push(
            worker_process(
                &url,
                &gitlab,
                &glm,
                args.concurrency,
                args.concurrent_requests,
            )?
            // The bench measures the pipeline, not the rate limit.
            .env("REVIEWQ_QUESTIONS_PER_HOUR", "0")
            .spawn()
            .context("could not start a worker process")?,
        );
    }
    let result = measure(&pool, &queue, &gitlab, &glm, &project, &args).await;
    for child in children {
        stop_worker(child).await;
    }
    drop((gitlab, glm));
    sims.shutdown_background();
    let report = result?;
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Members who ask, in turn.
const ASKERS: usize = 20;

/// A change the fake model comments on (an `unwrap()` and a debug print).
const CART: &str = "@@ -1,5 +1,6 @@ fn total()\n fn total(items: &[Item]) -> u64 {\n-    assert!(!items.is_empty());\n+    let first = items.first().unwrap();\n+    println!(\"debug {first:?}\");\n     let mut sum = 0;\n     for i in items { sum += i.price; }\n     sum\n";

async fn measure(
    pool: &sqlx::PgPool,
    queue: &Queue,
    gitlab: &FakeGitLab,
    glm: &FakeGlm,
    project: &str,
    args: &ChatBenchArgs,
) -> anyhow::Result<ChatReport> {
    let review = review_job(&format!("{project}:1"), Rereview::AsPushed)?;
    let id = Queue::enqueue(pool, &review).await?.id();
    wait_for(queue, &[id], Duration::from_secs(120)).await?;
    let threads: Vec<String> = gitlab
        .discussions(project, 1)?
        .into_iter()
        .filter(|d| {
            find_marker(&d.notes[0].body).is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)))
        })
        .map(|d| d.id)
        .collect();
    anyhow::ensure!(!threads.is_empty(), "the review posted no thread to ask in");

    let secret = uuid::Uuid::new_v4().to_string();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let hook_url = format!("http://{}/webhooks/gitlab", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        AppState::new(pool.clone(), WebhookConfig::new(secret.clone())),
        stop.clone().cancelled_owned(),
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let (requests_before, calls_before) = (gitlab.requests().len(), glm.request_count());
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let (mut sent, mut jobs, mut hook_latency, mut hook_errors) =
        (HashMap::new(), Vec::new(), Vec::new(), 0);
    for i in 0..args.questions as usize {
        tick.tick().await;
        let asker = format!("dev-{}", i % ASKERS);
        let text = format!("Why is this a problem here? (question {i})");
        let note = gitlab.seed_reply(project, 1, &threads[i % threads.len()], &asker, &text)?;
        let event = gitlab.note_hook(project, 1, note.id, "create")?;
        let at = Utc::now();
        let asked = Instant::now();
        let answer = client
            .post(&hook_url)
            .header("x-gitlab-token", &secret)
            .header("x-gitlab-event", "Note Hook")
            .json(&event)
            .send()
            .await?;
        hook_latency.push(asked.elapsed().as_secs_f64() * 1000.0);
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await?;
        match body["job_id"].as_i64() {
            Some(job) if status == 202 => jobs.push(JobId::new(job)),
            _ => hook_errors += 1,
        }
        sent.insert(i64::try_from(note.id)?, at);
    }
    wait_for(queue, &jobs, Duration::from_secs(600)).await?;
    let wall_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    server.await.context("the webhook server panicked")??;

    let answer_latency = answer_latencies(pool, &sent).await?;
    let replies = gitlab
        .notes(project, 1)?
        .into_iter()
        .filter_map(|n| find_reply_marker(&n.body))
        .fold(HashMap::<u64, usize>::new(), |mut counts, m| {
            *counts.entry(m.0).or_default() += 1;
            counts
        });
    let not_answered_once = sent
        .keys()
        .filter(|id| replies.get(&(**id as u64)).copied() != Some(1))
        .count();
    // The simulator's note ids start over on every run: its conversations must not outlive it.
    sqlx::query!("delete from conversations where project = $1", project)
        .execute(pool)
        .await?;
    let per_question = |n: u64| n as f64 / f64::from(args.questions);
    Ok(ChatReport {
        questions: args.questions,
        rate: args.rate,
        latency_ms: args.latency_ms,
        gitlab_latency_ms: args.gitlab_latency_ms,
        hook_errors,
        hook_latency_ms: Percentiles::of(hook_latency),
        answer_latency_ms: Percentiles::of(answer_latency),
        wall_secs,
        gitlab_requests_per_question: per_question(
            (gitlab.requests().len() - requests_before) as u64,
        ),
        llm_calls_per_question: per_question(glm.request_count() - calls_before),
        not_answered_once,
    })
}

/// Milliseconds from each delivery to its conversation's end.
async fn answer_latencies(
    pool: &sqlx::PgPool,
    sent: &HashMap<i64, DateTime<Utc>>,
) -> anyhow::Result<Vec<f64>> {
    let ids: Vec<i64> = sent.keys().copied().collect();
    let rows = sqlx::query!(
        "select note_id, finished_at from conversations where note_id = any($1)",
        &ids
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| (r.finished_at? - *sent.get(&r.note_id)?).num_microseconds())
        .map(|us| us as f64 / 1000.0)
        .collect())
}

async fn wait_for(queue: &Queue, ids: &[JobId], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for id in ids {
        loop {
            let job = queue.get(*id).await?;
            if job.state.is_finished() {
                anyhow::ensure!(
                    job.state == JobState::Succeeded,
                    "job {id} ended {:?}: {:?}",
                    job.state,
                    job.last_error
                );
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "job {id} did not end in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn print(report: &ChatReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    let (h, a) = (&report.hook_latency_ms, &report.answer_latency_ms);
    writeln!(
        out,
        "reviewq bench chat: {} questions at {}/s, GLM {} ms, GitLab {} ms per request; {:.1} s",
        report.questions,
        report.rate,
        report.latency_ms,
        report.gitlab_latency_ms,
        report.wall_secs
    )?;
    writeln!(
        out,
        "  webhook answer p50 {:.2} ms, p99 {:.2} ms ({} errors)",
        h.p50, h.p99, report.hook_errors
    )?;
    writeln!(
        out,
        "  delivery to answered p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        a.p50, a.p95, a.p99, a.max
    )?;
    writeln!(
        out,
        "  per question: {:.2} GitLab requests, {:.2} LLM calls; not answered exactly once: {}",
        report.gitlab_requests_per_question,
        report.llm_calls_per_question,
        report.not_answered_once
    )?;
    Ok(())
}
