//! What the simulated GitLab stores, the rules it applies to writes, and the JSON it answers.
//! Everything here is synchronous and runs under one mutex; the HTTP glue is in `routes.rs`.
//!
//! This file holds the stored types, fault rules, lookups, id sequences, raw files and what
//! several resources share; the handlers of each resource are in the files of `state/`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{
    BOT_USERNAME, FileSpec, GitLabFault, MrSpec, PushSpec, RequestRecord, Route, StoredDiscussion,
    StoredDraftNote, StoredNote, StoredPosition, diff::FileLines, fake_sha,
};
use crate::sim::{Error, server::Stopper};

mod commits;
mod description;
mod discussions;
mod drafts;
mod merge_requests;
mod people;
mod position;

pub use people::StoredAward;

/// GitLab's answer to a position it cannot turn into a line code: the wrong side of a line,
/// a line outside every hunk, an unknown path or SHAs of another version.
pub(super) const LINE_CODE_ERROR: &str =
    "400 Bad request - Note {:line_code=>[\"can't be blank\", \"must be a valid line code\"]}";

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
