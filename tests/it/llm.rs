//! LLM client against a wiremock GLM / OpenAI-compatible server.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    llm::{ChatRequest, Error, ErrorKind, LlmClient, LlmConfig, Message, Thinking},
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use url::Url;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, header, method, path},
};

const KEY: &str = "0123456789abcdef.SeCrEtKeYvAlUe";
const ENDPOINT: &str = "/api/paas/v4/chat/completions";

fn fixture(name: &str) -> Value {
    let text = match name {
        "completion" => include_str!("../fixtures/glm/completion.json"),
        "finish_length" => include_str!("../fixtures/glm/finish_length.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("fixture is JSON")
}

fn config(server: &MockServer) -> LlmConfig {
    let mut config = LlmConfig::new(
        Url::parse(&format!("{}/api/paas/v4", server.uri())).expect("url"),
        Some(SecretString::from(KEY)),
        "glm-4.6",
    );
    config.timeout = Duration::from_secs(5);
    config
}

fn client(server: &MockServer) -> LlmClient {
    LlmClient::new(config(server)).expect("client builds")
}

fn review_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::system("You review code. Answer with one JSON object."),
            Message::user("@@ -1 +1 @@\n-a\n+b"),
        ],
        temperature: Some(0.2),
        max_tokens: Some(4096),
        json_object: true,
        request_id: None,
    }
}

/// Asserts the key shows up neither in the error's Display nor in its Debug.
fn assert_no_key(error: &Error) {
    assert!(!error.to_string().contains(KEY), "key in Display: {error}");
    assert!(
        !format!("{error:?}").contains(KEY),
        "key in Debug: {error:?}"
    );
}

/// One call against a server answering `template`; asserts exactly one request was sent.
async fn error_for(template: ResponseTemplate) -> Error {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .complete(&review_request())
        .await
        .expect_err("call fails");
    assert_no_key(&error);
    error
}

fn glm_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": {"code": code, "message": message}}))
}

#[tokio::test]
async fn a_completion_sends_bearer_auth_model_messages_json_mode_and_disabled_thinking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "model": "glm-4.6",
            "messages": [
                {"role": "system", "content": "You review code. Answer with one JSON object."},
                {"role": "user", "content": "@@ -1 +1 @@\n-a\n+b"}
            ],
            "stream": false,
            "temperature": 0.2,
            "max_tokens": 4096,
            "response_format": {"type": "json_object"},
            "thinking": {"type": "disabled"}
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("completion")))
        .expect(1)
        .mount(&server)
        .await;

    let completion = client(&server)
        .complete(&review_request())
        .await
        .expect("completion");

    assert!(
        completion
            .content
            .starts_with("{\"summary\":\"Looks fine.\"")
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.http_status, 200);
    assert_eq!(completion.model, "glm-4.6");
    assert_eq!(
        completion.request_id.as_deref(),
        Some("20251105171522a1b2c3d4e5f64a1b")
    );
    assert_eq!(completion.usage.prompt_tokens, Some(1234));
    assert_eq!(completion.usage.completion_tokens, Some(56));
    assert_eq!(completion.usage.total_tokens, Some(1290));
    assert_eq!(completion.usage.cached_tokens, Some(1024));
    assert_eq!(completion.usage.reasoning_tokens, None);
}

#[tokio::test]
async fn an_ollama_style_server_gets_no_glm_fields_no_auth_and_may_omit_ids_and_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_json(json!({
            "model": "qwen2.5-coder:7b",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": false
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hello"}}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = LlmConfig::new(
        Url::parse(&format!("{}/v1/", server.uri())).expect("url"),
        None,
        "qwen2.5-coder:7b",
    );
    config.json_mode = false;
    let client = LlmClient::new(config).expect("client");
    let mut request = ChatRequest::new(vec![Message::user("hi")]);
    request.json_object = true;

    let completion = client.complete(&request).await.expect("completion");

    assert_eq!(completion.content, "hello");
    assert_eq!(
        completion.model, "qwen2.5-coder:7b",
        "falls back to the configured model"
    );
    assert_eq!(completion.usage, Default::default());
    assert_eq!(completion.request_id, None);
    let requests = server.received_requests().await.expect("recorded");
    assert!(requests[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn thinking_can_be_enabled_and_a_request_id_is_passed_through() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(wiremock::matchers::body_partial_json(json!({
            "thinking": {"type": "enabled"},
            "request_id": "job-7-chunk-3-attempt-2"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("completion")))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.thinking = Some(Thinking::Enabled);
    let mut request = review_request();
    request.request_id = Some("job-7-chunk-3-attempt-2".into());

    LlmClient::new(config)
        .expect("client")
        .complete(&request)
        .await
        .expect("completion");
}

#[tokio::test]
async fn glm_1302_is_a_rate_limit_retried_with_backoff_and_only_one_request_is_sent() {
    let error = error_for(glm_error(429, "1302", "Rate limit reached for requests")).await;
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.http_status, Some(429));
    assert_eq!(error.provider_code.as_deref(), Some("1302"));
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(
        error
            .to_string()
            .contains("Rate limit reached for requests")
    );
}

#[tokio::test]
async fn glm_1303_is_a_rate_limit_too() {
    let error = error_for(glm_error(429, "1303", "request frequency too high")).await;
    assert_eq!(error.kind, ErrorKind::RateLimited);
}

#[tokio::test]
async fn a_retry_after_header_is_honoured() {
    let error = error_for(
        glm_error(429, "1302", "Rate limit reached for requests")
            .insert_header("retry-after", "12"),
    )
    .await;
    assert_eq!(error.retry_after, Some(Duration::from_secs(12)));
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(12))
    );
}

#[tokio::test]
async fn glm_1305_and_1312_mean_the_model_is_overloaded_and_retryable() {
    for code in ["1305", "1312"] {
        let error = error_for(glm_error(
            429,
            code,
            "The service may be temporarily overloaded",
        ))
        .await;
        assert_eq!(error.kind, ErrorKind::Overloaded, "{code}");
        assert_eq!(error.disposition(), Disposition::Retry);
    }
}

#[tokio::test]
async fn glm_1113_arrears_is_quota_exhausted_and_fatal_with_a_message_saying_so() {
    let error = error_for(ResponseTemplate::new(429).set_body_json(json!({
        "error": {"code": "1113", "message": "余额不足或无可用资源包,请充值。"},
        "request_id": "202512211335142b05cc4f9bbb4e6c"
    })))
    .await;
    assert_eq!(error.kind, ErrorKind::QuotaExhausted);
    assert_eq!(error.disposition(), Disposition::Fatal);
    assert_eq!(
        error.request_id.as_deref(),
        Some("202512211335142b05cc4f9bbb4e6c")
    );
    let text = error.to_string();
    assert!(text.contains("balance or quota is exhausted"), "{text}");
    assert!(text.contains("HTTP 429, code 1113"), "{text}");
}

#[tokio::test]
async fn daily_and_usage_cap_codes_are_quota_exhausted() {
    for (code, message) in [
        ("1304", "daily call limit reached"),
        (
            "1308",
            "Usage limit reached for 5 hour. Your limit will reset at 2026-05-25 19:22:49",
        ),
        (
            "1310",
            "Weekly/Monthly Limit Exhausted. Your limit will reset at 2026-06-01 00:00:00",
        ),
    ] {
        let error = error_for(glm_error(429, code, message)).await;
        assert_eq!(error.kind, ErrorKind::QuotaExhausted, "{code}");
        assert_eq!(error.disposition(), Disposition::Fatal);
        assert!(error.message.contains(message));
    }
}

#[tokio::test]
async fn a_balance_429_without_a_code_is_still_quota_exhausted() {
    let error = error_for(
        ResponseTemplate::new(429)
            .set_body_json(json!({"error": {"message": "Insufficient balance or no resource package. Please recharge."}})),
    )
    .await;
    assert_eq!(error.kind, ErrorKind::QuotaExhausted);
}

#[tokio::test]
async fn auth_codes_and_401_are_fatal_auth_errors() {
    for code in ["1000", "1001", "1002", "1003", "1004"] {
        let error = error_for(glm_error(401, code, "令牌已过期或验证不正确")).await;
        assert_eq!(error.kind, ErrorKind::Auth, "{code}");
        assert_eq!(error.disposition(), Disposition::Fatal);
        assert!(error.to_string().contains("GLM_API_KEY"));
    }
    let error = error_for(ResponseTemplate::new(401).set_body_string("Unauthorized")).await;
    assert_eq!(error.kind, ErrorKind::Auth);
    assert_eq!(error.provider_code, None);
}

#[tokio::test]
async fn glm_1301_content_filter_is_fatal() {
    let error = error_for(glm_error(
        400,
        "1301",
        "系统检测到输入或生成内容可能包含不安全或敏感内容",
    ))
    .await;
    assert_eq!(error.kind, ErrorKind::ContentFiltered);
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn glm_1261_prompt_too_long_asks_the_caller_to_split_the_chunk() {
    let error = error_for(glm_error(400, "1261", "Prompt exceeds max length")).await;
    assert_eq!(error.kind, ErrorKind::ContextTooLong);
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn finish_reason_length_is_context_too_long_and_keeps_the_usage_for_the_ledger() {
    let error = error_for(ResponseTemplate::new(200).set_body_json(fixture("finish_length"))).await;
    assert_eq!(error.kind, ErrorKind::ContextTooLong);
    assert_eq!(error.http_status, Some(200));
    assert_eq!(error.usage.prompt_tokens, Some(190000));
    assert_eq!(error.usage.completion_tokens, Some(8192));
    assert_eq!(error.usage.total_tokens, Some(198192));
    assert_eq!(
        error.request_id.as_deref(),
        Some("20251105171999f0e1d2c3b4a59687")
    );
    assert!(error.to_string().contains("\"length\""));
}

#[tokio::test]
async fn finish_reasons_for_moderation_and_window_overflow_are_classified() {
    for (reason, kind) in [
        ("sensitive", ErrorKind::ContentFiltered),
        ("content_filter", ErrorKind::ContentFiltered),
        ("model_context_window_exceeded", ErrorKind::ContextTooLong),
        ("network_error", ErrorKind::Server),
    ] {
        let mut body = fixture("completion");
        body["choices"][0]["finish_reason"] = json!(reason);
        let error = error_for(ResponseTemplate::new(200).set_body_json(body)).await;
        assert_eq!(error.kind, kind, "{reason}");
    }
}

#[tokio::test]
async fn openai_style_errors_with_word_or_numeric_codes_are_classified() {
    let cases = [
        (
            429,
            json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
            ErrorKind::QuotaExhausted,
            Some("insufficient_quota"),
        ),
        (
            400,
            json!({"error": {"message": "maximum context length is 8192 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
            ErrorKind::ContextTooLong,
            Some("context_length_exceeded"),
        ),
        (
            400,
            json!({"object": "error", "message": "bad field", "type": "BadRequestError", "param": null, "code": 400}),
            ErrorKind::BadRequest,
            Some("400"),
        ),
        (
            429,
            json!({"error": {"code": 1302, "message": "numeric code"}}),
            ErrorKind::RateLimited,
            Some("1302"),
        ),
        (
            429,
            json!({"type": "error", "error": {"type": "1308", "message": "您的限额将在 2025/12/09 重置。"}}),
            ErrorKind::QuotaExhausted,
            None,
        ),
    ];
    for (status, body, kind, code) in cases {
        let error = error_for(ResponseTemplate::new(status).set_body_json(body.clone())).await;
        assert_eq!(error.kind, kind, "{body}");
        assert_eq!(error.provider_code.as_deref(), code, "{body}");
    }
}

#[tokio::test]
async fn an_ollama_model_not_found_is_a_fatal_bad_request() {
    let error = error_for(
        ResponseTemplate::new(404)
            .set_body_json(json!({"error": "model \"glm-4.6\" not found, try pulling it first"})),
    )
    .await;
    assert_eq!(error.kind, ErrorKind::BadRequest);
    assert_eq!(error.disposition(), Disposition::Fatal);
    assert!(
        error
            .to_string()
            .contains("not found, try pulling it first")
    );
}

#[tokio::test]
async fn server_errors_are_retryable_and_503_means_overloaded() {
    let error = error_for(glm_error(500, "500", "Internal Error")).await;
    assert_eq!(error.kind, ErrorKind::Server);
    assert_eq!(error.disposition(), Disposition::Retry);
    let error =
        error_for(ResponseTemplate::new(502).set_body_raw("<html>502</html>", "text/html")).await;
    assert_eq!(error.kind, ErrorKind::Server);
    assert_eq!(error.message, "<html>502</html>");
    let error = error_for(ResponseTemplate::new(503).insert_header("retry-after", "3")).await;
    assert_eq!(error.kind, ErrorKind::Overloaded);
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(3))
    );
}

#[tokio::test]
async fn a_200_that_is_not_a_chat_completion_is_an_invalid_response() {
    let error =
        error_for(ResponseTemplate::new(200).set_body_raw("<html>login</html>", "text/html")).await;
    assert_eq!(error.kind, ErrorKind::InvalidResponse);
    assert_eq!(error.disposition(), Disposition::Fatal);
    assert!(error.to_string().contains("GLM_BASE_URL"));

    let error = error_for(
        ResponseTemplate::new(200)
            .set_body_json(json!({"choices": [], "usage": {"prompt_tokens": 5}})),
    )
    .await;
    assert_eq!(error.kind, ErrorKind::InvalidResponse);
    assert_eq!(error.usage.prompt_tokens, Some(5));
}

#[tokio::test]
async fn an_error_object_inside_a_200_is_classified_by_its_code() {
    let error = error_for(glm_error(200, "1302", "Rate limit reached for requests")).await;
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.http_status, Some(200));
}

#[tokio::test]
async fn an_oversized_body_with_content_length_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(10_000)))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.max_response_bytes = 1000;
    let error = LlmClient::new(config)
        .expect("client")
        .complete(&review_request())
        .await
        .expect_err("too large");
    assert_eq!(error.kind, ErrorKind::InvalidResponse);
    assert!(
        error.to_string().contains("exceeds the 1000-byte limit"),
        "{error}"
    );
}

/// A raw HTTP/1.1 server that streams an endless-looking chunked body with no
/// Content-Length, as a hostile or broken server might.
async fn chunked_flood_server() -> (Url, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut buffer = vec![0u8; 64 * 1024];
        let _ = socket.read(&mut buffer).await;
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
        // Bounded: 256 chunks (1 MiB) at most, far past the test's limit.
        for _ in 0..256 {
            if socket.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
    });
    let url = Url::parse(&format!("http://{address}/v1")).expect("url");
    (url, task)
}

#[tokio::test]
async fn an_oversized_streamed_body_without_content_length_is_cut_off() {
    let (url, server) = chunked_flood_server().await;
    let mut config = LlmConfig::new(url, None, "glm-4.6");
    config.max_response_bytes = 64 * 1024;
    let error = LlmClient::new(config)
        .expect("client")
        .complete(&review_request())
        .await
        .expect_err("too large");
    assert_eq!(error.kind, ErrorKind::InvalidResponse);
    assert!(error.message.contains("65536-byte limit"), "{error}");
    server.abort();
}

#[tokio::test]
async fn a_slow_provider_ends_in_a_retryable_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("completion"))
                .set_delay(Duration::from_secs(2)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.timeout = Duration::from_millis(200);
    let error = LlmClient::new(config)
        .expect("client")
        .complete(&review_request())
        .await
        .expect_err("timeout");
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(error.http_status, None);
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_transport_error() {
    let (socket, url) = closed_port();
    let config = LlmConfig::new(url, Some(SecretString::from(KEY)), "glm-4.6");
    let error = LlmClient::new(config)
        .expect("client")
        .complete(&review_request())
        .await
        .expect_err("nothing listens");
    assert_eq!(error.kind, ErrorKind::Transport);
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(std::error::Error::source(&error).is_some());
    assert_no_key(&error);
    drop(socket);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let error = error_for(
        ResponseTemplate::new(301)
            .insert_header("location", "https://elsewhere.invalid/v4/chat/completions"),
    )
    .await;
    assert_eq!(error.kind, ErrorKind::BadRequest);
    assert_eq!(error.http_status, Some(301));
}

#[tokio::test]
async fn the_api_key_never_appears_in_debug_output_or_error_messages() {
    let server = MockServer::start().await;
    // A gateway that echoes the Authorization header in its error.
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(glm_error(
            401,
            "1002",
            &format!("Invalid token: Bearer {KEY}"),
        ))
        .mount(&server)
        .await;
    let client = client(&server);
    assert!(!format!("{client:?}").contains(KEY));
    assert!(!format!("{:?}", config(&server)).contains(KEY));

    let error = client.complete(&review_request()).await.expect_err("401");
    assert_no_key(&error);
    assert!(error.message.contains("[REDACTED]"));
}

/// A loopback port that is bound but not listening, so connecting is refused. (A dropped
/// wiremock server cannot serve here: wiremock pools and reuses its servers.)
fn closed_port() -> (tokio::net::TcpSocket, Url) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind loopback");
    let address = socket.local_addr().expect("address");
    (
        socket,
        Url::parse(&format!("http://{address}/")).expect("url"),
    )
}
