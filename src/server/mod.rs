//! `reviewq serve`: the GitLab webhook receiver, `/healthz` and `/metrics`.
//!
//! Handlers are thin: the webhook decides from the payload alone (no GitLab call) and then
//! writes one short transaction, so GitLab (which waits about 10 s and disables a hook
//! after repeated failures) gets its answer in milliseconds. Reviews run on workers.
//!
//! - `POST /webhooks/gitlab` ([`webhook`]): merge request events to review jobs.
//! - `GET /healthz`: 200 when the database answers, 503 otherwise.
//! - `GET /metrics` ([`metrics`]): Prometheus text, computed with SQL at scrape time.
//! - `/ui` ([`ui`]): the web console, when `REVIEWQ_UI_PASSWORD` is set.

pub mod error;
pub mod metrics;
mod note_hook;
pub mod ui;
pub mod webhook;

use std::{future::Future, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    routing::{get, post},
};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::error::ApiError;
use crate::{config::DbArgs, config::UsageError, review::ReviewType};

/// Longest time a request may wait for the database before answering 503. GitLab gives up
/// after about 10 s; answering sooner lets it retry instead of counting a timeout.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Default largest webhook body. GitLab's merge request payloads are a few KiB, but one
/// carrying a long description (up to 1 MiB of text) twice, in `object_attributes` and in
/// `changes`, can reach a few MiB; refusing it would count as a failed delivery.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Webhook deliveries are remembered this long for deduplication (GitLab retries a
/// delivery within hours, never days).
const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "REVIEWQ_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The secret token configured on the GitLab webhook; deliveries must carry it in
    /// `X-Gitlab-Token`. Required. Never printed or logged.
    #[arg(long, env = "REVIEWQ_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,

    /// Review draft merge requests too (by default they are reviewed once marked ready).
    #[arg(long, env = "REVIEWQ_REVIEW_DRAFTS")]
    pub review_drafts: bool,

    /// Review only merge requests carrying at least one of these labels (comma-separated;
    /// case-insensitive). Empty: no requirement.
    #[arg(long, env = "REVIEWQ_REQUIRE_LABELS", value_delimiter = ',')]
    pub require_labels: Vec<String>,

    /// Never review merge requests carrying any of these labels (comma-separated;
    /// case-insensitive).
    #[arg(long, env = "REVIEWQ_SKIP_LABELS", value_delimiter = ',')]
    pub skip_labels: Vec<String>,

    /// What webhook-triggered reviews look for: general, security or performance.
    #[arg(long, env = "REVIEWQ_REVIEW_TYPE", default_value = "general")]
    pub review_type: ReviewType,

    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "REVIEWQ_WEBHOOK_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// The bot's GitLab user id (`GET /user` with its token), so its own comments are
    /// ignored by the webhook itself; without it the conversation job ignores them.
    #[arg(long, env = "REVIEWQ_BOT_USER_ID")]
    pub bot_user_id: Option<u64>,

    /// The web console's settings.
    #[command(flatten)]
    pub ui: ui::UiArgs,
}

/// What the webhook acts on, resolved from [`ServeArgs`] (or built directly by tests).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Expected `X-Gitlab-Token`.
    pub secret: SecretString,
    /// Review drafts too.
    pub review_drafts: bool,
    /// At least one of these labels is required (lower-cased); empty: none.
    pub require_labels: Vec<String>,
    /// None of these labels may be present (lower-cased).
    pub skip_labels: Vec<String>,
    /// The review type of the jobs enqueued.
    pub review_type: ReviewType,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// The bot's GitLab user id: its own notes are ignored at once. Unset, they are
    /// enqueued and the conversation job ignores them (it asks `GET /user`).
    pub bot_user_id: Option<u64>,
}

impl WebhookConfig {
    /// Defaults for everything but the secret: drafts skipped, no label filters, general
    /// reviews.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: SecretString::from(secret.into()),
            review_drafts: false,
            require_labels: Vec::new(),
            skip_labels: Vec::new(),
            review_type: ReviewType::General,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            bot_user_id: None,
        }
    }
}

/// Normalises a label list: trimmed, lower-cased, empty items dropped.
fn labels(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .collect()
}

impl ServeArgs {
    /// The webhook settings.
    ///
    /// # Errors
    /// A usage error when `REVIEWQ_WEBHOOK_SECRET` is missing or empty.
    pub fn webhook_config(&self) -> Result<WebhookConfig, UsageError> {
        let secret = self
            .webhook_secret
            .clone()
            .filter(|s| !s.expose_secret().trim().is_empty())
            .ok_or_else(|| {
                UsageError(
                    "REVIEWQ_WEBHOOK_SECRET is not set: choose a random secret, set it as the GitLab webhook's \"Secret token\" and in REVIEWQ_WEBHOOK_SECRET (or --webhook-secret)".into(),
                )
            })?;
        Ok(WebhookConfig {
            secret,
            review_drafts: self.review_drafts,
            require_labels: labels(&self.require_labels),
            skip_labels: labels(&self.skip_labels),
            review_type: self.review_type,
            max_body_bytes: self.max_body_bytes,
            bot_user_id: self.bot_user_id,
        })
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The queue's database.
    pub pool: PgPool,
    /// The webhook settings.
    pub webhook: Arc<WebhookConfig>,
    /// The web console's settings; `None`: no console (`/ui` answers 404).
    pub ui: Option<Arc<ui::UiConfig>>,
}

impl AppState {
    /// State over `pool` (migrated) with `webhook` settings.
    pub fn new(pool: PgPool, webhook: WebhookConfig) -> Self {
        Self {
            pool,
            webhook: Arc::new(webhook),
            ui: None,
        }
    }

    /// The same state with the web console on.
    #[must_use]
    pub fn with_ui(mut self, config: ui::UiConfig) -> Self {
        self.ui = Some(Arc::new(config));
        self
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    let limit = state.webhook.max_body_bytes;
    let console = match state.ui.clone() {
        Some(config) => ui::router(state.clone(), config),
        None => Router::new(),
    };
    Router::new()
        .route(
            "/webhooks/gitlab",
            post(webhook::gitlab).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
        .merge(console)
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (each is bounded by [`DB_TIMEOUT`]).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // With the peer address, so the console's action log can say where an action came from.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// `GET /healthz`: 200 if the database answers within [`DB_TIMEOUT`], 503 otherwise.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let ping = sqlx::query_scalar!("select 1 as \"one!\"").fetch_one(&state.pool);
    match tokio::time::timeout(DB_TIMEOUT, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n"),
        Ok(Err(e)) => {
            tracing::warn!(error.cause_chain = ?e, "healthz: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
        }
        Err(_) => {
            tracing::warn!("healthz: database did not answer in time");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n")
        }
    }
}

/// Runs `reviewq serve`: checks the settings, connects, listens, and serves until
/// SIGINT/SIGTERM.
///
/// # Errors
/// A usage error for a missing secret (before anything else happens); connection or
/// listen failures.
pub async fn run(db: &DbArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let webhook = args.webhook_config()?;
    let console = args.ui.config()?;
    let pool = db.pool(10).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {} (REVIEWQ_LISTEN)", args.listen))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%addr, "serving POST /webhooks/gitlab, GET /healthz, GET /metrics");
    if console.is_some() {
        tracing::info!(%addr, "serving the web console under /ui");
    } else {
        tracing::info!("no web console: set REVIEWQ_UI_PASSWORD to serve it under /ui");
    }
    let mut state = AppState::new(pool.clone(), webhook);
    if let Some(config) = console {
        state = state.with_ui(config);
    }

    let token = CancellationToken::new();
    crate::shutdown::on_signal(token.clone());
    let pruner = tokio::spawn(prune_deliveries(pool.clone(), token.clone()));
    serve(listener, state, token.clone().cancelled_owned())
        .await
        .context("the webhook server failed")?;
    token.cancel();
    let _ = pruner.await;
    tracing::info!("webhook server stopped");
    Ok(ExitCode::SUCCESS)
}

/// Forgets deliveries older than [`DELIVERY_RETENTION`], hourly, until `stop`.
async fn prune_deliveries(pool: PgPool, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let secs = f64::from(u32::try_from(DELIVERY_RETENTION.as_secs()).unwrap_or(u32::MAX));
        let deleted = sqlx::query!(
            "delete from webhook_deliveries where received_at < now() - make_interval(secs => $1)",
            secs
        )
        .execute(&pool)
        .await;
        match deleted {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(
                    deleted = done.rows_affected(),
                    "pruned old webhook deliveries"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error.cause_chain = ?e, "could not prune webhook deliveries"),
        }
    }
}
