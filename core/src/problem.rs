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
}
