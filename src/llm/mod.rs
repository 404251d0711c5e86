//! LLM client for OpenAI-compatible chat completions (Zhipu GLM by default; Ollama and vLLM
//! work by changing the base URL). Knows nothing of the queue or of GitLab.
//!
//! **One call, one HTTP request.** [`LlmClient::complete`] never retries: the caller records
//! every request in the audit ledger and owns the retry policy, so success and failure both
//! carry what a ledger row needs (HTTP status, provider code, token usage, request id).

// `Error` carries the ledger's facts (usage, ids, message) by value: about 180 bytes,
// built once per HTTP call that took seconds. Boxing would buy nothing measurable and
// would make callers dereference for every field.
#![allow(clippy::result_large_err)]

mod error;

use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

pub use self::error::{Error, ErrorKind};
use self::error::{kind_for_code, kind_for_finish_reason, kind_for_status};

/// `GLM_MODEL` default from the interface.
pub const DEFAULT_MODEL: &str = "glm-4.6";

/// `GLM_TIMEOUT` default from the interface.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A completion of 128K tokens is well under 1 MB of JSON; 8 MiB leaves room for reasoning
/// text and escaping while stopping a broken or hostile server from exhausting memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// Sent so provider-side logs can tell reviewq's traffic apart.
const USER_AGENT: &str = concat!("reviewq/", env!("CARGO_PKG_VERSION"));

/// Connecting should fail fast; the whole-call timeout is for generation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error texts go into logs and the ledger; keep them readable.
const MAX_MESSAGE_CHARS: usize = 500;

/// GLM's `thinking` switch (GLM-4.5 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Thinking {
    /// The model reasons first (`message.reasoning_content`); slower, billed as output.
    Enabled,
    /// Direct answer.
    Disabled,
}

/// Settings of an [`LlmClient`].
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// OpenAI-compatible base (`GLM_BASE_URL`); `/chat/completions` is appended.
    pub base_url: Url,
    /// Bearer key (`GLM_API_KEY`); `None` sends no `Authorization` (local Ollama/vLLM).
    pub api_key: Option<SecretString>,
    /// Model name sent with every request (`GLM_MODEL`).
    pub model: String,
    /// Whole-call timeout, body included (`GLM_TIMEOUT`).
    pub timeout: Duration,
    /// Send `response_format: {"type":"json_object"}` when a request asks for JSON. GLM,
    /// OpenAI, Ollama and vLLM accept it; turn it off for servers that reject the field.
    pub json_mode: bool,
    /// GLM `thinking` field; `None` omits it (strict OpenAI servers reject unknown fields).
    pub thinking: Option<Thinking>,
    /// Extra PEM root certificate(s) for a self-hosted endpoint behind a private CA.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Largest response body read before failing with [`ErrorKind::InvalidResponse`].
    pub max_response_bytes: u64,
}

impl LlmConfig {
    /// Settings with defaults: 60 s timeout, JSON mode on, and thinking disabled for GLM-4.5+
    /// models (see [`default_thinking`]), omitted for anything else.
    pub fn new(base_url: Url, api_key: Option<SecretString>, model: impl Into<String>) -> Self {
        let model = model.into();
        LlmConfig {
            base_url,
            api_key,
            thinking: default_thinking(&model),
            model,
            timeout: DEFAULT_TIMEOUT,
            json_mode: true,
            ca_cert_pem: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// GLM-4.5 and later think by default. A review answers with one JSON object; reasoning
/// tokens are billed as output, routinely push a 60 s call past its timeout, and can use up
/// `max_tokens` before any content (`finish_reason: length` with empty content). So reviewq
/// turns thinking off for those models, and sends nothing for others.
pub fn default_thinking(model: &str) -> Option<Thinking> {
    let model = model.to_ascii_lowercase();
    ["glm-4.5", "glm-4.6", "glm-4.7", "glm-5"]
        .iter()
        .any(|prefix| model.starts_with(prefix))
        .then_some(Thinking::Disabled)
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The input.
    User,
    /// A previous answer.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// One completion request. The model comes from the client's config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// At least one user message (GLM refuses only system/assistant messages).
    pub messages: Vec<Message>,
    /// Sampling temperature; GLM accepts [0, 1], OpenAI [0, 2]. `None` keeps the model default.
    pub temperature: Option<f32>,
    /// Output cap. `None` keeps the provider default.
    pub max_tokens: Option<u32>,
    /// Ask for a JSON object (sent as `response_format` when the config's `json_mode` is on).
    pub json_object: bool,
    /// Caller-chosen id echoed by GLM (and sent only when set: strict OpenAI servers reject it).
    pub request_id: Option<String>,
}

impl ChatRequest {
    /// A request with these messages and provider defaults for everything else.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            ..ChatRequest::default()
        }
    }
}

/// Token counts as the provider reported them; `None` where it reported nothing, so the
/// ledger stores NULL rather than a made-up 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub prompt_tokens: Option<u64>,
    /// Output tokens (reasoning included).
    pub completion_tokens: Option<u64>,
    /// Sum as reported.
    pub total_tokens: Option<u64>,
    /// Input tokens served from the provider's cache (billed at a discount by GLM).
    pub cached_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Reads `usage` leniently: a missing or odd field must not turn a paid answer into an error.
    fn from_json(usage: Option<&Value>) -> Self {
        let Some(usage) = usage else {
            return Usage::default();
        };
        let number = |v: Option<&Value>| v.and_then(Value::as_u64);
        Usage {
            prompt_tokens: number(usage.get("prompt_tokens")),
            completion_tokens: number(usage.get("completion_tokens")),
            total_tokens: number(usage.get("total_tokens")),
            cached_tokens: number(usage.pointer("/prompt_tokens_details/cached_tokens")),
            reasoning_tokens: number(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        }
    }
}

/// A successful completion with the facts the ledger records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The assistant's text (`choices[0].message.content`).
    pub content: String,
    /// Raw `finish_reason` (`stop`, or any value we do not treat as a failure).
    pub finish_reason: Option<String>,
    /// Reported tokens.
    pub usage: Usage,
    /// HTTP status of the answer (200 normally).
    pub http_status: u16,
    /// Model as reported by the provider, else as requested.
    pub model: String,
    /// Provider's request id (body `request_id`/`id`, else `x-request-id`).
    pub request_id: Option<String>,
}

/// `POST {base}/chat/completions` body.
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    /// Explicit: some servers default to streaming.
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The parts of a chat completion we read; everything but `content` is optional (GLM
/// omits `object`, Ollama omits `request_id`, ...).
#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<ChoiceMessage>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

/// An OpenAI-compatible chat completions client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LlmClient {
    client: reqwest::Client,
    /// `{base}/chat/completions`.
    endpoint: Url,
    /// `Bearer <key>`, marked sensitive so `Debug` shows `Sensitive`.
    auth_header: Option<HeaderValue>,
    /// Kept only to scrub the key out of server text stored in errors.
    api_key: Option<SecretString>,
    model: String,
    timeout: Duration,
    json_mode: bool,
    thinking: Option<Thinking>,
    max_response_bytes: u64,
}

impl LlmClient {
    /// Builds a client.
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] when the base URL is not http(s), the key is not a valid
    /// header value, or the CA certificate is not PEM.
    pub fn new(config: LlmConfig) -> Result<Self, Error> {
        let config_error = |message: String| Error::new(ErrorKind::BadRequest, message);
        let base = &config.base_url;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(config_error(
                "GLM_BASE_URL must not contain credentials; use GLM_API_KEY".to_owned(),
            ));
        }
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(config_error(format!(
                "GLM_BASE_URL must be an http(s) URL, got {base}"
            )));
        }
        let mut root = base.clone();
        root.set_query(None);
        root.set_fragment(None);
        let root = root.as_str().trim_end_matches('/');
        let endpoint = if root.ends_with("/chat/completions") {
            root.to_owned()
        } else {
            format!("{root}/chat/completions")
        };
        let endpoint = Url::parse(&endpoint)
            .map_err(|e| config_error(format!("cannot build the endpoint URL: {e}")))?;

        let auth_header = match &config.api_key {
            Some(key) if !key.expose_secret().is_empty() => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                    .map_err(|_| {
                    config_error(
                        "GLM_API_KEY contains characters not allowed in an HTTP header".to_owned(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };

        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            // A redirected POST would be replayed as a GET (or lose its Authorization on a
            // host change); a wrong base URL should fail loudly instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        if let Some(pem) = &config.ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                config_error(format!("the LLM CA certificate is not valid PEM: {e}"))
            })?;
            if certs.is_empty() {
                return Err(config_error(
                    "the LLM CA certificate file holds no certificate".to_owned(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))?;

        Ok(LlmClient {
            client,
            endpoint,
            auth_header,
            api_key: config.api_key,
            model: config.model,
            timeout: config.timeout,
            json_mode: config.json_mode,
            thinking: config.thinking,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The configured model name (for ledger rows written before the call).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Sends exactly one chat completion request and classifies the outcome.
    ///
    /// `finish_reason: length` (and `model_context_window_exceeded`) is returned as
    /// [`ErrorKind::ContextTooLong`]; `sensitive`/`content_filter` as
    /// [`ErrorKind::ContentFiltered`], both with the reported usage.
    ///
    /// # Errors
    /// Every [`ErrorKind`]; see [`Error::disposition`] for what to do.
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, Error> {
        let body = ChatBody {
            model: &self.model,
            messages: &request.messages,
            stream: false,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            response_format: (request.json_object && self.json_mode).then_some(ResponseFormat {
                kind: "json_object",
            }),
            thinking: self.thinking,
            request_id: request.request_id.as_deref(),
        };
        let started = Instant::now();
        let mut http = self
            .client
            .post(self.endpoint.clone())
            .header(header::ACCEPT, "application/json")
            // GLM localises error messages; English ones read better in logs and the ledger.
            .header(header::ACCEPT_LANGUAGE, "en-US,en")
            .json(&body);
        if let Some(auth) = &self.auth_header {
            http = http.header(header::AUTHORIZATION, auth.clone());
        }
        let result = match http.send().await {
            Ok(response) => self.read_response(response).await,
            Err(e) => Err(self.transport(e, None)),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(c) => tracing::debug!(
                model = %c.model,
                status = c.http_status,
                prompt_tokens = c.usage.prompt_tokens,
                completion_tokens = c.usage.completion_tokens,
                elapsed_ms,
                "llm call succeeded"
            ),
            Err(e) => tracing::debug!(
                model = %self.model,
                status = e.http_status,
                code = e.provider_code.as_deref(),
                kind = ?e.kind,
                elapsed_ms,
                "llm call failed"
            ),
        }
        result
    }

    async fn read_response(&self, response: reqwest::Response) -> Result<Completion, Error> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = self.read_body(response, status).await?;
        let header_request_id =
            header_text(&headers, "x-request-id").or_else(|| header_text(&headers, "request-id"));
        let retry_after = retry_after(&headers);

        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let error_object = json.as_ref().and_then(error_fields);
        if !(200..300).contains(&status) || (error_object.is_some() && !has_choices(&json)) {
            let fields = error_object.unwrap_or_default();
            let message = match fields.message {
                Some(m) => m,
                None if json.is_some() => String::new(),
                None => String::from_utf8_lossy(&body).trim().to_owned(),
            };
            let message = match header_text(&headers, "location") {
                Some(location) if (300..400).contains(&status) => {
                    format!("redirected to {location}; set GLM_BASE_URL to the final URL")
                }
                _ => message,
            };
            let message = self.redact(truncate(message));
            let kind = fields
                .code
                .as_deref()
                .and_then(kind_for_code)
                .or_else(|| fields.kind.as_deref().and_then(kind_for_code))
                .unwrap_or_else(|| kind_for_status(status, &message));
            let mut error = Error::new(kind, message);
            error.http_status = Some(status);
            error.provider_code = fields.code;
            error.usage = Usage::from_json(json.as_ref().and_then(|j| j.get("usage")));
            error.retry_after = retry_after;
            error.request_id = json
                .as_ref()
                .and_then(|j| j.get("request_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(header_request_id);
            return Err(error);
        }

        let invalid = |message: String| {
            let mut error = Error::new(ErrorKind::InvalidResponse, message);
            error.http_status = Some(status);
            error
        };
        let parsed: ChatResponse = serde_json::from_slice(&body).map_err(|e| {
            invalid(format!(
                "not an OpenAI-compatible chat completion ({e}); check GLM_BASE_URL"
            ))
        })?;
        let usage = Usage::from_json(parsed.usage.as_ref());
        let request_id = parsed.request_id.or(parsed.id).or(header_request_id);
        let Some(choice) = parsed.choices.into_iter().next() else {
            let mut error = invalid("the answer has no choices".to_owned());
            error.usage = usage;
            error.request_id = request_id;
            return Err(error);
        };
        if let Some(kind) = choice
            .finish_reason
            .as_deref()
            .and_then(kind_for_finish_reason)
        {
            let reason = choice.finish_reason.as_deref().unwrap_or_default();
            let mut error = Error::new(kind, format!("finish_reason is {reason:?}"));
            error.http_status = Some(status);
            error.usage = usage;
            error.request_id = request_id;
            return Err(error);
        }
        let Some(content) = choice.message.and_then(|m| m.content) else {
            let mut error = invalid(format!(
                "the answer has no message content (finish_reason {:?})",
                choice.finish_reason
            ));
            error.usage = usage;
            error.request_id = request_id;
            return Err(error);
        };
        Ok(Completion {
            content,
            finish_reason: choice.finish_reason,
            usage,
            http_status: status,
            model: parsed.model.unwrap_or_else(|| self.model.clone()),
            request_id,
        })
    }

    /// Reads the body up to the limit (checked against `Content-Length` first, then while
    /// streaming, since the header can be absent or wrong).
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        status: u16,
    ) -> Result<Vec<u8>, Error> {
        let limit = self.max_response_bytes;
        let too_large = || {
            let mut error = Error::new(
                ErrorKind::InvalidResponse,
                format!("the response body exceeds the {limit}-byte limit"),
            );
            error.http_status = Some(status);
            error
        };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport(e, Some(status))),
            }
        }
    }

    fn transport(&self, source: reqwest::Error, status: Option<u16>) -> Error {
        let mut error = if source.is_timeout() {
            Error::new(
                ErrorKind::Timeout,
                format!("no complete answer within {} s", self.timeout.as_secs_f32()),
            )
        } else {
            Error::new(ErrorKind::Transport, format!("{source}"))
        };
        error.http_status = status;
        error.source = Some(source);
        error
    }

    /// Removes the key from server-provided text (some gateways echo request headers).
    fn redact(&self, text: String) -> String {
        match &self.api_key {
            Some(key) if !key.expose_secret().is_empty() && text.contains(key.expose_secret()) => {
                text.replace(key.expose_secret(), "[REDACTED]")
            }
            _ => text,
        }
    }
}

/// Error fields in the shapes seen in the wild: GLM `{"error":{"code":"1302","message"}}`,
/// OpenAI `{"error":{"message","type","code"}}`, Ollama `{"error":"text"}`, older vLLM
/// `{"object":"error","message","type","code":400}`.
#[derive(Default)]
struct ErrorFields {
    code: Option<String>,
    kind: Option<String>,
    message: Option<String>,
}

fn error_fields(json: &Value) -> Option<ErrorFields> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match json.get("error") {
        Some(Value::Object(error)) => Some(ErrorFields {
            code: text(error.get("code")),
            kind: text(error.get("type")),
            message: text(error.get("message")),
        }),
        Some(Value::String(message)) => Some(ErrorFields {
            message: Some(message.clone()),
            ..ErrorFields::default()
        }),
        _ if json.get("object").and_then(Value::as_str) == Some("error") => Some(ErrorFields {
            code: text(json.get("code")),
            kind: text(json.get("type")),
            message: text(json.get("message")),
        }),
        _ => None,
    }
}

fn has_choices(json: &Option<Value>) -> bool {
    json.as_ref()
        .and_then(|j| j.get("choices"))
        .and_then(Value::as_array)
        .is_some_and(|choices| !choices.is_empty())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `Retry-After` in seconds or as an HTTP date (GLM does not send it; OpenAI and proxies may).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = header_text(headers, "retry-after")?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(&value).ok()?;
    Some(
        (date.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

fn truncate(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(index);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_is_disabled_by_default_only_for_glm_models_that_think() {
        assert_eq!(default_thinking("glm-4.6"), Some(Thinking::Disabled));
        assert_eq!(default_thinking("GLM-4.5-Air"), Some(Thinking::Disabled));
        assert_eq!(default_thinking("glm-4-plus"), None);
        assert_eq!(default_thinking("qwen2.5-coder:7b"), None);
    }

    #[test]
    fn usage_details_are_read_when_present_and_absent_fields_stay_none() {
        let json: Value = serde_json::json!({
            "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}
        });
        let usage = Usage::from_json(Some(&json));
        assert_eq!(usage.prompt_tokens, Some(10));
        assert_eq!(usage.cached_tokens, Some(4));
        assert_eq!(usage.reasoning_tokens, Some(2));
        let partial = Usage::from_json(Some(&serde_json::json!({"prompt_tokens": 3})));
        assert_eq!(partial.total_tokens, None);
    }

    #[test]
    fn error_codes_are_read_whether_string_or_number() {
        let glm = serde_json::json!({"error": {"code": "1302", "message": "Rate limit reached"}});
        assert_eq!(
            error_fields(&glm).and_then(|f| f.code).as_deref(),
            Some("1302")
        );
        let vllm = serde_json::json!({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400});
        assert_eq!(
            error_fields(&vllm).and_then(|f| f.code).as_deref(),
            Some("400")
        );
        let ollama = serde_json::json!({"error": "model \"x\" not found"});
        assert!(error_fields(&ollama).and_then(|f| f.message).is_some());
    }
}
