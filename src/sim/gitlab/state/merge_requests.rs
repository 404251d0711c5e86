//! Merge requests and their diff versions: adding an MR, pushes (a new version, a new
//! commit), and `GET .../merge_requests/:iid`, `.../versions` and `.../diffs`.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    ApiError, BOT_USER_ID, FakeCommit, FileSpec, Mr, MrSpec, PushSpec, State, Version, VersionFile,
    author_json, diff_json, fake_sha, timestamp,
};
use crate::sim::{Error, gitlab::diff::FileLines};

/// How a push relates to the previous head.
enum History {
    /// A fast-forward: the new head's parent is the previous head; `delta` is the diff
    /// between them, if known.
    Appended { delta: Option<Vec<FileSpec>> },
    /// A force-push: the new head descends from the merge base.
    Rewritten,
}

impl State {
    fn new_version(&mut self, spec: VersionSpec) -> Result<Version, Error> {
        let files = checked_files(spec.files)?;
        self.last_version_id += 1;
        Ok(Version {
            id: 100 + self.last_version_id,
            head_sha: spec.head_sha,
            base_sha: spec.base_sha,
            start_sha: spec.start_sha,
            files,
            created_at: Utc::now(),
        })
    }

    pub(in crate::sim::gitlab) fn add_merge_request(&mut self, spec: MrSpec) -> Result<(), Error> {
        let version = self.new_version(VersionSpec {
            files: spec.files,
            head_sha: spec.head_sha,
            base_sha: spec.base_sha,
            start_sha: spec.start_sha,
        })?;
        self.projects
            .insert(spec.project_id, spec.project_path.clone());
        self.last_mr_id += 1;
        let now = Utc::now();
        // The base is the root; the target head (if it moved) and the first head hang off it.
        let mut commits = BTreeMap::new();
        let mut add = |id: &str, parent: Option<&str>, title: &str, change| {
            commits.entry(id.to_owned()).or_insert_with(|| FakeCommit {
                id: id.to_owned(),
                parent: parent.map(str::to_owned),
                title: title.to_owned(),
                created_at: now,
                change,
            });
        };
        let base = version.base_sha.as_str();
        add(base, None, "Merge base", None);
        add(&version.start_sha, Some(base), "Target branch head", None);
        add(&version.head_sha, Some(base), &spec.title, None);
        let mr = Mr {
            id: 500 + self.last_mr_id,
            iid: spec.iid,
            project_id: spec.project_id,
            title: spec.title,
            description: spec.description,
            source_branch: spec.source_branch,
            target_branch: spec.target_branch,
            versions: vec![version],
            diff_refs_pending_gets: spec.diff_refs_pending_gets,
            discussions: Vec::new(),
            drafts: Vec::new(),
            commits,
            labels: Vec::new(),
            draft: false,
            compare_overflow: false,
            created_at: now,
            updated_at: now,
        };
        self.mrs.insert((spec.project_id, spec.iid), mr);
        Ok(())
    }

    pub(in crate::sim::gitlab) fn push(
        &mut self,
        project: &str,
        iid: u64,
        files: Vec<FileSpec>,
        head_sha: &str,
    ) -> Result<(), Error> {
        let history = History::Appended { delta: None };
        self.push_version(project, iid, files, head_sha, history)
    }

    pub(in crate::sim::gitlab) fn push_with(
        &mut self,
        project: &str,
        iid: u64,
        spec: PushSpec,
    ) -> Result<(), Error> {
        let history = if spec.rewrite_history {
            History::Rewritten
        } else {
            History::Appended {
                delta: Some(spec.delta),
            }
        };
        self.push_version(project, iid, spec.files, &spec.head_sha, history)
    }

    /// A new diff version at `head_sha` (same base and start) and, unless a force-push moves
    /// the branch to a commit the MR already has, a new commit.
    fn push_version(
        &mut self,
        project: &str,
        iid: u64,
        files: Vec<FileSpec>,
        head_sha: &str,
        history: History,
    ) -> Result<(), Error> {
        let mr = self.mr(project, iid)?;
        let latest = mr.latest();
        let (base_sha, start_sha, previous) = (
            latest.base_sha.clone(),
            latest.start_sha.clone(),
            latest.head_sha.clone(),
        );
        let known = mr.commits.contains_key(head_sha);
        let title = format!("Push {}", mr.versions.len());
        let parent = match history {
            History::Appended { .. } if known => {
                return Err(Error::InvalidPush {
                    reason: format!(
                        "{head_sha} is already a commit of {project}!{iid}; a fast-forward push adds a new one (set rewrite_history to move the branch to an existing commit)"
                    ),
                });
            }
            History::Appended { delta } => {
                let delta = delta
                    .map(|files| {
                        Ok::<_, Error>(checked_files(files)?.into_iter().map(|f| f.spec).collect())
                    })
                    .transpose()?;
                Some((previous, delta))
            }
            History::Rewritten if known => None,
            History::Rewritten => Some((base_sha.clone(), None)),
        };
        let version = self.new_version(VersionSpec {
            files,
            head_sha: head_sha.to_owned(),
            base_sha,
            start_sha,
        })?;
        let commit = parent.map(|(parent, delta)| FakeCommit {
            id: head_sha.to_owned(),
            change: delta,
            parent: Some(parent),
            title,
            created_at: version.created_at,
        });
        let mr = self.mr_mut(project, iid)?;
        if let Some(commit) = commit {
            mr.commits.insert(commit.id.clone(), commit);
        }
        mr.updated_at = version.created_at;
        mr.versions.push(version);
        Ok(())
    }

    /// `GET .../merge_requests/:iid`; consumes one pending `diff_refs: null` answer.
    pub(in crate::sim::gitlab) fn get_mr(
        &mut self,
        key: (u64, u64),
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let pending = {
            let mr = self.api_mr_mut(key)?;
            let pending = mr.diff_refs_pending_gets > 0;
            mr.diff_refs_pending_gets = mr.diff_refs_pending_gets.saturating_sub(1);
            pending
        };
        let mr = self.api_mr_ref(key)?;
        let path = self.project_path(key.0);
        let latest = mr.latest();
        let author = author_json(BOT_USER_ID + 1, "alice", base_url);
        let (diff_refs, changes_count) = if pending {
            (Value::Null, Value::Null)
        } else {
            (
                json!({
                    "base_sha": latest.base_sha,
                    "head_sha": latest.head_sha,
                    "start_sha": latest.start_sha,
                }),
                json!(latest.files.len().to_string()),
            )
        };
        let web_url = format!("{base_url}/{path}/-/merge_requests/{}", mr.iid);
        let mut value = json!({
            "id": mr.id,
            "iid": mr.iid,
            "project_id": mr.project_id,
            "title": mr.title,
            "description": if mr.description.is_empty() { Value::Null } else { json!(mr.description) },
            "state": "opened",
            "created_at": timestamp(mr.created_at),
            "updated_at": timestamp(mr.updated_at),
            "merged_by": null,
            "merged_at": null,
            "closed_by": null,
            "closed_at": null,
            "target_branch": mr.target_branch,
            "source_branch": mr.source_branch,
            "user_notes_count": mr.discussions.iter().map(|d| d.notes.len()).sum::<usize>(),
            "upvotes": 0,
            "downvotes": 0,
            "author": author,
            "assignees": [],
            "reviewers": [],
            "source_project_id": mr.project_id,
            "target_project_id": mr.project_id,
            "labels": mr.labels,
            "draft": mr.draft,
            "work_in_progress": mr.draft,
            "milestone": null,
            "merge_when_pipeline_succeeds": false,
            "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable",
            "sha": latest.head_sha,
            "merge_commit_sha": null,
            "squash_commit_sha": null,
            "discussion_locked": null,
            "should_remove_source_branch": null,
            "force_remove_source_branch": true,
        });
        // Two literals: one would exceed `json!`'s macro recursion limit.
        let rest = json!({
            "reference": format!("!{}", mr.iid),
            "references": {
                "short": format!("!{}", mr.iid),
                "relative": format!("!{}", mr.iid),
                "full": format!("{path}!{}", mr.iid),
            },
            "web_url": web_url,
            "time_stats": {"time_estimate": 0, "total_time_spent": 0,
                           "human_time_estimate": null, "human_total_time_spent": null},
            "squash": false,
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": false,
            "blocking_discussions_resolved": true,
            "changes_count": changes_count,
            "diff_refs": diff_refs,
            "diverged_commits_count": 0,
        });
        if let (Some(object), Value::Object(rest)) = (value.as_object_mut(), rest) {
            object.extend(rest);
        }
        Ok(value)
    }

    /// `GET .../versions`: newest first.
    pub(in crate::sim::gitlab) fn versions(&self, key: (u64, u64)) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr
            .versions
            .iter()
            .rev()
            .map(|v| {
                json!({
                    "id": v.id,
                    "head_commit_sha": v.head_sha,
                    "base_commit_sha": v.base_sha,
                    "start_commit_sha": v.start_sha,
                    "created_at": timestamp(v.created_at),
                    "merge_request_id": mr.id,
                    "state": "collected",
                    "real_size": v.files.len().to_string(),
                    "patch_id_sha": fake_sha(&format!("patch-{}", v.id)),
                })
            })
            .collect())
    }

    /// `GET .../diffs`: the latest version's files.
    pub(in crate::sim::gitlab) fn diffs(&self, key: (u64, u64)) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr
            .latest()
            .files
            .iter()
            .map(|f| diff_json(&f.spec))
            .collect())
    }
}

/// What a new version is made of.
struct VersionSpec {
    files: Vec<FileSpec>,
    head_sha: String,
    base_sha: String,
    start_sha: String,
}

/// Files as a version holds them: paths normalised the way GitLab lists added and deleted
/// files, diffs parsed (so a broken fixture fails when it is added).
fn checked_files(files: Vec<FileSpec>) -> Result<Vec<VersionFile>, Error> {
    files
        .into_iter()
        .map(|mut file| {
            // GitLab lists added and deleted files with both paths equal.
            if file.new_file {
                file.old_path.clone_from(&file.new_path);
            } else if file.deleted_file {
                file.new_path.clone_from(&file.old_path);
            }
            let lines = FileLines::parse(&file.diff).map_err(|reason| Error::InvalidDiff {
                path: file.new_path.clone(),
                reason,
            })?;
            Ok(VersionFile { spec: file, lines })
        })
        .collect()
}
