//! The data plane's one error type.
//!
//! The same [`Error`] answers a WebSocket command (as an `error` frame with a protocol
//! [`ErrorCode`]) and a REST request (as `application/problem+json` with a stable `type`), so a
//! rule such as "publishing here is forbidden" is decided once and reported the same way on
//! every transport.

use aviary_broker::BrokerError;
use aviary_core::problem::{PROBLEM_JSON, Problem};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::ErrorCode;

/// Everything a data-plane operation can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TokenExpired(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("app is disabled")]
    AppDisabled,
    #[error("message is {size} bytes; the limit is {limit}")]
    PayloadTooLarge { size: usize, limit: u32 },
    #[error("message rate limit of {0}/s exceeded")]
    RateLimited(u32),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("node is draining; reconnect to another node")]
    Draining,
    #[error("message engine unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The protocol error code this error is reported with on WebSocket.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::TokenExpired(_) => ErrorCode::TokenExpired,
            Error::Forbidden(_) | Error::AppDisabled => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Error::Draining | Error::Unavailable(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The label used for the `reason` of the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::AppDisabled => "app_disabled",
            Error::Draining => "draining",
            Error::Unavailable(_) => "unavailable",
            other => other.code().as_str(),
        }
    }

    /// The message shown to the client; internal details stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    fn problem(&self) -> Problem {
        let (slug, title, status) = match self {
            Error::BadRequest(_) => ("bad-request", "Bad request", StatusCode::BAD_REQUEST),
            Error::Unauthorized(_) => ("unauthorized", "Unauthorized", StatusCode::UNAUTHORIZED),
            Error::TokenExpired(_) => ("token-expired", "Token expired", StatusCode::UNAUTHORIZED),
            Error::Forbidden(_) => ("forbidden", "Forbidden", StatusCode::FORBIDDEN),
            Error::NotFound(_) => ("not-found", "Not found", StatusCode::NOT_FOUND),
            Error::AppDisabled => ("app-disabled", "App disabled", StatusCode::FORBIDDEN),
            Error::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large", StatusCode::PAYLOAD_TOO_LARGE),
            Error::RateLimited(_) => ("rate-limited", "Rate limited", StatusCode::TOO_MANY_REQUESTS),
            Error::QuotaExceeded(_) => ("quota-exceeded", "Quota exceeded", StatusCode::TOO_MANY_REQUESTS),
            Error::Draining => ("draining", "Node draining", StatusCode::SERVICE_UNAVAILABLE),
            Error::Unavailable(_) => ("unavailable", "Service unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Error::Internal(_) => ("internal", "Internal error", StatusCode::INTERNAL_SERVER_ERROR),
        };
        Problem::new(slug, title, status.as_u16(), self.public_message())
    }
}

impl From<BrokerError> for Error {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(m) => Error::Unavailable(m),
            BrokerError::PresenceFull => Error::QuotaExceeded("presence set of this channel is full".to_owned()),
            BrokerError::Internal(m) => Error::Internal(m),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering a request");
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, Error::RateLimited(_) | Error::Unavailable(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
