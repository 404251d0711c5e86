//! The review pipeline's test harness: a fresh database's queue and a worker driven step by
//! step, with the simulated GitLab and GLM over real HTTP speaking the exact wire formats.
//! Shared by the pipeline, rounds, findings, describe, conversations and chaos tests.

use std::time::{Duration, Instant};

use reviewq::{
    gitlab::{GitLabClient, GitLabConfig},
    jobs::{
        Dispatcher,
        gitlab_budget::GitLabBudget,
        review::{ReviewArgs, ReviewDeps, ReviewOptions},
    },
    llm::{LlmClient, LlmConfig},
    mr_ref::MrRef,
    queue::{JobId, JobState, Limiter, Queue, RetryPolicy, Worker, WorkerConfig},
    review::{ChunkBudget, ReviewType},
    sim::{FakeGitLab, FakeGlm, FileSpec, GlmBehaviour, MrSpec},
    spend::SpendPolicy,
};
use secrecy::SecretString;
use sqlx::PgPool;

pub const TOKEN: &str = "glpat-pipeline-test";
pub const KEY: &str = "glm-pipeline-test";
pub const PROJECT: &str = "acme/shop";

/// An MR with every kind of change: a modified file with added, removed and context lines,
/// an added file, a deleted file, a renamed file with an edit, and a line that makes the
/// fake model cite a file outside the diff.
pub fn mixed_mr(iid: u64) -> MrSpec {
    MrSpec {
        project_path: PROJECT.into(),
        project_id: 77,
        iid,
        title: "Checkout rework".into(),
        description: "Reworks checkout.".into(),
        files: vec![
            FileSpec::modified(
                "src/cart.rs",
                "@@ -1,5 +1,5 @@ fn total()\n fn total(items: &[Item]) -> u64 {\n-    assert!(!items.is_empty());\n+    let first = items.first().unwrap();\n     let mut sum = 0;\n     for i in items { sum += i.price; }\n     sum\n",
            ),
            FileSpec::added(
                "src/db.rs",
                "@@ -0,0 +1,3 @@\n+pub fn find(name: &str) -> String {\n+    format!(\"SELECT * FROM users WHERE name = '{}'\", name) + \"\"\n+}\n",
            ),
            FileSpec::deleted(
                "src/legacy.rs",
                "@@ -1,2 +0,0 @@\n-// old code\n-fn legacy() {}\n",
            ),
            FileSpec::renamed(
                "src/util.rs",
                "src/helpers.rs",
                "@@ -1,2 +1,3 @@\n fn helper() {\n+    println!(\"debug\"); // REVIEWQ_UNANCHORED\n }\n",
            ),
        ],
        ..MrSpec::default()
    }
}

pub struct Harness {
    pub pool: PgPool,
    pub queue: Queue,
    pub gitlab: FakeGitLab,
    pub glm: FakeGlm,
    pub worker: Worker<Dispatcher>,
}

impl Harness {
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, SpendPolicy::default()).await
    }

    pub async fn start_with(pool: PgPool, spend: SpendPolicy) -> Self {
        let gitlab = FakeGitLab::start(TOKEN).await.unwrap();
        let glm = FakeGlm::start(KEY, GlmBehaviour::default()).await.unwrap();
        gitlab.add_merge_request(mixed_mr(1)).unwrap();
        let mut gl = GitLabConfig::new(
            gitlab.base_url().parse().unwrap(),
            SecretString::from(TOKEN),
        );
        gl.timeout = Duration::from_secs(5);
        gl.diff_refs_delay = Duration::from_millis(10);
        let mut llm = LlmConfig::new(
            glm.base_url().parse().unwrap(),
            Some(SecretString::from(KEY)),
            "glm-4.6",
        );
        llm.timeout = Duration::from_secs(5);
        let deps = ReviewDeps {
            gitlab: GitLabClient::new(gl).unwrap(),
            llm: LlmClient::new(llm).unwrap(),
            budget: ChunkBudget::new(24_000).unwrap(),
            chunk_timeout: Duration::from_secs(30),
            max_chunks: 50,
            spend,
            gitlab_budget: GitLabBudget::default(),
            conversation: Default::default(),
        };
        let queue = Queue::new(pool.clone());
        Limiter::set_capacity(&pool, "llm", 3).await.unwrap();
        let config = WorkerConfig {
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                factor: 2.0,
                cap: Duration::from_millis(200),
                jitter: false,
                budget: Duration::ZERO,
            },
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), Dispatcher::with_review(deps), config);
        Self {
            pool,
            queue,
            gitlab,
            glm,
            worker,
        }
    }

    pub async fn enqueue(&self, iid: u64, options: ReviewOptions) -> JobId {
        let mr: MrRef = format!("{PROJECT}:{iid}").parse().unwrap();
        Queue::enqueue(&self.pool, &ReviewArgs::new(mr, &options).job(0))
            .await
            .unwrap()
            .id()
    }

    /// Runs the worker until every given job has ended, waiting out retry delays.
    pub async fn run(&self, ids: &[JobId]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.worker.drain().await.unwrap();
            let mut done = true;
            for id in ids {
                done &= self.queue.get(*id).await.unwrap().state.is_finished();
            }
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "jobs did not end in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn state(&self, id: JobId) -> JobState {
        self.queue.get(id).await.unwrap().state
    }

    pub async fn outbox_states(&self, id: JobId) -> Vec<(String, String)> {
        sqlx::query_as(
            "select o.kind, o.state from outbox o join reviews r on r.id = o.review_id
             where r.job_id = $1 and (o.kind = 'inline' or o.key = 'summary') order by o.key",
        )
        .bind(id.get())
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn ledger_tokens(&self) -> (i64, i64) {
        sqlx::query_as("select count(*), coalesce(sum(total_tokens), 0)::int8 from llm_calls")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn options() -> ReviewOptions {
    ReviewOptions {
        review_type: ReviewType::General,
        dry_run: false,
        force: false,
        full: false,
    }
}
