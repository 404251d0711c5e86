//! GitLab client against a wiremock GitLab.

use std::time::Duration;

use reviewq::gitlab::{DiffFile, DiffShas, Error, GitLabClient, GitLabConfig, ProjectRef};
use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, header, method, path},
};

mod comments;
mod drafts;
mod errors;
mod merge_requests;

const TOKEN: &str = "glpat-s3cr3t-T0KEN-value";
const MR_PATH: &str = "/api/v4/projects/group%2Fsub%2Fproj/merge_requests/11";

fn fixture(name: &str) -> Value {
    let text = match name {
        "merge_request" => include_str!("../fixtures/gitlab/merge_request.json"),
        "versions" => include_str!("../fixtures/gitlab/versions.json"),
        "diffs_page1" => include_str!("../fixtures/gitlab/diffs_page1.json"),
        "diffs_page2" => include_str!("../fixtures/gitlab/diffs_page2.json"),
        "diffs_page3" => include_str!("../fixtures/gitlab/diffs_page3.json"),
        "discussions" => include_str!("../fixtures/gitlab/discussions.json"),
        "discussions_page2" => include_str!("../fixtures/gitlab/discussions_page2.json"),
        "created_diff_discussion" => {
            include_str!("../fixtures/gitlab/created_diff_discussion.json")
        }
        "note" => include_str!("../fixtures/gitlab/note.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("fixture is JSON")
}

fn config(server: &MockServer) -> GitLabConfig {
    let mut config = GitLabConfig::new(
        Url::parse(&server.uri()).expect("mock server URI"),
        SecretString::from(TOKEN),
    );
    config.timeout = Duration::from_secs(5);
    config.diff_refs_delay = Duration::from_millis(10);
    // These tests check what one exchange answers; retries have tests of their own.
    config.retry_for = Duration::ZERO;
    config
}

fn client(server: &MockServer) -> GitLabClient {
    GitLabClient::new(config(server)).expect("client builds")
}

fn project() -> ProjectRef {
    "group/sub/proj".parse().expect("valid project path")
}

fn shas() -> DiffShas {
    DiffShas {
        base_sha: "5e6dffa282c5129aa67cd227a0429be21bfdaf80".into(),
        start_sha: "5e6dffa282c5129aa67cd227a0429be21bfdaf80".into(),
        head_sha: "f9ce7e16e56c162edbc9e480108041cf6b0291fe".into(),
    }
}

fn modified_file(path: &str) -> DiffFile {
    serde_json::from_value(json!({"old_path": path, "new_path": path, "diff": "@@ -1 +1 @@"}))
        .expect("diff file")
}

/// Asserts the token shows up neither in the error's Display nor in its Debug.
fn assert_no_token(error: &Error) {
    assert!(
        !error.to_string().contains(TOKEN),
        "token in Display: {error}"
    );
    assert!(
        !format!("{error:?}").contains(TOKEN),
        "token in Debug: {error:?}"
    );
}

/// Mounts a discussions endpoint that expects exactly `expected` as the JSON body.
async fn expect_discussion_body(server: &MockServer, expected: Value) {
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/discussions")))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .and(header("content-type", "application/json"))
        .and(body_json(expected))
        .respond_with(ResponseTemplate::new(201).set_body_json(fixture("created_diff_discussion")))
        .expect(1)
        .mount(server)
        .await;
}

fn expected_position(old_path: &str, new_path: &str, lines: Value) -> Value {
    let mut position = json!({
        "position_type": "text",
        "base_sha": "5e6dffa282c5129aa67cd227a0429be21bfdaf80",
        "start_sha": "5e6dffa282c5129aa67cd227a0429be21bfdaf80",
        "head_sha": "f9ce7e16e56c162edbc9e480108041cf6b0291fe",
        "old_path": old_path,
        "new_path": new_path,
    });
    if let (Some(target), Some(extra)) = (position.as_object_mut(), lines.as_object()) {
        target.extend(extra.clone());
    }
    position
}
