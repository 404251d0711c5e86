//! LLM call errors: the classified kind plus the facts the audit ledger records.

use std::{fmt, time::Duration};

use super::Usage;
use crate::disposition::Disposition;

/// What went wrong, decided from the provider's business code first and the HTTP status
/// second (GLM answers 429 for both "slow down" and "out of money").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Too many requests or too much concurrency (GLM 1302, 1303; HTTP 429). Retry with backoff.
    RateLimited,
    /// The model is overloaded (GLM 1305, 1312; HTTP 503). Retry with a longer backoff.
    Overloaded,
    /// Balance, daily quota or usage cap exhausted (GLM 1113, 1304, 1308, 1310, 1309;
    /// OpenAI `insufficient_quota`). Fatal for this call; the fleet should pause.
    QuotaExhausted,
    /// Key missing, invalid or expired, or the account is disabled (GLM 1000–1004,
    /// 1110–1121; HTTP 401/403).
    Auth,
    /// The provider's moderation refused the input or output (GLM 1301,
    /// `finish_reason: sensitive`/`content_filter`).
    ContentFiltered,
    /// The prompt or the answer does not fit (GLM 1261, `finish_reason: length`,
    /// `model_context_window_exceeded`, OpenAI `context_length_exceeded`, HTTP 413).
    /// The caller splits the chunk and retries the halves; the same request never succeeds.
    ContextTooLong,
    /// The request was refused as malformed or unsupported (bad parameter, unknown model,
    /// wrong endpoint; other 4xx). A configuration problem: retrying cannot help.
    BadRequest,
    /// The provider failed (5xx, GLM 500/1230/1234, `finish_reason: network_error`). Transient.
    Server,
    /// No complete answer within `GLM_TIMEOUT`.
    Timeout,
    /// Connection, TLS or protocol failure before an answer arrived.
    Transport,
    /// An answer that is not the expected JSON, has no choice, or exceeds the body limit.
    InvalidResponse,
}

impl ErrorKind {
    /// Short human description, used in `Display`.
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "LLM rate limit reached",
            ErrorKind::Overloaded => "LLM model is overloaded",
            ErrorKind::QuotaExhausted => {
                "LLM account balance or quota is exhausted (top up or wait for the quota reset)"
            }
            ErrorKind::Auth => "LLM provider rejected the API key or account (check GLM_API_KEY)",
            ErrorKind::ContentFiltered => "LLM provider's content filter refused the request",
            ErrorKind::ContextTooLong => "LLM input or output is too long for the model",
            ErrorKind::BadRequest => {
                "LLM provider rejected the request (check GLM_BASE_URL, GLM_MODEL and the JSON/thinking options)"
            }
            ErrorKind::Server => "LLM provider failed",
            ErrorKind::Timeout => "LLM request timed out",
            ErrorKind::Transport => "LLM request could not be sent or its answer not received",
            ErrorKind::InvalidResponse => "LLM response is invalid",
        }
    }
}

/// A failed [`complete`](super::LlmClient::complete) call, with everything the ledger row needs.
/// The message never contains the API key.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The classification the wiring layer matches on.
    pub kind: ErrorKind,
    /// HTTP status, when an answer arrived.
    pub http_status: Option<u16>,
    /// Provider code from the body (`"1302"`, `"insufficient_quota"`; numbers become text).
    pub provider_code: Option<String>,
    /// Provider's message (or our description of what was wrong), truncated.
    pub message: String,
    /// Tokens the provider reported even though the call failed (e.g. `finish_reason: length`).
    pub usage: Usage,
    /// Server-provided `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Provider's request id, for support tickets.
    pub request_id: Option<String>,
    /// Underlying transport error.
    #[source]
    pub(super) source: Option<reqwest::Error>,
}

impl Error {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            http_status: None,
            provider_code: None,
            message: message.into(),
            usage: Usage::default(),
            retry_after: None,
            request_id: None,
            source: None,
        }
    }

    /// How the caller should handle this error.
    pub fn disposition(&self) -> Disposition {
        match self.kind {
            ErrorKind::RateLimited | ErrorKind::Overloaded | ErrorKind::Server => {
                match self.retry_after {
                    Some(after) => Disposition::RetryAfter(after),
                    None => Disposition::Retry,
                }
            }
            ErrorKind::Timeout | ErrorKind::Transport => Disposition::Retry,
            // ContextTooLong is "fatal" for this exact request: the caller is expected to
            // match on the kind and split the chunk, not to resend it.
            ErrorKind::QuotaExhausted
            | ErrorKind::Auth
            | ErrorKind::ContentFiltered
            | ErrorKind::ContextTooLong
            | ErrorKind::BadRequest
            | ErrorKind::InvalidResponse => Disposition::Fatal,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        match (self.http_status, &self.provider_code) {
            (Some(status), Some(code)) => write!(f, " (HTTP {status}, code {code})")?,
            (Some(status), None) => write!(f, " (HTTP {status})")?,
            (None, Some(code)) => write!(f, " (code {code})")?,
            (None, None) => {}
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {} s", after.as_secs())?;
        }
        Ok(())
    }
}

/// The kind a provider code means, if we know it. GLM codes are numeric strings; OpenAI
/// and compatible servers use words.
pub(super) fn kind_for_code(code: &str) -> Option<ErrorKind> {
    let kind = match code {
        "1302" | "1303" | "rate_limit_exceeded" => ErrorKind::RateLimited,
        "1305" | "1312" => ErrorKind::Overloaded,
        // 1309: Coding Plan expired: a billing state like the others.
        "1113" | "1304" | "1308" | "1309" | "1310" | "insufficient_quota" => {
            ErrorKind::QuotaExhausted
        }
        "1000" | "1001" | "1002" | "1003" | "1004" | "1110" | "1111" | "1112" | "1120" | "1121"
        | "invalid_api_key" => ErrorKind::Auth,
        "1301" | "content_filter" | "content_policy_violation" => ErrorKind::ContentFiltered,
        "1261" | "context_length_exceeded" => ErrorKind::ContextTooLong,
        "500" | "1230" | "1234" | "server_error" => ErrorKind::Server,
        "1210"
        | "1211"
        | "1212"
        | "1213"
        | "1214"
        | "1215"
        | "1220"
        | "1221"
        | "1222"
        | "1231"
        | "1311"
        | "model_not_found"
        | "invalid_request_error" => ErrorKind::BadRequest,
        _ => return None,
    };
    Some(kind)
}

/// The kind an HTTP status means when the body carries no known code.
pub(super) fn kind_for_status(status: u16, message: &str) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        408 => ErrorKind::Timeout,
        413 => ErrorKind::ContextTooLong,
        // GLM also answers 429 for an empty balance, sometimes without a code; the text is
        // the only clue ("余额不足或无可用资源包": insufficient balance or no resource package).
        429 if is_balance_message(message) => ErrorKind::QuotaExhausted,
        429 => ErrorKind::RateLimited,
        503 => ErrorKind::Overloaded,
        409 | 500..=599 => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    }
}

fn is_balance_message(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "余额不足",
        "资源包",
        "insufficient balance",
        "arrears",
        "insufficient_quota",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The kind a `finish_reason` means when it is not a normal end.
pub(super) fn kind_for_finish_reason(reason: &str) -> Option<ErrorKind> {
    match reason {
        "length" | "model_context_window_exceeded" => Some(ErrorKind::ContextTooLong),
        "sensitive" | "content_filter" => Some(ErrorKind::ContentFiltered),
        "network_error" => Some(ErrorKind::Server),
        _ => None,
    }
}
