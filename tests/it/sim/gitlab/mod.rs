//! The simulated GitLab, driven by the real `gitlab` client: one file per resource, and here
//! the merge request and helpers they share.

mod drafts;
mod faults;
mod merge_requests;
mod notes;
mod positions;
mod repository;

use reviewq::{
    gitlab::{DiffFile, DiffShas},
    sim::gitlab::{FakeGitLab, FileSpec, MrSpec},
};

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
