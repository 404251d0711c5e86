//! The simulated GitLab, driven by the real `gitlab` client.

use std::time::Duration;

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffFile, DiffShas, Error, GitLabClient, GitLabConfig, LineAnchor, Position},
    sim::{
        self, fixtures,
        gitlab::{
            BOT_USERNAME, FakeGitLab, FileSpec, GitLabFault, MrSpec, PushSpec, Route, fake_sha,
        },
    },
};
use secrecy::SecretString;
use url::Url;

use crate::sim::helpers::{TOKEN, gitlab_client, project};

const PROJECT: &str = "group/project";

/// A modified, an added, a deleted and a renamed file, with known line numbers:
/// - `src/app.rs`: context (1,1); removed old 2; added new 2 and 3; context (3,4) and (4,5)
/// - `src/new.rs`: added new 1, 2
/// - `src/gone.rs`: removed old 1, 2
/// - `src/old_name.rs` → `src/new_name.rs`: context (3,3); removed old 4; added new 4; context (5,5)
fn four_files() -> Vec<FileSpec> {
    vec![
        FileSpec::modified(
            "src/app.rs",
            "@@ -1,4 +1,5 @@ fn main\n fn main() {\n-    old();\n+    new();\n+    more();\n     done();\n }\n",
        ),
        FileSpec::added("src/new.rs", "@@ -0,0 +1,2 @@\n+a\n+b\n"),
        FileSpec::deleted("src/gone.rs", "@@ -1,2 +0,0 @@\n-a\n-b\n"),
        FileSpec::renamed(
            "src/old_name.rs",
            "src/new_name.rs",
            "@@ -3,3 +3,3 @@\n x\n-y\n+z\n w\n",
        ),
    ]
}

async fn gitlab_with(files: Vec<FileSpec>) -> FakeGitLab {
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    gitlab
        .add_merge_request(MrSpec {
            files,
            ..MrSpec::default()
        })
        .expect("valid MR");
    gitlab
}

/// The diffs and the latest version's SHAs, as reviewq fetches them.
async fn fetch(gitlab: &FakeGitLab) -> (Vec<DiffFile>, DiffShas) {
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let diffs = client.diffs(&project(PROJECT), 1).await.expect("diffs");
    let version = client
        .latest_version(&project(PROJECT), 1)
        .await
        .expect("version");
    (diffs, DiffShas::from(&version))
}

fn file<'a>(diffs: &'a [DiffFile], new_path: &str) -> &'a DiffFile {
    diffs
        .iter()
        .find(|f| f.new_path == new_path)
        .expect("file in diff")
}

#[tokio::test]
async fn diffs_over_three_pages_are_all_read_by_following_x_next_page() {
    // Arrange: 250 files is three pages of GitLab's maximum 100.
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    gitlab
        .add_merge_request(fixtures::many_files_merge_request(PROJECT, 1, 1, 250))
        .expect("valid MR");
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    // Act
    let diffs = client.diffs(&project(PROJECT), 1).await.expect("diffs");

    // Assert
    assert_eq!(diffs.len(), 250);
    assert_eq!(diffs[249].new_path, "src/file_249.rs");
    let pages: Vec<String> = gitlab
        .requests()
        .into_iter()
        .filter(|r| r.route == Some(Route::Diffs))
        .map(|r| r.uri)
        .collect();
    assert_eq!(pages.len(), 3);
    assert!(pages[2].contains("page=3"), "{pages:?}");
}

#[tokio::test]
async fn pagination_headers_and_link_follow_gitlab() {
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    gitlab
        .add_merge_request(fixtures::many_files_merge_request(PROJECT, 1, 1, 250))
        .expect("valid MR");
    let url = format!(
        "{}/api/v4/projects/group%2Fproject/merge_requests/1/diffs?per_page=100&page=2",
        gitlab.base_url()
    );

    let response = reqwest::Client::new()
        .get(&url)
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .expect("request");

    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<absent>")
            .to_owned()
    };
    assert_eq!(header("x-page"), "2");
    assert_eq!(header("x-per-page"), "100");
    assert_eq!(header("x-next-page"), "3");
    assert_eq!(header("x-prev-page"), "1");
    assert_eq!(header("x-total"), "250");
    assert_eq!(header("x-total-pages"), "3");
    let link = header("link");
    assert!(
        link.contains("page=3&per_page=100>; rel=\"next\""),
        "{link}"
    );
    assert!(
        link.contains("rel=\"first\"") && link.contains("rel=\"last\""),
        "{link}"
    );
    let body: Vec<serde_json::Value> = response.json().await.expect("json");
    assert_eq!(body.len(), 100);
    assert_eq!(body[0]["new_path"], "src/file_100.rs");
}

#[tokio::test]
async fn the_last_page_has_an_empty_x_next_page() {
    let gitlab = gitlab_with(four_files()).await;
    let url = format!(
        "{}/api/v4/projects/1/merge_requests/1/diffs",
        gitlab.base_url()
    );
    let response = reqwest::Client::new()
        .get(&url)
        .header("PRIVATE-TOKEN", TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-next-page"], "");
    assert_eq!(response.headers()["x-per-page"], "20");
}

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
async fn a_500_after_storing_leaves_the_note_stored_and_findable_by_its_marker() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    let marker = "<!-- reviewq:summary mr=1 -->";

    let error = client
        .post_note(&project(PROJECT), 1, &format!("Summary\n{marker}"))
        .await
        .expect_err("500");

    assert!(
        matches!(&error, Error::OutcomeUnknown { source, .. }
            if matches!(**source, Error::Server { status: 500, .. })),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    assert_eq!(gitlab.posted_notes(), 1);
    let notes = client.notes(&project(PROJECT), 1).await.expect("notes");
    assert!(notes.iter().any(|n| n.body.contains(marker)));
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 0);
}

#[tokio::test]
async fn a_500_after_storing_a_discussion_leaves_the_diff_note_stored() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/new.rs"),
        LineAnchor::Added { new_line: 1 },
    );
    gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::ServerErrorAfterStore,
    );

    let first = client
        .post_discussion(&project(PROJECT), 1, "f <!-- reviewq:f1 -->", &position)
        .await;
    // A careless retry posts it again: the duplicate counter sees it.
    let second = client
        .post_discussion(&project(PROJECT), 1, "f <!-- reviewq:f1 -->", &position)
        .await;

    assert!(
        matches!(&first, Err(Error::OutcomeUnknown { source, .. })
            if matches!(**source, Error::Server { status: 500, .. })),
        "{first:?}"
    );
    assert!(second.is_ok());
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("list");
    assert_eq!(discussions.len(), 2);
    assert!(discussions.iter().all(|d| d.notes[0].is_diff_note()));
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 1);
    assert_eq!(gitlab.total_duplicate_count(), 1);
}

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
async fn unknown_projects_and_merge_requests_get_gitlab_404_texts() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    let no_project = client
        .merge_request(&project("other/project"), 1)
        .await
        .expect_err("404");
    let no_mr = client
        .merge_request(&project(PROJECT), 99)
        .await
        .expect_err("404");

    assert!(
        matches!(&no_project, Error::NotFound { message, .. } if message == "404 Project Not Found"),
        "{no_project:?}"
    );
    assert!(
        matches!(&no_mr, Error::NotFound { message, .. } if message == "404 Not found"),
        "{no_mr:?}"
    );
}

#[tokio::test]
async fn a_project_is_found_by_numeric_id_or_encoded_path() {
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    gitlab
        .add_merge_request(MrSpec {
            project_path: "group/sub/project".to_owned(),
            project_id: 77,
            iid: 5,
            files: four_files(),
            ..MrSpec::default()
        })
        .expect("valid MR");
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    let by_path = client
        .merge_request(&project("group/sub/project"), 5)
        .await
        .expect("by path");
    let by_id = client
        .merge_request(&project("77"), 5)
        .await
        .expect("by id");

    assert_eq!(by_path, by_id);
    assert_eq!(by_path.project_id, 77);
    assert!(gitlab.requests()[0].uri.contains("group%2Fsub%2Fproject"));
    assert!(
        by_path
            .web_url
            .ends_with("/group/sub/project/-/merge_requests/5")
    );
}

#[tokio::test]
async fn diff_refs_are_null_for_the_first_gets_then_filled_in() {
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    gitlab
        .add_merge_request(MrSpec {
            files: four_files(),
            diff_refs_pending_gets: 2,
            ..MrSpec::default()
        })
        .expect("valid MR");
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    let first = client
        .merge_request(&project(PROJECT), 1)
        .await
        .expect("MR");
    let (_, shas) = client
        .merge_request_with_diff_refs(&project(PROJECT), 1)
        .await
        .expect("filled in on the second try");

    assert_eq!(first.diff_refs, None);
    assert_eq!(first.diff_shas(), None);
    assert_eq!(shas.head_sha, MrSpec::default().head_sha);
    assert_eq!(gitlab.request_count(Route::MergeRequest), 3);
}

#[tokio::test]
async fn diff_refs_still_pending_after_all_attempts_is_a_retryable_error() {
    let gitlab = gitlab_with(four_files()).await;
    gitlab.set_diff_refs_pending(PROJECT, 1, 100).expect("MR");
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    let error = client
        .merge_request_with_diff_refs(&project(PROJECT), 1)
        .await
        .expect_err("pending");

    assert!(
        matches!(error, Error::DiffRefsPending { attempts: 5, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
}

#[tokio::test]
async fn notes_are_listed_oldest_first_across_pages_and_system_notes_are_marked() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab
        .seed_note(PROJECT, 1, "Administrator", "added 1 commit", true)
        .expect("MR");
    for n in 0..104 {
        client
            .post_note(
                &project(PROJECT),
                1,
                &format!("note {n} <!-- reviewq:n{n} -->"),
            )
            .await
            .expect("post");
    }

    let notes = client.notes(&project(PROJECT), 1).await.expect("notes");

    assert_eq!(notes.len(), 105);
    assert!(notes[0].system);
    assert!(notes[1].body.starts_with("note 0 "));
    assert!(notes[104].body.starts_with("note 103 "));
    assert_eq!(gitlab.request_count(Route::ListNotes), 2);
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 105);
    assert!(discussions.iter().all(|d| d.individual_note));
    assert_eq!(gitlab.posted_notes(), 104);
}

#[tokio::test]
async fn a_note_is_edited_in_place_and_a_thread_can_be_resolved() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let summary = client
        .post_note(&project(PROJECT), 1, "draft")
        .await
        .expect("note");
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 3 },
    );
    let thread = client
        .post_discussion(&project(PROJECT), 1, "inline", &position)
        .await
        .expect("discussion");

    let edited = client
        .update_note(&project(PROJECT), 1, summary.id, "final")
        .await
        .expect("edit");
    let resolved = client
        .resolve_discussion(&project(PROJECT), 1, &thread.discussion_id, true)
        .await
        .expect("resolve");

    assert_eq!(edited.id, summary.id);
    assert_eq!(edited.body, "final");
    assert!(resolved.notes[0].resolved);
    let notes = gitlab.notes(PROJECT, 1).expect("MR");
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].body, "final");
    let missing = client
        .update_note(&project(PROJECT), 1, 999_999, "x")
        .await
        .expect_err("404");
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
}

#[tokio::test]
async fn a_plain_thread_instead_of_an_inline_one_is_reported_as_not_diff_note() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 2 },
    );
    gitlab.fail_next(Route::CreateDiscussion, 1, GitLabFault::NotInline);

    let error = client
        .post_discussion(&project(PROJECT), 1, "x", &position)
        .await
        .expect_err("not inline");

    assert!(
        matches!(&error, Error::NotDiffNote { note_type: Some(t), .. } if t == "DiscussionNote"),
        "{error:?}"
    );
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 1);
}

#[tokio::test]
async fn raw_files_are_served_per_ref() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.add_file(
        PROJECT,
        "main",
        ".reviewq.toml",
        "review_type = \"security\"\n",
    );

    let found = client
        .get_file_raw(&project(PROJECT), ".reviewq.toml", "main")
        .await
        .expect("file");
    let other_ref = client
        .get_file_raw(&project(PROJECT), ".reviewq.toml", "feature")
        .await
        .expect_err("404");

    assert_eq!(found, b"review_type = \"security\"\n");
    assert!(
        matches!(&other_ref, Error::NotFound { message, .. } if message == "404 File Not Found"),
        "{other_ref:?}"
    );
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

#[tokio::test]
async fn the_demo_fixtures_are_served_with_their_file_kinds() {
    let gitlab = FakeGitLab::start(TOKEN).await.expect("start");
    for mr in fixtures::demo_merge_requests() {
        gitlab.add_merge_request(mr).expect("valid");
    }
    let client = gitlab_client(gitlab.base_url(), TOKEN);

    let diffs = client
        .diffs(&project(fixtures::DEMO_PROJECT), 8)
        .await
        .expect("diffs");

    let deleted = file(&diffs, "web/src/legacy.js");
    assert!(deleted.deleted_file);
    assert_eq!(deleted.b_mode.as_deref(), Some("0"));
    let mr7 = client
        .diffs(&project(&fixtures::DEMO_PROJECT_ID.to_string()), 7)
        .await
        .expect("diffs");
    assert!(file(&mr7, "src/amount.rs").renamed_file);
    assert!(file(&mr7, "src/refunds.rs").new_file);
}

/// `src/app.rs` of [`four_files`] at a second head that adds `extra();`: the MR's whole diff,
/// and the push's own delta against the first head.
fn second_push() -> PushSpec {
    let mut files = four_files();
    files[0] = FileSpec::modified(
        "src/app.rs",
        "@@ -1,4 +1,6 @@ fn main\n fn main() {\n-    old();\n+    new();\n+    more();\n+    extra();\n     done();\n }\n",
    );
    PushSpec {
        files,
        head_sha: fake_sha("second push"),
        delta: vec![FileSpec::modified(
            "src/app.rs",
            "@@ -3,3 +3,4 @@ fn main\n     more();\n+    extra();\n     done();\n }\n",
        )],
        rewrite_history: false,
    }
}

/// A third head after [`second_push`] that only touches `src/new.rs`.
fn third_push_on_another_file() -> PushSpec {
    let mut files = second_push().files;
    files[1] = FileSpec::added("src/new.rs", "@@ -0,0 +1,3 @@\n+a\n+b\n+c\n");
    PushSpec {
        files,
        head_sha: fake_sha("third push"),
        delta: vec![FileSpec::modified("src/new.rs", "@@ -2 +2,2 @@\n b\n+c\n")],
        rewrite_history: false,
    }
}

fn paths(diffs: &[DiffFile]) -> Vec<&str> {
    diffs.iter().map(|f| f.new_path.as_str()).collect()
}

#[tokio::test]
async fn merge_request_commits_are_read_across_pages_newest_first_with_their_parents() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    for n in 0..120 {
        gitlab
            .push(PROJECT, 1, four_files(), &fake_sha(&format!("push {n}")))
            .expect("push");
    }

    let commits = client
        .mr_commits(&project(PROJECT), 1)
        .await
        .expect("commits");

    assert_eq!(commits.len(), 121);
    assert_eq!(commits[0].id, fake_sha("push 119"));
    assert_eq!(commits[0].parent_ids, [fake_sha("push 118")]);
    assert_eq!(commits[0].short_id, commits[0].id[..8]);
    let first = &commits[120];
    assert_eq!(first.id, MrSpec::default().head_sha);
    assert_eq!(first.parent_ids, [MrSpec::default().base_sha]);
    assert_eq!(first.title, MrSpec::default().title);
    assert_eq!(gitlab.request_count(Route::MrCommits), 2);
}

#[tokio::test]
async fn comparing_the_two_heads_of_a_push_answers_its_delta_and_its_commit() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let first = MrSpec::default().head_sha;
    let second = fake_sha("second push");
    gitlab.push_with(PROJECT, 1, second_push()).expect("push");

    let delta = client
        .compare(&project(PROJECT), &first, &second)
        .await
        .expect("compare");
    let whole = client
        .compare(&project(PROJECT), &MrSpec::default().base_sha, &second)
        .await
        .expect("compare");

    assert_eq!(paths(&delta.diffs), ["src/app.rs"]);
    assert_eq!(delta.diffs[0].diff, second_push().delta[0].diff);
    let commits: Vec<&str> = delta.commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(commits, [second.as_str()]);
    assert_eq!(delta.commits[0].parent_ids.as_slice(), [first.as_str()]);
    assert!(!delta.is_partial() && !delta.compare_same_ref);
    // From the merge base: the MR's whole diff at the new head, commits oldest first.
    assert_eq!(whole.diffs.len(), 4);
    assert_eq!(whole.diffs[0].diff, second_push().files[0].diff);
    let commits: Vec<&str> = whole.commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(commits, [first.as_str(), second.as_str()]);
    // The diff of the latest version is the whole change too.
    assert_eq!(
        client.diffs(&project(PROJECT), 1).await.expect("diffs")[0].diff,
        second_push().files[0].diff
    );
}

#[tokio::test]
async fn after_a_force_push_the_old_heads_leave_the_commit_list_and_compare_answers_the_whole_diff()
{
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let first = MrSpec::default().head_sha;
    let second = fake_sha("second push");
    let rebased = fake_sha("rebased");
    gitlab.push_with(PROJECT, 1, second_push()).expect("push");

    gitlab
        .push_with(
            PROJECT,
            1,
            PushSpec {
                files: four_files(),
                head_sha: rebased.clone(),
                delta: Vec::new(),
                rewrite_history: true,
            },
        )
        .expect("force-push");

    let commits = client
        .mr_commits(&project(PROJECT), 1)
        .await
        .expect("commits");
    let ids: Vec<&str> = commits.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [rebased.as_str()]);
    assert_eq!(commits[0].parent_ids, [MrSpec::default().base_sha]);
    for old_head in [&first, &second] {
        let compare = client
            .compare(&project(PROJECT), old_head, &rebased)
            .await
            .expect("old heads stay reachable");
        assert_eq!(paths(&compare.diffs), paths(&fetch(&gitlab).await.0));
        assert_eq!(compare.diffs.len(), 4);
        let ids: Vec<&str> = compare.commits.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, [rebased.as_str()]);
    }
}

#[tokio::test]
async fn comparing_a_ref_with_itself_is_empty_and_an_unknown_ref_is_not_found() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let head = MrSpec::default().head_sha;

    let same = client
        .compare(&project(PROJECT), &head, "feature")
        .await
        .expect("the source branch names the head");
    let unknown = client
        .compare(&project(PROJECT), &fake_sha("never pushed"), &head)
        .await
        .expect_err("404");

    assert!(same.compare_same_ref);
    assert!(same.commits.is_empty() && same.diffs.is_empty());
    assert!(
        matches!(&unknown, Error::NotFound { message, .. } if message == "404 Ref Not Found"),
        "{unknown:?}"
    );
    assert_eq!(unknown.disposition(), Disposition::Fatal);
}

#[tokio::test]
async fn comparing_across_pushes_on_different_files_joins_their_deltas() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.push_with(PROJECT, 1, second_push()).expect("push");
    gitlab
        .push_with(PROJECT, 1, third_push_on_another_file())
        .expect("push");

    let compare = client
        .compare(
            &project(PROJECT),
            &MrSpec::default().head_sha,
            &fake_sha("third push"),
        )
        .await
        .expect("compare");
    let backwards = client
        .compare(
            &project(PROJECT),
            &fake_sha("third push"),
            &MrSpec::default().head_sha,
        )
        .await
        .expect("compare");

    assert_eq!(paths(&compare.diffs), ["src/app.rs", "src/new.rs"]);
    assert_eq!(compare.commits.len(), 2);
    assert!(backwards.diffs.is_empty() && backwards.commits.is_empty());
    assert!(!backwards.compare_same_ref);
}

#[tokio::test]
async fn comparisons_the_fake_cannot_compute_are_a_422_that_names_the_limitation() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let first = MrSpec::default().head_sha;
    gitlab.push_with(PROJECT, 1, second_push()).expect("push");
    let mut same_file_again = second_push();
    same_file_again.head_sha = fake_sha("third push");
    gitlab.push_with(PROJECT, 1, same_file_again).expect("push");
    gitlab
        .push(PROJECT, 1, four_files(), &fake_sha("plain push"))
        .expect("push");

    let overlapping = client
        .compare(&project(PROJECT), &first, &fake_sha("third push"))
        .await
        .expect_err("same file twice");
    let unknown_delta = client
        .compare(
            &project(PROJECT),
            &fake_sha("third push"),
            &fake_sha("plain push"),
        )
        .await
        .expect_err("no delta");
    let not_a_fast_forward = gitlab.push_with(
        PROJECT,
        1,
        PushSpec {
            head_sha: first,
            ..second_push()
        },
    );

    for error in [overlapping, unknown_delta] {
        assert!(
            matches!(&error, Error::Status { status: 422, message, .. }
                if message.contains("the simulated GitLab cannot compute this comparison")),
            "{error:?}"
        );
    }
    assert!(
        matches!(not_a_fast_forward, Err(sim::Error::InvalidPush { .. })),
        "{not_a_fast_forward:?}"
    );
}

#[tokio::test]
async fn an_overflowing_comparison_is_flagged_and_reported_partial() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.set_compare_overflow(PROJECT, 1, true).expect("MR");

    let compare = client
        .compare(&project(PROJECT), "main", "feature")
        .await
        .expect("compare");

    assert!(compare.compare_timeout);
    assert!(compare.is_partial());
    assert_eq!(
        compare.diffs.len(),
        2,
        "GitLab stops collecting at its limit"
    );
}

#[tokio::test]
async fn labels_are_served_as_names() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab
        .set_labels(
            PROJECT,
            1,
            vec!["security".to_owned(), "backend".to_owned()],
        )
        .expect("MR");

    let mr = client
        .merge_request(&project(PROJECT), 1)
        .await
        .expect("MR");

    assert_eq!(mr.labels, ["security", "backend"]);
}

#[tokio::test]
async fn drafts_stay_invisible_until_bulk_publish_turns_them_into_threads_in_order() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas.clone(),
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 3 },
    );
    let inline = client
        .create_draft_note(
            &project(PROJECT),
            1,
            "inline <!-- reviewq:f1 -->",
            Some(&position),
        )
        .await
        .expect("draft");
    let overview = client
        .create_draft_note(&project(PROJECT), 1, "overview <!-- reviewq:f2 -->", None)
        .await
        .expect("draft");
    let dropped = client
        .create_draft_note(&project(PROJECT), 1, "dropped <!-- reviewq:f3 -->", None)
        .await
        .expect("draft");
    client
        .delete_draft_note(&project(PROJECT), 1, dropped.id)
        .await
        .expect("deleted");

    let listed = client
        .draft_notes(&project(PROJECT), 1)
        .await
        .expect("drafts");
    assert_eq!(listed, [inline.clone(), overview.clone()]);
    assert_eq!(
        listed[0].diff_position().map(|p| (p.old_line, p.new_line)),
        Some((None, Some(3)))
    );
    assert_eq!(listed[1].diff_position(), None);
    assert!(gitlab.discussions(PROJECT, 1).expect("MR").is_empty());
    assert!(gitlab.marker_counts(PROJECT, 1).expect("MR").is_empty());

    client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect("published");

    assert!(
        client
            .draft_notes(&project(PROJECT), 1)
            .await
            .expect("drafts")
            .is_empty()
    );
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 2);
    let diff_note = &discussions[0].notes[0];
    assert!(diff_note.is_diff_note());
    assert!(diff_note.body.contains("reviewq:f1"));
    assert!(diff_note.resolvable && !diff_note.resolved);
    assert_eq!(
        diff_note.author.as_ref().map(|a| a.username.as_str()),
        Some(BOT_USERNAME)
    );
    let anchor = diff_note.position.as_ref().expect("position");
    assert_eq!(anchor.new_path.as_deref(), Some("src/app.rs"));
    assert_eq!((anchor.old_line, anchor.new_line), (None, Some(3)));
    assert_eq!(anchor.head_sha.as_deref(), Some(shas.head_sha.as_str()));
    let thread = &discussions[1];
    assert!(!thread.individual_note);
    assert_eq!(thread.notes[0].note_type.as_deref(), Some("DiscussionNote"));
    assert!(thread.notes[0].body.contains("reviewq:f2"));
    assert_eq!(gitlab.published_draft_notes(), 2);
    assert_eq!(gitlab.posted_discussions(), 0);
    assert_eq!(gitlab.marker_counts(PROJECT, 1).expect("MR").len(), 2);
    let gone = client
        .delete_draft_note(&project(PROJECT), 1, inline.id)
        .await
        .expect_err("published drafts are gone");
    assert!(matches!(gone, Error::NotFound { .. }), "{gone:?}");
}

#[tokio::test]
async fn an_invalid_draft_position_is_refused_like_a_discussion_and_nothing_is_stored() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let app = file(&diffs, "src/app.rs");
    let stale = DiffShas {
        head_sha: fake_sha("not the head"),
        ..shas.clone()
    };

    for position in [
        Position::new(shas.clone(), app, LineAnchor::Added { new_line: 50 }),
        Position::new(shas.clone(), app, LineAnchor::Added { new_line: 4 }),
        Position::new(stale, app, LineAnchor::Added { new_line: 2 }),
    ] {
        let error = client
            .create_draft_note(
                &project(PROJECT),
                1,
                "x <!-- reviewq:x -->",
                Some(&position),
            )
            .await
            .expect_err("rejected");
        assert!(
            matches!(&error, Error::PositionRejected { message } if message.contains("line_code")),
            "{position:?}: {error:?}"
        );
        assert_eq!(error.disposition(), Disposition::Fatal);
    }
    assert!(gitlab.draft_notes(PROJECT, 1).expect("MR").is_empty());
    assert_eq!(gitlab.request_count(Route::CreateDraftNote), 3);
}

#[tokio::test]
async fn a_draft_stored_before_a_500_is_found_among_the_drafts_and_is_not_a_comment() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    gitlab.fail_next(
        Route::CreateDraftNote,
        1,
        GitLabFault::ServerErrorAfterStore,
    );
    let marker = "<!-- reviewq:f1 -->";

    let error = client
        .create_draft_note(&project(PROJECT), 1, &format!("finding {marker}"), None)
        .await
        .expect_err("500");

    assert!(
        matches!(&error, Error::OutcomeUnknown { source, .. }
            if matches!(**source, Error::Server { status: 500, .. })),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    let drafts = client
        .draft_notes(&project(PROJECT), 1)
        .await
        .expect("drafts");
    assert_eq!(drafts.len(), 1);
    assert!(drafts[0].note.contains(marker));
    assert!(gitlab.marker_counts(PROJECT, 1).expect("MR").is_empty());
}

#[tokio::test]
async fn a_500_after_bulk_publish_leaves_the_drafts_published_and_a_retry_publishes_nothing_twice()
{
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    for n in 1..=2 {
        client
            .create_draft_note(
                &project(PROJECT),
                1,
                &format!("finding <!-- reviewq:f{n} -->"),
                None,
            )
            .await
            .expect("draft");
    }
    gitlab.fail_next(
        Route::BulkPublishDraftNotes,
        1,
        GitLabFault::ServerErrorAfterStore,
    );

    let error = client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect_err("500");

    assert!(
        matches!(error, Error::Server { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(error.disposition(), Disposition::Retry);
    assert!(
        client
            .draft_notes(&project(PROJECT), 1)
            .await
            .expect("drafts")
            .is_empty()
    );
    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    assert_eq!(discussions.len(), 2);
    assert!(discussions[1].notes[0].body.contains("reviewq:f2"));
    // Nothing is pending, so the retry succeeds without posting anything again.
    client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect("retry");
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 2);
    assert_eq!(gitlab.duplicate_count(PROJECT, 1).expect("MR"), 0);
    assert_eq!(gitlab.published_draft_notes(), 2);
}

#[tokio::test]
async fn a_bulk_publish_that_hangs_after_publishing_times_out_with_the_work_done() {
    let gitlab = gitlab_with(four_files()).await;
    let mut config = GitLabConfig::new(
        Url::parse(gitlab.base_url()).expect("sim URL"),
        SecretString::from(TOKEN),
    );
    config.timeout = Duration::from_millis(300);
    config.retry_for = Duration::ZERO;
    let client = GitLabClient::new(config).expect("client");
    client
        .create_draft_note(&project(PROJECT), 1, "finding <!-- reviewq:f1 -->", None)
        .await
        .expect("draft");
    gitlab.fail_next(
        Route::BulkPublishDraftNotes,
        1,
        GitLabFault::StoreThenHang(Duration::from_secs(5)),
    );

    let error = client
        .bulk_publish_draft_notes(&project(PROJECT), 1)
        .await
        .expect_err("timeout");

    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(gitlab.draft_notes(PROJECT, 1).expect("MR").is_empty());
    assert_eq!(gitlab.discussions(PROJECT, 1).expect("MR").len(), 1);
}

#[tokio::test]
async fn a_human_reply_and_resolution_in_a_bot_thread_are_read_back_with_author_and_state() {
    let gitlab = gitlab_with(four_files()).await;
    let client = gitlab_client(gitlab.base_url(), TOKEN);
    let (diffs, shas) = fetch(&gitlab).await;
    let position = Position::new(
        shas,
        file(&diffs, "src/app.rs"),
        LineAnchor::Added { new_line: 2 },
    );
    let thread = client
        .post_discussion(
            &project(PROJECT),
            1,
            "finding <!-- reviewq:f1 -->",
            &position,
        )
        .await
        .expect("posted");
    let summary = client
        .post_note(&project(PROJECT), 1, "summary <!-- reviewq:summary -->")
        .await
        .expect("posted");
    let summary_thread = gitlab.discussions(PROJECT, 1).expect("MR")[1].id.clone();

    gitlab
        .seed_reply(PROJECT, 1, &thread.discussion_id, "alice", "Fixed, thanks.")
        .expect("reply");
    gitlab
        .set_discussion_resolved(PROJECT, 1, &thread.discussion_id, true)
        .expect("resolve");
    gitlab
        .seed_reply(PROJECT, 1, &summary_thread, "bob", "Why?")
        .expect("reply");
    let missing = gitlab.seed_reply(PROJECT, 1, "nope", "alice", "x");

    let discussions = client
        .discussions(&project(PROJECT), 1)
        .await
        .expect("discussions");
    let notes = &discussions[0].notes;
    assert_eq!(notes.len(), 2);
    assert_eq!(
        notes[1].author.as_ref().map(|a| a.username.as_str()),
        Some("alice")
    );
    assert_eq!(notes[1].body, "Fixed, thanks.");
    assert!(notes[1].is_diff_note() && !notes[1].system);
    assert_eq!(notes[1].position, notes[0].position);
    assert!(notes.iter().all(|n| n.resolvable && n.resolved));
    // A reply turns an overview note into a resolvable thread.
    let summary_notes = &discussions[1].notes;
    assert!(!discussions[1].individual_note);
    assert_eq!(summary_notes[0].id, summary.id);
    assert_eq!(
        summary_notes[0].note_type.as_deref(),
        Some("DiscussionNote")
    );
    assert!(summary_notes.iter().all(|n| n.resolvable && !n.resolved));
    assert!(
        matches!(missing, Err(sim::Error::UnknownDiscussion { .. })),
        "{missing:?}"
    );
}
