//! The review pipeline end to end: real Postgres, the worker driven step by step, and the
//! simulated GitLab and GLM over real HTTP speaking the exact wire formats.

use std::time::{Duration, Instant};

use reviewq::{
    jobs::review::ReviewOptions,
    queue::{JobId, JobState},
    sim::{GitLabFault, GlmFault, Route},
    spend::{self, SpendPolicy},
};
use sqlx::PgPool;

use crate::support::{Harness, PROJECT, mixed_mr, options};

#[sqlx::test]
async fn every_finding_becomes_one_inline_diffnote_and_one_summary_lists_the_rest(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);

    let discussions = h.gitlab.discussions(PROJECT, 1).unwrap();
    let inline: Vec<_> = discussions
        .iter()
        .filter_map(|d| d.notes.first())
        .filter(|n| n.note_type.as_deref() == Some("DiffNote"))
        .collect();
    let rows = h.outbox_states(id).await;
    let posted_inline = rows
        .iter()
        .filter(|(k, s)| k == "inline" && s == "posted")
        .count();
    assert!(posted_inline >= 4, "the fake model's findings: {rows:?}");
    assert_eq!(inline.len(), posted_inline, "each finding is one DiffNote");
    assert!(
        rows.iter().all(|(_, s)| s == "posted"),
        "nothing refused: {rows:?}"
    );

    // Positions follow GitLab's rules (the fake refuses anything else with a 400).
    let at = |path: &'static str| {
        inline
            .iter()
            .filter(move |n| n.position.as_ref().unwrap().new_path == path)
    };
    let unwrap = at("src/cart.rs")
        .find(|n| n.body.contains("unwrap"))
        .expect("the unwrap finding on an added line");
    let pos = unwrap.position.as_ref().unwrap();
    assert_eq!(
        (pos.old_line, pos.new_line),
        (None, Some(2)),
        "added line: new_line only"
    );
    let removed = at("src/cart.rs")
        .find(|n| n.position.as_ref().unwrap().new_line.is_none())
        .expect("the finding on the removed assert");
    assert_eq!(
        removed.position.as_ref().unwrap().old_line,
        Some(2),
        "removed line: old_line only"
    );
    assert!(
        at("src/db.rs").any(|n| n.body.contains("SQL")),
        "new file finding"
    );
    let renamed = at("src/helpers.rs").next().expect("renamed file finding");
    assert_eq!(renamed.position.as_ref().unwrap().old_path, "src/util.rs");

    // Exactly one summary note, which lists the finding that could not be anchored.
    let notes: Vec<_> = h
        .gitlab
        .notes(PROJECT, 1)
        .unwrap()
        .into_iter()
        .filter(|n| n.note_type.is_none() && !n.system)
        .collect();
    assert_eq!(notes.len(), 1, "one summary note");
    assert!(
        notes[0].body.contains("docs/not-in-this-diff.md"),
        "{}",
        notes[0].body
    );
    assert!(
        notes[0].body.contains("src/legacy.rs"),
        "the deleted file is listed as skipped"
    );
    assert_eq!(h.gitlab.total_duplicate_count(), 0);
    for n in inline.iter().copied().chain(notes.iter()) {
        assert!(
            n.body.contains("<!-- reviewq:"),
            "hidden marker on every body"
        );
        assert!(
            !n.body.lines().any(|l| l.trim_start().starts_with('/')),
            "no quick actions"
        );
    }

    // The ledger matches what the provider billed, call for call.
    let (calls, tokens) = h.ledger_tokens().await;
    assert_eq!(calls as u64, h.glm.request_count());
    assert_eq!(tokens as u64, h.glm.billed_total_tokens());
}

#[sqlx::test]
async fn an_already_reviewed_head_is_skipped_and_force_reviews_it_without_duplicates(pool: PgPool) {
    let h = Harness::start(pool).await;
    let first = h.enqueue(1, options()).await;
    h.run(&[first]).await;
    let posted = h.gitlab.posted_discussions() + h.gitlab.posted_notes();
    let llm_calls = h.glm.request_count();

    let again = h.enqueue(1, options()).await;
    h.run(&[again]).await;
    assert_eq!(h.state(again).await, JobState::Succeeded);
    assert_eq!(
        h.glm.request_count(),
        llm_calls,
        "no LLM call for a reviewed head"
    );

    let forced = h
        .enqueue(
            1,
            ReviewOptions {
                force: true,
                ..options()
            },
        )
        .await;
    h.run(&[forced]).await;
    assert_eq!(h.state(forced).await, JobState::Succeeded);
    assert!(h.glm.request_count() > llm_calls, "--force reviews again");
    assert_eq!(
        h.gitlab.posted_discussions() + h.gitlab.posted_notes(),
        posted,
        "the same findings at the same head are found by marker, not posted again"
    );
    assert_eq!(h.gitlab.total_duplicate_count(), 0);
}

#[sqlx::test]
async fn a_comment_stored_by_gitlab_but_not_recorded_is_never_posted_twice(pool: PgPool) {
    let h = Harness::start(pool).await;
    // GitLab stores the first inline comment and the summary, then answers 500: the
    // worker cannot know they exist until it looks for their markers.
    h.gitlab.fail_next(
        Route::CreateDiscussion,
        1,
        GitLabFault::ServerErrorAfterStore,
    );
    h.gitlab
        .fail_next(Route::CreateNote, 1, GitLabFault::ServerErrorAfterStore);
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    assert_eq!(h.gitlab.total_duplicate_count(), 0);
    let rows = h.outbox_states(id).await;
    assert!(rows.iter().all(|(_, s)| s == "posted"), "{rows:?}");
    let markers = h.gitlab.marker_counts(PROJECT, 1).unwrap();
    assert_eq!(markers.len(), rows.len(), "every comment exactly once");
    assert!(markers.values().all(|&n| n == 1));
}

#[sqlx::test]
async fn a_rate_limited_call_is_retried_and_every_request_is_in_the_ledger(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.glm.push_faults([GlmFault::RateLimited]);
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let codes: Vec<(String, Option<String>)> =
        sqlx::query_as("select status, error_code from llm_calls order by id")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(codes[0], ("error".to_owned(), Some("1302".to_owned())));
    assert!(codes[1..].iter().all(|(s, _)| s == "ok"));
    let (calls, tokens) = h.ledger_tokens().await;
    assert_eq!(calls as u64, h.glm.request_count());
    assert_eq!(tokens as u64, h.glm.billed_total_tokens());
}

/// Drains the worker until `done` holds, waiting out retry and wait times.
async fn run_until(h: &Harness, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        h.worker.drain().await.unwrap();
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn an_account_in_arrears_pauses_llm_work_fleet_wide_and_a_successful_probe_resumes_it(
    pool: PgPool,
) {
    let spend = SpendPolicy {
        probe_interval: Duration::from_secs(1),
        ..SpendPolicy::default()
    };
    let h = Harness::start_with(pool, spend).await;
    for iid in 2..=4 {
        h.gitlab.add_merge_request(mixed_mr(iid)).unwrap();
    }
    h.glm.set_fault_for_every_request(Some(GlmFault::Arrears));
    let mut ids = Vec::new();
    for iid in 1..=4 {
        ids.push(h.enqueue(iid, options()).await);
    }
    run_until(&h, "the pause", async || {
        spend::current_pause(&h.pool).await.unwrap().is_some()
    })
    .await;
    // Let every chunk reach the pause; then watch the traffic for two probe intervals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.worker.drain().await.unwrap();
    let before = h.glm.request_count();
    assert!(
        before <= 3,
        "only the calls already in flight (at most the fleet limit of 3) met the 1113: {before}"
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        h.worker.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = h.glm.request_count() - before;
    assert!(
        (1..=3).contains(&probes),
        "one probe per interval, not a retry storm: {probes} requests in 2.5 s"
    );
    for &id in &ids {
        let job = h.queue.get(id).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "no job failed");
        let waiting = job.waiting.expect("every review shows why it waits").0;
        assert!(
            waiting.reason.contains("paused fleet-wide")
                && waiting.reason.contains("out of balance"),
            "{}",
            waiting.reason
        );
    }
    let blocked = h.queue.backlog().await.unwrap().blocked;
    assert!(blocked.is_some(), "the only work left is paused");

    // The account is topped up: the next probe succeeds and everything resumes by itself.
    h.glm.set_fault_for_every_request(None);
    h.run(&ids).await;
    for &id in &ids {
        assert_eq!(h.state(id).await, JobState::Succeeded);
    }
    assert!(spend::current_pause(&h.pool).await.unwrap().is_none());
    let refused: i64 = sqlx::query_scalar(
        "select count(*) from llm_calls where status = 'error' and error_code = '1113'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        refused as u64,
        before + probes,
        "every refused request is in the ledger"
    );
}

#[sqlx::test]
async fn a_spent_fleet_budget_makes_reviews_wait_without_calling_the_model(pool: PgPool) {
    let spend = SpendPolicy {
        daily_tokens: Some(1),
        ..SpendPolicy::default()
    };
    let h = Harness::start_with(pool, spend).await;
    h.gitlab.add_merge_request(mixed_mr(2)).unwrap();
    let first = h.enqueue(1, options()).await;
    h.run(&[first]).await;
    assert_eq!(h.state(first).await, JobState::Succeeded, "under budget");
    let calls = h.glm.request_count();

    let second = h.enqueue(2, options()).await;
    run_until(&h, "the second review to wait", async || {
        h.queue.get(second).await.unwrap().waiting.is_some()
    })
    .await;
    assert_eq!(h.glm.request_count(), calls, "no call over the budget");
    let job = h.queue.get(second).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    let reason = job.waiting.unwrap().0.reason;
    assert!(reason.contains("REVIEWQ_DAILY_TOKEN_BUDGET=1"), "{reason}");
}

#[sqlx::test]
async fn a_project_budget_holds_its_reviews_until_an_operator_raises_it(pool: PgPool) {
    let h = Harness::start(pool).await;
    spend::set_project_budget(&h.pool, PROJECT, Some(0))
        .await
        .unwrap();
    let id = h.enqueue(1, options()).await;
    run_until(&h, "the review to wait", async || {
        h.queue.get(id).await.unwrap().waiting.is_some()
    })
    .await;
    assert_eq!(h.glm.request_count(), 0);
    let reason = h.queue.get(id).await.unwrap().waiting.unwrap().0.reason;
    assert!(reason.contains(&format!("project {PROJECT}")), "{reason}");

    let woken = spend::set_project_budget(&h.pool, PROJECT, Some(1_000_000))
        .await
        .unwrap();
    assert!(woken >= 1, "raising the budget wakes the waiting chunks");
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let rows = spend::budgets(&h.pool, &SpendPolicy::default())
        .await
        .unwrap();
    let project = rows.iter().find(|r| r.project == PROJECT).unwrap();
    assert!(project.used_today > 0, "today's use is counted: {rows:?}");
}

#[sqlx::test]
async fn an_answer_that_is_not_json_is_retried_once_then_reported(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.glm.set_fault_for_every_request(Some(GlmFault::NotJson));
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    let chunks: i64 = sqlx::query_scalar("select count(*) from review_chunks")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(
        h.glm.request_count() as i64,
        2 * chunks,
        "each chunk asked exactly twice"
    );
    let notes = h.gitlab.notes(PROJECT, 1).unwrap();
    let summary = &notes
        .iter()
        .find(|n| n.body.contains("not the JSON object"))
        .expect("reported in the summary")
        .body;
    let paths: Vec<String> = sqlx::query_scalar(
        "select distinct f->>'new_path' from review_chunks c, json_array_elements(c.chunk->'files') f",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(!paths.is_empty());
    assert!(
        summary.contains(&format!("Parts that could not be reviewed ({chunks})")),
        "{summary}"
    );
    for path in &paths {
        assert!(
            summary.contains(path.as_str()),
            "{path} is named: {summary}"
        );
    }
    assert!(
        summary.contains(&format!("| full | {} | {chunks} |", paths.len())),
        "the round's row counts its files and chunks: {summary}"
    );
    let (calls, tokens) = h.ledger_tokens().await;
    assert_eq!(calls as u64, h.glm.request_count());
    assert_eq!(
        tokens as u64,
        h.glm.billed_total_tokens(),
        "unusable answers are billed too"
    );
}

#[sqlx::test]
async fn a_chunk_too_big_for_the_model_is_split_and_both_halves_reviewed(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.glm.push_faults([GlmFault::PromptTooLong]);
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let (superseded, live): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where superseded), count(*) filter (where not superseded) from review_chunks",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!((superseded, live), (1, 2));
    let rows = h.outbox_states(id).await;
    assert!(
        rows.iter().filter(|(k, _)| k == "inline").count() >= 4,
        "{rows:?}"
    );
    assert_eq!(h.gitlab.total_duplicate_count(), 0);
}

#[sqlx::test]
async fn a_dry_run_posts_nothing_and_keeps_the_comments(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h
        .enqueue(
            1,
            ReviewOptions {
                dry_run: true,
                ..options()
            },
        )
        .await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    assert_eq!(h.gitlab.posted_discussions() + h.gitlab.posted_notes(), 0);
    let rows = h.outbox_states(id).await;
    assert!(
        !rows.is_empty() && rows.iter().all(|(_, s)| s == "dry_run"),
        "{rows:?}"
    );
}

#[sqlx::test]
async fn a_push_during_the_review_finishes_the_old_head_and_queues_the_new_one(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h.enqueue(1, options()).await;
    // Plan against the first head, then the author pushes.
    h.worker.process_next().await.unwrap();
    h.gitlab
        .push(
            PROJECT,
            1,
            mixed_mr(1).files,
            &reviewq::sim::gitlab::fake_sha("second-push"),
        )
        .unwrap();
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let next: Vec<i64> =
        sqlx::query_scalar("select id from jobs where kind = 'review' and id <> $1")
            .bind(id.get())
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(next.len(), 1, "a review of the new head was queued");
    h.run(&[JobId::new(next[0])]).await;
    let heads: Vec<String> = sqlx::query_scalar("select head_sha from reviews order by id")
        .fetch_all(&h.pool)
        .await
        .unwrap();
    let new_head = reviewq::sim::gitlab::fake_sha("second-push");
    assert_eq!(heads.len(), 2);
    assert_ne!(
        heads[0], new_head,
        "the first review finished against the head it read"
    );
    assert_eq!(heads[1], new_head);
    assert_eq!(h.gitlab.total_duplicate_count(), 0);
}
