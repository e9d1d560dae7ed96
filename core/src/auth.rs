//! How the data plane checks an app API key without owning the key store.
//!
//! API keys are argon2id hashes in the control plane's store. The data plane's REST publish API
//! authenticates backends with those keys, so it asks an [`ApiKeyAuthority`]: in `aviary dev` the
//! control plane itself (with its verified-key cache), between processes a node-local cache fed
//! by the control plane's config stream.

use std::net::IpAddr;

use async_trait::async_trait;

use crate::capability::Capabilities;

/// A key that verified: who it belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedApiKey {
    pub key_id: String,
    pub tenant_id: String,
    pub app_id: String,
    pub capabilities: Capabilities,
}

/// Why a presented key was refused. Deliberately coarse: the caller learns nothing about which
/// part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("API key is invalid or revoked")]
    Invalid,
    #[error("key store unavailable")]
    Unavailable,
    /// Too many verifications of this key id are hashing right now, or the source address
    /// failed too often; retry in a second.
    #[error("too many verifications; retry later")]
    Throttled,
}

/// Verifies app API keys (`avk_...`).
#[async_trait]
pub trait ApiKeyAuthority: Send + Sync + 'static {
    /// Verifies the full presented secret. Must run in constant time with respect to the secret
    /// and must not log it.
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError>;

    /// As [`Self::verify_api_key`] for a request from `source`: an authority that limits
    /// failed verifications per address ([`crate::FailureLimiter`]) answers
    /// [`ApiKeyError::Throttled`] for an address that spent its budget. The default ignores
    /// the address.
    async fn verify_api_key_from(&self, presented: &str, source: IpAddr) -> Result<VerifiedApiKey, ApiKeyError> {
        let _ = source;
        self.verify_api_key(presented).await
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value, the one reading
/// every front end of both planes uses: the scheme is case-insensitive (RFC 9110, 11.1), so
/// `bearer` and `BEARER` work as `Bearer` does; `None` for another scheme or no credential.
pub fn bearer_credential(header_value: &str) -> Option<&str> {
    let (scheme, credential) = header_value.trim_start().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::bearer_credential;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc "] {
            assert_eq!(bearer_credential(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer_credential(value), None, "{value:?}");
        }
    }
}
