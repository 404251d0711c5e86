//! `GET /ui`: is the fleet healthy? Jobs by kind and state, queue latency, workers alive,
//! LLM slots in use, the LLM pause and today's budgets.

use axum::extract::State;
use maud::{Markup, html};

use super::{
    Ui, chart,
    layout::{self, Nav},
};
use crate::{
    queue::{JobState, Queue},
    server::ApiError,
    spend,
};

/// The window of the latency figures, in seconds.
const LATENCY_WINDOW_SECS: f64 = 300.0;

const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

/// The handler.
///
/// # Errors
/// Database errors (an opaque 500).
pub(crate) async fn page(State(ui): State<Ui>) -> Result<Markup, ApiError> {
    let queue = Queue::new(ui.app.pool.clone());
    let pool = &ui.app.pool;
    let (counts, latency, workers, slots, pause, budgets) = tokio::try_join!(
        queue.state_counts(),
        queue.latency(LATENCY_WINDOW_SECS),
        queue.live_workers(),
        queue.slot_use(),
        spend::current_pause(pool),
        spend::budgets(pool, &ui.config.spend),
    )?;
    let mut kinds: Vec<&str> = counts.iter().map(|c| c.kind.as_str()).collect();
    kinds.dedup();
    let count = |kind: &str, state: JobState| {
        counts
            .iter()
            .find(|c| c.kind == kind && c.state == state)
            .map_or(0, |c| c.jobs)
    };
    let body = html! {
        section.cards {
            div.card { h3 { "Runnable now" } p.big { (latency.runnable) }
                p { "oldest waited " (layout::seconds(latency.oldest_runnable_secs)) } }
            div.card { h3 { "Queue latency (5 min)" }
                p.big { (latency.p50_secs.map_or("–".to_owned(), layout::seconds)) }
                p { "p95 " (latency.p95_secs.map_or("–".to_owned(), layout::seconds))
                    ", " (latency.started) " started" } }
            div.card { h3 { "Workers alive" } p.big #workers-alive { (workers.len()) }
                p { (workers.iter().map(|w| w.running).sum::<i64>()) " jobs running" } }
            @for s in &slots {
                div.card { h3 { "Fleet slots: " (s.resource) } p.big { (s.in_use) " / " (s.capacity) }
                    p { "in use" } }
            }
        }
        @match &pause {
            Some(p) => section.pause.alert #llm-pause {
                h2 { "LLM work is paused" }
                p { (p.reason) @if let Some(code) = &p.code { " (code " (code) ")" } }
                p { "since " (layout::time(p.since)) ", next probe " (layout::time(p.probe_at))
                    " (" (layout::ago(p.probe_at)) "), " (p.probes) " probes so far" }
            },
            None => section.pause #llm-pause { p { "LLM work is not paused." } },
        }
        h2 { "Jobs by kind and state" }
        table #job-counts {
            thead { tr { th { "kind" } @for s in STATES { th { (s.as_str()) } } } }
            tbody {
                @for kind in &kinds {
                    tr {
                        td { (kind) }
                        @for s in STATES {
                            td.num { a href={ "/ui/jobs?kind=" (kind) "&state=" (s.as_str()) } { (count(kind, s)) } }
                        }
                    }
                }
            }
        }
        h2 { "Today's token budgets (UTC)" }
        table #budgets {
            thead { tr { th { "project" } th { "used today" } th { "budget" } th {} } }
            tbody {
                @for b in &budgets {
                    tr {
                        td { @if b.project == "*" { "whole fleet" } @else { (b.project) } }
                        td.num { (layout::tokens(b.used_today)) }
                        td.num { (b.daily_tokens.map_or("none".to_owned(), layout::tokens)) }
                        td { (chart::gauge(b.used_today, b.daily_tokens)) }
                    }
                }
            }
        }
        @if !workers.is_empty() {
            h2 { "Workers holding leases" }
            table {
                thead { tr { th { "worker" } th { "running" } th { "lease until" } } }
                tbody { @for w in &workers {
                    tr { td.mono { (w.worker_id) } td.num { (w.running) } td { (layout::time(w.lease_expires_at)) } }
                } }
            }
        }
    };
    Ok(layout::page("Overview", Nav::Overview, &body))
}
