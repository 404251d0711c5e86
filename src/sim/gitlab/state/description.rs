//! Editing an MR's description: `PUT /projects/:id/merge_requests/:iid` with `description`,
//! as GitLab validates and applies it, and the author's own edits for tests.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{ApiError, Mr, State};
use crate::sim::Error;

/// GitLab's limit on an MR description (characters).
const MAX_DESCRIPTION_CHARS: usize = 1_048_576;

/// The fields of `PUT .../merge_requests/:iid` GitLab accepts (any one is enough).
const UPDATABLE: [&str; 14] = [
    "title",
    "description",
    "target_branch",
    "state_event",
    "labels",
    "add_labels",
    "remove_labels",
    "assignee_id",
    "assignee_ids",
    "reviewer_ids",
    "milestone_id",
    "discussion_locked",
    "squash",
    "remove_source_branch",
];

/// What the API did to one MR's description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::sim::gitlab) struct DescriptionLog {
    /// `PUT`s with a description, whether or not it changed.
    pub(in crate::sim::gitlab) edits: u64,
    /// Quick actions (`/close`, `/merge`...) found at the start of a line outside code in an
    /// edited description: GitLab runs them and removes the line, so the count must stay 0.
    pub(in crate::sim::gitlab) quick_actions: Vec<String>,
}

/// The next `updated_at`: now, but always later than the last one, so that an edit within
/// the same millisecond as a read is still seen as a change.
fn touched(mr: &mut Mr) -> DateTime<Utc> {
    let next = Utc::now().max(mr.updated_at + chrono::Duration::milliseconds(1));
    mr.updated_at = next;
    next
}

/// The description GitLab stores for `text`, and the quick actions it ran: lines outside
/// fenced code whose first word is `/command`.
fn run_quick_actions(text: &str) -> (String, Vec<String>) {
    let mut in_fence = false;
    let mut kept = Vec::new();
    let mut ran = Vec::new();
    for line in text.split('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        let command = !in_fence
            && line.starts_with('/')
            && line[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
        if command {
            ran.push(line.to_owned());
        } else {
            kept.push(line);
        }
    }
    (kept.join("\n"), ran)
}

impl State {
    /// `PUT .../merge_requests/:iid`: only `description` is applied (the other fields are
    /// accepted as GitLab names them and otherwise ignored); answers the MR.
    pub(in crate::sim::gitlab) fn update_mr(
        &mut self,
        key: (u64, u64),
        params: &Value,
        base_url: &str,
    ) -> Result<Value, ApiError> {
        if !UPDATABLE.iter().any(|k| params.get(*k).is_some()) {
            return Err(ApiError::grape(&format!(
                "{} are missing, at least one parameter must be provided",
                UPDATABLE.join(", ")
            )));
        }
        if let Some(value) = params.get("description") {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Null => String::new(),
                _ => return Err(ApiError::grape("description is invalid")),
            };
            if text.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(ApiError {
                    status: 400,
                    body: serde_json::json!({"message": {"description": [
                        format!("is too long (maximum is {MAX_DESCRIPTION_CHARS} characters)")
                    ]}}),
                });
            }
            let (stored, ran) = run_quick_actions(&text);
            let mr = self.api_mr_mut(key)?;
            if stored != mr.description {
                mr.description = stored;
                touched(mr);
            }
            // Every write counts, an identical one too: a client must not send one twice.
            let log = self.description_log.entry(key).or_default();
            log.edits += 1;
            log.quick_actions.extend(ran);
        }
        self.get_mr(key, base_url)
    }

    /// The author edits the description (in the UI): stored as given, `updated_at` moves.
    pub(in crate::sim::gitlab) fn author_edit(
        &mut self,
        project: &str,
        iid: u64,
        text: &str,
    ) -> Result<(), Error> {
        let mr = self.mr_mut(project, iid)?;
        mr.description = text.to_owned();
        touched(mr);
        Ok(())
    }

    /// The stored description.
    pub(in crate::sim::gitlab) fn description(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<String, Error> {
        Ok(self.mr(project, iid)?.description.clone())
    }

    /// What the API did to the MR's description.
    pub(in crate::sim::gitlab) fn description_log(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<DescriptionLog, Error> {
        let mr = self.mr(project, iid)?;
        Ok(self
            .description_log
            .get(&(mr.project_id, mr.iid))
            .cloned()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_actions_outside_code_are_run_and_removed_like_gitlab_does() {
        let (kept, ran) = run_quick_actions("a\n/close\n```\n/merge\n```\n /label ~x\n/ not one");
        assert_eq!(ran, ["/close"]);
        assert_eq!(kept, "a\n```\n/merge\n```\n /label ~x\n/ not one");
    }
}
