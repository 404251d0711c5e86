//! Spend control: daily token budgets, and the fleet-wide pause of LLM work when the
//! provider says the account is out of balance or over its quota.
//!
//! Both are decided before every LLM call ([`admit`]), from the ledger (`llm_calls`) and two
//! small tables (`project_budgets`, `llm_pause`), so they hold across every worker sharing
//! the database. A call that may not start does not fail its job: the job waits
//! ([`crate::queue::Queue::wait`]) with a reason that `status` shows, and is woken when the
//! condition ends. Knows nothing of GitLab or HTTP.
//!
//! [`ledger`] writes the `llm_calls` audit rows; [`report`] reads them back (the `usage`
//! command and the console's spend page).

pub mod ledger;
pub mod report;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, postgres::types::PgInterval};

use crate::queue::{Queue, Result, Waiting};

/// The wait key of jobs held back by the pause; a successful probe wakes them.
pub const PAUSE_KEY: &str = "llm-paused";

/// The wait key of jobs held back by a spent budget; raising a budget wakes them.
pub const BUDGET_KEY: &str = "llm-budget";

/// How a fleet spends: set per worker from its settings (every worker of a fleet should
/// use the same values; the budget itself is counted fleet-wide from the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendPolicy {
    /// Tokens the whole fleet may spend per UTC day (`REVIEWQ_DAILY_TOKEN_BUDGET`);
    /// `None`: no fleet-wide budget (per-project budgets still apply).
    pub daily_tokens: Option<u64>,
    /// Time between probe calls while paused, when the provider gave no reset time. Slow,
    /// because each probe is a real request to an account that just said it cannot pay.
    pub probe_interval: Duration,
    /// How often a job held back by a budget looks again. A budget raised with
    /// `reviewq budget` wakes them at once; this catches the other changes (a worker
    /// restarted with a higher `REVIEWQ_DAILY_TOKEN_BUDGET`).
    pub budget_recheck: Duration,
}

impl Default for SpendPolicy {
    fn default() -> Self {
        Self {
            daily_tokens: None,
            probe_interval: Duration::from_secs(300),
            budget_recheck: Duration::from_secs(300),
        }
    }
}

/// Whether an LLM call may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Go,
    /// Yes, as the one probe of a pause: report how it went with [`resume`] or [`pause`].
    Probe,
    /// No: wait until `until` (then ask again), for the reason given.
    Wait {
        /// When to ask again.
        until: DateTime<Utc>,
        /// Why, for `status`.
        waiting: Waiting,
    },
}

/// The pause as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// What the provider said.
    pub reason: String,
    /// The provider's code.
    pub code: Option<String>,
    /// Since when.
    pub since: DateTime<Utc>,
    /// When the next probe may start.
    pub probe_at: DateTime<Utc>,
    /// Probes made so far.
    pub probes: i32,
}

impl Pause {
    /// What a job held back by this pause shows.
    pub fn waiting(&self) -> Waiting {
        Waiting {
            key: PAUSE_KEY.to_owned(),
            reason: format!(
                "LLM work is paused fleet-wide since {}: {}; the next probe call is at {} and work resumes by itself when it succeeds",
                self.since.format("%Y-%m-%d %H:%M:%S UTC"),
                self.reason,
                self.probe_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ),
            since: self.since,
        }
    }
}

fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

/// Decides whether a call for `project` may start now: not while paused (except the one
/// due probe, which this caller then takes), not when the fleet's or the project's budget
/// for today is spent. Calls already in flight may still finish over a budget; at most
/// `GLM_CONCURRENT_REQUESTS` calls can overshoot it.
///
/// # Errors
/// Database errors.
pub async fn admit(pool: &PgPool, policy: &SpendPolicy, project: &str) -> Result<Admission> {
    // One round trip: this runs before every LLM call. Today's spend is summed only for a
    // budget that is set (a `case` evaluates its subquery only when taken).
    let state = sqlx::query!(
        r#"
        select p.reason as "reason?", p.code, p.since as "since?", p.probe_at as "probe_at?",
            p.probes as "probes?", b.daily_tokens as "project_budget?",
            date_trunc('day', now(), 'UTC') as "day_start!",
            case when $2 then (select coalesce(sum(total_tokens), 0)::int8
                               from llm_usage_project_daily
                               where day = (now() at time zone 'UTC')::date) end
                as "fleet_spent?",
            case when b.daily_tokens is not null then
                (select coalesce(sum(total_tokens), 0)::int8 from llm_usage_project_daily
                 where day = (now() at time zone 'UTC')::date and project = $1) end
                as "project_spent?"
        from (select 1) as one
        left join llm_pause p on true
        left join project_budgets b on b.project = $1
        "#,
        project,
        policy.daily_tokens.is_some(),
    )
    .fetch_one(pool)
    .await?;
    if let (Some(reason), Some(since), Some(probe_at), Some(probes)) =
        (state.reason, state.since, state.probe_at, state.probes)
    {
        let pause = Pause {
            reason,
            code: state.code,
            since,
            probe_at,
            probes,
        };
        return take_probe(pool, policy, pause).await;
    }
    let day_start = state.day_start;
    let next_day = day_start + chrono::Duration::days(1);
    let recheck = Utc::now()
        + chrono::Duration::from_std(policy.budget_recheck).unwrap_or(chrono::Duration::MAX);
    let until = recheck.min(next_day);
    if let (Some(budget), Some(spent)) = (policy.daily_tokens, state.fleet_spent)
        && spent >= i64::try_from(budget).unwrap_or(i64::MAX)
    {
        return Ok(Admission::Wait {
            until,
            waiting: Waiting {
                key: BUDGET_KEY.to_owned(),
                reason: format!(
                    "the fleet's daily token budget (REVIEWQ_DAILY_TOKEN_BUDGET={budget}) is spent: {spent} tokens used today (UTC); LLM work resumes at 00:00 UTC or when the budget is raised"
                ),
                since: day_start,
            },
        });
    }
    if let (Some(budget), Some(spent)) = (state.project_budget, state.project_spent)
        && spent >= budget
    {
        return Ok(Admission::Wait {
            until,
            waiting: Waiting {
                key: BUDGET_KEY.to_owned(),
                reason: format!(
                    "project {project}'s daily token budget ({budget}) is spent: {spent} tokens used today (UTC); its reviews resume at 00:00 UTC or when `reviewq budget set` raises it"
                ),
                since: day_start,
            },
        });
    }
    Ok(Admission::Go)
}

/// While paused: takes the probe if it is due and nobody took it (moving `probe_at` on
/// so that exactly one caller wins), otherwise waits for the next probe.
async fn take_probe(pool: &PgPool, policy: &SpendPolicy, pause: Pause) -> Result<Admission> {
    if pause.probe_at <= Utc::now() {
        let taken = sqlx::query_scalar!(
            r#"update llm_pause set probe_at = now() + $1::interval, probes = probes + 1
               where probe_at <= now() returning probe_at"#,
            interval(policy.probe_interval)
        )
        .fetch_optional(pool)
        .await?;
        if taken.is_some() {
            tracing::info!(since = %pause.since, probes = pause.probes + 1, "LLM work is paused; this call is the probe");
            return Ok(Admission::Probe);
        }
    }
    // Ask again just after the next probe: by then it has succeeded (and woken us) or
    // pushed the probe time on.
    let current = current_pause(pool).await?.unwrap_or(pause);
    Ok(Admission::Wait {
        until: current.probe_at + chrono::Duration::seconds(1),
        waiting: current.waiting(),
    })
}

/// Tokens of every call started on the UTC day `day_start` begins, from
/// `llm_usage_project_daily`.
async fn fleet_tokens_on(pool: &PgPool, day_start: DateTime<Utc>) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"select coalesce(sum(total_tokens), 0)::int8 as "n!" from llm_usage_project_daily
           where day = ($1::timestamptz at time zone 'UTC')::date"#,
        day_start,
    )
    .fetch_one(pool)
    .await?)
}

/// The pause, if LLM work is paused.
///
/// # Errors
/// Database errors.
pub async fn current_pause<'e, E: PgExecutor<'e>>(exec: E) -> Result<Option<Pause>> {
    Ok(sqlx::query_as!(
        Pause,
        "select reason, code, since, probe_at, probes from llm_pause"
    )
    .fetch_optional(exec)
    .await?)
}

/// Pauses LLM work fleet-wide (or keeps it paused, with `since` unchanged) after the
/// provider said the account cannot pay: no call starts until the probe at
/// `now + probe_after` succeeds.
///
/// # Errors
/// Database errors.
pub async fn pause<'e, E: PgExecutor<'e>>(
    exec: E,
    reason: &str,
    code: Option<&str>,
    probe_after: Duration,
) -> Result<Pause> {
    Ok(sqlx::query_as!(
        Pause,
        r#"
        insert into llm_pause (reason, code, probe_at) values ($1, $2, now() + $3::interval)
        on conflict (singleton) do update
            set reason = excluded.reason, code = excluded.code, probe_at = excluded.probe_at
        returning reason, code, since, probe_at, probes
        "#,
        reason,
        code,
        interval(probe_after)
    )
    .fetch_one(exec)
    .await?)
}

/// Ends the pause after a successful probe and wakes every job it held back. Returns
/// whether there was a pause to end.
///
/// # Errors
/// Database errors.
pub async fn resume(pool: &PgPool) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let ended = sqlx::query!("delete from llm_pause")
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    let woken = Queue::wake(&mut *tx, PAUSE_KEY).await?;
    tx.commit().await?;
    if ended {
        tracing::info!(woken, "the probe call succeeded: LLM work resumes");
    }
    Ok(ended)
}

/// Sets (or with `None` removes) a project's daily token budget and wakes the jobs held
/// back by a budget so that they look again.
///
/// # Errors
/// Database errors.
pub async fn set_project_budget(
    pool: &PgPool,
    project: &str,
    daily_tokens: Option<u64>,
) -> Result<u64> {
    let mut tx = pool.begin().await?;
    match daily_tokens {
        Some(tokens) => {
            sqlx::query!(
                r#"insert into project_budgets (project, daily_tokens) values ($1, $2)
                   on conflict (project) do update
                       set daily_tokens = excluded.daily_tokens, updated_at = now()"#,
                project,
                i64::try_from(tokens).unwrap_or(i64::MAX)
            )
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query!("delete from project_budgets where project = $1", project)
                .execute(&mut *tx)
                .await?;
        }
    }
    let woken = Queue::wake(&mut *tx, BUDGET_KEY).await?;
    tx.commit().await?;
    Ok(woken)
}

/// One project's budget and today's spend, for `reviewq budget`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BudgetRow {
    /// The project, or `*` for the fleet-wide budget.
    pub project: String,
    /// Tokens per UTC day; `None`: no budget.
    pub daily_tokens: Option<i64>,
    /// Tokens used today (UTC).
    pub used_today: i64,
}

/// The fleet-wide budget (from `policy`) and every project budget, with today's spend.
///
/// # Errors
/// Database errors.
pub async fn budgets(pool: &PgPool, policy: &SpendPolicy) -> Result<Vec<BudgetRow>> {
    let day_start: DateTime<Utc> =
        sqlx::query_scalar!(r#"select date_trunc('day', now(), 'UTC') as "d!""#)
            .fetch_one(pool)
            .await?;
    let mut rows = vec![BudgetRow {
        project: "*".to_owned(),
        daily_tokens: policy
            .daily_tokens
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        used_today: fleet_tokens_on(pool, day_start).await?,
    }];
    let projects = sqlx::query!(
        r#"
        select b.project, b.daily_tokens,
            (select coalesce(sum(total_tokens), 0)::int8 from llm_usage_project_daily u
             where u.project = b.project and u.day = ($1::timestamptz at time zone 'UTC')::date)
            as "used!"
        from project_budgets b order by b.project
        "#,
        day_start
    )
    .fetch_all(pool)
    .await?;
    rows.extend(projects.into_iter().map(|r| BudgetRow {
        project: r.project,
        daily_tokens: Some(r.daily_tokens),
        used_today: r.used,
    }));
    Ok(rows)
}
