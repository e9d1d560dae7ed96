//! The control plane's one error type, and how it is shown to REST clients (problem+json) and
//! gRPC clients (a `tonic::Status`).
//!
//! Each variant maps to one stable problem `type` slug (the table in `control-plane/README.md`).
//! Details never include secrets, hashes or SQL; database failures are logged here and shown
//! to the client only as `unavailable` / `internal`.

use aviary_core::problem::{BodyRejection, PROBLEM_JSON, Problem};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a validation rule (400 `bad-request`).
    #[error("{0}")]
    Invalid(String),
    /// No credentials, or credentials that do not verify (401 `unauthorized`).
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// Valid credentials of the wrong kind for this operation (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// A token asked for capabilities its key does not hold (403 `capability-escalation`).
    #[error("{0}")]
    CapabilityEscalation(String),
    /// A token TTL above the app's maximum (400 `token-ttl-too-long`).
    #[error("ttl_s {requested} exceeds this app's max_token_ttl_s {max}")]
    TtlTooLong { requested: u32, max: u32 },
    /// The app or its tenant is disabled (403 `app-disabled`).
    #[error("the app or its tenant is disabled")]
    AppDisabled,
    /// Unknown resource, or one the caller may not see (404 `not-found`).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique name is taken (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// A per-tenant limit on a kind of resource is reached (409 `limit-reached`).
    #[error("{0}")]
    LimitReached(String),
    /// The body could not be read as JSON: too large (413), not declared as JSON (415),
    /// malformed or of the wrong shape (400); the same answers as the data plane's.
    #[error("{0}")]
    Body(#[from] BodyRejection),
    /// Too many requests for this IP or key (429 `rate-limited`).
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The store is unreachable or failed (503 `unavailable` / 500 `internal`).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data that does not decode (500 `internal`).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The control plane could not be reached or answered with an error (node side: the
    /// follower, the remote key authority, the usage reporter). 503 `unavailable`.
    #[error("control plane: {0}")]
    Upstream(String),
    /// Pusher credentials and webhook endpoints need a credentials key to seal their secrets,
    /// and none is configured (503 `credentials-key-missing`).
    #[error("no credentials key is configured (--credentials-key / AVIARY_CREDENTIALS_KEY)")]
    CredentialsKeyMissing,
    /// Anything else that is our fault (500 `internal`).
    /// Webhook test events and delivery attempts need the delivery seam
    /// ([`aviary_core::webhook::WebhookDeliveries`]); absent, or its store unreachable.
    #[error("webhook deliveries unavailable: {0}")]
    DeliveriesUnavailable(String),

    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Wraps a validation message.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Error::Invalid(detail.into())
    }

    fn store_unreachable(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
    }

    /// HTTP status, problem slug and title of this error.
    pub fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Error::CapabilityEscalation(_) => {
                (StatusCode::FORBIDDEN, "capability-escalation", "Capabilities exceed the key's")
            }
            Error::TtlTooLong { .. } => (StatusCode::BAD_REQUEST, "token-ttl-too-long", "Token TTL too long"),
            Error::AppDisabled => (StatusCode::FORBIDDEN, "app-disabled", "App disabled"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Error::LimitReached(_) => (StatusCode::CONFLICT, "limit-reached", "Limit reached"),
            Error::Body(rejection) => {
                let (status, slug, title) = rejection.kind();
                (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), slug, title)
            }
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
            Error::Upstream(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Control plane unavailable"),
            Error::CredentialsKeyMissing => (
                StatusCode::SERVICE_UNAVAILABLE,
                "credentials-key-missing",
                "No credentials key configured: set AVIARY_CREDENTIALS_KEY to use Pusher credentials and webhooks",
            ),
            Error::DeliveriesUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "deliveries-unavailable",
                "Webhook deliveries unavailable: the control plane cannot reach the delivery store",
            ),
            Error::Database(e) if Self::store_unreachable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Store unavailable")
            }
            Error::Database(_) | Error::Migrate(_) | Error::Corrupt(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }

    /// The problem document shown to clients. Server-side failures get a generic detail: the
    /// real cause goes to the log, not to the caller.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.kind();
        let detail = if status.is_server_error() { title.to_owned() } else { self.to_string() };
        Problem::new(slug, title, status.as_u16(), detail)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::error!(error = %self, "request failed");
        }
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Error::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::RateLimited { retry_after_s } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        response
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let (status, _, _) = e.kind();
        if status.is_server_error() {
            tracing::error!(error = %e, "gRPC call failed");
        }
        let code = match &e {
            Error::Invalid(_) | Error::TtlTooLong { .. } | Error::Body(_) => Code::InvalidArgument,
            Error::Unauthorized => Code::Unauthenticated,
            Error::Forbidden(_) | Error::CapabilityEscalation(_) => Code::PermissionDenied,
            Error::AppDisabled | Error::CredentialsKeyMissing => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::Conflict(_) => Code::AlreadyExists,
            Error::RateLimited { .. } | Error::LimitReached(_) => Code::ResourceExhausted,
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            _ => Code::Internal,
        };
        tonic::Status::new(code, e.problem().detail)
    }
}
