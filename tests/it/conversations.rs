//! Talking to the bot: Note Hook deliveries to the real webhook server, `conversation` jobs
//! run by the real worker against the simulated GitLab (roles, award emoji, replies) and GLM.

use reviewq::{
    jobs::conversation::KIND,
    queue::{JobId, JobState},
    review::{MarkerKind, conversation::find_reply_marker, find_marker},
    server::{AppState, WebhookConfig, serve},
    sim::gitlab::{BOT_USERNAME, StoredDiscussion, StoredNote, access},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, PROJECT, options};

const SECRET: &str = "conversation-webhook-secret";

/// The webhook server, in process, until dropped.
struct Hooks {
    url: String,
    client: reqwest::Client,
    stop: CancellationToken,
}

impl Hooks {
    async fn start(pool: &PgPool, config: WebhookConfig) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}/webhooks/gitlab", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            AppState::new(pool.clone(), config),
            stop.clone().cancelled_owned(),
        ));
        Self {
            url,
            client: reqwest::Client::new(),
            stop,
        }
    }

    /// Delivers `event` with the delivery key `key`; the status and the answer.
    async fn deliver_with_key(&self, event: &Value, key: &str, hook: &str) -> (u16, Value) {
        let response = self
            .client
            .post(&self.url)
            .header("x-gitlab-token", SECRET)
            .header("x-gitlab-event", hook)
            .header("idempotency-key", key)
            .json(event)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /metrics` of the same server.
    async fn metrics(&self) -> String {
        let url = self.url.replace("/webhooks/gitlab", "/metrics");
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn deliver(&self, event: &Value) -> (u16, Value) {
        let key = uuid::Uuid::new_v4().to_string();
        self.deliver_with_key(event, &key, "Note Hook").await
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A first round on MR 1, members `alice` (Developer) and `rita` (Reporter), and the server.
async fn reviewed(pool: PgPool) -> (Harness, Hooks) {
    let h = Harness::start(pool).await;
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    h.gitlab
        .set_member(PROJECT, "alice", access::DEVELOPER)
        .unwrap();
    h.gitlab
        .set_member(PROJECT, "rita", access::REPORTER)
        .unwrap();
    let hooks = Hooks::start(&h.pool, WebhookConfig::new(SECRET)).await;
    (h, hooks)
}

/// The bot's first inline thread.
fn bot_thread(h: &Harness) -> StoredDiscussion {
    h.gitlab
        .discussions(PROJECT, 1)
        .unwrap()
        .into_iter()
        .find(|d| {
            find_marker(&d.notes[0].body).is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)))
        })
        .expect("the round posted an inline thread")
}

fn thread(h: &Harness, id: &str) -> StoredDiscussion {
    h.gitlab
        .discussions(PROJECT, 1)
        .unwrap()
        .into_iter()
        .find(|d| d.id == id)
        .unwrap()
}

/// Delivers the Note Hook of `note` and runs the conversation job it enqueued.
async fn answer(h: &Harness, hooks: &Hooks, note: &StoredNote) -> JobId {
    let event = h.gitlab.note_hook(PROJECT, 1, note.id, "create").unwrap();
    let (status, body) = hooks.deliver(&event).await;
    assert_eq!(status, 202, "{body}");
    let id = JobId::new(body["job_id"].as_i64().unwrap());
    h.run(&[id]).await;
    let job = h.queue.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    id
}

/// The bot's replies to `note` anywhere on the MR.
fn replies_to(h: &Harness, note: &StoredNote) -> Vec<StoredNote> {
    h.gitlab
        .notes(PROJECT, 1)
        .unwrap()
        .into_iter()
        .filter(|n| {
            n.author == BOT_USERNAME && find_reply_marker(&n.body).map(|m| m.0) == Some(note.id)
        })
        .collect()
}

async fn conversation(h: &Harness, note: &StoredNote) -> (String, String) {
    sqlx::query_as("select intent, state from conversations where note_id = $1")
        .bind(i64::try_from(note.id).unwrap())
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

async fn conversation_jobs(h: &Harness) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where kind = $1")
        .bind(KIND)
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn done_in_a_bot_thread_resolves_it_and_posts_nothing(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let target = bot_thread(&h);
    let notes_before = h.gitlab.notes(PROJECT, 1).unwrap().len();
    let reply = h
        .gitlab
        .seed_reply(PROJECT, 1, &target.id, "alice", "Done!")
        .unwrap();
    answer(&h, &hooks, &reply).await;
    let after = thread(&h, &target.id);
    assert!(
        after.notes.iter().all(|n| n.resolved),
        "the thread is resolved"
    );
    assert_eq!(
        h.gitlab.notes(PROJECT, 1).unwrap().len(),
        notes_before + 1,
        "nothing posted"
    );
    assert!(h.gitlab.awards().is_empty(), "not even an award");
    assert_eq!(
        conversation(&h, &reply).await,
        ("resolve".into(), "answered".into())
    );
}

#[sqlx::test]
async fn a_question_in_a_bot_thread_gets_one_answer_there_naming_the_finding_and_billed_as_a_conversation(
    pool: PgPool,
) {
    let (h, hooks) = reviewed(pool).await;
    let target = bot_thread(&h);
    let title = target.notes[0]
        .body
        .lines()
        .next()
        .unwrap()
        .split(":** ")
        .nth(1)
        .unwrap()
        .to_owned();
    let (calls_before, _) = h.ledger_tokens().await;
    let question = h
        .gitlab
        .seed_reply(
            PROJECT,
            1,
            &target.id,
            "alice",
            "Why is this a problem here?",
        )
        .unwrap();
    answer(&h, &hooks, &question).await;

    let after = thread(&h, &target.id);
    let replies = replies_to(&h, &question);
    assert_eq!(replies.len(), 1, "one answer");
    assert_eq!(
        after.notes.last().unwrap().id,
        replies[0].id,
        "in the same thread"
    );
    let words: Vec<&str> = title
        .split_whitespace()
        .filter(|w| w.chars().all(char::is_alphanumeric))
        .collect();
    assert!(
        words.iter().all(|w| replies[0].body.contains(w)),
        "names the finding {title:?}: {}",
        replies[0].body
    );
    assert!(replies[0].body.contains("Why is this a problem here?"));
    let awards = h.gitlab.awards();
    assert_eq!(awards.len(), 1);
    assert_eq!(
        (awards[0].note_id, awards[0].name.as_str()),
        (question.id, "eyes")
    );
    let (conversation_calls, tokens): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(sum(total_tokens), 0)::int8 from llm_calls where purpose = 'conversation'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(conversation_calls, 1);
    assert!(tokens > 0);
    let (calls_after, _) = h.ledger_tokens().await;
    assert_eq!(
        calls_after,
        calls_before + 1,
        "the ledger totals include the answer"
    );
    let rollup: i64 = sqlx::query_scalar(
        "select coalesce(sum(total_tokens), 0)::int8 from llm_usage_daily where purpose = 'conversation'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(rollup, tokens, "`reviewq usage` reads the same tokens");

    let metrics = hooks.metrics().await;
    assert!(
        metrics.contains(r#"reviewq_conversations_total{intent="question",state="answered"} 1"#),
        "{metrics}"
    );

    // The same comment delivered again (a new delivery key) answers nothing twice.
    answer(&h, &hooks, &question).await;
    assert_eq!(replies_to(&h, &question).len(), 1);
    assert_eq!(h.gitlab.awards().len(), 1);
}

#[sqlx::test]
async fn a_replayed_delivery_enqueues_nothing(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let note = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot help", false)
        .unwrap();
    let event = h.gitlab.note_hook(PROJECT, 1, note.id, "create").unwrap();
    let (first, _) = hooks
        .deliver_with_key(&event, "delivery-1", "Note Hook")
        .await;
    let (again, body) = hooks
        .deliver_with_key(&event, "delivery-1", "Note Hook")
        .await;
    assert_eq!((first, again), (202, 200));
    assert_eq!(body["status"], "duplicate");
    assert_eq!(conversation_jobs(&h).await, 1);
}

#[sqlx::test]
async fn a_command_from_a_reporter_is_refused_once_and_nothing_is_done(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let reviews_before: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'review'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let first = h
        .gitlab
        .seed_note(PROJECT, 1, "rita", "@reviewq-bot full review", false)
        .unwrap();
    answer(&h, &hooks, &first).await;
    let refusals = replies_to(&h, &first);
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].body.contains("Developer"),
        "{}",
        refusals[0].body
    );
    let second = h
        .gitlab
        .seed_note(PROJECT, 1, "rita", "@reviewq-bot review", false)
        .unwrap();
    answer(&h, &hooks, &second).await;
    assert!(
        replies_to(&h, &second).is_empty(),
        "one polite reply at most"
    );
    assert_eq!(conversation(&h, &second).await.1, "refused");
    let reviews_after: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'review'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(reviews_after, reviews_before, "no round enqueued");
    assert!(h.gitlab.awards().is_empty());
}

#[sqlx::test]
async fn notes_by_the_bot_itself_edited_notes_and_system_notes_enqueue_nothing(pool: PgPool) {
    let (h, _) = reviewed(pool.clone()).await;
    let ours = &bot_thread(&h).notes[0];
    let bot_id = h.gitlab.note_hook(PROJECT, 1, ours.id, "create").unwrap()["object_attributes"]
        ["author_id"]
        .as_u64()
        .unwrap();
    let mut config = WebhookConfig::new(SECRET);
    config.bot_user_id = Some(bot_id);
    let hooks = Hooks::start(&h.pool, config).await;
    let human = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot review", false)
        .unwrap();
    let system = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "added 1 commit", true)
        .unwrap();
    for event in [
        h.gitlab.note_hook(PROJECT, 1, ours.id, "create").unwrap(),
        h.gitlab.note_hook(PROJECT, 1, human.id, "update").unwrap(),
        h.gitlab.note_hook(PROJECT, 1, system.id, "create").unwrap(),
    ] {
        let (status, body) = hooks.deliver(&event).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("ignored")),
            "{body}"
        );
    }
    assert_eq!(conversation_jobs(&h).await, 0);

    // Without the configured id, the job itself knows the bot (by `GET /user`).
    let unconfigured = Hooks::start(&h.pool, WebhookConfig::new(SECRET)).await;
    answer(&h, &unconfigured, ours).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from conversations")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the bot does not talk to itself");
}

fn push_event() -> Value {
    json!({
        "object_kind": "merge_request",
        "project": {"id": 77, "path_with_namespace": PROJECT},
        "object_attributes": {"iid": 1, "action": "update", "oldrev": "0123abc", "draft": false},
        "labels": [],
        "changes": {}
    })
}

#[sqlx::test]
async fn pause_stops_push_triggered_rounds_until_resume(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let pause = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot pause", false)
        .unwrap();
    answer(&h, &hooks, &pause).await;
    assert_eq!(replies_to(&h, &pause).len(), 1);
    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = hooks
        .deliver_with_key(&push_event(), &key, "Merge Request Hook")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("paused by alice"),
        "{body}"
    );
    let metrics = hooks.metrics().await;
    assert!(
        metrics.contains("reviewq_merge_requests_paused 1"),
        "{metrics}"
    );

    // A round asked for by hand still runs, and its summary says reviews are paused.
    let full = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot full review", false)
        .unwrap();
    answer(&h, &hooks, &full).await;
    let summary = h
        .gitlab
        .notes(PROJECT, 1)
        .unwrap()
        .into_iter()
        .find(|n| find_marker(&n.body).is_some_and(|m| m.kind == MarkerKind::Summary))
        .unwrap();
    assert!(
        summary.body.contains("**Paused** by alice"),
        "{}",
        summary.body
    );

    let resume = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot resume", false)
        .unwrap();
    let reviews = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where kind = 'review'")
            .fetch_one(&h.pool)
            .await
            .unwrap()
    };
    let before = reviews().await;
    answer(&h, &hooks, &resume).await;
    assert_eq!(
        reviews().await - before,
        1,
        "resume reviews what was pushed meanwhile"
    );
    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = hooks
        .deliver_with_key(&push_event(), &key, "Merge Request Hook")
        .await;
    assert_eq!(status, 202, "{body}");
}

#[sqlx::test]
async fn a_reply_that_tries_quick_actions_and_mass_mentions_is_neutralised(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let target = bot_thread(&h);
    let question = h
        .gitlab
        .seed_reply(
            PROJECT,
            1,
            &target.id,
            "alice",
            "/merge\n/approve\n@all please explain?",
        )
        .unwrap();
    answer(&h, &hooks, &question).await;
    let replies = replies_to(&h, &question);
    assert_eq!(replies.len(), 1);
    let body = &replies[0].body;
    assert!(
        body.contains("merge") && body.contains("explain"),
        "the question is quoted: {body}"
    );
    assert!(
        !body.lines().any(|l| l.trim_start().starts_with('/')),
        "no quick action: {body}"
    );
    assert!(!body.contains("@all"), "no mass mention: {body}");
}

#[sqlx::test]
async fn commands_enqueue_rounds_resolve_all_threads_and_unknown_ones_get_the_help(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let help = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot frobnicate", false)
        .unwrap();
    answer(&h, &hooks, &help).await;
    assert!(replies_to(&h, &help)[0].body.contains("full review"));

    let full = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot full review", false)
        .unwrap();
    answer(&h, &hooks, &full).await;
    let payload: Value = sqlx::query_scalar(
        "select payload from jobs where kind = 'review' order by id desc limit 1",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        (payload["full"].as_bool(), payload["force"].as_bool()),
        (Some(true), Some(true))
    );

    let resolve = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot resolve", false)
        .unwrap();
    answer(&h, &hooks, &resolve).await;
    let open = h
        .gitlab
        .discussions(PROJECT, 1)
        .unwrap()
        .into_iter()
        .filter(|d| {
            find_marker(&d.notes[0].body).is_some_and(|m| matches!(m.kind, MarkerKind::Finding(_)))
        })
        .filter(|d| !d.notes[0].resolved)
        .count();
    assert_eq!(open, 0, "every bot thread resolved");
    assert!(replies_to(&h, &resolve)[0].body.contains("Resolved"));
}

#[sqlx::test]
async fn a_free_question_on_a_diff_line_is_answered_for_that_line_with_a_suggestion(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    h.gitlab.add_file(
        PROJECT,
        &reviewq::sim::gitlab::fake_sha("head"),
        "src/cart.rs",
        "fn total(items: &[Item]) -> u64 {\n    let first = items.first().unwrap();\n",
    );
    let note = h
        .gitlab
        .seed_diff_note(
            PROJECT,
            1,
            "alice",
            "@reviewq-bot can you suggest a safer line?",
            ("src/cart.rs", 2),
        )
        .unwrap();
    answer(&h, &hooks, &note).await;
    let replies = replies_to(&h, &note);
    assert_eq!(replies.len(), 1);
    let body = &replies[0].body;
    assert!(body.contains("src/cart.rs, line 2"), "{body}");
    assert!(
        body.contains(
            "```suggestion:-0+0\n    let first = items.first().unwrap(); // reviewed\n```"
        ),
        "{body}"
    );
}

#[sqlx::test]
async fn questions_over_the_hourly_limit_are_told_when_to_ask_again(pool: PgPool) {
    let (h, hooks) = reviewed(pool).await;
    let target = bot_thread(&h);
    // Ten answered questions of the last hour, as earlier conversations recorded them.
    sqlx::query(
        "insert into conversations (note_id, project, mr_iid, discussion_id, author_id, author_username,
                                    intent, state, job_id, job_attempt, created_at, finished_at)
         select 900000 + n, $1, 1, 'ab', $2, 'alice', 'question', 'answered', 0, 1,
                now() - interval '50 minutes', now()
         from generate_series(1, 10) n",
    )
    .bind(PROJECT)
    .bind(i64::try_from(h.gitlab.note_hook(PROJECT, 1, h.gitlab.seed_note(PROJECT, 1, "alice", "hi", false).unwrap().id, "create").unwrap()["user"]["id"].as_u64().unwrap()).unwrap())
    .execute(&h.pool)
    .await
    .unwrap();
    let question = h
        .gitlab
        .seed_reply(PROJECT, 1, &target.id, "alice", "And why?")
        .unwrap();
    answer(&h, &hooks, &question).await;
    let replies = replies_to(&h, &question);
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0].body.contains("try again in 10 minutes"),
        "{}",
        replies[0].body
    );
    assert_eq!(conversation(&h, &question).await.1, "limited");
    let calls: i64 =
        sqlx::query_scalar("select count(*) from llm_calls where purpose = 'conversation'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(calls, 0, "nothing spent");
}

#[sqlx::test]
async fn a_worker_killed_after_gitlab_stored_the_reply_but_before_recording_it_replies_once(
    pool: PgPool,
) {
    use std::time::Duration;

    use reviewq::sim::{GitLabFault, Route};

    use crate::{
        support::{KEY, TOKEN},
        support::{WorkerProcess, url_of, wait_until},
    };

    let (h, hooks) = reviewed(pool).await;
    let target = bot_thread(&h);
    let question = h
        .gitlab
        .seed_reply(PROJECT, 1, &target.id, "alice", "Is this really a problem?")
        .unwrap();
    // GitLab stores the reply, then holds its answer: the worker dies in that window.
    h.gitlab.fail_next(
        Route::ReplyToDiscussion,
        1,
        GitLabFault::StoreThenHang(Duration::from_secs(60)),
    );
    let event = h
        .gitlab
        .note_hook(PROJECT, 1, question.id, "create")
        .unwrap();
    let (status, body) = hooks.deliver(&event).await;
    assert_eq!(status, 202, "{body}");
    let id = JobId::new(body["job_id"].as_i64().unwrap());
    let env = [
        ("GITLAB_URL", h.gitlab.base_url()),
        ("GITLAB_TOKEN", TOKEN),
        ("GLM_BASE_URL", h.glm.base_url()),
        ("GLM_API_KEY", KEY),
    ];
    let (url, args) = (url_of(&h.pool), ["--lease-secs", "3"]);
    let mut doomed = WorkerProcess::start_with(&url, &args, &env);
    wait_until(
        Duration::from_secs(30),
        "GitLab to store the reply",
        || async { !replies_to(&h, &question).is_empty() },
    )
    .await;
    doomed.signal("KILL").await;
    doomed.wait(Duration::from_secs(5)).await;
    let recorded: (String, Option<i64>) =
        sqlx::query_as("select state, reply_note_id from conversations where note_id = $1")
            .bind(i64::try_from(question.id).unwrap())
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        ("acting".into(), None),
        "killed before recording the reply"
    );

    let mut rescuer = WorkerProcess::start_with(&url, &args, &env);
    wait_until(
        Duration::from_secs(40),
        "the conversation to end elsewhere",
        || async { h.queue.get(id).await.unwrap().state == JobState::Succeeded },
    )
    .await;
    rescuer.signal("TERM").await;
    assert!(rescuer.wait(Duration::from_secs(10)).await.success());
    let replies = replies_to(&h, &question);
    assert_eq!(replies.len(), 1, "answered exactly once");
    assert_eq!(conversation(&h, &question).await.1, "answered");
    let calls: i64 =
        sqlx::query_scalar("select count(*) from llm_calls where purpose = 'conversation'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        calls, 1,
        "the stored answer was posted, not asked for again"
    );
}

#[sqlx::test]
async fn reviewq_review_in_ci_handles_pending_replies_and_commands_before_reviewing(pool: PgPool) {
    use crate::{
        support::{KEY, TOKEN},
        support::{reviewq, url_of},
    };

    let (h, _) = reviewed(pool).await;
    let target = bot_thread(&h);
    let done = h
        .gitlab
        .seed_reply(PROJECT, 1, &target.id, "alice", "fixed")
        .unwrap();
    let help = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "@reviewq-bot help", false)
        .unwrap();
    let chatter = h
        .gitlab
        .seed_note(PROJECT, 1, "alice", "LGTM otherwise", false)
        .unwrap();
    // A fresh database, as a CI job may have on every run: GitLab alone says what is pending.
    sqlx::query("truncate conversations")
        .execute(&h.pool)
        .await
        .unwrap();
    let run = || async {
        let out = reviewq()
            .args(["review", &format!("{PROJECT}:1")])
            .env("DATABASE_URL", url_of(&h.pool))
            .env("GITLAB_URL", h.gitlab.base_url())
            .env("GITLAB_TOKEN", TOKEN)
            .env("GLM_BASE_URL", h.glm.base_url())
            .env("GLM_API_KEY", KEY)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run().await;
    assert!(
        thread(&h, &target.id).notes.iter().all(|n| n.resolved),
        "`fixed` resolved"
    );
    assert_eq!(replies_to(&h, &help).len(), 1, "the command answered");
    assert!(
        replies_to(&h, &chatter).is_empty(),
        "a note for people is left alone"
    );
    assert!(replies_to(&h, &done).is_empty());
    run().await;
    assert_eq!(replies_to(&h, &help).len(), 1, "answered once across runs");
}
