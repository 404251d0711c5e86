//! What several commands share: the review request, reference checks, and the review
//! dependencies and GitLab budget built from the settings.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::{
    config::{ConversationArgs, GitLabArgs, LlmArgs, UsageError},
    jobs::{gitlab_budget::GITLAB_RESOURCE, review},
    mr_ref::parse_refs,
    queue::RateGate,
};

/// The reviews a producer asks for: shared by `enqueue` and `review`.
#[derive(Debug, Args)]
pub struct ReviewRequest {
    /// Merge requests: PROJECT:IID, PROJECT!IID or a merge request URL; comma-separated
    /// lists are accepted too.
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,

    #[command(flatten)]
    pub review: review::ReviewOptions,

    /// Priority: higher runs first.
    #[arg(
        long,
        env = "REVIEWQ_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i16,
}

/// Parses REF arguments and checks that URL refs point at the configured GitLab.
///
/// # Errors
/// A usage error naming the bad reference.
pub fn parse_checked_refs(
    refs: &[String],
    gitlab: &GitLabArgs,
) -> Result<Vec<crate::mr_ref::MrRef>, UsageError> {
    let refs = parse_refs(refs).map_err(|e| UsageError(e.to_string()))?;
    let gitlab_host = gitlab.host();
    for r in &refs {
        if let Some(host) = r.host.as_deref().filter(|h| *h != gitlab_host) {
            return Err(UsageError(format!(
                "merge request {r} is on {host}, but GITLAB_URL is {}: set GITLAB_URL to that instance",
                gitlab.gitlab_url
            )));
        }
    }
    Ok(refs)
}

/// Builds the review dependencies from the settings.
///
/// # Errors
/// A usage error naming a missing or invalid setting.
pub fn review_deps(
    gitlab: &GitLabArgs,
    llm: &LlmArgs,
    conversation: &ConversationArgs,
) -> Result<review::ReviewDeps, UsageError> {
    Ok(review::ReviewDeps {
        gitlab: gitlab.client()?,
        llm: llm.client()?,
        budget: llm.budget()?,
        chunk_timeout: Duration::from_secs(llm.chunk_timeout),
        max_chunks: llm.max_chunks.max(1),
        spend: llm.spend(),
        gitlab_budget: gitlab.budget(),
        conversation: conversation.policy(),
    })
}

/// Writes the fleet's `GITLAB_REQUESTS_PER_MINUTE` (every worker does at start; the last
/// to start wins, as for the limits).
///
/// # Errors
/// Database errors.
pub async fn set_gitlab_budget(pool: &sqlx::PgPool, gitlab: &GitLabArgs) -> anyhow::Result<()> {
    RateGate::configure(pool, GITLAB_RESOURCE, gitlab.gitlab_requests_per_minute)
        .await
        .context("could not set the GitLab request budget")
}
