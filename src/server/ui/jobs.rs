//! `GET /ui/jobs`: jobs filtered by state, kind, project and MR, newest first, with
//! retry/cancel of the selected ones; `POST /ui/jobs/action`: those actions (also used by
//! the job page).
//!
//! An action is a form post carrying the CSRF token. Without `confirmed=yes` it answers a
//! confirmation page (the script asks in a dialog instead and adds the field); confirmed,
//! it calls the queue's own [`Queue::retry`] / [`Queue::cancel`] per job, logs each with
//! who did it, and redirects back (or lists what could not be done).

use std::str::FromStr;

use axum::{
    Extension,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Ui,
    auth::{Caller, Role},
    layout::{self, Nav},
};
use crate::{
    jobs::review::ReviewArgs,
    queue::{Error as QueueError, JobFilter, JobId, JobRow, JobState, Queue},
    server::ApiError,
};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// The list's query string; every field may be empty.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    mr: String,
    #[serde(default)]
    before: String,
}

fn bad(name: &str, value: &str, expected: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{name}={value:?} is not valid: expected {expected}"
    ))
}

impl ListParams {
    /// The queue filter, or a message naming the bad value.
    fn filter(&self) -> Result<JobFilter, ApiError> {
        let state = match self.state.trim() {
            "" => None,
            s => Some(serde_json::from_value::<JobState>(s.into()).map_err(|_| {
                bad(
                    "state",
                    s,
                    "queued, running, succeeded, failed or cancelled",
                )
            })?),
        };
        let iid = match self.mr.trim() {
            "" => None,
            m => Some(
                m.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("mr", m, "a merge request IID, a positive integer"))?,
            ),
        };
        let before = match self.before.trim() {
            "" => None,
            b => Some(JobId::from_str(b).map_err(|_| bad("before", b, "a job id"))?),
        };
        let project = Some(self.project.trim()).filter(|p| !p.is_empty());
        let kind = Some(self.kind.trim()).filter(|k| !k.is_empty());
        Ok(JobFilter {
            state,
            kind: kind.map(str::to_owned),
            payload: ReviewArgs::payload_filter(project, iid),
            top_level: false,
            before,
            limit: PAGE_SIZE,
        })
    }
}

/// The handler of the list.
///
/// # Errors
/// 400 naming a bad filter value; database errors.
pub(crate) async fn page(
    State(ui): State<Ui>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Markup, ApiError> {
    let filter = params.filter()?;
    let rows = Queue::new(ui.app.pool.clone()).list(&filter).await?;
    let operator = caller.role == Role::Operator;
    let states = ["", "queued", "running", "succeeded", "failed", "cancelled"];
    let next = (rows.len() == usize::try_from(PAGE_SIZE).unwrap_or(usize::MAX))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let body = html! {
        form.filters method="get" action="/ui/jobs" {
            label { "state " select name="state" {
                @for s in states { option value=(s) selected[params.state == s] { @if s.is_empty() { "any" } @else { (s) } } }
            } }
            label { "kind " input name="kind" value=(params.kind) placeholder="review"; }
            label { "project " input name="project" value=(params.project) placeholder="group/project"; }
            label { "MR " input name="mr" value=(params.mr) size="6"; }
            button type="submit" { "Filter" }
        }
        form #jobs-form method="post" action="/ui/jobs/action" data-confirm="the selected jobs" {
            @if operator {
                input type="hidden" name="csrf" value=(ui.config.credentials.csrf_token());
                input type="hidden" name="back" value="/ui/jobs";
                div.actions {
                    button type="submit" name="action" value="retry" { "Retry selected" }
                    button type="submit" name="action" value="cancel" { "Cancel selected" }
                }
            }
            (table(&rows, operator))
        }
        @if let Some(next) = next {
            p { a #next-page href={ "/ui/jobs?state=" (params.state) "&kind=" (params.kind)
                "&project=" (params.project) "&mr=" (params.mr) "&before=" (next) } { "Older jobs →" } }
        }
    };
    Ok(layout::page("Jobs", Nav::Jobs, &body))
}

/// A table of jobs, with a selection box per row for an operator.
pub(super) fn table(rows: &[JobRow], selectable: bool) -> Markup {
    html! {
        table.jobs {
            thead { tr {
                @if selectable { th { input type="checkbox" data-select-all; } }
                th { "id" } th { "kind" } th { "state" } th { "merge request" } th { "attempts" }
                th { "created" } th { "last error" }
            } }
            tbody {
                @for j in rows {
                    tr data-job=(j.id) {
                        @if selectable { td { input type="checkbox" name="id" value=(j.id); } }
                        td { a href={ "/ui/jobs/" (j.id) } { (j.id) } }
                        td { (j.kind) }
                        td { (layout::state_badge(j.state)) @if j.waiting.is_some() { " waiting" } }
                        td { (j.payload.get("mr").and_then(|m| m.as_str()).unwrap_or("")) }
                        td.num { (j.failed_attempts) "/" (j.max_attempts) }
                        td { (layout::time(j.created_at)) }
                        td.error { (j.last_error.as_deref().map(|e| truncate(e, 120)).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What an operator can do to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Cancel,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
        }
    }
}

/// A parsed action form.
#[derive(Debug)]
struct ActionForm {
    csrf: String,
    action: Option<Action>,
    ids: Vec<JobId>,
    confirmed: bool,
    back: String,
}

fn parse_form(body: &str) -> Result<ActionForm, ApiError> {
    let mut form = ActionForm {
        csrf: String::new(),
        action: None,
        ids: Vec::new(),
        confirmed: false,
        back: "/ui/jobs".to_owned(),
    };
    for (key, value) in url::form_urlencoded::parse(body.as_bytes()) {
        match &*key {
            "csrf" => form.csrf = value.into_owned(),
            "action" => {
                form.action = Some(match &*value {
                    "retry" => Action::Retry,
                    "cancel" => Action::Cancel,
                    other => return Err(bad("action", other, "retry or cancel")),
                });
            }
            "id" => form
                .ids
                .push(JobId::from_str(&value).map_err(|e| ApiError::BadRequest(e.to_string()))?),
            "confirmed" => form.confirmed = value == "yes",
            // Only a path of the console: never an open redirect.
            "back" if value.starts_with("/ui") && !value.starts_with("/ui//") => {
                form.back = value.into_owned();
            }
            _ => {}
        }
    }
    Ok(form)
}

/// The handler of `POST /ui/jobs/action`.
///
/// # Errors
/// 403 for a read-only login or a missing/wrong CSRF token; 400 for a malformed form.
pub(crate) async fn action(
    State(ui): State<Ui>,
    Extension(caller): Extension<Caller>,
    body: String,
) -> Result<Response, ApiError> {
    if caller.role != Role::Operator {
        return Ok(forbidden(
            "this login is read-only: it can look but not act",
        ));
    }
    let form = parse_form(&body)?;
    if !ui.config.credentials.csrf_ok(&form.csrf) {
        return Ok(forbidden(
            "the form's CSRF token is missing or wrong: reload the page and try again",
        ));
    }
    let Some(action) = form.action else {
        return Err(bad("action", "", "retry or cancel"));
    };
    if form.ids.is_empty() {
        return Err(ApiError::BadRequest("no job selected".into()));
    }
    if !form.confirmed {
        return Ok(confirmation(&ui, action, &form).into_response());
    }
    let queue = Queue::new(ui.app.pool.clone());
    let who = caller.who();
    let mut refused = Vec::new();
    for &id in &form.ids {
        let done = match action {
            Action::Retry => queue.retry(id).await,
            Action::Cancel => queue.cancel(id).await,
        };
        match done {
            Ok(()) => {
                tracing::info!(job.id = %id, action = action.as_str(), %who, "console action")
            }
            Err(e @ (QueueError::NotFound(_) | QueueError::InvalidState { .. })) => {
                tracing::info!(job.id = %id, action = action.as_str(), %who, reason = %e, "console action refused");
                refused.push((id, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if refused.is_empty() {
        return Ok(Redirect::to(&form.back).into_response());
    }
    let body = html! {
        p { "Not every job could be " (if action == Action::Retry { "retried" } else { "cancelled" }) ":" }
        ul.refused { @for (id, why) in &refused { li { a href={ "/ui/jobs/" (id) } { (id) } ": " (why) } } }
        p { a href=(form.back) { "Back" } }
    };
    Ok((
        StatusCode::CONFLICT,
        layout::page("Action refused", Nav::Jobs, &body),
    )
        .into_response())
}

fn forbidden(message: &'static str) -> Response {
    (StatusCode::FORBIDDEN, format!("403: {message}\n")).into_response()
}

/// The page that asks before acting (when the script did not ask already).
fn confirmation(ui: &Ui, action: Action, form: &ActionForm) -> Markup {
    let verb = if action == Action::Retry {
        "Retry"
    } else {
        "Cancel"
    };
    let body = html! {
        p { (verb) " " (form.ids.len()) " job(s): "
            @for (i, id) in form.ids.iter().enumerate() { @if i > 0 { ", " } a href={ "/ui/jobs/" (id) } { (id) } } "?" }
        form method="post" action="/ui/jobs/action" {
            input type="hidden" name="csrf" value=(ui.config.credentials.csrf_token());
            input type="hidden" name="action" value=(action.as_str());
            input type="hidden" name="back" value=(form.back);
            input type="hidden" name="confirmed" value="yes";
            @for id in &form.ids { input type="hidden" name="id" value=(id); }
            button #confirm type="submit" { "Yes, " (verb.to_lowercase()) }
            " " a href=(form.back) { "No, go back" }
        }
    };
    layout::page("Confirm", Nav::Jobs, &body)
}
