//! A simulated GitLab REST v4 server: the endpoints reviewq uses, with GitLab's answers,
//! pagination, position validation and error bodies, plus runtime-settable faults.
//!
//! ```ignore
//! # async fn demo() -> Result<(), crate::sim::Error> {
//! use crate::sim::gitlab::{FakeGitLab, FileSpec, MrSpec};
//! let gitlab = FakeGitLab::start("secret-token").await?;
//! gitlab.add_merge_request(MrSpec {
//!     files: vec![FileSpec::modified("src/lib.rs", "@@ -1,1 +1,2 @@\n a\n+b\n")],
//!     ..MrSpec::default()
//! })?;
//! // point the client at gitlab.base_url(), then inspect gitlab.discussions("group/project", 1)
//! # Ok(()) }
//! ```
//!
//! What is simulated, and how faithfully, is documented on each route in `routes.rs` and on
//! the handlers in `state/`; the wire formats follow `reference/gitlab-glm-api.md` (sections
//! A1–A8), and commits, comparisons and draft notes follow GitLab's `Entities::Commit`,
//! `Entities::Compare` and `Entities::DraftNote` (`doc/api/draft_notes.md`).
//!
//! There is no repository behind it: a push says what git would compute ([`PushSpec`]), and a
//! comparison the fake cannot derive from that is refused with a 422 that says so.

mod diff;
mod people;
mod routes;
mod state;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, Utc};

use self::state::{Inner, State};
pub use self::{people::access, state::StoredAward};
use super::{Error, server};

/// Username of the account the configured token belongs to: the author of every comment the
/// clients post. Tests match markers together with this name, as reviewq does.
pub const BOT_USERNAME: &str = "reviewq-bot";

/// Largest request body accepted. GitLab caps a note at 1,000,000 characters; JSON escaping of
/// multi-byte text can triple that. Larger bodies get a 413 before any handler runs.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// One merge request to serve. `Default` gives a valid MR with no files at `group/project!1`;
/// override what the test cares about with struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MrSpec {
    /// Full project path (`group/sub/project`); requests may use it URL-encoded or the id.
    pub project_path: String,
    /// Numeric project id.
    pub project_id: u64,
    /// MR number within the project.
    pub iid: u64,
    /// Title.
    pub title: String,
    /// Description (Markdown); empty is served as `null`, as GitLab does.
    pub description: String,
    /// Source branch name.
    pub source_branch: String,
    /// Target branch name.
    pub target_branch: String,
    /// Changed files of the first diff version.
    pub files: Vec<FileSpec>,
    /// Source head of the first version.
    pub head_sha: String,
    /// Merge base.
    pub base_sha: String,
    /// Target head when the version was created.
    pub start_sha: String,
    /// How many `GET .../merge_requests/:iid` answer with `diff_refs: null` (GitLab fills
    /// `diff_refs` asynchronously after creation) before the real SHAs appear.
    pub diff_refs_pending_gets: u32,
}

impl Default for MrSpec {
    fn default() -> Self {
        MrSpec {
            project_path: "group/project".to_owned(),
            project_id: 1,
            iid: 1,
            title: "Add a feature".to_owned(),
            description: String::new(),
            source_branch: "feature".to_owned(),
            target_branch: "main".to_owned(),
            files: Vec::new(),
            head_sha: fake_sha("head"),
            base_sha: fake_sha("base"),
            start_sha: fake_sha("start"),
            diff_refs_pending_gets: 0,
        }
    }
}

/// One changed file, as `GET .../diffs` lists it.
///
/// GitLab lists an added file with `old_path == new_path` and a deleted one likewise; the
/// constructors do that, and [`FakeGitLab::add_merge_request`] enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Path before the change.
    pub old_path: String,
    /// Path after the change.
    pub new_path: String,
    /// The file was added.
    pub new_file: bool,
    /// The file was deleted.
    pub deleted_file: bool,
    /// The file was renamed.
    pub renamed_file: bool,
    /// Hunks from the first `@@` (no `---`/`+++` lines); empty for binary or collapsed files.
    pub diff: String,
    /// GitLab's "generated file" flag (16.9+).
    pub generated_file: bool,
    /// Diff omitted but fetchable (18.4+); `diff` should then be empty.
    pub collapsed: bool,
    /// Diff omitted and not fetchable (18.4+); `diff` should then be empty.
    pub too_large: bool,
}

impl FileSpec {
    fn plain(old_path: &str, new_path: &str, diff: &str) -> Self {
        FileSpec {
            old_path: old_path.to_owned(),
            new_path: new_path.to_owned(),
            new_file: false,
            deleted_file: false,
            renamed_file: false,
            diff: diff.to_owned(),
            generated_file: false,
            collapsed: false,
            too_large: false,
        }
    }

    /// A modified file.
    pub fn modified(path: &str, diff: &str) -> Self {
        FileSpec::plain(path, path, diff)
    }

    /// An added file (`old_path` is the new path, as GitLab lists it).
    pub fn added(path: &str, diff: &str) -> Self {
        FileSpec {
            new_file: true,
            ..FileSpec::plain(path, path, diff)
        }
    }

    /// A deleted file (`new_path` is the old path, as GitLab lists it).
    pub fn deleted(path: &str, diff: &str) -> Self {
        FileSpec {
            deleted_file: true,
            ..FileSpec::plain(path, path, diff)
        }
    }

    /// A renamed (and possibly modified) file.
    pub fn renamed(old_path: &str, new_path: &str, diff: &str) -> Self {
        FileSpec {
            renamed_file: true,
            ..FileSpec::plain(old_path, new_path, diff)
        }
    }
}

/// A push for [`FakeGitLab::push_with`]. The fake has no repository: what git would compute
/// from commits is given here. Each push adds one commit (`head_sha`) and one diff version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSpec {
    /// The MR's whole diff against its merge base at the new head (what `GET .../diffs`
    /// serves from now on).
    pub files: Vec<FileSpec>,
    /// The new head commit.
    pub head_sha: String,
    /// What changed between the previous head and this one: the diffs of
    /// `compare(previous head, head_sha)`. Ignored when `rewrite_history` is set.
    pub delta: Vec<FileSpec>,
    /// A force-push: the new head descends from the merge base, not from the previous head,
    /// so the old heads leave the MR's commit list and a comparison from one of them answers
    /// the whole diff (`files`), as GitLab's merge-base comparison does for such history.
    pub rewrite_history: bool,
}

/// The endpoints, for fault rules and request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `GET .../merge_requests/:iid`
    MergeRequest,
    /// `PUT .../merge_requests/:iid` (the description)
    UpdateMergeRequest,
    /// `GET .../merge_requests/:iid/versions`
    Versions,
    /// `GET .../merge_requests/:iid/diffs`
    Diffs,
    /// `GET .../merge_requests/:iid/discussions` (and one discussion by id)
    ListDiscussions,
    /// `POST .../merge_requests/:iid/discussions`
    CreateDiscussion,
    /// `POST .../discussions/:id/notes`
    ReplyToDiscussion,
    /// `PUT .../discussions/:id?resolved=`
    ResolveDiscussion,
    /// `GET .../merge_requests/:iid/notes` (and one note by id)
    ListNotes,
    /// `POST .../merge_requests/:iid/notes`
    CreateNote,
    /// `PUT .../notes/:note_id`
    UpdateNote,
    /// `GET /projects/:id/repository/files/:path/raw`
    RawFile,
    /// `GET .../merge_requests/:iid/commits`
    MrCommits,
    /// `GET /projects/:id/repository/compare`
    Compare,
    /// `POST .../merge_requests/:iid/draft_notes`
    CreateDraftNote,
    /// `GET .../merge_requests/:iid/draft_notes`
    ListDraftNotes,
    /// `DELETE .../merge_requests/:iid/draft_notes/:id`
    DeleteDraftNote,
    /// `POST .../merge_requests/:iid/draft_notes/bulk_publish`
    BulkPublishDraftNotes,
    /// `GET /user`
    CurrentUser,
    /// `GET /projects/:id/members/all/:user_id`
    Member,
    /// `GET .../notes/:id/award_emoji`
    ListAwardEmoji,
    /// `POST .../notes/:id/award_emoji`
    CreateAwardEmoji,
}

/// A failure the server injects instead of (or after) doing its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitLabFault {
    /// Rack::Attack's throttle: `429`, `text/plain` body `Retry later\n`, `Retry-After` and the
    /// `RateLimit-*` headers. Nothing is processed.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// The same 429 without any rate-limit header (GitLab.com has done this, issue 365728).
    RateLimitedWithoutHint,
    /// `500 {"message":"500 Internal Server Error"}`; nothing is processed.
    ServerError,
    /// The request is processed (a comment or draft IS stored, drafts ARE published), then
    /// answered with the 500 above: the client must find its work by marker before retrying.
    ServerErrorAfterStore,
    /// A proxy's `502 Bad Gateway` HTML page; nothing is processed.
    BadGateway,
    /// Answer normally, but only after this delay (on top of the global latency).
    Delay(Duration),
    /// The request is processed (a comment IS stored), then the answer is held back this
    /// long: the window in which a killed client has posted but not recorded its comment.
    StoreThenHang(Duration),
    /// `POST .../discussions` creates a plain thread (`DiscussionNote`) even though the
    /// position is valid, as GitLab does when it cannot place a note inline.
    NotInline,
}

/// One request as the server saw it, for assertions on traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path and query, still percent-encoded as sent.
    pub uri: String,
    /// Which endpoint handled it (`None`: no route matched, or the path was malformed).
    pub route: Option<Route>,
    /// Status answered.
    pub status: u16,
    /// When the request reached the server (before latency and faults).
    pub arrived: std::time::Instant,
}

/// A stored thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDiscussion {
    /// 40-hex id.
    pub id: String,
    /// True for an overview note (created with `POST .../notes`).
    pub individual_note: bool,
    /// Notes, oldest first.
    pub notes: Vec<StoredNote>,
}

/// A stored note with everything GitLab would return about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNote {
    /// Note id (instance-wide).
    pub id: u64,
    /// `None` (overview), `DiscussionNote` (thread) or `DiffNote` (inline).
    pub note_type: Option<String>,
    /// Markdown body as stored (after edits).
    pub body: String,
    /// Author's username ([`BOT_USERNAME`] for everything the clients post).
    pub author: String,
    /// GitLab-generated note (seeded by tests only).
    pub system: bool,
    /// The inline anchor of a `DiffNote`.
    pub position: Option<StoredPosition>,
    /// Part of a resolvable thread.
    pub resolvable: bool,
    /// That thread is resolved.
    pub resolved: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last edit time.
    pub updated_at: DateTime<Utc>,
}

/// A stored draft note: invisible to [`FakeGitLab::discussions`] and the marker counts until
/// published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDraftNote {
    /// Draft id (instance-wide, its own sequence).
    pub id: u64,
    /// Markdown body.
    pub note: String,
    /// Author's username ([`BOT_USERNAME`]: drafts are only created through the API).
    pub author: String,
    /// The validated anchor of an inline draft.
    pub position: Option<StoredPosition>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A note's position as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPosition {
    /// `text` or `file`.
    pub position_type: String,
    /// Merge base.
    pub base_sha: String,
    /// Target head.
    pub start_sha: String,
    /// Source head.
    pub head_sha: String,
    /// Old path.
    pub old_path: String,
    /// New path.
    pub new_path: String,
    /// Old-side line, if sent.
    pub old_line: Option<u32>,
    /// New-side line, if sent.
    pub new_line: Option<u32>,
}

/// A running simulated GitLab. Stops when dropped (or with [`FakeGitLab::shutdown`]).
#[derive(Debug)]
pub struct FakeGitLab {
    /// State shared with the handlers.
    inner: Arc<Inner>,
    /// The server task and its stop signal.
    running: server::Running,
}

impl FakeGitLab {
    /// Starts a server on `127.0.0.1:0` that accepts `token` (as `PRIVATE-TOKEN` or
    /// `Authorization: Bearer`).
    ///
    /// # Errors
    /// [`Error::Bind`] when no loopback port can be bound.
    pub async fn start(token: &str) -> Result<FakeGitLab, Error> {
        let (listener, addr) = server::bind("GitLab").await?;
        let (stop, stopper) = server::stop_channel();
        let inner = Arc::new(Inner {
            base_url: format!("http://{addr}"),
            token: token.to_owned(),
            stopper,
            state: Mutex::new(State::default()),
        });
        let router = routes::router(Arc::clone(&inner), MAX_REQUEST_BYTES);
        let running = server::serve("GitLab", listener, addr, router, stop);
        Ok(FakeGitLab { inner, running })
    }

    /// `http://127.0.0.1:PORT`: the instance URL (`GITLAB_URL`); the API is under `/api/v4`.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Stops the server, letting in-flight requests finish (for at most a couple of seconds).
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Adds (or replaces) a merge request with one diff version.
    ///
    /// # Errors
    /// [`Error::InvalidDiff`] if a file's `diff` is not a GitLab diff.
    pub fn add_merge_request(&self, spec: MrSpec) -> Result<(), Error> {
        self.state().add_merge_request(spec)
    }

    /// Simulates a push: a new diff version with `files` and `head_sha` (same base and start),
    /// which becomes the latest. Positions with the old head SHA are rejected from now on.
    /// The MR gains one commit, `head_sha`, whose parent is the previous head; what changed
    /// between the two is not given, so comparing them answers the fake's 422 (use
    /// [`Self::push_with`] for that).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`], [`Error::InvalidDiff`], [`Error::InvalidPush`] when
    /// `head_sha` is already a commit of the MR.
    pub fn push(
        &self,
        project: &str,
        iid: u64,
        files: Vec<FileSpec>,
        head_sha: &str,
    ) -> Result<(), Error> {
        self.state().push(project, iid, files, head_sha)
    }

    /// Simulates a push with its commit history: see [`PushSpec`]. Unlike [`Self::push`], the
    /// comparison from the previous head is known, so `GET .../repository/compare` can answer it.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`], [`Error::InvalidDiff`] (in `files` or `delta`),
    /// [`Error::InvalidPush`] when a push without `rewrite_history` names a commit the MR
    /// already has.
    pub fn push_with(&self, project: &str, iid: u64, spec: PushSpec) -> Result<(), Error> {
        self.state().push_with(project, iid, spec)
    }

    /// Sets the MR's labels (served as names in `labels`).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn set_labels(&self, project: &str, iid: u64, labels: Vec<String>) -> Result<(), Error> {
        self.state().mr_mut(project, iid)?.labels = labels;
        Ok(())
    }

    /// The author edits the MR's description, as in GitLab's UI: `updated_at` moves.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn edit_description(&self, project: &str, iid: u64, text: &str) -> Result<(), Error> {
        self.state().author_edit(project, iid, text)
    }

    /// The MR's description as stored (empty when none).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn description(&self, project: &str, iid: u64) -> Result<String, Error> {
        self.state().description(project, iid)
    }

    /// How many API writes of the MR's description were accepted (an unchanged one counts
    /// too), and the quick actions they made
    /// GitLab run (lines outside code starting with `/`; GitLab runs and removes them).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn description_edits(&self, project: &str, iid: u64) -> Result<(u64, Vec<String>), Error> {
        let log = self.state().description_log(project, iid)?;
        Ok((log.edits, log.quick_actions))
    }

    /// Marks the MR as a draft, or as ready.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn set_draft(&self, project: &str, iid: u64, draft: bool) -> Result<(), Error> {
        self.state().mr_mut(project, iid)?.draft = draft;
        Ok(())
    }

    /// Makes comparisons within this MR overflow GitLab's diff limits: `compare_timeout` is
    /// `true` and only the first half of the files is listed, as GitLab stops collecting at
    /// its limit.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn set_compare_overflow(
        &self,
        project: &str,
        iid: u64,
        overflow: bool,
    ) -> Result<(), Error> {
        self.state().mr_mut(project, iid)?.compare_overflow = overflow;
        Ok(())
    }

    /// Makes the next `gets` fetches of the MR answer `diff_refs: null`.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn set_diff_refs_pending(&self, project: &str, iid: u64, gets: u32) -> Result<(), Error> {
        let mut state = self.state();
        state.mr_mut(project, iid)?.diff_refs_pending_gets = gets;
        Ok(())
    }

    /// Stores a file at a ref (branch, tag or SHA) for `GET .../repository/files/:path/raw`.
    /// The project is created if unknown (a numeric `project` gets a path `project-N`).
    pub fn add_file(&self, project: &str, git_ref: &str, path: &str, content: impl Into<Vec<u8>>) {
        self.state()
            .add_file(project, git_ref, path, content.into());
    }

    /// Adds a note written by someone else (a human, or GitLab itself when `system`) as an
    /// overview note, e.g. to check that dedup ignores other authors and system notes.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn seed_note(
        &self,
        project: &str,
        iid: u64,
        author: &str,
        body: &str,
        system: bool,
    ) -> Result<StoredNote, Error> {
        self.state().seed_note(project, iid, author, body, system)
    }

    /// Adds a reply by `author` (typically a human answering one of reviewq's threads) at the
    /// end of a discussion. The reply takes the thread's type, position and resolved state; an
    /// overview note becomes a resolvable thread, as when a user replies to it in the UI.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`], [`Error::UnknownDiscussion`].
    pub fn seed_reply(
        &self,
        project: &str,
        iid: u64,
        discussion_id: &str,
        author: &str,
        body: &str,
    ) -> Result<StoredNote, Error> {
        self.state()
            .seed_reply(project, iid, discussion_id, author, body)
    }

    /// Resolves or unresolves a thread as a human would in the UI (no request is logged).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`], [`Error::UnknownDiscussion`] (also for a thread
    /// without resolvable notes).
    pub fn set_discussion_resolved(
        &self,
        project: &str,
        iid: u64,
        discussion_id: &str,
        resolved: bool,
    ) -> Result<(), Error> {
        self.state()
            .set_resolved(project, iid, discussion_id, resolved)
    }

    /// Makes the next `times` requests to `route` fail with `fault` (rules are consumed in
    /// the order they were added; the first matching one with requests left applies).
    pub fn fail_next(&self, route: Route, times: u32, fault: GitLabFault) {
        self.state().faults.push(state::FaultRule {
            route: Some(route),
            remaining: times,
            fault,
        });
    }

    /// Like [`Self::fail_next`] for requests to any route.
    pub fn fail_next_any(&self, times: u32, fault: GitLabFault) {
        self.state().faults.push(state::FaultRule {
            route: None,
            remaining: times,
            fault,
        });
    }

    /// Makes `per_cent` of the requests to `routes` (every route if empty) fail with
    /// `fault`, picked by a fixed-seed generator (the same run of picks every time; which
    /// request gets one still depends on arrival order). Checked after the `fail_next` rules;
    /// one share rule per call, the first that picks a request applies.
    pub fn fail_share(&self, routes: &[Route], per_cent: u32, fault: GitLabFault) {
        self.state().shares.push(state::ShareRule {
            routes: routes.to_vec(),
            per_cent: per_cent.min(100),
            fault,
        });
    }

    /// Removes every pending fault rule (share rules included).
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.shares.clear();
    }

    /// Delay added to every request (before any fault applies).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Threads of the MR, oldest first (overview notes included, as GitLab lists them).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn discussions(&self, project: &str, iid: u64) -> Result<Vec<StoredDiscussion>, Error> {
        Ok(self.state().mr(project, iid)?.discussions.clone())
    }

    /// Draft notes of the MR not yet published or deleted, oldest first.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn draft_notes(&self, project: &str, iid: u64) -> Result<Vec<StoredDraftNote>, Error> {
        Ok(self.state().mr(project, iid)?.drafts.clone())
    }

    /// Every note of the MR, oldest first.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn notes(&self, project: &str, iid: u64) -> Result<Vec<StoredNote>, Error> {
        let state = self.state();
        let mr = state.mr(project, iid)?;
        let mut notes: Vec<StoredNote> = mr
            .discussions
            .iter()
            .flat_map(|d| d.notes.iter().cloned())
            .collect();
        notes.sort_by_key(|n| (n.created_at, n.id));
        Ok(notes)
    }

    /// How many times each reviewq marker (`<!-- reviewq:... -->`) occurs across the MR's
    /// stored note bodies (a body counts a marker once). A count above 1 is a duplicate post.
    /// Draft notes are not counted: nobody sees them until they are published.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn marker_counts(&self, project: &str, iid: u64) -> Result<BTreeMap<String, usize>, Error> {
        let notes = self.notes(project, iid)?;
        Ok(count_markers(notes.iter().map(|n| n.body.as_str())))
    }

    /// Duplicate posts on the MR: for each marker, its count minus one, summed.
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn duplicate_count(&self, project: &str, iid: u64) -> Result<usize, Error> {
        Ok(duplicates(&self.marker_counts(project, iid)?))
    }

    /// [`Self::duplicate_count`] summed over every MR.
    pub fn total_duplicate_count(&self) -> usize {
        let state = self.state();
        state
            .mrs
            .values()
            .map(|mr| {
                let bodies = mr
                    .discussions
                    .iter()
                    .flat_map(|d| d.notes.iter().map(|n| n.body.as_str()));
                duplicates(&count_markers(bodies))
            })
            .sum()
    }

    /// Discussions stored through `POST .../discussions`, all MRs (500-after-store included).
    pub fn posted_discussions(&self) -> u64 {
        self.state().posted_discussions
    }

    /// Overview notes stored through `POST .../notes`, all MRs (500-after-store included).
    pub fn posted_notes(&self) -> u64 {
        self.state().posted_notes
    }

    /// Draft notes turned into discussions by `bulk_publish`, all MRs (500-after-store
    /// included).
    pub fn published_draft_notes(&self) -> u64 {
        self.state().published_draft_notes
    }

    /// Every request received, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// Requests received by `route`, whatever their answer.
    pub fn request_count(&self, route: Route) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.route == Some(route))
            .count()
    }
}

/// A deterministic 40-hex "commit SHA" derived from `seed`, for fixtures and pushes.
pub fn fake_sha(seed: &str) -> String {
    // FNV-1a, then a splitmix64 stream: stable across runs and platforms, unlike `Hash`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(48);
    while out.len() < 40 {
        hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = hash;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(40);
    out
}

/// The reviewq markers in `body`: every `<!-- reviewq:` ... `-->` with no `>` in between
/// (the regex `<!-- reviewq:[^>]*-->`).
pub fn markers(body: &str) -> Vec<&str> {
    const OPEN: &str = "<!-- reviewq:";
    let mut found = Vec::new();
    let mut rest = body;
    let mut offset = 0;
    while let Some(start) = rest.find(OPEN) {
        let from = start + OPEN.len();
        match rest[from..].find('>') {
            Some(gt) => {
                let end = from + gt + 1;
                if rest[..end].ends_with("-->") {
                    found.push(&body[offset + start..offset + end]);
                }
                // Resume after the `>` either way: `[^>]*` cannot span it.
                offset += end;
                rest = &rest[end..];
            }
            None => break,
        }
    }
    found
}

fn count_markers<'a>(bodies: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for body in bodies {
        let mut seen: Vec<&str> = markers(body);
        seen.sort_unstable();
        seen.dedup();
        for marker in seen {
            *counts.entry(marker.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn duplicates(counts: &BTreeMap<String, usize>) -> usize {
    counts.values().map(|c| c.saturating_sub(1)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_match_the_regex_and_skip_unterminated_ones() {
        let body = "a <!-- reviewq:v1 mr=1 f=abc --> b <!-- reviewq:x > y --> c <!-- reviewq:z";
        assert_eq!(markers(body), vec!["<!-- reviewq:v1 mr=1 f=abc -->"]);
    }

    #[test]
    fn a_marker_twice_in_one_body_is_not_a_duplicate_but_in_two_bodies_is() {
        let m = "<!-- reviewq:k -->";
        let once = count_markers([format!("{m}{m}").as_str()].into_iter());
        assert_eq!(duplicates(&once), 0);
        let twice = count_markers([m, m].into_iter());
        assert_eq!(duplicates(&twice), 1);
    }

    #[test]
    fn fake_shas_are_forty_hex_digits_and_stable() {
        let sha = fake_sha("x");
        assert_eq!(sha.len(), 40);
        assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(sha, fake_sha("x"));
        assert_ne!(sha, fake_sha("y"));
    }
}
