//! Review rounds teams keep switched on: incremental reviews after a push, one living
//! summary note, outdated threads resolved, "won't fix" respected, per-project settings,
//! draft notes published at once.

use reviewq::{
    review::find_marker,
    sim::{
        FileSpec, MrSpec,
        gitlab::{PushSpec, StoredDiscussion, fake_sha},
    },
};
use sqlx::PgPool;

use crate::support::{Harness, PROJECT, mixed_mr, options};

/// `src/cart.rs` as round 1 has it: a hunk that replaces a check with an `unwrap()`.
const CART_HUNK: &str = "@@ -1,5 +1,5 @@ fn total()\n fn total(items: &[Item]) -> u64 {\n-    assert!(!items.is_empty());\n+    let first = items.first().unwrap();\n     let mut sum = 0;\n     for i in items { sum += i.price; }\n     sum\n";

/// A second hunk of `src/cart.rs` that round 2's push adds (new lines 20-23).
const TAX_HUNK: &str = "@@ -20,3 +20,4 @@ fn tax()\n fn tax(x: u64) -> u64 {\n+    // TODO: real tax rates\n     x / 10\n }\n";

/// Round 3's push rewrites the line round 1 commented on (new line 2 of `src/cart.rs`).
const CART_FIXED: &str = "@@ -1,5 +1,5 @@ fn total()\n fn total(items: &[Item]) -> u64 {\n-    assert!(!items.is_empty());\n+    let first = items.first().expect(\"checked by the caller\");\n     let mut sum = 0;\n     for i in items { sum += i.price; }\n     sum\n";
const CART_FIX_DELTA: &str = "@@ -1,4 +1,4 @@ fn total()\n fn total(items: &[Item]) -> u64 {\n-    let first = items.first().unwrap();\n+    let first = items.first().expect(\"checked by the caller\");\n     let mut sum = 0;\n     for i in items { sum += i.price; }\n";

/// The MR's files other than `src/cart.rs`, unchanged by the pushes.
fn other_files() -> Vec<FileSpec> {
    mixed_mr(1).files.into_iter().skip(1).collect()
}

fn push(h: &Harness, head: &str, files: Vec<FileSpec>, delta: Vec<FileSpec>) {
    h.gitlab
        .push_with(
            PROJECT,
            1,
            PushSpec {
                files,
                head_sha: fake_sha(head),
                delta,
                rewrite_history: false,
            },
        )
        .unwrap();
}

/// The MR's files at a head where `src/cart.rs` has `cart` and `extra` files were added.
fn mr_files(cart: &str, extra: &[FileSpec]) -> Vec<FileSpec> {
    let mut files = vec![FileSpec::modified("src/cart.rs", cart)];
    files.extend(other_files());
    files.extend(extra.iter().cloned());
    files
}

async fn round(h: &Harness) {
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(
        h.state(id).await,
        reviewq::queue::JobState::Succeeded,
        "{:?}",
        h.queue.get(id).await.unwrap().last_error
    );
}

/// The bot's summary notes on the MR: (id, body).
fn summaries(h: &Harness) -> Vec<(u64, String)> {
    h.gitlab
        .notes(PROJECT, 1)
        .unwrap()
        .into_iter()
        .filter(|n| {
            find_marker(&n.body).is_some_and(|m| m.kind == reviewq::review::MarkerKind::Summary)
        })
        .map(|n| (n.id, n.body))
        .collect()
}

fn inline_threads(h: &Harness) -> Vec<StoredDiscussion> {
    h.gitlab
        .discussions(PROJECT, 1)
        .unwrap()
        .into_iter()
        .filter(|d| !d.individual_note && d.notes[0].position.is_some())
        .collect()
}

#[sqlx::test]
async fn a_push_is_reviewed_incrementally_and_one_summary_is_edited_through_three_rounds(
    pool: PgPool,
) {
    let h = Harness::start(pool).await;
    round(&h).await;
    let first = summaries(&h);
    assert_eq!(first.len(), 1);
    let threads_1 = inline_threads(&h);
    assert!(!threads_1.is_empty());
    let calls_1 = h.glm.calls().len();

    let unwrap_thread = threads_1
        .iter()
        .find(|d| {
            // By path as well as line: `src/db.rs:2` has a finding too, and chunks post in
            // whichever order they finish.
            let at = d.notes[0].position.as_ref().unwrap();
            at.new_path == "src/cart.rs" && at.new_line == Some(2)
        })
        .expect("round 1 commented on the unwrap() at src/cart.rs:2")
        .clone();

    // Round 2: a push rewrites the line round 1 commented on and adds a hunk; only those
    // hunks are sent to the model, and the thread on the rewritten line is resolved.
    push(
        &h,
        "h2",
        mr_files(&format!("{CART_FIXED}{TAX_HUNK}"), &[]),
        vec![FileSpec::modified(
            "src/cart.rs",
            &format!("{CART_FIX_DELTA}{TAX_HUNK}"),
        )],
    );
    round(&h).await;
    let calls = h.glm.calls();
    let round_2 = &calls[calls_1..];
    assert!(!round_2.is_empty());
    for call in round_2 {
        assert!(
            call.user_prompt.contains("real tax rates"),
            "{}",
            call.user_prompt
        );
        for old in ["SELECT * FROM users", "legacy()", "println!"] {
            assert!(
                !call.user_prompt.contains(old),
                "round 2 re-sent unchanged code ({old}): {}",
                call.user_prompt
            );
        }
    }
    let threads_2 = inline_threads(&h);
    let new: Vec<_> = threads_2
        .iter()
        .filter(|d| !threads_1.iter().any(|o| o.id == d.id))
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "only the new finding is posted: {new:?}");
    assert!(
        new[0].notes[0].body.contains("TODO"),
        "{}",
        new[0].notes[0].body
    );
    assert_eq!(h.gitlab.duplicate_count(PROJECT, 1).unwrap(), 0);
    let after = h.gitlab.discussions(PROJECT, 1).unwrap();
    let resolved = after.iter().find(|d| d.id == unwrap_thread.id).unwrap();
    assert!(
        resolved.notes[0].resolved,
        "the outdated thread is resolved"
    );
    let untouched = threads_1
        .iter()
        .filter(|d| d.id != unwrap_thread.id)
        .all(|d| !after.iter().find(|a| a.id == d.id).unwrap().notes[0].resolved);
    assert!(untouched, "threads whose code did not change stay open");

    // Round 3: a push adds a file; the thread of round 2 stays open.
    let added = FileSpec::added(
        "src/log.rs",
        "@@ -0,0 +1,3 @@\n+pub fn log(s: &str) {\n+    println!(\"{s}\");\n+}\n",
    );
    push(
        &h,
        "h3",
        mr_files(
            &format!("{CART_FIXED}{TAX_HUNK}"),
            std::slice::from_ref(&added),
        ),
        vec![added.clone()],
    );
    let calls_2 = h.glm.calls().len();
    round(&h).await;
    assert!(h.glm.calls().len() > calls_2, "round 3 called the model");
    for call in &h.glm.calls()[calls_2..] {
        assert!(call.user_prompt.contains("src/log.rs"));
        assert!(
            !call.user_prompt.contains("real tax rates"),
            "{}",
            call.user_prompt
        );
    }
    let after = h.gitlab.discussions(PROJECT, 1).unwrap();
    let tax = after.iter().find(|d| d.id == new[0].id).unwrap();
    assert!(
        !tax.notes[0].resolved,
        "a thread whose code did not change stays open"
    );

    // One summary note, edited in place each round.
    let last = summaries(&h);
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        last[0].0, first[0].0,
        "the same note id across three rounds"
    );
    assert_ne!(last[0].1, first[0].1);
    assert!(last[0].1.contains("Review rounds (3)"), "{}", last[0].1);
    assert!(
        last[0].1.contains(&fake_sha("h3")[..8]),
        "the note names the latest head"
    );
    assert!(
        last[0].1.contains("since "),
        "incremental rounds are labelled: {}",
        last[0].1
    );
    assert_eq!(
        h.gitlab.posted_notes(),
        1,
        "no second overview note was ever posted"
    );
}

#[sqlx::test]
async fn a_wont_fix_reply_keeps_a_finding_from_coming_back(pool: PgPool) {
    let h = Harness::start(pool).await;
    round(&h).await;
    let thread = inline_threads(&h)
        .into_iter()
        .find(|d| d.notes[0].body.contains("SQL"))
        .expect("a thread on the SQL finding");
    h.gitlab
        .seed_reply(
            PROJECT,
            1,
            &thread.id,
            "alice",
            "Won't fix: this is a test fixture.",
        )
        .unwrap();
    // A force-push rewrites history: a full review finds the same SQL line again.
    let mut files = mixed_mr(1).files;
    files[0] = FileSpec::modified("src/cart.rs", &format!("{CART_HUNK}{TAX_HUNK}"));
    h.gitlab
        .push_with(
            PROJECT,
            1,
            PushSpec {
                files,
                head_sha: fake_sha("rebased"),
                delta: Vec::new(),
                rewrite_history: true,
            },
        )
        .unwrap();
    let before = inline_threads(&h).len();
    round(&h).await;
    let threads = inline_threads(&h);
    let sql_threads = threads
        .iter()
        .filter(|d| d.notes[0].body.contains("SQL"))
        .count();
    assert_eq!(sql_threads, 1, "the dismissed finding was not posted again");
    assert!(
        threads.len() > before,
        "the full review still posts new findings"
    );
    let states: Vec<(String, String)> = sqlx::query_as(
        "select o.state, o.severity from outbox o join reviews r on r.id = o.review_id
         where r.head_sha = $1 and o.kind = 'inline'",
    )
    .bind(fake_sha("rebased"))
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(states.iter().any(|(s, _)| s == "dismissed"), "{states:?}");
    assert!(
        states.iter().any(|(s, _)| s == "open"),
        "findings still open at the same code are not re-posted: {states:?}"
    );
}

#[sqlx::test]
async fn a_projects_reviewq_toml_sets_language_threshold_ignores_and_limits(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "language = \"French\"\nmin_severity = \"major\"\nignore = [\"src/db.rs\"]\nmax_inline_comments = 1\ninstructions = \"Mention the ticket number.\"\n",
    );
    round(&h).await;
    let calls = h.glm.calls();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.system_prompt.contains("French")));
    assert!(
        calls
            .iter()
            .all(|c| c.system_prompt.contains("Mention the ticket number."))
    );
    assert!(
        calls.iter().all(|c| !c.user_prompt.contains("src/db.rs")),
        "an ignored file is not sent"
    );
    let threads = inline_threads(&h);
    assert_eq!(threads.len(), 1, "max_inline_comments = 1");
    let summary = &summaries(&h)[0].1;
    assert!(
        summary.contains("src/db.rs"),
        "the ignored file is listed: {summary}"
    );
    assert!(summary.contains("not shown (`min_severity`)"), "{summary}");
    assert!(
        summary.contains("over the limit of 1 inline comment"),
        "{summary}"
    );
    let below: i64 =
        sqlx::query_scalar("select count(*) from outbox where state = 'below_threshold'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert!(below > 0, "minor and info findings are kept back");
}

#[sqlx::test]
async fn a_broken_reviewq_toml_is_named_in_the_summary_and_the_defaults_apply(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "min_severity = \"major\"\nmax_inline_comment = 3\n",
    );
    round(&h).await;
    let summary = &summaries(&h)[0].1;
    assert!(summary.contains("Settings:"), "{summary}");
    assert!(
        summary.contains("max_inline_comment"),
        "the bad key is named: {summary}"
    );
    assert!(summary.contains("line 2"), "{summary}");
    assert!(
        inline_threads(&h).len() > 1,
        "the defaults (not min_severity = major from the broken file) applied"
    );
}

#[sqlx::test]
async fn draft_mode_stages_inline_comments_and_publishes_them_at_once(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab
        .add_file(PROJECT, &start, ".reviewq.toml", "publish = \"draft\"\n");
    // The publish is stored, then answered with a 500: the retry must not publish twice.
    h.gitlab.fail_next(
        reviewq::sim::Route::BulkPublishDraftNotes,
        1,
        reviewq::sim::GitLabFault::ServerErrorAfterStore,
    );
    round(&h).await;
    let threads = inline_threads(&h);
    assert!(threads.len() >= 2, "{threads:?}");
    assert_eq!(
        h.gitlab.published_draft_notes() as usize,
        threads.len(),
        "every inline comment went out through the one bulk publish"
    );
    assert_eq!(
        h.gitlab.posted_discussions(),
        0,
        "none was posted one by one"
    );
    assert!(h.gitlab.draft_notes(PROJECT, 1).unwrap().is_empty());
    assert_eq!(h.gitlab.duplicate_count(PROJECT, 1).unwrap(), 0);
}

#[sqlx::test]
async fn drafts_and_excluded_labels_are_skipped_unless_forced(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    let force = reviewq::jobs::review::ReviewOptions {
        force: true,
        ..options()
    };
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "labels = { exclude = [\"no-bot\"] }\n",
    );
    h.gitlab
        .set_labels(PROJECT, 1, vec!["No-Bot".into()])
        .unwrap();
    round(&h).await;
    assert_eq!(
        h.glm.request_count(),
        0,
        "an excluded label skips the review"
    );
    assert!(summaries(&h).is_empty());
    let id = h.enqueue(1, force.clone()).await;
    h.run(&[id]).await;
    let forced = h.glm.request_count();
    assert!(forced > 0, "--force reviews it anyway");

    // A draft MR (skip_drafts is on by default).
    h.gitlab.add_merge_request(mixed_mr(2)).unwrap();
    h.gitlab.set_draft(PROJECT, 2, true).unwrap();
    let id = h.enqueue(2, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.glm.request_count(), forced, "a draft MR is not reviewed");
    assert!(h.gitlab.notes(PROJECT, 2).unwrap().is_empty());
    let id = h.enqueue(2, force).await;
    h.run(&[id]).await;
    assert!(
        h.glm.request_count() > forced,
        "--force reviews a draft anyway"
    );
}

#[sqlx::test]
async fn review_types_in_reviewq_toml_add_the_other_reviews_and_drop_unlisted_ones(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "review_types = [\"general\", \"security\"]\n",
    );
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    // The general review enqueued the security one; run it too.
    let security: Vec<i64> = sqlx::query_scalar(
        "select id from jobs where kind = 'review' and payload->>'review_type' = 'security'",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(security.len(), 1, "one security review was enqueued");
    h.run(&[reviewq::queue::JobId::new(security[0])]).await;
    let types: Vec<String> = sqlx::query_scalar(
        "select review_type from reviews where state = 'done' order by review_type",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(types, ["general", "security"]);
    assert_eq!(summaries(&h).len(), 2, "one living summary per review type");

    // A type the project does not list is not reviewed (unless forced).
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "review_types = [\"security\"]\n",
    );
    let calls = h.glm.request_count();
    let again = h
        .enqueue(
            1,
            reviewq::jobs::review::ReviewOptions {
                review_type: reviewq::review::ReviewType::Performance,
                ..options()
            },
        )
        .await;
    h.run(&[again]).await;
    assert_eq!(
        h.glm.request_count(),
        calls,
        "performance is not in review_types"
    );
}

#[sqlx::test]
async fn a_fresh_database_finds_the_last_reviewed_head_in_the_summary_note(pool: PgPool) {
    let h = Harness::start(pool).await;
    round(&h).await;
    // A CI job on a fresh local cluster: nothing of round 1 is in its database.
    sqlx::query("delete from reviews")
        .execute(&h.pool)
        .await
        .unwrap();
    sqlx::query("delete from mr_summaries")
        .execute(&h.pool)
        .await
        .unwrap();
    push(
        &h,
        "h2",
        mr_files(&format!("{CART_HUNK}{TAX_HUNK}"), &[]),
        vec![FileSpec::modified("src/cart.rs", TAX_HUNK)],
    );
    round(&h).await;
    let (scope, since): (String, Option<String>) =
        sqlx::query_as("select scope, since_sha from reviews")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(scope, "incremental");
    assert_eq!(since.as_deref(), Some(MrSpec::default().head_sha.as_str()));
    assert_eq!(summaries(&h).len(), 1, "the same note was found and edited");
}

/// `1,234,567`, as the summary writes token counts.
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prompt and completion tokens the ledger holds.
async fn ledger_sums(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(sum(prompt_tokens), 0)::int8, coalesce(sum(completion_tokens), 0)::int8 from llm_calls",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn every_round_stays_in_the_summary_when_each_round_runs_on_a_fresh_database(pool: PgPool) {
    let h = Harness::start(pool).await;
    let mut totals = (0, 0);
    let heads = [("h2", TAX_HUNK), ("h3", CART_FIX_DELTA)];
    round(&h).await;
    for (head, delta) in heads {
        let (p, c) = ledger_sums(&h.pool).await;
        totals = (totals.0 + p, totals.1 + c);
        // A CI job on a fresh local cluster: nothing of the earlier rounds is in its database.
        sqlx::query(
            "truncate reviews, review_chunks, outbox, mr_summaries, llm_calls, jobs restart identity cascade",
        )
        .execute(&h.pool)
        .await
        .unwrap();
        let cart = if head == "h2" {
            format!("{CART_HUNK}{TAX_HUNK}")
        } else {
            format!("{CART_FIXED}{TAX_HUNK}")
        };
        push(
            &h,
            head,
            mr_files(&cart, &[]),
            vec![FileSpec::modified("src/cart.rs", delta)],
        );
        round(&h).await;
    }
    let (p, c) = ledger_sums(&h.pool).await;
    totals = (totals.0 + p, totals.1 + c);

    assert_three_rounds_listed(&h, totals);
}

/// Runs the queued work with one `reviewq worker --exit-when-idle` process.
async fn worker_process_round(h: &Harness) {
    let id = h.enqueue(1, options()).await;
    let out = crate::support::reviewq()
        .args(["worker", "--exit-when-idle", "--poll-ms", "50"])
        .env("DATABASE_URL", crate::support::url_of(&h.pool))
        .env("GITLAB_URL", h.gitlab.base_url())
        .env("GITLAB_TOKEN", crate::support::TOKEN)
        .env("GLM_BASE_URL", h.glm.base_url())
        .env("GLM_API_KEY", crate::support::KEY)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .expect("the worker exits when idle")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        crate::support::output_text(&out)
    );
    assert_eq!(h.state(id).await, reviewq::queue::JobState::Succeeded);
}

#[sqlx::test]
async fn every_round_stays_in_the_summary_when_each_round_is_a_separate_worker_process(
    pool: PgPool,
) {
    let h = Harness::start(pool).await;
    worker_process_round(&h).await;
    push(
        &h,
        "h2",
        mr_files(&format!("{CART_HUNK}{TAX_HUNK}"), &[]),
        vec![FileSpec::modified("src/cart.rs", TAX_HUNK)],
    );
    worker_process_round(&h).await;
    push(
        &h,
        "h3",
        mr_files(&format!("{CART_FIXED}{TAX_HUNK}"), &[]),
        vec![FileSpec::modified("src/cart.rs", CART_FIX_DELTA)],
    );
    worker_process_round(&h).await;
    let (prompt, completion) = ledger_sums(&h.pool).await;

    assert_three_rounds_listed(&h, (prompt, completion));
}

/// The one summary note lists rounds 3, 2 (incremental) and 1 (full), with `totals` (prompt,
/// completion) over all three.
fn assert_three_rounds_listed(h: &Harness, totals: (i64, i64)) {
    let notes = summaries(h);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let body = &notes[0].1;
    assert!(body.contains("Review rounds (3)"), "{body}");
    assert!(body.contains("(round 3: changes since"), "{body}");
    let rows: Vec<&str> = body.lines().filter(|l| l.contains(" UTC | `")).collect();
    assert_eq!(rows.len(), 3, "{body}");
    assert!(
        rows[0].starts_with("| 3 | ") && rows[0].contains("since "),
        "{body}"
    );
    assert!(
        rows[1].starts_with("| 2 | ") && rows[1].contains("since "),
        "{body}"
    );
    assert!(
        rows[2].starts_with("| 1 | ") && rows[2].contains(" | full | "),
        "round 1, the full review, is still listed: {body}"
    );
    assert!(
        body.contains(&format!(
            "**Total:** {} prompt + {} completion tokens",
            grouped(totals.0),
            grouped(totals.1)
        )),
        "the totals include every round ({totals:?}): {body}"
    );
}
