//! One GitLab HTTP exchange: auth header, redirects, bounded body, status classification.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{
    Method, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    Error, GitLabConfig, Result,
    admission::{Admission, Admit, Report, Ticket},
    retry::{Replay, Step, backoff, next_step},
};

/// Sent so instance admins can tell reviewq's traffic apart in their logs.
const USER_AGENT: &str = concat!("reviewq/", env!("CARGO_PKG_VERSION"));

/// Connecting should never take long; cap it below the whole-request timeout so an
/// unreachable host fails fast with a clear transport error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// GET redirects within the same origin are followed (a renamed project answers with one);
/// more than a few means a loop.
const MAX_REDIRECTS: usize = 5;

/// Error texts are for humans and logs; a proxy's 1 MB HTML error page is not.
const MAX_MESSAGE_CHARS: usize = 500;

/// A successful response, body fully read.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

/// The reqwest client plus what every request needs.
#[derive(Debug, Clone)]
pub(super) struct Http {
    client: reqwest::Client,
    /// `PRIVATE-TOKEN` value, marked sensitive so `Debug` shows `Sensitive`.
    token_header: HeaderValue,
    /// Kept only to scrub the token out of any server text we store in errors.
    token: SecretString,
    timeout: Duration,
    max_response_bytes: u64,
    /// How long one request may keep being retried (`GITLAB_RETRY_SECS`).
    retry_for: Duration,
    /// The caller's fleet-wide admission, if any.
    pub(super) admission: Option<Admission>,
}

impl Http {
    pub(super) fn new(config: &GitLabConfig) -> Result<Self> {
        let mut token_header =
            HeaderValue::from_str(config.token.expose_secret()).map_err(|_| {
                Error::Config(
                    "GITLAB_TOKEN contains characters not allowed in an HTTP header".to_owned(),
                )
            })?;
        token_header.set_sensitive(true);
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            // Redirects are handled in `send`: reqwest would replay a POST as a GET on
            // 301/302 and would carry PRIVATE-TOKEN (not a header it knows is sensitive)
            // to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        if let Some(pem) = &config.ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::Config(format!("the GitLab CA certificate is not valid PEM: {e}"))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(
                    "the GitLab CA certificate file holds no certificate".to_owned(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Http {
            client,
            token_header,
            token: config.token.clone(),
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            retry_for: config.retry_for,
            admission: None,
        })
    }

    /// Sends one request, retrying it in place until it succeeds, fails for good, or its
    /// deadline (`retry_for` from the first try) passes: a 429 after exactly the wait GitLab
    /// asked for (shared with the fleet through the admission hook), a 5xx, a timeout or a
    /// broken connection after an exponential backoff with full jitter. A request that
    /// creates something ([`Replay::Unsafe`]) is not sent again once it may have reached
    /// GitLab: that ends in [`Error::OutcomeUnknown`], and the caller looks for its marker.
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        json: Option<Vec<u8>>,
        what: &str,
        replay: Replay,
    ) -> Result<Reply> {
        let give_up_at = Instant::now() + self.retry_for;
        let mut tries: u32 = 0;
        loop {
            let ticket = self.admit(give_up_at, what).await?;
            let result = self
                .exchange(method.clone(), url.clone(), json.as_deref(), what)
                .await;
            let probe = ticket.as_ref().is_some_and(Ticket::is_probe);
            drop(ticket);
            // Any answer but a throttle ends the fleet's pause (a 500 is not "slow down").
            if probe && !matches!(result, Err(Error::RateLimited { .. })) {
                self.report_recovered().await;
            }
            let err = match result {
                Ok(reply) => return Ok(reply),
                Err(err) => err,
            };
            tries += 1;
            let wait = match next_step(&err, replay) {
                Step::GiveUp => return Err(err),
                Step::Unknown => {
                    return Err(Error::OutcomeUnknown {
                        what: what.to_owned(),
                        source: Box::new(err),
                    });
                }
                Step::After(wait) => wait,
                Step::Backoff => backoff(tries),
            };
            if let Error::RateLimited { message, .. } = &err
                && let Some(admission) = &self.admission
            {
                admission
                    .report(Report::Throttled {
                        wait,
                        reason: message.clone(),
                    })
                    .await;
            }
            if Instant::now() + wait > give_up_at {
                return Err(err);
            }
            tracing::info!(error = %err, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), tries, "GitLab request failed; retrying it");
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for the admission hook's go (within the request's deadline).
    async fn admit(&self, give_up_at: Instant, what: &str) -> Result<Option<Ticket>> {
        /// A waiting request asks again at least this often, so that the end of a pause
        /// (a probe's answer) reaches it soon.
        const POLL: Duration = Duration::from_millis(100);
        let Some(admission) = &self.admission else {
            return Ok(None);
        };
        let mut failures: u32 = 0;
        loop {
            let (wait, refused) = match admission.admit().await {
                Ok(Admit::Go(ticket)) => return Ok(Some(ticket)),
                Ok(Admit::Wait { wait, reason }) => (
                    wait,
                    Error::RateLimited {
                        retry_after: Some(wait),
                        message: format!("the fleet holds {what} back: {reason}"),
                    },
                ),
                Err(message) => {
                    failures += 1;
                    (
                        backoff(failures),
                        Error::Admission {
                            what: what.to_owned(),
                            message,
                        },
                    )
                }
            };
            let now = Instant::now();
            if now + wait > give_up_at {
                return Err(refused);
            }
            tokio::time::sleep(wait.min(POLL)).await;
        }
    }

    async fn report_recovered(&self) {
        if let Some(admission) = &self.admission {
            admission.report(Report::Recovered).await;
        }
    }

    /// Sends one request once (following same-origin GET redirects) and returns the body of
    /// a 2xx answer, or the classified error.
    async fn exchange(
        &self,
        method: Method,
        mut url: Url,
        json: Option<&[u8]>,
        what: &str,
    ) -> Result<Reply> {
        let mut last_redirect = 0;
        for _ in 0..=MAX_REDIRECTS {
            let started = Instant::now();
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .header("PRIVATE-TOKEN", self.token_header.clone())
                .header(header::ACCEPT, "application/json");
            if let Some(body) = json {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
            }
            let response = request.send().await.map_err(|e| self.transport(e, what))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                match url.join(&location) {
                    Ok(next)
                        if method == Method::GET
                            && !location.is_empty()
                            && next.origin() == url.origin() =>
                    {
                        tracing::debug!(from = %url.path(), to = %next.path(), "following GitLab redirect");
                        last_redirect = status.as_u16();
                        url = next;
                        continue;
                    }
                    _ => {
                        return Err(Error::Redirected {
                            status: status.as_u16(),
                            what: what.to_owned(),
                            location,
                        });
                    }
                }
            }
            let headers = response.headers().clone();
            let body = self.read_body(response, what).await?;
            tracing::debug!(
                method = %method,
                path = %url.path(),
                status = status.as_u16(),
                bytes = body.len(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "gitlab request"
            );
            if status.is_success() {
                return Ok(Reply { headers, body });
            }
            return Err(self.classify(status, &headers, &body, what));
        }
        Err(Error::Redirected {
            status: last_redirect,
            what: what.to_owned(),
            location: format!("{url} (more than {MAX_REDIRECTS} redirects)"),
        })
    }

    /// Reads the body, stopping with [`Error::BodyTooLarge`] past the limit (checked against
    /// `Content-Length` first, then while streaming, since the header can be absent or lie).
    async fn read_body(&self, mut response: reqwest::Response, what: &str) -> Result<Vec<u8>> {
        let limit = self.max_response_bytes;
        let too_large = || Error::BodyTooLarge {
            what: what.to_owned(),
            limit,
        };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        // Sized once when the server says how much is coming: growing a large buffer by
        // doubling would briefly hold two copies.
        let mut body = Vec::with_capacity(
            response
                .content_length()
                .and_then(|len| usize::try_from(len).ok())
                .unwrap_or(0),
        );
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(e, what))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport(&self, source: reqwest::Error, what: &str) -> Error {
        if source.is_timeout() {
            Error::Timeout {
                what: what.to_owned(),
                timeout: self.timeout,
            }
        } else {
            Error::Transport {
                what: what.to_owned(),
                source,
            }
        }
    }

    /// Maps a non-2xx answer to an [`Error`] from its status, headers and body.
    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], what: &str) -> Error {
        let message = self.redact(error_message(status, body));
        let status = status.as_u16();
        match status {
            401 | 403 => Error::Auth { status, message },
            404 => Error::NotFound {
                what: what.to_owned(),
                message,
            },
            429 => Error::RateLimited {
                retry_after: retry_after(headers, Utc::now()),
                message,
            },
            // 408: GitLab timed out waiting on Gitaly/DB; 409: a concurrent update held a
            // lock. Both clear by themselves.
            408 | 409 | 500..=599 => Error::Server { status, message },
            _ => Error::Status {
                status,
                what: what.to_owned(),
                message,
            },
        }
    }

    /// Removes the token from server-provided text (some proxies echo request headers).
    fn redact(&self, text: String) -> String {
        let token = self.token.expose_secret();
        if token.is_empty() || !text.contains(token) {
            text
        } else {
            text.replace(token, "[REDACTED]")
        }
    }
}

/// GitLab's human text: `message` (a string or, for validation errors, an object) or
/// Grape's `error`; otherwise the body as text (`Retry later`); otherwise the status reason.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => match value.get("message").or_else(|| value.get("error")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => value.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if text.is_empty() {
        status.to_string()
    } else {
        truncate(text)
    }
}

fn truncate(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(index);
        text.push('…');
    }
    text
}

/// When a throttled request may be retried: `Retry-After` (seconds or HTTP date), then
/// `RateLimit-ResetTime` (HTTP date), then `RateLimit-Reset` (unix seconds; small values
/// are read as a delay, as in the IETF draft some proxies follow).
pub(super) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let until = |date: DateTime<Utc>| (date - now).to_std().unwrap_or(Duration::ZERO);
    if let Some(value) = text("retry-after") {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = DateTime::parse_from_rfc2822(value) {
            return Some(until(date.with_timezone(&Utc)));
        }
    }
    if let Some(date) =
        text("ratelimit-resettime").and_then(|v| DateTime::parse_from_rfc2822(v).ok())
    {
        return Some(until(date.with_timezone(&Utc)));
    }
    if let Some(reset) = text("ratelimit-reset").and_then(|v| v.parse::<i64>().ok()) {
        // Unix timestamps are past 1e9 since 2001; anything smaller is a delay in seconds.
        if reset > 1_000_000_000 {
            return DateTime::from_timestamp(reset, 0).map(until);
        }
        return Some(Duration::from_secs(reset.max(0).unsigned_abs()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("test header"));
        }
        map
    }

    fn at(ts: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(ts, 0).expect("valid timestamp")
    }

    #[test]
    fn retry_after_seconds_wins_over_ratelimit_reset() {
        let h = headers(&[("retry-after", "7"), ("ratelimit-reset", "1700000100")]);
        assert_eq!(
            retry_after(&h, at(1_700_000_000)),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_http_date_is_turned_into_a_delay() {
        let h = headers(&[("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT")]);
        assert_eq!(
            retry_after(&h, at(1_700_000_000)),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn ratelimit_reset_as_unix_time_is_turned_into_a_delay() {
        let h = headers(&[("ratelimit-reset", "1700000042")]);
        assert_eq!(
            retry_after(&h, at(1_700_000_000)),
            Some(Duration::from_secs(42))
        );
    }

    #[test]
    fn ratelimit_reset_in_the_past_means_retry_now() {
        let h = headers(&[("ratelimit-reset", "1699999000")]);
        assert_eq!(retry_after(&h, at(1_700_000_000)), Some(Duration::ZERO));
    }

    #[test]
    fn ratelimit_resettime_date_is_used_when_retry_after_is_absent() {
        let h = headers(&[("ratelimit-resettime", "Tue, 14 Nov 2023 22:13:30 GMT")]);
        assert_eq!(
            retry_after(&h, at(1_700_000_000)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn no_rate_limit_headers_means_no_hint() {
        assert_eq!(retry_after(&HeaderMap::new(), at(1_700_000_000)), None);
    }

    #[test]
    fn grape_error_key_and_object_messages_are_read() {
        let grape = br#"{"error":"position[position_type] does not have a valid value"}"#;
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, grape),
            "position[position_type] does not have a valid value"
        );
        let object = br#"{"message":{"error":"This endpoint has been requested too many times. Try again later."}}"#;
        assert!(error_message(StatusCode::TOO_MANY_REQUESTS, object).contains("too many times"));
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b""),
            "502 Bad Gateway"
        );
    }

    #[test]
    fn long_error_bodies_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(2 * MAX_MESSAGE_CHARS);
        let message = error_message(StatusCode::BAD_GATEWAY, body.as_bytes());
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
