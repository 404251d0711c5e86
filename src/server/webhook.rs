//! `POST /webhooks/gitlab`: merge request events to review jobs (comments, `object_kind:
//! "note"`, go to `note_hook.rs`; a paused merge request's events enqueue nothing).
//!
//! 1. `X-Gitlab-Token` must equal the configured secret (constant time), else 401 and
//!    nothing is read further.
//! 2. The payload decides alone ([`decide`]): `open`, `reopen`, and `update` carrying
//!    `oldrev` (code was pushed) are reviewed; other actions and metadata-only updates
//!    are not, except an update that makes a skipped merge request reviewable (a draft
//!    marked ready, a required label added). Drafts are skipped unless configured; label
//!    filters apply.
//! 3. One transaction records the delivery (`Idempotency-Key`, or `X-Gitlab-Event-UUID`
//!    from GitLab before 17.4) and enqueues the job: a redelivery enqueues nothing.
//!
//! Answers: 202 with the job id when a review is enqueued (or an identical one is already
//! queued), 200 for ignored events and redeliveries, 400 for a malformed payload, 401,
//! 413 for a body over the limit, 503 when the database is too slow (GitLab retries).

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::{AppState, DB_TIMEOUT, WebhookConfig, error::ApiError, note_hook};
use crate::{
    jobs::{
        conversation::store,
        review::{ReviewArgs, ReviewOptions},
    },
    mr_ref::{MrRef, Project},
    queue::{Enqueued, NewJob, Queue},
};

/// Longest delivery key accepted (GitLab's are UUIDs).
const MAX_KEY_LEN: usize = 200;

/// The part of GitLab's merge request event reviewq reads; everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Event {
    /// `merge_request` for merge request events.
    pub object_kind: String,
    /// The target project.
    #[serde(default)]
    pub project: Option<EventProject>,
    /// The merge request.
    #[serde(default)]
    pub object_attributes: Option<Attributes>,
    /// The merge request's labels after the event.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// What the event changed (`draft`, `labels`, ...); may be empty.
    #[serde(default)]
    pub changes: Changes,
}

/// `project` of the payload.
#[derive(Debug, Deserialize)]
pub struct EventProject {
    /// Numeric id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Full path, such as `group/sub/project`.
    #[serde(default)]
    pub path_with_namespace: Option<String>,
}

/// `object_attributes` of a merge request event.
#[derive(Debug, Deserialize)]
pub struct Attributes {
    /// The project-scoped IID.
    pub iid: u64,
    /// `open`, `close`, `reopen`, `update`, `approved`, `merge`, ...
    #[serde(default)]
    pub action: Option<String>,
    /// The previous head, present only when code changed.
    #[serde(default)]
    pub oldrev: Option<String>,
    /// Draft (GitLab 13.12+).
    #[serde(default)]
    pub draft: Option<bool>,
    /// Draft, under its older name.
    #[serde(default)]
    pub work_in_progress: Option<bool>,
    /// Fallback for the project when `project` is missing.
    #[serde(default)]
    pub target_project_id: Option<u64>,
    /// The head commit, for the log.
    #[serde(default)]
    pub last_commit: Option<Commit>,
}

impl Attributes {
    fn is_draft(&self) -> bool {
        self.draft.or(self.work_in_progress).unwrap_or(false)
    }
}

/// A commit.
#[derive(Debug, Deserialize)]
pub struct Commit {
    /// Its SHA.
    #[serde(default)]
    pub id: Option<String>,
}

/// A label.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// Its name.
    pub title: String,
}

/// The `changes` the decision looks at.
#[derive(Debug, Default, Deserialize)]
pub struct Changes {
    /// Draft status before and after.
    #[serde(default)]
    pub draft: Option<Change<Option<bool>>>,
    /// The same under its older name.
    #[serde(default)]
    pub work_in_progress: Option<Change<Option<bool>>>,
    /// Labels before and after.
    #[serde(default)]
    pub labels: Option<Change<Vec<Label>>>,
}

/// One changed field.
#[derive(Debug, Deserialize)]
pub struct Change<T> {
    /// Before the event.
    pub previous: T,
    /// After it.
    pub current: T,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Enqueue a review of this merge request.
    Review(MrRef),
    /// Nothing; the reason is answered and logged.
    Ignore(String),
}

/// Why a merge request in a given state is not reviewed, if it is not.
fn skip_reason(draft: bool, labels: &[Label], config: &WebhookConfig) -> Option<String> {
    if draft && !config.review_drafts {
        return Some("draft merge request (set REVIEWQ_REVIEW_DRAFTS to review drafts)".into());
    }
    let has = |wanted: &String| {
        labels
            .iter()
            .any(|l| l.title.trim().to_lowercase() == *wanted)
    };
    if let Some(label) = config.skip_labels.iter().find(|l| has(l)) {
        return Some(format!("label {label:?} is in REVIEWQ_SKIP_LABELS"));
    }
    if !config.require_labels.is_empty() && !config.require_labels.iter().any(has) {
        return Some("no label of REVIEWQ_REQUIRE_LABELS".into());
    }
    None
}

/// Decides from the payload alone whether `event` asks for a review.
///
/// # Errors
/// A bad request for a merge request event without `object_attributes` or project.
pub fn decide(event: &Event, config: &WebhookConfig) -> Result<Decision, ApiError> {
    if event.object_kind != "merge_request" {
        return Ok(Decision::Ignore(format!(
            "{:?} events are not reviewed; enable only merge request events",
            event.object_kind
        )));
    }
    let Some(attrs) = &event.object_attributes else {
        return Err(ApiError::BadRequest(
            "merge request event without object_attributes".into(),
        ));
    };
    let action = attrs.action.as_deref().unwrap_or("");
    let pushed = attrs.oldrev.as_deref().is_some_and(|r| !r.is_empty());
    let draft = attrs.is_draft();
    let now_skipped = skip_reason(draft, &event.labels, config);
    match action {
        "open" | "reopen" => {}
        "update" if pushed => {}
        "update" => {
            // A metadata-only update is reviewed only if it made a skipped merge request
            // reviewable: otherwise a draft marked ready would wait for its next push.
            let changes = &event.changes;
            let was_draft = changes
                .draft
                .as_ref()
                .or(changes.work_in_progress.as_ref())
                .map_or(draft, |c| c.previous.unwrap_or(false));
            let labels_before = changes
                .labels
                .as_ref()
                .map_or(event.labels.as_slice(), |c| c.previous.as_slice());
            let was_skipped = skip_reason(was_draft, labels_before, config).is_some();
            if !(was_skipped && now_skipped.is_none()) {
                return Ok(Decision::Ignore(
                    "update without new commits (no oldrev)".into(),
                ));
            }
        }
        other => {
            return Ok(Decision::Ignore(format!(
                "action {other:?} is not reviewed"
            )));
        }
    }
    if let Some(reason) = now_skipped {
        return Ok(Decision::Ignore(reason));
    }
    let project = event_project(event.project.as_ref(), attrs.target_project_id)?;
    if attrs.iid == 0 {
        return Err(ApiError::BadRequest(
            "object_attributes.iid must be positive".into(),
        ));
    }
    Ok(Decision::Review(MrRef {
        project,
        iid: attrs.iid,
        host: None,
    }))
}

/// The event's project: its path, else its id (or `fallback_id`).
pub(super) fn event_project(
    project: Option<&EventProject>,
    fallback_id: Option<u64>,
) -> Result<Project, ApiError> {
    match (
        project.and_then(|p| p.path_with_namespace.as_deref()),
        project.and_then(|p| p.id).or(fallback_id),
    ) {
        (Some(path), id) => Project::parse(path).or_else(|e| id.map(Project::Id).ok_or(e)),
        (None, Some(id)) => Ok(Project::Id(id)),
        (None, None) => Err("no project.path_with_namespace or project.id".into()),
    }
    .map_err(|e| ApiError::BadRequest(format!("invalid project: {e}")))
}

/// Whether `given` is the expected token, in time independent of where they differ and
/// of their lengths: both are hashed with SHA-256 first (so lengths do not leak) and the
/// digests compared with `subtle`, whose comparison the optimiser cannot short-circuit.
pub fn token_matches(given: &[u8], expected: &SecretString) -> bool {
    let given_digest = Sha256::digest(given);
    let expected_digest = Sha256::digest(expected.expose_secret().as_bytes());
    let (given_digest, expected_digest): ([u8; 32], [u8; 32]) =
        (given_digest.into(), expected_digest.into());
    let equal: bool = given_digest.ct_eq(&expected_digest).into();
    equal && !given.is_empty()
}

/// The delivery's deduplication key: `Idempotency-Key` (stable across GitLab's retries of
/// one delivery), else `X-Gitlab-Event-UUID` (older GitLab), else none.
fn delivery_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    for (header, prefix) in [
        ("idempotency-key", "idem"),
        ("x-gitlab-event-uuid", "event"),
    ] {
        let Some(value) = headers.get(header) else {
            continue;
        };
        let value = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{header} must be 1 to {MAX_KEY_LEN} visible ASCII characters"
                ))
            })?;
        return Ok(Some(format!("{prefix}:{value}")));
    }
    Ok(None)
}

/// The handler.
///
/// # Errors
/// See the module documentation.
pub async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = headers
        .get("x-gitlab-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !token_matches(token, &state.webhook.secret) {
        tracing::warn!("webhook refused: missing or wrong X-Gitlab-Token");
        return Err(ApiError::Unauthorized);
    }
    let key = delivery_key(&headers)?;
    let kind: Kind = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a GitLab webhook payload: {e}")))?;
    if kind.object_kind == "note" {
        return note_hook::handle(&state, key.as_deref(), &body).await;
    }
    let event: Event = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a GitLab webhook payload: {e}")))?;
    let mut decision = decide(&event, &state.webhook)?;
    if let Decision::Review(mr) = &decision
        && let Some(by) = tokio::time::timeout(DB_TIMEOUT, paused_by(&state.pool, mr))
            .await
            .map_err(|_| ApiError::Unavailable)??
    {
        decision = Decision::Ignore(format!("reviews of this merge request were paused by {by}"));
    }
    let mr = match decision {
        Decision::Review(mr) => mr,
        Decision::Ignore(reason) => return Ok(ignored(&event.object_kind, reason)),
    };
    let head = event
        .object_attributes
        .as_ref()
        .and_then(|a| a.last_commit.as_ref())
        .and_then(|c| c.id.clone())
        .unwrap_or_default();
    let action = event
        .object_attributes
        .as_ref()
        .and_then(|a| a.action.clone())
        .unwrap_or_default();
    let options = ReviewOptions {
        review_type: state.webhook.review_type,
        dry_run: false,
        force: false,
        full: false,
    };
    let label = mr.to_string();
    let job = ReviewArgs::new(mr, &options).job(0);
    let recorded = tokio::time::timeout(DB_TIMEOUT, record(&state.pool, key.as_deref(), &job))
        .await
        .map_err(|_| ApiError::Unavailable)??;
    Ok(match recorded {
        Recorded::Redelivery(job_id) => {
            tracing::info!(mr = %label, %action, ?job_id, "webhook redelivery: nothing enqueued");
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
            tracing::info!(mr = %label, %action, %head, %job_id, status, "webhook: review enqueued");
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": status, "job_id": job_id})),
            )
        }
    })
}

/// The kind of event, read before the rest.
#[derive(Debug, Deserialize)]
struct Kind {
    object_kind: String,
}

/// The 200 answer to an event that asks for nothing.
pub(super) fn ignored(kind: &str, reason: String) -> (StatusCode, Json<Value>) {
    tracing::debug!(%kind, %reason, "webhook ignored");
    (
        StatusCode::OK,
        Json(json!({"status": "ignored", "reason": reason})),
    )
}

/// Who paused reviews of the merge request on push (`@bot pause`), if anyone.
async fn paused_by(pool: &PgPool, mr: &MrRef) -> Result<Option<String>, ApiError> {
    Ok(store::paused_by(pool, &mr.project.to_string(), mr.iid).await?)
}

/// What [`record`] did.
pub(super) enum Recorded {
    /// The delivery was seen before; the job it caused, if known.
    Redelivery(Option<i64>),
    /// The job enqueued (or the identical unfinished one).
    Job(Enqueued),
}

/// In one transaction: remembers the delivery `key` (if any) and enqueues `job`, unless
/// the key was seen before. A concurrent redelivery waits on the key's row lock and then
/// finds it.
pub(super) async fn record(
    pool: &PgPool,
    key: Option<&str>,
    job: &NewJob,
) -> Result<Recorded, ApiError> {
    let mut tx = pool.begin().await?;
    if let Some(key) = key {
        let fresh = sqlx::query_scalar!(
            r#"insert into webhook_deliveries (key) values ($1) on conflict (key) do nothing
               returning true as "fresh!""#,
            key
        )
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            let job_id =
                sqlx::query_scalar!("select job_id from webhook_deliveries where key = $1", key)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten();
            return Ok(Recorded::Redelivery(job_id));
        }
    }
    let enqueued = Queue::enqueue(&mut *tx, job).await?;
    if let Some(key) = key {
        sqlx::query!(
            "update webhook_deliveries set job_id = $2 where key = $1",
            key,
            enqueued.id().get()
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Recorded::Job(enqueued))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, extra: Value) -> Event {
        let mut v = json!({
            "object_kind": "merge_request",
            "project": {"id": 7, "path_with_namespace": "group/app"},
            "object_attributes": {"iid": 3, "action": action, "draft": false},
            "labels": [],
            "changes": {}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn reviewed(d: &Decision) -> bool {
        matches!(d, Decision::Review(_))
    }

    #[test]
    fn tokens_match_only_when_equal_and_not_empty() {
        let secret = SecretString::from("s3cret".to_owned());
        assert!(token_matches(b"s3cret", &secret));
        assert!(!token_matches(b"s3cre", &secret));
        assert!(!token_matches(b"s3cret ", &secret));
        assert!(!token_matches(b"", &SecretString::from(String::new())));
    }

    #[test]
    fn a_push_reviews_but_a_metadata_update_does_not() {
        let config = WebhookConfig::new("x");
        let push = event("update", json!({"object_attributes": {"oldrev": "abc"}}));
        assert_eq!(
            decide(&push, &config).unwrap(),
            Decision::Review(MrRef {
                project: Project::Path("group/app".into()),
                iid: 3,
                host: None
            })
        );
        let title = event(
            "update",
            json!({"changes": {"title": {"previous": "a", "current": "b"}}}),
        );
        assert!(!reviewed(&decide(&title, &config).unwrap()));
    }

    #[test]
    fn a_draft_marked_ready_is_reviewed_when_drafts_are_skipped() {
        let config = WebhookConfig::new("x");
        let ready = event(
            "update",
            json!({"changes": {"draft": {"previous": true, "current": false}}}),
        );
        assert!(reviewed(&decide(&ready, &config).unwrap()));
        let mut drafts = WebhookConfig::new("x");
        drafts.review_drafts = true;
        assert!(
            !reviewed(&decide(&ready, &drafts).unwrap()),
            "already reviewed as a draft"
        );
    }

    #[test]
    fn adding_a_required_label_makes_a_merge_request_reviewable() {
        let mut config = WebhookConfig::new("x");
        config.require_labels = vec!["ai-review".into()];
        let added = event(
            "update",
            json!({"labels": [{"title": "AI-Review"}],
                   "changes": {"labels": {"previous": [], "current": [{"title": "AI-Review"}]}}}),
        );
        assert!(reviewed(&decide(&added, &config).unwrap()));
    }

    #[test]
    fn other_object_kinds_are_ignored_and_a_numeric_project_is_a_fallback() {
        let config = WebhookConfig::new("x");
        let push: Event = serde_json::from_value(json!({"object_kind": "push"})).unwrap();
        assert!(!reviewed(&decide(&push, &config).unwrap()));
        let no_path = event("open", json!({"project": {"path_with_namespace": null}}));
        assert_eq!(
            decide(&no_path, &config).unwrap(),
            Decision::Review(MrRef {
                project: Project::Id(7),
                iid: 3,
                host: None
            })
        );
    }
}
