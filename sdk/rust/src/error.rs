//! The SDK's one error type: what the server refused (with its RFC 9457 problem `type`), what the
//! network did, and what the realtime connection reported.

use std::time::Duration;

/// The prefix of every Aviary problem `type`; [`Error::kind`] strips it.
pub const PROBLEM_TYPE_PREFIX: &str = "https://aviary.dev/problems/";

/// Everything an SDK call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an `application/problem+json` error (or, from a proxy, a plain
    /// error status). Branch on [`Error::kind`], which is stable; `detail` is for humans.
    #[error("aviary API error {status} ({problem_type}): {detail}")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The problem `type` URI, e.g. `https://aviary.dev/problems/forbidden`; `about:blank`
        /// when the body was not a problem document.
        problem_type: String,
        /// What went wrong with this request.
        detail: String,
    },

    /// The messages-per-second quota (HTTP 429 `rate-limited`) was still exhausted after every
    /// retry the [`RetryPolicy`](crate::RetryPolicy) allowed.
    #[error("rate limited by aviary (retry after {retry_after:?})")]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },

    /// The request never got an HTTP answer (connection refused or reset, timeout, DNS), after
    /// every retry allowed for the operation.
    #[error("transport error talking to aviary: {0}")]
    Transport(#[from] reqwest::Error),

    /// A gRPC call failed; `code` is the canonical status code (`PermissionDenied`, `NotFound`...).
    #[cfg(feature = "grpc")]
    #[error("aviary gRPC error {code:?}: {message}")]
    Grpc {
        /// The canonical gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },

    /// The gRPC channel could not be set up (bad URL, connection refused).
    #[cfg(feature = "grpc")]
    #[error("gRPC transport error: {0}")]
    GrpcTransport(#[from] tonic::transport::Error),

    /// The realtime server answered a command with an `error` frame (`forbidden`, `not_found`,
    /// `rate_limited`...; see the protocol's error codes). The connection stays open.
    #[error("aviary realtime error {code}: {message}")]
    Realtime {
        /// The protocol error code, e.g. `forbidden`.
        code: String,
        /// The server's message.
        message: String,
    },

    /// The realtime connection is closed. `code` and `reason` come from the server's
    /// `disconnect` frame or close frame when there was one (4001 invalid token, 4002 expired...).
    #[error("aviary realtime connection closed ({code:?}): {reason}")]
    Closed {
        /// The close code, when the server sent one.
        code: Option<u16>,
        /// Why, as far as known.
        reason: String,
        /// Whether reconnecting (with backoff) makes sense without user action.
        reconnect: bool,
    },

    /// A WebSocket-level failure (handshake refused, I/O error).
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),

    /// A request timed out waiting for its reply on the realtime connection.
    #[error("timed out waiting for the aviary server")]
    Timeout,

    /// A URL given to the SDK could not be parsed or cannot carry the request.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),

    /// The client was configured with something unusable (e.g. an API key that cannot be sent in
    /// an HTTP header).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The server sent something the SDK could not decode (a bug on one side; please report).
    #[error("unexpected response from aviary: {0}")]
    Decode(String),
}

impl Error {
    /// The short problem kind (`forbidden`, `not-found`, `rate-limited`...) of an
    /// [`Error::Api`], or `rate-limited` for [`Error::RateLimited`]; `None` otherwise.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Error::Api { problem_type, .. } => {
                Some(problem_type.strip_prefix(PROBLEM_TYPE_PREFIX).unwrap_or(problem_type.as_str()))
            }
            Error::RateLimited { .. } => Some("rate-limited"),
            _ => None,
        }
    }

    /// The HTTP status of an API error (429 for [`Error::RateLimited`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            Error::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }
}

#[cfg(feature = "grpc")]
impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Grpc { code: status.code(), message: status.message().to_owned() }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
