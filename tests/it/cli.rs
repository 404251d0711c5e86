//! The command line, run as a user would run it.

use std::process::Output;

use sqlx::PgPool;

use crate::support::{reviewq, url_of};

async fn run(url: &str, args: &[&str]) -> Output {
    reviewq()
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .await
        .expect("run reviewq")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn enqueue_prints_one_job_id_per_merge_request_and_dedupes_unfinished_ones(pool: PgPool) {
    let url = url_of(&pool);
    let out = run(
        &url,
        &[
            "enqueue",
            "group/project:42",
            "7!3,group/sub/project!9",
            "https://gitlab.com/group/project/-/merge_requests/43",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<i64> = stdout(&out).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    let payloads: Vec<(String, String)> =
        sqlx::query_as("select kind, payload->>'mr' from jobs order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mrs: Vec<&str> = payloads.iter().map(|(_, mr)| mr.as_str()).collect();
    assert_eq!(
        mrs,
        [
            "group/project!42",
            "7!3",
            "group/sub/project!9",
            "group/project!43"
        ]
    );
    assert!(payloads.iter().all(|(kind, _)| kind == "review"));

    let again = run(&url, &["enqueue", "group/project!42"]).await;
    assert_eq!(
        stdout(&again).trim(),
        ids[0].to_string(),
        "the unfinished job is reused"
    );
    assert_eq!(job_count(&pool).await, 4);
}

#[sqlx::test]
async fn enqueue_with_a_bad_reference_exits_2_names_it_and_writes_nothing(pool: PgPool) {
    let url = url_of(&pool);
    for (args, named) in [
        (
            vec!["enqueue", "group/project:1", "group/project"],
            "\"group/project\"",
        ),
        (vec!["enqueue", "group/project:0"], "\"group/project:0\""),
        (vec!["enqueue", "p:1,,p:2"], "empty item"),
        (
            vec![
                "enqueue",
                "https://other.example.com/g/p/-/merge_requests/1",
            ],
            "other.example.com",
        ),
        (vec!["enqueue", "g/p:1", "--review-type", "style"], "style"),
        // The benchmark adapter's job kind is not a merge request.
        (vec!["enqueue", "bench"], "\"bench\""),
        (vec!["cancel", "abc"], "abc"),
    ] {
        let out = run(&url, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(named),
            "{args:?} names {named}: {}",
            stderr(&out)
        );
    }
    assert_eq!(job_count(&pool).await, 0);
}

#[sqlx::test]
async fn status_retry_and_cancel_work_on_a_real_job_and_refuse_unknown_ids(pool: PgPool) {
    let url = url_of(&pool);
    let out = run(&url, &["enqueue", "group/project:5"]).await;
    let id = stdout(&out).trim().to_owned();

    let out = run(&url, &["status", &id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["state"], "queued");
    assert_eq!(json["kind"], "review");
    assert_eq!(json["attempt"], 0);
    assert!(json["attempts"].as_array().unwrap().is_empty());

    let out = run(&url, &["cancel", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&run(&url, &["status"]).await);
    assert!(
        table.contains("cancelled") && table.contains("group/project!5"),
        "{table}"
    );

    let out = run(&url, &["retry", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&url, &["status", &id, "--json"]).await)).unwrap();
    assert_eq!(json["state"], "queued");

    for cmd in ["status", "retry", "cancel"] {
        let out = run(&url, &[cmd, "999999"]).await;
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            stderr(&out).contains("no job with id 999999"),
            "{}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn without_database_url_the_demo_runs_on_a_private_local_cluster_that_is_reused() {
    let home = tempfile::tempdir().unwrap();
    let demo = || {
        let mut cmd = reviewq();
        cmd.arg("demo").env("REVIEWQ_HOME", home.path());
        cmd
    };
    let out = demo().output().await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("SIMULATED GitLab and GLM"),
        "labelled as simulated"
    );
    assert!(text.contains("inline comment on src/refunds.rs:"), "{text}");
    assert!(text.contains("--- summary note ---"));
    assert!(text.contains("acme/payments!7"), "spend table: {text}");
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with('/')),
        "no posted line starts a quick action"
    );

    // The cluster is reused, and `db` manages it.
    let again = demo().output().await.unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    let status = reviewq()
        .args(["db", "status"])
        .env("REVIEWQ_HOME", home.path())
        .output()
        .await
        .unwrap();
    assert!(stdout(&status).contains("running"), "{}", stdout(&status));
    let stop = reviewq()
        .args(["db", "stop"])
        .env("REVIEWQ_HOME", home.path())
        .output()
        .await
        .unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    let status = reviewq()
        .args(["db", "status"])
        .env("REVIEWQ_HOME", home.path())
        .output()
        .await
        .unwrap();
    assert!(stdout(&status).contains("stopped"), "{}", stdout(&status));
}

/// What `id -u` says: local mode behaves differently for root, whose server runs as another
/// account.
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn the_demo_runs_with_a_home_directory_closed_to_other_accounts() {
    use std::os::unix::fs::PermissionsExt;
    // A home as most systems give root: mode 700, so the account that runs the Postgres
    // server (Postgres refuses root) cannot enter it.
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let command = |args: &[&str]| {
        let mut cmd = reviewq();
        cmd.args(args)
            .env("HOME", home.path())
            .env_remove("REVIEWQ_HOME")
            .env_remove("XDG_DATA_HOME");
        cmd
    };
    let out = command(&["demo"]).output().await.unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("inline comment on src/refunds.rs:"), "{text}");
    assert!(
        !stderr(&out).contains('\x1b'),
        "a log written to a pipe carries no colour escapes: {}",
        stderr(&out)
    );
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Postgres: local mode, a private cluster in "))
        .unwrap_or_else(|| panic!("the demo says where its cluster is: {text}"));
    let dir = location
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.');
    if running_as_root() {
        assert!(
            dir.starts_with(reviewq::localdb::RELOCATED_BASE),
            "as root the cluster lives outside the closed home: {location}"
        );
        assert!(
            location.contains("cannot enter"),
            "and says why: {location}"
        );
    } else {
        assert!(
            dir.starts_with(&*home.path().to_string_lossy()),
            "{location}"
        );
    }
    assert_eq!(
        std::fs::metadata(home.path()).unwrap().permissions().mode() & 0o777,
        0o700,
        "the home directory is never opened up"
    );

    let stop = command(&["db", "stop"]).output().await.unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    if running_as_root() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[tokio::test]
async fn a_password_in_a_bad_database_url_is_never_printed() {
    let out = reviewq()
        .args(["status"])
        .env(
            "DATABASE_URL",
            "postgres://u:hunter2-secret@127.0.0.1:1/db?sslmode=bogus",
        )
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("hunter2-secret"), "{all}");
}

#[sqlx::test]
async fn review_dry_run_prints_the_comments_posts_nothing_and_exits_0(pool: PgPool) {
    use reviewq::sim::{FakeGitLab, FakeGlm, GlmBehaviour};

    use crate::support::{PROJECT, mixed_mr};

    let gitlab = FakeGitLab::start("cli-token").await.unwrap();
    let glm = FakeGlm::start("cli-key", GlmBehaviour::default())
        .await
        .unwrap();
    gitlab.add_merge_request(mixed_mr(1)).unwrap();
    let out = reviewq()
        .args(["review", &format!("{PROJECT}:1"), "--dry-run"])
        .env("DATABASE_URL", url_of(&pool))
        .env("GITLAB_URL", gitlab.base_url())
        .env("GITLAB_TOKEN", "cli-token")
        .env("GLM_BASE_URL", glm.base_url())
        .env("GLM_API_KEY", "cli-key")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("--dry-run: nothing was posted"), "{text}");
    assert!(
        text.contains("--- src/cart.rs:"),
        "inline comments are printed: {text}"
    );
    assert!(text.contains("--- summary note ---"), "{text}");
    assert!(stderr(&out).contains("succeeded"), "progress is shown");
    assert_eq!(gitlab.posted_discussions() + gitlab.posted_notes(), 0);
    assert!(glm.request_count() > 0);

    // Without a token the same command is a usage error naming the setting, and writes nothing.
    let out = reviewq()
        .args(["review", &format!("{PROJECT}:1")])
        .env("DATABASE_URL", url_of(&pool))
        .env("GLM_API_KEY", "cli-key")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("GITLAB_TOKEN"), "{}", stderr(&out));
    let reviews: i64 = sqlx::query_scalar("select count(*) from jobs where kind = 'review'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(reviews, 1, "only the first run enqueued");
}
