//! `reviewq demo`: the whole pipeline on this machine, against simulated GitLab and GLM
//! servers on loopback. Everything reviewq does for real happens (queue, chunk jobs, the
//! fleet limit, the ledger, the outbox, positions checked as GitLab checks them); only the
//! two servers are simulated, and the output says so.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::{
    config::DbArgs,
    gitlab::{GitLabClient, GitLabConfig},
    jobs::LLM_RESOURCE,
    jobs::{
        Dispatcher,
        review::{ReviewArgs, ReviewDeps, ReviewOptions},
    },
    llm::{LlmClient, LlmConfig},
    mr_ref::MrRef,
    queue::{Limiter, Queue, Worker, WorkerConfig},
    review::{ChunkBudget, ReviewType, chunk::DEFAULT_MAX_PROMPT_TOKENS},
    sim::{
        FakeGitLab, FakeGlm, GlmBehaviour,
        fixtures::{DEMO_PROJECT, demo_merge_requests},
    },
};

use super::watch::{OnWaiting, Watched, wait_for};

const TOKEN: &str = "demo-gitlab-token";
const KEY: &str = "demo-glm-key";
/// Simulated model latency: long enough to watch the progress, short enough for a demo.
const DEMO_LATENCY: Duration = Duration::from_millis(400);

/// Runs the demo.
///
/// # Errors
/// Database or local-mode failures.
pub async fn run(db: &DbArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "reviewq demo: SIMULATED GitLab and GLM servers on 127.0.0.1 (no accounts, no network).\n\
         The queue, the workers, the ledger and the comment outbox are real, in Postgres."
    )?;
    if db.database_url.is_none() {
        let cluster = crate::config::local_cluster_config()?;
        writeln!(
            out,
            "Postgres: local mode, a private cluster in {}.",
            crate::config::describe_local_cluster(&cluster)
        )?;
    }
    drop(out);
    let pool = db.pool(8).await?;
    crate::migrate(&pool)
        .await
        .context("could not apply migrations")?;

    let gitlab = FakeGitLab::start(TOKEN).await?;
    let glm = FakeGlm::start(KEY, GlmBehaviour::with_latency(DEMO_LATENCY)).await?;
    let mrs = demo_merge_requests();
    for mr in &mrs {
        gitlab.add_merge_request(mr.clone())?;
    }
    let deps = ReviewDeps {
        gitlab: GitLabClient::new(GitLabConfig::new(
            gitlab.base_url().parse()?,
            SecretString::from(TOKEN),
        ))?,
        llm: LlmClient::new(LlmConfig::new(
            glm.base_url().parse()?,
            Some(SecretString::from(KEY)),
            crate::llm::DEFAULT_MODEL,
        ))?,
        budget: ChunkBudget::new(DEFAULT_MAX_PROMPT_TOKENS)?,
        chunk_timeout: Duration::from_secs(60),
        max_chunks: 50,
        spend: crate::spend::SpendPolicy::default(),
        gitlab_budget: crate::jobs::gitlab_budget::GitLabBudget::default(),
        conversation: Default::default(),
    };
    let queue = Queue::new(pool.clone());
    Limiter::set_capacity(&pool, LLM_RESOURCE, 3).await?;
    let worker = Worker::new(
        queue.clone(),
        Dispatcher::with_review(deps),
        WorkerConfig {
            concurrency: 4,
            limits: vec![(LLM_RESOURCE.to_owned(), 3)],
            ..WorkerConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let options = ReviewOptions {
        review_type: ReviewType::General,
        dry_run: false,
        // The demo's MRs get the same head SHAs every run; review them again each time.
        force: true,
        full: false,
    };
    let mut ids = Vec::new();
    for mr in &mrs {
        let r: MrRef = format!("{}:{}", mr.project_path, mr.iid)
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("enqueued review of {r} ({})", mr.title);
        ids.push(
            Queue::enqueue(&pool, &ReviewArgs::new(r, &options).job(0))
                .await?
                .id(),
        );
    }
    let ok = wait_for(&queue, &ids, OnWaiting::Stop).await? == Watched::Ended(true);
    stop.cancel();
    running.await.context("the worker panicked")??;

    let mut out = std::io::stdout().lock();
    for mr in &mrs {
        writeln!(
            out,
            "\n================ {DEMO_PROJECT}!{} \"{}\" (simulated GitLab) ================",
            mr.iid, mr.title
        )?;
        for discussion in gitlab.discussions(&mr.project_path, mr.iid)? {
            // Overview notes are listed as discussions too; the summary is printed below.
            for note in discussion.notes.iter().take(1) {
                let Some(p) = note.position.as_ref() else {
                    continue;
                };
                let place = match (p.old_line, p.new_line) {
                    (_, Some(line)) => format!("{}:{line}", p.new_path),
                    (Some(line), None) => format!("{}:{line} (removed line)", p.old_path),
                    _ => p.new_path.clone(),
                };
                writeln!(
                    out,
                    "\n--- inline comment on {place} ---\n{}",
                    note.body.trim()
                )?;
            }
        }
        for note in gitlab.notes(&mr.project_path, mr.iid)? {
            if note.note_type.is_none() && !note.system {
                writeln!(out, "\n--- summary note ---\n{}", note.body.trim())?;
            }
        }
    }
    writeln!(
        out,
        "\n================ spend (from the llm_calls ledger) ================"
    )?;
    print_spend(&mut out, &pool, &ids).await?;
    writeln!(
        out,
        "\nThe simulated GLM billed {} tokens in {} requests; the ledger recorded the same (see `llm_calls`).\n\
         Next: review a real MR with GITLAB_TOKEN and GLM_API_KEY set: reviewq review group/project:42 --dry-run",
        glm.billed_total_tokens(),
        glm.request_count()
    )?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The ledger's calls, tokens and cost per MR, of the demo's jobs and their chunks.
async fn print_spend(
    out: &mut impl Write,
    pool: &sqlx::PgPool,
    ids: &[crate::queue::JobId],
) -> anyhow::Result<()> {
    let jobs = Queue::new(pool.clone()).with_children(ids).await?;
    let rows = sqlx::query!(
        r#"
        select project as "project!", mr_iid as "mr_iid!", count(*) as "calls!",
               coalesce(sum(prompt_tokens), 0)::int8 as "prompt!",
               coalesce(sum(completion_tokens), 0)::int8 as "completion!",
               coalesce(sum(cost_usd), 0)::float8 as "cost!"
        from llm_call_costs where job_id = any($1)
        group by 1, 2 order by 1, 2
        "#,
        &jobs.iter().map(|id| id.get()).collect::<Vec<_>>()
    )
    .fetch_all(pool)
    .await?;
    writeln!(
        out,
        "{:<22} {:>6} {:>10} {:>11} {:>10}",
        "MR", "calls", "prompt", "completion", "cost USD"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<22} {:>6} {:>10} {:>11} {:>10.4}",
            format!("{}!{}", r.project, r.mr_iid),
            r.calls,
            r.prompt,
            r.completion,
            r.cost
        )?;
    }
    Ok(())
}
