//! Connection tokens: the short-lived EdDSA JWTs a backend mints and a browser connects with.
//!
//! The algorithm is pinned to EdDSA on both sides: a token whose header names any other algorithm
//! (`none`, `HS256`, `RS256`) is refused before its signature is looked at, so there is no
//! algorithm confusion. `exp` is enforced with [`LEEWAY_S`] seconds of clock skew allowed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::capability::Capabilities;
use crate::config::Registry;

/// Issuer written into every token.
pub const ISSUER: &str = "aviary";

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_S: u64 = 5;

/// The claims of a connection token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The client id the app's backend vouches for (its user id, typically).
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// App id.
    pub app: String,
    /// The API key that minted this token, so revoking the key can cut its connections.
    pub akid: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// What this connection may do; always a subset of the minting key's capabilities.
    pub cap: Capabilities,
    /// Optional presence info shown to other members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Why a token was refused. The variants map one-to-one to protocol error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm must be EdDSA")]
    WrongAlgorithm,
    #[error("token is signed with an unknown key")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token was issued for another app")]
    WrongApp,
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
    #[error("token has been revoked")]
    Revoked,
}

/// A public key that verifies tokens, as published in the JWKS.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key.
    pub public: [u8; 32],
    decoding: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).finish()
    }
}

impl VerifyingKey {
    pub fn new(kid: impl Into<String>, public: [u8; 32]) -> Self {
        VerifyingKey { kid: kid.into(), public, decoding: DecodingKey::from_ed_der(&public) }
    }

    /// This key as a JWK (`kty: OKP`, `crv: Ed25519`).
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            key_use: "sig".into(),
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(self.public),
        }
    }
}

/// One entry of a JSON Web Key Set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub kid: String,
    /// Base64url public key.
    pub x: String,
}

impl Jwk {
    /// Parses the key back (what a third party verifying our tokens does).
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        if self.kty != "OKP" || self.crv != "Ed25519" {
            return None;
        }
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(&self.x).ok()?.try_into().ok()?;
        Some(VerifyingKey::new(self.kid.clone(), bytes))
    }
}

/// A JSON Web Key Set (`GET /.well-known/jwks.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A private signing key. Its secret half never leaves the control plane's store.
pub struct SigningKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    public: [u8; 32],
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key with a random `kid`.
    pub fn generate() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let kid = format!("sk_{}", uuid::Uuid::now_v7().simple());
        let pkcs8 = key.to_pkcs8_der().expect("ed25519 keys always encode").as_bytes().to_vec();
        Self::from_parts(kid, pkcs8, key.verifying_key().to_bytes())
    }

    /// Rebuilds a key from what [`SigningKey::pkcs8_der`] stored. `None` if the bytes are not an
    /// Ed25519 PKCS#8 document.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Option<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8).ok()?;
        Some(Self::from_parts(kid.into(), pkcs8.to_vec(), key.verifying_key().to_bytes()))
    }

    fn from_parts(kid: String, pkcs8: Vec<u8>, public: [u8; 32]) -> Self {
        let encoding = EncodingKey::from_ed_der(&pkcs8);
        SigningKey { kid, pkcs8, public, encoding }
    }

    /// The PKCS#8 DER of the private key, for storage.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::new(self.kid.clone(), self.public)
    }

    /// Signs `claims` into a compact JWT with this key's `kid` in the header.
    pub fn sign(&self, claims: &ConnectionClaims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("EdDSA signing of serializable claims cannot fail")
    }
}

/// Verifies a connection token against the registry's trusted keys and revocations.
///
/// Checks, in order: header parses and names EdDSA with a known `kid`; the signature; `exp`
/// (with leeway); `iss`; that the token's key and client are not revoked. The app's existence
/// and state are checked by the caller, which needs the app config anyway.
pub fn verify(token: &str, registry: &Registry) -> Result<ConnectionClaims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::WrongAlgorithm);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKey)?;
    let key = registry.verifying_key(&kid).ok_or(TokenError::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = LEEWAY_S;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
    let data = jsonwebtoken::decode::<ConnectionClaims>(token, &key.decoding, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
            ErrorKind::InvalidIssuer | ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                TokenError::BadClaims(e.to_string())
            }
            _ => TokenError::Malformed,
        }
    })?;
    let claims = data.claims;
    if registry.api_key_revoked(&claims.akid) || registry.client_revoked(&claims.app, &claims.sub, claims.iat) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

/// Convenience for tests and the demo: claims for `client_id` valid for `ttl_s` seconds.
pub fn claims_for(
    tenant_id: &str,
    app_id: &str,
    api_key_id: &str,
    client_id: &str,
    ttl_s: i64,
    cap: Capabilities,
) -> ConnectionClaims {
    let now = crate::unix_now();
    ConnectionClaims {
        iss: ISSUER.into(),
        sub: client_id.into(),
        tid: tenant_id.into(),
        app: app_id.into(),
        akid: api_key_id.into(),
        iat: now,
        exp: now + ttl_s,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        cap,
        info: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Operation;

    fn setup() -> (SigningKey, Registry) {
        let key = SigningKey::generate();
        let registry = Registry::new();
        registry.set_verifying_keys([key.verifying_key()]);
        (key, registry)
    }

    fn claims(ttl: i64) -> ConnectionClaims {
        claims_for(
            "ten_1",
            "app_1",
            "key_1",
            "user-1",
            ttl,
            Capabilities::from_pairs([("chat:*", &[Operation::Subscribe][..])]),
        )
    }

    #[test]
    fn round_trips_a_signed_token() {
        let (key, registry) = setup();
        let c = claims(60);
        assert_eq!(verify(&key.sign(&c), &registry).unwrap(), c);
    }

    #[test]
    fn survives_storage_and_jwk_round_trip() {
        let (key, _) = setup();
        let restored = SigningKey::from_pkcs8(key.kid.clone(), key.pkcs8_der()).unwrap();
        let registry = Registry::new();
        registry.set_verifying_keys([key.verifying_key().to_jwk().verifying_key().unwrap()]);
        assert!(verify(&restored.sign(&claims(60)), &registry).is_ok());
    }

    #[test]
    fn rejects_expired_tokens_beyond_leeway() {
        let (key, registry) = setup();
        assert_eq!(verify(&key.sign(&claims(-(LEEWAY_S as i64) - 2)), &registry), Err(TokenError::Expired));
        assert!(verify(&key.sign(&claims(-1)), &registry).is_ok(), "within leeway");
    }

    #[test]
    fn rejects_tokens_from_an_untrusted_key() {
        let (_, registry) = setup();
        let other = SigningKey::generate();
        assert_eq!(verify(&other.sign(&claims(60)), &registry), Err(TokenError::UnknownKey));
        // Same kid, different key material: a forgery.
        let (key, registry) = setup();
        let impostor = SigningKey::from_pkcs8(key.kid.clone(), other.pkcs8_der()).unwrap();
        assert_eq!(verify(&impostor.sign(&claims(60)), &registry), Err(TokenError::BadSignature));
    }

    #[test]
    fn rejects_alg_none_and_hmac_tokens() {
        let (key, registry) = setup();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, key.kid));
        assert!(verify(&format!("{none_header}.{body}."), &registry).is_err());
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(key.kid.clone());
        let hs_token =
            jsonwebtoken::encode(&hs, &claims(60), &EncodingKey::from_secret(&key.verifying_key().public)).unwrap();
        assert_eq!(verify(&hs_token, &registry), Err(TokenError::WrongAlgorithm));
        assert_eq!(verify("not a token", &registry), Err(TokenError::Malformed));
    }

    #[test]
    fn honours_key_and_client_revocation() {
        let (key, registry) = setup();
        let c = claims(60);
        let token = key.sign(&c);
        registry.revoke_client("app_1", "user-1", c.iat);
        assert_eq!(verify(&token, &registry), Err(TokenError::Revoked));
        let (key, registry) = setup();
        registry.revoke_api_key("app_1", "key_1");
        assert_eq!(verify(&key.sign(&c), &registry), Err(TokenError::Revoked));
    }
}
