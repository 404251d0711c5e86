//! reviewq's integration tests: one binary, real Postgres (a fresh database per test via
//! `#[sqlx::test]`), real worker processes, fake servers over real HTTP.

mod cli;
mod helpers;
mod processes;
mod queue;
