//! Reading a merge request: diffs across pages with GitLab's pagination headers, lookups by
//! id or path and GitLab's 404s, `diff_refs` filled in late, labels and the demo fixtures.

use reviewq::{
    disposition::Disposition,
    gitlab::Error,
    sim::{
        fixtures,
        gitlab::{FakeGitLab, MrSpec, Route},
    },
};

use super::{PROJECT, file, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

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
