//! `reviewq bench adapter`: the outside harnesses' contracts, on a small N.

use std::{process::Stdio, time::Duration};

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{reviewq, url_of};

async fn json_line(pool: &PgPool, args: &[&str]) -> serde_json::Value {
    let out = reviewq()
        .args(["bench", "adapter"])
        .args(args)
        .env("DATABASE_URL", url_of(pool))
        .output()
        .await
        .expect("run the adapter");
    assert!(out.status.success(), "{args:?}: {out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout}");
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

#[sqlx::test(migrations = false)]
async fn insert_then_work_print_the_kits_keys_and_leave_nothing_unfinished(pool: PgPool) {
    let inserted = json_line(&pool, &["insert", "500"]).await;
    assert!(inserted["insert_s"].as_f64().unwrap() > 0.0, "{inserted}");
    assert!(
        inserted["insert_per_s"].as_f64().unwrap() > 0.0,
        "{inserted}"
    );

    let worked = json_line(&pool, &["work", "500", "4"]).await;
    assert_eq!(worked["ok"], true, "{worked}");
    assert_eq!(worked["handled"], 500, "{worked}");
    for key in ["wall_s", "jobs_per_s", "first_job_s"] {
        assert!(worked[key].as_f64().unwrap() > 0.0, "{key}: {worked}");
    }
    let unfinished: i64 = sqlx::query_scalar(
        "select count(*) from jobs where kind = 'bench' and state not in ('succeeded')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unfinished, 0);
}

#[sqlx::test(migrations = false)]
async fn long_horizon_samples_then_exits_zero_within_five_seconds_of_sigterm(pool: PgPool) {
    let mut child = reviewq()
        .args(["bench", "adapter", "long-horizon"])
        .env("DATABASE_URL", url_of(&pool))
        .env("SAMPLE_EVERY_S", "1")
        .env("PRODUCER_RATE", "200")
        .env("WORKER_COUNT", "4")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the adapter");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["kind"], "descriptor");
    assert_eq!(first["system"], "reviewq");
    assert!(
        first["event_tables"]
            .as_array()
            .unwrap()
            .contains(&"public.jobs".into())
    );
    // Wait for a sample showing completed work, then stop the process.
    let mut seen_completion = false;
    while !seen_completion {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("samples keep coming")
            .unwrap()
            .expect("the adapter is still running");
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["kind"], "adapter");
        seen_completion = r["metric"] == "completion_rate" && r["value"].as_f64().unwrap() > 0.0;
    }
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let mut after = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        after.push(line);
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within 5 s")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        after.iter().any(|l| l.contains("\"completion_rate\"")),
        "a last sample is flushed at SIGTERM: {after:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn latworker_prints_ready_then_the_latencies_of_what_produce_enqueued(pool: PgPool) {
    // The schema first, as the kit does (`insert 0`), so both processes start on it.
    json_line(&pool, &["insert", "0"]).await;
    let mut worker = reviewq()
        .args(["bench", "adapter", "latworker", "200", "2"])
        .env("DATABASE_URL", url_of(&pool))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start latworker");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("READY in time")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"));

    let produced = json_line(&pool, &["produce", "200", "200"]).await;
    assert!(produced["produce_s"].as_f64().unwrap() > 0.5, "{produced}");

    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("latworker ends once it saw every job")
        .unwrap()
        .expect("one JSON line after READY");
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["n"], 200, "{report}");
    let p = |k: &str| report[k].as_f64().unwrap();
    assert!(p("p50_ms") > 0.0, "{report}");
    assert!(
        p("p50_ms") <= p("p95_ms") && p("p95_ms") <= p("p99_ms") && p("p99_ms") <= p("max_ms"),
        "{report}"
    );
    assert_eq!(lines.next_line().await.unwrap(), None, "nothing after it");
    assert!(worker.wait().await.unwrap().success());
}
