//! The web console under `/ui`: the queue, the reviews and the spend, for operators.
//!
//! Server-rendered HTML (maud: templates are Rust, checked by the compiler, and escape
//! every interpolated value), one stylesheet and one small script served from the binary,
//! charts drawn as SVG on the server. Nothing is fetched from the network, so the console
//! works on an air-gapped network, and the `Content-Security-Policy` says so to the browser.
//!
//! Pages: [`overview`], [`jobs`] (list and actions), [`job`] (one job), [`reviews`],
//! [`spend`]. Access ([`auth`]): off unless `REVIEWQ_UI_PASSWORD` is set; HTTP Basic
//! (user `reviewq`) or the same secret as a Bearer token; a read-only password sees no
//! actions. Actions are CSRF-protected POSTs that call the queue's own `retry`/`cancel`.

pub mod auth;
mod chart;
mod job;
mod jobs;
mod layout;
mod overview;
mod reviews;
mod spend;

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, header},
    middleware,
    response::IntoResponse,
    routing::{get, post},
};
use clap::{ArgAction, Args};
use secrecy::{ExposeSecret, SecretString};

pub use self::auth::{Role, UiCredentials};
use super::AppState;
use crate::{config::UsageError, spend::SpendPolicy};

/// Settings of the console (part of `serve`'s).
#[derive(Debug, Clone, Args)]
pub struct UiArgs {
    /// Serve the web console under /ui. It is served only when REVIEWQ_UI_PASSWORD is set
    /// too; `--ui false` turns it off even then.
    #[arg(long = "ui", env = "REVIEWQ_UI", default_value_t = true, action = ArgAction::Set)]
    pub enabled: bool,

    /// The console's password: HTTP Basic with user `reviewq`, or this secret as a Bearer
    /// token. Unset: no console. Never printed or logged.
    #[arg(long, env = "REVIEWQ_UI_PASSWORD", hide_env_values = true)]
    pub ui_password: Option<SecretString>,

    /// A second password for a read-only login that sees no actions. Never printed.
    #[arg(long, env = "REVIEWQ_UI_READONLY_PASSWORD", hide_env_values = true)]
    pub ui_readonly_password: Option<SecretString>,

    /// The GitLab instance, for links to merge requests and summary notes.
    #[arg(long, env = "GITLAB_URL", default_value = "https://gitlab.com")]
    pub gitlab_url: url::Url,

    /// The fleet's daily token budget, shown as a gauge (the workers' setting of the same
    /// name enforces it).
    #[arg(long = "ui-daily-token-budget", env = "REVIEWQ_DAILY_TOKEN_BUDGET", value_parser = clap::value_parser!(u64).range(1..))]
    pub daily_token_budget: Option<u64>,
}

impl UiArgs {
    /// The console's settings, or `None` when it is off.
    ///
    /// # Errors
    /// A usage error when only the read-only password is set, or both are the same (the
    /// role of a login would be ambiguous).
    pub fn config(&self) -> Result<Option<UiConfig>, UsageError> {
        let set =
            |s: &Option<SecretString>| s.clone().filter(|s| !s.expose_secret().trim().is_empty());
        let (operator, readonly) = (set(&self.ui_password), set(&self.ui_readonly_password));
        let Some(operator) = operator else {
            if readonly.is_some() {
                return Err(UsageError(
                    "REVIEWQ_UI_READONLY_PASSWORD is set but REVIEWQ_UI_PASSWORD is not: the console is off unless REVIEWQ_UI_PASSWORD is set".into(),
                ));
            }
            return Ok(None);
        };
        if readonly
            .as_ref()
            .is_some_and(|r| r.expose_secret() == operator.expose_secret())
        {
            return Err(UsageError(
                "REVIEWQ_UI_READONLY_PASSWORD is the same as REVIEWQ_UI_PASSWORD: choose a different read-only password".into(),
            ));
        }
        if !self.enabled {
            return Ok(None);
        }
        Ok(Some(UiConfig {
            credentials: UiCredentials::new(operator, readonly),
            gitlab_url: self.gitlab_url.clone(),
            spend: SpendPolicy {
                daily_tokens: self.daily_token_budget,
                ..SpendPolicy::default()
            },
        }))
    }
}

/// What the console needs besides the database.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Who may log in, as what.
    pub credentials: UiCredentials,
    /// For links to GitLab.
    pub gitlab_url: url::Url,
    /// The fleet-wide budget shown on the overview.
    pub spend: SpendPolicy,
}

impl UiConfig {
    /// A console on `gitlab_url` with an operator password (tests and benches).
    pub fn new(password: &str, readonly: Option<&str>, gitlab_url: url::Url) -> Self {
        Self {
            credentials: UiCredentials::new(
                SecretString::from(password.to_owned()),
                readonly.map(|r| SecretString::from(r.to_owned())),
            ),
            gitlab_url,
            spend: SpendPolicy::default(),
        }
    }

    /// The web page of a merge request. A numeric project id has no path-based URL;
    /// GitLab redirects `/projects/ID` to the project.
    pub fn mr_url(&self, project: &str, iid: i64) -> String {
        let base = self.gitlab_url.as_str().trim_end_matches('/');
        if project.bytes().all(|b| b.is_ascii_digit()) {
            format!("{base}/projects/{project}")
        } else {
            format!("{base}/{project}/-/merge_requests/{iid}")
        }
    }
}

/// The console's state: the server's plus the console settings.
#[derive(Debug, Clone)]
pub(crate) struct Ui {
    pub app: AppState,
    pub config: Arc<UiConfig>,
}

/// The console's routes, mounted under `/ui`, behind [`auth::require`].
pub fn router(app: AppState, config: Arc<UiConfig>) -> Router {
    let ui = Ui { app, config };
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(overview::page))
        .route("/ui/jobs", get(jobs::page))
        .route("/ui/jobs/action", post(jobs::action))
        .route("/ui/jobs/{id}", get(job::page))
        .route("/ui/reviews", get(reviews::page))
        .route("/ui/reviews/mr", get(reviews::mr_page))
        .route("/ui/spend", get(spend::page))
        .route("/ui/assets/app.css", get(stylesheet))
        .route("/ui/assets/app.js", get(script))
        .layer(middleware::from_fn_with_state(ui.clone(), auth::require))
        .layer(middleware::map_response(security_headers))
        .with_state(ui)
}

/// Every console response: nothing may be loaded from elsewhere, nothing may frame the
/// console (a framed confirmation button could be clicked by a hidden page), and pages
/// carry data no cache should keep.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("assets/app.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("assets/app.js"),
    )
}
