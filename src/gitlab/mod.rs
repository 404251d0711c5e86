//! GitLab REST v4 client. Knows nothing of the queue: it fetches MRs and diffs, posts and
//! lists comments, and classifies its own failures ([`Error::disposition`]).
//!
//! The base URL is injectable (tests point it at a fake server on loopback); auth is the
//! `PRIVATE-TOKEN` header; every response body is read with a size limit and every request
//! has a timeout.

mod admission;
mod error;
mod http;
mod replies;
mod retry;
mod types;

use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde::{Serialize, de::DeserializeOwned};
use url::Url;

pub use self::{
    admission::{Admission, Admit, HookFuture, Report, Ticket},
    error::Error,
    replies::{AccessLevel, AwardEmoji},
    types::{
        Author, Commit, Compare, DiffFile, DiffRefs, DiffShas, Discussion, DraftNote, LineAnchor,
        MergeRequest, MrVersion, Note, NotePosition, ParseProjectRefError, Position,
        PostedDiscussion, ProjectRef,
    },
};
use self::{
    http::Reply,
    retry::Replay,
    types::{PositionBody, encode_path_segment},
};

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// GitLab caps `per_page` at 100; the largest page means the fewest requests.
const PER_PAGE: &str = "100";

/// Guard against a server whose `x-next-page` never ends: 1000 pages of 100 items is far
/// beyond any MR (GitLab's own diff limit is 1000 files).
const MAX_PAGES: u32 = 1000;

/// Default body limit. A diffs page holds up to 100 files of up to 200 KB each by default
/// (20 MB, more on self-managed instances that raise the limit), plus JSON escaping.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// `GITLAB_TIMEOUT` default from the interface.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `GITLAB_RETRY_SECS` default: how long one request keeps being retried. Two minutes
/// outlast a GitLab restart and a per-minute throttle window.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);

/// `diff_refs` is usually filled within seconds of MR creation; five tries two seconds apart
/// cover that without holding a worker long (the queue retries after that anyway).
const DEFAULT_DIFF_REFS_ATTEMPTS: u32 = 5;
const DEFAULT_DIFF_REFS_DELAY: Duration = Duration::from_secs(2);

/// Settings of a [`GitLabClient`].
#[derive(Debug, Clone)]
pub struct GitLabConfig {
    /// Instance URL (`GITLAB_URL`), e.g. `https://gitlab.example.com` or
    /// `https://example.com/gitlab`; `/api/v4` is appended unless already present.
    pub base_url: Url,
    /// Token with `api` scope (`GITLAB_TOKEN`), sent as `PRIVATE-TOKEN`.
    pub token: SecretString,
    /// Whole-request timeout, body included (`GITLAB_TIMEOUT`).
    pub timeout: Duration,
    /// How long one request keeps being retried after a 429, a 5xx, a timeout or a broken
    /// connection (`GITLAB_RETRY_SECS`); zero sends every request once.
    pub retry_for: Duration,
    /// Extra PEM root certificate(s) for self-hosted instances with a private CA; they are
    /// trusted in addition to the system roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Largest response body read before giving up with [`Error::BodyTooLarge`].
    pub max_response_bytes: u64,
    /// How many times [`GitLabClient::merge_request_with_diff_refs`] fetches the MR.
    pub diff_refs_attempts: u32,
    /// Pause between those fetches.
    pub diff_refs_delay: Duration,
}

impl GitLabConfig {
    /// Settings with the documented defaults for everything but URL and token.
    pub fn new(base_url: Url, token: SecretString) -> Self {
        GitLabConfig {
            base_url,
            token,
            timeout: DEFAULT_TIMEOUT,
            retry_for: DEFAULT_RETRY_FOR,
            ca_cert_pem: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            diff_refs_attempts: DEFAULT_DIFF_REFS_ATTEMPTS,
            diff_refs_delay: DEFAULT_DIFF_REFS_DELAY,
        }
    }
}

/// A GitLab API client. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct GitLabClient {
    http: http::Http,
    /// `.../api/v4` without a trailing slash; paths are appended as text so that the
    /// `%2F` of project paths survives (URL builders would re-encode the `%`).
    api_base: String,
    /// Fetches of an MR whose `diff_refs` are still empty.
    diff_refs_attempts: u32,
    /// Pause between those fetches.
    diff_refs_delay: Duration,
}

/// `POST .../notes` and `PUT .../notes/:id` body.
#[derive(Serialize)]
struct NoteBody<'a> {
    body: &'a str,
}

/// `POST .../discussions` body.
#[derive(Serialize)]
struct DiscussionBody<'a> {
    body: &'a str,
    position: PositionBody<'a>,
}

/// `POST .../draft_notes` body; without a position the draft becomes a plain thread.
#[derive(Serialize)]
struct DraftNoteBody<'a> {
    note: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<PositionBody<'a>>,
}

impl GitLabClient {
    /// Builds a client.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL is not http(s) or carries credentials, the token is not a
    /// valid header value, or the CA certificate is not PEM.
    pub fn new(config: GitLabConfig) -> Result<Self> {
        let base = &config.base_url;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::Config(
                "GITLAB_URL must not contain credentials; use GITLAB_TOKEN".to_owned(),
            ));
        }
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "GITLAB_URL must be an http(s) URL, got {base}"
            )));
        }
        let mut root = base.clone();
        root.set_query(None);
        root.set_fragment(None);
        let root = root.as_str().trim_end_matches('/');
        let api_base = if root.ends_with("/api/v4") {
            root.to_owned()
        } else {
            format!("{root}/api/v4")
        };
        Ok(GitLabClient {
            http: http::Http::new(&config)?,
            api_base,
            diff_refs_attempts: config.diff_refs_attempts.max(1),
            diff_refs_delay: config.diff_refs_delay,
        })
    }

    /// The same client, asking `admission` before every request (and retry) and reporting
    /// every throttle to it: how a fleet shares one request budget and one back-off.
    #[must_use]
    pub fn with_admission(&self, admission: Admission) -> Self {
        let mut client = self.clone();
        client.http.admission = Some(admission);
        client
    }

    /// `GET /projects/:id/merge_requests/:iid`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown project or MR; otherwise see [`Error`].
    pub async fn merge_request(&self, project: &ProjectRef, iid: u64) -> Result<MergeRequest> {
        let what = format!("merge request {project}!{iid}");
        let url = self.url(&mr_path(project, iid), &[])?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        decode(&reply, &what)
    }

    /// Fetches the MR until its `diff_refs` are filled in (they are empty right after
    /// creation), waiting `diff_refs_delay` between `diff_refs_attempts` tries.
    ///
    /// # Errors
    /// [`Error::DiffRefsPending`] (retryable) if they are still empty; see also [`Self::merge_request`].
    pub async fn merge_request_with_diff_refs(
        &self,
        project: &ProjectRef,
        iid: u64,
    ) -> Result<(MergeRequest, DiffShas)> {
        for attempt in 1..=self.diff_refs_attempts {
            let mr = self.merge_request(project, iid).await?;
            if let Some(shas) = mr.diff_shas() {
                return Ok((mr, shas));
            }
            tracing::debug!(%project, iid, attempt, "diff_refs still empty; waiting");
            if attempt < self.diff_refs_attempts {
                tokio::time::sleep(self.diff_refs_delay).await;
            }
        }
        Err(Error::DiffRefsPending {
            what: format!("{project}!{iid}"),
            attempts: self.diff_refs_attempts,
        })
    }

    /// `GET .../merge_requests/:iid/versions`, all pages, newest first.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn versions(&self, project: &ProjectRef, iid: u64) -> Result<Vec<MrVersion>> {
        let what = format!("versions of merge request {project}!{iid}");
        self.get_all(&format!("{}/versions", mr_path(project, iid)), &[], &what)
            .await
    }

    /// The newest diff version: the SHAs inline positions must use.
    ///
    /// # Errors
    /// [`Error::DiffRefsPending`] (retryable) when GitLab lists no version yet.
    pub async fn latest_version(&self, project: &ProjectRef, iid: u64) -> Result<MrVersion> {
        let what = format!("versions of merge request {project}!{iid}");
        let url = self.url(
            &format!("{}/versions", mr_path(project, iid)),
            &[("per_page", "1")],
        )?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        let versions: Vec<MrVersion> = decode(&reply, &what)?;
        versions
            .into_iter()
            .next()
            .ok_or_else(|| Error::DiffRefsPending {
                what: format!("{project}!{iid}"),
                attempts: 1,
            })
    }

    /// `GET .../merge_requests/:iid/diffs`, all pages (never the deprecated `/changes`).
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn diffs(&self, project: &ProjectRef, iid: u64) -> Result<Vec<DiffFile>> {
        let what = format!("diffs of merge request {project}!{iid}");
        self.get_all_with(
            &format!("{}/diffs", mr_path(project, iid)),
            &[],
            &what,
            |body| {
                serde_json::from_slice::<Vec<types::DiffFileWire>>(body)?
                    .into_iter()
                    .map(types::DiffFileWire::into_bounded)
                    .collect()
            },
        )
        .await
    }

    /// Starts an inline thread (`POST .../discussions`) and checks GitLab made it a `DiffNote`.
    ///
    /// A 429 (or a connection never made) is retried in place; a timeout or 5xx is not,
    /// since GitLab may have created the thread anyway: it ends in
    /// [`Error::OutcomeUnknown`], and the caller looks for the body's marker with
    /// [`Self::discussions`] before posting again.
    ///
    /// # Errors
    /// - [`Error::PositionRejected`]: GitLab (or a local check) refused the anchor; post the
    ///   finding in the summary instead.
    /// - [`Error::NotDiffNote`]: the thread exists but is not inline; do not retry.
    /// - [`Error::UnsafeBody`]: a line of `body` starts with `/`.
    pub async fn post_discussion(
        &self,
        project: &ProjectRef,
        iid: u64,
        body: &str,
        position: &Position,
    ) -> Result<PostedDiscussion> {
        check_body(body)?;
        check_position(position)?;
        let what = format!("new discussion on merge request {project}!{iid}");
        let url = self.url(&format!("{}/discussions", mr_path(project, iid)), &[])?;
        let payload = DiscussionBody {
            body,
            position: PositionBody::from(position),
        };
        let reply = self
            .http
            .send(
                Method::POST,
                url,
                Some(to_json(&payload)?),
                &what,
                Replay::Unsafe,
            )
            .await
            .map_err(Error::into_position_rejected)?;
        let discussion: Discussion = decode(&reply, &what)?;
        let Some(note) = discussion.notes.first() else {
            return Err(Error::InvalidResponse {
                what,
                message: format!("discussion {} has no notes", discussion.id),
            });
        };
        if !note.is_diff_note() {
            return Err(Error::NotDiffNote {
                discussion_id: discussion.id,
                note_id: note.id,
                note_type: note.note_type.clone(),
            });
        }
        Ok(PostedDiscussion {
            note_id: note.id,
            discussion_id: discussion.id,
        })
    }

    /// Posts an overview note (`POST .../notes`) and returns it.
    ///
    /// As with [`Self::post_discussion`], [`Error::OutcomeUnknown`] may hide a created
    /// note: check for the marker with [`Self::notes`] before posting again.
    ///
    /// # Errors
    /// [`Error::UnsafeBody`] if a line starts with `/`; otherwise see [`Error`].
    pub async fn post_note(&self, project: &ProjectRef, iid: u64, body: &str) -> Result<Note> {
        check_body(body)?;
        let what = format!("new note on merge request {project}!{iid}");
        let url = self.url(&format!("{}/notes", mr_path(project, iid)), &[])?;
        let reply = self
            .http
            .send(
                Method::POST,
                url,
                Some(to_json(&NoteBody { body })?),
                &what,
                Replay::Unsafe,
            )
            .await?;
        decode(&reply, &what)
    }

    /// Edits a note in place (`PUT .../notes/:note_id`).
    ///
    /// # Errors
    /// [`Error::UnsafeBody`] if a line starts with `/`; [`Error::NotFound`] for an unknown note.
    pub async fn update_note(
        &self,
        project: &ProjectRef,
        iid: u64,
        note_id: u64,
        body: &str,
    ) -> Result<Note> {
        check_body(body)?;
        let what = format!("note {note_id} on merge request {project}!{iid}");
        let url = self.url(&format!("{}/notes/{note_id}", mr_path(project, iid)), &[])?;
        let reply = self
            .http
            .send(
                Method::PUT,
                url,
                Some(to_json(&NoteBody { body })?),
                &what,
                Replay::Safe,
            )
            .await?;
        decode(&reply, &what)
    }

    /// Replaces the MR's description (`PUT /projects/:id/merge_requests/:iid` with
    /// `description`); answers the updated MR, whose `updated_at` moved.
    ///
    /// GitLab offers no conditional update: read the MR right before and compare its
    /// `updated_at` to keep a concurrent edit. GitLab also runs quick actions found in a
    /// changed description, so the caller must know that no line outside code starts with
    /// `/`; unlike note bodies this is not checked here, since a description holds the
    /// author's text as well.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown MR; otherwise see [`Error`].
    pub async fn update_description(
        &self,
        project: &ProjectRef,
        iid: u64,
        description: &str,
    ) -> Result<MergeRequest> {
        #[derive(Serialize)]
        struct Body<'a> {
            description: &'a str,
        }
        let what = format!("description of merge request {project}!{iid}");
        let url = self.url(&mr_path(project, iid), &[])?;
        let reply = self
            .http
            .send(
                Method::PUT,
                url,
                Some(to_json(&Body { description })?),
                &what,
                // Not replayed on an unknown outcome: if the author edited the description
                // between a lost answer and a resend, the resend would overwrite the edit.
                // The describe job reads the MR again and finds its block, or writes anew.
                Replay::Unsafe,
            )
            .await?;
        decode(&reply, &what)
    }

    /// Resolves or unresolves a thread (`PUT .../discussions/:id?resolved=`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown discussion; otherwise see [`Error`].
    pub async fn resolve_discussion(
        &self,
        project: &ProjectRef,
        iid: u64,
        discussion_id: &str,
        resolved: bool,
    ) -> Result<Discussion> {
        let what = format!("discussion {discussion_id} on merge request {project}!{iid}");
        let path = format!(
            "{}/discussions/{}",
            mr_path(project, iid),
            encode_path_segment(discussion_id)
        );
        let url = self.url(
            &path,
            &[("resolved", if resolved { "true" } else { "false" })],
        )?;
        let reply = self
            .http
            .send(Method::PUT, url, None, &what, Replay::Safe)
            .await?;
        decode(&reply, &what)
    }

    /// All notes of the MR, oldest first (`GET .../notes?sort=asc`), system notes included
    /// (see [`Note::system`]).
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn notes(&self, project: &ProjectRef, iid: u64) -> Result<Vec<Note>> {
        let what = format!("notes of merge request {project}!{iid}");
        self.get_all(
            &format!("{}/notes", mr_path(project, iid)),
            &[("sort", "asc"), ("order_by", "created_at")],
            &what,
        )
        .await
    }

    /// All discussions (threads) of the MR (`GET .../discussions`).
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn discussions(&self, project: &ProjectRef, iid: u64) -> Result<Vec<Discussion>> {
        let what = format!("discussions of merge request {project}!{iid}");
        self.get_all(
            &format!("{}/discussions", mr_path(project, iid)),
            &[],
            &what,
        )
        .await
    }

    /// The MR's commits, newest first as GitLab lists them
    /// (`GET .../merge_requests/:iid/commits`, all pages). After a force-push the list holds
    /// only the new history: a previously reviewed head missing from it means history was
    /// rewritten.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn mr_commits(&self, project: &ProjectRef, iid: u64) -> Result<Vec<Commit>> {
        let what = format!("commits of merge request {project}!{iid}");
        self.get_all(&format!("{}/commits", mr_path(project, iid)), &[], &what)
            .await
    }

    /// What `to` changes relative to its merge base with `from`
    /// (`GET /projects/:id/repository/compare?from=&to=`, GitLab's default `from...to`).
    /// Between two heads of one MR with linear history that is exactly the new commits; after
    /// a force-push it is usually the whole MR again. Check [`Compare::is_partial`] before
    /// trusting `diffs`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when either ref does not exist (GitLab's `404 Ref Not Found`, or
    /// the project's 404); otherwise see [`Error`].
    pub async fn compare(&self, project: &ProjectRef, from: &str, to: &str) -> Result<Compare> {
        let what = format!("comparison {from}...{to} in project {project}");
        let path = format!("/projects/{}/repository/compare", project.to_path_segment());
        let url = self.url(&path, &[("from", from), ("to", to)])?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        serde_json::from_slice::<types::CompareWire>(&reply.body)
            .and_then(types::CompareWire::into_bounded)
            .map_err(|source| Error::Decode { what, source })
    }

    /// Adds a draft note (`POST .../draft_notes`): inline when `position` is given, else a
    /// plain thread once published. Nobody but the token's user sees it until
    /// [`Self::bulk_publish_draft_notes`].
    ///
    /// GitLab checks only the position's shape here; whether the line exists is decided when
    /// the draft is published. A timeout or 5xx may hide a created draft: look for the body's
    /// marker with [`Self::draft_notes`] before retrying.
    ///
    /// # Errors
    /// - [`Error::PositionRejected`]: the position was refused (locally, or by GitLab's 400).
    /// - [`Error::UnsafeBody`]: a line of `body` starts with `/`.
    pub async fn create_draft_note(
        &self,
        project: &ProjectRef,
        iid: u64,
        body: &str,
        position: Option<&Position>,
    ) -> Result<DraftNote> {
        check_body(body)?;
        if let Some(position) = position {
            check_position(position)?;
        }
        let what = format!("new draft note on merge request {project}!{iid}");
        let url = self.url(&format!("{}/draft_notes", mr_path(project, iid)), &[])?;
        let payload = DraftNoteBody {
            note: body,
            position: position.map(PositionBody::from),
        };
        let sent = self
            .http
            .send(
                Method::POST,
                url,
                Some(to_json(&payload)?),
                &what,
                Replay::Unsafe,
            )
            .await;
        let reply = match position {
            Some(_) => sent.map_err(Error::into_position_rejected)?,
            None => sent?,
        };
        decode(&reply, &what)
    }

    /// The token user's draft notes on the MR (`GET .../draft_notes`, all pages), in GitLab's
    /// order (creation order in practice; GitLab does not promise one).
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn draft_notes(&self, project: &ProjectRef, iid: u64) -> Result<Vec<DraftNote>> {
        let what = format!("draft notes of merge request {project}!{iid}");
        self.get_all(
            &format!("{}/draft_notes", mr_path(project, iid)),
            &[],
            &what,
        )
        .await
    }

    /// Deletes one draft note (`DELETE .../draft_notes/:id`, answered 204).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown (or already published) draft; otherwise see [`Error`].
    pub async fn delete_draft_note(
        &self,
        project: &ProjectRef,
        iid: u64,
        draft_note_id: u64,
    ) -> Result<()> {
        let what = format!("draft note {draft_note_id} on merge request {project}!{iid}");
        let path = format!("{}/draft_notes/{draft_note_id}", mr_path(project, iid));
        let url = self.url(&path, &[])?;
        self.http
            .send(Method::DELETE, url, None, &what, Replay::Safe)
            .await?;
        Ok(())
    }

    /// Publishes every draft note of the token's user on the MR at once
    /// (`POST .../draft_notes/bulk_publish`, answered 204): one notification for the review
    /// instead of one per comment.
    ///
    /// With no drafts pending GitLab succeeds without doing anything, so a retry after a
    /// failure publishes only what is still pending. A timeout or 5xx may hide a publish that
    /// happened (drafts gone, threads present) or, if GitLab failed midway, threads created
    /// while their drafts remain: before retrying, list [`Self::draft_notes`] and delete those
    /// whose marker [`Self::discussions`] already shows.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn bulk_publish_draft_notes(&self, project: &ProjectRef, iid: u64) -> Result<()> {
        let what = format!("publishing the draft notes of merge request {project}!{iid}");
        let path = format!("{}/draft_notes/bulk_publish", mr_path(project, iid));
        let url = self.url(&path, &[])?;
        self.http
            .send(Method::POST, url, None, &what, Replay::Safe)
            .await?;
        Ok(())
    }

    /// A file's raw content at a commit, branch or tag
    /// (`GET /projects/:id/repository/files/:path/raw?ref=`).
    ///
    /// A missing file is an error of its own kind, to match on rather than parse:
    /// `Err(Error::NotFound { .. })` means GitLab answered 404, i.e. the file does not exist
    /// at that ref (or the ref or project does not; GitLab says which only in the message,
    /// which callers should not parse). An empty file is `Ok` with no bytes.
    ///
    /// # Errors
    /// [`Error::NotFound`] as above; [`Error::BodyTooLarge`] above the configured limit;
    /// otherwise see [`Error`].
    pub async fn get_file_raw(
        &self,
        project: &ProjectRef,
        file_path: &str,
        git_ref: &str,
    ) -> Result<Vec<u8>> {
        let what = format!("file {file_path} at {git_ref} in project {project}");
        let path = format!(
            "/projects/{}/repository/files/{}/raw",
            project.to_path_segment(),
            encode_path_segment(file_path)
        );
        let url = self.url(&path, &[("ref", git_ref)])?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        Ok(reply.body)
    }

    /// GETs every page of a list endpoint, following `x-next-page` until it is empty.
    async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<T>> {
        self.get_all_with(path, query, what, |body| serde_json::from_slice(body))
            .await
    }

    /// [`Self::get_all`] with a decoder of its own for each page's body.
    async fn get_all_with<T>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
        decode_page: impl Fn(&[u8]) -> serde_json::Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut page: u32 = 1;
        loop {
            let page_text = page.to_string();
            let mut params = query.to_vec();
            params.push(("per_page", PER_PAGE));
            params.push(("page", &page_text));
            let url = self.url(path, &params)?;
            let reply = self
                .http
                .send(Method::GET, url, None, what, Replay::Safe)
                .await?;
            let batch = decode_page(&reply.body).map_err(|source| Error::Decode {
                what: what.to_owned(),
                source,
            })?;
            let next = next_page(&reply, what)?;
            drop(reply);
            items.extend(batch);
            match next {
                None => return Ok(items),
                Some(next) if next > page && next <= MAX_PAGES => page = next,
                Some(next) => {
                    return Err(Error::InvalidResponse {
                        what: what.to_owned(),
                        message: format!(
                            "x-next-page {next} after page {page} does not advance (or exceeds {MAX_PAGES} pages)"
                        ),
                    });
                }
            }
        }
    }

    /// `api_base + path` with query parameters.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url> {
        let mut url = Url::parse(&format!("{}{path}", self.api_base))
            .map_err(|e| Error::Config(format!("cannot build a URL for {path}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }
}

/// `/projects/:id/merge_requests/:iid`.
fn mr_path(project: &ProjectRef, iid: u64) -> String {
    format!(
        "/projects/{}/merge_requests/{iid}",
        project.to_path_segment()
    )
}

/// The `x-next-page` header: `None` when absent or empty (the last page).
fn next_page(reply: &Reply, what: &str) -> Result<Option<u32>> {
    let Some(value) = reply.headers.get("x-next-page") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| Error::InvalidResponse {
        what: what.to_owned(),
        message: format!("x-next-page is not a page number: {text:?}"),
    })
}

fn decode<T: DeserializeOwned>(reply: &Reply, what: &str) -> Result<T> {
    serde_json::from_slice(&reply.body).map_err(|source| Error::Decode {
        what: what.to_owned(),
        source,
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Config(format!("cannot encode request: {e}")))
}

/// GitLab runs quick actions (`/merge`, `/approve`, `/close`...) found at the start of a line
/// of a note body; an LLM-written body must never trigger one.
fn check_body(body: &str) -> Result<()> {
    match body.lines().position(|line| line.starts_with('/')) {
        Some(index) => Err(Error::UnsafeBody { line: index + 1 }),
        None => Ok(()),
    }
}

/// Refuses positions GitLab would reject (or answer 500 to, for `0` line numbers) before
/// spending a request on them.
fn check_position(position: &Position) -> Result<()> {
    let reject = |message: &str| {
        Err(Error::PositionRejected {
            message: message.to_owned(),
        })
    };
    if position.line.old_line() == Some(0) || position.line.new_line() == Some(0) {
        return reject("line numbers start at 1");
    }
    if position.old_path.is_empty() || position.new_path.is_empty() {
        return reject("old_path and new_path are both required");
    }
    let shas = &position.shas;
    if shas.base_sha.is_empty() || shas.start_sha.is_empty() || shas.head_sha.is_empty() {
        return reject("base_sha, start_sha and head_sha are all required");
    }
    Ok(())
}
