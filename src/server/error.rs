//! The HTTP error type: a status and a short public message. Internal causes are logged
//! here, once, and never sent to the caller.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong `X-Gitlab-Token`. Says nothing about which.
    #[error("unauthorized")]
    Unauthorized,
    /// The request is malformed; the message says how (it names no secret).
    #[error("{0}")]
    BadRequest(String),
    /// The database did not answer in time; GitLab will redeliver.
    #[error("service unavailable")]
    Unavailable,
    /// Anything else: logged with its causes, answered with an opaque 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<crate::queue::Error> for ApiError {
    fn from(e: crate::queue::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            Self::Unavailable => {
                tracing::warn!("request timed out waiting for the database");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable".to_owned(),
                )
            }
            Self::Internal(e) => {
                tracing::error!(error.cause_chain = ?e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}
