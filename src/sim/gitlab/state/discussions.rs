//! Discussions and notes: threads (inline `DiffNote`s and plain ones), replies, resolving,
//! overview notes and edits, as the bot posts them through the API.

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    ApiError, BOT_USERNAME, Mr, State, StoredDiscussion, StoredNote, author_json,
    position::validate_position, position_json, required_body, timestamp, user_id,
};

impl State {
    /// `GET .../discussions`: oldest first.
    pub(in crate::sim::gitlab) fn list_discussions(
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

    pub(in crate::sim::gitlab) fn get_discussion(
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
    pub(in crate::sim::gitlab) fn list_notes(
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

    pub(in crate::sim::gitlab) fn get_note(
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

    /// `POST .../discussions`. With a valid text position the thread is inline (`DiffNote`);
    /// without a position it is a plain thread; `not_inline` forces the latter.
    pub(in crate::sim::gitlab) fn create_discussion(
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
    pub(in crate::sim::gitlab) fn reply(
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
    pub(in crate::sim::gitlab) fn resolve(
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
    pub(in crate::sim::gitlab) fn create_note(
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

    /// `PUT .../notes/:note_id`: edits the body.
    pub(in crate::sim::gitlab) fn update_note(
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
