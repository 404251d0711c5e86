//! `reviewq serve`: the webhook receiver, `/healthz` and `/metrics`, in process on
//! `127.0.0.1:0` over real HTTP, against a fresh database per test.

use std::time::Duration;

use reviewq::{
    queue::{NewJob, Queue, WorkerId},
    review::ReviewType,
    server::{AppState, WebhookConfig, serve},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::support::reviewq;

const SECRET: &str = "webhook-secret-for-tests";

/// A server running in this process until dropped or stopped.
struct Server {
    base: String,
    client: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(pool: &PgPool, config: WebhookConfig) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            AppState::new(pool.clone(), config),
            stop.clone().cancelled_owned(),
        ));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            stop,
            task,
        }
    }

    async fn with_defaults(pool: &PgPool) -> Self {
        Self::start(pool, WebhookConfig::new(SECRET)).await
    }

    /// POSTs `body` to the webhook with `token` and extra headers.
    async fn post(
        &self,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/gitlab", self.base))
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Merge Request Hook")
            .body(body);
        if let Some(token) = token {
            request = request.header("x-gitlab-token", token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("webhook request")
    }

    /// A valid delivery of `event` with a fresh Idempotency-Key; returns the status.
    async fn deliver(&self, event: &Value) -> u16 {
        let key = uuid::Uuid::new_v4().to_string();
        self.post(
            Some(SECRET),
            &[("idempotency-key", &key)],
            serde_json::to_vec(event).unwrap(),
        )
        .await
        .status()
        .as_u16()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET")
    }

    async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        response.text().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A merge request event as GitLab sends it (the fields of the documented payload that
/// matter, plus some that do not).
fn mr_event(action: &str, iid: u64) -> Value {
    json!({
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 1, "name": "Ada Lovelace", "username": "ada"},
        "project": {
            "id": 15, "name": "app", "path_with_namespace": "group/app",
            "web_url": "https://gitlab.example.com/group/app", "default_branch": "main"
        },
        "repository": {"name": "app", "url": "git@gitlab.example.com:group/app.git"},
        "object_attributes": {
            "id": 900 + iid, "iid": iid, "title": "Add the thing", "description": "",
            "state": "opened", "draft": false, "work_in_progress": false, "action": action,
            "source_branch": "feature", "target_branch": "main",
            "source_project_id": 15, "target_project_id": 15,
            "url": format!("https://gitlab.example.com/group/app/-/merge_requests/{iid}"),
            "last_commit": {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "thing", "title": "thing"},
            "detailed_merge_status": "mergeable"
        },
        "labels": [],
        "changes": {},
        "assignees": [],
        "reviewers": []
    })
}

/// An `update` event for a push: it carries `oldrev`.
fn push_event(iid: u64) -> Value {
    let mut event = mr_event("update", iid);
    event["object_attributes"]["oldrev"] = json!("0a1b2c3d4e5f60718293a4b5c6d7e8f901234567");
    event["changes"] = json!({"updated_at": {"previous": "2026-11-27 10:00:00 UTC", "current": "2026-11-27 10:05:00 UTC"}});
    event
}

fn with_labels(mut event: Value, labels: &[&str]) -> Value {
    event["labels"] = labels.iter().map(|t| json!({"title": t})).collect();
    event
}

async fn review_jobs(pool: &PgPool) -> Vec<(String, i64, String)> {
    sqlx::query_as(
        "select payload->>'project', (payload->>'iid')::int8, payload->>'review_type' from jobs where kind = 'review' order by id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn review_job_count(pool: &PgPool) -> usize {
    review_jobs(pool).await.len()
}

#[sqlx::test]
async fn a_delivery_with_a_missing_or_wrong_token_gets_401_and_enqueues_nothing(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    let body = serde_json::to_vec(&mr_event("open", 1)).unwrap();

    // Act
    let missing = server.post(None, &[], body.clone()).await;
    let wrong = server
        .post(Some("webhook-secret-for-test"), &[], body.clone())
        .await;
    let longer = server
        .post(Some("webhook-secret-for-tests!"), &[], body.clone())
        .await;
    let empty = server.post(Some(""), &[], body).await;

    // Assert
    for response in [missing, wrong, longer, empty] {
        assert_eq!(response.status(), 401);
        let text = response.text().await.unwrap();
        assert!(!text.contains(SECRET), "the secret is never echoed");
    }
    assert_eq!(review_job_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_replayed_delivery_with_the_same_idempotency_key_enqueues_one_job(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    let body = serde_json::to_vec(&mr_event("open", 5)).unwrap();
    let key = [("idempotency-key", "6f1c2b1e-8d7a-4a8e-9f0e-1d2c3b4a5f60")];

    // Act
    let first = server.post(Some(SECRET), &key, body.clone()).await;
    let first_status = first.status();
    let first: Value = first.json().await.unwrap();
    let replay = server.post(Some(SECRET), &key, body).await;
    let replay_status = replay.status();
    let replay: Value = replay.json().await.unwrap();

    // Assert
    assert_eq!(first_status, 202);
    assert_eq!(first["status"], "enqueued");
    assert_eq!(replay_status, 200);
    assert_eq!(replay["status"], "duplicate");
    assert_eq!(replay["job_id"], first["job_id"]);
    assert_eq!(review_job_count(&pool).await, 1);
}

#[sqlx::test]
async fn older_gitlab_deliveries_are_deduplicated_by_their_event_uuid(pool: PgPool) {
    // Arrange: no Idempotency-Key (GitLab before 17.4); the job is finished in between, so
    // only the delivery record can stop a second job.
    let server = Server::with_defaults(&pool).await;
    let body = serde_json::to_vec(&push_event(6)).unwrap();
    let uuid = [(
        "x-gitlab-event-uuid",
        "3f0d6a52-7c1e-4f55-a3c4-9a1b2c3d4e5f",
    )];

    // Act
    assert_eq!(
        server
            .post(Some(SECRET), &uuid, body.clone())
            .await
            .status(),
        202
    );
    sqlx::query("update jobs set state = 'succeeded', finished_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let replay = server.post(Some(SECRET), &uuid, body).await;

    // Assert
    assert_eq!(replay.status(), 200);
    assert_eq!(review_job_count(&pool).await, 1);
}

#[sqlx::test]
async fn opened_reopened_and_pushed_merge_requests_are_enqueued_for_a_general_review(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;

    // Act
    let statuses = [
        server.deliver(&mr_event("open", 1)).await,
        server.deliver(&mr_event("reopen", 2)).await,
        server.deliver(&push_event(3)).await,
    ];

    // Assert
    assert_eq!(statuses, [202, 202, 202]);
    let general = "general".to_owned();
    assert_eq!(
        review_jobs(&pool).await,
        [
            ("group/app".to_owned(), 1, general.clone()),
            ("group/app".to_owned(), 2, general.clone()),
            ("group/app".to_owned(), 3, general),
        ]
    );
}

#[sqlx::test]
async fn metadata_updates_closes_merges_and_approvals_enqueue_nothing(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    let mut title = mr_event("update", 1);
    title["changes"] = json!({"title": {"previous": "Draft thing", "current": "Thing"}});
    let mut no_changes = mr_event("update", 2);
    no_changes["object_attributes"]["oldrev"] = Value::Null;

    // Act
    let mut statuses = vec![
        server.deliver(&title).await,
        server.deliver(&no_changes).await,
    ];
    for action in [
        "close",
        "merge",
        "approved",
        "unapproved",
        "approval",
        "unapproval",
    ] {
        statuses.push(server.deliver(&mr_event(action, 3)).await);
    }
    let mut note = mr_event("open", 4);
    note["object_kind"] = json!("note");
    statuses.push(server.deliver(&note).await);

    // Assert: acknowledged (so GitLab keeps the hook enabled), nothing enqueued.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(review_job_count(&pool).await, 0);
}

#[sqlx::test]
async fn draft_merge_requests_are_skipped_unless_drafts_are_reviewed(pool: PgPool) {
    // Arrange
    let mut draft = mr_event("open", 8);
    draft["object_attributes"]["draft"] = json!(true);
    let mut old_draft = push_event(9);
    old_draft["object_attributes"]
        .as_object_mut()
        .unwrap()
        .remove("draft");
    old_draft["object_attributes"]["work_in_progress"] = json!(true);
    let skipping = Server::with_defaults(&pool).await;
    let mut config = WebhookConfig::new(SECRET);
    config.review_drafts = true;
    let reviewing = Server::start(&pool, config).await;

    // Act / Assert
    assert_eq!(skipping.deliver(&draft).await, 200);
    assert_eq!(skipping.deliver(&old_draft).await, 200);
    assert_eq!(review_job_count(&pool).await, 0);
    assert_eq!(reviewing.deliver(&draft).await, 202);
    assert_eq!(reviewing.deliver(&old_draft).await, 202);
    assert_eq!(review_job_count(&pool).await, 2);
}

#[sqlx::test]
async fn marking_a_draft_ready_enqueues_a_review_when_drafts_are_skipped(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    let mut ready = mr_event("update", 10);
    ready["changes"] = json!({"draft": {"previous": true, "current": false}});

    // Act
    let status = server.deliver(&ready).await;

    // Assert
    assert_eq!(status, 202);
    assert_eq!(review_job_count(&pool).await, 1);
}

#[sqlx::test]
async fn label_filters_require_one_listed_label_and_skip_any_excluded_one(pool: PgPool) {
    // Arrange
    let mut config = WebhookConfig::new(SECRET);
    config.require_labels = vec!["ai-review".into(), "needs-review".into()];
    config.skip_labels = vec!["no-ai".into()];
    config.review_type = ReviewType::Security;
    let server = Server::start(&pool, config).await;

    // Act
    let unlabelled = server.deliver(&mr_event("open", 1)).await;
    let other = server
        .deliver(&with_labels(mr_event("open", 2), &["backend"]))
        .await;
    let required = server
        .deliver(&with_labels(mr_event("open", 3), &["backend", "AI-Review"]))
        .await;
    let excluded = server
        .deliver(&with_labels(mr_event("open", 4), &["ai-review", "no-ai"]))
        .await;

    // Assert
    assert_eq!(
        [unlabelled, other, required, excluded],
        [200, 200, 202, 200]
    );
    assert_eq!(
        review_jobs(&pool).await,
        [("group/app".to_owned(), 3, "security".to_owned())]
    );
}

#[sqlx::test]
async fn an_oversized_body_gets_413_and_a_malformed_one_400(pool: PgPool) {
    // Arrange
    let mut config = WebhookConfig::new(SECRET);
    config.max_body_bytes = 64 * 1024;
    let server = Server::start(&pool, config).await;
    let mut big = mr_event("open", 1);
    big["object_attributes"]["description"] = json!("x".repeat(100 * 1024));

    // Act
    let oversized = server
        .post(Some(SECRET), &[], serde_json::to_vec(&big).unwrap())
        .await;
    let malformed = server
        .post(Some(SECRET), &[], b"{\"object_kind\": ".to_vec())
        .await;
    let no_attributes = server
        .post(
            Some(SECRET),
            &[],
            br#"{"object_kind": "merge_request"}"#.to_vec(),
        )
        .await;

    // Assert
    assert_eq!(oversized.status(), 413);
    assert_eq!(malformed.status(), 400);
    assert_eq!(no_attributes.status(), 400);
    assert_eq!(review_job_count(&pool).await, 0);
}

#[sqlx::test]
async fn healthz_answers_200_while_the_database_is_reachable(pool: PgPool) {
    let server = Server::with_defaults(&pool).await;

    let response = server.get("/healthz").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap().trim(), "ok");
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[sqlx::test]
async fn metrics_expose_every_family_and_follow_the_tables(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    let before = server.metrics().await;
    let queue = Queue::new(pool.clone());
    Queue::enqueue(&pool, &NewJob::new("noop", json!({})))
        .await
        .unwrap();
    let claimed = queue
        .claim(WorkerId::random(), 1, Duration::from_secs(30))
        .await
        .unwrap();
    Queue::complete_many(&pool, &[claimed[0].lease])
        .await
        .unwrap();
    Queue::enqueue(&pool, &NewJob::new("noop", json!({})))
        .await
        .unwrap();
    sqlx::query(
        "insert into llm_calls (job_id, job_attempt, project, mr_iid, head_sha, review_type, model, status, http_status, error_code, prompt_tokens, completion_tokens, total_tokens, finished_at)
         values (1, 1, 'group/app', 1, 'abc', 'general', 'glm-4.6', 'ok', 200, null, 1200, 300, 1500, now()),
                (1, 1, 'group/app', 1, 'abc', 'general', 'glm-4.6', 'error', 429, '1302', null, null, null, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("insert into limit_slots (resource, slot) values ('llm', 0), ('llm', 1)")
        .execute(&pool)
        .await
        .unwrap();

    // Act
    let after = server.metrics().await;

    // Assert
    for family in [
        "reviewq_jobs",
        "reviewq_queue_runnable_jobs",
        "reviewq_queue_oldest_runnable_age_seconds",
        "reviewq_queue_latency_seconds",
        "reviewq_job_duration_seconds",
        "reviewq_llm_calls_total",
        "reviewq_llm_tokens_total",
        "reviewq_llm_provider_errors_total",
        "reviewq_llm_call_duration_seconds",
        "reviewq_comments_total",
        "reviewq_comments_pending",
        "reviewq_conversations_total",
        "reviewq_merge_requests_paused",
        "reviewq_limit_slots",
        "reviewq_limit_slots_in_use",
    ] {
        assert!(
            before.contains(&format!("# TYPE {family} ")),
            "{family} missing from\n{before}"
        );
    }
    assert_eq!(
        sample(&before, r#"reviewq_jobs{kind="noop",state="succeeded"}"#),
        None
    );
    assert_eq!(
        sample(&after, r#"reviewq_jobs{kind="noop",state="succeeded"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"reviewq_jobs{kind="noop",state="queued"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&after, "reviewq_queue_runnable_jobs"), Some(1.0));
    assert!(
        after.contains(r#"reviewq_job_duration_seconds{kind="noop",quantile="0.99"}"#),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"reviewq_llm_tokens_total{model="glm-4.6",type="prompt"}"#
        ),
        Some(1200.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"reviewq_llm_tokens_total{model="glm-4.6",type="completion"}"#
        ),
        Some(300.0)
    );
    assert_eq!(
        sample(&after, r#"reviewq_llm_provider_errors_total{code="1302"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"reviewq_llm_calls_total{model="glm-4.6",status="error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"reviewq_limit_slots{resource="llm"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, r#"reviewq_limit_slots_in_use{resource="llm"}"#),
        Some(0.0)
    );
}

#[sqlx::test]
async fn serve_stops_when_its_shutdown_future_resolves(pool: PgPool) {
    // Arrange
    let server = Server::with_defaults(&pool).await;
    assert_eq!(server.get("/healthz").await.status(), 200);

    // Act
    server.stop.cancel();

    // Assert
    let mut server = server;
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serve_without_a_webhook_secret_exits_2_and_names_the_setting() {
    let out = reviewq()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("REVIEWQ_WEBHOOK_SECRET")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output()
        .await
        .expect("run reviewq");

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REVIEWQ_WEBHOOK_SECRET"), "{stderr}");
}

#[sqlx::test]
async fn metrics_show_the_llm_pause_and_the_jobs_waiting_for_it(pool: PgPool) {
    let server = Server::with_defaults(&pool).await;
    let before = server.metrics().await;
    assert_eq!(sample(&before, "reviewq_llm_paused"), Some(0.0));
    assert_eq!(
        sample(&before, r#"reviewq_jobs_waiting{reason="llm-paused"}"#),
        Some(0.0)
    );

    let pause = reviewq::spend::pause(
        &pool,
        "the account is out of balance",
        Some("1113"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let queue = Queue::new(pool.clone());
    Queue::enqueue(&pool, &NewJob::new("noop", json!({})))
        .await
        .unwrap();
    let claimed = queue
        .claim(WorkerId::random(), 1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    Queue::wait(&mut tx, claimed[0].lease, pause.probe_at, &pause.waiting())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let after = server.metrics().await;
    assert_eq!(sample(&after, "reviewq_llm_paused"), Some(1.0));
    assert_eq!(
        sample(&after, r#"reviewq_jobs_waiting{reason="llm-paused"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"reviewq_jobs_waiting{reason="llm-budget"}"#),
        Some(0.0)
    );
}
