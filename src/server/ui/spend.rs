//! `GET /ui/spend`: tokens and cost per day over the last 30 days, by model and by
//! project, the most expensive merge requests, and the price table. Every number comes
//! from [`crate::spend::report`], the query layer of `reviewq usage`, so the two always agree.

use axum::extract::State;
use chrono::{Days, NaiveDate};
use maud::{Markup, html};

use super::{
    Ui,
    chart::{self, Series},
    layout::{self, Nav},
};
use crate::{
    server::ApiError,
    spend::report::{self as usage, Dimensions, UsageRow},
};

/// Days in the charts, today included.
pub const DAYS: u64 = 30;

/// Projects drawn separately; the rest are summed as "other projects".
const TOP_PROJECTS: usize = 7;

/// Merge requests in the top list.
const TOP_MRS: i64 = 10;

/// The handler.
///
/// # Errors
/// Database errors.
pub(crate) async fn page(State(ui): State<Ui>) -> Result<Markup, ApiError> {
    let pool = &ui.app.pool;
    let today = usage::today(pool).await?;
    let since = today - Days::new(DAYS - 1);
    let by = |day, project, mr, model| Dimensions {
        day,
        project,
        mr,
        model,
        purpose: false,
    };
    let (by_model, by_project, top_mrs, prices, unpriced) = tokio::try_join!(
        usage::rows(pool, by(true, false, false, true), Some(since), None),
        usage::rows(pool, by(true, true, false, false), Some(since), None),
        usage::rows(
            pool,
            by(false, false, true, false),
            Some(since),
            Some(TOP_MRS)
        ),
        usage::prices(pool),
        usage::unpriced_models(pool, Some(since)),
    )?;
    let days: Vec<NaiveDate> = since.iter_days().take_while(|d| *d <= today).collect();
    let totals = usage::total(&by_model);
    #[allow(clippy::cast_precision_loss)]
    let tokens_of = |r: &UsageRow| r.total_tokens as f64;
    let model_series = series(&days, &by_model, |r| r.model.clone(), tokens_of, usize::MAX);
    let project_series = series(
        &days,
        &by_project,
        |r| r.project.clone(),
        |r| r.cost_usd.unwrap_or(0.0),
        TOP_PROJECTS,
    );
    #[allow(clippy::cast_possible_truncation)]
    let token_label = |v: f64| layout::tokens(v.round() as i64);
    let usd_label = |v: f64| layout::usd(Some(v));
    let body = html! {
        section.cards {
            div.card { h3 { "Tokens, last " (DAYS) " days" } p.big #total-tokens { (layout::tokens(totals.total_tokens)) } }
            div.card { h3 { "Cost" } p.big #total-cost { (layout::usd(totals.cost_usd)) } }
            div.card { h3 { "LLM calls" } p.big { (layout::tokens(totals.calls)) }
                p { (layout::tokens(totals.failed_calls)) " failed" } }
        }
        @if !unpriced.is_empty() {
            p.alert { "No price for " (unpriced.join(", ")) ": their " (totals.unpriced_calls)
                " calls count in tokens, not in cost. Set a price in model_prices." }
        }
        h2 { "Tokens per day by model" }
        div #chart-models { (chart::stacked_bars(&days, &model_series, &token_label)) }
        h2 { "Cost per day by project" }
        div #chart-projects { (chart::stacked_bars(&days, &project_series, &usd_label)) }
        h2 { "Most expensive merge requests" }
        table #top-mrs {
            thead { tr { th { "merge request" } th { "calls" } th { "tokens" } th { "cost" } } }
            tbody { @for r in &top_mrs {
                @let project = r.project.as_deref().unwrap_or("");
                @let iid = r.mr_iid.unwrap_or_default();
                tr {
                    td { a href={ "/ui/reviews/mr?project=" (encode(project)) "&iid=" (iid) } { (project) "!" (iid) } }
                    td.num { (layout::tokens(r.calls)) }
                    td.num { (layout::tokens(r.total_tokens)) }
                    td.num { (layout::usd(r.cost_usd)) }
                }
            } }
        }
        h2 { "Prices in use (USD per million tokens)" }
        table #prices {
            thead { tr { th { "model" } th { "input" } th { "cached input" } th { "output" } th { "source" } th { "as of" } } }
            tbody { @for p in &prices {
                tr { td { (p.model) } td.num { (p.input_usd_per_mtok) }
                    td.num { (p.cached_usd_per_mtok.map_or("–".to_owned(), |c| c.to_string())) }
                    td.num { (p.output_usd_per_mtok) } td { (p.source) } td { (p.as_of) } }
            } }
        }
        p.note { "The same numbers as " code { "reviewq usage --since " (since) } "." }
    };
    Ok(layout::page("Spend", Nav::Spend, &body))
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Day-by-day series from rows grouped by day and one key: the `keep` largest keys (by
/// their sum) each get a series, the others are summed into one.
fn series(
    days: &[NaiveDate],
    rows: &[UsageRow],
    key: impl Fn(&UsageRow) -> Option<String>,
    value: impl Fn(&UsageRow) -> f64,
    keep: usize,
) -> Vec<Series> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for r in rows {
        let k = key(r).unwrap_or_default();
        match sums.iter_mut().find(|(name, _)| *name == k) {
            Some((_, sum)) => *sum += value(r),
            None => sums.push((k, value(r))),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let other = (sums.len() > keep).then(|| "other".to_owned());
    let names: Vec<String> = sums.iter().take(keep).map(|(n, _)| n.clone()).collect();
    let mut out: Vec<Series> = names
        .iter()
        .chain(other.as_ref())
        .map(|name| Series {
            name: name.clone(),
            values: vec![0.0; days.len()],
        })
        .collect();
    for r in rows {
        let Some(d) = r.day.and_then(|day| days.iter().position(|x| *x == day)) else {
            continue;
        };
        let k = key(r).unwrap_or_default();
        let i = names.iter().position(|n| *n == k).unwrap_or(names.len());
        if let Some(s) = out.get_mut(i) {
            s.values[d] += value(r);
        }
    }
    out.retain(|s| s.values.iter().any(|v| *v > 0.0));
    out
}
