//! Describing merge requests (the author's text never changes, a concurrent edit is kept, the
//! ledger has the calls) and the Code Quality report (GitLab's fields, one entry per finding,
//! stable fingerprints across pushes, no dismissed finding).

use std::{collections::HashSet, time::Duration};

use reviewq::{
    jobs::describe::DescribeArgs,
    mr_ref::MrRef,
    queue::{JobId, JobState, Queue},
    review::{
        HeadSha,
        describe::{END_MARKER, START_MARKER},
    },
    sim::{
        FileSpec, MrSpec,
        gitlab::{PushSpec, fake_sha},
    },
};
use sqlx::PgPool;

use crate::support::{Harness, PROJECT, mixed_mr, options};

fn mr() -> MrRef {
    format!("{PROJECT}:1").parse().unwrap()
}

async fn enqueue_describe(h: &Harness) -> JobId {
    Queue::enqueue(&h.pool, &DescribeArgs::new(mr()).job(0))
        .await
        .unwrap()
        .id()
}

/// Runs a review round and the description job it enqueued.
async fn round(h: &Harness) {
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let describes: Vec<i64> = sqlx::query_scalar("select id from jobs where kind = 'describe'")
        .fetch_all(&h.pool)
        .await
        .unwrap();
    assert!(!describes.is_empty(), "the round enqueued a description");
    let ids: Vec<JobId> = describes.into_iter().map(JobId::new).collect();
    h.run(&ids).await;
    for id in ids {
        assert_eq!(
            h.state(id).await,
            JobState::Succeeded,
            "{:?}",
            h.queue.get(id).await.unwrap().last_error
        );
    }
}

fn push(h: &Harness, head: &str) {
    let mut files = mixed_mr(1).files;
    files.push(FileSpec::added(
        &format!("docs/{head}.md"),
        "@@ -0,0 +1 @@\n+notes\n",
    ));
    h.gitlab
        .push_with(
            PROJECT,
            1,
            PushSpec {
                files,
                head_sha: fake_sha(head),
                delta: Vec::new(),
                rewrite_history: true,
            },
        )
        .unwrap();
}

#[sqlx::test]
async fn the_authors_text_around_the_block_survives_three_rounds_byte_for_byte(pool: PgPool) {
    let h = Harness::start(pool).await;
    // Markers the author placed ask for a description without any setting; CRLF, trailing
    // spaces, HTML comments and a quick action inside code are the author's and stay.
    let before = "Reworks checkout.  \r\n\r\n<!-- my note -->\n```\n/close\n```\n";
    let after = "\n\nTODO: *more* tests\t\n";
    h.gitlab
        .edit_description(
            PROJECT,
            1,
            &format!("{before}{START_MARKER}{END_MARKER}{after}"),
        )
        .unwrap();
    let mut blocks = Vec::new();
    for (n, head) in ["", "h2", "h3"].into_iter().enumerate() {
        if !head.is_empty() {
            push(&h, head);
        }
        round(&h).await;
        let description = h.gitlab.description(PROJECT, 1).unwrap();
        assert!(
            description.starts_with(before),
            "round {n}: {description:?}"
        );
        assert!(description.ends_with(after), "round {n}: {description:?}");
        let start = description.find(START_MARKER).unwrap();
        let end = description.find(END_MARKER).unwrap() + END_MARKER.len();
        assert_eq!(start, before.len());
        assert_eq!(end, description.len() - after.len());
        assert_eq!(description.matches(START_MARKER).count(), 1);
        blocks.push(description[start..end].to_owned());
    }
    assert!(blocks[0].contains("`src/cart.rs` (modified): 1 lines added, 1 removed."));
    assert!(blocks[2].contains("docs/h3.md") && !blocks[2].contains("docs/h2.md"));
    let (edits, quick_actions) = h.gitlab.description_edits(PROJECT, 1).unwrap();
    assert_eq!(edits, 3, "one edit per round");
    assert!(quick_actions.is_empty(), "{quick_actions:?}");
    // Every describe call is a ledger row of its own purpose, with the provider's tokens.
    let (calls, tokens): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(sum(total_tokens), 0)::int8 from llm_calls
         where purpose = 'describe' and status = 'ok' and review_id is null",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(calls, 3);
    assert!(tokens > 0);
    let costs: i64 =
        sqlx::query_scalar("select count(*) from llm_call_costs where purpose = 'describe'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(costs, 3);
}

#[sqlx::test]
async fn an_edit_by_the_author_between_the_read_and_the_write_is_kept(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.gitlab
        .edit_description(PROJECT, 1, "First draft.")
        .unwrap();
    h.glm.set_latency(Duration::from_millis(800));
    let id = enqueue_describe(&h).await;
    // The author saves while the model writes the description.
    let edit = async {
        crate::support::wait_until(Duration::from_secs(20), "the describe call", || async {
            h.glm.in_flight() > 0
        })
        .await;
        h.gitlab
            .edit_description(PROJECT, 1, "Second draft, by the author.")
            .unwrap();
    };
    let ids = [id];
    tokio::join!(h.run(&ids), edit);
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let description = h.gitlab.description(PROJECT, 1).unwrap();
    assert!(
        description.starts_with("Second draft, by the author.\n\n"),
        "{description:?}"
    );
    assert!(description.ends_with(END_MARKER));
    assert_eq!(h.gitlab.description_edits(PROJECT, 1).unwrap().0, 1);
    // The write waited: the plan's read, the read that saw the edit, the one that saw none.
    assert!(h.gitlab.request_count(reviewq::sim::Route::MergeRequest) >= 3);
}

#[sqlx::test]
async fn without_markers_or_the_setting_a_round_leaves_the_description_alone(pool: PgPool) {
    let h = Harness::start(pool).await;
    let id = h.enqueue(1, options()).await;
    h.run(&[id]).await;
    let describes: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'describe'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(describes, 0);
    assert_eq!(
        h.gitlab.description(PROJECT, 1).unwrap(),
        "Reworks checkout."
    );
    assert_eq!(h.gitlab.description_edits(PROJECT, 1).unwrap().0, 0);
}

/// Runs one review round with `force` (a full review of the current head).
async fn full_round(h: &Harness) -> HeadSha {
    let mut o = options();
    o.full = true;
    let id = h.enqueue(1, o).await;
    h.run(&[id]).await;
    assert_eq!(h.state(id).await, JobState::Succeeded);
    let head: String = sqlx::query_scalar("select head_sha from reviews where job_id = $1")
        .bind(id.get())
        .fetch_one(&h.pool)
        .await
        .unwrap();
    HeadSha::parse(&head).unwrap()
}

async fn report(h: &Harness, head: &HeadSha) -> Vec<serde_json::Value> {
    let issues = reviewq::codequality_report::issues(&h.pool, &mr(), head)
        .await
        .unwrap()
        .expect("the head was reviewed");
    let text = reviewq::review::codequality::to_json(&issues);
    assert!(!text.starts_with('\u{feff}'));
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn check_required_fields(entries: &[serde_json::Value]) {
    for e in entries {
        for field in ["description", "check_name", "fingerprint"] {
            assert!(e[field].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        }
        assert!(
            ["info", "minor", "major", "critical", "blocker"]
                .contains(&e["severity"].as_str().unwrap()),
            "{e}"
        );
        assert!(
            e["location"]["path"]
                .as_str()
                .is_some_and(|p| !p.starts_with('/'))
        );
        assert!(
            e["location"]["lines"]["begin"]
                .as_u64()
                .is_some_and(|l| l >= 1)
        );
    }
    let fingerprints: HashSet<&str> = entries
        .iter()
        .map(|e| e["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fingerprints.len(), entries.len(), "one entry per finding");
}

#[sqlx::test]
async fn the_code_quality_report_keeps_fingerprints_across_pushes_and_leaves_dismissed_findings_out(
    pool: PgPool,
) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab
        .add_file(PROJECT, &start, ".reviewq.toml", "output = \"both\"\n");
    let head_1 = full_round(&h).await;
    let first = report(&h, &head_1).await;
    check_required_fields(&first);
    assert!(first.len() >= 4, "{first:?}");
    let sql = first
        .iter()
        .find(|e| e["description"].as_str().unwrap().contains("SQL"))
        .expect("the SQL finding is reported")["fingerprint"]
        .clone();

    // Someone answers "won't fix" to the SQL thread, then a push keeps the code.
    let thread = h
        .gitlab
        .discussions(PROJECT, 1)
        .unwrap()
        .into_iter()
        .find(|d| d.notes[0].position.is_some() && d.notes[0].body.contains("SQL"))
        .expect("output = both posts inline threads too");
    h.gitlab
        .seed_reply(PROJECT, 1, &thread.id, "alice", "Won't fix: test fixture.")
        .unwrap();
    push(&h, "h2");
    let head_2 = full_round(&h).await;
    assert_ne!(head_1, head_2);
    let second = report(&h, &head_2).await;
    check_required_fields(&second);
    let fps = |entries: &[serde_json::Value]| -> HashSet<String> {
        entries
            .iter()
            .map(|e| e["fingerprint"].as_str().unwrap().to_owned())
            .collect()
    };
    let (fp_1, fp_2) = (fps(&first), fps(&second));
    assert!(
        !fp_2.contains(sql.as_str().unwrap()),
        "dismissed: {second:?}"
    );
    let mut expected = fp_1.clone();
    expected.remove(sql.as_str().unwrap());
    assert_eq!(fp_2, expected, "the same findings keep their fingerprints");
}

#[sqlx::test]
async fn with_code_quality_output_only_nothing_is_posted_inline_but_the_summary_is(pool: PgPool) {
    let h = Harness::start(pool).await;
    let start = MrSpec::default().start_sha;
    h.gitlab.add_file(
        PROJECT,
        &start,
        ".reviewq.toml",
        "output = \"codequality\"\n",
    );
    let head = full_round(&h).await;
    let discussions = h.gitlab.discussions(PROJECT, 1).unwrap();
    assert!(
        discussions.iter().all(|d| d.notes[0].position.is_none()),
        "no inline thread"
    );
    assert_eq!(h.gitlab.notes(PROJECT, 1).unwrap().len(), 1, "one summary");
    let entries = report(&h, &head).await;
    check_required_fields(&entries);
    assert!(entries.len() >= 4);
}

#[sqlx::test]
async fn a_killed_worker_neither_loses_the_answer_nor_writes_the_description_twice(pool: PgPool) {
    use reviewq::sim::{GitLabFault, Route};

    use crate::support::{WorkerProcess, url_of, wait_until};

    let h = Harness::start(pool).await;
    h.gitlab.edit_description(PROJECT, 1, "Mine.").unwrap();
    // The first PUT never arrives (the worker dies while it waits); the second is stored,
    // then its answer is held back until the worker dies before recording it.
    h.gitlab.fail_next(
        Route::UpdateMergeRequest,
        1,
        GitLabFault::Delay(Duration::from_secs(120)),
    );
    h.gitlab.fail_next(
        Route::UpdateMergeRequest,
        1,
        GitLabFault::StoreThenHang(Duration::from_secs(120)),
    );
    let id = enqueue_describe(&h).await;
    let url = url_of(&h.pool);
    let env = [
        ("GITLAB_URL", h.gitlab.base_url()),
        ("GITLAB_TOKEN", "glpat-pipeline-test"),
        ("GLM_BASE_URL", h.glm.base_url()),
        ("GLM_API_KEY", "glm-pipeline-test"),
        ("GITLAB_TIMEOUT", "300"),
    ];
    let args = ["--lease-secs", "3"];
    let attempted = || async {
        sqlx::query_scalar::<_, bool>(
            "select attempted_at is not null from mr_descriptions where job_id = $1",
        )
        .bind(id.get())
        .fetch_optional(&h.pool)
        .await
        .unwrap()
        .unwrap_or(false)
    };

    let mut first = WorkerProcess::start_with(&url, &args, &env);
    wait_until(Duration::from_secs(30), "the first PUT", attempted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("KILL").await;
    first.wait(Duration::from_secs(10)).await;
    assert_eq!(h.gitlab.description(PROJECT, 1).unwrap(), "Mine.");
    let answered: i64 =
        sqlx::query_scalar("select count(*) from mr_description_parts where answer is not null")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(answered, 1, "the answer is stored before any PUT");

    let mut second = WorkerProcess::start_with(&url, &args, &env);
    wait_until(Duration::from_secs(30), "the stored PUT", || async {
        h.gitlab.description_edits(PROJECT, 1).unwrap().0 == 1
    })
    .await;
    second.signal("KILL").await;
    second.wait(Duration::from_secs(10)).await;

    let mut third = WorkerProcess::start_with(&url, &args, &env);
    wait_until(
        Duration::from_secs(30),
        "the description job to succeed",
        || async { h.queue.get(id).await.unwrap().state == JobState::Succeeded },
    )
    .await;
    third.signal("TERM").await;
    third.wait(Duration::from_secs(30)).await;

    let description = h.gitlab.description(PROJECT, 1).unwrap();
    assert!(description.starts_with("Mine.\n\n") && description.ends_with(END_MARKER));
    assert_eq!(
        h.gitlab.description_edits(PROJECT, 1).unwrap().0,
        1,
        "written once"
    );
    // One model call, its usage in the ledger: the answer survived both kills.
    let calls: Vec<(String, Option<i64>)> =
        sqlx::query_as("select status, total_tokens from llm_calls where purpose = 'describe'")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "ok");
    assert!(calls[0].1.is_some_and(|t| t > 0));
    assert_eq!(h.glm.request_count(), 1);
}
