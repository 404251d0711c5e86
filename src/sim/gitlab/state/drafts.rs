//! The bot's draft notes: a review's comments are stored as drafts, then published in one
//! `POST .../draft_notes/bulk_publish`.

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    ApiError, BOT_USERNAME, Mr, State, StoredDiscussion, StoredDraftNote,
    position::validate_position, position_json, required_text, user_id,
};

impl State {
    /// `GET .../draft_notes`: the bot's drafts, oldest first.
    pub(in crate::sim::gitlab) fn list_draft_notes(
        &self,
        key: (u64, u64),
    ) -> Result<Vec<Value>, ApiError> {
        let mr = self.api_mr_ref(key)?;
        Ok(mr.drafts.iter().map(|d| draft_json(d, mr)).collect())
    }

    /// `POST .../draft_notes`: stores a draft. A position is checked with the discussion rules
    /// (see [`validate_position`]); GitLab itself checks only the position's shape here and
    /// finds a bad line at publish time, so the fake is stricter, on purpose: the client sees
    /// the same `PositionRejected` as for discussions.
    pub(in crate::sim::gitlab) fn create_draft_note(
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
    pub(in crate::sim::gitlab) fn delete_draft_note(
        &mut self,
        key: (u64, u64),
        id: &str,
    ) -> Result<(), ApiError> {
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
    pub(in crate::sim::gitlab) fn bulk_publish(&mut self, key: (u64, u64)) -> Result<(), ApiError> {
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
