//! Findings past the per-answer threshold: a chunk whose answer holds too many is split and
//! asked again, and every finding reaches GitLab (inline up to `max_inline_comments`, the
//! rest in the summary), with every call in the ledger.

use reviewq::{
    review::{MarkerKind, find_marker},
    sim::{FileSpec, GlmBehaviour, MrSpec},
};
use sqlx::PgPool;

use crate::support::{Harness, PROJECT, options};

/// An added file whose 15 lines each make the fake model report one finding: five
/// `unwrap()` calls (major) and ten TODOs (info).
fn noisy_file(n: usize) -> FileSpec {
    let mut diff = String::from("@@ -0,0 +1,15 @@\n");
    for i in 0..15 {
        if i % 3 == 0 {
            diff.push_str(&format!("+    let v{n}_{i} = input{n}_{i}.unwrap();\n"));
        } else {
            diff.push_str(&format!("+    // TODO: step {n}.{i}\n"));
        }
    }
    FileSpec::added(&format!("src/noisy_{n}.rs"), &diff)
}

#[sqlx::test]
async fn sixty_findings_in_one_answer_all_reach_gitlab_through_a_split_and_every_call_is_in_the_ledger(
    pool: PgPool,
) {
    let h = Harness::start(pool).await;
    // A model that ignores the prompt's "at most 10": it reports everything it sees.
    h.glm.set_behaviour(GlmBehaviour {
        max_findings: 1_000,
        ..GlmBehaviour::default()
    });
    h.gitlab
        .add_merge_request(MrSpec {
            project_path: PROJECT.into(),
            project_id: 77,
            iid: 2,
            title: "Noisy".into(),
            description: String::new(),
            files: (1..=4).map(noisy_file).collect(),
            ..MrSpec::default()
        })
        .unwrap();
    let id = h.enqueue(2, options()).await;
    h.run(&[id]).await;
    assert_eq!(
        h.state(id).await,
        reviewq::queue::JobState::Succeeded,
        "{:?}",
        h.queue.get(id).await.unwrap().last_error
    );

    // The one chunk (60 findings) split in two (30 each, still too many), then in four.
    let calls = h.glm.calls();
    assert_eq!(calls.len(), 7, "1 + 2 + 4 calls");
    let (rows, _) = h.ledger_tokens().await;
    assert_eq!(rows, 7, "a ledger row per call, the split's calls included");
    let first_answer: Vec<i32> = sqlx::query_scalar(
        "select jsonb_array_length(findings)::int4 from review_chunks
         where superseded and findings is not null order by chunk_index",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        first_answer,
        [60, 30, 30],
        "the replaced answers are kept for the audit"
    );

    let inline = h
        .gitlab
        .discussions(PROJECT, 2)
        .unwrap()
        .into_iter()
        .filter(|d| d.notes[0].position.is_some())
        .count();
    assert_eq!(inline, 30, "max_inline_comments");
    let notes = h.gitlab.notes(PROJECT, 2).unwrap();
    let summary = notes
        .iter()
        .find(|n| find_marker(&n.body).is_some_and(|m| m.kind == MarkerKind::Summary))
        .map(|n| n.body.clone())
        .expect("a summary note");
    let listed = summary
        .lines()
        .filter(|l| l.contains("over the limit of 30 inline comments per round"))
        .count();
    assert_eq!(listed, 30, "the other 30 are listed: {summary}");
    assert!(
        summary.contains("(30 in threads, 30 listed below)"),
        "{summary}"
    );
    assert!(
        !summary.contains("could not be read") && !summary.contains("were not used"),
        "nothing was cut: {summary}"
    );
    // Most severe first: the 20 `unwrap()` findings have threads; only TODOs are listed.
    assert!(
        summary
            .lines()
            .filter(|l| l.contains("over the limit"))
            .all(|l| l.contains("Info")),
        "{summary}"
    );
}
