//! Failures: HTTP errors, rate limits, timeouts, redirects, bad configuration, and the
//! token kept out of every message.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    gitlab::{Error, GitLabClient, GitLabConfig},
};
use secrecy::SecretString;
use serde_json::json;
use url::Url;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path},
};

use super::{MR_PATH, TOKEN, assert_no_token, client, config, fixture, project};

async fn error_for(template: ResponseTemplate) -> Error {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .merge_request(&project(), 11)
        .await
        .expect_err("request fails");
    assert_no_token(&error);
    error
}

#[tokio::test]
async fn unauthorized_is_fatal_with_a_message_that_says_to_check_the_token() {
    let error =
        error_for(ResponseTemplate::new(401).set_body_json(json!({"message": "401 Unauthorized"})))
            .await;
    assert!(
        matches!(error, Error::Auth { status: 401, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Fatal);
    let text = error.to_string();
    assert!(
        text.contains("401 Unauthorized") && text.contains("GITLAB_TOKEN"),
        "{text}"
    );
}

#[tokio::test]
async fn forbidden_is_fatal_too() {
    let error =
        error_for(ResponseTemplate::new(403).set_body_json(json!({"message": "403 Forbidden"})))
            .await;
    assert!(
        matches!(error, Error::Auth { status: 403, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn not_found_is_fatal_and_says_what_was_not_found() {
    let error = error_for(
        ResponseTemplate::new(404).set_body_json(json!({"message": "404 Project Not Found"})),
    )
    .await;
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
    assert_eq!(
        error.to_string(),
        "not found: merge request group/sub/proj!11 (404 Project Not Found)"
    );
}

#[tokio::test]
async fn a_plain_text_retry_later_429_honours_retry_after() {
    let error = error_for(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "30")
            .set_body_raw("Retry later\n", "text/plain"),
    )
    .await;
    match &error {
        Error::RateLimited {
            retry_after,
            message,
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(30)));
            assert_eq!(message, "Retry later");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_429_with_only_ratelimit_reset_waits_until_that_time() {
    let reset = chrono::Utc::now().timestamp() + 120;
    let error = error_for(
        ResponseTemplate::new(429)
            .insert_header("ratelimit-reset", reset.to_string().as_str())
            .set_body_json(json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}})),
    )
    .await;
    match error.disposition() {
        Disposition::RetryAfter(after) => {
            assert!((115..=120).contains(&after.as_secs()), "{after:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_429_without_any_hint_is_retried_with_the_callers_backoff() {
    let error =
        error_for(ResponseTemplate::new(429).set_body_raw("Retry later\n", "text/plain")).await;
    assert!(matches!(
        error,
        Error::RateLimited {
            retry_after: None,
            ..
        }
    ));
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[tokio::test]
async fn server_errors_are_retryable() {
    for status in [500, 502, 503, 504] {
        let error = error_for(
            ResponseTemplate::new(status).set_body_raw("<html>bad gateway</html>", "text/html"),
        )
        .await;
        assert!(matches!(error, Error::Server { .. }), "{error:?}");
        assert_eq!(error.disposition(), Disposition::Retry);
    }
}

#[tokio::test]
async fn an_oversized_body_ends_in_a_clear_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(4096)))
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.max_response_bytes = 1024;
    let error = GitLabClient::new(config)
        .expect("client")
        .merge_request(&project(), 11)
        .await
        .expect_err("too large");
    assert!(
        matches!(error, Error::BodyTooLarge { limit: 1024, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("exceeds the 1024-byte limit"));
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_slow_server_ends_in_a_retryable_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("merge_request"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.timeout = Duration::from_millis(200);
    let error = GitLabClient::new(config)
        .expect("client")
        .merge_request(&project(), 11)
        .await
        .expect_err("timeout");
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_transport_error() {
    let (socket, url) = closed_port();
    let mut config = GitLabConfig::new(url, SecretString::from(TOKEN));
    config.retry_for = Duration::ZERO;
    let error = GitLabClient::new(config)
        .expect("client")
        .merge_request(&project(), 11)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);
    assert_no_token(&error);
    drop(socket);
}

#[tokio::test]
async fn a_truncated_json_body_is_retried_but_a_wrong_shape_is_fatal() {
    let error = error_for(
        ResponseTemplate::new(200).set_body_raw("{\"id\": 1, \"iid\"", "application/json"),
    )
    .await;
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retry);

    let error =
        error_for(ResponseTemplate::new(200).set_body_json(json!({"id": "not a number"}))).await;
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_same_origin_get_redirect_is_followed_with_the_token() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(
            ResponseTemplate::new(301)
                .insert_header("location", "/api/v4/projects/278964/merge_requests/11"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects/278964/merge_requests/11"))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("merge_request")))
        .expect(1)
        .mount(&server)
        .await;

    client(&server)
        .merge_request(&project(), 11)
        .await
        .expect("redirect followed");
}

#[tokio::test]
async fn a_redirected_post_or_a_redirect_to_another_host_is_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/notes")))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", "/api/v4/projects/1/merge_requests/11/notes"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://elsewhere.invalid/steal"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let error = client
        .post_note(&project(), 11, "hi")
        .await
        .expect_err("not followed");
    assert!(
        matches!(error, Error::Redirected { status: 302, .. }),
        "{error:?}"
    );
    let error = client
        .merge_request(&project(), 11)
        .await
        .expect_err("not followed");
    assert!(matches!(error, Error::Redirected { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn the_token_never_appears_in_debug_output_or_error_messages() {
    let server = MockServer::start().await;
    // A misbehaving proxy that echoes the request headers back in its error page.
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_raw(format!("bad token PRIVATE-TOKEN: {TOKEN}"), "text/plain"),
        )
        .mount(&server)
        .await;
    let client = client(&server);

    assert!(!format!("{client:?}").contains(TOKEN));
    assert!(!format!("{:?}", config(&server)).contains(TOKEN));
    let error = client.merge_request(&project(), 11).await.expect_err("401");
    assert_no_token(&error);
    assert!(error.to_string().contains("[REDACTED]"));
}

#[test]
fn an_invalid_ca_certificate_is_a_configuration_error() {
    let mut config = GitLabConfig::new(
        Url::parse("https://gitlab.example.com").expect("url"),
        SecretString::from(TOKEN),
    );
    config.ca_cert_pem =
        Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec());
    let error = GitLabClient::new(config).expect_err("bad PEM");
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(error.to_string().contains("CA certificate"));
}

#[test]
fn a_gitlab_url_with_credentials_or_a_non_http_scheme_is_refused() {
    for url in [
        "https://user:pw@gitlab.example.com",
        "ftp://gitlab.example.com",
    ] {
        let config = GitLabConfig::new(Url::parse(url).expect("url"), SecretString::from(TOKEN));
        let error = GitLabClient::new(config).expect_err(url);
        assert!(matches!(error, Error::Config(_)), "{error:?}");
        assert!(!error.to_string().contains("pw@"), "{error}");
    }
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
