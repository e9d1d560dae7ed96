//! RFC 9457 problem details, the body of every REST error either plane returns.
//!
//! `type` is a stable URI per error kind (`https://aviary.dev/problems/<slug>`): clients branch on
//! it, never on `title` or `detail`, which are for humans.

use serde::{Deserialize, Serialize};

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://aviary.dev/problems/";

/// A problem details document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the error kind, e.g. `https://aviary.dev/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human summary of the kind.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem of kind `slug` (appended to [`PROBLEM_BASE`]).
    pub fn new(slug: &str, title: &str, status: u16, detail: impl Into<String>) -> Self {
        Problem { kind: format!("{PROBLEM_BASE}{slug}"), title: title.to_owned(), status, detail: detail.into() }
    }

    /// A known route asked with a method it does not serve (405, `method-not-allowed`); the
    /// response carries an `Allow` header listing the methods it does serve.
    pub fn method_not_allowed() -> Self {
        Problem::new("method-not-allowed", "Method not allowed", 405, "this route does not accept that method")
    }

    /// No route at this path (404, `not-found`).
    pub fn route_not_found() -> Self {
        Problem::new("not-found", "Not found", 404, "no route at this path")
    }
}

/// Why a request body was refused before it could be read as the operation's input. Both
/// planes answer these the same way, whatever the route:
///
/// | variant | status | `type` slug |
/// | --- | --- | --- |
/// | [`BodyRejection::TooLarge`] | 413 | `payload-too-large` |
/// | [`BodyRejection::NotJson`] | 415 | `unsupported-media-type` |
/// | [`BodyRejection::Malformed`] (not JSON text) | 400 | `bad-request` |
/// | [`BodyRejection::Invalid`] (JSON of the wrong shape) | 400 | `bad-request` |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRejection {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body must be JSON (Content-Type: application/json)")]
    NotJson,
    #[error("malformed JSON body: {0}")]
    Malformed(String),
    #[error("invalid JSON body: {0}")]
    Invalid(String),
}

impl BodyRejection {
    /// HTTP status, problem slug and title.
    pub fn kind(&self) -> (u16, &'static str, &'static str) {
        match self {
            BodyRejection::TooLarge { .. } => (413, "payload-too-large", "Payload too large"),
            BodyRejection::NotJson => (415, "unsupported-media-type", "Unsupported media type"),
            BodyRejection::Malformed(_) | BodyRejection::Invalid(_) => (400, "bad-request", "Bad request"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.kind();
        Problem::new(slug, title, status, self.to_string())
    }
}
