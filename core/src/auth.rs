//! How the data plane checks an app API key without owning the key store.
//!
//! API keys are argon2id hashes in the control plane's store. The data plane's REST publish API
//! authenticates backends with those keys, so it asks an [`ApiKeyAuthority`]: in `aviary dev` the
//! control plane itself (with its verified-key cache), between processes a node-local cache fed
//! by the control plane's config stream.

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
}

/// Verifies app API keys (`avk_...`).
#[async_trait]
pub trait ApiKeyAuthority: Send + Sync + 'static {
    /// Verifies the full presented secret. Must run in constant time with respect to the secret
    /// and must not log it.
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError>;
}
