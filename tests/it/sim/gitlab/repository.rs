//! The repository: raw files per ref, a merge request's commits, and comparisons of two refs
//! (including those the fake cannot compute).

use reviewq::{
    disposition::Disposition,
    gitlab::{DiffFile, Error},
    sim::{
        self,
        gitlab::{FileSpec, MrSpec, PushSpec, Route, fake_sha},
    },
};

use super::{PROJECT, fetch, four_files, gitlab_with};
use crate::sim::helpers::{TOKEN, gitlab_client, project};

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
