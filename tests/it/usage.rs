//! `reviewq usage`, run as a user would run it, checked against plain SQL over the ledger.

use std::process::Output;

use chrono::NaiveDate;
use serde_json::Value;
use sqlx::PgPool;

use crate::support::{reviewq, url_of};

async fn run(url: &str, args: &[&str]) -> Output {
    reviewq()
        .arg("usage")
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .await
        .expect("run reviewq usage")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "reviewq usage failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("usage --json prints JSON")
}

/// A model the seeded `model_prices` has no price for.
const UNPRICED: &str = "local-llama";

/// The ledger rows: three days, three projects, four MRs, four models (one without a
/// price), a failed call, a call cut off by a crash (`started`, no usage) and a failed call
/// to the unpriced model. `-` is null.
const CALLS: &str = "
    started_at        project  mr  model        status   prompt  completion  total  cached
    2026-11-20T12:00  group/a  1   glm-4.6      ok       1000    200         1200   100
    2026-11-20T12:05  group/a  1   glm-4.6      error    -       -           -      -
    2026-11-21T12:00  group/a  2   glm-4.5-air  ok       5000    800         5800   -
    2026-11-21T12:10  group/b  7   local-llama  ok       3000    300         3300   -
    2026-11-22T12:00  group/b  7   glm-4.6      started  -       -           -      -
    2026-11-22T12:01  group/c  3   glm-5        ok       20000   1500        21500  4000
    2026-11-22T12:02  group/c  3   local-llama  error    -       -           -      -
    2026-11-22T12:03  group/a  1   glm-4.6      ok       700     90          790    -
";

/// Writes [`CALLS`] to the ledger (times in UTC), as the review pipeline would have.
async fn seed(pool: &PgPool) {
    for line in CALLS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip(1)
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [started_at, project, mr_iid, model, status, tokens @ ..] = f.as_slice() else {
            panic!("bad seed line {line:?}");
        };
        let started_at = format!("{started_at}:00+00");
        let mr_iid: i64 = mr_iid.parse().unwrap();
        let n = |i: usize| tokens[i].parse::<i64>().ok();
        let (prompt, completion, total, cached) = (n(0), n(1), n(2), n(3));
        sqlx::query!(
            "insert into llm_calls (job_id, job_attempt, project, mr_iid, head_sha, review_type,
                 model, status, prompt_tokens, completion_tokens, total_tokens, cached_tokens,
                 started_at, finished_at)
             values (1, 1, $1, $2, 'abc123', 'general', $3, $4, $5, $6, $7, $8,
                 $9::text::timestamptz,
                 case when $4 = 'started' then null
                      else $9::text::timestamptz + interval '3 seconds' end)",
            project,
            mr_iid,
            model,
            status,
            prompt,
            completion,
            total,
            cached,
            started_at,
        )
        .execute(pool)
        .await
        .expect("insert llm_calls row");
    }
}

/// Sums over the ledger as an auditor would write them, for the calls matching the given
/// key fields (`None` matches all) started on or after `since`.
#[derive(Debug, PartialEq)]
struct Sums {
    calls: i64,
    failed_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    cost_usd: Option<f64>,
}

async fn sums(
    pool: &PgPool,
    since: Option<NaiveDate>,
    day: Option<NaiveDate>,
    project: Option<&str>,
    mr_iid: Option<i64>,
    model: Option<&str>,
    purpose: Option<&str>,
) -> Sums {
    sqlx::query_as!(
        Sums,
        r#"
        select count(*) as "calls!",
               count(*) filter (where status = 'error') as "failed_calls!",
               coalesce(sum(prompt_tokens), 0)::int8 as "prompt_tokens!",
               coalesce(sum(completion_tokens), 0)::int8 as "completion_tokens!",
               coalesce(sum(total_tokens), 0)::int8 as "total_tokens!",
               sum(cost_usd)::float8 as "cost_usd"
        from llm_call_costs
        where ($1::date is null or started_at >= ($1::date::timestamp at time zone 'UTC'))
          and ($2::date is null or (started_at at time zone 'UTC')::date = $2::date)
          and ($3::text is null or project = $3)
          and ($4::int8 is null or mr_iid = $4)
          and ($5::text is null or model = $5)
          -- The view predates the purpose column (its c.* was expanded then).
          and ($6::text is null
               or exists (select 1 from llm_calls l where l.id = llm_call_costs.id
                          and l.purpose = $6))
        "#,
        since,
        day,
        project,
        mr_iid,
        model,
        purpose,
    )
    .fetch_one(pool)
    .await
    .expect("sum the ledger")
}

/// The same sums taken from one row (or the totals) of `usage --json`.
fn sums_of(row: &Value) -> Sums {
    let int = |k: &str| row[k].as_i64().unwrap_or_else(|| panic!("{k} in {row}"));
    Sums {
        calls: int("calls"),
        failed_calls: int("failed_calls"),
        prompt_tokens: int("prompt_tokens"),
        completion_tokens: int("completion_tokens"),
        total_tokens: int("total_tokens"),
        cost_usd: row["cost_usd"].as_f64(),
    }
}

fn assert_same(got: &Sums, want: &Sums, what: &str) {
    let Sums {
        cost_usd: got_cost, ..
    } = got;
    let Sums {
        cost_usd: want_cost,
        ..
    } = want;
    assert_eq!(
        (
            got.calls,
            got.failed_calls,
            got.prompt_tokens,
            got.completion_tokens,
            got.total_tokens
        ),
        (
            want.calls,
            want.failed_calls,
            want.prompt_tokens,
            want.completion_tokens,
            want.total_tokens
        ),
        "{what}"
    );
    match (got_cost, want_cost) {
        (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{what}: cost {g} != {w}"),
        (g, w) => assert_eq!(g, w, "{what}: cost"),
    }
}

/// Checks every row and the totals of one report against SQL; returns the rows.
async fn check_report(pool: &PgPool, report: &Value, since: Option<NaiveDate>) -> Vec<Value> {
    let rows = report["rows"].as_array().expect("rows").clone();
    for row in &rows {
        let day = row["day"].as_str().map(|d| d.parse().expect("a date"));
        let want = sums(
            pool,
            since,
            day,
            row["project"].as_str(),
            row["mr_iid"].as_i64(),
            row["model"].as_str(),
            row["purpose"].as_str(),
        )
        .await;
        assert_same(&sums_of(row), &want, &format!("row {row}"));
    }
    let all = sums(pool, since, None, None, None, None, None).await;
    assert_same(&sums_of(&report["totals"]), &all, "totals");
    let mut summed = Sums {
        calls: 0,
        failed_calls: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        cost_usd: Some(0.0),
    };
    for row in &rows {
        let s = sums_of(row);
        summed.calls += s.calls;
        summed.failed_calls += s.failed_calls;
        summed.prompt_tokens += s.prompt_tokens;
        summed.completion_tokens += s.completion_tokens;
        summed.total_tokens += s.total_tokens;
        summed.cost_usd = summed.cost_usd.map(|c| c + s.cost_usd.unwrap_or(0.0));
    }
    assert_same(&summed, &all, "the rows add up to the whole ledger");
    rows
}

#[sqlx::test]
async fn usage_json_matches_sql_sums_over_the_ledger_for_every_grouping(pool: PgPool) {
    seed(&pool).await;
    let url = url_of(&pool);

    // Arrange: the expected number of groups, straight from the ledger.
    let groups = sqlx::query!(
        r#"
        select count(distinct (started_at at time zone 'UTC')::date) as "days!",
               count(distinct project) as "projects!",
               count(distinct (project, mr_iid)) as "mrs!",
               count(distinct model) as "models!"
        from llm_calls
        "#
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    for (by, expected_rows, keys) in [
        ("day", groups.days, &["day"][..]),
        ("project", groups.projects, &["project"][..]),
        ("mr", groups.mrs, &["project", "mr_iid"][..]),
        ("model", groups.models, &["model"][..]),
    ] {
        let report = json(&run(&url, &["--by", by, "--json"]).await);
        assert_eq!(report["by"], by);
        assert_eq!(report["since"], Value::Null);
        let rows = check_report(&pool, &report, None).await;
        assert_eq!(
            rows.len() as i64,
            expected_rows,
            "--by {by}: one row per group"
        );
        for row in &rows {
            for key in ["day", "project", "mr_iid", "model"] {
                assert_eq!(
                    keys.contains(&key),
                    !row[key].is_null(),
                    "--by {by}: key field {key} in {row}"
                );
            }
        }
        assert_eq!(report["unpriced_models"], serde_json::json!([UNPRICED]));
        assert_eq!(report["totals"]["unpriced_calls"], 2);
    }

    // Days come newest first; the unpriced model has no cost at all.
    let by_day = json(&run(&url, &["--json"]).await);
    assert_eq!(by_day["by"], "day", "--by day is the default");
    let days: Vec<&str> = by_day["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["day"].as_str().unwrap())
        .collect();
    let mut sorted = days.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(days, sorted);
    let by_model = json(&run(&url, &["--by", "model", "--json"]).await);
    let unpriced = by_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == UNPRICED)
        .expect("the unpriced model has a row");
    assert_eq!(unpriced["cost_usd"], Value::Null);
    assert_eq!(unpriced["calls"], 2);
    assert_eq!(unpriced["failed_calls"], 1);
}

/// A rollup table row by row, and the same sums grouped straight from the ledger by the
/// day and `keys` (the table's other key columns, comma-separated).
async fn rollup_and_ledger(pool: &PgPool, table: &str, keys: &str) -> (Vec<String>, Vec<String>) {
    let row = format!(
        "format('%s %s: %s calls, %s failed, %s/%s/%s/%s tokens', day, concat_ws('!', {keys}), \
         calls, failed_calls, prompt_tokens, completion_tokens, total_tokens, cached_tokens)"
    );
    // Test-only text from the constants above, never from input.
    let rollup = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select {row} from {table} where calls > 0 order by 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let ledger = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select {row} from (
             select (started_at at time zone 'UTC')::date as day, {keys}, count(*) as calls,
                    count(*) filter (where status = 'error') as failed_calls,
                    coalesce(sum(prompt_tokens), 0) as prompt_tokens,
                    coalesce(sum(completion_tokens), 0) as completion_tokens,
                    coalesce(sum(total_tokens), 0) as total_tokens,
                    coalesce(sum(cached_tokens), 0) as cached_tokens
             from llm_calls group by day, {keys}
         ) grouped order by 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    (rollup, ledger)
}

/// Both rollups against the ledger; the per-MR one's rows.
async fn rollups_match_the_ledger(pool: &PgPool, after: &str) -> Vec<String> {
    let (by_project, ledger) =
        rollup_and_ledger(pool, "llm_usage_project_daily", "project, model, purpose").await;
    assert_eq!(by_project, ledger, "per project, {after}");
    let (by_mr, ledger) =
        rollup_and_ledger(pool, "llm_usage_daily", "project, mr_iid, model, purpose").await;
    assert_eq!(by_mr, ledger, "per merge request, {after}");
    by_mr
}

#[sqlx::test]
async fn the_daily_rollup_follows_the_ledger_through_inserts_updates_and_deletes(pool: PgPool) {
    seed(&pool).await;
    let rollup = rollups_match_the_ledger(&pool, "after one-row inserts").await;
    assert_eq!(
        rollup.len(),
        7,
        "one row per day, MR, model and purpose: {rollup:#?}"
    );

    // Act: what the pipeline and an operator do to the ledger. The call a crash cut off
    // is finished; a successful one turns out to have failed; one statement inserts
    // several calls of two merge requests, one of them just before midnight UTC; a
    // describe call; a call is deleted; an update touches no counted column.
    for statement in [
        "update llm_calls set status = 'ok', prompt_tokens = 40, completion_tokens = 2,
             total_tokens = 42 where status = 'started'",
        "update llm_calls set status = 'error' where project = 'group/a' and mr_iid = 2",
        "insert into llm_calls (job_id, job_attempt, project, mr_iid, head_sha, review_type,
             model, status, prompt_tokens, completion_tokens, total_tokens, started_at)
         select 2, 1, 'group/d', 1 + g % 2, 'h', 'general', 'glm-4.6', 'ok', 100 * g, g, 101 * g,
                '2026-11-22T23:59:59Z'::timestamptz + make_interval(secs => g)
         from generate_series(0, 5) g",
        "insert into llm_calls (job_id, job_attempt, project, mr_iid, head_sha, review_type,
             model, purpose, status, prompt_tokens, completion_tokens, total_tokens,
             cached_tokens, started_at)
         values (3, 1, 'group/a', 1, 'h', 'describe', 'glm-4.6', 'describe', 'ok', 900, 80,
                 980, 300, '2026-11-22T08:00:00Z')",
        "delete from llm_calls where project = 'group/c' and model = 'glm-5'",
        "update llm_calls set finished_at = now()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }

    let rollup = rollups_match_the_ledger(&pool, "after every kind of write").await;
    assert!(
        rollup.iter().any(|r| r.starts_with("2026-11-23 group/d!")),
        "calls after midnight UTC count on the next day: {rollup:#?}"
    );
    assert!(
        rollup.iter().any(|r| r.contains("!describe: ")),
        "{rollup:#?}"
    );
    // The report over the rollup still matches the auditor's SQL over the calls.
    let url = url_of(&pool);
    for by in ["day", "project", "mr", "model", "purpose"] {
        check_report(
            &pool,
            &json(&run(&url, &["--by", by, "--json"]).await),
            None,
        )
        .await;
    }
}

#[sqlx::test]
async fn usage_since_counts_only_calls_from_that_day_on(pool: PgPool) {
    seed(&pool).await;
    let url = url_of(&pool);
    // The second seeded day (report days are UTC days).
    let since = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();

    for by in ["day", "project", "mr", "model"] {
        let report = json(&run(&url, &["--since", &since.to_string(), "--by", by, "--json"]).await);
        assert_eq!(report["since"], since.to_string());
        check_report(&pool, &report, Some(since)).await;
    }
    let all = sums(&pool, None, None, None, None, None, None).await;
    let recent = sums(&pool, Some(since), None, None, None, None, None).await;
    assert!(
        recent.calls < all.calls && recent.calls > 0,
        "the filter filters"
    );

    // The same start as a number of days back from today (UTC), today counted.
    let today: NaiveDate = sqlx::query_scalar("select (now() at time zone 'UTC')::date")
        .fetch_one(&pool)
        .await
        .unwrap();
    let days = format!("{}d", (today - since).num_days() + 1);
    for by in ["day", "model"] {
        let relative = json(&run(&url, &["--since", &days, "--by", by, "--json"]).await);
        let absolute =
            json(&run(&url, &["--since", &since.to_string(), "--by", by, "--json"]).await);
        assert_eq!(relative, absolute, "--since {days} is --since {since}");
    }

    // After the last call: nothing, and the table says so.
    let out = run(&url, &["--since", "2999-01-01"]).await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no LLM calls recorded since 2999-01-01")
    );
}

#[sqlx::test]
async fn usage_table_shows_totals_and_names_models_without_a_price(pool: PgPool) {
    seed(&pool).await;
    let out = run(&url_of(&pool), &["--by", "model"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let all = sums(&pool, None, None, None, None, None, None).await;
    let total_line = table
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("a TOTAL line in:\n{table}"));
    assert!(
        total_line.contains(&all.total_tokens.to_string()),
        "{total_line}"
    );
    assert!(
        total_line.contains(&format!("{:.4}*", all.cost_usd.unwrap())),
        "{total_line}"
    );
    let unpriced_line = table.lines().find(|l| l.starts_with(UNPRICED)).unwrap();
    assert!(unpriced_line.trim_end().ends_with('-'), "{unpriced_line}");
    assert!(
        table.contains(&format!(
            "models without a price in model_prices: {UNPRICED}"
        )),
        "{table}"
    );
}

#[sqlx::test]
async fn usage_with_a_bad_since_exits_2_and_names_the_value(pool: PgPool) {
    let url = url_of(&pool);
    for bad in [
        "yesterday",
        "2026-13-01",
        "21/11/2026",
        "0d",
        "30x",
        "3 days",
    ] {
        let out = run(&url, &["--since", bad]).await;
        assert_eq!(out.status.code(), Some(2), "--since {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad) && err.contains("YYYY-MM-DD"), "{err}");
    }
}
