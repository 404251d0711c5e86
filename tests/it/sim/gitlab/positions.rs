//! Inline comment positions: every kind of line and file, GitLab's line-code 400 for wrong
//! ones (JSON or form-encoded), and positions made stale by a push.

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffShas, Error, LineAnchor, Position},
    sim::gitlab::{BOT_USERNAME, MrSpec, fake_sha},
};

use super::{PROJECT, fetch, file, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

#[tokio::test]
async fn correct_positions_on_every_kind_of_line_and_file_become_diff_notes() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let cases = [
        ("src/app.rs", LineAnchor::Added { new_line: 2 }),
        ("src/app.rs", LineAnchor::Removed { old_line: 2 }),
        (
            "src/app.rs",
            LineAnchor::Unchanged {
                old_line: 3,
                new_line: 4,
            },
        ),
        ("src/new.rs", LineAnchor::Added { new_line: 1 }),
        ("src/gone.rs", LineAnchor::Removed { old_line: 2 }),
        (
            "src/new_name.rs",
            LineAnchor::Unchanged {
                old_line: 5,
                new_line: 5,
            },
        ),
        ("src/new_name.rs", LineAnchor::Added { new_line: 4 }),
        ("src/new_name.rs", LineAnchor::Removed { old_line: 4 }),
    ];

    for (index, (path, line)) in cases.iter().enumerate() {
        let position = Position::new(shas.clone(), file(&diffs, path), *line);
        let body = format!("finding {index} <!-- reviewq:test f={index} -->");
        let posted = client
            .post_discussion(&project(PROJECT), 1, &body, &position)
            .await;
        assert!(posted.is_ok(), "{path} {line:?}: {posted:?}");
    }

    let discussions = gitlab.discussions(PROJECT, 1).expect("MR");
    assert_eq!(discussions.len(), cases.len());
    let note = &discussions[4].notes[0];
    assert_eq!(note.note_type.as_deref(), Some("DiffNote"));
    assert_eq!(note.author, BOT_USERNAME);
    let position = note.position.as_ref().expect("position");
    assert_eq!(
        (position.old_path.as_str(), position.new_path.as_str()),
        ("src/gone.rs", "src/gone.rs")
    );
    assert_eq!((position.old_line, position.new_line), (Some(2), None));
    assert_eq!(gitlab.posted_discussions(), 8);
}

#[tokio::test]
async fn wrong_positions_get_the_line_code_400_which_the_client_classifies_as_position_rejected() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let app = file(&diffs, "src/app.rs");
    let renamed = file(&diffs, "src/new_name.rs");
    let mut wrong_paths = Position::new(shas.clone(), renamed, LineAnchor::Added { new_line: 4 });
    wrong_paths.old_path = "src/new_name.rs".to_owned();
    let mut unknown_path = Position::new(shas.clone(), app, LineAnchor::Added { new_line: 2 });
    unknown_path.old_path = "src/nope.rs".to_owned();
    unknown_path.new_path = "src/nope.rs".to_owned();
    let other_head = DiffShas {
        head_sha: fake_sha("not the head"),
        ..shas.clone()
    };
    let cases = [
        (
            "added line sent as context",
            Position::new(
                shas.clone(),
                app,
                LineAnchor::Unchanged {
                    old_line: 2,
                    new_line: 2,
                },
            ),
        ),
        (
            "context line sent as added",
            Position::new(shas.clone(), app, LineAnchor::Added { new_line: 4 }),
        ),
        (
            "context line sent as removed",
            Position::new(shas.clone(), app, LineAnchor::Removed { old_line: 3 }),
        ),
        (
            "line outside every hunk",
            Position::new(shas.clone(), app, LineAnchor::Added { new_line: 50 }),
        ),
        (
            "context pair that does not exist",
            Position::new(
                shas.clone(),
                app,
                LineAnchor::Unchanged {
                    old_line: 3,
                    new_line: 3,
                },
            ),
        ),
        ("rename with the new path twice", wrong_paths),
        ("path not in the diff", unknown_path),
        (
            "head SHA of no version",
            Position::new(other_head, app, LineAnchor::Added { new_line: 2 }),
        ),
    ];

    for (what, position) in cases {
        let error = client
            .post_discussion(&project(PROJECT), 1, "x <!-- reviewq:x -->", &position)
            .await
            .expect_err(what);
        match &error {
            Error::PositionRejected { message } => {
                assert!(message.contains("line_code"), "{what}: {message}");
            }
            other => panic!("{what}: expected PositionRejected, got {other:?}"),
        }
        assert_eq!(error.disposition(), Disposition::Fatal);
    }
    assert!(gitlab.discussions(PROJECT, 1).expect("MR").is_empty());
}

#[tokio::test]
async fn a_push_makes_positions_with_the_old_head_sha_stale() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, old_shas) = fetch(&gitlab).await;
    let old_position = Position::new(
        old_shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 2 },
    );

    gitlab
        .push(PROJECT, 1, four_files(), &fake_sha("second push"))
        .expect("push");

    let error = client
        .post_discussion(&project(PROJECT), 1, "stale", &old_position)
        .await
        .expect_err("stale SHA");
    assert!(matches!(error, Error::PositionRejected { .. }), "{error:?}");
    let versions = client
        .versions(&project(PROJECT), 1)
        .await
        .expect("versions");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].head_commit_sha, fake_sha("second push"));
    let (mr, shas) = client
        .merge_request_with_diff_refs(&project(PROJECT), 1)
        .await
        .expect("MR");
    assert_eq!(shas.head_sha, fake_sha("second push"));
    assert_eq!(mr.sha.as_deref(), Some(shas.head_sha.as_str()));
}

#[tokio::test]
async fn form_encoded_positions_are_validated_like_json_ones() {
    let gitlab = gitlab_with(four_files()).await;
    let shas = MrSpec::default();
    let url = format!(
        "{}/api/v4/projects/group%2Fproject/merge_requests/1/discussions",
        gitlab.base_url()
    );
    let form = |new_line: &str| {
        vec![
            ("body", "form".to_owned()),
            ("position[position_type]", "text".to_owned()),
            ("position[base_sha]", shas.base_sha.clone()),
            ("position[start_sha]", shas.start_sha.clone()),
            ("position[head_sha]", shas.head_sha.clone()),
            ("position[old_path]", "src/new.rs".to_owned()),
            ("position[new_path]", "src/new.rs".to_owned()),
            ("position[new_line]", new_line.to_owned()),
        ]
    };
    let post = |fields: Vec<(&'static str, String)>| {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", k.replace('[', "%5B").replace(']', "%5D"), v))
            .collect::<Vec<_>>()
            .join("&");
        reqwest::Client::new()
            .post(&url)
            .header("PRIVATE-TOKEN", TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    let accepted = post(form("2")).await.expect("request");
    let zero = post(form("0")).await.expect("request");
    let mut bad_type = form("1");
    bad_type[1].1 = "line".to_owned();
    let invalid_type = post(bad_type).await.expect("request");

    assert_eq!(accepted.status(), 201);
    let discussion: serde_json::Value = accepted.json().await.expect("json");
    assert_eq!(discussion["notes"][0]["type"], "DiffNote");
    assert_eq!(discussion["notes"][0]["position"]["new_line"], 2);
    assert_eq!(
        discussion["notes"][0]["position"]["old_line"],
        serde_json::Value::Null
    );
    // GitLab has answered 500 to a 0 line number.
    assert_eq!(zero.status(), 500);
    assert_eq!(invalid_type.status(), 400);
    let body: serde_json::Value = invalid_type.json().await.expect("json");
    assert_eq!(
        body["error"],
        "position[position_type] does not have a valid value"
    );
}
