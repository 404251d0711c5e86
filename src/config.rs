//! Settings shared by several commands. Every flag is also an environment variable;
//! flags win.

use std::time::Duration;

use clap::Args;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::cli::UsageError;

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres connection URL. Its password is never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Most connections this process opens. The worker needs about one per two jobs in
    /// flight plus four for its claim, completion, heartbeat and listener.
    #[arg(long, env = "REVIEWQ_DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<u32>,
}

/// Longest wait for a connection from the pool before an operation fails (and, in a
/// worker, is retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl DbArgs {
    /// Parsed connection options.
    ///
    /// # Errors
    /// A usage error if the URL is missing or malformed (never echoing the URL itself,
    /// which may hold a password).
    pub fn connect_options(&self) -> Result<PgConnectOptions, UsageError> {
        let Some(url) = self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Err(UsageError(
                "DATABASE_URL is not set: set it (or --database-url) to a Postgres URL such as \
                 postgres://user:password@localhost/reviewq"
                    .into(),
            ));
        };
        let options = url.parse::<PgConnectOptions>().map_err(|e| {
            UsageError(format!(
                "DATABASE_URL is not a valid Postgres URL ({}); expected postgres://user:password@host/database",
                redact_error(&e.to_string(), url)
            ))
        })?;
        // Every query reviewq runs is a short, index-driven statement written so that its
        // generic plan is the right plan; re-planning them on each call (the default for
        // the first executions and for array parameters) costs more than executing them.
        Ok(options.options([("plan_cache_mode", "force_generic_plan")]))
    }

    /// Opens a pool sized for `default_size` unless configured.
    ///
    /// # Errors
    /// Usage errors for a bad URL; connection errors.
    pub async fn pool(&self, default_size: u32) -> anyhow::Result<PgPool> {
        let options = self.connect_options()?;
        let pool = PgPoolOptions::new()
            .max_connections(self.db_pool_size.unwrap_or(default_size).max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "could not connect to Postgres: {e}. Is it running, and is DATABASE_URL right?"
                )
            })?;
        Ok(pool)
    }
}

/// Removes any copy of `secret` from a message.
pub fn redact_error(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        message.to_owned()
    } else {
        message.replace(secret, "[redacted]")
    }
}
