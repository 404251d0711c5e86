//! `reviewq bench ui`: how fast the console's pages answer on a large database.
//!
//! Seeds 100,000 jobs (a tenth failed, with review and chunk kinds over 50 projects),
//! 10,000 review rounds with 50,000 findings, and 1,000,000 ledger rows spread over the
//! last 365 days, all with one SQL statement each (`generate_series`), then serves the
//! console on loopback in this process and times each page sequentially (warm-up first),
//! from sending the request to reading the whole page. Every seeded row carries the
//! `bench-ui/` project prefix (or a `bench_ui` payload flag) and is deleted afterwards.
//! Use a throwaway database: the overview counts every job, seeded or not.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    bench::harness::Percentiles,
    config::DbArgs,
    server::{AppState, WebhookConfig, serve, ui::UiConfig},
};

/// Arguments of `bench ui`.
#[derive(Debug, Args)]
pub struct UiBenchArgs {
    /// Jobs to seed.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i32).range(100..=10_000_000))]
    pub jobs: i32,
    /// Ledger rows to seed.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i32).range(100..=100_000_000))]
    pub ledger_rows: i32,
    /// Requests timed per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub requests: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One page's timings.
#[derive(Debug, Serialize)]
pub struct PageTiming {
    pub page: String,
    pub latency_ms: Percentiles,
}

/// Results of `bench ui`.
#[derive(Debug, Serialize)]
pub struct UiBenchReport {
    pub jobs: i32,
    pub ledger_rows: i32,
    pub seed_s: f64,
    pub pages: Vec<PageTiming>,
}

const PASSWORD: &str = "bench-ui-password";

/// Runs `bench ui`.
///
/// # Errors
/// Database, bind or HTTP client errors.
pub async fn run(db: &DbArgs, args: UiBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(12).await?;
    crate::migrate(&pool).await?;
    let started = Instant::now();
    let failed_job = seed(&pool, &args).await.context("seeding the bench rows")?;
    let seed_s = started.elapsed().as_secs_f64();
    let result = time_pages(&pool, &args, failed_job).await;
    cleanup(&pool).await.context("deleting the bench rows")?;
    let report = UiBenchReport {
        jobs: args.jobs,
        ledger_rows: args.ledger_rows,
        seed_s,
        pages: result?,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "bench ui: {} jobs, {} ledger rows (seeded in {:.1} s)",
            report.jobs, report.ledger_rows, report.seed_s
        )?;
        for p in &report.pages {
            writeln!(
                out,
                "  {:<48} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
                p.page, p.latency_ms.p50, p.latency_ms.p99, p.latency_ms.max
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Seeds the rows; returns the id of one failed review job.
async fn seed(pool: &PgPool, args: &UiBenchArgs) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        r#"
        insert into jobs (kind, payload, state, attempt, failed_attempts, run_at, created_at,
                          started_at, finished_at, last_error, lease_expires_at, worker_id)
        select case when g % 5 = 0 then 'review' else 'review_chunk' end,
               jsonb_build_object('bench_ui', true, 'mr', 'bench-ui/p' || g % 50 || '!' || g % 500,
                                  'project', 'bench-ui/p' || g % 50, 'iid', g % 500),
               s.state::job_state, 1, case when s.state = 'failed' then 5 else 0 end,
               now() - make_interval(secs => g), now() - make_interval(secs => g),
               now() - make_interval(secs => g - 1),
               case when s.state in ('succeeded', 'failed', 'cancelled') then now() - make_interval(secs => g - 2) end,
               case when s.state = 'failed' then 'GitLab answered 500 (bench)' end,
               case when s.state = 'running' then now() + interval '1 hour' end,
               case when s.state = 'running' then gen_random_uuid() end
        from generate_series(1, $1) g,
             lateral (select case when g % 100 < 80 then 'succeeded' when g % 100 < 90 then 'failed'
                                  when g % 100 < 95 then 'cancelled' when g % 100 < 99 then 'queued'
                                  else 'running' end as state) s
        "#,
        args.jobs
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        r#"
        insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha, base_sha,
                             start_sha, state, chunk_count, created_at, finished_at)
        select -g, 'bench-ui/p' || g % 50, 1 + g % 500, 'general', false, md5(g::text), 'b', 's',
               'done', 4, now() - make_interval(mins => g), now() - make_interval(mins => g)
        from generate_series(1, greatest($1 / 10, 1)) g
        "#,
        args.jobs
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        r#"
        insert into outbox (review_id, key, kind, severity, body, state)
        select r.id, 'f' || k, 'inline', (array['critical', 'major', 'minor', 'info'])[1 + k % 4],
               'bench', (array['posted', 'open', 'dismissed', 'downgraded', 'posted'])[1 + k]
        from reviews r, generate_series(0, 4) k where r.project like 'bench-ui/%'
        "#
    )
    .execute(pool)
    .await?;
    // Review row number n (1-based) has id first + n - 1, project p(n % 50) and MR 1 + n % 500,
    // so each call's review is computed rather than looked up. A review's calls are
    // consecutive (a round's chunks are called within minutes of each other) and a project
    // uses one model, as a deployment does; spreading each review's calls over the year and
    // over three models would make every call its own group of the spend rollup, which no
    // real ledger does.
    let first = sqlx::query_scalar!(
        r#"select min(id) as "id!" from reviews where project like 'bench-ui/%'"#
    )
    .fetch_one(pool)
    .await?;
    let rounds = (args.jobs / 10).max(1);
    sqlx::query!(
        r#"
        insert into llm_calls (job_id, job_attempt, review_id, project, mr_iid, head_sha,
                               review_type, model, status, prompt_tokens, completion_tokens,
                               total_tokens, started_at, finished_at)
        select g, 1, $2::int8 + n - 1, 'bench-ui/p' || n % 50, 1 + n % 500, 'h', 'general',
               (array['glm-4.6', 'glm-5', 'glm-4.5-air'])[1 + n % 50 % 3],
               case when g % 50 = 0 then 'error' else 'ok' end, 3000, 500, 3500,
               now() - make_interval(secs => (g::float8 * 31536000 / $1)::int),
               now() - make_interval(secs => (g::float8 * 31536000 / $1)::int) + interval '2 seconds'
        from generate_series(1, $1) g, lateral (select (1 + (g - 1)::int8 * $3::int4 / $1)::int as n) r
        "#,
        args.ledger_rows,
        first,
        rounds,
    )
    .execute(pool)
    .await?;
    sqlx::query!("analyze jobs, reviews, outbox, llm_calls")
        .execute(pool)
        .await?;
    sqlx::query_scalar!(
        r#"select id as "id!" from jobs where state = 'failed' and kind = 'review'
           and payload @> '{"bench_ui": true}' order by id desc limit 1"#
    )
    .fetch_one(pool)
    .await
}

async fn cleanup(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(r#"delete from jobs where payload @> '{"bench_ui": true}'"#)
        .execute(pool)
        .await?;
    sqlx::query!("delete from llm_calls where project like 'bench-ui/%'")
        .execute(pool)
        .await?;
    sqlx::query!("delete from reviews where project like 'bench-ui/%'")
        .execute(pool)
        .await?;
    Ok(())
}

async fn time_pages(
    pool: &PgPool,
    args: &UiBenchArgs,
    failed_job: i64,
) -> anyhow::Result<Vec<PageTiming>> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let state = AppState::new(pool.clone(), WebhookConfig::new("bench-ui-webhook")).with_ui(
        UiConfig::new(PASSWORD, None, "https://gitlab.example.com".parse()?),
    );
    let server = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let pages = [
        "/ui".to_owned(),
        "/ui/jobs".to_owned(),
        "/ui/jobs?state=failed".to_owned(),
        "/ui/jobs?state=queued&kind=review".to_owned(),
        "/ui/jobs?project=bench-ui%2Fp7&mr=7".to_owned(),
        format!("/ui/jobs/{failed_job}"),
        "/ui/reviews".to_owned(),
        "/ui/reviews/mr?project=bench-ui%2Fp7&iid=8".to_owned(),
        "/ui/spend".to_owned(),
    ];
    let mut out = Vec::new();
    for page in pages {
        let url = format!("{base}{page}");
        let mut samples = Vec::new();
        for i in 0..args.requests + 3 {
            let t = Instant::now();
            let response = client.get(&url).bearer_auth(PASSWORD).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{page} answered {}",
                response.status()
            );
            response.bytes().await?;
            if i >= 3 {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i]
        };
        out.push(PageTiming {
            page,
            latency_ms: Percentiles {
                p50: at(0.5),
                p95: at(0.95),
                p99: at(0.99),
                max: at(1.0),
            },
        });
    }
    stop.cancel();
    let _ = server.await;
    Ok(out)
}
