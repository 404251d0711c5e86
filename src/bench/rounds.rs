//! `reviewq bench rounds`: what incremental review saves. One merge request of many
//! modified files is reviewed in full, then after two small pushes; the ledger's tokens per
//! round are compared with the share of the MR each push changed.
//!
//! The simulated GitLab and GLM run on a runtime of their own; the worker runs in this
//! process with the default chunk budget. The MR has `--files` modified files of
//! [`HUNKS_PER_FILE`] hunks each. Push 2 adds one hunk to each of 2 files; push 3 rewrites
//! one added line in each of 5 files. Tokens are what the simulated model billed, read back
//! from `llm_calls` per review round.

use std::{
    fmt::Write as _,
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::bench::harness::{Rereview, review_job};
use crate::{
    bench::harness::{SIM_KEY as KEY, SIM_TOKEN as TOKEN},
    config::DbArgs,
    jobs::Dispatcher,
    jobs::LLM_RESOURCE,
    queue::{JobState, Queue, Worker, WorkerConfig},
    review::ChunkBudget,
    sim::{
        FakeGitLab, FakeGlm, FileSpec, GlmBehaviour, MrSpec,
        gitlab::{PushSpec, fake_sha},
    },
};

const PROJECT: &str = "bench/rounds";
/// Hunks per file in the first version: a realistic spread of edits through each file.
const HUNKS_PER_FILE: usize = 5;
/// Lines between the starts of two hunks in the base file.
const HUNK_STRIDE: usize = 40;

/// Arguments of `bench rounds`.
#[derive(Debug, Args)]
pub struct RoundsBenchArgs {
    /// Modified files in the merge request.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(5..=2000))]
    pub files: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One review round of the bench.
#[derive(Debug, Serialize)]
pub struct RoundReport {
    pub round: usize,
    /// `full` or `incremental`.
    pub scope: String,
    /// Hunks the push changed (round 1: the whole MR).
    pub changed_hunks: usize,
    pub chunks: i32,
    pub llm_calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// This round's tokens over round 1's.
    pub token_ratio: f64,
    /// This round's changed hunks over the MR's hunks.
    pub change_ratio: f64,
}

/// Results of `bench rounds`.
#[derive(Debug, Serialize)]
pub struct RoundsReport {
    pub files: u32,
    pub mr_hunks: usize,
    pub rounds: Vec<RoundReport>,
}

/// Runs `bench rounds`.
///
/// # Errors
/// Database and simulator errors; a round that does not finish in 5 minutes.
pub async fn run(db: &DbArgs, args: RoundsBenchArgs) -> anyhow::Result<ExitCode> {
    let pool = db.pool(8).await?;
    crate::migrate(&pool).await?;
    let queue = Queue::new(pool.clone());
    super::harness::ensure_idle(&queue).await?;
    let sim_runtime = super::harness::simulator_runtime()?;
    let gitlab = sim_runtime.spawn(FakeGitLab::start(TOKEN)).await??;
    let glm = sim_runtime
        .spawn(FakeGlm::start(KEY, GlmBehaviour::default()))
        .await??;
    let files = args.files as usize;
    let iid = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1);
    gitlab.add_merge_request(MrSpec {
        project_path: PROJECT.into(),
        project_id: 4444,
        iid,
        title: "A change across many files".into(),
        files: (0..files).map(|n| file(n, &Edits::default())).collect(),
        head_sha: fake_sha(&format!("{iid}-1")),
        ..MrSpec::default()
    })?;

    let deps = super::harness::sim_deps(&gitlab, &glm, ChunkBudget::default(), 1000)?;
    let config = WorkerConfig {
        concurrency: 8,
        limits: vec![(LLM_RESOURCE.to_owned(), 6)],
        ..WorkerConfig::default()
    };
    let stop = CancellationToken::new();
    let worker = Worker::new(queue.clone(), Dispatcher::with_review(deps), config);
    let running = tokio::spawn(worker.run(stop.clone()));

    let mr = format!("{PROJECT}:{iid}");
    let mut rounds = Vec::new();
    let mr_hunks = files * HUNKS_PER_FILE;
    let pushes: [(usize, Edits); 3] = [
        (mr_hunks, Edits::default()),
        (
            2,
            Edits {
                extra_hunk: vec![0, 1],
                rewritten: Vec::new(),
            },
        ),
        (
            5,
            Edits {
                extra_hunk: vec![0, 1],
                rewritten: (10..15).collect(),
            },
        ),
    ];
    let mut previous = Edits::default();
    for (round, (changed_hunks, edits)) in pushes.into_iter().enumerate() {
        if round > 0 {
            gitlab.push_with(
                PROJECT,
                iid,
                PushSpec {
                    files: (0..files).map(|n| file(n, &edits)).collect(),
                    head_sha: fake_sha(&format!("{iid}-{}", round + 1)),
                    delta: delta(&previous, &edits),
                    rewrite_history: false,
                },
            )?;
        }
        let report = review_round(&pool, &mr, round + 1).await?;
        let first_total = rounds
            .first()
            .map_or(report.total_tokens, |r: &RoundReport| r.total_tokens);
        rounds.push(RoundReport {
            changed_hunks,
            token_ratio: report.total_tokens as f64 / first_total.max(1) as f64,
            change_ratio: changed_hunks as f64 / mr_hunks as f64,
            ..report
        });
        previous = edits;
    }
    stop.cancel();
    running.await.context("the bench worker panicked")??;
    drop((gitlab, glm));
    sim_runtime.shutdown_background();

    let report = RoundsReport {
        files: args.files,
        mr_hunks,
        rounds,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "reviewq bench rounds: {} files, {} hunks; tokens per round as billed",
            report.files, report.mr_hunks
        )?;
        for r in &report.rounds {
            writeln!(
                out,
                "  round {} ({}): {} changed hunks ({:.1}% of the MR), {} chunks, {} calls, {} tokens = {:.3}x round 1",
                r.round,
                r.scope,
                r.changed_hunks,
                r.change_ratio * 100.0,
                r.chunks,
                r.llm_calls,
                r.total_tokens,
                r.token_ratio
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Enqueues one review of the MR and waits for it; its tokens from the ledger.
async fn review_round(pool: &PgPool, mr: &str, round: usize) -> anyhow::Result<RoundReport> {
    let queue = Queue::new(pool.clone());
    let id = Queue::enqueue(pool, &review_job(mr, Rereview::AsPushed)?)
        .await?
        .id();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = queue.get(id).await?;
        if job.state.is_finished() {
            anyhow::ensure!(
                job.state == JobState::Succeeded,
                "round {round} ended {}: {:?}",
                job.state,
                job.last_error
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "round {round} took over 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = sqlx::query!(
        r#"
        select r.scope, r.chunk_count, count(c.id) as "calls!",
            coalesce(sum(c.prompt_tokens), 0)::int8 as "prompt!",
            coalesce(sum(c.completion_tokens), 0)::int8 as "completion!",
            coalesce(sum(c.total_tokens), 0)::int8 as "total!"
        from reviews r left join llm_calls c on c.review_id = r.id
        where r.job_id = $1
        group by r.id
        "#,
        id.get()
    )
    .fetch_one(pool)
    .await?;
    Ok(RoundReport {
        round,
        scope: r.scope,
        changed_hunks: 0,
        chunks: r.chunk_count,
        llm_calls: r.calls,
        prompt_tokens: r.prompt,
        completion_tokens: r.completion,
        total_tokens: r.total,
        token_ratio: 1.0,
        change_ratio: 1.0,
    })
}

/// What the pushes changed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Edits {
    /// Files with one more hunk after their last one.
    extra_hunk: Vec<usize>,
    /// Files whose second added line of hunk 2 was rewritten.
    rewritten: Vec<usize>,
}

/// The second added line of hunk `k` of file `n`.
fn added_line(n: usize, k: usize, rewritten: bool) -> String {
    if rewritten {
        format!("+    let b{k} = fetch_{n}({k}).await?; // retried by the caller now")
    } else {
        format!("+    let b{k} = fetch_{n}({k}).await.unwrap(); // padding the line a bit")
    }
}

/// File `n`'s MR diff (against the base) after `edits`.
fn file(n: usize, edits: &Edits) -> FileSpec {
    let mut diff = String::new();
    for k in 0..HUNKS_PER_FILE {
        let old = 1 + k * HUNK_STRIDE;
        let new = old + 2 * k;
        let _ = writeln!(diff, "@@ -{old},6 +{new},8 @@ fn f{n}_{k}()");
        let _ = writeln!(
            diff,
            " fn f{n}_{k}(input: &Input) -> Result<Output, Error> {{"
        );
        let _ = writeln!(diff, "     let context = prepare(input, \"{n}-{k}\")?;");
        let _ = writeln!(
            diff,
            "+    let a{k} = compute(&context, {k}); // added by this merge request"
        );
        let _ = writeln!(
            diff,
            "{}",
            added_line(n, k, k == 2 && edits.rewritten.contains(&n))
        );
        for line in 0..4 {
            let _ = writeln!(
                diff,
                "     context.step({line}); // unchanged context line number {line}"
            );
        }
    }
    if edits.extra_hunk.contains(&n) {
        diff.push_str(&extra_hunk(n, true));
    }
    FileSpec::modified(&format!("src/module_{n:03}.rs"), &diff)
}

/// The hunk push 2 adds at the end of file `n`: in MR coordinates (`against_base`) or in
/// the push's own (old side = the previous head).
fn extra_hunk(n: usize, against_base: bool) -> String {
    let old_base = 1 + HUNKS_PER_FILE * HUNK_STRIDE;
    let new = old_base + 2 * HUNKS_PER_FILE;
    let old = if against_base { old_base } else { new };
    format!(
        "@@ -{old},2 +{new},4 @@ fn tail_{n}()\n fn tail_{n}() {{\n+    // TODO: handle the empty case of module {n}\n+    let tail = finish({n}).unwrap();\n }}\n"
    )
}

/// What `compare(previous head, new head)` answers: the push's own hunks.
fn delta(previous: &Edits, edits: &Edits) -> Vec<FileSpec> {
    let mut files = Vec::new();
    let touched = edits
        .extra_hunk
        .iter()
        .chain(&edits.rewritten)
        .copied()
        .collect::<std::collections::BTreeSet<_>>();
    for n in touched {
        let mut diff = String::new();
        if edits.rewritten.contains(&n) && !previous.rewritten.contains(&n) {
            // Hunk 2's second added line, in head coordinates (both sides).
            let line = 1 + 2 * HUNK_STRIDE + 2 * 2 + 3;
            let _ = writeln!(diff, "@@ -{line},1 +{line},1 @@ fn f{n}_2()");
            let _ = writeln!(diff, "-{}", &added_line(n, 2, false)[1..]);
            let _ = writeln!(diff, "{}", added_line(n, 2, true));
        }
        if edits.extra_hunk.contains(&n) && !previous.extra_hunk.contains(&n) {
            diff.push_str(&extra_hunk(n, false));
        }
        if !diff.is_empty() {
            files.push(FileSpec::modified(&format!("src/module_{n:03}.rs"), &diff));
        }
    }
    files
}
