//! `reviewq usage`: token spend and cost from the `llm_calls` ledger, grouped by day,
//! project, merge request or model, as a table or JSON.
//!
//! The report reads the ledger's rollups, token sums per UTC day, project, model and
//! purpose (`llm_usage_project_daily`) or, by merge request, per UTC day, merge request,
//! model and purpose (`llm_usage_daily`), which triggers on `llm_calls` keep in the
//! transaction of each ledger write: a year of 200 projects is about 220,000 rows of the
//! first, against 10 million calls. Prices
//! (`model_prices`) are applied as it reads, as the `llm_call_costs` view applies them per
//! call, so both give the same cost. A call to a model without a price has no cost: it
//! counts in calls and tokens, not in the cost column, and the report names such models.

use std::{io::Write, process::ExitCode};

use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use serde::Serialize;
use sqlx::PgPool;

use crate::{config::DbArgs, config::UsageError};

/// Arguments of `usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only calls started on or after this day (YYYY-MM-DD, a UTC day like every day of
    /// the report), or within the last N UTC days, today included (`30d`); default: all
    /// time.
    #[arg(long, value_name = "DATE|Nd")]
    pub since: Option<String>,

    /// One row per day (newest first), project, merge request, model or purpose (the others
    /// most expensive first).
    #[arg(long, value_enum, default_value_t = GroupBy::Day)]
    pub by: GroupBy,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one row of the report stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// A UTC calendar day (`started_at`'s date in UTC).
    Day,
    /// A GitLab project.
    Project,
    /// A merge request (project and IID).
    Mr,
    /// An LLM model.
    Model,
    /// What the calls were for: `review`, `describe` (MR descriptions), `conversation`.
    Purpose,
}

impl GroupBy {
    /// The name used on the command line and in the query.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Project => "project",
            Self::Mr => "mr",
            Self::Model => "model",
            Self::Purpose => "purpose",
        }
    }
}

/// One group of LLM calls. Only the key fields of the grouping are set (`day`; `project`;
/// `project` and `mr_iid`; `model`; `purpose`); none are set in the report's totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_iid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// HTTP requests sent to the LLM, failed and retried ones included.
    pub calls: i64,
    /// Calls that ended in an error.
    pub failed_calls: i64,
    /// Tokens as the provider reported them (calls without reported usage add nothing).
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Cost in USD of the calls whose model has a price; `None` if none has.
    pub cost_usd: Option<f64>,
    /// Calls whose model has no price in `model_prices` (not in `cost_usd`).
    pub unpriced_calls: i64,
}

impl UsageRow {
    fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        self.failed_calls += other.failed_calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.unpriced_calls += other.unpriced_calls;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// What the row is about, for the table.
    fn label(&self) -> String {
        if let Some(purpose) = &self.purpose {
            return purpose.clone();
        }
        match (&self.day, &self.project, self.mr_iid, &self.model) {
            (Some(day), ..) => day.to_string(),
            (_, Some(project), Some(iid), _) => format!("{project}!{iid}"),
            (_, Some(project), None, _) => project.clone(),
            (.., Some(model)) => model.clone(),
            _ => "TOTAL".to_owned(),
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub by: GroupBy,
    pub since: Option<NaiveDate>,
    pub rows: Vec<UsageRow>,
    pub totals: UsageRow,
    /// Models called in the period that have no price in `model_prices`.
    pub unpriced_models: Vec<String>,
}

/// The keys one query groups by. They combine: the console's chart groups by day and
/// model; `reviewq usage --by mr` by project and merge request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dimensions {
    pub day: bool,
    pub project: bool,
    /// A merge request: its project and IID (implies `project`).
    pub mr: bool,
    pub model: bool,
    /// What the calls were for (`review`, `describe`, ...).
    pub purpose: bool,
}

impl From<GroupBy> for Dimensions {
    fn from(by: GroupBy) -> Self {
        let mut dims = Self::default();
        match by {
            GroupBy::Day => dims.day = true,
            GroupBy::Project => dims.project = true,
            GroupBy::Mr => dims.mr = true,
            GroupBy::Model => dims.model = true,
            GroupBy::Purpose => dims.purpose = true,
        }
        dims
    }
}

/// The ledger since `since` (all of it if `None`), one row per group of `dims`: newest
/// day first, then most expensive (most tokens where nothing is priced). At most `limit`
/// rows (all if `None`).
///
/// # Errors
/// Database errors.
pub async fn rows(
    pool: &PgPool,
    dims: Dimensions,
    since: Option<NaiveDate>,
    limit: Option<i64>,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    // One statement for every grouping: the key columns not asked for are null, so they
    // group nothing. It reads the ledger's rollups, not the calls: `llm_usage_daily` (per
    // day, merge request, model and purpose) only when merge requests are asked for,
    // otherwise `llm_usage_project_daily`, which has no merge request and is several times
    // smaller; the branch not needed is a one-time filter that reads nothing. Token sums are
    // grouped (with the model) before prices are applied: the cost is linear in them, so
    // this is the same sum as pricing every call, on a few rows instead of every rollup row.
    sqlx::query_as!(
        UsageRow,
        r#"
        select g.day as "day?", g.project as "project?", g.mr_iid as "mr_iid?",
               case when $4 then g.model end as "model?", g.purpose as "purpose?",
               sum(g.calls)::int8 as "calls!",
               sum(g.failed_calls)::int8 as "failed_calls!",
               sum(g.prompt_tokens)::int8 as "prompt_tokens!",
               sum(g.completion_tokens)::int8 as "completion_tokens!",
               sum(g.total_tokens)::int8 as "total_tokens!",
               sum((g.prompt_tokens - g.cached_tokens) * p.input_usd_per_mtok / 1e6
                   + g.cached_tokens * coalesce(p.cached_usd_per_mtok, p.input_usd_per_mtok) / 1e6
                   + g.completion_tokens * p.output_usd_per_mtok / 1e6)::float8 as "cost_usd?",
               coalesce(sum(g.calls) filter (where p.model is null), 0)::int8 as "unpriced_calls!"
        from (
            select case when $1 then u.day end as day,
                   case when $2 or $3 then u.project end as project,
                   case when $3 then u.mr_iid end as mr_iid,
                   u.model,
                   case when $5 then u.purpose end as purpose,
                   sum(u.calls) as calls, sum(u.failed_calls) as failed_calls,
                   sum(u.prompt_tokens) as prompt_tokens,
                   sum(u.completion_tokens) as completion_tokens,
                   sum(u.total_tokens) as total_tokens, sum(u.cached_tokens) as cached_tokens
            from (
                select day, project, mr_iid, model, purpose, calls, failed_calls, prompt_tokens,
                       completion_tokens, total_tokens, cached_tokens
                from llm_usage_daily
                where $3 and day >= coalesce($6, '-infinity'::date) and calls > 0
                union all
                select day, project, null, model, purpose, calls, failed_calls, prompt_tokens,
                       completion_tokens, total_tokens, cached_tokens
                from llm_usage_project_daily
                where not $3 and day >= coalesce($6, '-infinity'::date) and calls > 0
            ) u
            group by 1, 2, 3, 4, 5
        ) g
        left join model_prices p on p.model = g.model
        group by 1, 2, 3, 4, 5
        order by 1 desc nulls last, 11 desc nulls last, 10 desc, 2, 3, 4, 5
        limit $7
        "#,
        dims.day,
        dims.project,
        dims.mr,
        dims.model,
        dims.purpose,
        since,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Models called since `since` that have no price in `model_prices`.
///
/// # Errors
/// Database errors.
pub async fn unpriced_models(
    pool: &PgPool,
    since: Option<NaiveDate>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        select distinct u.model as "model!" from llm_usage_project_daily u
        where u.calls > 0 and u.day >= coalesce($1, '-infinity'::date)
          and not exists (select from model_prices p where p.model = u.model)
        order by 1
        "#,
        since,
    )
    .fetch_all(pool)
    .await
}

/// One row of `model_prices`, the price table costs are computed with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPrice {
    pub model: String,
    /// USD per million tokens.
    pub input_usd_per_mtok: f64,
    pub cached_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: f64,
    pub source: String,
    pub as_of: NaiveDate,
}

/// The price table, by model.
///
/// # Errors
/// Database errors.
pub async fn prices(pool: &PgPool) -> Result<Vec<ModelPrice>, sqlx::Error> {
    sqlx::query_as!(
        ModelPrice,
        r#"
        select model, input_usd_per_mtok::float8 as "input_usd_per_mtok!",
               cached_usd_per_mtok::float8 as cached_usd_per_mtok,
               output_usd_per_mtok::float8 as "output_usd_per_mtok!", source, as_of
        from model_prices order by model
        "#
    )
    .fetch_all(pool)
    .await
}

/// Today in UTC, the calendar the report's days use (and the daily token budget's).
///
/// # Errors
/// Database errors.
pub async fn today(pool: &PgPool) -> Result<NaiveDate, sqlx::Error> {
    sqlx::query_scalar!(r#"select (now() at time zone 'UTC')::date as "today!""#)
        .fetch_one(pool)
        .await
}

/// Sums rows into one (no key fields set).
pub fn total(rows: &[UsageRow]) -> UsageRow {
    let mut totals = UsageRow::default();
    for row in rows {
        totals.add(row);
    }
    totals
}

/// Runs the report: [`rows`] grouped `by`, their totals and the unpriced models.
///
/// # Errors
/// Database errors.
pub async fn report(
    pool: &PgPool,
    by: GroupBy,
    since: Option<NaiveDate>,
) -> Result<UsageReport, sqlx::Error> {
    let rows = rows(pool, by.into(), since, None).await?;
    let unpriced_models = unpriced_models(pool, since).await?;
    let totals = total(&rows);
    Ok(UsageReport {
        by,
        since,
        rows,
        totals,
        unpriced_models,
    })
}

/// Where `--since` starts the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// On or after this UTC day.
    Date(NaiveDate),
    /// The last this many UTC days, today included (`parse_since` takes 1 to 36,500).
    Days(u32),
}

impl Since {
    /// The first day of the report, counted back from `today` (UTC).
    pub fn first_day(self, today: NaiveDate) -> NaiveDate {
        match self {
            Self::Date(day) => day,
            // `Days(0)` (which `parse_since` refuses) reads as today rather than panicking.
            Self::Days(n) => today - chrono::Days::new(u64::from(n).saturating_sub(1)),
        }
    }
}

/// Parses `--since`: a date, or a number of days followed by `d`.
///
/// # Errors
/// A usage error naming the value and the expected forms.
pub fn parse_since(value: &str) -> Result<Since, UsageError> {
    let value = value.trim();
    let days = value
        .strip_suffix('d')
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| (1..=36_500).contains(&n));
    if let Some(n) = days {
        return Ok(Since::Days(n));
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(Since::Date)
        .map_err(|_| {
            UsageError(format!(
                "--since {value:?} is neither a date nor a number of days: expected YYYY-MM-DD \
                 (e.g. 2026-11-01) or 1d to 36500d (e.g. 30d, the last 30 UTC days)"
            ))
        })
}

/// `reviewq usage`.
///
/// # Errors
/// [`UsageError`] for a bad `--since` (checked before connecting); database errors.
pub async fn run(db: &DbArgs, args: UsageArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let pool = db.pool(2).await?;
    // Counted back from the database's today, the calendar the rollups' days use.
    let since = match since {
        Some(since) => Some(since.first_day(today(&pool).await?)),
        None => None,
    };
    let report = report(&pool, args.by, since).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cost_cell(row: &UsageRow) -> String {
    match row.cost_usd {
        None => "-".to_owned(),
        Some(cost) if row.unpriced_calls > 0 => format!("{cost:.4}*"),
        Some(cost) => format!("{cost:.4} "),
    }
}

/// Prints the report as an aligned table with a totals line and footnotes.
///
/// # Errors
/// Write errors.
pub fn print_table(out: &mut impl Write, report: &UsageReport) -> std::io::Result<()> {
    if report.rows.is_empty() {
        return match report.since {
            Some(since) => writeln!(out, "no LLM calls recorded since {since}"),
            None => writeln!(out, "no LLM calls recorded yet"),
        };
    }
    let heading = match report.by {
        GroupBy::Day => "DAY",
        GroupBy::Project => "PROJECT",
        GroupBy::Mr => "MERGE REQUEST",
        GroupBy::Model => "MODEL",
        GroupBy::Purpose => "PURPOSE",
    };
    let labels: Vec<String> = report.rows.iter().map(UsageRow::label).collect();
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .chain([heading.len(), "TOTAL".len()])
        .max()
        .unwrap_or_default();
    writeln!(
        out,
        "{heading:<width$}  {:>7}  {:>6}  {:>12}  {:>12}  {:>12}  {:>11}",
        "CALLS", "FAILED", "PROMPT", "COMPLETION", "TOTAL TOK", "COST USD "
    )?;
    let rows = labels.iter().zip(&report.rows);
    let totals = ("TOTAL".to_owned(), &report.totals);
    for (label, row) in rows.chain([(&totals.0, totals.1)]) {
        writeln!(
            out,
            "{label:<width$}  {:>7}  {:>6}  {:>12}  {:>12}  {:>12}  {:>11}",
            row.calls,
            row.failed_calls,
            row.prompt_tokens,
            row.completion_tokens,
            row.total_tokens,
            cost_cell(row),
        )?;
    }
    if let Some(since) = report.since {
        writeln!(out, "\nCalls started on or after {since}.")?;
    }
    if !report.unpriced_models.is_empty() {
        writeln!(
            out,
            "\n-: no price; *: the cost leaves out {} call(s) to models without a price in model_prices: {}.\n\
             Set a price to count them (README, \"Audit spend with SQL\").",
            report.totals.unpriced_calls,
            report.unpriced_models.join(", ")
        )?;
    }
    Ok(())
}
