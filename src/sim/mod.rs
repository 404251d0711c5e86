//! Simulated GitLab and Zhipu GLM servers on loopback.
//!
//! Used by the integration tests, by `reviewq demo` (a whole review against servers on this
//! machine) and by `reviewq bench e2e`. Both servers speak the real wire formats closely
//! enough that the real clients cannot tell the difference, keep state that callers can
//! inspect (stored comments, request counts, tokens billed, requests in flight), and inject
//! the faults the real services produce (429s, 5xx, a 500 after the comment was stored,
//! rejected positions, GLM business codes, truncated or non-JSON answers, slowness).
//!
//! This module depends on nothing else in the crate: the clients talk to it over HTTP only.
//!
//! # Layout
//! - [`gitlab`]: [`FakeGitLab`]: merge requests, versions, paginated diffs, commits and
//!   comparisons between pushes, discussions and draft notes with GitLab's position
//!   validation, notes, raw files, faults per route.
//! - [`glm`]: [`FakeGlm`]: chat completions whose findings are derived deterministically
//!   from the diff in the prompt ([`glm::rules`]), usage accounting, in-flight peak, faults.
//! - [`fixtures`]: realistic demo MRs and a many-files MR generator.
//! - `server`: the shared axum lifecycle (bind `127.0.0.1:0`, graceful stop on drop).

pub mod fixtures;
pub mod gitlab;
pub mod glm;
mod server;

pub use self::{
    gitlab::{FakeGitLab, FileSpec, GitLabFault, MrSpec, Route},
    glm::{FakeGlm, GlmBehaviour, GlmFault},
};

/// Why a simulator could not be started or set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the loopback listener failed (no free port, sandbox forbids sockets...).
    #[error("cannot bind a loopback port for the simulated {what} server: {source}")]
    Bind {
        /// `GitLab` or `GLM`.
        what: &'static str,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A call named a merge request that was never added.
    #[error("the simulated GitLab has no merge request {project}!{iid}")]
    UnknownMergeRequest {
        /// Project path or id as given.
        project: String,
        /// MR number.
        iid: u64,
    },
    /// A test helper named a discussion the merge request does not have.
    #[error("the simulated GitLab has no discussion {discussion_id} on {project}!{iid}")]
    UnknownDiscussion {
        /// Project path or id as given.
        project: String,
        /// MR number.
        iid: u64,
        /// The discussion id as given.
        discussion_id: String,
    },
    /// A simulated push that git could not have made (e.g. a fast-forward to a commit the
    /// merge request already has).
    #[error("invalid simulated push: {reason}")]
    InvalidPush {
        /// What is wrong.
        reason: String,
    },
    /// A file's `diff` is not a GitLab diff (hunks starting at `@@`); rejected when the MR is
    /// added so a broken fixture fails loudly instead of making every position "invalid".
    #[error("the diff of {path} is not a valid GitLab diff: {reason}")]
    InvalidDiff {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
