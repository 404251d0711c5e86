//! The people of the simulated instance: the token's user (`GET /user`), project members'
//! roles (`GET /projects/:id/members/all/:user_id`), award emoji on notes, human threads on a
//! line, and the Note Hook payload GitLab delivers when someone comments.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    ApiError, BOT_USER_ID, State, StoredDiscussion, StoredNote, StoredPosition, author_json,
    position_json, timestamp, user_id,
};
use crate::sim::{Error, gitlab::BOT_USERNAME};

/// One award emoji as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAward {
    /// Award id.
    pub id: u64,
    /// The note it is on.
    pub note_id: u64,
    /// The emoji's name.
    pub name: String,
    /// Who awarded it (the bot for everything the API does).
    pub user: String,
}

/// Members and awards.
#[derive(Debug, Default)]
pub(in crate::sim::gitlab) struct People {
    /// (project id, username) → access level.
    members: BTreeMap<(u64, String), u32>,
    /// Every award, oldest first.
    pub(in crate::sim::gitlab) awards: Vec<StoredAward>,
}

/// The emoji names the fake accepts (GitLab validates against its emoji list).
const KNOWN_EMOJI: [&str; 8] = [
    "eyes",
    "thumbsup",
    "thumbsdown",
    "white_check_mark",
    "rocket",
    "tada",
    "heart",
    "hourglass",
];

impl State {
    pub(in crate::sim::gitlab) fn seed_reply(
        &mut self,
        project: &str,
        iid: u64,
        discussion_id: &str,
        author: &str,
        body: &str,
    ) -> Result<StoredNote, Error> {
        let unknown = || Error::UnknownDiscussion {
            project: project.to_owned(),
            iid,
            discussion_id: discussion_id.to_owned(),
        };
        let (position, resolved) = {
            let discussion = self
                .mr(project, iid)?
                .discussions
                .iter()
                .find(|d| d.id == discussion_id)
                .ok_or_else(unknown)?;
            let first = discussion.notes.first();
            (
                first.and_then(|n| n.position.clone()),
                first.is_some_and(|n| n.resolved),
            )
        };
        let mut note = self.new_note(None, body, author, false, position, true);
        note.resolved = resolved;
        let discussion = self
            .mr_mut(project, iid)?
            .discussions
            .iter_mut()
            .find(|d| d.id == discussion_id)
            .ok_or_else(unknown)?;
        if discussion.individual_note {
            // Replying to an overview comment turns it into a resolvable thread.
            discussion.individual_note = false;
            for first in &mut discussion.notes {
                first.note_type = Some("DiscussionNote".to_owned());
                first.resolvable = true;
            }
        }
        note.note_type = discussion.notes.first().and_then(|n| n.note_type.clone());
        discussion.notes.push(note.clone());
        Ok(note)
    }

    pub(in crate::sim::gitlab) fn set_resolved(
        &mut self,
        project: &str,
        iid: u64,
        discussion_id: &str,
        resolved: bool,
    ) -> Result<(), Error> {
        let discussion = self
            .mr_mut(project, iid)?
            .discussions
            .iter_mut()
            .find(|d| d.id == discussion_id && d.notes.iter().any(|n| n.resolvable))
            .ok_or_else(|| Error::UnknownDiscussion {
                project: project.to_owned(),
                iid,
                discussion_id: discussion_id.to_owned(),
            })?;
        let now = Utc::now();
        for note in discussion.notes.iter_mut().filter(|n| n.resolvable) {
            note.resolved = resolved;
            note.updated_at = now;
        }
        Ok(())
    }

    pub(in crate::sim::gitlab) fn seed_note(
        &mut self,
        project: &str,
        iid: u64,
        author: &str,
        body: &str,
        system: bool,
    ) -> Result<StoredNote, Error> {
        self.mr(project, iid)?;
        let note = self.new_note(None, body, author, system, None, false);
        let id = self.next_discussion_id();
        self.mr_mut(project, iid)?
            .discussions
            .push(StoredDiscussion {
                id,
                individual_note: true,
                notes: vec![note.clone()],
            });
        Ok(note)
    }

    /// Makes `username` a member of `project` with `access_level` (10 Guest ... 50 Owner).
    pub(in crate::sim::gitlab) fn set_member(
        &mut self,
        project: &str,
        username: &str,
        access_level: u32,
    ) -> Result<(), Error> {
        let id = self
            .project_id(project)
            .ok_or_else(|| Error::UnknownMergeRequest {
                project: project.to_owned(),
                iid: 0,
            })?;
        self.people
            .members
            .insert((id, username.to_owned()), access_level);
        Ok(())
    }

    /// `GET /user`: the bot.
    pub(in crate::sim::gitlab) fn current_user(base_url: &str) -> Value {
        author_json(BOT_USER_ID, BOT_USERNAME, base_url)
    }

    /// `GET /projects/:id/members/all/:user_id`: 404 for anyone who is no member.
    pub(in crate::sim::gitlab) fn member(
        &self,
        project: &str,
        user: &str,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let project_id = self
            .project_id(project)
            .ok_or_else(|| ApiError::message(404, "404 Project Not Found"))?;
        let user: u64 = user.parse().map_err(|_| ApiError::not_found())?;
        let (username, level) = self
            .people
            .members
            .iter()
            .find(|((p, name), _)| *p == project_id && user_id(name) == user)
            .map(|((_, name), level)| (name.clone(), *level))
            .ok_or_else(|| ApiError::message(404, "404 Member Not Found"))?;
        let mut value = author_json(user, &username, base_url);
        if let Some(object) = value.as_object_mut() {
            object.insert("access_level".to_owned(), json!(level));
        }
        Ok(value)
    }

    fn note_on_mr(&self, key: (u64, u64), note_id: &str) -> Result<u64, ApiError> {
        let note_id: u64 = note_id.parse().map_err(|_| ApiError::not_found())?;
        let mr = self.api_mr_ref(key)?;
        mr.discussions
            .iter()
            .flat_map(|d| d.notes.iter())
            .any(|n| n.id == note_id)
            .then_some(note_id)
            .ok_or_else(|| ApiError::message(404, "404 Note Not Found"))
    }

    /// `GET .../notes/:id/award_emoji`.
    pub(in crate::sim::gitlab) fn list_awards(
        &self,
        key: (u64, u64),
        note_id: &str,
        base_url: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let note_id = self.note_on_mr(key, note_id)?;
        Ok(self
            .people
            .awards
            .iter()
            .filter(|a| a.note_id == note_id)
            .map(|a| award_json(a, base_url))
            .collect())
    }

    /// `POST .../notes/:id/award_emoji` by the bot. A second award of the same emoji is
    /// refused with GitLab's 404.
    pub(in crate::sim::gitlab) fn create_award(
        &mut self,
        key: (u64, u64),
        note_id: &str,
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        let note_id = self.note_on_mr(key, note_id)?;
        let name = match params.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(ApiError::grape("name is missing")),
        };
        if !KNOWN_EMOJI.contains(&name.as_str()) {
            return Err(ApiError::message(
                404,
                "404 Award Emoji Name is not a valid emoji name Not Found",
            ));
        }
        if self
            .people
            .awards
            .iter()
            .any(|a| a.note_id == note_id && a.name == name && a.user == BOT_USERNAME)
        {
            return Err(ApiError::message(
                404,
                "404 Award Emoji Name has already been taken Not Found",
            ));
        }
        let award = StoredAward {
            id: self.people.awards.len() as u64 + 1,
            note_id,
            name,
            user: BOT_USERNAME.to_owned(),
        };
        let value = award_json(&award, base_url);
        self.people.awards.push(award);
        Ok(value)
    }

    /// A human starts an inline thread on a new-side line of the latest version.
    pub(in crate::sim::gitlab) fn seed_diff_note(
        &mut self,
        project: &str,
        iid: u64,
        author: &str,
        body: &str,
        (path, new_line): (&str, u32),
    ) -> Result<StoredNote, Error> {
        let latest = self.mr(project, iid)?.latest().clone();
        let position = StoredPosition {
            position_type: "text".to_owned(),
            base_sha: latest.base_sha,
            start_sha: latest.start_sha,
            head_sha: latest.head_sha,
            old_path: path.to_owned(),
            new_path: path.to_owned(),
            old_line: None,
            new_line: Some(new_line),
        };
        let note = self.new_note(Some("DiffNote"), body, author, false, Some(position), true);
        let id = self.next_discussion_id();
        self.mr_mut(project, iid)?
            .discussions
            .push(StoredDiscussion {
                id,
                individual_note: false,
                notes: vec![note.clone()],
            });
        Ok(note)
    }

    /// The Note Hook body GitLab delivers for a note (`action` `create` or `update`).
    pub(in crate::sim::gitlab) fn note_hook(
        &self,
        project: &str,
        iid: u64,
        note_id: u64,
        action: &str,
        base_url: &str,
    ) -> Result<Value, Error> {
        let mr = self.mr(project, iid)?;
        let path = self.project_path(mr.project_id);
        let (discussion, note) = mr
            .discussions
            .iter()
            .find_map(|d| d.notes.iter().find(|n| n.id == note_id).map(|n| (d, n)))
            .ok_or_else(|| Error::UnknownDiscussion {
                project: project.to_owned(),
                iid,
                discussion_id: format!("(note {note_id})"),
            })?;
        let author = user_id(&note.author);
        let mr_url = format!("{base_url}/{path}/-/merge_requests/{iid}");
        let latest = mr.latest();
        Ok(json!({
            "object_kind": "note",
            "event_type": "note",
            "user": { "id": author, "name": note.author, "username": note.author },
            "project_id": mr.project_id,
            "project": {
                "id": mr.project_id,
                "path_with_namespace": path,
                "web_url": format!("{base_url}/{path}"),
            },
            "object_attributes": {
                "id": note.id,
                "note": note.body,
                "noteable_type": "MergeRequest",
                "author_id": author,
                "created_at": timestamp(note.created_at),
                "updated_at": timestamp(note.updated_at),
                "project_id": mr.project_id,
                "system": note.system,
                "action": action,
                "type": note.note_type,
                "discussion_id": discussion.id,
                "line_code": null,
                "commit_id": null,
                "position": note.position.as_ref().map(position_json),
                "resolved_at": null,
                "url": format!("{mr_url}#note_{}", note.id),
            },
            "merge_request": {
                "id": mr.id,
                "iid": mr.iid,
                "title": mr.title,
                "source_branch": mr.source_branch,
                "target_branch": mr.target_branch,
                "draft": mr.draft,
                "labels": mr.labels.iter().map(|l| json!({"title": l})).collect::<Vec<_>>(),
                "last_commit": { "id": latest.head_sha },
                "url": mr_url,
                "updated_at": timestamp(Utc::now()),
            },
        }))
    }
}

fn award_json(award: &StoredAward, base_url: &str) -> Value {
    json!({
        "id": award.id,
        "name": award.name,
        "user": author_json(user_id(&award.user), &award.user, base_url),
        "created_at": timestamp(Utc::now()),
        "updated_at": timestamp(Utc::now()),
        "awardable_id": award.note_id,
        "awardable_type": "Note",
    })
}
