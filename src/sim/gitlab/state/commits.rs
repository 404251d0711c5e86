//! The commit history of a merge request: `GET .../commits` and the repository comparison
//! `GET /projects/:id/repository/compare`, answered from the pushes the fake was told about.

use serde_json::{Value, json};

use super::{ApiError, FakeCommit, FileSpec, Mr, State, VersionFile, diff_json, timestamp};

/// The fake's answer to a comparison it cannot compute without a repository (see
/// [`State::compare`]); not a GitLab answer, hence the explicit wording.
const COMPARE_LIMITATION: &str =
    "422 Unprocessable Entity - the simulated GitLab cannot compute this comparison";

impl State {
    /// `GET .../commits`: the commits from the latest head down to the merge base (excluded),
    /// newest first, as GitLab lists them. After a force-push the old heads are gone from it.
    pub(in crate::sim::gitlab) fn mr_commits(
        &self,
        key: (u64, u64),
        base_url: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        let latest = mr.latest();
        let path = self.project_path(key.0);
        Ok(mr
            .ancestry(&latest.head_sha)
            .into_iter()
            .take_while(|c| c.id != latest.base_sha)
            .map(|c| commit_json(c, path, base_url))
            .collect())
    }

    /// `GET /projects/:id/repository/compare?from=&to=`, GitLab's merge-base comparison
    /// (`from...to`): the commits of `to` that `from` lacks, and the diff from their merge base
    /// to `to`. Refs are the SHAs of an MR's commits (old heads included) and its source and
    /// target branch names (the first MR of the project that knows both refs is used).
    ///
    /// The fake has no repository, so it answers only what it was told:
    /// - from the merge base (or a force-pushed-over head) to a head: that version's diff;
    /// - from a head to a later one: the `delta`s of the pushes in between (several only when
    ///   they touch different files, since hunks of one file cannot be merged here);
    /// - from a head to an earlier one (or the same): nothing.
    ///
    /// Anything else (a push made without a delta, overlapping deltas, refs of two MRs,
    /// the target branch) is a 422 that says it is a limitation of the fake. An unknown ref
    /// is GitLab's `404 Ref Not Found`.
    pub(in crate::sim::gitlab) fn compare(
        &self,
        project: &str,
        from: &str,
        to: &str,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let project_id = self
            .project_id(project)
            .ok_or_else(|| ApiError::message(404, "404 Project Not Found"))?;
        let mrs: Vec<&Mr> = self
            .mrs
            .range((project_id, 0)..=(project_id, u64::MAX))
            .map(|(_, mr)| mr)
            .collect();
        let found = mrs
            .iter()
            .find_map(|mr| Some((*mr, mr.resolve(from)?, mr.resolve(to)?)));
        let Some((mr, from_sha, to_sha)) = found else {
            let known = |r: &str| mrs.iter().any(|mr| mr.resolve(r).is_some());
            return Err(if known(from) && known(to) {
                compare_limitation("the two refs belong to different merge requests")
            } else {
                ApiError::message(404, "404 Ref Not Found")
            });
        };
        let same = from_sha == to_sha;
        // The commits `to` adds over `from`, newest first, down to their merge base.
        let behind: Vec<&str> = mr
            .ancestry(&from_sha)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        let chain = mr.ancestry(&to_sha);
        let split = chain
            .iter()
            .position(|c| behind.contains(&c.id.as_str()))
            .ok_or_else(|| compare_limitation("the refs share no history"))?;
        let (added, merge_base) = (&chain[..split], chain[split].id.clone());
        let mut diffs = mr.diff_between(&merge_base, added)?;
        let overflow = mr.compare_overflow && !diffs.is_empty();
        if overflow {
            diffs.truncate(diffs.len() / 2);
        }
        let path = self.project_path(project_id);
        let commits: Vec<Value> = added
            .iter()
            .rev()
            .map(|c| commit_json(c, path, base_url))
            .collect();
        Ok(json!({
            "commit": commits.last().cloned().unwrap_or(Value::Null),
            "commits": commits,
            "diffs": diffs.iter().map(diff_json).collect::<Vec<_>>(),
            "compare_timeout": overflow,
            "compare_same_ref": same,
            "web_url": format!("{base_url}/{path}/-/compare/{from_sha}...{to_sha}"),
        }))
    }
}

fn specs(files: &[VersionFile]) -> Vec<FileSpec> {
    files.iter().map(|f| f.spec.clone()).collect()
}

impl Mr {
    /// `sha` and its ancestors, newest first (ending at the merge base); empty if unknown.
    fn ancestry(&self, sha: &str) -> Vec<&FakeCommit> {
        let mut chain = Vec::new();
        let mut next = Some(sha);
        // The map is a tree (every parent existed before its child), so this ends; the bound
        // only guards against a bug turning it into a loop.
        while let Some(sha) = next.filter(|_| chain.len() <= self.commits.len()) {
            let Some(commit) = self.commits.get(sha) else {
                break;
            };
            chain.push(commit);
            next = commit.parent.as_deref();
        }
        chain
    }

    /// A ref as `compare` accepts it: a commit of this MR or one of its branch names.
    fn resolve(&self, git_ref: &str) -> Option<String> {
        let latest = self.latest();
        if self.commits.contains_key(git_ref) {
            Some(git_ref.to_owned())
        } else if git_ref == self.source_branch {
            Some(latest.head_sha.clone())
        } else if git_ref == self.target_branch {
            Some(latest.start_sha.clone())
        } else {
            None
        }
    }

    /// The diff from `merge_base` to the newest of `added` (its descendants, newest first).
    fn diff_between(
        &self,
        merge_base: &str,
        added: &[&FakeCommit],
    ) -> Result<Vec<FileSpec>, ApiError> {
        let Some(to) = added.first() else {
            return Ok(Vec::new());
        };
        // From the merge base, a version of that head holds the exact answer.
        if let Some(version) = self
            .versions
            .iter()
            .rev()
            .find(|v| v.head_sha == to.id && v.base_sha == merge_base)
        {
            return Ok(specs(&version.files));
        }
        let mut files: Vec<FileSpec> = Vec::new();
        for commit in added.iter().rev() {
            let change = commit.change.as_ref().ok_or_else(|| {
                compare_limitation(&format!(
                    "what changed in {} is unknown (pushed with FakeGitLab::push; use push_with)",
                    commit.id
                ))
            })?;
            let overlaps = change.iter().any(|c| {
                files.iter().any(|f| {
                    [&f.old_path, &f.new_path].contains(&&c.old_path)
                        || [&f.old_path, &f.new_path].contains(&&c.new_path)
                })
            });
            if overlaps {
                return Err(compare_limitation(
                    "the pushes in between change the same file, and the fake cannot merge hunks",
                ));
            }
            files.extend(change.iter().cloned());
        }
        Ok(files)
    }
}

fn compare_limitation(reason: &str) -> ApiError {
    ApiError::message(422, &format!("{COMPARE_LIMITATION}: {reason}"))
}

/// A commit as GitLab's `Entities::Commit` renders it.
fn commit_json(commit: &FakeCommit, project_path: &str, base_url: &str) -> Value {
    let at = timestamp(commit.created_at);
    json!({
        "id": commit.id,
        "short_id": commit.id.chars().take(8).collect::<String>(),
        "created_at": at,
        "parent_ids": commit.parent.iter().collect::<Vec<_>>(),
        "title": commit.title,
        "message": format!("{}\n", commit.title),
        "author_name": "Alice",
        "author_email": "alice@example.com",
        "authored_date": at,
        "committer_name": "Alice",
        "committer_email": "alice@example.com",
        "committed_date": at,
        "trailers": {},
        "extended_trailers": {},
        "web_url": format!("{base_url}/{project_path}/-/commit/{}", commit.id),
    })
}
