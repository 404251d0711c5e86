//! The `POST /chat/completions` handler: auth and parameter checks as GLM answers them, the
//! fault for the request, the answer (a review, description or thread answer, or a fault's
//! error) after the latency, and the call log and billing of every request.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde_json::{Value, json};

use super::{
    GlmBehaviour, GlmCall, GlmFault, GlmState, Inner, conversation, describe, estimate_tokens,
    rules,
};

/// Counts a request in flight for as long as it lives, and records its call when dropped,
/// so a request whose client went away (the handler future dropped) is still logged.
struct InFlight {
    inner: Arc<Inner>,
    call: GlmCall,
    /// Set once the answer is built; otherwise the drop records status 499.
    answered: bool,
}

impl InFlight {
    fn enter(inner: &Arc<Inner>) -> Self {
        inner.requests.fetch_add(1, Ordering::SeqCst);
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight {
            inner: Arc::clone(inner),
            call: GlmCall {
                model: String::new(),
                status: 499,
                error_code: None,
                finish_reason: None,
                prompt_tokens: None,
                completion_tokens: None,
                fault: None,
                user_prompt: String::new(),
                system_prompt: String::new(),
                arrived: Instant::now(),
                elapsed: Duration::ZERO,
            },
            answered: false,
        }
    }

    /// Records the answer (and bills its usage) and returns it.
    fn answer(mut self, answer: Answer) -> Response {
        self.call.status = answer.status.as_u16();
        self.call.error_code = answer.error_code;
        self.call.finish_reason = answer.finish_reason;
        if let Some((prompt, completion)) = answer.usage {
            self.call.prompt_tokens = Some(prompt);
            self.call.completion_tokens = Some(completion);
            let mut state = self.inner.lock();
            state.billed_prompt += prompt;
            state.billed_completion += completion;
        }
        self.answered = true;
        answer.response
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut call = self.call.clone();
        if !self.answered {
            call.status = 499;
        }
        call.elapsed = call.arrived.elapsed();
        self.inner.lock().calls.push(call);
    }
}

/// An answer and the facts the call log needs.
struct Answer {
    status: StatusCode,
    response: Response,
    error_code: Option<String>,
    finish_reason: Option<String>,
    /// (prompt, completion) tokens when the body carries `usage`.
    usage: Option<(u64, u64)>,
}

impl Answer {
    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Answer {
            status,
            response: glm_error(status, code, message),
            error_code: Some(code.to_owned()),
            finish_reason: None,
            usage: None,
        }
    }
}

/// An error answer before the fault script runs (auth, parameter checks); small so it can
/// travel in a `Result`.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Answer::error(refusal.status, refusal.code, refusal.message)
    }
}

pub(super) fn glm_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        Body::from(serde_json::to_vec(value).unwrap_or_default()),
    )
        .into_response()
}

/// The parts of a chat request the fake reads.
struct ChatIn {
    model: String,
    /// (role, content) pairs.
    messages: Vec<(String, String)>,
    max_tokens: Option<u64>,
    request_id: Option<String>,
}

impl ChatIn {
    fn user_text(&self) -> String {
        self.text_of("user")
    }

    fn text_of(&self, wanted: &str) -> String {
        self.messages
            .iter()
            .filter(|(role, _)| role == wanted)
            .map(|(_, content)| content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn prompt_tokens(&self) -> u64 {
        let all: String = self.messages.iter().map(|(_, c)| c.as_str()).collect();
        estimate_tokens(&all)
    }
}

/// Checks the body like GLM's parameter validation (codes 1210/1211/1214).
fn parse_chat(body: &[u8]) -> Result<ChatIn, Refusal> {
    let bad = |code: &'static str, message: &'static str| Refusal {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        bad(
            "1210",
            "API 调用参数有误，请检查文档。(the body is not JSON)",
        )
    })?;
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| bad("1211", "模型不存在，请检查模型代码。(model is missing)"))?
        .to_owned();
    if json.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad("1210", "stream is not supported by the simulated GLM"));
    }
    if let Some(t) = json.get("temperature").filter(|t| !t.is_null())
        && !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
    {
        return Err(bad("1214", "temperature must be within [0, 1]"));
    }
    if let Some(stop) = json.get("stop").and_then(Value::as_array)
        && stop.len() > 1
    {
        return Err(bad("1214", "stop accepts at most one string"));
    }
    if let Some(kind) = json.pointer("/response_format/type")
        && !matches!(kind.as_str(), Some("text" | "json_object"))
    {
        return Err(bad(
            "1214",
            "response_format.type must be text or json_object",
        ));
    }
    let messages = json
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            bad(
                "1214",
                "messages 参数非法。请检查文档。(messages is missing or empty)",
            )
        })?;
    let mut parsed = Vec::with_capacity(messages.len());
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .filter(|r| matches!(*r, "system" | "user" | "assistant" | "tool"))
            .ok_or_else(|| bad("1214", "messages 参数非法。请检查文档。(unknown role)"))?;
        let content = match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            // OpenAI-style content parts: keep the text ones.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            _ => {
                return Err(bad(
                    "1214",
                    "messages 参数非法。请检查文档。(content must be text)",
                ));
            }
        };
        parsed.push((role.to_owned(), content));
    }
    if !parsed.iter().any(|(role, _)| role == "user") {
        return Err(bad(
            "1214",
            "messages 参数非法。请检查文档。(no user message)",
        ));
    }
    Ok(ChatIn {
        model,
        messages: parsed,
        max_tokens: json.get("max_tokens").and_then(Value::as_u64),
        request_id: json
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// `Authorization: Bearer KEY` (GLM codes 1001 missing, 1002 invalid; both HTTP 401).
fn check_auth(api_key: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: "1001",
            message: "Header中未收到Authorization参数，无法进行身份验证。",
        });
    };
    match value.strip_prefix("Bearer ") {
        Some(key) if !api_key.is_empty() && key.trim() == api_key => Ok(()),
        _ => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: "1002",
            message: "Authorization Token非法，请确认Authorization Token正确传递。",
        }),
    }
}

/// The fault for this request: a prompt rule, else the queue, else the every-request fault.
fn choose_fault(state: &mut GlmState, request: &ChatIn) -> Option<GlmFault> {
    let matched = state.prompt_rules.iter_mut().find(|rule| {
        rule.remaining != Some(0)
            && request
                .messages
                .iter()
                .any(|(_, content)| content.contains(&rule.needle))
    });
    if let Some(rule) = matched {
        if let Some(left) = rule.remaining.as_mut() {
            *left -= 1;
        }
        let fault = rule.fault.clone();
        state.prompt_rules.retain(|r| r.remaining != Some(0));
        return Some(fault);
    }
    if let Some(fault) = state.queue.pop_front() {
        return Some(fault);
    }
    if let Some((per_cent, fault)) = state.share.clone() {
        let mut x = state.share_rng.max(1).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.share_rng = x;
        if (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % 100 < u64::from(per_cent) {
            return Some(fault);
        }
    }
    state.every_request.clone()
}

pub(super) async fn chat(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Latency counts from the request's arrival: the time the simulator spends parsing the
    // prompt and writing the answer is part of it, as it is for a real model.
    let arrived = std::time::Instant::now();
    let mut guard = InFlight::enter(&inner);
    if let Err(refusal) = check_auth(&inner.api_key, &headers) {
        return guard.answer(refusal.into());
    }
    let request = match parse_chat(&body) {
        Ok(request) => request,
        Err(refusal) => return guard.answer(refusal.into()),
    };
    guard.call.model.clone_from(&request.model);
    guard.call.user_prompt = request.user_text();
    guard.call.system_prompt = request.text_of("system");
    let (fault, behaviour, id) = {
        let mut state = inner.lock();
        state.last_id += 1;
        (
            choose_fault(&mut state, &request),
            state.behaviour.clone(),
            state.last_id,
        )
    };
    guard.call.fault.clone_from(&fault);
    let (delay, answer) = respond(&request, fault.as_ref(), &behaviour, id);
    if !inner
        .stopper
        .sleep(delay.saturating_sub(arrived.elapsed()))
        .await
    {
        return guard.answer(Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "1234",
            "the simulated GLM is stopping",
        ));
    }
    guard.answer(answer)
}

/// What to answer and after how long.
fn respond(
    request: &ChatIn,
    fault: Option<&GlmFault>,
    behaviour: &GlmBehaviour,
    id: u64,
) -> (Duration, Answer) {
    let now = Duration::ZERO;
    let prompt_tokens = request.prompt_tokens();
    let error =
        |status: StatusCode, code: &str, message: &str| (now, Answer::error(status, code, message));
    match fault {
        Some(GlmFault::RateLimited) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "1302",
                "Rate limit reached for requests",
            );
        }
        Some(GlmFault::Overloaded) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "1305",
                "The service may be temporarily overloaded, please try again later",
            );
        }
        Some(GlmFault::Arrears) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "1113",
                "余额不足或无可用资源包,请充值。",
            );
        }
        Some(GlmFault::ServerError) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "500", "Internal Error");
        }
        Some(GlmFault::PromptTooLong) => {
            return error(StatusCode::BAD_REQUEST, "1261", "Prompt exceeds max length");
        }
        Some(GlmFault::ContentFiltered) => {
            return error(
                StatusCode::BAD_REQUEST,
                "1301",
                "系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提示语，感谢您的配合。",
            );
        }
        Some(GlmFault::Custom {
            status,
            code,
            message,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, code, message);
        }
        Some(GlmFault::NotCompletion) => {
            let response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<!doctype html><html><body><h1>Welcome</h1></body></html>\n",
            )
                .into_response();
            return (
                behaviour.latency,
                Answer {
                    status: StatusCode::OK,
                    response,
                    error_code: None,
                    finish_reason: None,
                    usage: None,
                },
            );
        }
        _ => {}
    }
    if behaviour
        .max_prompt_tokens
        .is_some_and(|max| prompt_tokens > max)
    {
        return error(StatusCode::BAD_REQUEST, "1261", "Prompt exceeds max length");
    }
    let (system, user) = (request.text_of("system"), request.user_text());
    let json_answer = describe::answer(&system, &user)
        .or_else(|| conversation::answer(&system, &user))
        .unwrap_or_else(|| rules::review_json(&user, behaviour.max_findings));
    let (mut content, mut finish_reason) = match fault {
        Some(GlmFault::SensitiveOutput) => (String::new(), "sensitive"),
        Some(GlmFault::Truncated) => {
            let half = json_answer.chars().count() / 2;
            (json_answer.chars().take(half).collect(), "length")
        }
        Some(GlmFault::NotJson) => (
            "I looked at the changes and they seem reasonable overall. Nothing stands out."
                .to_owned(),
            "stop",
        ),
        Some(GlmFault::Fenced) => (
            format!(
                "Here is my review:\n```json\n{json_answer}\n```\nLet me know if you need more."
            ),
            "stop",
        ),
        _ => (json_answer, "stop"),
    };
    // A request's own output cap truncates the answer as the real model would.
    if let Some(max) = request.max_tokens
        && estimate_tokens(&content) > max
    {
        let keep = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        content = content.chars().take(keep).collect();
        finish_reason = "length";
    }
    let completion_tokens = estimate_tokens(&content);
    let delay = match fault {
        Some(GlmFault::Slow(delay)) => *delay,
        _ => behaviour.latency,
    };
    let completion_id = format!("{}{id:012x}", Utc::now().format("%Y%m%d%H%M%S"));
    let body = json!({
        "id": completion_id,
        "request_id": request.request_id.clone().unwrap_or_else(|| completion_id.clone()),
        "created": Utc::now().timestamp(),
        "model": request.model,
        "choices": [{
            "index": 0,
            "finish_reason": finish_reason,
            "message": { "role": "assistant", "content": content },
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": { "cached_tokens": 0 },
        },
    });
    (
        delay,
        Answer {
            status: StatusCode::OK,
            response: json_response(StatusCode::OK, &body),
            error_code: None,
            finish_reason: Some(finish_reason.to_owned()),
            usage: Some((prompt_tokens, completion_tokens)),
        },
    )
}
