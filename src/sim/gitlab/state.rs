//! What the simulated GitLab stores, the rules it applies to writes, and the JSON it answers.
//! Everything here is synchronous and runs under one mutex; the HTTP glue is in `routes.rs`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{
    BOT_USERNAME, FileSpec, GitLabFault, MrSpec, PushSpec, RequestRecord, Route, StoredDiscussion,
    StoredDraftNote, StoredNote, StoredPosition,
    diff::{FileLines, LineKind},
    fake_sha,
};
use crate::sim::{Error, server::Stopper};

mod description;
mod people;

pub use people::StoredAward;

/// GitLab's answer to a position it cannot turn into a line code: the wrong side of a line,
/// a line outside every hunk, an unknown path or SHAs of another version.
pub(super) const LINE_CODE_ERROR: &str =
    "400 Bad request - Note {:line_code=>[\"can't be blank\", \"must be a valid line code\"]}";

/// The fake's answer to a comparison it cannot compute without a repository (see
/// [`State::compare`]); not a GitLab answer, hence the explicit wording.
const COMPARE_LIMITATION: &str =
    "422 Unprocessable Entity - the simulated GitLab cannot compute this comparison";

/// GitLab's note length limit (characters).
const MAX_NOTE_CHARS: usize = 1_000_000;

/// Ids of the bot and of seeded human authors; distinct so `author.id` comparisons work.
const BOT_USER_ID: u64 = 2;

/// State shared by the handle and the handlers.
#[derive(Debug)]
pub(super) struct Inner {
    /// `http://127.0.0.1:PORT`, for `web_url`s and pagination `Link` headers.
    pub(super) base_url: String,
    /// The only accepted token.
    pub(super) token: String,
    /// Cuts simulated delays short on shutdown.
    pub(super) stopper: Stopper,
    /// Everything mutable. A std mutex: it is never held across an `.await`.
    pub(super) state: Mutex<State>,
}

impl Inner {
    /// Locks the state. A panic while locked (a bug in a handler) must not turn every later
    /// request into a poisoned-lock panic, so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pending fault: applies to the next `remaining` requests of `route` (any route if `None`).
#[derive(Debug, Clone)]
pub(super) struct FaultRule {
    pub(super) route: Option<Route>,
    pub(super) remaining: u32,
    pub(super) fault: GitLabFault,
}

/// A fault for a share of the requests to some routes (every route if `routes` is empty).
#[derive(Debug, Clone)]
pub(super) struct ShareRule {
    pub(super) routes: Vec<Route>,
    pub(super) per_cent: u32,
    pub(super) fault: GitLabFault,
}

/// An error answer: status plus GitLab's JSON body.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ApiError {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl ApiError {
    /// `{"message": text}`, GitLab's usual error shape.
    pub(super) fn message(status: u16, text: &str) -> Self {
        ApiError {
            status,
            body: json!({ "message": text }),
        }
    }

    /// `{"error": text}`, Grape's parameter-validation shape.
    pub(super) fn grape(text: &str) -> Self {
        ApiError {
            status: 400,
            body: json!({ "error": text }),
        }
    }

    pub(super) fn line_code() -> Self {
        ApiError::message(400, LINE_CODE_ERROR)
    }

    pub(super) fn not_found() -> Self {
        ApiError::message(404, "404 Not found")
    }

    pub(super) fn internal() -> Self {
        ApiError::message(500, "500 Internal Server Error")
    }
}

/// A merge request and its history.
#[derive(Debug, Clone)]
pub(super) struct Mr {
    id: u64,
    iid: u64,
    project_id: u64,
    title: String,
    description: String,
    source_branch: String,
    target_branch: String,
    /// Oldest first; never empty (a push appends).
    versions: Vec<Version>,
    /// GETs left that answer `diff_refs: null`.
    pub(super) diff_refs_pending_gets: u32,
    /// Threads, oldest first (overview notes are individual-note threads).
    pub(super) discussions: Vec<StoredDiscussion>,
    /// The bot's pending draft notes, oldest first.
    pub(super) drafts: Vec<StoredDraftNote>,
    /// Every commit the MR ever had, by SHA: a tree rooted at the merge base. Old heads stay
    /// here after a force-push (GitLab keeps them around for its versions), so comparisons
    /// from them still resolve.
    commits: BTreeMap<String, FakeCommit>,
    /// Label names.
    pub(super) labels: Vec<String>,
    /// A draft MR (served as `draft` and `work_in_progress`).
    pub(super) draft: bool,
    /// Comparisons overflow GitLab's diff limits (see `FakeGitLab::set_compare_overflow`).
    pub(super) compare_overflow: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// One commit of the simulated history.
#[derive(Debug, Clone)]
struct FakeCommit {
    id: String,
    /// `None` only for the merge base, the root of everything the fake knows.
    parent: Option<String>,
    title: String,
    created_at: DateTime<Utc>,
    /// The diff from `parent` to this commit; `None` when nobody said (a plain `push`, the
    /// target branch head) and for heads whose parent is the merge base (their version holds
    /// that diff, and a comparison from the merge base reads the version).
    change: Option<Vec<FileSpec>>,
}

/// How a push relates to the previous head.
enum History {
    /// A fast-forward: the new head's parent is the previous head; `delta` is the diff
    /// between them, if known.
    Appended { delta: Option<Vec<FileSpec>> },
    /// A force-push: the new head descends from the merge base.
    Rewritten,
}

/// One diff version (what a push creates).
#[derive(Debug, Clone)]
struct Version {
    id: u64,
    head_sha: String,
    base_sha: String,
    start_sha: String,
    files: Vec<VersionFile>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct VersionFile {
    spec: FileSpec,
    /// Parsed once, for position validation.
    lines: FileLines,
}

impl Mr {
    fn latest(&self) -> &Version {
        // `versions` is never empty: built with one, only ever appended to.
        &self.versions[self.versions.len() - 1]
    }

    fn discussion_mut(&mut self, id: &str) -> Result<&mut StoredDiscussion, ApiError> {
        self.discussions
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(ApiError::not_found)
    }
}

/// Everything the simulated instance holds.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Project id → full path.
    projects: BTreeMap<u64, String>,
    /// (project id, iid) → MR.
    pub(super) mrs: BTreeMap<(u64, u64), Mr>,
    /// (project id, ref, path) → raw content.
    files: HashMap<(u64, String, String), Vec<u8>>,
    /// Pending faults, consumed in order.
    pub(super) faults: Vec<FaultRule>,
    /// Faults for a share of the requests, after `faults`.
    pub(super) shares: Vec<ShareRule>,
    /// The share rules' generator state (xorshift64*, fixed seed).
    pub(super) share_rng: u64,
    /// Added to every request.
    pub(super) latency: Duration,
    /// Traffic log.
    pub(super) requests: Vec<RequestRecord>,
    /// `POST .../discussions` that stored a thread.
    pub(super) posted_discussions: u64,
    /// `POST .../notes` that stored a note.
    pub(super) posted_notes: u64,
    /// Drafts turned into discussions by `bulk_publish`.
    pub(super) published_draft_notes: u64,
    /// Per MR: description edits accepted through the API, and quick actions they ran.
    pub(super) description_log: BTreeMap<(u64, u64), description::DescriptionLog>,
    /// Members and award emoji.
    pub(super) people: people::People,
    /// Id sequences (GitLab ids are instance-wide).
    last_note_id: u64,
    last_discussion: u64,
    last_draft_id: u64,
    last_version_id: u64,
    last_mr_id: u64,
}

impl State {
    /// The fault for this request, if a rule applies (consuming one use of it).
    pub(super) fn take_fault(&mut self, route: Route) -> Option<GitLabFault> {
        let Some(rule) = self
            .faults
            .iter_mut()
            .find(|r| r.remaining > 0 && r.route.is_none_or(|r| r == route))
        else {
            return self.take_share(route);
        };
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        self.faults.retain(|r| r.remaining > 0);
        Some(fault)
    }

    /// The fault of the first share rule for `route` that picks this request.
    fn take_share(&mut self, route: Route) -> Option<GitLabFault> {
        for i in 0..self.shares.len() {
            let rule = &self.shares[i];
            if !rule.routes.is_empty() && !rule.routes.contains(&route) {
                continue;
            }
            let per_cent = u64::from(rule.per_cent);
            if self.next_share_roll() % 100 < per_cent {
                return Some(self.shares[i].fault.clone());
            }
        }
        None
    }

    fn next_share_roll(&mut self) -> u64 {
        let mut x = if self.share_rng == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            self.share_rng
        };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.share_rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
    }

    /// A project id from `:id` as given (number or path, already percent-decoded).
    pub(super) fn project_id(&self, project: &str) -> Option<u64> {
        if let Ok(id) = project.parse::<u64>() {
            return self.projects.contains_key(&id).then_some(id);
        }
        self.projects
            .iter()
            .find(|(_, path)| path.as_str() == project)
            .map(|(id, _)| *id)
    }

    pub(super) fn project_path(&self, id: u64) -> &str {
        self.projects.get(&id).map_or("", String::as_str)
    }

    /// The MR an API request names: 404 with GitLab's texts otherwise.
    pub(super) fn api_mr(&self, project: &str, iid: &str) -> Result<(u64, u64), ApiError> {
        let project_id = self
            .project_id(project)
            .ok_or_else(|| ApiError::message(404, "404 Project Not Found"))?;
        let iid: u64 = iid.parse().map_err(|_| ApiError::not_found())?;
        if self.mrs.contains_key(&(project_id, iid)) {
            Ok((project_id, iid))
        } else {
            Err(ApiError::not_found())
        }
    }

    fn api_mr_mut(&mut self, key: (u64, u64)) -> Result<&mut Mr, ApiError> {
        self.mrs.get_mut(&key).ok_or_else(ApiError::not_found)
    }

    fn api_mr_ref(&self, key: (u64, u64)) -> Result<&Mr, ApiError> {
        self.mrs.get(&key).ok_or_else(ApiError::not_found)
    }

    /// The MR for the test-facing accessors.
    pub(super) fn mr(&self, project: &str, iid: u64) -> Result<&Mr, Error> {
        self.project_id(project)
            .and_then(|id| self.mrs.get(&(id, iid)))
            .ok_or_else(|| Error::UnknownMergeRequest {
                project: project.to_owned(),
                iid,
            })
    }

    pub(super) fn mr_mut(&mut self, project: &str, iid: u64) -> Result<&mut Mr, Error> {
        let id = self.project_id(project);
        id.and_then(|id| self.mrs.get_mut(&(id, iid)))
            .ok_or_else(|| Error::UnknownMergeRequest {
                project: project.to_owned(),
                iid,
            })
    }

    fn next_note_id(&mut self) -> u64 {
        self.last_note_id += 1;
        1000 + self.last_note_id
    }

    fn next_discussion_id(&mut self) -> String {
        self.last_discussion += 1;
        fake_sha(&format!("discussion-{}", self.last_discussion))
    }

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

    pub(super) fn add_merge_request(&mut self, spec: MrSpec) -> Result<(), Error> {
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

    pub(super) fn push(
        &mut self,
        project: &str,
        iid: u64,
        files: Vec<FileSpec>,
        head_sha: &str,
    ) -> Result<(), Error> {
        let history = History::Appended { delta: None };
        self.push_version(project, iid, files, head_sha, history)
    }

    pub(super) fn push_with(
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

    pub(super) fn add_file(&mut self, project: &str, git_ref: &str, path: &str, content: Vec<u8>) {
        let id = match self.project_id(project) {
            Some(id) => id,
            None => {
                let (id, path) = match project.parse::<u64>() {
                    Ok(id) => (id, format!("project-{id}")),
                    Err(_) => (
                        self.projects.keys().next_back().map_or(1, |last| last + 1),
                        project.to_owned(),
                    ),
                };
                self.projects.insert(id, path);
                id
            }
        };
        self.files
            .insert((id, git_ref.to_owned(), path.to_owned()), content);
    }

    fn new_note(
        &mut self,
        note_type: Option<&str>,
        body: &str,
        author: &str,
        system: bool,
        position: Option<StoredPosition>,
        resolvable: bool,
    ) -> StoredNote {
        let now = Utc::now();
        StoredNote {
            id: self.next_note_id(),
            note_type: note_type.map(str::to_owned),
            body: body.to_owned(),
            author: author.to_owned(),
            system,
            position,
            resolvable,
            resolved: false,
            created_at: now,
            updated_at: now,
        }
    }

    pub(super) fn raw_file(
        &self,
        project: &str,
        path: &str,
        git_ref: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let id = self
            .project_id(project)
            .ok_or_else(|| ApiError::message(404, "404 Project Not Found"))?;
        self.files
            .get(&(id, git_ref.to_owned(), path.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::message(404, "404 File Not Found"))
    }

    // ---- reads -------------------------------------------------------------------------

    /// `GET .../merge_requests/:iid`; consumes one pending `diff_refs: null` answer.
    pub(super) fn get_mr(&mut self, key: (u64, u64), base_url: &str) -> Result<Value, ApiError> {
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
    pub(super) fn versions(&self, key: (u64, u64)) -> Result<Vec<Value>, ApiError> {
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
    pub(super) fn diffs(&self, key: (u64, u64)) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr
            .latest()
            .files
            .iter()
            .map(|f| diff_json(&f.spec))
            .collect())
    }

    /// `GET .../commits`: the commits from the latest head down to the merge base (excluded),
    /// newest first, as GitLab lists them. After a force-push the old heads are gone from it.
    pub(super) fn mr_commits(
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
    pub(super) fn compare(
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

    /// `GET .../draft_notes`: the bot's drafts, oldest first.
    pub(super) fn list_draft_notes(&self, key: (u64, u64)) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr.drafts.iter().map(|d| draft_json(d, mr)).collect())
    }

    /// `GET .../discussions`: oldest first.
    pub(super) fn list_discussions(
        &self,
        key: (u64, u64),
        base_url: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr
            .discussions
            .iter()
            .map(|d| discussion_json(d, mr, base_url))
            .collect())
    }

    pub(super) fn get_discussion(
        &self,
        key: (u64, u64),
        id: &str,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let mr = self.api_mr_ref(key)?;
        mr.discussions
            .iter()
            .find(|d| d.id == id)
            .map(|d| discussion_json(d, mr, base_url))
            .ok_or_else(ApiError::not_found)
    }

    /// `GET .../notes?sort=&order_by=`: GitLab's default is newest first by creation.
    pub(super) fn list_notes(
        &self,
        key: (u64, u64),
        sort: Option<&str>,
        order_by: Option<&str>,
        base_url: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let ascending = match sort {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(_) => return Err(ApiError::grape("sort does not have a valid value")),
        };
        let by_update = match order_by {
            None | Some("created_at") => false,
            Some("updated_at") => true,
            Some(_) => return Err(ApiError::grape("order_by does not have a valid value")),
        };
        let mr = self.api_mr_ref(key)?;
        let mut notes: Vec<&StoredNote> =
            mr.discussions.iter().flat_map(|d| d.notes.iter()).collect();
        notes.sort_by_key(|n| {
            (
                if by_update {
                    n.updated_at
                } else {
                    n.created_at
                },
                n.id,
            )
        });
        if !ascending {
            notes.reverse();
        }
        Ok(notes
            .into_iter()
            .map(|n| note_json(n, mr, base_url))
            .collect())
    }

    pub(super) fn get_note(
        &self,
        key: (u64, u64),
        note_id: &str,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let mr = self.api_mr_ref(key)?;
        let note_id: u64 = note_id.parse().map_err(|_| ApiError::not_found())?;
        mr.discussions
            .iter()
            .flat_map(|d| d.notes.iter())
            .find(|n| n.id == note_id)
            .map(|n| note_json(n, mr, base_url))
            .ok_or_else(ApiError::not_found)
    }

    // ---- writes ------------------------------------------------------------------------

    /// `POST .../discussions`. With a valid text position the thread is inline (`DiffNote`);
    /// without a position it is a plain thread; `not_inline` forces the latter.
    pub(super) fn create_discussion(
        &mut self,
        key: (u64, u64),
        params: &Value,
        not_inline: bool,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let body = required_body(params)?;
        let position = match params.get("position") {
            None | Some(Value::Null) => None,
            Some(position) => Some(validate_position(self.api_mr_ref(key)?, position)?),
        };
        let (note_type, position) = match position {
            Some(position) if !not_inline => ("DiffNote", Some(position)),
            _ => ("DiscussionNote", None),
        };
        let note = self.new_note(Some(note_type), &body, BOT_USERNAME, false, position, true);
        let id = self.next_discussion_id();
        let discussion = StoredDiscussion {
            id,
            individual_note: false,
            notes: vec![note],
        };
        self.posted_discussions += 1;
        let mr = self.api_mr_mut(key)?;
        mr.discussions.push(discussion);
        let mr = self.api_mr_ref(key)?;
        let stored = &mr.discussions[mr.discussions.len() - 1];
        Ok(discussion_json(stored, mr, base_url))
    }

    /// `POST .../discussions/:id/notes`: a reply of the thread's type.
    pub(super) fn reply(
        &mut self,
        key: (u64, u64),
        discussion_id: &str,
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let body = required_body(params)?;
        let (note_type, position, individual) = {
            let mr = self.api_mr_ref(key)?;
            let discussion = mr
                .discussions
                .iter()
                .find(|d| d.id == discussion_id)
                .ok_or_else(ApiError::not_found)?;
            let first = discussion.notes.first();
            (
                first.and_then(|n| n.note_type.clone()),
                first.and_then(|n| n.position.clone()),
                discussion.individual_note,
            )
        };
        if individual {
            // GitLab refuses replies to standalone overview notes.
            return Err(ApiError::message(
                400,
                "400 Bad request - Note {:discussion_id=>[\"is not a discussion\"]}",
            ));
        }
        let note_type = note_type.unwrap_or_else(|| "DiscussionNote".to_owned());
        let note = self.new_note(Some(&note_type), &body, BOT_USERNAME, false, position, true);
        let mr = self.api_mr_mut(key)?;
        mr.discussion_mut(discussion_id)?.notes.push(note.clone());
        let mr = self.api_mr_ref(key)?;
        Ok(note_json(&note, mr, base_url))
    }

    /// `PUT .../discussions/:id?resolved=`.
    pub(super) fn resolve(
        &mut self,
        key: (u64, u64),
        discussion_id: &str,
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let resolved = match params.get("resolved") {
            None | Some(Value::Null) => return Err(ApiError::grape("resolved is missing")),
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" => true,
            Some(Value::String(s)) if s == "false" => false,
            Some(_) => return Err(ApiError::grape("resolved is invalid")),
        };
        let mr = self.api_mr_mut(key)?;
        let discussion = mr.discussion_mut(discussion_id)?;
        if !discussion.notes.iter().any(|n| n.resolvable) {
            return Err(ApiError::message(403, "403 Forbidden"));
        }
        let now = Utc::now();
        for note in discussion.notes.iter_mut().filter(|n| n.resolvable) {
            note.resolved = resolved;
            note.updated_at = now;
        }
        let mr = self.api_mr_ref(key)?;
        self.get_discussion((mr.project_id, mr.iid), discussion_id, base_url)
    }

    /// `POST .../notes`: an overview note (an individual-note thread).
    pub(super) fn create_note(
        &mut self,
        key: (u64, u64),
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let body = required_body(params)?;
        self.api_mr_ref(key)?;
        let note = self.new_note(None, &body, BOT_USERNAME, false, None, false);
        let id = self.next_discussion_id();
        self.posted_notes += 1;
        let mr = self.api_mr_mut(key)?;
        mr.discussions.push(StoredDiscussion {
            id,
            individual_note: true,
            notes: vec![note.clone()],
        });
        let mr = self.api_mr_ref(key)?;
        Ok(note_json(&note, mr, base_url))
    }

    /// `POST .../draft_notes`: stores a draft. A position is checked with the discussion rules
    /// (see [`validate_position`]); GitLab itself checks only the position's shape here and
    /// finds a bad line at publish time, so the fake is stricter, on purpose: the client sees
    /// the same `PositionRejected` as for discussions.
    pub(super) fn create_draft_note(
        &mut self,
        key: (u64, u64),
        params: &Value,
    ) -> Result<Value, ApiError> {
        let note = required_text(params, "note")?;
        if params
            .get("in_reply_to_discussion_id")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::grape(
                "in_reply_to_discussion_id is not supported by the simulated GitLab",
            ));
        }
        let position = match params.get("position") {
            None | Some(Value::Null) => None,
            Some(position) => Some(validate_position(self.api_mr_ref(key)?, position)?),
        };
        self.last_draft_id += 1;
        let draft = StoredDraftNote {
            id: 300 + self.last_draft_id,
            note,
            author: BOT_USERNAME.to_owned(),
            position,
            created_at: Utc::now(),
        };
        let mr = self.api_mr_mut(key)?;
        mr.drafts.push(draft.clone());
        Ok(draft_json(&draft, mr))
    }

    /// `DELETE .../draft_notes/:id`.
    pub(super) fn delete_draft_note(&mut self, key: (u64, u64), id: &str) -> Result<(), ApiError> {
        let not_found = || ApiError::message(404, "404 Draft Note Not Found");
        let id: u64 = id.parse().map_err(|_| not_found())?;
        let mr = self.api_mr_mut(key)?;
        let index = mr
            .drafts
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(not_found)?;
        mr.drafts.remove(index);
        Ok(())
    }

    /// `POST .../draft_notes/bulk_publish`: every draft becomes a resolvable thread in
    /// creation order (a `DiffNote` if positioned, else a `DiscussionNote`, as GitLab 17+
    /// publishes review comments), then the drafts are gone. No drafts: nothing to do.
    pub(super) fn bulk_publish(&mut self, key: (u64, u64)) -> Result<(), ApiError> {
        let drafts = std::mem::take(&mut self.api_mr_mut(key)?.drafts);
        for draft in drafts {
            let note_type = if draft.position.is_some() {
                "DiffNote"
            } else {
                "DiscussionNote"
            };
            let note = self.new_note(
                Some(note_type),
                &draft.note,
                &draft.author,
                false,
                draft.position,
                true,
            );
            let id = self.next_discussion_id();
            self.published_draft_notes += 1;
            self.api_mr_mut(key)?.discussions.push(StoredDiscussion {
                id,
                individual_note: false,
                notes: vec![note],
            });
        }
        Ok(())
    }

    /// `PUT .../notes/:note_id`: edits the body.
    pub(super) fn update_note(
        &mut self,
        key: (u64, u64),
        note_id: &str,
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let body = required_body(params)?;
        let note_id: u64 = note_id.parse().map_err(|_| ApiError::not_found())?;
        let mr = self.api_mr_mut(key)?;
        let note = mr
            .discussions
            .iter_mut()
            .flat_map(|d| d.notes.iter_mut())
            .find(|n| n.id == note_id)
            .ok_or_else(ApiError::not_found)?;
        if note.system || note.author != BOT_USERNAME {
            return Err(ApiError::message(403, "403 Forbidden"));
        }
        note.body = body;
        note.updated_at = Utc::now();
        let note = note.clone();
        let mr = self.api_mr_ref(key)?;
        Ok(note_json(&note, mr, base_url))
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

/// The `body` parameter, with Grape's and the model's checks.
fn required_body(params: &Value) -> Result<String, ApiError> {
    required_text(params, "body")
}

/// A required note text (`body` of notes, `note` of drafts), with Grape's and the model's
/// checks.
fn required_text(params: &Value, name: &str) -> Result<String, ApiError> {
    let body = match params.get(name) {
        None | Some(Value::Null) => return Err(ApiError::grape(&format!("{name} is missing"))),
        Some(Value::String(body)) => body.clone(),
        Some(_) => return Err(ApiError::grape(&format!("{name} is invalid"))),
    };
    if body.trim().is_empty() {
        return Err(ApiError::grape(&format!("{name} is empty")));
    }
    if body.chars().count() > MAX_NOTE_CHARS {
        return Err(ApiError::message(
            400,
            "400 Bad request - Note {:note=>[\"is too long (maximum is 1000000 characters)\"]}",
        ));
    }
    Ok(body)
}

/// Checks a `position` the way GitLab does when it builds the note's line code, and returns
/// it as stored. Rules (reference A6):
/// - `position_type` is required and one of `text`, `image`, `file`;
/// - the three SHAs are required and must be those of the latest diff version;
/// - `old_path`/`new_path` must name one file of that version exactly as GitLab lists it
///   (added and deleted files: both paths equal);
/// - for `text`: an added line carries `new_line` only, a removed line `old_line` only, a
///   context line both, and the pair must be a line inside one of the file's hunks.
///
/// Any failure of the last two groups is the `line_code` 400. A line number of 0 is answered
/// with a 500, as GitLab has been seen to do.
fn validate_position(mr: &Mr, position: &Value) -> Result<StoredPosition, ApiError> {
    let Some(object) = position.as_object() else {
        return Err(ApiError::grape("position is invalid"));
    };
    let text = |name: &str| -> Result<String, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => {
                Err(ApiError::grape(&format!("position[{name}] is missing")))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::grape(&format!("position[{name}] is invalid"))),
        }
    };
    let line = |name: &str| -> Result<Option<u32>, ApiError> {
        let invalid = || ApiError::grape(&format!("position[{name}] is invalid"));
        let number = match object.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(invalid)?,
            Some(Value::String(s)) if s.is_empty() => return Ok(None),
            Some(Value::String(s)) => s.parse::<u64>().map_err(|_| invalid())?,
            Some(_) => return Err(invalid()),
        };
        if number == 0 {
            return Err(ApiError::internal());
        }
        u32::try_from(number).map(Some).map_err(|_| invalid())
    };
    let position_type = text("position_type")?;
    if !matches!(position_type.as_str(), "text" | "image" | "file") {
        return Err(ApiError::grape(
            "position[position_type] does not have a valid value",
        ));
    }
    let stored = StoredPosition {
        base_sha: text("base_sha")?,
        start_sha: text("start_sha")?,
        head_sha: text("head_sha")?,
        old_path: text("old_path").unwrap_or_default(),
        new_path: text("new_path").unwrap_or_default(),
        old_line: line("old_line")?,
        new_line: line("new_line")?,
        position_type,
    };
    let latest = mr.latest();
    if stored.base_sha != latest.base_sha
        || stored.start_sha != latest.start_sha
        || stored.head_sha != latest.head_sha
    {
        return Err(ApiError::line_code());
    }
    let file = latest
        .files
        .iter()
        .find(|f| f.spec.old_path == stored.old_path && f.spec.new_path == stored.new_path)
        .ok_or_else(ApiError::line_code)?;
    match stored.position_type.as_str() {
        "file" => Ok(stored),
        "image" => Err(ApiError::message(
            400,
            "400 Bad request - Note {:position=>[\"image positions are not supported by the simulated GitLab\"]}",
        )),
        _ => {
            let found = file.lines.find(stored.old_line, stored.new_line);
            // `find` matches the exact (old, new) pair, so the kind rules hold by
            // construction; the match below only documents them.
            match found.map(|l| l.kind) {
                Some(LineKind::Added | LineKind::Removed | LineKind::Context) => Ok(stored),
                None => Err(ApiError::line_code()),
            }
        }
    }
}

pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn author_json(id: u64, username: &str, base_url: &str) -> Value {
    json!({
        "id": id,
        "username": username,
        "name": username,
        "state": "active",
        "locked": false,
        "avatar_url": null,
        "web_url": format!("{base_url}/{username}"),
    })
}

fn position_json(p: &StoredPosition) -> Value {
    json!({
        "base_sha": p.base_sha,
        "start_sha": p.start_sha,
        "head_sha": p.head_sha,
        "old_path": p.old_path,
        "new_path": p.new_path,
        "position_type": p.position_type,
        "old_line": p.old_line,
        "new_line": p.new_line,
        "line_range": null,
    })
}

/// A user's id: the bot's, or one stable per name and never the bot's.
fn user_id(username: &str) -> u64 {
    if username == BOT_USERNAME {
        BOT_USER_ID
    } else {
        10 + username.bytes().map(u64::from).sum::<u64>()
    }
}

/// One file as `GET .../diffs` and `compare` list it.
fn diff_json(spec: &FileSpec) -> Value {
    json!({
        "old_path": spec.old_path,
        "new_path": spec.new_path,
        "a_mode": if spec.new_file { "0" } else { "100644" },
        "b_mode": if spec.deleted_file { "0" } else { "100644" },
        "diff": spec.diff,
        "new_file": spec.new_file,
        "renamed_file": spec.renamed_file,
        "deleted_file": spec.deleted_file,
        "generated_file": spec.generated_file,
        "collapsed": spec.collapsed,
        "too_large": spec.too_large,
    })
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

/// A draft as GitLab's `Entities::DraftNote` renders it: a draft without an anchor still has
/// a `position`, all `null` but for `position_type`.
fn draft_json(draft: &StoredDraftNote, mr: &Mr) -> Value {
    let position = draft.position.as_ref().map_or_else(
        || {
            json!({
                "base_sha": null, "start_sha": null, "head_sha": null,
                "old_path": null, "new_path": null, "position_type": "text",
                "old_line": null, "new_line": null, "line_range": null,
            })
        },
        position_json,
    );
    json!({
        "id": draft.id,
        "author_id": user_id(&draft.author),
        "merge_request_id": mr.id,
        "resolve_discussion": false,
        "discussion_id": null,
        "note": draft.note,
        "commit_id": null,
        "line_code": null,
        "position": position,
    })
}

fn note_json(note: &StoredNote, mr: &Mr, base_url: &str) -> Value {
    let author_id = user_id(&note.author);
    let mut value = json!({
        "id": note.id,
        "type": note.note_type,
        "body": note.body,
        "attachment": null,
        "author": author_json(author_id, &note.author, base_url),
        "created_at": timestamp(note.created_at),
        "updated_at": timestamp(note.updated_at),
        "system": note.system,
        "noteable_id": mr.id,
        "noteable_type": "MergeRequest",
        "project_id": mr.project_id,
        "noteable_iid": mr.iid,
        "commit_id": null,
        "resolvable": note.resolvable,
        "resolved": note.resolved,
        "resolved_by": null,
        "resolved_at": null,
        "confidential": false,
        "internal": false,
        "imported": false,
        "imported_from": "none",
        "suggestions": [],
    });
    if let (Some(position), Some(object)) = (&note.position, value.as_object_mut()) {
        object.insert("position".to_owned(), position_json(position));
    }
    value
}

fn discussion_json(d: &StoredDiscussion, mr: &Mr, base_url: &str) -> Value {
    json!({
        "id": d.id,
        "individual_note": d.individual_note,
        "notes": d.notes.iter().map(|n| note_json(n, mr, base_url)).collect::<Vec<_>>(),
    })
}
