//! Note Hook events (`object_kind: "note"`): a comment on a merge request becomes a
//! `conversation` job, deduplicated by note id, recorded with the delivery like a review.
//!
//! Ignored (200, with the reason): comments on anything but merge requests, system notes,
//! edits (`action: "update"`; GitLab 16.11+ fires the hook again on an edit), and the bot's
//! own notes when its user id is configured. Whether the comment asks anything of the bot is
//! decided by the job, which reads the thread.

use axum::{Json, http::StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, DB_TIMEOUT, WebhookConfig,
    error::ApiError,
    webhook::{EventProject, Recorded, event_project, ignored, record},
};
use crate::{jobs::conversation::ConversationArgs, mr_ref::MrRef, queue::Enqueued};

/// The part of a Note Hook reviewq reads.
#[derive(Debug, Deserialize)]
pub struct NoteEvent {
    /// The project.
    #[serde(default)]
    pub project: Option<EventProject>,
    /// The project's id, when `project` lacks it.
    #[serde(default)]
    pub project_id: Option<u64>,
    /// The note.
    pub object_attributes: NoteAttributes,
    /// The merge request, for notes on one.
    #[serde(default)]
    pub merge_request: Option<NoteMergeRequest>,
}

/// `object_attributes` of a Note Hook.
#[derive(Debug, Deserialize)]
pub struct NoteAttributes {
    /// The note id.
    pub id: u64,
    /// `MergeRequest`, `Issue`, `Commit`, `Snippet`.
    #[serde(default)]
    pub noteable_type: Option<String>,
    /// GitLab-generated.
    #[serde(default)]
    pub system: Option<bool>,
    /// `create` or `update`.
    #[serde(default)]
    pub action: Option<String>,
    /// The thread.
    #[serde(default)]
    pub discussion_id: Option<String>,
    /// The author.
    #[serde(default)]
    pub author_id: Option<u64>,
}

/// `merge_request` of a Note Hook.
#[derive(Debug, Deserialize)]
pub struct NoteMergeRequest {
    /// The project-scoped IID.
    pub iid: u64,
}

/// What to do with a note event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteDecision {
    /// Enqueue a conversation job.
    Answer(ConversationArgs),
    /// Nothing; the reason is answered and logged.
    Ignore(String),
}

/// Decides from the payload alone.
///
/// # Errors
/// A bad request for a merge request note without its IID, thread or project.
pub fn decide(event: &NoteEvent, config: &WebhookConfig) -> Result<NoteDecision, ApiError> {
    let attrs = &event.object_attributes;
    let ignore = |reason: &str| Ok(NoteDecision::Ignore(reason.to_owned()));
    if attrs.noteable_type.as_deref() != Some("MergeRequest") {
        return ignore("not a comment on a merge request");
    }
    if attrs.system == Some(true) {
        return ignore("a system note");
    }
    if attrs.action.as_deref() == Some("update") {
        return ignore("an edited comment (only new comments are answered)");
    }
    if config.bot_user_id.is_some() && attrs.author_id == config.bot_user_id {
        return ignore("the bot's own comment");
    }
    let iid = event
        .merge_request
        .as_ref()
        .map(|mr| mr.iid)
        .filter(|iid| *iid > 0)
        .ok_or_else(|| {
            ApiError::BadRequest("merge request note without merge_request.iid".into())
        })?;
    let discussion_id = attrs
        .discussion_id
        .clone()
        .filter(|d| !d.is_empty() && d.len() <= 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::BadRequest("object_attributes.discussion_id must be a hex thread id".into())
        })?;
    if attrs.id == 0 {
        return Err(ApiError::BadRequest(
            "object_attributes.id must be positive".into(),
        ));
    }
    let project = event_project(event.project.as_ref(), event.project_id)?;
    let mr = MrRef {
        project,
        iid,
        host: None,
    };
    Ok(NoteDecision::Answer(ConversationArgs::new(
        mr,
        attrs.id,
        discussion_id,
    )))
}

/// Handles a Note Hook body whose delivery `key` was read already.
pub(super) async fn handle(
    state: &AppState,
    key: Option<&str>,
    body: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let event: NoteEvent = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("not a GitLab Note Hook payload: {e}")))?;
    let args = match decide(&event, &state.webhook)? {
        NoteDecision::Answer(args) => args,
        NoteDecision::Ignore(reason) => return Ok(ignored("note", reason)),
    };
    let job = args.job();
    let recorded = tokio::time::timeout(DB_TIMEOUT, record(&state.pool, key, &job))
        .await
        .map_err(|_| ApiError::Unavailable)??;
    Ok(match recorded {
        Recorded::Redelivery(job_id) => {
            tracing::info!(
                note = args.note_id,
                ?job_id,
                "note hook redelivery: nothing enqueued"
            );
            (
                StatusCode::OK,
                Json(json!({"status": "duplicate", "job_id": job_id})),
            )
        }
        Recorded::Job(enqueued) => {
            let (status, job_id) = match enqueued {
                Enqueued::New(id) => ("enqueued", id),
                Enqueued::Existing(id) => ("already_queued", id),
            };
            tracing::info!(mr = %args.mr, note = args.note_id, %job_id, status, "note hook: conversation enqueued");
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": status, "job_id": job_id})),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: Value) -> NoteEvent {
        let mut v = json!({
            "object_kind": "note",
            "project": {"id": 7, "path_with_namespace": "group/app"},
            "object_attributes": {
                "id": 1001, "noteable_type": "MergeRequest", "system": false,
                "action": "create", "discussion_id": "ab12", "author_id": 5,
            },
            "merge_request": {"iid": 3},
        });
        if let (Value::Object(into), Value::Object(from)) = (&mut v["object_attributes"], extra) {
            into.extend(from);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_new_comment_on_a_merge_request_becomes_a_conversation_keyed_by_its_note() {
        let config = WebhookConfig::new("x");
        let NoteDecision::Answer(args) = decide(&event(json!({})), &config).unwrap() else {
            panic!("not answered");
        };
        assert_eq!(
            (args.iid, args.note_id, args.discussion_id.as_str()),
            (3, 1001, "ab12")
        );
        assert_eq!(args.job().dedupe_key.as_deref(), Some("conversation:1001"));
    }

    #[test]
    fn system_notes_edits_other_noteables_and_the_bot_itself_are_ignored() {
        let mut config = WebhookConfig::new("x");
        config.bot_user_id = Some(5);
        for extra in [
            json!({"system": true}),
            json!({"action": "update"}),
            json!({"noteable_type": "Issue"}),
            json!({"author_id": 5}),
        ] {
            let decision = decide(&event(extra.clone()), &config).unwrap();
            assert!(matches!(decision, NoteDecision::Ignore(_)), "{extra}");
        }
    }

    #[test]
    fn a_malformed_thread_id_is_a_bad_request() {
        let config = WebhookConfig::new("x");
        assert!(decide(&event(json!({"discussion_id": "../x"})), &config).is_err());
    }
}
