//! Faults and auth: 429s and 5xx as the client classifies them, 401 for a bad token, added
//! latency, and shutdown.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    gitlab::Error,
    sim::gitlab::{GitLabFault, Route},
};

use super::{PROJECT, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

#[tokio::test]
async fn a_429_with_plain_text_retry_later_is_classified_retry_after() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(
        Route::Diffs,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );

    let error = client.diffs(&project(PROJECT), 1).await.expect_err("429");

    match &error {
        Error::RateLimited {
            retry_after,
            message,
        } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(1)));
            assert_eq!(message, "Retry later");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(1))
    );
    // The fault is used up: the retry succeeds.
    assert_eq!(
        client
            .diffs(&project(PROJECT), 1)
            .await
            .expect("diffs")
            .len(),
        4
    );
}

#[tokio::test]
async fn the_429_body_is_plain_text_with_retry_after_and_ratelimit_headers() {
    let gitlab = gitlab_with(four_files()).await;
    gitlab.fail_next_any(
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v4/projects/1/merge_requests/1",
            gitlab.base_url()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    assert!(response.headers().contains_key("ratelimit-resettime"));
    assert_eq!(response.text().await.expect("body"), "Retry later\n");
}

#[tokio::test]
async fn a_429_without_hints_and_5xx_answers_are_classified_retry() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(Route::MergeRequest, 1, GitLabFault::RateLimitedWithoutHint);
    gitlab.fail_next(Route::MergeRequest, 1, GitLabFault::ServerError);
    gitlab.fail_next(Route::MergeRequest, 1, GitLabFault::BadGateway);

    for expected_status in [429, 500, 502] {
        let error = client
            .merge_request(&project(PROJECT), 1)
            .await
            .expect_err("fault");
        assert_eq!(
            error.disposition(),
            Disposition::Retry,
            "{expected_status}: {error:?}"
        );
    }
    assert!(client.merge_request(&project(PROJECT), 1).await.is_ok());
    let statuses: Vec<u16> = gitlab.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 500, 502, 200]);
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_and_is_classified_auth() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), "wrong");

    let error = client
        .merge_request(&project(PROJECT), 1)
        .await
        .expect_err("401");

    assert!(
        matches!(&error, Error::Auth { status: 401, message } if message == "401 Unauthorized"),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Fatal);
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v4/projects/1/merge_requests/1",
            gitlab.base_url()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"message": "401 Unauthorized"}));
}

#[tokio::test]
async fn latency_and_delay_faults_slow_answers_down() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.set_latency(Duration::from_millis(50));
    gitlab.fail_next(
        Route::MergeRequest,
        1,
        GitLabFault::Delay(Duration::from_millis(200)),
    );

    let started = std::time::Instant::now();
    client
        .merge_request(&project(PROJECT), 1)
        .await
        .expect("MR");

    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn the_server_stops_on_shutdown() {
    let gitlab = gitlab_with(four_files()).await;
    let base = gitlab.base_url().to_owned();
    let client = gitlab_client(&base, TOKEN);
    client
        .merge_request(&project(PROJECT), 1)
        .await
        .expect("MR");

    gitlab.shutdown().await;

    let fresh = gitlab_client(&base, TOKEN);
    let error = fresh
        .merge_request(&project(PROJECT), 1)
        .await
        .expect_err("stopped");
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
}
