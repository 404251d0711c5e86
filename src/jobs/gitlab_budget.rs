//! The fleet-wide GitLab budget, wired: the GitLab client's admission hook, built per job
//! attempt from the queue's generic pieces (the client knows nothing of the queue, the
//! queue nothing of GitLab).
//!
//! Per request: one statement (`RateGate::admit`: the shared pause and, when
//! `GITLAB_REQUESTS_PER_MINUTE` is set, a budget row), plus a `limit_slots` slot held for
//! the request's duration when `GITLAB_CONCURRENT_REQUESTS` is set. A 429 pauses the whole
//! fleet for its `Retry-After` (one more statement); the first request after the pause is
//! the probe, and its answer ends the pause for everyone.

use std::sync::Arc;

use crate::{
    gitlab::{Admission, Admit, GitLabClient, Report, Ticket},
    queue::{self, JobContext, RateGate, WaitReason},
};

/// The resource name of the fleet's GitLab budget (`rate_limits`, `limit_slots`).
pub const GITLAB_RESOURCE: &str = "gitlab";

/// The fleet's GitLab budget, as configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GitLabBudget {
    /// `GITLAB_CONCURRENT_REQUESTS`: most requests in flight across the fleet (`None`: no cap).
    pub concurrent_requests: Option<u32>,
    /// `GITLAB_REQUESTS_PER_MINUTE`: most requests started in any minute (`None`: no cap).
    pub requests_per_minute: Option<u32>,
}

/// `client`, admitting each request of this attempt through the fleet's budget.
pub fn admitted(client: &GitLabClient, ctx: &JobContext, budget: GitLabBudget) -> GitLabClient {
    let admit_ctx = Arc::new(ctx.clone());
    let report_pool = ctx.queue().pool().clone();
    client.with_admission(Admission::new(
        move || {
            let ctx = Arc::clone(&admit_ctx);
            Box::pin(async move { admit(&ctx, budget).await.map_err(|e| e.to_string()) })
        },
        move |report| {
            let pool = report_pool.clone();
            Box::pin(async move {
                let written = match &report {
                    Report::Throttled { wait, reason } => {
                        tracing::warn!(wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), %reason, "GitLab throttled a request: the fleet backs off");
                        RateGate::pause(&pool, GITLAB_RESOURCE, *wait, reason).await
                    }
                    Report::Recovered => RateGate::recovered(&pool, GITLAB_RESOURCE).await,
                };
                if let Err(err) = written {
                    // The pause is shared to spare GitLab; without it each request still
                    // honours Retry-After on its own.
                    tracing::warn!(error = %err, "could not record GitLab's throttle state");
                }
            })
        },
    ))
}

async fn admit(ctx: &JobContext, budget: GitLabBudget) -> queue::Result<Admit> {
    let probe = match RateGate::admit(ctx.queue().pool(), GITLAB_RESOURCE).await? {
        queue::Admission::Go { probe } => probe,
        queue::Admission::Wait { wait, why } => {
            let reason = match why {
                WaitReason::Paused(reason) => format!("GitLab asked to back off ({reason})"),
                WaitReason::Budget => "GITLAB_REQUESTS_PER_MINUTE is spent".to_owned(),
            };
            return Ok(Admit::Wait { wait, reason });
        }
    };
    let held: Option<Box<dyn Send>> = match budget.concurrent_requests {
        Some(_) => Some(Box::new(ctx.acquire(GITLAB_RESOURCE).await?)),
        None => None,
    };
    Ok(Admit::Go(Ticket::new(held, probe)))
}
