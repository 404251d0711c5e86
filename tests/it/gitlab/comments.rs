//! Inline comments and their positions, notes, and listing discussions and notes.

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffFile, Error, LineAnchor, Position},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, header, method, path, query_param},
};

use super::{
    MR_PATH, TOKEN, client, expect_discussion_body, expected_position, fixture, modified_file,
    project, shas,
};

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
