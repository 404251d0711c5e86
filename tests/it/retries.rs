//! GitLab requests retried in place, against the simulated GitLab over HTTP: what is
//! retried (and after how long), what is not, and what a create with an unknown outcome
//! returns.

use crate::support::TOKEN;
use std::time::{Duration, Instant};

use reviewq::{
    gitlab::{Error, GitLabClient, GitLabConfig},
    sim::{FakeGitLab, GitLabFault, MrSpec, Route},
};
use secrecy::SecretString;
use url::Url;

const PROJECT: &str = "group/project";

async fn gitlab() -> FakeGitLab {
    let gitlab = FakeGitLab::start(TOKEN).await.unwrap();
    gitlab.add_merge_request(MrSpec::default()).unwrap();
    gitlab
}

/// A client with the default retry deadline (`GITLAB_RETRY_SECS` = 120).
fn client(gitlab: &FakeGitLab, token: &str) -> GitLabClient {
    let mut config = GitLabConfig::new(
        Url::parse(gitlab.base_url()).unwrap(),
        SecretString::from(token.to_owned()),
    );
    config.timeout = Duration::from_secs(5);
    GitLabClient::new(config).unwrap()
}

#[tokio::test]
async fn a_rate_limited_get_waits_exactly_retry_after_then_succeeds_in_place() {
    let gitlab = gitlab().await;
    gitlab.fail_next(
        Route::MergeRequest,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let started = Instant::now();
    let mr = client(&gitlab, TOKEN)
        .merge_request(&PROJECT.parse().unwrap(), 1)
        .await
        .expect("retried after the 429");
    let took = started.elapsed();
    assert_eq!(mr.iid, 1);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(gitlab.request_count(Route::MergeRequest), 2);
}

#[tokio::test]
async fn a_get_answered_502_then_500_is_retried_until_it_succeeds() {
    let gitlab = gitlab().await;
    gitlab.fail_next(Route::Diffs, 1, GitLabFault::BadGateway);
    gitlab.fail_next(Route::Diffs, 1, GitLabFault::ServerError);
    client(&gitlab, TOKEN)
        .diffs(&PROJECT.parse().unwrap(), 1)
        .await
        .expect("retried in place");
    assert_eq!(gitlab.request_count(Route::Diffs), 3);
}

#[tokio::test]
async fn a_note_stored_before_a_500_is_not_sent_again_by_the_client() {
    let gitlab = gitlab().await;
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    let error = client(&gitlab, TOKEN)
        .post_note(&PROJECT.parse().unwrap(), 1, "hello <!-- reviewq:x -->")
        .await
        .expect_err("the outcome is unknown");
    assert!(matches!(error, Error::OutcomeUnknown { .. }), "{error:?}");
    assert_eq!(gitlab.request_count(Route::CreateNote), 1);
    assert_eq!(gitlab.notes(PROJECT, 1).unwrap().len(), 1);
}

#[tokio::test]
async fn a_rate_limited_post_is_retried_since_gitlab_stored_nothing() {
    let gitlab = gitlab().await;
    gitlab.fail_next(
        Route::CreateNote,
        1,
        GitLabFault::RateLimited {
            retry_after_secs: 1,
        },
    );
    client(&gitlab, TOKEN)
        .post_note(&PROJECT.parse().unwrap(), 1, "hello")
        .await
        .expect("retried after the 429");
    assert_eq!(gitlab.request_count(Route::CreateNote), 2);
    assert_eq!(gitlab.notes(PROJECT, 1).unwrap().len(), 1);
}

#[tokio::test]
async fn a_401_and_a_404_fail_at_once_with_no_retry() {
    let gitlab = gitlab().await;
    let started = Instant::now();
    let error = client(&gitlab, "glpat-wrong")
        .merge_request(&PROJECT.parse().unwrap(), 1)
        .await
        .expect_err("401");
    assert!(
        matches!(error, Error::Auth { status: 401, .. }),
        "{error:?}"
    );
    let error = client(&gitlab, TOKEN)
        .merge_request(&PROJECT.parse().unwrap(), 99)
        .await
        .expect_err("404");
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(gitlab.request_count(Route::MergeRequest), 2);
}
