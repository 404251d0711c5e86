//! `bench ledger`: the spend reports and the budget check on a year of ledger.
//!
//! Seeds `--calls` rows of `llm_calls` over `--days` days and `--projects` projects, in
//! review rounds of 20 consecutive calls (18 review chunks, a description, a conversation
//! reply; one call in 50 failed), each project on one model, as a deployment runs. The rows
//! go in through the ledger's own triggers, so the spend rollup is built as production
//! builds it. Then it times:
//! - `reviewq usage` (the same [`report`] function) by day, project and model, over the
//!   last 30 days and over all time;
//! - the budget check before every LLM call, with a fleet and a project budget set:
//!   [`spend::admit`], and the ledger insert that re-checks the budgets
//!   ([`ledger::start_within_limits`]) under a held lease.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;

use super::harness::{Percentiles, ensure_idle, memory_mib};
use crate::{
    config::DbArgs,
    jobs::noop::NoopArgs,
    queue::{Queue, WorkerId},
    spend::{
        self, SpendPolicy,
        ledger::{self, CallContext, CallPurpose},
        report::{self, GroupBy},
    },
};

/// Arguments of `bench ledger`.
#[derive(Debug, Args)]
pub struct LedgerBenchArgs {
    /// Ledger rows to seed.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(i64).range(20..=100_000_000))]
    pub calls: i64,
    /// Days the rows are spread over, ending now.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub days: i64,
    /// Projects the rounds are spread over.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub projects: i64,
    /// Timed runs of each report.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub report_runs: u32,
    /// Timed budget checks (and as many ledger inserts).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub checks: u32,
    /// Leave the seeded ledger in place; a later run with the same `--calls` reuses it.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One report's timings.
#[derive(Debug, Serialize)]
pub struct ReportTiming {
    pub by: GroupBy,
    /// `None`: all time.
    pub since_days: Option<i64>,
    pub rows: usize,
    pub ms: Percentiles,
}

/// Results of `bench ledger`.
#[derive(Debug, Serialize)]
pub struct LedgerBenchReport {
    pub calls: i64,
    pub days: i64,
    pub projects: i64,
    /// Seconds spent seeding (zero when a kept ledger was reused).
    pub seed_s: f64,
    /// Rows of the spend rollup the seed made.
    pub rollup_rows: i64,
    pub reports: Vec<ReportTiming>,
    /// `spend::admit` with both budgets set, in milliseconds.
    pub admit_ms: Percentiles,
    /// The ledger insert that re-checks both budgets, in milliseconds.
    pub start_call_ms: Percentiles,
    pub rss_peak_mib: Option<f64>,
}

const PROJECT_PREFIX: &str = "bench-ledger/p";
/// Calls per review round: consecutive in time, one merge request.
const ROUND: i64 = 20;
/// Rows per seeding statement: each is one grouped upsert of the rollup trigger.
const SEED_BATCH: i64 = 1_000_000;

/// Runs `bench ledger` and prints its report.
///
/// # Errors
/// Usage errors for a busy queue; database errors.
pub async fn run(db: &DbArgs, args: LedgerBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(4).await?;
    crate::migrate(&pool).await?;
    ensure_idle(&Queue::new(pool.clone())).await?;
    let report = measure(&pool, &args).await?;
    crate::bench::harness::write_report(&report, args.json, print_report)?;
    Ok(ExitCode::SUCCESS)
}

async fn measure(pool: &PgPool, args: &LedgerBenchArgs) -> anyhow::Result<LedgerBenchReport> {
    let started = Instant::now();
    seed(pool, args).await?;
    let seed_s = started.elapsed().as_secs_f64();
    let rollup_rows = sqlx::query_scalar!(
        r#"select count(*) as "n!" from llm_usage_daily where project like 'bench-ledger/%'"#
    )
    .fetch_one(pool)
    .await?;

    let mut reports = Vec::new();
    for since_days in [Some(30), None] {
        for by in [GroupBy::Day, GroupBy::Project, GroupBy::Model] {
            reports.push(time_report(pool, by, since_days, args.report_runs).await?);
        }
    }
    let (admit_ms, start_call_ms) = time_checks(pool, args.checks).await?;
    if !args.keep {
        delete(pool).await?;
    }
    Ok(LedgerBenchReport {
        calls: args.calls,
        days: args.days,
        projects: args.projects,
        seed_s,
        rollup_rows,
        reports,
        admit_ms,
        start_call_ms,
        rss_peak_mib: memory_mib("VmHWM:"),
    })
}

/// Seeds the ledger, or keeps the one a `--keep` run left when it has as many rows.
async fn seed(pool: &PgPool, args: &LedgerBenchArgs) -> anyhow::Result<()> {
    let present = sqlx::query_scalar!(
        r#"select count(*) as "n!" from llm_calls where project like 'bench-ledger/%'"#
    )
    .fetch_one(pool)
    .await?;
    if present == args.calls {
        return Ok(());
    }
    delete(pool).await?;
    let span_s = args.days * 86_400;
    let mut from = 1;
    while from <= args.calls {
        let to = (from + SEED_BATCH - 1).min(args.calls);
        // Call g (1 newest) started g * span / calls seconds ago; round g / 20 is one MR of
        // project (round % projects), whose model is fixed by the project.
        sqlx::query!(
            r#"
            insert into llm_calls (job_id, job_attempt, project, mr_iid, head_sha, review_type,
                                   model, purpose, status, prompt_tokens, completion_tokens,
                                   total_tokens, cached_tokens, started_at, finished_at)
            select g, 1, 'bench-ledger/p' || r % $4, 1 + (r / $4) % 5000, 'h', 'general',
                   (array['glm-4.6', 'glm-5', 'glm-4.5-air'])[1 + (r % $4) % 3],
                   case g % $6 when 0 then 'describe' when 1 then 'conversation' else 'review' end,
                   case when g % 50 = 0 then 'error' else 'ok' end,
                   3000, 500, 3500, 1000, t, t + interval '2 seconds'
            from generate_series($1::int8, $2::int8) g,
                 lateral (select g / $6 as r,
                          now() - make_interval(secs => g::float8 * $5 / $3::int8) as t) x
            "#,
            from,
            to,
            args.calls,
            args.projects,
            span_s as f64,
            ROUND,
        )
        .execute(pool)
        .await?;
        from = to + 1;
    }
    sqlx::query!("analyze llm_calls, llm_usage_daily")
        .execute(pool)
        .await?;
    Ok(())
}

async fn delete(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query!("delete from llm_calls where project like 'bench-ledger/%'")
        .execute(pool)
        .await?;
    // The rollup keeps a group whose calls were all deleted, as zeros; these are the
    // bench's own.
    sqlx::query!("delete from llm_usage_daily where project like 'bench-ledger/%'")
        .execute(pool)
        .await?;
    sqlx::query!("delete from project_budgets where project like 'bench-ledger/%'")
        .execute(pool)
        .await?;
    Ok(())
}

async fn time_report(
    pool: &PgPool,
    by: GroupBy,
    since_days: Option<i64>,
    runs: u32,
) -> anyhow::Result<ReportTiming> {
    let today = report::today(pool).await?;
    let since = since_days.map(|d| today - chrono::Duration::days(d - 1));
    let mut ms = Vec::new();
    let mut rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let r = report::report(pool, by, since).await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        rows = r.rows.len();
    }
    Ok(ReportTiming {
        by,
        since_days,
        rows,
        ms: Percentiles::of(ms),
    })
}

/// Times `checks` admissions and as many ledger inserts for one project, with a fleet and a
/// project budget set high enough to admit every call.
async fn time_checks(pool: &PgPool, checks: u32) -> anyhow::Result<(Percentiles, Percentiles)> {
    let project = format!("{PROJECT_PREFIX}7");
    spend::set_project_budget(pool, &project, Some(u64::MAX / 4)).await?;
    let policy = SpendPolicy {
        daily_tokens: Some(u64::MAX / 4),
        ..SpendPolicy::default()
    };
    let queue = Queue::new(pool.clone());
    let job = Queue::enqueue(pool, &NoopArgs::default().job()).await?.id();
    let claimed = queue
        .claim(WorkerId::random(), 1, Duration::from_secs(600))
        .await?;
    let lease = claimed
        .iter()
        .find(|j| j.id() == job)
        .context("the bench's job was not claimed")?
        .lease;
    let call = CallContext {
        lease,
        review_id: None,
        chunk_index: None,
        project: project.clone(),
        mr_iid: 1,
        head_sha: "h".to_owned(),
        review_type: "general".to_owned(),
        model: "glm-4.6".to_owned(),
        purpose: CallPurpose::Review,
    };
    let (mut admit, mut start) = (Vec::new(), Vec::new());
    for _ in 0..checks {
        let t = Instant::now();
        let admission = spend::admit(pool, &policy, &project).await?;
        admit.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            admission == spend::Admission::Go,
            "the budget check refused: {admission:?}"
        );
        let t = Instant::now();
        ledger::start_within_limits(pool, &call, policy.daily_tokens)
            .await?
            .context("the ledger insert refused the call")?;
        start.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The timed inserts go, so that a kept ledger stays as seeded (all seeded calls are
    // finished; these are the only ones started).
    sqlx::query!(
        "delete from llm_calls where project = $1 and status = 'started'",
        project
    )
    .execute(pool)
    .await?;
    sqlx::query!("delete from jobs where id = $1", job.get())
        .execute(pool)
        .await?;
    Ok((Percentiles::of(admit), Percentiles::of(start)))
}

fn print_report(out: &mut impl Write, r: &LedgerBenchReport) -> std::io::Result<()> {
    writeln!(
        out,
        "reviewq bench ledger: {} calls over {} days, {} projects ({} rollup rows; seeded in {:.1} s)",
        r.calls, r.days, r.projects, r.rollup_rows, r.seed_s
    )?;
    for t in &r.reports {
        let since = t
            .since_days
            .map_or_else(|| "all time".to_owned(), |d| format!("--since {d}d"));
        writeln!(
            out,
            "  usage --by {:<8} {since:<12} {:>5} rows: p50 {:.1} ms, max {:.1} ms",
            t.by.as_str(),
            t.rows,
            t.ms.p50,
            t.ms.max
        )?;
    }
    for (name, p) in [
        ("budget check (admit)", &r.admit_ms),
        ("ledger insert with budgets", &r.start_call_ms),
    ] {
        writeln!(
            out,
            "  {name:<27} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            p.p50, p.p99, p.max
        )?;
    }
    if let Some(peak) = r.rss_peak_mib {
        writeln!(out, "  RSS peak: {peak:.1} MiB")?;
    }
    Ok(())
}
