//! `reviewq bench serve`: webhook answer latency under a steady delivery rate.
//!
//! Starts the webhook server in this process on loopback against the database, then sends
//! valid merge request `open` deliveries (each for a distinct MR, each with its own
//! `Idempotency-Key`) at a fixed rate for a fixed time. The schedule is open-loop: every
//! delivery starts on its tick whatever earlier ones are doing, so a slow answer cannot
//! hide the ones queued behind it. Each delivery opens a new connection, as GitLab's do.
//! Latency runs from sending the request to reading the whole answer, client included.
//! The bench's jobs and deliveries are deleted afterwards.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    bench::harness::Percentiles,
    config::DbArgs,
    server::{AppState, WebhookConfig, serve},
};

/// Arguments of `bench serve`.
#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Deliveries per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Results of `bench serve`.
#[derive(Debug, Serialize)]
pub struct ServeBenchReport {
    pub rate: u32,
    pub seconds: u32,
    pub deliveries: usize,
    /// Answers other than 202.
    pub errors: usize,
    /// Review jobs the deliveries inserted (one per delivery expected).
    pub jobs_enqueued: i64,
    pub latency_ms: Percentiles,
}

/// Runs `bench serve`.
///
/// # Errors
/// Database, bind or HTTP client errors.
pub async fn run(db: &DbArgs, args: ServeBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(10).await?;
    crate::migrate(&pool).await?;
    let report = bench(&pool, &args).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let p = &report.latency_ms;
        writeln!(
            out,
            "reviewq bench serve: {} deliveries at {}/s for {} s; {} errors; {} jobs enqueued",
            report.deliveries, report.rate, report.seconds, report.errors, report.jobs_enqueued
        )?;
        writeln!(
            out,
            "  answer latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.p50, p.p95, p.p99, p.max
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(pool: &sqlx::PgPool, args: &ServeBenchArgs) -> anyhow::Result<ServeBenchReport> {
    let secret = uuid::Uuid::new_v4().to_string();
    // A project of its own per run, so earlier runs' unfinished jobs cannot dedupe these.
    let project = format!(
        "bench/serve-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("could not bind loopback")?;
    let url = format!("http://{}/webhooks/gitlab", listener.local_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        AppState::new(pool.clone(), WebhookConfig::new(secret.clone())),
        stop.clone().cancelled_owned(),
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;

    let total = usize::try_from(args.rate * args.seconds)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = JoinSet::new();
    let mut keys = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let key = uuid::Uuid::new_v4().to_string();
        keys.push(format!("idem:{key}"));
        let body = serde_json::to_vec(&delivery(&project, i as u64 + 1))?;
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Merge Request Hook")
            .header("x-gitlab-token", &secret)
            .header("idempotency-key", key)
            .body(body);
        sends.spawn(async move {
            let start = Instant::now();
            let ok = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.is_ok() && status == 202
                }
                Err(_) => false,
            };
            (start.elapsed(), ok)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    while let Some(done) = sends.join_next().await {
        let (elapsed, ok) = done.context("a delivery task panicked")?;
        latencies.push(elapsed.as_secs_f64() * 1000.0);
        errors += usize::from(!ok);
    }
    stop.cancel();
    server.await.context("server task panicked")??;

    let jobs_enqueued = sqlx::query_scalar!(
        r#"select count(*) as "n!" from jobs where kind = 'review' and payload->>'project' = $1"#,
        project
    )
    .fetch_one(pool)
    .await?;
    sqlx::query!(
        "delete from jobs where kind = 'review' and payload->>'project' = $1",
        project
    )
    .execute(pool)
    .await?;
    sqlx::query!("delete from webhook_deliveries where key = any($1)", &keys)
        .execute(pool)
        .await?;

    Ok(ServeBenchReport {
        rate: args.rate,
        seconds: args.seconds,
        deliveries: total,
        errors,
        jobs_enqueued,
        latency_ms: Percentiles::of(latencies),
    })
}

/// A merge request `open` delivery as GitLab sends it, for MR `iid` of `project`.
fn delivery(project: &str, iid: u64) -> serde_json::Value {
    serde_json::json!({
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 1, "name": "Bench", "username": "bench"},
        "project": {"id": 1, "name": "serve", "path_with_namespace": project,
                    "web_url": format!("https://gitlab.example.com/{project}"), "default_branch": "main"},
        "object_attributes": {
            "id": iid, "iid": iid, "title": "Bench merge request", "description": "A benchmark delivery.",
            "state": "opened", "draft": false, "work_in_progress": false, "action": "open",
            "source_branch": format!("feature-{iid}"), "target_branch": "main",
            "source_project_id": 1, "target_project_id": 1,
            "url": format!("https://gitlab.example.com/{project}/-/merge_requests/{iid}"),
            "last_commit": {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "bench", "title": "bench"}
        },
        "labels": [{"title": "backend"}],
        "changes": {},
        "assignees": [],
        "reviewers": []
    })
}
