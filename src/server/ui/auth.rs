//! Who may use the console, and the CSRF token of its actions.
//!
//! A request carries HTTP Basic (user `reviewq`) or `Authorization: Bearer SECRET`. The
//! secret is compared with both passwords in constant time (`subtle`), and both are always
//! compared, so the answer's timing tells nothing about which matched or how much of it.
//! A request without a valid credential gets 401 with a Basic challenge, so a browser asks.
//!
//! Browsers resend Basic credentials to the console by themselves, so a page elsewhere
//! could post a form to it: every action carries a token only console pages contain. The
//! token is derived from the operator password (SHA-256 with a domain prefix), so every
//! `serve` replica of a fleet accepts it and it changes when the password does; a
//! read-only login never sees one, and its POSTs are refused anyway.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Ui;

/// The one Basic user name.
pub const USER: &str = "reviewq";

/// What a login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, actions included.
    Operator,
    /// Read every page; no actions.
    ReadOnly,
}

/// How the credential came, for the action log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Basic,
    Bearer,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Bearer => "bearer",
        }
    }
}

/// The authenticated caller of one request (a request extension set by [`require`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub via: Via,
    /// The peer address, when the server knows it, for the action log.
    pub peer: Option<std::net::SocketAddr>,
}

impl Caller {
    /// Who did it, for the log: the login, how it authenticated and from where.
    pub fn who(&self) -> String {
        let login = match self.role {
            Role::Operator => USER,
            Role::ReadOnly => "reviewq (read-only)",
        };
        match self.peer {
            Some(peer) => format!("{login} via {} from {peer}", self.via.as_str()),
            None => format!("{login} via {}", self.via.as_str()),
        }
    }
}

/// The two passwords and the CSRF token derived from the first.
#[derive(Debug, Clone)]
pub struct UiCredentials {
    operator: SecretString,
    readonly: Option<SecretString>,
    csrf: SecretString,
}

impl UiCredentials {
    /// Credentials for an operator password and an optional read-only one.
    pub fn new(operator: SecretString, readonly: Option<SecretString>) -> Self {
        let digest = Sha256::new()
            .chain_update(b"reviewq-ui-csrf-v1\0")
            .chain_update(operator.expose_secret().as_bytes())
            .finalize();
        let csrf = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Self {
            operator,
            readonly,
            csrf: SecretString::from(csrf),
        }
    }

    /// The role `secret` logs in as, if any. Both comparisons always run.
    pub fn role_of(&self, secret: &str) -> Option<Role> {
        let given = secret.as_bytes();
        let operator: bool = given.ct_eq(self.operator.expose_secret().as_bytes()).into();
        let readonly: bool = self
            .readonly
            .as_ref()
            .map(|r| given.ct_eq(r.expose_secret().as_bytes()))
            .is_some_and(Into::into);
        if operator {
            Some(Role::Operator)
        } else if readonly {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// The token an action form carries.
    pub fn csrf_token(&self) -> &str {
        self.csrf.expose_secret()
    }

    /// Whether `token` is the action token (constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        token
            .as_bytes()
            .ct_eq(self.csrf.expose_secret().as_bytes())
            .into()
    }
}

/// The secret a request carries and how, if its `Authorization` header is well formed.
fn presented(request: &Request) -> Option<(String, Via)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some((rest.trim().to_owned(), Via::Bearer));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (user == USER).then(|| (password.to_owned(), Via::Basic))
}

/// Middleware: lets a request through with its [`Caller`], or answers 401.
pub(crate) async fn require(State(ui): State<Ui>, mut request: Request, next: Next) -> Response {
    let role = presented(&request)
        .and_then(|(secret, via)| Some((ui.config.credentials.role_of(&secret)?, via)));
    let Some((role, via)) = role else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"reviewq\", charset=\"UTF-8\""),
            )],
            "401: the reviewq console needs the user reviewq and REVIEWQ_UI_PASSWORD (or REVIEWQ_UI_READONLY_PASSWORD)\n",
        )
            .into_response();
    };
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    request.extensions_mut().insert(Caller { role, via, peer });
    next.run(request).await
}
