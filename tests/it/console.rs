//! The web console (`/ui`): every page and action, in process on `127.0.0.1:0` over real
//! HTTP, against a fresh database per test seeded with jobs, reviews and ledger rows.

use reviewq::{
    queue::{JobId, JobState, NewJob, Queue},
    server::{AppState, WebhookConfig, serve, ui::UiConfig},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "console-password-for-tests";
pub const READONLY: &str = "read-only-password-for-tests";
const WEBHOOK_SECRET: &str = "webhook-secret-for-console-tests";

/// A server with the console on, running in this process until dropped.
pub struct Console {
    pub base: String,
    client: reqwest::Client,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Console {
    pub async fn start(pool: &PgPool, ui: Option<UiConfig>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let mut state = AppState::new(pool.clone(), WebhookConfig::new(WEBHOOK_SECRET));
        if let Some(ui) = ui {
            state = state.with_ui(ui);
        }
        let task = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stop,
            task: Some(task),
        }
    }

    /// The console with both passwords, linking to a fake GitLab.
    pub async fn with_passwords(pool: &PgPool) -> Self {
        let gitlab = "https://gitlab.example.com".parse().unwrap();
        Self::start(pool, Some(UiConfig::new(PASSWORD, Some(READONLY), gitlab))).await
    }

    async fn get_as(&self, path: &str, password: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(password) = password {
            request = request.basic_auth("reviewq", Some(password));
        }
        request.send().await.expect("console request")
    }

    /// GETs `path` as the operator; asserts 200 and returns the body.
    async fn page(&self, path: &str) -> String {
        let response = self.get_as(path, Some(PASSWORD)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    async fn post_as(&self, password: &str, form: &[(&str, String)]) -> reqwest::Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.client
            .post(format!("{}/ui/jobs/action", self.base))
            .basic_auth("reviewq", Some(password))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("console action")
    }

    /// The CSRF token of the operator's pages.
    async fn csrf(&self) -> String {
        let page = self.page("/ui/jobs").await;
        let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        page[at..at + 64].to_owned()
    }
}

/// What [`seed`] created.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    /// A review job that failed (with two attempts in its history and two chunk children).
    pub failed: JobId,
    /// A queued review job of another MR.
    pub queued: JobId,
    /// A succeeded job.
    pub succeeded: JobId,
    /// (day, model) groups of ledger rows within the last 30 days: the spend chart's bars.
    pub model_day_bars: usize,
    /// Total tokens of the ledger rows within the last 30 days.
    pub tokens_30_days: i64,
}

fn review_payload(project: &str, iid: u64) -> serde_json::Value {
    json!({"mr": format!("{project}!{iid}"), "project": project, "iid": iid,
           "review_type": "general", "dry_run": false, "force": false, "full": false})
}

/// A failed review job with attempts, chunks, two review rounds with findings and a
/// summary note; a queued and a succeeded job; ledger rows over 3 recent days and one old.
pub async fn seed(pool: &PgPool) -> Seeded {
    let enqueue = |job: NewJob| async move { Queue::enqueue(pool, &job).await.unwrap().id() };
    let failed = enqueue(NewJob::new("review", review_payload("group/app", 7))).await;
    let queued = enqueue(NewJob::new("review", review_payload("group/other", 3))).await;
    let succeeded = enqueue(NewJob::new("noop", json!({}))).await;
    let worker = uuid::Uuid::new_v4();
    sqlx::query!(
        "update jobs set state = 'failed', attempt = 2, failed_attempts = 2, max_attempts = 2,
             started_at = now() - interval '1 minute', finished_at = now(),
             last_error = 'GitLab answered 500 on GET merge_requests/7 (attempt 2)'
         where id = $1",
        failed.get()
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query!(
        "insert into job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
         values ($1, 1, $2, now() - interval '3 minutes', now() - interval '2 minutes', 'retry',
                 'GitLab answered 502 (attempt 1)'),
                ($1, 2, $2, now() - interval '1 minute', now(), 'failed',
                 'GitLab answered 500 on GET merge_requests/7 (attempt 2)')",
        failed.get(),
        worker
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query!(
        "update jobs set state = 'succeeded', attempt = 1, started_at = now() - interval '2 seconds',
             finished_at = now() where id = $1",
        succeeded.get()
    )
    .execute(pool)
    .await
    .unwrap();
    let round1 = sqlx::query_scalar!(
        "insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha, base_sha,
             start_sha, state, chunk_count, finished_at)
         values ($1, 'group/app', 7, 'general', false, 'aaaaaaaaaaaaaaaa1111', 'b', 's', 'done', 2, now())
         returning id",
        failed.get()
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let round2 = sqlx::query_scalar!(
        "insert into reviews (job_id, project, mr_iid, review_type, dry_run, head_sha, base_sha,
             start_sha, state, chunk_count, scope, since_sha)
         values ($1::int8 + 100000, 'group/app', 7, 'general', false, 'cccccccccccccccc2222', 'b', 's',
                 'reviewing', 1, 'incremental', 'aaaaaaaaaaaaaaaa1111')
         returning id",
        failed.get()
    )
    .fetch_one(pool)
    .await
    .unwrap();
    for (index, state) in [(0, "succeeded"), (1, "failed")] {
        sqlx::query!(
            "insert into jobs (kind, payload, parent_id, state, finished_at)
             values ('review_chunk', $1, $2, $3::text::job_state, now())",
            json!({"review_id": round1, "chunk_index": index}),
            failed.get(),
            state
        )
        .execute(pool)
        .await
        .unwrap();
    }
    for (review, key, severity, state) in [
        (round1, "f1", "major", "posted"),
        (round1, "f2", "minor", "posted"),
        (round1, "f3", "minor", "dismissed"),
        (round2, "f4", "critical", "open"),
    ] {
        sqlx::query!(
            "insert into outbox (review_id, key, kind, severity, body, state)
             values ($1, $2, 'inline', $3, 'body', $4)",
            review,
            key,
            severity,
            state
        )
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query!(
        "insert into mr_summaries (project, mr_iid, review_type, gitlab_note_id)
         values ('group/app', 7, 'general', 4242)"
    )
    .execute(pool)
    .await
    .unwrap();
    // (days ago, model, review, total tokens): 4 (day, model) groups within 30 days.
    let calls = [
        (0, "glm-4.6", round2, 1000),
        (0, "glm-4.6", round2, 500),
        (0, "glm-5", round2, 300),
        (1, "glm-4.6", round1, 2000),
        (2, "glm-5", round1, 700),
        (40, "glm-4.6", round1, 9999),
    ];
    for (days, model, review, tokens) in calls {
        sqlx::query!(
            "insert into llm_calls (job_id, job_attempt, review_id, project, mr_iid, head_sha,
                 review_type, model, status, prompt_tokens, completion_tokens, total_tokens,
                 started_at, finished_at)
             values ($1, 1, $2, 'group/app', 7, 'h', 'general', $3, 'ok', $4 - $4 / 4, $4 / 4, $4,
                 date_trunc('day', now()) - make_interval(days => $5) + interval '1 minute',
                 date_trunc('day', now()) - make_interval(days => $5) + interval '2 minutes')",
            failed.get(),
            review,
            model,
            tokens,
            days
        )
        .execute(pool)
        .await
        .unwrap();
    }
    Seeded {
        failed,
        queued,
        succeeded,
        model_day_bars: 4,
        tokens_30_days: 1000 + 500 + 300 + 2000 + 700,
    }
}

async fn state_of(pool: &PgPool, id: JobId) -> JobState {
    Queue::new(pool.clone()).get(id).await.unwrap().state
}

const PAGES: [&str; 6] = [
    "/ui",
    "/ui/jobs",
    "/ui/jobs/ID",
    "/ui/reviews",
    "/ui/reviews/mr?project=group%2Fapp&iid=7",
    "/ui/spend",
];

fn pages(seeded: &Seeded) -> Vec<String> {
    PAGES
        .iter()
        .map(|p| p.replace("ID", &seeded.failed.to_string()))
        .collect()
}

#[sqlx::test]
async fn every_page_is_refused_without_the_password_and_asks_for_basic_auth(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;

    // Act / Assert
    for path in pages(&seeded) {
        for password in [None, Some("wrong"), Some("")] {
            let response = console.get_as(&path, password).await;
            assert_eq!(response.status(), 401, "GET {path} with {password:?}");
            assert!(
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic realm=\"reviewq\"")
            );
        }
        let other_user = console
            .client
            .get(format!("{}{path}", console.base))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(other_user.status(), 401, "only the user reviewq logs in");
    }
}

#[sqlx::test]
async fn without_a_console_password_there_is_no_console(pool: PgPool) {
    // Arrange
    let console = Console::start(&pool, None).await;

    // Act
    let response = console.get_as("/ui", Some(PASSWORD)).await;

    // Assert
    assert_eq!(response.status(), 404);
}

#[sqlx::test]
async fn every_page_answers_with_basic_auth_and_with_the_bearer_token(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;

    // Act / Assert
    for path in pages(&seeded) {
        let page = console.page(&path).await;
        assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
        let bearer = console
            .client
            .get(format!("{}{path}", console.base))
            .bearer_auth(PASSWORD)
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 200, "{path} with the Bearer token");
        let csp = bearer.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        for secret in [PASSWORD, READONLY, WEBHOOK_SECRET] {
            assert!(!page.contains(secret), "{path} shows a secret");
        }
        assert!(
            !page.contains("src=\"http") && !page.contains("stylesheet\" href=\"http"),
            "{path} loads nothing from elsewhere"
        );
    }
}

#[sqlx::test]
async fn the_pages_show_jobs_attempts_chunks_reviews_and_spend(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;

    // Act
    let overview = console.page("/ui").await;
    let failed_list = console.page("/ui/jobs?state=failed").await;
    let by_mr = console.page("/ui/jobs?project=group%2Fother&mr=3").await;
    let job = console.page(&format!("/ui/jobs/{}", seeded.failed)).await;
    let mr = console
        .page("/ui/reviews/mr?project=group%2Fapp&iid=7")
        .await;
    let spend = console.page("/ui/spend").await;

    // Assert
    assert!(
        overview.contains(r#"href="/ui/jobs?kind=review&amp;state=failed">1</a>"#),
        "{overview}"
    );
    assert!(overview.contains("LLM work is not paused"));
    assert!(failed_list.contains(&format!(r#"data-job="{}""#, seeded.failed)));
    assert!(!failed_list.contains(&format!(r#"data-job="{}""#, seeded.queued)));
    assert!(by_mr.contains(&format!(r#"data-job="{}""#, seeded.queued)));
    assert!(!by_mr.contains(&format!(r#"data-job="{}""#, seeded.failed)));
    assert!(
        job.contains("GitLab answered 502 (attempt 1)"),
        "every attempt's error"
    );
    assert!(job.contains("GitLab answered 500 on GET merge_requests/7 (attempt 2)"));
    assert!(job.contains("1 of 2 done"), "chunk progress: {job}");
    assert!(job.contains(r#"href="https://gitlab.example.com/group/app/-/merge_requests/7""#));
    assert!(
        job.contains("&quot;project&quot;: &quot;group/app&quot;"),
        "the payload"
    );
    assert!(mr.contains("incremental"), "{mr}");
    assert!(mr.contains("since <code>aaaaaaaaaaaa</code>"), "{mr}");
    assert!(
        mr.contains(r#"href="https://gitlab.example.com/group/app/-/merge_requests/7#note_4242""#),
        "the living summary note"
    );
    assert!(mr.contains("<th>dismissed</th>") && mr.contains("<th>open</th>"));
    assert!(
        mr.contains("12,699 tokens"),
        "round 1's tokens, the old call too: {mr}"
    );
    assert!(mr.contains("1,800 tokens"), "round 2's tokens: {mr}");
    let (models, projects) = spend
        .split_once(r#"id="chart-projects""#)
        .expect("two charts");
    let bars = |svg: &str| svg.matches("<rect class=\"bar\"").count();
    assert_eq!(
        bars(models),
        seeded.model_day_bars,
        "tokens by day and model"
    );
    assert_eq!(bars(projects), 3, "cost by day of the one project");
    assert!(
        spend.contains("glm-4.6") && spend.contains("Z.ai list price"),
        "the price table"
    );
}

#[sqlx::test]
async fn the_spend_page_shows_the_numbers_of_reviewq_usage(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let today = reviewq::spend::report::today(&pool).await.unwrap();
    let since = today - chrono::Days::new(29);
    let report =
        reviewq::spend::report::report(&pool, reviewq::spend::report::GroupBy::Day, Some(since))
            .await
            .unwrap();

    // Act
    let spend = console.page("/ui/spend").await;

    // Assert
    assert_eq!(report.totals.total_tokens, seeded.tokens_30_days);
    let tokens = format!(
        r#"id="total-tokens">{}</p>"#,
        reviewq_tokens(report.totals.total_tokens)
    );
    assert!(spend.contains(&tokens), "{tokens} in {spend}");
    let cost = report.totals.cost_usd.unwrap();
    let cost = if cost < 0.01 {
        format!("${cost:.4}")
    } else {
        format!("${cost:.2}")
    };
    assert!(
        spend.contains(&format!(r#"id="total-cost">{cost}</p>"#)),
        "{cost}"
    );
}

fn reviewq_tokens(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[sqlx::test]
async fn a_read_only_login_sees_every_page_but_no_action_and_may_not_act(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let token = console.csrf().await;

    // Act
    let mut bodies = Vec::new();
    for path in pages(&seeded) {
        let response = console.get_as(&path, Some(READONLY)).await;
        assert_eq!(response.status(), 200, "{path}");
        bodies.push(response.text().await.unwrap());
    }
    let post = console
        .post_as(
            READONLY,
            &[
                ("csrf", token),
                ("action", "retry".into()),
                ("id", seeded.failed.to_string()),
                ("confirmed", "yes".into()),
            ],
        )
        .await;

    // Assert
    for body in &bodies {
        assert!(
            !body.contains("name=\"csrf\""),
            "no action form for read-only"
        );
        assert!(!body.contains("value=\"retry\""));
    }
    assert_eq!(post.status(), 403);
    assert_eq!(state_of(&pool, seeded.failed).await, JobState::Failed);
}

#[sqlx::test]
async fn an_action_without_the_right_csrf_token_is_refused(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let base = [
        ("action", "retry".to_owned()),
        ("id", seeded.failed.to_string()),
        ("confirmed", "yes".to_owned()),
    ];

    // Act
    let missing = console.post_as(PASSWORD, &base).await;
    let mut wrong_form = base.to_vec();
    wrong_form.push(("csrf", "0".repeat(64)));
    let wrong = console.post_as(PASSWORD, &wrong_form).await;

    // Assert
    assert_eq!(missing.status(), 403);
    assert_eq!(wrong.status(), 403);
    assert_eq!(state_of(&pool, seeded.failed).await, JobState::Failed);
}

#[sqlx::test]
async fn an_unconfirmed_action_asks_first_and_changes_nothing(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let token = console.csrf().await;

    // Act
    let response = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token),
                ("action", "retry".into()),
                ("id", seeded.failed.to_string()),
            ],
        )
        .await;

    // Assert
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("name=\"confirmed\" value=\"yes\""), "{page}");
    assert_eq!(state_of(&pool, seeded.failed).await, JobState::Failed);
}

#[sqlx::test]
async fn a_confirmed_retry_queues_the_failed_job_and_cancel_ends_the_selected_ones(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let token = console.csrf().await;
    let back = format!("/ui/jobs/{}", seeded.failed);

    // Act
    let retried = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token.clone()),
                ("action", "retry".into()),
                ("id", seeded.failed.to_string()),
                ("back", back.clone()),
                ("confirmed", "yes".into()),
            ],
        )
        .await;
    let cancelled = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token),
                ("action", "cancel".into()),
                ("id", seeded.failed.to_string()),
                ("id", seeded.queued.to_string()),
                ("confirmed", "yes".into()),
            ],
        )
        .await;

    // Assert
    assert_eq!(retried.status(), 303);
    assert_eq!(retried.headers()["location"], back.as_str());
    assert_eq!(cancelled.status(), 303);
    assert_eq!(state_of(&pool, seeded.failed).await, JobState::Cancelled);
    assert_eq!(state_of(&pool, seeded.queued).await, JobState::Cancelled);
}

#[sqlx::test]
async fn retrying_a_succeeded_job_is_refused_with_the_reason(pool: PgPool) {
    // Arrange
    let seeded = seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let token = console.csrf().await;

    // Act
    let response = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token),
                ("action", "retry".into()),
                ("id", seeded.succeeded.to_string()),
                ("id", seeded.failed.to_string()),
                ("confirmed", "yes".into()),
            ],
        )
        .await;

    // Assert
    assert_eq!(response.status(), 409);
    let page = response.text().await.unwrap();
    assert!(page.contains("is succeeded"), "{page}");
    assert_eq!(state_of(&pool, seeded.succeeded).await, JobState::Succeeded);
    assert_eq!(
        state_of(&pool, seeded.failed).await,
        JobState::Queued,
        "the other selected job was retried"
    );
}

#[sqlx::test]
async fn a_bad_filter_or_form_value_is_named_in_a_400(pool: PgPool) {
    // Arrange
    seed(&pool).await;
    let console = Console::with_passwords(&pool).await;
    let token = console.csrf().await;

    // Act
    let state = console
        .get_as("/ui/jobs?state=broken", Some(PASSWORD))
        .await;
    let mr = console.get_as("/ui/jobs?mr=x7", Some(PASSWORD)).await;
    let id = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token.clone()),
                ("action", "retry".into()),
                ("id", "abc".into()),
            ],
        )
        .await;
    let action = console
        .post_as(
            PASSWORD,
            &[
                ("csrf", token),
                ("action", "delete".into()),
                ("id", "1".into()),
            ],
        )
        .await;

    // Assert
    for (response, value) in [
        (state, "broken"),
        (mr, "x7"),
        (id, "abc"),
        (action, "delete"),
    ] {
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(text.contains(value), "{text} names {value}");
    }
}
