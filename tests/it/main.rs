//! reviewq's integration tests: one binary, real Postgres (a fresh database per test via
//! `#[sqlx::test]`), real worker processes, fake servers over real HTTP.

mod adapter;
mod browser;
mod chaos;
mod cli;
mod console;
mod conversations;
mod describe;
mod findings;
mod floors;
mod gitlab;
mod hostile;
mod leases;
mod limits;
mod llm;
mod pipeline;
mod postgres;
mod processes;
mod queue;
mod retries;
mod rounds;
mod server;
mod sim;
mod spend;
mod support;
mod tls;
mod usage;
