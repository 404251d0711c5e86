//! Conversations on GitLab: one thread, replies in it, award emoji, and who is asking (the
//! token's own user, a project member's role).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{
    Author, Discussion, Error, GitLabClient, Note, ProjectRef, Result, check_body, decode, mr_path,
    retry::Replay, to_json, types::encode_path_segment,
};

/// A project member's role (`access_level` of the members API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessLevel(pub u32);

impl AccessLevel {
    /// Guest.
    pub const GUEST: AccessLevel = AccessLevel(10);
    /// Reporter.
    pub const REPORTER: AccessLevel = AccessLevel(20);
    /// Developer: may resolve threads and push.
    pub const DEVELOPER: AccessLevel = AccessLevel(30);
    /// Maintainer.
    pub const MAINTAINER: AccessLevel = AccessLevel(40);
    /// Owner.
    pub const OWNER: AccessLevel = AccessLevel(50);
}

/// An award emoji on a note.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AwardEmoji {
    /// Award id.
    pub id: u64,
    /// The emoji's name (`eyes`).
    pub name: String,
    /// Who awarded it.
    pub user: Author,
}

#[derive(Deserialize)]
struct Member {
    access_level: u32,
}

#[derive(Serialize)]
struct Body<'a> {
    body: &'a str,
}

#[derive(Serialize)]
struct Name<'a> {
    name: &'a str,
}

impl GitLabClient {
    /// The user the token belongs to (`GET /user`): the bot, whose own notes it must never
    /// answer. Compare by id, never by name patterns.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn current_user(&self) -> Result<Author> {
        let what = "the token's user".to_owned();
        let url = self.url("/user", &[])?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        decode(&reply, &what)
    }

    /// A user's role in the project, inherited memberships included
    /// (`GET /projects/:id/members/all/:user_id`); `None` when they are no member.
    ///
    /// # Errors
    /// See [`Error`] (a 404 is `Ok(None)`).
    pub async fn access_level(
        &self,
        project: &ProjectRef,
        user_id: u64,
    ) -> Result<Option<AccessLevel>> {
        let what = format!("membership of user {user_id} in {project}");
        let url = self.url(
            &format!(
                "/projects/{}/members/all/{user_id}",
                project.to_path_segment()
            ),
            &[],
        )?;
        match self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await
        {
            Ok(reply) => Ok(Some(AccessLevel(
                decode::<Member>(&reply, &what)?.access_level,
            ))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One thread (`GET .../discussions/:id`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown thread; otherwise see [`Error`].
    pub async fn discussion(
        &self,
        project: &ProjectRef,
        iid: u64,
        discussion_id: &str,
    ) -> Result<Discussion> {
        let what = format!("discussion {discussion_id} on merge request {project}!{iid}");
        let url = self.url(&discussion_path(project, iid, discussion_id), &[])?;
        let reply = self
            .http
            .send(Method::GET, url, None, &what, Replay::Safe)
            .await?;
        decode(&reply, &what)
    }

    /// Replies in a thread (`POST .../discussions/:id/notes`).
    ///
    /// As with every create, [`Error::OutcomeUnknown`] may hide a stored reply: look for the
    /// reply's marker with [`Self::discussion`] before replying again.
    ///
    /// # Errors
    /// [`Error::UnsafeBody`] if a line starts with `/`; otherwise see [`Error`].
    pub async fn reply(
        &self,
        project: &ProjectRef,
        iid: u64,
        discussion_id: &str,
        body: &str,
    ) -> Result<Note> {
        check_body(body)?;
        let what = format!("reply in discussion {discussion_id} on merge request {project}!{iid}");
        let path = format!("{}/notes", discussion_path(project, iid, discussion_id));
        let url = self.url(&path, &[])?;
        let reply = self
            .http
            .send(
                Method::POST,
                url,
                Some(to_json(&Body { body })?),
                &what,
                Replay::Unsafe,
            )
            .await?;
        decode(&reply, &what)
    }

    /// The award emoji on a note (`GET .../notes/:id/award_emoji`).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the note is gone; otherwise see [`Error`].
    pub async fn note_awards(
        &self,
        project: &ProjectRef,
        iid: u64,
        note_id: u64,
    ) -> Result<Vec<AwardEmoji>> {
        let what = format!("award emoji of note {note_id} on merge request {project}!{iid}");
        self.get_all(&awards_path(project, iid, note_id), &[], &what)
            .await
    }

    /// Awards an emoji to a note (`POST .../notes/:id/award_emoji`). Safe to replay: GitLab
    /// refuses a second identical award.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the note is gone or the award already exists (GitLab answers
    /// 404 for both); otherwise see [`Error`].
    pub async fn award_emoji(
        &self,
        project: &ProjectRef,
        iid: u64,
        note_id: u64,
        name: &str,
    ) -> Result<()> {
        let what = format!("award emoji on note {note_id} of merge request {project}!{iid}");
        let url = self.url(&awards_path(project, iid, note_id), &[])?;
        self.http
            .send(
                Method::POST,
                url,
                Some(to_json(&Name { name })?),
                &what,
                Replay::Safe,
            )
            .await?;
        Ok(())
    }
}

fn discussion_path(project: &ProjectRef, iid: u64, discussion_id: &str) -> String {
    format!(
        "{}/discussions/{}",
        mr_path(project, iid),
        encode_path_segment(discussion_id)
    )
}

fn awards_path(project: &ProjectRef, iid: u64, note_id: u64) -> String {
    format!("{}/notes/{note_id}/award_emoji", mr_path(project, iid))
}
