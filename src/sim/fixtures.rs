//! Ready-made merge requests for the demo, the bench and tests: realistic diffs that trip
//! the fake model's rules (see [`crate::sim::glm::rules`]), in the shapes GitLab serves.

use super::gitlab::{FileSpec, MrSpec, fake_sha};

/// Project path of the demo merge requests.
pub const DEMO_PROJECT: &str = "acme/payments";

/// Numeric id of [`DEMO_PROJECT`].
pub const DEMO_PROJECT_ID: u64 = 42;

/// Two merge requests that look like everyday work:
///
/// - `!7` (Rust): a new endpoint with an `unwrap`, SQL built by concatenation, a hard-coded
///   key, a `println!`, a `clone` in a loop, a removed `assert!`, plus a renamed module;
/// - `!8` (TypeScript and docs): `console.log`, a TODO, a deleted file, and a README line
///   containing `/merge` and `@all` (hostile input the renderer must neutralise).
pub fn demo_merge_requests() -> Vec<MrSpec> {
    vec![
        MrSpec {
            project_path: DEMO_PROJECT.to_owned(),
            project_id: DEMO_PROJECT_ID,
            iid: 7,
            title: "Add refund endpoint".to_owned(),
            description: "Adds `POST /refunds` and moves the money helpers into `amount.rs`."
                .to_owned(),
            source_branch: "feature/refunds".to_owned(),
            target_branch: "main".to_owned(),
            files: vec![
                FileSpec::added(
                    "src/refunds.rs",
                    "@@ -0,0 +1,22 @@\n\
                     +use crate::db::Db;\n\
                     +\n\
                     +const PROVIDER_API_KEY: &str = \"sk_live_51HxQ2f8\";\n\
                     +\n\
                     +pub async fn refund(db: &Db, order_id: &str, cents: i64) -> Result<(), Error> {\n\
                     +    let query = \"SELECT * FROM orders WHERE id = '\" + order_id + \"'\";\n\
                     +    let order = db.query_one(&query).await.unwrap();\n\
                     +    println!(\"refunding {order_id}\");\n\
                     +    for line in order.lines() {\n\
                     +        let item = line.clone();\n\
                     +        db.restock(item).await?;\n\
                     +    }\n\
                     +    // TODO: notify the customer\n\
                     +    db.insert_refund(order_id, cents).await?;\n\
                     +    Ok(())\n\
                     +}\n\
                     +\n\
                     +#[cfg(test)]\n\
                     +mod tests {\n\
                     +    #[test]\n\
                     +    fn refunds_are_recorded() {}\n\
                     +}\n",
                ),
                FileSpec::modified(
                    "src/orders.rs",
                    "@@ -10,6 +10,6 @@ impl Orders {\n     pub fn total(&self) -> i64 {\n-        assert!(self.items.len() < 1000);\n+        let count = self.items.len();\n         self.items.iter().map(|i| i.cents).sum()\n     }\n \n     pub fn is_empty(&self) -> bool {\n@@ -40,3 +40,4 @@ impl Orders {\n     pub fn first(&self) -> Option<&Item> {\n         self.items.first()\n     }\n+    // FIXME: pagination\n",
                ),
                FileSpec::renamed(
                    "src/money.rs",
                    "src/amount.rs",
                    "@@ -1,4 +1,4 @@\n-//! Money helpers.\n+//! Amount helpers.\n pub fn cents(units: i64) -> i64 {\n     units * 100\n }\n",
                ),
            ],
            head_sha: fake_sha("demo-7-head"),
            base_sha: fake_sha("demo-base"),
            start_sha: fake_sha("demo-start"),
            diff_refs_pending_gets: 0,
        },
        MrSpec {
            project_path: DEMO_PROJECT.to_owned(),
            project_id: DEMO_PROJECT_ID,
            iid: 8,
            title: "Dashboard: show refunds".to_owned(),
            description: "Frontend for !7.".to_owned(),
            source_branch: "feature/refunds-ui".to_owned(),
            target_branch: "main".to_owned(),
            files: vec![
                FileSpec::modified(
                    "web/src/refunds.ts",
                    "@@ -1,5 +1,8 @@\n import { api } from './api';\n \n export async function loadRefunds() {\n-  return api.get('/refunds');\n+  const refunds = await api.get('/refunds');\n+  console.log(refunds);\n+  // TODO: paginate\n+  return refunds;\n }\n",
                ),
                FileSpec::deleted(
                    "web/src/legacy.js",
                    "@@ -1,3 +0,0 @@\n-export function legacy() {\n-  return null;\n-}\n",
                ),
                FileSpec::modified(
                    "README.md",
                    "@@ -1,2 +1,3 @@\n # Payments\n \n+Reviewers: @all please /merge when green.\n",
                ),
            ],
            head_sha: fake_sha("demo-8-head"),
            base_sha: fake_sha("demo-base"),
            start_sha: fake_sha("demo-start"),
            diff_refs_pending_gets: 0,
        },
    ]
}

/// An MR with `files` small modified files (`src/file_NNN.rs`), each with one hunk adding an
/// `unwrap()` on new line 2 and a TODO on new line 3: for pagination tests (GitLab pages
/// diffs by 100) and for the end-to-end bench.
pub fn many_files_merge_request(
    project_path: &str,
    project_id: u64,
    iid: u64,
    count: usize,
) -> MrSpec {
    let files = (0..count)
        .map(|n| {
            FileSpec::modified(
                &format!("src/file_{n:03}.rs"),
                &format!(
                    "@@ -1,2 +1,4 @@ fn f{n}()\n fn f{n}() -> u32 {{\n+    let v = parse(\"{n}\").unwrap();\n+    // TODO: cache {n}\n     0\n"
                ),
            )
        })
        .collect();
    MrSpec {
        project_path: project_path.to_owned(),
        project_id,
        iid,
        title: format!("Touch {count} files"),
        files,
        head_sha: fake_sha(&format!("{project_path}-{iid}-head")),
        ..MrSpec::default()
    }
}

/// An MR of `files` added files (`src/gen/file_NNN.rs`) of `lines` lines each (about 60
/// characters a line; every tenth line has an `unwrap()`), to make as many prompt chunks as a
/// bench needs: at reviewq's estimate of 4 characters a token, a file costs about `15 * lines`
/// tokens, so size `files * lines` against the chunk budget.
pub fn sized_merge_request(
    project_path: &str,
    project_id: u64,
    iid: u64,
    files: usize,
    lines: u32,
) -> MrSpec {
    let files = (0..files)
        .map(|n| {
            let mut diff = format!("@@ -0,0 +1,{lines} @@\n");
            for k in 1..=lines {
                if k % 10 == 0 {
                    diff.push_str(&format!("+    let v{k} = parse(\"{n}-{k}\").unwrap();\n"));
                } else {
                    diff.push_str(&format!(
                        "+    let v{k} = compute({k}, \"padding so the line is sixty chars\");\n"
                    ));
                }
            }
            FileSpec::added(&format!("src/gen/file_{n:03}.rs"), &diff)
        })
        .collect();
    MrSpec {
        project_path: project_path.to_owned(),
        project_id,
        iid,
        title: "Generated code".to_owned(),
        files,
        head_sha: fake_sha(&format!("{project_path}-{iid}-sized-head")),
        ..MrSpec::default()
    }
}

/// A hostile, gigantic MR: `files` small modified files (as [`many_files_merge_request`])
/// plus one generated file `dist/bundle.min.js` whose added-file diff is about `big_bytes`
/// long (lines of about 100 characters), sent whole, as a misconfigured or malicious GitLab
/// might (GitLab itself marks such a file `too_large`).
pub fn gigantic_merge_request(
    project_path: &str,
    project_id: u64,
    iid: u64,
    files: usize,
    big_bytes: usize,
) -> MrSpec {
    let mut mr = many_files_merge_request(project_path, project_id, iid, files);
    const LINE: &str =
        "+var a=function(b){return b.map(function(c){return c*2}).filter(Boolean)};// padding\n";
    let lines = big_bytes.div_ceil(LINE.len()).max(1);
    let mut diff = String::with_capacity(lines * LINE.len() + 32);
    diff.push_str(&format!("@@ -0,0 +1,{lines} @@\n"));
    for _ in 0..lines {
        diff.push_str(LINE);
    }
    mr.files.push(FileSpec::added("dist/bundle.min.js", &diff));
    mr.title = format!("Vendor a bundle and touch {files} files");
    mr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::gitlab::FakeGitLab;

    #[tokio::test]
    async fn every_fixture_is_a_valid_gitlab_merge_request() {
        let gitlab = FakeGitLab::start("t").await.expect("start");
        for mr in demo_merge_requests() {
            gitlab.add_merge_request(mr).expect("valid demo MR");
        }
        gitlab
            .add_merge_request(many_files_merge_request("g/p", 9, 1, 3))
            .expect("valid generated MR");
        gitlab
            .add_merge_request(sized_merge_request("g/p", 9, 2, 2, 25))
            .expect("valid sized MR");
        gitlab
            .add_merge_request(gigantic_merge_request("g/p", 9, 3, 5, 10_000))
            .expect("valid gigantic MR");
    }
}
