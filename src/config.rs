//! Settings shared by several commands. Every flag is also an environment variable;
//! flags win.

use std::time::Duration;

use clap::Args;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Bad input from the user: exit code 2, and nothing was written. It lives here, below the
/// commands, because settings parsing, the server and the benches raise it too.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

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
    /// Parsed connection options. Without a URL, local mode: a private cluster from the
    /// machine's PostgreSQL binaries, created and started on first use.
    ///
    /// # Errors
    /// A usage error if the URL is malformed (never echoing the URL itself, which may hold
    /// a password); a runtime error if local mode cannot start its cluster.
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        let url = match self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(url) => url.to_owned(),
            None => local_cluster()?.url(),
        };
        let options = url.parse::<PgConnectOptions>().map_err(|e| {
            UsageError(format!(
                "DATABASE_URL is not a valid Postgres URL ({}); expected postgres://user:password@host/database",
                redact_error(&e.to_string(), &url)
            ))
        })?;
        // Every query reviewq runs is a short, index-driven statement written so that its
        // generic plan is the right plan; re-planning them on each call (the default for
        // the first executions and for array parameters) costs more than executing them.
        // JIT compilation, which the planner turns on from cost estimates alone, never pays
        // for itself on such statements: it added 20 ms to a 50 ms spend report.
        Ok(options.options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")]))
    }

    /// The URL to hand to worker processes: the configured one, or local mode's.
    ///
    /// # Errors
    /// Local mode failures.
    pub fn url(&self) -> anyhow::Result<String> {
        match self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(url) => Ok(url.to_owned()),
            None => Ok(local_cluster()?.url()),
        }
    }

    /// Opens a pool sized for `default_size` unless configured.
    ///
    /// # Errors
    /// Usage errors for a bad URL; connection errors.
    pub async fn pool(&self, default_size: u32) -> anyhow::Result<PgPool> {
        let options = self.connect_options()?;
        let size = self.db_pool_size.unwrap_or(default_size).max(2);
        let pool = PgPoolOptions::new()
            .max_connections(size)
            // Kept open from the start: a burst of jobs would otherwise wait for new
            // connections (each a TCP handshake and a SCRAM exchange) just when the first
            // slots of the LLM limit are handed out (measured: ~110 ms lost per burst).
            .min_connections(size / 2)
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

/// Where local mode keeps its cluster: `$REVIEWQ_HOME`, else `$XDG_DATA_HOME/reviewq`, else
/// `~/.local/share/reviewq`.
pub fn local_home() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("REVIEWQ_HOME") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return std::path::PathBuf::from(dir).join("reviewq");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    std::path::PathBuf::from(home).join(".local/share/reviewq")
}

/// Local mode's cluster, not started: where it lives and how to reach it.
///
/// # Errors
/// No PostgreSQL binaries.
pub fn local_cluster_config() -> anyhow::Result<crate::localdb::Cluster> {
    Ok(crate::localdb::Cluster::new(
        &local_home().join("postgres"),
    )?)
}

/// Where local mode's cluster lives, in words: the directory, and why it is not under the
/// home directory when it had to move.
pub fn describe_local_cluster(cluster: &crate::localdb::Cluster) -> String {
    match (cluster.relocated_from(), cluster.server_account()) {
        (Some(requested), Some(account)) => format!(
            "{} (instead of {}: the `{account}` account that runs the server as root cannot enter that directory)",
            cluster.data_dir().display(),
            requested.display()
        ),
        _ => cluster.data_dir().display().to_string(),
    }
}

/// Local mode's cluster, started if it is not running.
///
/// # Errors
/// No PostgreSQL binaries (the message says how to get them or to set DATABASE_URL), or
/// the cluster failed to start.
pub fn local_cluster() -> anyhow::Result<crate::localdb::Cluster> {
    let cluster = local_cluster_config()?;
    if !cluster.is_running() {
        tracing::info!(dir = %cluster.data_dir().display(), "local mode: starting a private PostgreSQL cluster (set DATABASE_URL to use your own)");
    }
    cluster.start()?;
    Ok(cluster)
}

/// Removes any copy of `secret` from a message.
pub fn redact_error(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        message.to_owned()
    } else {
        message.replace(secret, "[redacted]")
    }
}

/// Where GitLab is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct GitLabArgs {
    /// The GitLab instance.
    #[arg(long, env = "GITLAB_URL", default_value = "https://gitlab.com")]
    pub gitlab_url: url::Url,

    /// Token with `api` scope, sent as PRIVATE-TOKEN. Never printed.
    #[arg(long, env = "GITLAB_TOKEN", hide_env_values = true)]
    pub gitlab_token: Option<secrecy::SecretString>,

    /// Seconds per GitLab request.
    #[arg(long, env = "GITLAB_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gitlab_timeout: u64,

    /// Extra PEM CA certificate file for a self-hosted GitLab with a private CA.
    #[arg(long, env = "GITLAB_CA_CERT")]
    pub gitlab_ca_cert: Option<std::path::PathBuf>,

    /// Seconds one GitLab request keeps being retried (429, 5xx, timeouts, broken
    /// connections) before the review hands it back to the queue; 0 sends each request once.
    #[arg(long, env = "GITLAB_RETRY_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub gitlab_retry_secs: u64,

    /// Most GitLab requests started in any minute by the whole fleet (unset: no cap). Set it
    /// below the bot user's rate limit (GitLab.com: 2,000 per minute).
    #[arg(long, env = "GITLAB_REQUESTS_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub gitlab_requests_per_minute: Option<u32>,

    /// Most GitLab requests in flight across the whole fleet (unset: no cap).
    #[arg(long, env = "GITLAB_CONCURRENT_REQUESTS", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub gitlab_concurrent_requests: Option<u32>,
}

impl GitLabArgs {
    /// The host (and port, if any) of the configured instance, as MR URLs name it.
    pub fn host(&self) -> String {
        let host = self.gitlab_url.host_str().unwrap_or_default();
        match self.gitlab_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The fleet's GitLab request budget.
    pub fn budget(&self) -> crate::jobs::gitlab_budget::GitLabBudget {
        crate::jobs::gitlab_budget::GitLabBudget {
            concurrent_requests: self.gitlab_concurrent_requests,
            requests_per_minute: self.gitlab_requests_per_minute,
        }
    }

    /// The fleet-wide limits a worker sets at start: the GitLab concurrency slots, if capped.
    pub fn limits(&self) -> Vec<(String, u32)> {
        self.gitlab_concurrent_requests
            .map(|n| (crate::jobs::gitlab_budget::GITLAB_RESOURCE.to_owned(), n))
            .into_iter()
            .collect()
    }

    /// Builds the client.
    ///
    /// # Errors
    /// A usage error naming what is missing or invalid.
    pub fn client(&self) -> Result<crate::gitlab::GitLabClient, UsageError> {
        let token = self.gitlab_token.clone().ok_or_else(|| {
            UsageError("GITLAB_TOKEN is not set: create a token with the `api` scope and set GITLAB_TOKEN (or --gitlab-token)".into())
        })?;
        let mut config = crate::gitlab::GitLabConfig::new(self.gitlab_url.clone(), token);
        config.timeout = Duration::from_secs(self.gitlab_timeout);
        config.retry_for = Duration::from_secs(self.gitlab_retry_secs);
        if let Some(path) = &self.gitlab_ca_cert {
            config.ca_cert_pem = Some(std::fs::read(path).map_err(|e| {
                UsageError(format!(
                    "cannot read GITLAB_CA_CERT {}: {e}",
                    path.display()
                ))
            })?);
        }
        crate::gitlab::GitLabClient::new(config).map_err(|e| UsageError(e.to_string()))
    }
}

/// The default LLM endpoint (Zhipu's BigModel, OpenAI-compatible).
pub const DEFAULT_GLM_BASE_URL: &str = "https://open.bigmodel.cn/api/paas/v4";

/// Who may talk to the bot in merge request comments, and how often.
#[derive(Debug, Clone, Args)]
pub struct ConversationArgs {
    /// The lowest project role whose commands and questions the bot takes; others get one
    /// polite refusal per merge request.
    #[arg(
        long,
        env = "REVIEWQ_CONVERSATION_MIN_ROLE",
        value_enum,
        default_value = "developer"
    )]
    pub conversation_min_role: crate::jobs::conversation::MinRole,

    /// Questions (and requested rounds) answered per hour, per author and per merge request;
    /// 0: no limit.
    #[arg(long, env = "REVIEWQ_QUESTIONS_PER_HOUR", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub questions_per_hour: u32,
}

impl ConversationArgs {
    /// The policy these settings describe.
    pub fn policy(&self) -> crate::jobs::conversation::ConversationPolicy {
        crate::jobs::conversation::ConversationPolicy::new(
            self.conversation_min_role,
            self.questions_per_hour,
        )
    }
}

/// Which LLM endpoint and model to use.
#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// Key for the LLM endpoint, sent as `Authorization: Bearer`. Never printed. Not
    /// needed for a local Ollama or vLLM.
    #[arg(long, env = "GLM_API_KEY", hide_env_values = true)]
    pub glm_api_key: Option<secrecy::SecretString>,

    /// OpenAI-compatible base URL; `/chat/completions` is appended.
    #[arg(long, env = "GLM_BASE_URL", default_value = DEFAULT_GLM_BASE_URL)]
    pub glm_base_url: url::Url,

    /// Model name.
    #[arg(long, env = "GLM_MODEL", default_value = crate::llm::DEFAULT_MODEL)]
    pub glm_model: String,

    /// Seconds per LLM request.
    #[arg(long, env = "GLM_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub glm_timeout: u64,

    /// Seconds one chunk may take in all, retries and waiting for a slot included.
    #[arg(long, env = "CHUNK_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub chunk_timeout: u64,

    /// Most LLM requests in flight across all workers sharing the database.
    #[arg(long, env = "GLM_CONCURRENT_REQUESTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub glm_concurrent_requests: u32,

    /// Send `response_format: json_object` (turn off for servers that reject it).
    #[arg(long, env = "GLM_JSON_MODE", default_value_t = true, action = clap::ArgAction::Set)]
    pub glm_json_mode: bool,

    /// Estimated prompt tokens per chunk (the rest of the context is left for the answer).
    #[arg(long, env = "REVIEWQ_CHUNK_TOKENS", default_value_t = crate::review::chunk::DEFAULT_MAX_PROMPT_TOKENS)]
    pub chunk_tokens: usize,

    /// Most chunks (LLM prompts) one review sends; files beyond are skipped and listed in
    /// the summary. Caps the spend of a gigantic merge request.
    #[arg(long, env = "REVIEWQ_MAX_CHUNKS", default_value_t = crate::review::chunk::DEFAULT_MAX_CHUNKS)]
    pub max_chunks: usize,

    /// Tokens the whole fleet may spend per UTC day; when spent, no LLM call starts and
    /// reviews wait (with the reason in `status`) until the next day or a higher budget.
    /// Unset: no fleet-wide budget. Per-project budgets: `reviewq budget set`.
    #[arg(long, env = "REVIEWQ_DAILY_TOKEN_BUDGET", value_parser = clap::value_parser!(u64).range(1..))]
    pub daily_token_budget: Option<u64>,

    /// Seconds between probe calls while LLM work is paused because the provider said
    /// the account is out of balance or over quota (a reset time it gives wins).
    #[arg(long, env = "REVIEWQ_QUOTA_PROBE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub quota_probe_secs: u64,

    /// Seconds between checks of a job waiting for a spent budget.
    #[arg(long, env = "REVIEWQ_BUDGET_RECHECK_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub budget_recheck_secs: u64,
}

impl LlmArgs {
    /// The spend policy these settings give.
    pub fn spend(&self) -> crate::spend::SpendPolicy {
        crate::spend::SpendPolicy {
            daily_tokens: self.daily_token_budget,
            probe_interval: Duration::from_secs(self.quota_probe_secs),
            budget_recheck: Duration::from_secs(self.budget_recheck_secs),
        }
    }

    /// Builds the client.
    ///
    /// # Errors
    /// A usage error naming what is missing or invalid.
    pub fn client(&self) -> Result<crate::llm::LlmClient, UsageError> {
        if self.glm_api_key.is_none()
            && self.glm_base_url.as_str().trim_end_matches('/') == DEFAULT_GLM_BASE_URL
        {
            return Err(UsageError(
                "GLM_API_KEY is not set: set it to your BigModel/Z.ai key (or point GLM_BASE_URL at a server that needs none, such as Ollama)".into(),
            ));
        }
        if self.glm_model.trim().is_empty() {
            return Err(UsageError(
                "GLM_MODEL is empty: name a model such as glm-4.6".into(),
            ));
        }
        let mut config = crate::llm::LlmConfig::new(
            self.glm_base_url.clone(),
            self.glm_api_key.clone(),
            self.glm_model.clone(),
        );
        config.timeout = Duration::from_secs(self.glm_timeout);
        config.json_mode = self.glm_json_mode;
        crate::llm::LlmClient::new(config).map_err(|e| UsageError(e.to_string()))
    }

    /// The chunk budget.
    ///
    /// # Errors
    /// A usage error when the budget is too small to hold a prompt.
    pub fn budget(&self) -> Result<crate::review::ChunkBudget, UsageError> {
        crate::review::ChunkBudget::new(self.chunk_tokens)
            .map_err(|e| UsageError(format!("REVIEWQ_CHUNK_TOKENS={}: {e}", self.chunk_tokens)))
    }
}
