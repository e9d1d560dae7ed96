//! The data plane's one error type.
//!
//! The same [`Error`] answers a WebSocket command (as an `error` frame with a protocol
//! [`ErrorCode`], [`Error::code`]) and a REST request (as `application/problem+json` with a
//! stable `type`, [`Error::problem`]), so a rule such as "publishing here is forbidden" is
//! decided once (in [`crate::ops`]) and reported the same way on every transport. Each refusal
//! of the operations layer has its own variant, so a front end to come (another protocol,
//! webhooks) maps the typed refusal into its own words without parsing messages.

use aviary_broker::BrokerError;
use aviary_core::problem::{BodyRejection, PROBLEM_JSON, Problem};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use aviary_core::Operation;

use crate::protocol::ErrorCode;

/// Who was refused a capability, for the message ("token" or "API key").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Token,
    ApiKey,
}

/// A namespace option that forbids an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceRule {
    /// `client_publish` is off: only backends publish here.
    ClientPublish,
    /// `presence` is off.
    Presence,
}

impl std::fmt::Display for NamespaceRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamespaceRule::ClientPublish => "clients may not publish on this namespace",
            NamespaceRule::Presence => "presence is disabled on this namespace",
        })
    }
}

/// Everything a data-plane operation can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    /// The channel name is not valid.
    #[error("{0}")]
    InvalidChannel(String),
    /// The channel's namespace is not configured (and the app has no default namespace).
    #[error("unknown channel namespace")]
    UnknownNamespace,
    /// A namespace option forbids the operation.
    #[error("{0}")]
    NamespaceForbids(NamespaceRule),
    /// The token or API key lacks the capability for the operation on the channel.
    #[error("{} does not allow {} on {channel:?}", match principal { PrincipalKind::Token => "token", PrincipalKind::ApiKey => "API key" }, operation.as_str())]
    CapabilityMissing { principal: PrincipalKind, operation: Operation, channel: String },
    /// The idempotency key is not 1 to 128 visible ASCII characters.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// The publisher used this idempotency key earlier for a different payload.
    #[error("idempotency key {0:?} was already used for a different message")]
    IdempotencyConflict(String),
    /// A REST body that could not be read as JSON (413, 415 or 400, as on the control plane).
    #[error("{0}")]
    Body(#[from] BodyRejection),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    TokenExpired(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("app is disabled or deleted")]
    AppDisabled,
    #[error("message is {size} bytes; the limit is {limit}")]
    PayloadTooLarge { size: usize, limit: u32 },
    /// Data nested deeper than [`aviary_core::json::MAX_DEPTH`] arrays and objects.
    #[error("data nests deeper than {limit} arrays and objects")]
    TooDeep { limit: usize },
    /// Presence data larger than this member's share of the channel's presence budget.
    #[error(
        "presence data is {size} bytes; each member of this channel may have {limit} \
         ({budget} bytes shared by at most {members} members)",
        budget = crate::ops::presence::PRESENCE_DATA_BUDGET_BYTES
    )]
    PresenceDataTooLarge { size: usize, limit: usize, members: u32 },
    #[error("message rate limit of {0}/s exceeded")]
    RateLimited(u32),
    /// Refused before doing the work: too many failed or in-flight credential checks.
    #[error("{0}")]
    Throttled(String),
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
            Error::BadRequest(_)
            | Error::InvalidChannel(_)
            | Error::InvalidIdempotencyKey(_)
            | Error::TooDeep { .. } => ErrorCode::BadRequest,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::TokenExpired(_) => ErrorCode::TokenExpired,
            Error::Forbidden(_) | Error::NamespaceForbids(_) | Error::CapabilityMissing { .. } | Error::AppDisabled => {
                ErrorCode::Forbidden
            }
            Error::NotFound(_) | Error::UnknownNamespace => ErrorCode::NotFound,
            Error::PayloadTooLarge { .. }
            | Error::PresenceDataTooLarge { .. }
            | Error::Body(BodyRejection::TooLarge { .. }) => ErrorCode::PayloadTooLarge,
            Error::Body(_) => ErrorCode::BadRequest,
            Error::RateLimited(_) | Error::Throttled(_) => ErrorCode::RateLimited,
            Error::IdempotencyConflict(_) => ErrorCode::Conflict,
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

    /// The problem+json body this error is reported with over HTTP. Its `type` slug is the
    /// WebSocket code with `-` for `_` (`bad_request` ⇔ `bad-request`), except for the HTTP-only
    /// kinds (`app-disabled`, `draining`, `unavailable`), so a client can branch on either.
    pub fn problem(&self) -> Problem {
        let (slug, title, status) = match self {
            Error::Body(rejection) => return rejection.problem(),
            Error::AppDisabled => ("app-disabled", "App disabled", StatusCode::FORBIDDEN),
            Error::Draining => ("draining", "Node draining", StatusCode::SERVICE_UNAVAILABLE),
            Error::Unavailable(_) => ("unavailable", "Service unavailable", StatusCode::SERVICE_UNAVAILABLE),
            other => match other.code() {
                ErrorCode::BadRequest => ("bad-request", "Bad request", StatusCode::BAD_REQUEST),
                ErrorCode::Unauthorized => ("unauthorized", "Unauthorized", StatusCode::UNAUTHORIZED),
                ErrorCode::TokenExpired => ("token-expired", "Token expired", StatusCode::UNAUTHORIZED),
                ErrorCode::Forbidden => ("forbidden", "Forbidden", StatusCode::FORBIDDEN),
                ErrorCode::NotFound => ("not-found", "Not found", StatusCode::NOT_FOUND),
                ErrorCode::PayloadTooLarge => ("payload-too-large", "Payload too large", StatusCode::PAYLOAD_TOO_LARGE),
                ErrorCode::RateLimited => ("rate-limited", "Rate limited", StatusCode::TOO_MANY_REQUESTS),
                ErrorCode::QuotaExceeded => ("quota-exceeded", "Quota exceeded", StatusCode::TOO_MANY_REQUESTS),
                ErrorCode::Conflict => ("conflict", "Conflict", StatusCode::CONFLICT),
                ErrorCode::Internal => ("internal", "Internal error", StatusCode::INTERNAL_SERVER_ERROR),
            },
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
        let mut response = problem_response(self.problem());
        if matches!(self, Error::RateLimited(_) | Error::Throttled(_) | Error::Unavailable(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem document as a response (status from the problem).
fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(problem)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The answer to a known route asked with a method it does not serve: 405 problem+json (the
/// router adds the `Allow` header). The binary installs it on every route it serves.
pub async fn method_not_allowed() -> Response {
    problem_response(Problem::method_not_allowed())
}

/// The answer to a path no route serves: 404 problem+json.
pub async fn not_found() -> Response {
    problem_response(Problem::route_not_found())
}
