//! Connection tokens: the signing keyring (current key + recently retired public keys) and
//! minting a token for an app API key.
//!
//! Rules enforced when minting (REST and gRPC alike):
//! - the key's app must be the path's app, else 404 (a key never learns about other apps);
//! - the app and its tenant must be enabled, else 403 `app-disabled`;
//! - requested capabilities must be valid globs and a subset of the key's, else 400 / 403
//!   `capability-escalation`; omitted means the key's own capabilities;
//! - `ttl_s` is 1..=the app's `max_token_ttl_s`; above it is **refused** with 400
//!   `token-ttl-too-long` rather than silently clamped, so a backend never hands out a token
//!   that dies earlier than it believes.
//!
//! Rotation keeps a retired key's public half in the JWKS (and in the registry the data plane
//! verifies with) for the longest token lifetime any app may configure plus the verification
//! leeway, so every token it signed can still be verified until it expires.

use std::sync::Arc;

use aviary_core::token::{ConnectionClaims, ISSUER, Jwks, LEEWAY_S, VerifyingKey};
use aviary_core::{Capabilities, Registry, SigningKey, VerifiedApiKey};
use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{SigningKeyRecord, Store};

/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// Largest presence `info`, in bytes of its JSON encoding.
pub const MAX_INFO_BYTES: usize = 1024;

/// The key tokens are signed with now, and every public key still trusted.
struct KeyringState {
    current: Arc<SigningKey>,
    trusted: Vec<VerifyingKey>,
}

/// Signing keys, loaded from the store and mirrored into the registry.
pub struct Keyring {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// How long a retired key stays trusted: the longest token TTL plus leeway.
    retention: TimeDelta,
    state: RwLock<Arc<KeyringState>>,
}

impl Keyring {
    /// Loads the keys, creating the first one if the store has none, and publishes the trusted
    /// public keys to the registry.
    pub async fn load(store: Arc<dyn Store>, registry: Arc<Registry>, max_token_ttl_s: u32) -> Result<Self> {
        let retention = TimeDelta::seconds(i64::from(max_token_ttl_s) + LEEWAY_S as i64);
        let state = Self::read(&*store, retention).await?;
        let state = match state {
            Some(s) => s,
            None => {
                Self::insert_new(&*store, retention).await?;
                Self::read(&*store, retention)
                    .await?
                    .ok_or_else(|| Error::Internal("signing key vanished after insert".into()))?
            }
        };
        registry.set_verifying_keys(state.trusted.iter().cloned());
        Ok(Keyring { store, registry, retention, state: RwLock::new(Arc::new(state)) })
    }

    async fn insert_new(store: &dyn Store, retention: TimeDelta) -> Result<()> {
        let key = SigningKey::generate();
        let now = crate::store::now();
        let record = SigningKeyRecord {
            kid: key.kid.clone(),
            pkcs8: key.pkcs8_der().to_vec(),
            created_at: now,
            retired_at: None,
        };
        store.rotate_signing_key(&record, now - retention).await
    }

    /// Reads the current key and the still-trusted retired ones; `None` if there is no current key.
    async fn read(store: &dyn Store, retention: TimeDelta) -> Result<Option<KeyringState>> {
        let now = Utc::now();
        let mut current = None;
        let mut trusted = Vec::new();
        for record in store.signing_keys().await? {
            let still_trusted = record.retired_at.is_none_or(|retired| retired + retention > now);
            if !still_trusted {
                continue;
            }
            let key = SigningKey::from_pkcs8(record.kid.clone(), &record.pkcs8)
                .ok_or_else(|| Error::Corrupt(format!("signing key {} is not Ed25519 PKCS#8", record.kid)))?;
            trusted.push(key.verifying_key());
            // Newest first: the first unretired key is the current one.
            if record.retired_at.is_none() && current.is_none() {
                current = Some(Arc::new(key));
            }
        }
        Ok(current.map(|current| KeyringState { current, trusted }))
    }

    /// Makes a new current key; the previous one stays trusted for the retention period.
    /// Returns the new key's `kid`.
    pub async fn rotate(&self) -> Result<String> {
        Self::insert_new(&*self.store, self.retention).await?;
        self.reload().await?;
        Ok(self.current().kid.clone())
    }

    /// Re-reads the keys from the store (another replica may have rotated, or a retired key's
    /// retention ran out) and republishes them if the set changed.
    pub async fn reload(&self) -> Result<()> {
        let state = Self::read(&*self.store, self.retention)
            .await?
            .ok_or_else(|| Error::Internal("no current signing key".into()))?;
        let kids =
            |s: &KeyringState| (s.current.kid.clone(), s.trusted.iter().map(|k| k.kid.clone()).collect::<Vec<_>>());
        if kids(&state) == kids(&self.state.read()) {
            return Ok(());
        }
        self.registry.set_verifying_keys(state.trusted.iter().cloned());
        *self.state.write() = Arc::new(state);
        Ok(())
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> Arc<SigningKey> {
        self.state.read().current.clone()
    }

    /// The public keys of every key whose tokens may still be live.
    pub fn jwks(&self) -> Jwks {
        Jwks { keys: self.state.read().trusted.iter().map(VerifyingKey::to_jwk).collect() }
    }
}

/// `POST /v1/apps/{app_id}/tokens` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The end user this token is for (the token's `sub`): 1..=128 printable ASCII characters.
    pub client_id: String,
    /// Lifetime in seconds, 1..=the app's `max_token_ttl_s`. Defaults to 600 (or the app maximum
    /// when that is lower).
    #[serde(default)]
    pub ttl_s: Option<u32>,
    /// What the connection may do; must be a subset of the key's capabilities. Defaults to the
    /// key's capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Presence info other members see (a JSON object, at most 1 KiB).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub info: Option<serde_json::Value>,
}

/// A minted token.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The compact JWS to connect with.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Default token lifetime when the request names none.
const DEFAULT_TTL_S: u32 = 600;

/// Checks a client id: printable ASCII without spaces, so it is safe in logs and presence lists.
pub fn validate_client_id(client_id: &str) -> Result<()> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
        return Err(Error::invalid(format!("client_id must be 1..={MAX_CLIENT_ID_LEN} bytes")));
    }
    if let Some(c) = client_id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "client_id contains {c:?}; only printable ASCII without spaces is allowed"
        )));
    }
    Ok(())
}

/// Mints a token for `key` on `app_id` following the rules in the module docs.
pub fn mint(
    registry: &Registry,
    keyring: &Keyring,
    key: &VerifiedApiKey,
    app_id: &str,
    request: TokenRequest,
) -> Result<IssuedToken> {
    // The registry mirrors the store after every mutation, so the app check costs no query.
    if key.app_id != app_id {
        return Err(Error::NotFound("app"));
    }
    let app = registry.app(app_id).ok_or(Error::NotFound("app"))?;
    if !app.enabled {
        return Err(Error::AppDisabled);
    }
    validate_client_id(&request.client_id)?;
    let ttl_s = request.ttl_s.unwrap_or(DEFAULT_TTL_S.min(app.max_token_ttl_s));
    if ttl_s == 0 {
        return Err(Error::invalid("ttl_s must be at least 1"));
    }
    if ttl_s > app.max_token_ttl_s {
        return Err(Error::TtlTooLong { requested: ttl_s, max: app.max_token_ttl_s });
    }
    let cap = match request.capabilities {
        None => key.capabilities.clone(),
        Some(cap) => {
            cap.validate().map_err(|e| Error::invalid(e.to_string()))?;
            if !cap.is_subset_of(&key.capabilities) {
                return Err(Error::CapabilityEscalation(
                    "requested capabilities are not a subset of the API key's capabilities".into(),
                ));
            }
            cap
        }
    };
    if let Some(info) = &request.info {
        if !info.is_object() {
            return Err(Error::invalid("info must be a JSON object"));
        }
        if serde_json::to_vec(info).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_INFO_BYTES {
            return Err(Error::invalid(format!("info must be at most {MAX_INFO_BYTES} bytes of JSON")));
        }
    }
    // The jti is a UUIDv7: it carries the issue time in milliseconds, which client revocations
    // compare against (a token minted in the second of a revocation but after it is valid).
    let (jti, now) = aviary_core::token::new_token_id();
    let exp = now + i64::from(ttl_s);
    let claims = ConnectionClaims {
        iss: ISSUER.into(),
        sub: request.client_id,
        tid: key.tenant_id.clone(),
        app: app_id.to_owned(),
        akid: key.key_id.clone(),
        iat: now,
        exp,
        jti,
        cap,
        info: request.info,
    };
    let token = keyring.current().sign(&claims);
    metrics::counter!("aviary_tokens_minted_total", "tenant" => key.tenant_id.clone()).increment(1);
    let expires_at = DateTime::from_timestamp(exp, 0).ok_or_else(|| Error::Internal("expiry out of range".into()))?;
    Ok(IssuedToken { token, expires_at })
}
