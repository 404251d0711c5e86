//! Draft notes: posting, deleting and bulk-publishing them.

use reviewq::{
    disposition::Disposition,
    gitlab::{Error, LineAnchor, Position},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, header, method, path, query_param},
};

use super::{MR_PATH, TOKEN, client, expected_position, modified_file, project, shas};

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
