//! `GET /ui/reviews`: the latest review rounds; `GET /ui/reviews/mr?project=&iid=`: one
//! merge request's rounds (full or incremental since which head), their findings by
//! severity and state, tokens and cost per round, and a link to the living summary note.
//!
//! The queries read `reviews`, `outbox`, `mr_summaries` and the ledger's cost view, and
//! live here, beside the only pages that show them; costs come from `llm_call_costs`, the
//! view `reviewq usage` reads too, so the price arithmetic exists once.

use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use sqlx::PgPool;

use super::{
    Ui,
    layout::{self, Nav},
};
use crate::{queue::JobId, review::placement::CommentState, server::ApiError};

/// Rounds on the list page.
const LIST_SIZE: i64 = 50;

/// The outbox states a finding can be in, in the order the table shows them (every state,
/// so a finding in a state added later is never left out of the counts).
const FINDING_STATES: [CommentState; 10] = [
    CommentState::Posted,
    CommentState::Open,
    CommentState::Dismissed,
    CommentState::Downgraded,
    CommentState::Pending,
    CommentState::Drafted,
    CommentState::BelowThreshold,
    CommentState::OverLimit,
    CommentState::CodeQuality,
    CommentState::DryRun,
];

/// Severities, most severe first.
const SEVERITIES: [&str; 4] = ["critical", "major", "minor", "info"];

/// One review round.
#[derive(Debug, Clone)]
pub(super) struct Round {
    pub id: i64,
    pub job_id: i64,
    pub project: String,
    pub mr_iid: i64,
    pub review_type: String,
    pub dry_run: bool,
    pub state: String,
    pub scope: String,
    pub since_sha: Option<String>,
    pub head_sha: String,
    pub chunk_count: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Findings of one round in one severity and state.
#[derive(Debug, Clone)]
struct FindingCount {
    review_id: i64,
    severity: String,
    state: String,
    n: i64,
}

/// Tokens and cost of one round.
#[derive(Debug, Clone)]
struct RoundSpend {
    review_id: i64,
    calls: i64,
    total_tokens: i64,
    cost_usd: Option<f64>,
}

/// The review a job belongs to: the review job's own, or a chunk's (by its payload).
///
/// # Errors
/// Database errors.
pub(super) async fn review_of_job(
    pool: &PgPool,
    job: JobId,
    review_id: Option<i64>,
) -> Result<Option<Round>, sqlx::Error> {
    sqlx::query_as!(
        Round,
        r#"select id, job_id, project, mr_iid, review_type, dry_run, state, scope, since_sha,
                  head_sha, chunk_count, created_at, finished_at
           from reviews where job_id = $1 or id = $2 limit 1"#,
        job.get(),
        review_id,
    )
    .fetch_optional(pool)
    .await
}

async fn findings(pool: &PgPool, ids: &[i64]) -> Result<Vec<FindingCount>, sqlx::Error> {
    sqlx::query_as!(
        FindingCount,
        r#"select review_id, coalesce(severity, 'info') as "severity!", state, count(*) as "n!"
           from outbox where review_id = any($1) and kind = 'inline'
           group by 1, 2, 3"#,
        ids,
    )
    .fetch_all(pool)
    .await
}

async fn spend(pool: &PgPool, ids: &[i64]) -> Result<Vec<RoundSpend>, sqlx::Error> {
    sqlx::query_as!(
        RoundSpend,
        r#"select review_id as "review_id!", count(*) as "calls!",
                  coalesce(sum(total_tokens), 0)::int8 as "total_tokens!",
                  sum(cost_usd)::float8 as cost_usd
           from llm_call_costs where review_id = any($1) group by 1"#,
        ids,
    )
    .fetch_all(pool)
    .await
}

/// The list's query string.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    #[serde(default)]
    project: String,
}

/// The handler of the list.
///
/// # Errors
/// Database errors.
pub(crate) async fn page(
    State(ui): State<Ui>,
    Query(params): Query<ListParams>,
) -> Result<Markup, ApiError> {
    let pool = &ui.app.pool;
    let project = Some(params.project.trim()).filter(|p| !p.is_empty());
    let rounds = sqlx::query_as!(
        Round,
        r#"select id, job_id, project, mr_iid, review_type, dry_run, state, scope, since_sha,
                  head_sha, chunk_count, created_at, finished_at
           from reviews where ($1::text is null or project = $1)
           order by id desc limit $2"#,
        project,
        LIST_SIZE,
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rounds.iter().map(|r| r.id).collect();
    let (counts, spent) = tokio::try_join!(findings(pool, &ids), spend(pool, &ids))?;
    let body = html! {
        form.filters method="get" action="/ui/reviews" {
            label { "project " input name="project" value=(params.project) placeholder="group/project"; }
            button type="submit" { "Filter" }
        }
        table #rounds {
            thead { tr { th { "review" } th { "merge request" } th { "type" } th { "scope" } th { "state" }
                th { "findings" } th { "tokens" } th { "cost" } th { "created" } } }
            tbody { @for r in &rounds {
                @let s = spent.iter().find(|s| s.review_id == r.id);
                tr {
                    td.num { a href={ "/ui/jobs/" (r.job_id) } { (r.id) } }
                    td { a href=(mr_link(r)) { (r.project) "!" (r.mr_iid) } }
                    td { (r.review_type) @if r.dry_run { " (dry run)" } }
                    td { (r.scope) }
                    td { (r.state) }
                    td.num { (counts.iter().filter(|c| c.review_id == r.id).map(|c| c.n).sum::<i64>()) }
                    td.num { (layout::tokens(s.map_or(0, |s| s.total_tokens))) }
                    td.num { (layout::usd(s.and_then(|s| s.cost_usd))) }
                    td { (layout::time(r.created_at)) }
                }
            } }
        }
    };
    Ok(layout::page("Reviews", Nav::Reviews, &body))
}

fn mr_link(r: &Round) -> String {
    let project: String = url::form_urlencoded::byte_serialize(r.project.as_bytes()).collect();
    format!("/ui/reviews/mr?project={project}&iid={}", r.mr_iid)
}

/// The MR page's query string.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MrParams {
    #[serde(default)]
    project: String,
    #[serde(default)]
    iid: String,
}

/// The handler of one merge request's rounds.
///
/// # Errors
/// 400 naming a bad project or IID; database errors.
pub(crate) async fn mr_page(
    State(ui): State<Ui>,
    Query(params): Query<MrParams>,
) -> Result<Markup, ApiError> {
    let project = params.project.trim();
    if project.is_empty() {
        return Err(ApiError::BadRequest(
            "project is missing: expected ?project=group/project&iid=N".into(),
        ));
    }
    let iid = params
        .iid
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "iid={:?} is not valid: expected a merge request IID, a positive integer",
                params.iid
            ))
        })?;
    let pool = &ui.app.pool;
    let rounds = sqlx::query_as!(
        Round,
        r#"select id, job_id, project, mr_iid, review_type, dry_run, state, scope, since_sha,
                  head_sha, chunk_count, created_at, finished_at
           from reviews where project = $1 and mr_iid = $2 order by id"#,
        project,
        iid,
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rounds.iter().map(|r| r.id).collect();
    let summaries = sqlx::query!(
        "select review_type, gitlab_note_id from mr_summaries where project = $1 and mr_iid = $2 order by 1",
        project,
        iid,
    )
    .fetch_all(pool);
    let (counts, spent, summaries) =
        tokio::try_join!(findings(pool, &ids), spend(pool, &ids), summaries)?;
    let mr_url = ui.config.mr_url(project, iid);
    let body = html! {
        p { "On GitLab: " a.external href=(mr_url) { (project) "!" (iid) } }
        @for s in &summaries {
            p { "Living summary note (" (s.review_type) "): "
                a.external.summary-note href={ (mr_url) "#note_" (s.gitlab_note_id) } { "note " (s.gitlab_note_id) } }
        }
        @if rounds.is_empty() { p { "No review of this merge request yet." } }
        @for (n, r) in rounds.iter().enumerate() {
            (round(n + 1, r, &counts, spent.iter().find(|s| s.review_id == r.id)))
        }
    };
    Ok(layout::page(
        &format!("Reviews of {project}!{iid}"),
        Nav::Reviews,
        &body,
    ))
}

fn round(n: usize, r: &Round, counts: &[FindingCount], spent: Option<&RoundSpend>) -> Markup {
    let mine: Vec<&FindingCount> = counts.iter().filter(|c| c.review_id == r.id).collect();
    let states: Vec<&str> = FINDING_STATES
        .into_iter()
        .map(CommentState::as_str)
        .filter(|s| mine.iter().any(|c| c.state == *s))
        .collect();
    let cell = |sev: &str, state: &str| {
        mine.iter()
            .filter(|c| c.severity == sev && c.state == state)
            .map(|c| c.n)
            .sum::<i64>()
    };
    html! {
        section.round data-review=(r.id) {
            h2 { "Round " (n) ": " (r.review_type) ", " (r.scope)
                @if let Some(since) = &r.since_sha { " since " code { (since.get(..12).unwrap_or(since)) } } }
            p { "head " code { (r.head_sha.get(..12).unwrap_or(&r.head_sha)) } ", " (r.chunk_count) " chunks, "
                (r.state) @if r.dry_run { " (dry run)" } ", started " (layout::time(r.created_at))
                ", finished " (layout::maybe_time(r.finished_at)) ", job " a href={ "/ui/jobs/" (r.job_id) } { (r.job_id) } }
            p.spend { (spent.map_or(0, |s| s.calls)) " LLM calls, "
                (layout::tokens(spent.map_or(0, |s| s.total_tokens))) " tokens, "
                (layout::usd(spent.and_then(|s| s.cost_usd))) }
            @if mine.is_empty() { p { "No inline finding." } } @else {
                table.findings {
                    thead { tr { th { "severity" } @for s in &states { th { (s) } } } }
                    tbody { @for sev in SEVERITIES {
                        tr { td { (sev) } @for s in &states { td.num { (cell(sev, s)) } } }
                    } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_table_has_a_column_for_every_outbox_state() {
        for state in CommentState::ALL {
            assert!(FINDING_STATES.contains(&state), "{state} has no column");
        }
    }
}
