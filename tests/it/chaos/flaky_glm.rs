//! A flaky GLM: rate limits, errors, slowness and bad answers.

use std::time::{Duration, Instant};

use reviewq::sim::{GlmBehaviour, GlmFault};
use sqlx::PgPool;

use crate::{support::PROJECT, support::url_of};

use super::fleet::Fleet;
use super::invariants::{Expect, assert_invariants};
use super::{DRAIN_TIMEOUT, Sims, enqueue, tag};

#[sqlx::test]
async fn glm_rate_limits_errors_slowness_and_bad_answers_are_retried_or_reported_and_all_billed(
    pool: PgPool,
) {
    let began = Instant::now();
    let sims = Sims::start(GlmBehaviour::with_latency(Duration::from_millis(200))).await;
    let iids: Vec<u64> = (1..=6).collect();
    sims.add(iids.iter().copied());
    // MR 5's answers are never JSON: its only chunk fails after one retry, and with no
    // chunk reviewed the review fails, saying why. Fatal by nature: asking again would
    // cost tokens for the same prose.
    sims.glm.add_prompt_fault(&tag(5), GlmFault::NotJson, None);
    // Everyone else meets each failure GLM produces once or twice, in arrival order.
    sims.glm.push_faults([
        GlmFault::RateLimited,
        GlmFault::ServerError,
        GlmFault::Slow(Duration::from_secs(4)),
        GlmFault::Truncated,
        GlmFault::NotJson,
        GlmFault::RateLimited,
        GlmFault::ServerError,
        GlmFault::Slow(Duration::from_millis(1_500)),
    ]);
    let url = url_of(&pool);
    // A 2-s request timeout turns the 4-s answer into a client-side timeout.
    let mut fleet = Fleet::start("glm", &pool, &url, &sims, &[("GLM_TIMEOUT", "2")]);
    for &iid in &iids {
        enqueue(&pool, iid).await;
    }
    fleet.wait_idle(DRAIN_TIMEOUT, "the reviews").await;
    fleet.stop().await;

    const NOT_JSON: &str = "the model's answer was not the JSON object asked for, twice";
    let tally = assert_invariants(
        &pool,
        &sims,
        &iids,
        &Expect {
            fatal: &[(5, NOT_JSON)],
            ..Expect::default()
        },
    )
    .await;
    // Each failure left its trace in the ledger, billed or not.
    let codes: Vec<String> =
        sqlx::query_scalar("select distinct error_code from llm_calls where status = 'error'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for code in [
        "1302",
        "500",
        "Timeout",
        "unusable_answer",
        "ContextTooLong",
    ] {
        assert!(
            codes.iter().any(|c| c == code),
            "no ledger row with error {code}: {codes:?}"
        );
    }
    let split: i64 = sqlx::query_scalar("select count(*) from review_chunks where superseded")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(split >= 1, "the truncated answer's chunk was split in two");
    let summary = sims
        .gitlab
        .notes(PROJECT, 5)
        .unwrap()
        .into_iter()
        .find(|n| n.note_type.is_none())
        .expect("MR 5 still gets its summary");
    assert!(
        summary.body.contains("not the JSON object"),
        "the summary names the failure: {}",
        summary.body
    );
    eprintln!(
        "chaos[glm]: secs={:.1} faults=8+MR5-never-JSON kills=0 restarts=0 chunks_split={split} {tally}",
        began.elapsed().as_secs_f64()
    );
}
