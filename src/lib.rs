//! reviewq reviews GitLab merge requests with GLM models on a durable Postgres job queue.
//!
//! # Layout
//!
//! - [`queue`]: the job queue (claim, lease, heartbeat, fencing, retries, rescue,
//!   parents and children, fleet-wide limits, the worker runtime). Knows nothing of
//!   GitLab, LLMs or reviews.
//! - [`jobs`]: the job kinds and the dispatcher the worker calls; the only place that
//!   wires the queue to the rest.
//! - [`gitlab`], [`llm`]: HTTP clients for GitLab and OpenAI-compatible LLM endpoints.
//!   They know nothing of the queue; each classifies its own errors.
//! - [`review`]: the pure review domain (diff parsing, skipping, chunking, prompts,
//!   findings, anchoring, rendering). No I/O.
//! - [`mr_ref`]: merge-request references as users type them.
//! - [`disposition`]: how a failure should be handled, decided where it happens.
//! - [`localdb`]: a private PostgreSQL cluster from the local binaries.
//! - [`cli`]: one file per command (the one-shot `review` and `demo` among them); with
//!   [`config`], [`telemetry`] and [`shutdown`], the edges.
//! - [`spend`]: budgets and the fleet-wide LLM pause, the `llm_calls` ledger, and the `usage`
//!   report read from it.
//! - [`codequality_report`]: `codequality` and `review --codequality`, GitLab's Code Quality
//!   report of a head from the database.
//! - [`server`]: `reviewq serve`, the GitLab webhook receiver, `/healthz` and `/metrics`.
//! - [`bench`]: the built-in benchmarks, one file each, and their shared harness.
//! - [`sim`]: simulated GitLab and GLM servers on loopback, for `demo`, `bench e2e` and tests.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod codequality_report;
pub mod config;
pub mod disposition;
pub mod gitlab;
pub mod jobs;
pub mod llm;
pub mod localdb;
pub mod mr_ref;
pub mod queue;
pub mod review;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod spend;
pub mod telemetry;

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies pending migrations. Safe to run concurrently from several processes (sqlx
/// takes an advisory lock) and again at every start.
///
/// # Errors
/// Database errors, or a migration that was edited after being applied.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
