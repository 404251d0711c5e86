//! `GET /ui/jobs/{id}`: one job: its state and payload, every attempt with its error, its
//! chunk children and their progress, the review it belongs to and a link to the MR.

use axum::{
    Extension,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};

use super::{
    Ui,
    auth::{Caller, Role},
    chart, jobs,
    layout::{self, Nav},
    reviews,
};
use crate::{
    queue::{Error as QueueError, JobId, JobRow, JobState, Queue},
    server::ApiError,
};

/// Most children listed (a gigantic review has hundreds of chunks; the counts cover all).
const CHILDREN_SHOWN: i64 = 200;

/// The handler.
///
/// # Errors
/// Database errors; an unknown id answers 404.
pub(crate) async fn page(
    State(ui): State<Ui>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = id.parse::<JobId>() else {
        return Err(ApiError::BadRequest(format!(
            "job id {id:?} is not valid: expected a positive integer"
        )));
    };
    let queue = Queue::new(ui.app.pool.clone());
    let job = match queue.get(id).await {
        Ok(job) => job,
        Err(QueueError::NotFound(_)) => {
            let body = html! { p { "There is no job " (id) " (finished jobs are pruned after the retention period)." } };
            return Ok((
                StatusCode::NOT_FOUND,
                layout::page("No such job", Nav::Jobs, &body),
            )
                .into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let review_id = job
        .payload
        .get("review_id")
        .and_then(serde_json::Value::as_i64);
    let (attempts, counts, children, review) = tokio::try_join!(
        async { queue.attempts(id).await.map_err(ApiError::from) },
        async { queue.child_counts(id).await.map_err(ApiError::from) },
        async {
            queue
                .children(id, CHILDREN_SHOWN)
                .await
                .map_err(ApiError::from)
        },
        async {
            reviews::review_of_job(&ui.app.pool, id, review_id)
                .await
                .map_err(ApiError::from)
        },
    )?;
    let project = job
        .payload
        .get("project")
        .and_then(|p| p.as_str())
        .map(str::to_owned)
        .or_else(|| review.as_ref().map(|r| r.project.clone()));
    let iid = job
        .payload
        .get("iid")
        .and_then(serde_json::Value::as_i64)
        .or_else(|| review.as_ref().map(|r| r.mr_iid));
    let operator = caller.role == Role::Operator;
    let body = html! {
        (summary(&job))
        @if operator { (actions(&ui, &job)) }
        @if let (Some(project), Some(iid)) = (&project, iid) {
            p.mr { "Merge request: " a.external #mr-link href=(ui.config.mr_url(project, iid)) { (project) "!" (iid) } }
        }
        @if let Some(parent) = job.parent_id {
            p { "Part of job " a href={ "/ui/jobs/" (parent) } { (parent) } }
        }
        @if let Some(r) = &review {
            section #review {
                h2 { "Review" }
                p { "Review " (r.id) " of " a href={ "/ui/reviews/mr?project=" (r.project) "&iid=" (r.mr_iid) } { (r.project) "!" (r.mr_iid) }
                    ", " (r.scope) @if let Some(since) = &r.since_sha { " since " code { (short(since)) } }
                    ", head " code { (short(&r.head_sha)) } ", " (r.state) }
            }
        }
        @if counts.total() > 0 {
            section #children {
                h2 { "Chunks" }
                p { (counts.succeeded) " of " (counts.total()) " done, " (counts.running) " running, "
                    (counts.queued) " queued, " (counts.failed) " failed, " (counts.cancelled) " cancelled "
                    (chart::gauge(counts.succeeded, Some(counts.total()))) }
                (jobs::table(&children, false))
            }
        }
        h2 { "Attempts" }
        @if attempts.is_empty() { p { "No finished attempt yet." } } @else {
            table #attempts {
                thead { tr { th { "#" } th { "outcome" } th { "worker" } th { "started" } th { "took" } th { "error" } } }
                tbody { @for a in &attempts {
                    tr { td.num { (a.attempt) } td { (a.outcome) } td.mono { (a.worker_id) }
                        td { (layout::time(a.started_at)) }
                        td.num { (layout::seconds((a.finished_at - a.started_at).as_seconds_f64())) }
                        td.error { (a.error.as_deref().unwrap_or("")) } }
                } }
            }
        }
        h2 { "Payload" }
        pre #payload { (serde_json::to_string_pretty(&job.payload).unwrap_or_default()) }
    };
    Ok(layout::page(&format!("Job {id}"), Nav::Jobs, &body).into_response())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn summary(job: &JobRow) -> Markup {
    html! {
        dl.facts #job-facts {
            dt { "state" } dd #job-state { (layout::state_badge(job.state)) }
            dt { "kind" } dd { (job.kind) }
            dt { "attempts" } dd { (job.attempt) " claims, " (job.failed_attempts) " of " (job.max_attempts) " failed" }
            dt { "priority" } dd { (job.priority) }
            dt { "run at" } dd { (layout::time(job.run_at)) }
            dt { "created" } dd { (layout::time(job.created_at)) }
            dt { "started" } dd { (layout::maybe_time(job.started_at)) }
            dt { "finished" } dd { (layout::maybe_time(job.finished_at)) }
            @if let Some(lease) = job.lease_expires_at {
                dt { "lease until" } dd { (layout::time(lease)) @if let Some(w) = job.worker_id { " by " span.mono { (w) } } }
            }
            @if let Some(w) = &job.waiting {
                dt { "waiting" } dd { (w.0.reason) }
            }
            @if let Some(e) = &job.last_error {
                dt { "last error" } dd.error #last-error { (e) }
            }
        }
    }
}

/// Retry/cancel of this job, where its state allows them.
fn actions(ui: &Ui, job: &JobRow) -> Markup {
    let retry = matches!(
        job.state,
        JobState::Failed | JobState::Cancelled | JobState::Queued
    );
    let cancel = matches!(job.state, JobState::Queued | JobState::Running);
    html! {
        @if retry || cancel {
            form.actions #job-actions method="post" action="/ui/jobs/action" data-confirm={ "job " (job.id) } {
                input type="hidden" name="csrf" value=(ui.config.credentials.csrf_token());
                input type="hidden" name="id" value=(job.id);
                input type="hidden" name="back" value={ "/ui/jobs/" (job.id) };
                @if retry { button #retry type="submit" name="action" value="retry" { "Retry" } }
                @if cancel { button #cancel type="submit" name="action" value="cancel" { "Cancel" } }
            }
        }
    }
}
