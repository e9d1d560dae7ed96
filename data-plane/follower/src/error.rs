//! The follower crate's one error type.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work (a malformed URL, a CA for a plain `http://` link, a node
    /// token that is not printable ASCII).
    #[error("{0}")]
    Invalid(String),
    /// The control plane could not be reached or answered with an error.
    #[error("control plane: {0}")]
    Upstream(String),
    /// Anything else that is our fault (the cache directory cannot be created).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Wraps a message about a setting.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Error::Invalid(detail.into())
    }
}
