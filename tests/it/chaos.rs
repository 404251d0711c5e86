//! Chaos: fleets of real `reviewq worker` processes reviewing merge requests on real
//! Postgres, against the simulated GitLab and GLM over HTTP, while the test kills workers,
//! restarts or starves the database and makes both services misbehave. Every scenario ends
//! with the same checks ([`assert_invariants`]) and prints one summary line (the numbers in
//! `docs/RELIABILITY.md`).
//!
//! The kill scenario's fault phase lasts `REVIEWQ_CHAOS_SECS` seconds (default
//! [`DEFAULT_CHAOS_SECS`]); a soak run is
//! `REVIEWQ_CHAOS_SECS=600 cargo test --test it chaos::a_fleet_sigkilled -- --nocapture`.
//! Each run prints its random seed; `REVIEWQ_CHAOS_SEED=N` reuses it (the kill intervals
//! and random picks; which worker a targeted kill hits still depends on timing).
//! Worker logs are kept (and their tails printed) when a scenario fails, or always with
//! `REVIEWQ_CHAOS_KEEP_LOGS=1`.

use crate::support::{KEY, TOKEN};
use std::time::Duration;

use reviewq::{
    jobs::review::ReviewArgs,
    queue::{JobId, Queue},
    sim::{
        FakeGitLab, FakeGlm, GlmBehaviour, MrSpec, fixtures::sized_merge_request, gitlab::fake_sha,
    },
};
use sqlx::PgPool;

mod database;
mod flaky_glm;
mod fleet;
mod held_locks;
mod invariants;
mod kills;
mod throttling;

use crate::support::{PROJECT, mixed_mr};

/// Worker processes in every fleet: a killed one leaves two to rescue its jobs.
const FLEET: usize = 3;
/// Jobs each worker runs at once: enough for a kill to interrupt several stages at once.
const CONCURRENCY: &str = "3";
/// Every worker's lease (`--lease-secs`, the CLI's minimum): a killed worker's jobs run
/// again about this long after it died, which keeps the scenarios short.
const LEASE: Duration = Duration::from_secs(3);
/// How much longer than a lease a dead worker's job may still show `running`: the
/// rescuer's period (a sixth of the lease) plus scheduling slack on a loaded 2-core runner.
const RESCUE_SLACK: Duration = Duration::from_secs(3);
/// `GLM_CONCURRENT_REQUESTS` of every fleet: below the fleet's 9 job slots, so the fleet
/// limit is what holds the fake GLM's in-flight peak down.
const GLM_LIMIT: usize = 2;
/// Default length of the kill scenario's fault phase; with the final drain the scenario
/// takes 38-45 s.
const DEFAULT_CHAOS_SECS: u64 = 38;
/// No new review starts this close to the end of the kill phase: a review under kills
/// takes about this long, so the scenario ends soon after the phase does.
const ROUND_HEADROOM: Duration = Duration::from_secs(6);
/// Longest wait for a fleet to settle once the faults stop; past it the test fails with
/// the job table instead of hanging.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Merge requests reviewed in each round of the kill scenario: "a dozen".
const KILL_MRS: u64 = 12;

/// A reproducible random schedule without a dependency (xorshift64*); the field is the
/// generator's state.
struct Rng(u64);

impl Rng {
    /// Seeded from `REVIEWQ_CHAOS_SEED`, else the clock; the seed is printed for replays.
    fn from_env(scenario: &str) -> Self {
        let seed = std::env::var("REVIEWQ_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("the clock is after 1970")
                    .as_nanos() as u64
            });
        eprintln!("chaos[{scenario}]: seed {seed} (REVIEWQ_CHAOS_SEED={seed} reuses it)");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// The kill scenario's fault phase, from `REVIEWQ_CHAOS_SECS`.
fn chaos_secs() -> Duration {
    Duration::from_secs(
        std::env::var("REVIEWQ_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_CHAOS_SECS),
    )
}

/// The two simulated services.
struct Sims {
    /// Serves the MRs, stores the comments and injects GitLab's failures.
    gitlab: FakeGitLab,
    /// Answers the chunks, bills usage, counts requests in flight, injects GLM's failures.
    glm: FakeGlm,
}

impl Sims {
    async fn start(glm: GlmBehaviour) -> Self {
        Self {
            gitlab: FakeGitLab::start(TOKEN).await.unwrap(),
            glm: FakeGlm::start(KEY, glm).await.unwrap(),
        }
    }

    /// Adds merge requests `iids` of the chaos project at their first head.
    fn add(&self, iids: impl IntoIterator<Item = u64>) {
        for iid in iids {
            self.gitlab.add_merge_request(chaos_mr(iid, 0)).unwrap();
        }
    }
}

/// The title tag of MR `iid`, unique in every prompt (a GLM prompt rule's needle).
fn tag(iid: u64) -> String {
    format!("[chaos-mr-{iid:02}]")
}

/// MR `iid` of the chaos project at push `round`: odd ones are the pipeline tests' mixed
/// MR (one chunk with inline, unanchorable and skipped parts), even ones generated code of
/// two chunks with a dozen findings.
fn chaos_mr(iid: u64, round: u32) -> MrSpec {
    let base = if iid % 2 == 1 {
        mixed_mr(iid)
    } else {
        sized_merge_request(PROJECT, 77, iid, 3, 150)
    };
    MrSpec {
        title: format!("Chaos change {}", tag(iid)),
        head_sha: fake_sha(&format!("chaos-{iid}-{round}")),
        ..base
    }
}

/// Enqueues a review of MR `iid` (an unfinished one for the MR is returned as is).
async fn enqueue(pool: &PgPool, iid: u64) -> JobId {
    let options = crate::support::options();
    let mr = format!("{PROJECT}:{iid}").parse().unwrap();
    Queue::enqueue(pool, &ReviewArgs::new(mr, &options).job(0))
        .await
        .unwrap()
        .id()
}

/// The database URL workers get: tagged with an application name so that the test can
/// terminate their backends and no one else's.
fn worker_url(url: &str) -> String {
    let mut url: url::Url = url.parse().expect("database URL");
    url.query_pairs_mut()
        .append_pair("application_name", "chaos-worker");
    url.to_string()
}
