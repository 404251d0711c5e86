//! Spend control as users meet it: `reviewq review` and `worker --exit-when-idle` do not
//! sit waiting for a top-up or a budget, `status` shows why work waits, `budget` manages
//! per-project budgets.

use crate::support::{KEY, TOKEN};
use reviewq::sim::{FakeGitLab, FakeGlm, GlmBehaviour, GlmFault};
use sqlx::PgPool;
use tokio::process::Command;

use crate::{
    support::{PROJECT, mixed_mr},
    support::{output_text as text, reviewq, url_of},
};

/// `reviewq` with the database and both simulated servers configured.
fn configured(pool: &PgPool, gitlab: &FakeGitLab, glm: &FakeGlm) -> Command {
    let mut cmd = reviewq();
    cmd.env("DATABASE_URL", url_of(pool))
        .env("GITLAB_URL", gitlab.base_url())
        .env("GITLAB_TOKEN", TOKEN)
        .env("GLM_BASE_URL", glm.base_url())
        .env("GLM_API_KEY", KEY);
    cmd
}

async fn servers() -> (FakeGitLab, FakeGlm) {
    let gitlab = FakeGitLab::start(TOKEN).await.unwrap();
    let glm = FakeGlm::start(KEY, GlmBehaviour::default()).await.unwrap();
    gitlab.add_merge_request(mixed_mr(1)).unwrap();
    (gitlab, glm)
}

#[sqlx::test]
async fn review_exits_1_with_the_reason_when_the_account_is_out_of_balance(pool: PgPool) {
    let (gitlab, glm) = servers().await;
    glm.set_fault_for_every_request(Some(GlmFault::Arrears));
    let out = configured(&pool, &gitlab, &glm)
        .args(["review", &format!("{PROJECT}:1")])
        .output()
        .await
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("not waiting"), "{all}");
    assert!(all.contains("paused fleet-wide"), "{all}");
    assert!(all.contains("out of balance"), "{all}");
    assert!(
        glm.request_count() <= 3,
        "no retry storm: {}",
        glm.request_count()
    );
    assert_eq!(gitlab.posted_notes() + gitlab.posted_discussions(), 0);

    // `status` says the same, in text and on the waiting job in JSON.
    let status = configured(&pool, &gitlab, &glm)
        .args(["status"])
        .output()
        .await
        .unwrap();
    let shown = text(&status);
    assert!(shown.contains("LLM WORK PAUSED since"), "{shown}");
    assert!(shown.contains("waiting: LLM work is paused"), "{shown}");
    let json = configured(&pool, &gitlab, &glm)
        .args(["status", "--json"])
        .output()
        .await
        .unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let review = &jobs[0];
    assert_eq!(review["state"], "queued");
    assert!(
        review["waiting"]["reason"]
            .as_str()
            .unwrap()
            .contains("out of balance"),
        "{review}"
    );
    assert!(review["waiting"]["since"].is_string(), "{review}");
}

#[sqlx::test]
async fn worker_exit_when_idle_exits_1_when_the_only_work_left_waits_for_a_budget(pool: PgPool) {
    let (gitlab, glm) = servers().await;
    let set = configured(&pool, &gitlab, &glm)
        .args(["budget", "set", PROJECT, "0"])
        .output()
        .await
        .unwrap();
    assert!(set.status.success(), "{}", text(&set));
    let enqueue = configured(&pool, &gitlab, &glm)
        .args(["enqueue", &format!("{PROJECT}:1")])
        .output()
        .await
        .unwrap();
    assert!(enqueue.status.success(), "{}", text(&enqueue));
    let out = configured(&pool, &gitlab, &glm)
        .args(["worker", "--exit-when-idle", "--poll-ms", "50"])
        .output()
        .await
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("every remaining job is waiting"), "{all}");
    assert!(
        all.contains(&format!("project {PROJECT}'s daily token budget")),
        "{all}"
    );
    assert_eq!(glm.request_count(), 0, "nothing was spent");

    // Raising the budget lets the next worker finish the review.
    let raise = configured(&pool, &gitlab, &glm)
        .args(["budget", "set", PROJECT, "1000000"])
        .output()
        .await
        .unwrap();
    assert!(
        text(&raise).contains("look at their budget again"),
        "{}",
        text(&raise)
    );
    let out = configured(&pool, &gitlab, &glm)
        .args(["worker", "--exit-when-idle", "--poll-ms", "50"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(gitlab.posted_notes(), 1, "the summary was posted");

    let list = configured(&pool, &gitlab, &glm)
        .args(["budget", "--json"])
        .output()
        .await
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let project = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["project"] == PROJECT)
        .unwrap();
    assert_eq!(project["daily_tokens"], 1_000_000);
    assert!(project["used_today"].as_i64().unwrap() > 0, "{rows}");
}

#[sqlx::test]
async fn budget_set_rejects_a_bad_project_or_amount_with_exit_2(pool: PgPool) {
    let (gitlab, glm) = servers().await;
    for args in [
        vec!["budget", "set", "group/", "10"],
        vec!["budget", "set", PROJECT, "-5"],
        vec!["budget", "set", PROJECT, "lots"],
    ] {
        let out = configured(&pool, &gitlab, &glm)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from project_budgets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing was written");
}
