//! Request and response types of the GitLab REST v4 API, limited to what reviewq reads or sends.
//!
//! Every response field that GitLab may omit or send as `null` is optional here: older
//! instances lack newer fields (`collapsed`/`too_large` arrived in 18.4) and GitLab treats a
//! `null` boolean as `false`. Parsing must survive any supported GitLab version.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// A project as GitLab's `:id` path parameter accepts it: a numeric id or a full path.
///
/// Parsed once at the edge; a value of this type always renders to a valid `:id` segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProjectRef {
    /// The instance-wide numeric project id (stable across renames).
    Id(u64),
    /// The full path, e.g. `group/sub/project` (breaks when the project is renamed or moved).
    Path(String),
}

/// Why a string is not a [`ProjectRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid GitLab project {input:?}: expected a numeric id or a path like group/project ({reason})"
)]
pub struct ParseProjectRefError {
    input: String,
    reason: &'static str,
}

impl FromStr for ProjectRef {
    type Err = ParseProjectRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseProjectRefError {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim().trim_matches('/');
        if trimmed.is_empty() {
            return Err(err("it is empty"));
        }
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return trimmed
                .parse()
                .map(ProjectRef::Id)
                .map_err(|_| err("the number is too large"));
        }
        if !trimmed.contains('/') {
            return Err(err("a path needs at least a namespace and a project name"));
        }
        if trimmed.split('/').any(|segment| segment.trim().is_empty()) {
            return Err(err("a path segment is empty"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("paths cannot contain whitespace"));
        }
        Ok(ProjectRef::Path(trimmed.to_owned()))
    }
}

impl ProjectRef {
    /// The `:id` path segment: the number, or the path with every reserved byte
    /// percent-encoded (`/` becomes `%2F`), exactly as GitLab routes it.
    pub fn to_path_segment(&self) -> String {
        match self {
            ProjectRef::Id(id) => id.to_string(),
            ProjectRef::Path(path) => encode_path_segment(path),
        }
    }
}

impl fmt::Display for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectRef::Id(id) => write!(f, "{id}"),
            ProjectRef::Path(path) => f.write_str(path),
        }
    }
}

impl From<u64> for ProjectRef {
    fn from(id: u64) -> Self {
        ProjectRef::Id(id)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that `/` in project
/// and file paths becomes `%2F` (GitLab needs the whole path in one segment).
pub(crate) fn encode_path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// GitLab sends `null` for booleans it considers false; `#[serde(default)]` alone only covers absence.
fn null_as_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// GitLab sends `null` for some lists it has nothing in (`parent_ids` of context commits,
/// `labels` on some versions); `#[serde(default)]` alone only covers absence.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A GitLab user as embedded in MRs and notes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Author {
    /// Numeric user id.
    pub id: u64,
    /// Login name; with the body marker, identifies reviewq's own notes.
    pub username: String,
    /// Display name (may be absent on redacted users).
    #[serde(default)]
    pub name: Option<String>,
}

/// The three SHAs a diff position needs. GitLab rejects or silently mis-renders positions
/// whose SHAs are not those of the MR's latest diff version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffShas {
    /// Merge base of source and target.
    pub base_sha: String,
    /// Target branch head when the version was created.
    pub start_sha: String,
    /// Source branch head (the reviewed commit).
    pub head_sha: String,
}

impl From<&MrVersion> for DiffShas {
    fn from(version: &MrVersion) -> Self {
        DiffShas {
            base_sha: version.base_commit_sha.clone(),
            start_sha: version.start_commit_sha.clone(),
            head_sha: version.head_commit_sha.clone(),
        }
    }
}

/// `diff_refs` of an MR. All three are `null` (or the object is) until GitLab has computed
/// the first diff version asynchronously after creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DiffRefs {
    /// Merge base.
    #[serde(default)]
    pub base_sha: Option<String>,
    /// Source branch head.
    #[serde(default)]
    pub head_sha: Option<String>,
    /// Target branch head.
    #[serde(default)]
    pub start_sha: Option<String>,
}

/// The fields of `GET /projects/:id/merge_requests/:iid` that reviewq uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MergeRequest {
    /// Instance-wide id.
    pub id: u64,
    /// Per-project number shown in the UI (`!iid`).
    pub iid: u64,
    /// Target project id (where the MR lives).
    pub project_id: u64,
    /// Title.
    pub title: String,
    /// Description (Markdown), `null` when empty.
    #[serde(default)]
    pub description: Option<String>,
    /// `opened`, `closed`, `merged` or `locked` (kept as text: GitLab may add states).
    pub state: String,
    /// Draft MRs may be skipped by policy.
    #[serde(default, deserialize_with = "null_as_false")]
    pub draft: bool,
    /// Head commit of the source branch; `null` in rare states (e.g. source branch gone).
    #[serde(default)]
    pub sha: Option<String>,
    /// Source branch name.
    pub source_branch: String,
    /// Target branch name.
    pub target_branch: String,
    /// Where the source branch lives (differs from `project_id` for forks).
    #[serde(default)]
    pub source_project_id: Option<u64>,
    /// Where the MR lives.
    #[serde(default)]
    pub target_project_id: Option<u64>,
    /// Link for humans.
    pub web_url: String,
    /// MR author.
    #[serde(default)]
    pub author: Option<Author>,
    /// SHAs of the latest diff version; empty right after creation (see [`MergeRequest::diff_shas`]).
    #[serde(default)]
    pub diff_refs: Option<DiffRefs>,
    /// Mergeability as GitLab sees it (informational).
    #[serde(default)]
    pub detailed_merge_status: Option<String>,
    /// A string, not a number: it can be `"1000+"`.
    #[serde(default)]
    pub changes_count: Option<String>,
    /// Last update time.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// Label names (GitLab sends names unless asked for `with_labels_details`); policy may
    /// skip or steer a review by label.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: Vec<String>,
}

impl MergeRequest {
    /// The diff SHAs, or `None` while GitLab has not filled `diff_refs` in yet.
    pub fn diff_shas(&self) -> Option<DiffShas> {
        let refs = self.diff_refs.as_ref()?;
        let non_empty =
            |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        Some(DiffShas {
            base_sha: non_empty(&refs.base_sha)?,
            start_sha: non_empty(&refs.start_sha)?,
            head_sha: non_empty(&refs.head_sha)?,
        })
    }
}

/// One entry of `GET .../merge_requests/:iid/versions` (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MrVersion {
    /// Version id.
    pub id: u64,
    /// Source head of this version: the `head_sha` of positions.
    pub head_commit_sha: String,
    /// Merge base: the `base_sha` of positions.
    pub base_commit_sha: String,
    /// Target head: the `start_sha` of positions.
    pub start_commit_sha: String,
    /// When GitLab computed the version.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Owning MR's instance-wide id.
    #[serde(default)]
    pub merge_request_id: Option<u64>,
    /// `collected` once the diff is stored.
    #[serde(default)]
    pub state: Option<String>,
    /// Number of changed files, as a string like `changes_count`.
    #[serde(default)]
    pub real_size: Option<String>,
}

/// One file of `GET .../merge_requests/:iid/diffs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DiffFile {
    /// Path before the change (equals `new_path` for added files).
    pub old_path: String,
    /// Path after the change (equals `old_path` for deleted files).
    pub new_path: String,
    /// Old file mode; `"0"` for added files.
    #[serde(default)]
    pub a_mode: Option<String>,
    /// New file mode; `"0"` for deleted files.
    #[serde(default)]
    pub b_mode: Option<String>,
    /// Hunks starting at the first `@@` line; empty when collapsed, too large or binary.
    #[serde(default)]
    pub diff: String,
    /// The file was added.
    #[serde(default, deserialize_with = "null_as_false")]
    pub new_file: bool,
    /// The file was renamed (`old_path` != `new_path`).
    #[serde(default, deserialize_with = "null_as_false")]
    pub renamed_file: bool,
    /// The file was deleted.
    #[serde(default, deserialize_with = "null_as_false")]
    pub deleted_file: bool,
    /// GitLab marks generated files (16.9+); reviewing them is usually wasted tokens.
    #[serde(default, deserialize_with = "null_as_false")]
    pub generated_file: bool,
    /// Diff omitted but fetchable on request (18.4+).
    #[serde(default, deserialize_with = "null_as_false")]
    pub collapsed: bool,
    /// Diff omitted and not fetchable (18.4+).
    #[serde(default, deserialize_with = "null_as_false")]
    pub too_large: bool,
}

/// Largest single-file diff decoded, in bytes of its JSON text. GitLab itself withholds
/// diffs far smaller than this (`too_large`); a bigger one comes from a misconfigured or
/// hostile server and is reported as `too_large` without being decoded, so that a 50 MB
/// generated file costs the worker one copy of the response (not three). reviewq never
/// reviews a file diff over 512 KiB anyway (`review::skip::DEFAULT_MAX_FILE_DIFF_BYTES`).
pub const MAX_FILE_DIFF_JSON_BYTES: usize = 2 * 1024 * 1024;

/// [`DiffFile`] as read from a response body: the diff text stays a borrowed slice of the
/// body until its size is known.
#[derive(Deserialize)]
pub(super) struct DiffFileWire<'a> {
    old_path: String,
    new_path: String,
    #[serde(default)]
    a_mode: Option<String>,
    #[serde(default)]
    b_mode: Option<String>,
    #[serde(default, borrow)]
    diff: Option<&'a serde_json::value::RawValue>,
    #[serde(default, deserialize_with = "null_as_false")]
    new_file: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    renamed_file: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    deleted_file: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    generated_file: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    collapsed: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    too_large: bool,
}

impl DiffFileWire<'_> {
    /// The file, with a diff over [`MAX_FILE_DIFF_JSON_BYTES`] dropped and marked
    /// `too_large`.
    pub(super) fn into_bounded(self) -> Result<DiffFile, serde_json::Error> {
        let (diff, oversized) = match self.diff {
            Some(raw) if raw.get().len() > MAX_FILE_DIFF_JSON_BYTES => (String::new(), true),
            Some(raw) => (
                serde_json::from_str::<Option<String>>(raw.get())?.unwrap_or_default(),
                false,
            ),
            None => (String::new(), false),
        };
        Ok(DiffFile {
            old_path: self.old_path,
            new_path: self.new_path,
            a_mode: self.a_mode,
            b_mode: self.b_mode,
            diff,
            new_file: self.new_file,
            renamed_file: self.renamed_file,
            deleted_file: self.deleted_file,
            generated_file: self.generated_file,
            collapsed: self.collapsed,
            too_large: self.too_large || oversized,
        })
    }
}

/// [`Compare`] as read from a response body (see [`DiffFileWire`]).
#[derive(Deserialize)]
pub(super) struct CompareWire<'a> {
    #[serde(default, deserialize_with = "null_as_empty")]
    commits: Vec<Commit>,
    #[serde(default, borrow)]
    diffs: Option<Vec<DiffFileWire<'a>>>,
    #[serde(default, deserialize_with = "null_as_false")]
    compare_timeout: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    compare_same_ref: bool,
    #[serde(default)]
    web_url: Option<String>,
}

impl CompareWire<'_> {
    /// The comparison, with oversized diffs dropped (see [`DiffFileWire::into_bounded`]).
    pub(super) fn into_bounded(self) -> Result<Compare, serde_json::Error> {
        Ok(Compare {
            commits: self.commits,
            diffs: self
                .diffs
                .unwrap_or_default()
                .into_iter()
                .map(DiffFileWire::into_bounded)
                .collect::<Result<_, _>>()?,
            compare_timeout: self.compare_timeout,
            compare_same_ref: self.compare_same_ref,
            web_url: self.web_url,
        })
    }
}

/// Which line of a diff an inline comment anchors to. An enum rather than two optional
/// numbers so that GitLab's rules cannot be broken by construction: sending the wrong
/// combination yields the `line_code` 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineAnchor {
    /// A `+` line: GitLab wants `new_line` only.
    Added {
        /// 1-based line number in the new file.
        new_line: u32,
    },
    /// A `-` line: GitLab wants `old_line` only.
    Removed {
        /// 1-based line number in the old file.
        old_line: u32,
    },
    /// A context line: GitLab wants both numbers (they may differ).
    Unchanged {
        /// 1-based line number in the old file.
        old_line: u32,
        /// 1-based line number in the new file.
        new_line: u32,
    },
}

impl LineAnchor {
    /// The `old_line` to send, if any.
    pub fn old_line(&self) -> Option<u32> {
        match *self {
            LineAnchor::Added { .. } => None,
            LineAnchor::Removed { old_line } | LineAnchor::Unchanged { old_line, .. } => {
                Some(old_line)
            }
        }
    }

    /// The `new_line` to send, if any.
    pub fn new_line(&self) -> Option<u32> {
        match *self {
            LineAnchor::Removed { .. } => None,
            LineAnchor::Added { new_line } | LineAnchor::Unchanged { new_line, .. } => {
                Some(new_line)
            }
        }
    }
}

/// Where an inline discussion is anchored (`position` with `position_type: "text"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// SHAs of the MR's latest diff version.
    pub shas: DiffShas,
    /// Old path (for an added file, the new path).
    pub old_path: String,
    /// New path (for a deleted file, the old path).
    pub new_path: String,
    /// The line.
    pub line: LineAnchor,
}

impl Position {
    /// Builds a position on `file` following GitLab's path rules: both paths hold the new path
    /// for an added file, both hold the old path for a deleted file, and a rename keeps both.
    pub fn new(shas: DiffShas, file: &DiffFile, line: LineAnchor) -> Self {
        let (old_path, new_path) = if file.new_file {
            (file.new_path.clone(), file.new_path.clone())
        } else if file.deleted_file {
            (file.old_path.clone(), file.old_path.clone())
        } else {
            (file.old_path.clone(), file.new_path.clone())
        };
        Position {
            shas,
            old_path,
            new_path,
            line,
        }
    }
}

/// The wire form of a [`Position`]; absent lines are omitted, never sent as `0`
/// (GitLab has answered 500 to `old_line=0`).
#[derive(Serialize)]
pub(crate) struct PositionBody<'a> {
    position_type: &'static str,
    base_sha: &'a str,
    start_sha: &'a str,
    head_sha: &'a str,
    old_path: &'a str,
    new_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_line: Option<u32>,
}

impl<'a> From<&'a Position> for PositionBody<'a> {
    fn from(p: &'a Position) -> Self {
        PositionBody {
            position_type: "text",
            base_sha: &p.shas.base_sha,
            start_sha: &p.shas.start_sha,
            head_sha: &p.shas.head_sha,
            old_path: &p.old_path,
            new_path: &p.new_path,
            old_line: p.line.old_line(),
            new_line: p.line.new_line(),
        }
    }
}

/// A note's `position` as GitLab returns it (fields optional: image and file positions differ).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NotePosition {
    /// `text`, `image` or `file`.
    #[serde(default)]
    pub position_type: Option<String>,
    /// Merge base.
    #[serde(default)]
    pub base_sha: Option<String>,
    /// Target head.
    #[serde(default)]
    pub start_sha: Option<String>,
    /// Source head.
    #[serde(default)]
    pub head_sha: Option<String>,
    /// Old path.
    #[serde(default)]
    pub old_path: Option<String>,
    /// New path.
    #[serde(default)]
    pub new_path: Option<String>,
    /// Old line, if anchored on the old side.
    #[serde(default)]
    pub old_line: Option<u32>,
    /// New line, if anchored on the new side.
    #[serde(default)]
    pub new_line: Option<u32>,
}

/// A note (comment) on an MR.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Note {
    /// Note id.
    pub id: u64,
    /// `null` for overview notes, `DiscussionNote` for thread replies, `DiffNote` for inline notes.
    #[serde(rename = "type", default)]
    pub note_type: Option<String>,
    /// Markdown body (where reviewq's hidden markers live).
    #[serde(default)]
    pub body: String,
    /// Who wrote it.
    #[serde(default)]
    pub author: Option<Author>,
    /// Created at.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Updated at.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// GitLab-generated notes ("added 1 commit"); never ours, skip them.
    #[serde(default, deserialize_with = "null_as_false")]
    pub system: bool,
    /// Whether the note belongs to a resolvable thread.
    #[serde(default, deserialize_with = "null_as_false")]
    pub resolvable: bool,
    /// Whether that thread is resolved.
    #[serde(default, deserialize_with = "null_as_false")]
    pub resolved: bool,
    /// Anchor of a `DiffNote`.
    #[serde(default)]
    pub position: Option<NotePosition>,
}

impl Note {
    /// True for inline (diff) notes.
    pub fn is_diff_note(&self) -> bool {
        self.note_type.as_deref() == Some("DiffNote")
    }
}

/// A thread of notes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Discussion {
    /// 40-hex discussion id.
    pub id: String,
    /// True for a standalone overview note presented as a discussion.
    #[serde(default, deserialize_with = "null_as_false")]
    pub individual_note: bool,
    /// Notes, oldest first.
    #[serde(default)]
    pub notes: Vec<Note>,
}

/// A draft (pending) note of `GET`/`POST .../merge_requests/:iid/draft_notes`: visible only to
/// its author until published with `bulk_publish`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DraftNote {
    /// Draft id (not the id of the note it becomes when published).
    pub id: u64,
    /// Markdown body (drafts call it `note`; published notes call it `body`).
    #[serde(default)]
    pub note: String,
    /// Author's user id; GitLab only ever lists the caller's own drafts.
    #[serde(default)]
    pub author_id: Option<u64>,
    /// The thread a reply draft continues (40-hex); `None` for a draft that starts one.
    #[serde(default)]
    pub discussion_id: Option<String>,
    /// Anchor as sent. GitLab answers an object of `null`s (with `position_type: "text"`) for
    /// a draft without one: use [`DraftNote::diff_position`] rather than this field.
    #[serde(default)]
    pub position: Option<NotePosition>,
}

impl DraftNote {
    /// The anchor of an inline draft; `None` for an overview draft, whose `position` GitLab
    /// sends as an object of `null`s.
    pub fn diff_position(&self) -> Option<&NotePosition> {
        self.position.as_ref().filter(|p| {
            p.head_sha.as_deref().is_some_and(|s| !s.is_empty())
                && p.new_path.as_deref().is_some_and(|s| !s.is_empty())
        })
    }
}

/// A commit as `GET .../merge_requests/:iid/commits` and `GET .../repository/compare` list it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Commit {
    /// Full 40-hex SHA: what positions, versions and `compare` use.
    pub id: String,
    /// Abbreviated SHA, for humans.
    #[serde(default)]
    pub short_id: String,
    /// First line of the message.
    #[serde(default)]
    pub title: String,
    /// Whole message (`None` if GitLab left it out).
    #[serde(default)]
    pub message: Option<String>,
    /// Author name as recorded in the commit.
    #[serde(default)]
    pub author_name: Option<String>,
    /// Parent SHAs. Can be empty even for a commit that has parents: GitLab served the MR
    /// commit list from its database without them (issue 496665, fixed behind
    /// `commits_from_gitaly`), and context commits send `null`. Do not infer history from an
    /// empty list.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parent_ids: Vec<String>,
    /// Commit time as GitLab reports it (the committer date).
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// `GET /projects/:id/repository/compare?from=&to=`: what `to` adds over the merge base of
/// `from` and `to` (GitLab's default, `from...to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// Commits reachable from `to` but not from `from`, oldest first.
    pub commits: Vec<Commit>,
    /// Changed files, in the same shape as MR diffs; may be incomplete (see
    /// [`Compare::is_partial`]).
    pub diffs: Vec<DiffFile>,
    /// GitLab stopped collecting diffs at its limits (the name is historical: it is the diff
    /// collection's overflow flag), so `diffs` lacks files.
    pub compare_timeout: bool,
    /// `from` and `to` are the same commit: nothing to compare, both lists are empty.
    pub compare_same_ref: bool,
    /// Link for humans.
    pub web_url: Option<String>,
}

impl Compare {
    /// True when GitLab left part of the change out: the diff collection overflowed
    /// (`compare_timeout`), or a file's diff was collapsed or too large. An incremental review
    /// built on a partial comparison would miss changes; fall back to the full MR diff.
    pub fn is_partial(&self) -> bool {
        self.compare_timeout || self.diffs.iter().any(|f| f.collapsed || f.too_large)
    }
}

/// What `post_discussion` created: the ids to record so the comment is never posted twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedDiscussion {
    /// Discussion (thread) id, for replies and resolving.
    pub discussion_id: String,
    /// Id of the first note (the `DiffNote`), for editing in place.
    pub note_id: u64,
}
