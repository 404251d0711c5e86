//! Reading a merge request: its diffs, versions, commits, comparisons and raw files.

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffShas, Error, GitLabClient, ProjectRef},
};
use serde_json::{Value, json};
use url::Url;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path, query_param},
};

use super::{MR_PATH, TOKEN, client, config, fixture, project, shas};

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
