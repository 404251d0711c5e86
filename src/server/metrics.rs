//! `GET /metrics`: Prometheus text exposition (format 0.0.4), computed with SQL at scrape
//! time from the tables that already hold the truth (`jobs`, `llm_calls`, `outbox`,
//! `limit_slots`), so every `serve` replica reports the whole fleet and nothing is kept in
//! process memory. The format is a few lines of text; no metrics crate is needed.
//!
//! Counters come from tables that are never pruned (`llm_calls`, `outbox`), so they only
//! grow. `jobs` is pruned after the retention period, so job counts are gauges of the rows
//! present. Latencies are quantiles over a sliding window ([`WINDOW`]), exported as gauges
//! with a `quantile` label, because a cumulative histogram cannot be rebuilt from rows.
//!
//! Cost: the job, token, error and comment families aggregate their whole tables (a
//! sequential scan each); the windowed ones use the `finished_at` / `started_at` indexes.
//! All run in one read-only transaction under a statement timeout.

use std::{fmt::Write as _, time::Instant};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use sqlx::{Postgres, Transaction};

use super::{AppState, DB_TIMEOUT, error::ApiError};
use crate::queue::Queue;

/// The window of the latency quantiles, in seconds.
pub const WINDOW_SECS: f64 = 300.0;

/// The job states, so that every kind reports all five (zeros included).
const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// The quantiles reported.
const QUANTILES: [&str; 3] = ["0.5", "0.95", "0.99"];

/// Prometheus text exposition, written by hand.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        let _ = if value.is_nan() {
            writeln!(self.0, " NaN")
        } else if value.is_infinite() {
            writeln!(self.0, " {}Inf", if value > 0.0 { '+' } else { '-' })
        } else {
            writeln!(self.0, " {value}")
        };
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Counts as exported values (exact up to 2^53, beyond any table here).
#[allow(clippy::cast_precision_loss)]
fn n(count: i64) -> f64 {
    count as f64
}

/// The handler.
///
/// # Errors
/// 503 if the database is too slow, 500 (logged) on database errors.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let started = Instant::now();
    let body = tokio::time::timeout(DB_TIMEOUT, async {
        let mut tx = state.pool.begin().await?;
        let text = collect(&mut tx).await?;
        tx.commit().await?;
        Ok::<_, ApiError>(text)
    })
    .await
    .map_err(|_| ApiError::Unavailable)??;
    let mut out = body;
    out.family(
        "reviewq_metrics_scrape_duration_seconds",
        "gauge",
        "Time this scrape spent computing the metrics.",
    );
    out.sample(
        "reviewq_metrics_scrape_duration_seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    ))
}

/// Every family, read in `tx` (one consistent snapshot).
///
/// # Errors
/// Database errors.
pub async fn collect(tx: &mut Transaction<'_, Postgres>) -> Result<Exposition, ApiError> {
    sqlx::query!(
        r#"select set_config('transaction_read_only', 'on', true) as "a!",
                  set_config('statement_timeout', '4s', true) as "b!""#
    )
    .fetch_one(&mut **tx)
    .await?;
    let mut out = Exposition::default();
    jobs(tx, &mut out).await?;
    llm(tx, &mut out).await?;
    comments(tx, &mut out).await?;
    conversations(tx, &mut out).await?;
    limits(tx, &mut out).await?;
    spend(tx, &mut out).await?;
    backoff(tx, &mut out).await?;
    Ok(out)
}

/// Fleet-wide back-offs from a service's 429 (`rate_limits`), by resource.
async fn backoff(
    tx: &mut Transaction<'_, Postgres>,
    out: &mut Exposition,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select resource,
                  (probing or coalesce(paused_until > now(), false)) as "paused!",
                  coalesce(extract(epoch from greatest(paused_until - now(), interval '0')),
                           0)::float8 as "left!"
           from rate_limits order by resource"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_backoff",
        "gauge",
        "1 while the fleet backs off from a service that answered 429 (until its Retry-After, then one probe request at a time).",
    );
    for row in &rows {
        out.sample(
            "reviewq_backoff",
            &[("resource", &row.resource)],
            if row.paused { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "reviewq_backoff_seconds",
        "gauge",
        "Seconds left of the service's Retry-After (0 when not backing off).",
    );
    for row in &rows {
        out.sample(
            "reviewq_backoff_seconds",
            &[("resource", &row.resource)],
            row.left,
        );
    }
    Ok(())
}

/// The fleet-wide LLM pause and the jobs waiting for a spend condition.
async fn spend(tx: &mut Transaction<'_, Postgres>, out: &mut Exposition) -> Result<(), ApiError> {
    let pause = sqlx::query!(
        r#"select count(*) as "paused!",
                  coalesce(max(extract(epoch from now() - since))::float8, 0) as "age!"
           from llm_pause"#
    )
    .fetch_one(&mut **tx)
    .await?;
    out.family(
        "reviewq_llm_paused",
        "gauge",
        "1 while LLM work is paused fleet-wide because the provider said the account cannot pay (GLM 1113, 1304, 1308, 1310).",
    );
    out.sample("reviewq_llm_paused", &[], n(pause.paused));
    out.family(
        "reviewq_llm_paused_seconds",
        "gauge",
        "How long LLM work has been paused (0 when it is not).",
    );
    out.sample("reviewq_llm_paused_seconds", &[], pause.age);
    let waiting = Queue::waiting_on_in(
        &mut **tx,
        &[crate::spend::PAUSE_KEY, crate::spend::BUDGET_KEY],
    )
    .await?;
    out.family(
        "reviewq_jobs_waiting",
        "gauge",
        "Queued jobs waiting for a spend condition: the LLM pause or a spent daily token budget.",
    );
    for (key, jobs) in waiting {
        out.sample("reviewq_jobs_waiting", &[("reason", &key)], n(jobs));
    }
    Ok(())
}

async fn jobs(tx: &mut Transaction<'_, Postgres>, out: &mut Exposition) -> Result<(), ApiError> {
    let rows = Queue::state_counts_in(&mut **tx).await?;
    out.family(
        "reviewq_jobs",
        "gauge",
        "Jobs in the jobs table by kind and state (finished jobs are pruned after the retention period).",
    );
    let mut kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    kinds.dedup();
    for kind in kinds {
        for state in STATES {
            let count = rows
                .iter()
                .find(|r| r.kind == kind && r.state.as_str() == state)
                .map_or(0, |r| r.jobs);
            out.sample(
                "reviewq_jobs",
                &[("kind", kind), ("state", state)],
                n(count),
            );
        }
    }

    let queue = Queue::runnable_in(&mut **tx).await?;
    out.family(
        "reviewq_queue_runnable_jobs",
        "gauge",
        "Jobs that could start now but no worker has claimed.",
    );
    out.sample("reviewq_queue_runnable_jobs", &[], n(queue.jobs));
    out.family(
        "reviewq_queue_oldest_runnable_age_seconds",
        "gauge",
        "How long the oldest runnable job has waited (0 when none waits).",
    );
    out.sample(
        "reviewq_queue_oldest_runnable_age_seconds",
        &[],
        queue.oldest_secs,
    );

    let windowed = Queue::finished_times_in(&mut **tx, WINDOW_SECS).await?;
    out.family(
        "reviewq_queue_latency_seconds",
        "gauge",
        "Enqueue-to-start latency of jobs that finished in the last 5 minutes on their first attempt, by quantile.",
    );
    for row in &windowed {
        quantiles(
            out,
            "reviewq_queue_latency_seconds",
            &[("kind", &row.kind)],
            row.wait_secs.as_deref(),
        );
    }
    out.family(
        "reviewq_job_duration_seconds",
        "gauge",
        "Run time of the final attempt of jobs that finished in the last 5 minutes, by quantile.",
    );
    for row in &windowed {
        quantiles(
            out,
            "reviewq_job_duration_seconds",
            &[("kind", &row.kind)],
            row.run_secs.as_deref(),
        );
    }
    Ok(())
}

fn quantiles(out: &mut Exposition, name: &str, labels: &[(&str, &str)], values: Option<&[f64]>) {
    let Some(values) = values else { return };
    for (q, v) in QUANTILES.iter().zip(values) {
        let mut all = labels.to_vec();
        all.push(("quantile", q));
        out.sample(name, &all, *v);
    }
}

async fn llm(tx: &mut Transaction<'_, Postgres>, out: &mut Exposition) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select model, status,
                  count(*) as "calls!",
                  coalesce(sum(prompt_tokens), 0)::int8 as "prompt!",
                  coalesce(sum(completion_tokens), 0)::int8 as "completion!",
                  coalesce(sum(cached_tokens), 0)::int8 as "cached!"
           from llm_calls group by model, status order by model, status"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_llm_calls_total",
        "counter",
        "LLM HTTP requests by model and status (started = in flight or cut off by a crash).",
    );
    for r in &rows {
        out.sample(
            "reviewq_llm_calls_total",
            &[("model", &r.model), ("status", &r.status)],
            n(r.calls),
        );
    }
    out.family(
        "reviewq_llm_tokens_total",
        "counter",
        "Tokens the provider reported, by model and type (cached is part of prompt).",
    );
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.dedup();
    for model in models {
        let of = |f: fn(&_) -> i64| rows.iter().filter(|r| r.model == model).map(f).sum::<i64>();
        for (kind, value) in [
            ("prompt", of(|r| r.prompt)),
            ("completion", of(|r| r.completion)),
            ("cached", of(|r| r.cached)),
        ] {
            out.sample(
                "reviewq_llm_tokens_total",
                &[("model", model), ("type", kind)],
                n(value),
            );
        }
    }

    let errors = sqlx::query!(
        r#"select coalesce(error_code, 'http_' || http_status::text, 'none') as "code!",
                  count(*) as "n!"
           from llm_calls where status = 'error' group by 1 order by 1"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_llm_provider_errors_total",
        "counter",
        "Failed LLM requests by provider error code (http_STATUS when the body had none; none for transport errors).",
    );
    for e in &errors {
        out.sample(
            "reviewq_llm_provider_errors_total",
            &[("code", &e.code)],
            n(e.n),
        );
    }

    let durations = sqlx::query!(
        r#"select model,
                  percentile_cont(array[0.5, 0.95, 0.99]) within group (
                      order by extract(epoch from finished_at - started_at)::float8) as "q!"
           from llm_calls
           where started_at > now() - make_interval(secs => $1) and finished_at is not null
           group by model order by model"#,
        WINDOW_SECS
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_llm_call_duration_seconds",
        "gauge",
        "Duration of LLM requests started in the last 5 minutes, by model and quantile.",
    );
    for d in &durations {
        quantiles(
            out,
            "reviewq_llm_call_duration_seconds",
            &[("model", &d.model)],
            Some(&d.q),
        );
    }
    Ok(())
}

async fn comments(
    tx: &mut Transaction<'_, Postgres>,
    out: &mut Exposition,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select kind, state, count(*) as "n!" from outbox group by kind, state order by kind, state"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_comments_total",
        "counter",
        "Comments by kind (inline, summary) and outcome: posted, downgraded (an inline finding GitLab refused, listed in the summary instead), dry_run.",
    );
    for r in rows.iter().filter(|r| r.state != "pending") {
        out.sample(
            "reviewq_comments_total",
            &[("kind", &r.kind), ("state", &r.state)],
            n(r.n),
        );
    }
    out.family(
        "reviewq_comments_pending",
        "gauge",
        "Comments written to the outbox and not yet posted.",
    );
    for kind in ["inline", "summary"] {
        let pending = rows
            .iter()
            .filter(|r| r.kind == kind && r.state == "pending")
            .map(|r| r.n)
            .sum();
        out.sample("reviewq_comments_pending", &[("kind", kind)], n(pending));
    }
    Ok(())
}

/// What people asked the bot and what it did (`conversations`), and the paused MRs.
async fn conversations(
    tx: &mut Transaction<'_, Postgres>,
    out: &mut Exposition,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select intent, state, count(*) as "n!" from conversations
           group by intent, state order by intent, state"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_conversations_total",
        "counter",
        "Comments the bot acted on, by intent (question, resolve, review, pause, ...) and state (acting, answered, refused, limited).",
    );
    for r in &rows {
        out.sample(
            "reviewq_conversations_total",
            &[("intent", &r.intent), ("state", &r.state)],
            n(r.n),
        );
    }
    let paused = sqlx::query_scalar!(r#"select count(*) as "n!" from mr_pauses"#)
        .fetch_one(&mut **tx)
        .await?;
    out.family(
        "reviewq_merge_requests_paused",
        "gauge",
        "Merge requests whose reviews on push are paused (`@bot pause`).",
    );
    out.sample("reviewq_merge_requests_paused", &[], n(paused));
    Ok(())
}

async fn limits(
    tx: &mut Transaction<'_, Postgres>,
    out: &mut Exposition,
) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select resource, count(*) as "slots!",
                  count(*) filter (where holder_job_id is not null and lease_expires_at > now()) as "used!"
           from limit_slots group by resource order by resource"#
    )
    .fetch_all(&mut **tx)
    .await?;
    out.family(
        "reviewq_limit_slots",
        "gauge",
        "Slots of each fleet-wide limit (llm = GLM_CONCURRENT_REQUESTS).",
    );
    for r in &rows {
        out.sample(
            "reviewq_limit_slots",
            &[("resource", &r.resource)],
            n(r.slots),
        );
    }
    out.family(
        "reviewq_limit_slots_in_use",
        "gauge",
        "Slots of each fleet-wide limit held under a live lease.",
    );
    for r in &rows {
        out.sample(
            "reviewq_limit_slots_in_use",
            &[("resource", &r.resource)],
            n(r.used),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_label_values_and_print_special_floats() {
        let mut out = Exposition::default();
        out.family("m", "gauge", "help");
        out.sample("m", &[("a", "x\"y\\z\nw"), ("b", "c")], 1.5);
        out.sample("m", &[], f64::INFINITY);
        assert_eq!(
            out.finish(),
            "# HELP m help\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\",b=\"c\"} 1.5\nm +Inf\n"
        );
    }
}
