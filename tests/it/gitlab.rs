//! GitLab client against a wiremock GitLab.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    gitlab::{
        DiffFile, DiffShas, Error, GitLabClient, GitLabConfig, LineAnchor, Position, ProjectRef,
    },
};
use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, header, method, path, query_param},
};

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

#[tokio::test]
async fn merge_request_is_fetched_with_private_token_and_url_encoded_project_path() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("merge_request")))
        .expect(1)
        .mount(&server)
        .await;

    let mr = client(&server)
        .merge_request(&project(), 11)
        .await
        .expect("MR fetched");

    assert_eq!(mr.iid, 14656);
    assert_eq!(mr.changes_count.as_deref(), Some("35"));
    assert_eq!(mr.state, "opened");
    assert_eq!(
        mr.author.as_ref().map(|a| a.username.as_str()),
        Some("alexkalderimis")
    );
    let shas = mr.diff_shas().expect("diff_refs present");
    assert_eq!(shas.head_sha, "8e0b45049b6253b8984cde9241830d2851168142");
    assert_eq!(shas.base_sha, "dd692733bb84bc3e9e862e66c099daec2fa00c83");
    assert_eq!(mr.labels, ["backend", "database"]);
}

#[tokio::test]
async fn numeric_project_id_is_used_verbatim_and_a_gitlab_url_under_a_subpath_is_kept() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/gitlab/api/v4/projects/278964/merge_requests/14656"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("merge_request")))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.base_url = Url::parse(&format!("{}/gitlab/", server.uri())).expect("url");
    let client = GitLabClient::new(config).expect("client builds");

    let mr = client
        .merge_request(&ProjectRef::Id(278964), 14656)
        .await
        .expect("MR fetched");
    assert_eq!(mr.project_id, 278964);
}

#[test]
fn project_refs_parse_ids_and_paths_and_reject_what_gitlab_cannot_route() {
    assert_eq!("42".parse::<ProjectRef>(), Ok(ProjectRef::Id(42)));
    assert_eq!(
        "/group/sub/proj/".parse::<ProjectRef>(),
        Ok(ProjectRef::Path("group/sub/proj".into()))
    );
    assert_eq!(
        ProjectRef::Path("my.group/sub-1/proj_x".into()).to_path_segment(),
        "my.group%2Fsub-1%2Fproj_x"
    );
    for bad in ["", "proj", "group//proj", "group/my proj"] {
        let error = bad.parse::<ProjectRef>().expect_err(bad);
        assert!(
            error
                .to_string()
                .contains("expected a numeric id or a path")
        );
    }
}

#[tokio::test]
async fn diffs_are_collected_across_three_pages_until_x_next_page_is_empty() {
    let server = MockServer::start().await;
    let diffs_path = format!("{MR_PATH}/diffs");
    for (page, next, body) in [
        ("1", "2", "diffs_page1"),
        ("2", "3", "diffs_page2"),
        ("3", "", "diffs_page3"),
    ] {
        Mock::given(method("GET"))
            .and(path(diffs_path.as_str()))
            .and(query_param("page", page))
            .and(query_param("per_page", "100"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("x-next-page", next)
                    .insert_header("x-page", page)
                    .set_body_json(fixture(body)),
            )
            .expect(1)
            .mount(&server)
            .await;
    }

    let diffs = client(&server).diffs(&project(), 11).await.expect("diffs");

    let paths: Vec<_> = diffs.iter().map(|d| d.new_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "README",
            "VERSION",
            "src/new_module.rs",
            "src/legacy.rs",
            "docs/new_name.md"
        ]
    );
    // Older GitLab omits generated_file/collapsed/too_large; null means false.
    assert!(diffs[2].new_file && !diffs[2].collapsed && !diffs[2].too_large);
    assert!(diffs[3].deleted_file);
    assert!(diffs[4].renamed_file && diffs[4].too_large && !diffs[4].generated_file);
    assert_eq!(diffs[4].old_path, "docs/old_name.md");
}

#[tokio::test]
async fn pagination_that_does_not_advance_is_an_error_instead_of_a_loop() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/notes")))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "1")
                .set_body_json(json!([])),
        )
        .expect(1)
        .mount(&server)
        .await;

    let error = client(&server)
        .notes(&project(), 11)
        .await
        .expect_err("loop");
    assert!(matches!(error, Error::InvalidResponse { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn versions_are_listed_newest_first_and_the_latest_gives_the_position_shas() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/versions")))
        .and(query_param("per_page", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("versions")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/versions")))
        .and(query_param("per_page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("versions")))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let versions = client.versions(&project(), 11).await.expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].id, 164560414);

    let latest = client.latest_version(&project(), 11).await.expect("latest");
    assert_eq!(DiffShas::from(&latest), shas());
    assert_eq!(latest.real_size.as_deref(), Some("2"));
}

#[tokio::test]
async fn empty_diff_refs_right_after_creation_are_waited_for() {
    let server = MockServer::start().await;
    let mut fresh = fixture("merge_request");
    fresh["diff_refs"] = Value::Null;
    let mut half = fixture("merge_request");
    half["diff_refs"] = json!({"base_sha": null, "head_sha": null, "start_sha": null});
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(fresh))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(half))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("merge_request")))
        .expect(1)
        .mount(&server)
        .await;

    let (mr, shas) = client(&server)
        .merge_request_with_diff_refs(&project(), 11)
        .await
        .expect("diff_refs arrive on the third fetch");
    assert_eq!(mr.iid, 14656);
    assert_eq!(shas.start_sha, "dd692733bb84bc3e9e862e66c099daec2fa00c83");
}

#[tokio::test]
async fn diff_refs_still_empty_after_every_attempt_is_a_retryable_error() {
    let server = MockServer::start().await;
    let mut fresh = fixture("merge_request");
    fresh["diff_refs"] = Value::Null;
    Mock::given(method("GET"))
        .and(path(MR_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(fresh))
        .expect(3)
        .mount(&server)
        .await;
    let mut config = config(&server);
    config.diff_refs_attempts = 3;
    let client = GitLabClient::new(config).expect("client");

    let error = client
        .merge_request_with_diff_refs(&project(), 11)
        .await
        .expect_err("never filled");
    assert!(
        matches!(error, Error::DiffRefsPending { attempts: 3, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
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

#[tokio::test]
async fn inline_comment_on_an_added_line_sends_new_line_only_and_returns_the_diff_note_ids() {
    let server = MockServer::start().await;
    expect_discussion_body(
        &server,
        json!({"body": "Possible overflow here.",
               "position": expected_position("file.js", "file.js", json!({"new_line": 18}))}),
    )
    .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 18 },
    );

    let posted = client(&server)
        .post_discussion(&project(), 11, "Possible overflow here.", &position)
        .await
        .expect("posted");
    assert_eq!(posted.note_id, 2001);
    assert_eq!(
        posted.discussion_id,
        "d1ce3c1c8bd4c9a2a5e5f7c2f9b1b0a0c3e4d5f6"
    );
}

#[tokio::test]
async fn inline_comment_on_a_removed_line_sends_old_line_only() {
    let server = MockServer::start().await;
    expect_discussion_body(
        &server,
        json!({"body": "Why remove this?",
               "position": expected_position("README", "README", json!({"old_line": 463}))}),
    )
    .await;
    let position = Position::new(
        shas(),
        &modified_file("README"),
        LineAnchor::Removed { old_line: 463 },
    );

    client(&server)
        .post_discussion(&project(), 11, "Why remove this?", &position)
        .await
        .expect("posted");
}

#[tokio::test]
async fn inline_comment_on_an_unchanged_line_sends_both_line_numbers() {
    let server = MockServer::start().await;
    expect_discussion_body(
        &server,
        json!({"body": "Context.",
               "position": expected_position("a.rs", "a.rs", json!({"old_line": 10, "new_line": 12}))}),
    )
    .await;
    let position = Position::new(
        shas(),
        &modified_file("a.rs"),
        LineAnchor::Unchanged {
            old_line: 10,
            new_line: 12,
        },
    );

    client(&server)
        .post_discussion(&project(), 11, "Context.", &position)
        .await
        .expect("posted");
}

#[test]
fn positions_on_new_deleted_and_renamed_files_follow_gitlab_path_rules() {
    let file = |json: Value| serde_json::from_value::<DiffFile>(json).expect("diff file");
    let added = file(json!({"old_path": "x", "new_path": "src/new.rs", "new_file": true}));
    let deleted = file(json!({"old_path": "src/old.rs", "new_path": "y", "deleted_file": true}));
    let renamed = file(json!({"old_path": "a.md", "new_path": "b.md", "renamed_file": true}));

    let p = Position::new(shas(), &added, LineAnchor::Added { new_line: 1 });
    assert_eq!(
        (p.old_path.as_str(), p.new_path.as_str()),
        ("src/new.rs", "src/new.rs")
    );
    let p = Position::new(shas(), &deleted, LineAnchor::Removed { old_line: 1 });
    assert_eq!(
        (p.old_path.as_str(), p.new_path.as_str()),
        ("src/old.rs", "src/old.rs")
    );
    let p = Position::new(
        shas(),
        &renamed,
        LineAnchor::Unchanged {
            old_line: 3,
            new_line: 3,
        },
    );
    assert_eq!((p.old_path.as_str(), p.new_path.as_str()), ("a.md", "b.md"));
}

#[tokio::test]
async fn a_discussion_gitlab_did_not_make_inline_is_reported_with_its_ids_and_not_retried() {
    let server = MockServer::start().await;
    let mut created = fixture("created_diff_discussion");
    created["notes"][0]["type"] = json!("DiscussionNote");
    created["notes"][0]["position"] = Value::Null;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/discussions")))
        .respond_with(ResponseTemplate::new(201).set_body_json(created))
        .expect(1)
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 18 },
    );

    let error = client(&server)
        .post_discussion(&project(), 11, "x", &position)
        .await
        .expect_err("not a DiffNote");
    match &error {
        Error::NotDiffNote {
            discussion_id,
            note_id,
            note_type,
        } => {
            assert_eq!(discussion_id, "d1ce3c1c8bd4c9a2a5e5f7c2f9b1b0a0c3e4d5f6");
            assert_eq!(*note_id, 2001);
            assert_eq!(note_type.as_deref(), Some("DiscussionNote"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_line_code_400_is_a_rejected_position_that_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/discussions")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "message": "400 Bad request - Note {:line_code=>[\"can't be blank\", \"must be a valid line code\"]}"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 999 },
    );

    let error = client(&server)
        .post_discussion(&project(), 11, "x", &position)
        .await
        .expect_err("rejected");
    assert!(matches!(error, Error::PositionRejected { .. }), "{error:?}");
    assert!(error.to_string().contains("must be a valid line code"));
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_grape_position_validation_error_is_also_a_rejected_position() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/discussions")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "position[position_type] does not have a valid value"
        })))
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 1 },
    );

    let error = client(&server)
        .post_discussion(&project(), 11, "x", &position)
        .await
        .expect_err("rejected");
    assert!(matches!(error, Error::PositionRejected { .. }), "{error:?}");
}

#[tokio::test]
async fn a_zero_line_number_is_rejected_locally_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Removed { old_line: 0 },
    );

    let error = client(&server)
        .post_discussion(&project(), 11, "x", &position)
        .await
        .expect_err("rejected");
    assert!(matches!(error, Error::PositionRejected { .. }), "{error:?}");
}

#[tokio::test]
async fn a_note_is_posted_as_json_and_returned() {
    let server = MockServer::start().await;
    let body = "## reviewq summary\n<!-- reviewq:summary -->";
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/notes")))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .and(body_json(json!({ "body": body })))
        .respond_with(ResponseTemplate::new(201).set_body_json(fixture("note")))
        .expect(1)
        .mount(&server)
        .await;

    let note = client(&server)
        .post_note(&project(), 11, body)
        .await
        .expect("posted");
    assert_eq!(note.id, 3001);
    assert_eq!(note.note_type, None);
    assert!(note.body.contains("<!-- reviewq:summary -->"));
}

#[tokio::test]
async fn a_body_with_a_quick_action_line_is_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;

    let error = client(&server)
        .post_note(&project(), 11, "Looks good.\n/merge\n")
        .await
        .expect_err("refused");
    assert!(matches!(error, Error::UnsafeBody { line: 2 }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_note_is_edited_in_place_with_put() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(format!("{MR_PATH}/notes/3001")))
        .and(body_json(json!({"body": "updated"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("note")))
        .expect(1)
        .mount(&server)
        .await;

    let note = client(&server)
        .update_note(&project(), 11, 3001, "updated")
        .await
        .expect("updated");
    assert_eq!(note.id, 3001);
}

#[tokio::test]
async fn a_discussion_is_resolved_with_put_and_the_resolved_flag() {
    let server = MockServer::start().await;
    let discussion = fixture("discussions")[1].clone();
    Mock::given(method("PUT"))
        .and(path(format!(
            "{MR_PATH}/discussions/87805b7c09016a7058e91bdbe7b29d1f284a39e6"
        )))
        .and(query_param("resolved", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_json(discussion))
        .expect(1)
        .mount(&server)
        .await;

    let discussion = client(&server)
        .resolve_discussion(
            &project(),
            11,
            "87805b7c09016a7058e91bdbe7b29d1f284a39e6",
            true,
        )
        .await
        .expect("resolved");
    assert_eq!(discussion.notes.len(), 1);
}

#[tokio::test]
async fn discussions_are_listed_across_pages_with_diff_note_positions_and_system_notes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/discussions")))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "2")
                .set_body_json(fixture("discussions")),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/discussions")))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "")
                .set_body_json(fixture("discussions_page2")),
        )
        .expect(1)
        .mount(&server)
        .await;

    let discussions = client(&server)
        .discussions(&project(), 11)
        .await
        .expect("listed");

    assert_eq!(discussions.len(), 3);
    let diff_note = &discussions[1].notes[0];
    assert!(diff_note.is_diff_note());
    assert!(diff_note.body.contains("<!-- reviewq:finding:abc -->"));
    let position = diff_note.position.as_ref().expect("position");
    assert_eq!((position.old_line, position.new_line), (Some(27), Some(27)));
    assert_eq!(position.new_path.as_deref(), Some("package.json"));
    assert!(discussions[2].notes[0].system);
    assert!(
        !discussions[2].notes[0].resolvable,
        "null resolvable reads as false"
    );
}

#[tokio::test]
async fn notes_are_listed_oldest_first_across_pages() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/notes")))
        .and(query_param("sort", "asc"))
        .and(query_param("order_by", "created_at"))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "2")
                .set_body_json(json!([fixture("note")])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/notes")))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([fixture("note")])))
        .expect(1)
        .mount(&server)
        .await;

    let notes = client(&server).notes(&project(), 11).await.expect("listed");
    assert_eq!(notes.len(), 2);
    assert_eq!(
        notes[0].author.as_ref().map(|a| a.username.as_str()),
        Some("reviewq-bot")
    );
}

#[tokio::test]
async fn a_raw_file_is_fetched_with_its_path_encoded_and_the_ref_as_query() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(
            "/api/v4/projects/group%2Fsub%2Fproj/repository/files/src%2Fmain.rs/raw",
        ))
        .and(query_param(
            "ref",
            "f9ce7e16e56c162edbc9e480108041cf6b0291fe",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("fn main() {}\n"))
        .expect(1)
        .mount(&server)
        .await;

    let bytes = client(&server)
        .get_file_raw(
            &project(),
            "src/main.rs",
            "f9ce7e16e56c162edbc9e480108041cf6b0291fe",
        )
        .await
        .expect("file");
    assert_eq!(bytes, b"fn main() {}\n");
}

#[tokio::test]
async fn a_missing_raw_file_is_a_not_found_error_and_an_empty_file_is_empty_bytes() {
    let server = MockServer::start().await;
    let raw = "/api/v4/projects/group%2Fsub%2Fproj/repository/files";
    Mock::given(method("GET"))
        .and(path(format!("{raw}/.reviewq.toml/raw")))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"message": "404 File Not Found"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{raw}/empty.txt/raw")))
        .respond_with(ResponseTemplate::new(200).set_body_string(""))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let missing = client
        .get_file_raw(&project(), ".reviewq.toml", "main")
        .await;
    let empty = client
        .get_file_raw(&project(), "empty.txt", "main")
        .await
        .expect("an empty file exists");

    // The caller tells "absent" from every other failure by the variant alone.
    let absent = match missing {
        Err(Error::NotFound { .. }) => None,
        Ok(bytes) => Some(bytes),
        Err(other) => panic!("expected NotFound, got {other:?}"),
    };
    assert_eq!(absent, None);
    assert!(empty.is_empty());
}

/// A page of `GET .../merge_requests/:iid/commits` in GitLab's shape (docs example fields).
fn commit_json(sha: &str, title: &str, parent_ids: Value) -> Value {
    json!({
        "id": sha,
        "short_id": &sha[..11],
        "created_at": "2012-09-20T11:50:22.000+03:00",
        "parent_ids": parent_ids,
        "title": title,
        "message": format!("{title}\n"),
        "author_name": "Example User",
        "author_email": "user@example.com",
        "authored_date": "2012-09-20T11:50:22.000+03:00",
        "committer_name": "Example User",
        "committer_email": "user@example.com",
        "committed_date": "2012-09-20T11:50:22.000+03:00",
        "trailers": {},
        "extended_trailers": {},
        "web_url": format!("https://gitlab.example.com/group/sub/proj/-/commit/{sha}"),
    })
}

#[tokio::test]
async fn merge_request_commits_are_read_across_pages_and_missing_parent_ids_read_as_empty() {
    let server = MockServer::start().await;
    let newest = "ed899a2f4b50b4370feeea94676502b42383c746";
    let older = "6104942438c14ec7bd21c6cd5bd995272b3faff6";
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/commits")))
        .and(query_param("page", "1"))
        .and(query_param("per_page", "100"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "2")
                .set_body_json(json!([commit_json(
                    newest,
                    "Replace sanitize with escape once",
                    json!([older])
                )])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/commits")))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-next-page", "")
                // Served from GitLab's database: parent_ids empty (issue 496665) or null.
                .set_body_json(json!([
                    commit_json(older, "Sanitize for network graph", json!([])),
                    commit_json(
                        "0000000000000000000000000000000000000001",
                        "Root",
                        Value::Null
                    ),
                ])),
        )
        .expect(1)
        .mount(&server)
        .await;

    let commits = client(&server)
        .mr_commits(&project(), 11)
        .await
        .expect("commits");

    let ids: Vec<&str> = commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [newest, older, "0000000000000000000000000000000000000001"]
    );
    assert_eq!(commits[0].parent_ids, [older]);
    assert_eq!(commits[0].title, "Replace sanitize with escape once");
    assert_eq!(commits[0].short_id, "ed899a2f4b5");
    assert!(commits[1].parent_ids.is_empty() && commits[2].parent_ids.is_empty());
    assert_eq!(
        commits[0].created_at.map(|t| t.to_rfc3339()),
        Some("2012-09-20T08:50:22+00:00".to_owned())
    );
}

#[tokio::test]
async fn a_comparison_sends_from_and_to_and_reports_what_gitlab_left_out() {
    let server = MockServer::start().await;
    let from = "5e6dffa282c5129aa67cd227a0429be21bfdaf80";
    let to = "f9ce7e16e56c162edbc9e480108041cf6b0291fe";
    Mock::given(method("GET"))
        .and(path(
            "/api/v4/projects/group%2Fsub%2Fproj/repository/compare",
        ))
        .and(query_param("from", from))
        .and(query_param("to", to))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "commit": commit_json(to, "Second", json!([from])),
            "commits": [commit_json(to, "Second", json!([from]))],
            "diffs": [
                {"old_path": "a.rs", "new_path": "a.rs", "a_mode": "100644", "b_mode": "100644",
                 "diff": "@@ -1 +1 @@\n-a\n+b\n", "new_file": false, "renamed_file": false,
                 "deleted_file": false},
                {"old_path": "big.sql", "new_path": "big.sql", "a_mode": "100644",
                 "b_mode": "100644", "diff": "", "new_file": false, "renamed_file": false,
                 "deleted_file": false, "too_large": true}
            ],
            "compare_timeout": false,
            "compare_same_ref": false,
            "web_url": "https://gitlab.example.com/group/sub/proj/-/compare/5e6dffa2...f9ce7e16"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/api/v4/projects/group%2Fsub%2Fproj/repository/compare",
        ))
        .and(query_param("from", to))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "commit": null, "commits": [], "diffs": [],
            "compare_timeout": true, "compare_same_ref": null, "web_url": null
        })))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let compare = client.compare(&project(), from, to).await.expect("compare");
    let overflowed = client.compare(&project(), to, to).await.expect("compare");

    assert_eq!(compare.commits.len(), 1);
    assert_eq!(compare.commits[0].parent_ids, [from]);
    assert_eq!(compare.diffs[0].diff, "@@ -1 +1 @@\n-a\n+b\n");
    assert!(!compare.compare_timeout && !compare.compare_same_ref);
    assert!(compare.is_partial(), "a too_large file is left out");
    assert!(overflowed.compare_timeout && !overflowed.compare_same_ref);
    assert!(overflowed.is_partial());
}

#[tokio::test]
async fn a_comparison_with_an_unknown_ref_is_a_fatal_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(
            "/api/v4/projects/group%2Fsub%2Fproj/repository/compare",
        ))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"message": "404 Ref Not Found"})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let error = client(&server)
        .compare(&project(), "gone", "main")
        .await
        .expect_err("404");

    assert!(
        matches!(&error, Error::NotFound { message, .. } if message == "404 Ref Not Found"),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Fatal);
}

/// A draft note as GitLab's docs show it (an overview draft: a position of nulls).
fn overview_draft(id: u64, note: &str) -> Value {
    json!({
        "id": id, "author_id": 23, "merge_request_id": 11, "resolve_discussion": false,
        "discussion_id": null, "note": note, "commit_id": null, "line_code": null,
        "position": {"base_sha": null, "start_sha": null, "head_sha": null, "old_path": null,
                     "new_path": null, "position_type": "text", "old_line": null,
                     "new_line": null, "line_range": null}
    })
}

#[tokio::test]
async fn an_inline_draft_note_is_posted_with_note_and_position_like_a_discussion() {
    let server = MockServer::start().await;
    let position = expected_position("file.js", "file.js", json!({"new_line": 18}));
    let mut created = overview_draft(5, "Possible overflow here.");
    created["position"] = position.clone();
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/draft_notes")))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"note": "Possible overflow here.", "position": position}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(created))
        .expect(1)
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 18 },
    );

    let draft = client(&server)
        .create_draft_note(&project(), 11, "Possible overflow here.", Some(&position))
        .await
        .expect("created");

    assert_eq!(draft.id, 5);
    assert_eq!(draft.author_id, Some(23));
    let anchor = draft.diff_position().expect("inline");
    assert_eq!((anchor.old_line, anchor.new_line), (None, Some(18)));
}

#[tokio::test]
async fn an_overview_draft_note_sends_no_position_and_reads_back_without_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/draft_notes")))
        .and(body_json(json!({"note": "Summary"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(overview_draft(6, "Summary")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{MR_PATH}/draft_notes")))
        .and(query_param("per_page", "100"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([overview_draft(6, "Summary")])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    let draft = client
        .create_draft_note(&project(), 11, "Summary", None)
        .await
        .expect("created");
    let listed = client.draft_notes(&project(), 11).await.expect("listed");

    assert_eq!(draft.note, "Summary");
    assert!(draft.position.is_some(), "GitLab sends an object of nulls");
    assert_eq!(draft.diff_position(), None);
    assert_eq!(listed, [draft]);
}

#[tokio::test]
async fn a_draft_note_is_refused_before_sending_like_a_discussion() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let client = client(&server);
    let zero = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 0 },
    );

    let unsafe_body = client
        .create_draft_note(&project(), 11, "ok\n/approve", None)
        .await
        .expect_err("quick action");
    let bad_position = client
        .create_draft_note(&project(), 11, "x", Some(&zero))
        .await
        .expect_err("line 0");

    assert!(
        matches!(unsafe_body, Error::UnsafeBody { line: 2 }),
        "{unsafe_body:?}"
    );
    assert!(
        matches!(bad_position, Error::PositionRejected { .. }),
        "{bad_position:?}"
    );
}

#[tokio::test]
async fn a_grape_400_on_a_draft_position_is_a_rejected_position() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/draft_notes")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "position[position_type] does not have a valid value"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let position = Position::new(
        shas(),
        &modified_file("file.js"),
        LineAnchor::Added { new_line: 1 },
    );

    let error = client(&server)
        .create_draft_note(&project(), 11, "x", Some(&position))
        .await
        .expect_err("rejected");

    assert!(matches!(error, Error::PositionRejected { .. }), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn a_draft_is_deleted_and_drafts_are_bulk_published_with_empty_204_answers() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(format!("{MR_PATH}/draft_notes/5")))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{MR_PATH}/draft_notes/bulk_publish")))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("{MR_PATH}/draft_notes/6")))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"message": "404 Draft Note Not Found"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);

    client
        .delete_draft_note(&project(), 11, 5)
        .await
        .expect("deleted");
    client
        .bulk_publish_draft_notes(&project(), 11)
        .await
        .expect("published");
    let gone = client
        .delete_draft_note(&project(), 11, 6)
        .await
        .expect_err("404");

    assert!(matches!(gone, Error::NotFound { .. }), "{gone:?}");
}

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
