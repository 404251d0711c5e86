//! GitLab client errors, classified where they happen into a [`Disposition`].

use std::time::Duration;

use crate::disposition::Disposition;

/// Everything a GitLab call can fail with. Messages never contain the token (bodies echoed
/// back by a server are redacted before they are stored here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401 or 403: the token is missing, invalid, expired, lacks the `api` scope, or its user
    /// may not access the project. Retrying cannot help.
    #[error(
        "GitLab refused the credentials ({status}: {message}); check that GITLAB_TOKEN is valid, has the api scope and can access the project"
    )]
    Auth {
        /// 401 or 403.
        status: u16,
        /// GitLab's `message`/`error` text.
        message: String,
    },
    /// 404: the project, MR, note or file does not exist (or the token cannot see it).
    #[error("not found: {what} ({message})")]
    NotFound {
        /// What was asked for, e.g. `merge request group/project!7`.
        what: String,
        /// GitLab's text, e.g. `404 Project Not Found`.
        message: String,
    },
    /// 429: throttled. `retry_after` comes from `Retry-After`, `RateLimit-ResetTime` or
    /// `RateLimit-Reset`; GitLab.com sometimes sends none of them.
    #[error("GitLab rate limit reached ({message}){}", retry_after.map(|d| format!("; retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// When the server says a retry may succeed.
        retry_after: Option<Duration>,
        /// Body text (JSON `message` or the plain-text `Retry later`).
        message: String,
    },
    /// 5xx (or 408/409, which GitLab uses for transient timeouts and lock conflicts).
    #[error("GitLab answered {status} ({message}); this is usually transient")]
    Server {
        /// HTTP status.
        status: u16,
        /// Body text.
        message: String,
    },
    /// GitLab refused the inline position (the `line_code` 400, or an invalid position
    /// field), or the position was invalid before sending. Not retried: post the finding in
    /// the summary note instead.
    #[error("GitLab rejected the diff position: {message}")]
    PositionRejected {
        /// GitLab's text (or the local reason).
        message: String,
    },
    /// The discussion was created, but not as an inline `DiffNote` (GitLab fell back to a
    /// plain thread). It exists on the MR: record it, do not retry (that would post twice).
    #[error(
        "GitLab created discussion {discussion_id} as {note_type:?}, not as an inline DiffNote"
    )]
    NotDiffNote {
        /// The created discussion's id.
        discussion_id: String,
        /// The created note's id.
        note_id: u64,
        /// The type GitLab reported (`None` for a plain note).
        note_type: Option<String>,
    },
    /// The MR's `diff_refs` were still empty after waiting: GitLab has not computed the diff yet.
    #[error(
        "merge request {what} has no diff_refs yet after {attempts} attempts; GitLab is still computing its diff"
    )]
    DiffRefsPending {
        /// Which MR.
        what: String,
        /// How many times it was fetched.
        attempts: u32,
    },
    /// A body that GitLab would execute as a quick action (a line starting with `/`, such
    /// as `/merge`). Refused before sending; the renderer must escape such lines.
    #[error(
        "refusing to post a body whose line {line} starts with '/', which GitLab would run as a quick action"
    )]
    UnsafeBody {
        /// 1-based line number in the body.
        line: usize,
    },
    /// Any other non-success status (mostly 4xx: our request was wrong).
    #[error("GitLab answered {status} to {what}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// What was asked for.
        what: String,
        /// Body text.
        message: String,
    },
    /// A redirect that was not followed: a POST/PUT (which must not be replayed as a GET) or
    /// one to another host (which would carry the token elsewhere).
    #[error(
        "GitLab redirected {what} ({status}) to {location}; use the project's numeric id or current path, and the instance's canonical GITLAB_URL"
    )]
    Redirected {
        /// 3xx status.
        status: u16,
        /// What was asked for.
        what: String,
        /// The `Location` header.
        location: String,
    },
    /// The request did not complete within the configured timeout.
    #[error("GitLab request for {what} timed out after {} s", timeout.as_secs_f32())]
    Timeout {
        /// What was asked for.
        what: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Connection, TLS or protocol failure.
    #[error("GitLab request for {what} failed: {source}")]
    Transport {
        /// What was asked for.
        what: String,
        /// The underlying error (its text names the URL, which holds no secret).
        #[source]
        source: reqwest::Error,
    },
    /// The response body exceeded the configured limit; reading stopped there.
    #[error("GitLab response for {what} exceeds the {limit}-byte limit")]
    BodyTooLarge {
        /// What was asked for.
        what: String,
        /// The configured limit.
        limit: u64,
    },
    /// The body was not the JSON we expect.
    #[error("GitLab response for {what} could not be decoded: {source}")]
    Decode {
        /// What was asked for.
        what: String,
        /// The serde error (position and expectation, no body content).
        #[source]
        source: serde_json::Error,
    },
    /// The response was well-formed but inconsistent (e.g. pagination that never ends).
    #[error("GitLab response for {what} is invalid: {message}")]
    InvalidResponse {
        /// What was asked for.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A request that creates something (a comment, a draft) failed in a way that leaves
    /// open whether GitLab carried it out (a 5xx, a timeout or a connection lost after
    /// sending). The client does not send it again: look for its marker on the MR first.
    #[error(
        "GitLab may or may not have stored {what} ({source}); look for its marker before sending it again"
    )]
    OutcomeUnknown {
        /// What was asked for.
        what: String,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// The caller's admission hook failed (its database, say) until the request's deadline.
    #[error("{what} could not be admitted: {message}")]
    Admission {
        /// What was asked for.
        what: String,
        /// The hook's error.
        message: String,
    },
    /// The client could not be built (bad CA certificate, unusable base URL).
    #[error("invalid GitLab client configuration: {0}")]
    Config(String),
}

impl Error {
    /// How the caller should handle this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::RateLimited {
                retry_after: Some(after),
                ..
            } => Disposition::RetryAfter(*after),
            Error::RateLimited {
                retry_after: None, ..
            }
            | Error::Server { .. }
            | Error::DiffRefsPending { .. }
            | Error::Timeout { .. }
            | Error::Transport { .. }
            | Error::OutcomeUnknown { .. }
            | Error::Admission { .. } => Disposition::Retry,
            // A body that is not JSON at all is typically a proxy's error page or a cut
            // connection; a JSON body of the wrong shape will not change on retry.
            Error::Decode { source, .. } => match source.classify() {
                serde_json::error::Category::Data => Disposition::Fatal,
                _ => Disposition::Retry,
            },
            Error::Auth { .. }
            | Error::NotFound { .. }
            | Error::PositionRejected { .. }
            | Error::NotDiffNote { .. }
            | Error::UnsafeBody { .. }
            | Error::Status { .. }
            | Error::Redirected { .. }
            | Error::BodyTooLarge { .. }
            | Error::InvalidResponse { .. }
            | Error::Config(_) => Disposition::Fatal,
        }
    }

    /// Turns a 400 from the discussions endpoint into [`Error::PositionRejected`] when GitLab's
    /// text is about the anchor (`line_code`, `position[...]`); other errors pass through.
    pub(crate) fn into_position_rejected(self) -> Self {
        match self {
            Error::Status {
                status: 400,
                message,
                what,
            } => {
                let lower = message.to_ascii_lowercase();
                if lower.contains("line_code") || lower.contains("position") {
                    Error::PositionRejected { message }
                } else {
                    Error::Status {
                        status: 400,
                        what,
                        message,
                    }
                }
            }
            other => other,
        }
    }
}
