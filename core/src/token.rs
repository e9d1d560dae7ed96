//! Connection tokens: the short-lived EdDSA JWTs a backend mints and a browser connects with.
//!
//! The algorithm is pinned to EdDSA on both sides: a token whose header names any other algorithm
//! (`none`, `HS256`, `RS256`) is refused before its signature is looked at, so there is no
//! algorithm confusion. `exp` is enforced with [`LEEWAY_S`] seconds of clock skew allowed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use serde::{Deserialize, Serialize};

use crate::capability::Capabilities;

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
    /// Unique token id: a UUIDv7, whose timestamp is the issue time in milliseconds (see
    /// [`ConnectionClaims::issued_at_ms`]).
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
    /// The key decompressed once: checking a signature against raw bytes would redo the
    /// point decompression (a field square root) on every connect.
    parsed: Option<ed25519_dalek::VerifyingKey>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).finish()
    }
}

impl VerifyingKey {
    pub fn new(kid: impl Into<String>, public: [u8; 32]) -> Self {
        // Bytes that are not a curve point verify nothing: every token signed "by" them fails.
        let parsed = ed25519_dalek::VerifyingKey::from_bytes(&public).ok();
        VerifyingKey { kid: kid.into(), public, parsed }
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
    /// Parsed once (a PKCS#8 parse plus deriving the public point), not per token.
    signer: ed25519_dalek::SigningKey,
    /// The encoded JWT header, the same for every token this key signs.
    header_b64: String,
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
        Self::from_parts(kid, pkcs8, key)
    }

    /// Rebuilds a key from what [`SigningKey::pkcs8_der`] stored. `None` if the bytes are not an
    /// Ed25519 PKCS#8 document.
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Option<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8).ok()?;
        Some(Self::from_parts(kid.into(), pkcs8.to_vec(), key))
    }

    fn from_parts(kid: String, pkcs8: Vec<u8>, signer: ed25519_dalek::SigningKey) -> Self {
        let header = JwtHeader { typ: Some("JWT".into()), alg: EDDSA.into(), kid: Some(kid.clone()) };
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("a JWT header serializes"));
        SigningKey { kid, pkcs8, public: signer.verifying_key().to_bytes(), signer, header_b64 }
    }

    /// The PKCS#8 DER of the private key, for storage.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::new(self.kid.clone(), self.public)
    }

    /// Signs `claims` into a compact JWT (RFC 7515 compact serialization, `alg: EdDSA`, this
    /// key's `kid` in the header).
    pub fn sign(&self, claims: &ConnectionClaims) -> String {
        use ed25519_dalek::Signer;
        let payload = serde_json::to_vec(claims).expect("connection claims serialize");
        // Header, payload in base64 (4 characters per 3 bytes, rounded up), two dots and the
        // 86 characters of a 64-byte signature.
        let mut token = String::with_capacity(self.header_b64.len() + payload.len().div_ceil(3) * 4 + 2 + 86);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signer.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        token
    }
}

/// The JOSE `alg` of every connection token.
const EDDSA: &str = "EdDSA";

/// The fields of a JWT header Aviary writes and reads (RFC 7515 §4.1), in the order
/// `jsonwebtoken` writes them, so tokens are byte-for-byte what it would produce. Run-time code
/// needs nothing else from a JWT library (`jsonwebtoken` and its RSA dependency stay in the
/// tests, which cross-check against it).
#[derive(Serialize, Deserialize)]
struct JwtHeader {
    #[serde(skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// What verifying a token needs from the live config: the trusted keys and the revocations.
/// [`crate::Registry`] implements it; a trait so this module does not depend on `config`, which
/// depends on this one for [`VerifyingKey`].
pub trait TokenTrust {
    /// The trusted key with this `kid`, if any.
    fn verifying_key(&self, kid: &str) -> Option<std::sync::Arc<VerifyingKey>>;
    /// Whether the API key that minted a token was revoked.
    fn api_key_revoked(&self, key_id: &str) -> bool;
    /// Whether the client's tokens issued at or before `issued_at_ms` were revoked.
    fn client_revoked(&self, app_id: &str, client_id: &str, issued_at_ms: i64) -> bool;
}

/// A shared registry (`Arc<Registry>`, as nodes hold it) verifies like the registry.
impl<T: TokenTrust + ?Sized> TokenTrust for std::sync::Arc<T> {
    fn verifying_key(&self, kid: &str) -> Option<std::sync::Arc<VerifyingKey>> {
        (**self).verifying_key(kid)
    }

    fn api_key_revoked(&self, key_id: &str) -> bool {
        (**self).api_key_revoked(key_id)
    }

    fn client_revoked(&self, app_id: &str, client_id: &str, issued_at_ms: i64) -> bool {
        (**self).client_revoked(app_id, client_id, issued_at_ms)
    }
}

/// Verifies a connection token against the trusted keys and revocations of `trust` (the
/// registry).
///
/// Checks, in order: the token has three parts; the header parses and names EdDSA with a known
/// `kid`; the signature (strict Ed25519, against the key decompressed once when it was
/// trusted); the claims parse; `iss`; `exp` (with leeway); that the token's key and client
/// are not revoked. The app's existence and state are checked by the caller, which needs the
/// app config anyway.
///
/// This is the connect hot path, so the token is split, decoded and parsed once (a generic
/// `jsonwebtoken::decode` parses the header twice and the claims twice, and decompresses the
/// public key per call).
pub fn verify(token: &str, registry: &(impl TokenTrust + ?Sized)) -> Result<ConnectionClaims, TokenError> {
    let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header_b64, payload_b64) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if payload_b64.contains('.') {
        return Err(TokenError::Malformed);
    }
    let header: JwtHeader = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != EDDSA {
        return Err(TokenError::WrongAlgorithm);
    }
    let kid = header.kid.ok_or(TokenError::UnknownKey)?;
    let key = registry.verifying_key(&kid).ok_or(TokenError::UnknownKey)?;
    let parsed = key.parsed.as_ref().ok_or(TokenError::BadSignature)?;
    let mut sig = [0u8; ed25519_dalek::SIGNATURE_LENGTH];
    match URL_SAFE_NO_PAD.decode_slice(signature, &mut sig) {
        Ok(n) if n == sig.len() => {}
        _ => return Err(TokenError::BadSignature),
    }
    parsed
        .verify_strict(signed.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let claims: ConnectionClaims =
        serde_json::from_slice(&payload).map_err(|e| TokenError::BadClaims(e.to_string()))?;
    if claims.iss != ISSUER {
        return Err(TokenError::BadClaims("invalid issuer".into()));
    }
    if claims.exp.saturating_add(LEEWAY_S as i64) < crate::unix_now() {
        return Err(TokenError::Expired);
    }
    if registry.api_key_revoked(&claims.akid)
        || registry.client_revoked(&claims.app, &claims.sub, claims.issued_at_ms())
    {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

impl ConnectionClaims {
    /// When the token was issued, in Unix milliseconds: the timestamp of its UUIDv7 `jti`,
    /// which client revocations compare against at millisecond precision. A token whose `jti`
    /// is not a UUIDv7 counts as issued at the last millisecond of its `iat` second, so a
    /// revocation in that second still covers it.
    pub fn issued_at_ms(&self) -> i64 {
        uuid::Uuid::try_parse(&self.jti)
            .ok()
            .filter(|id| id.get_version_num() == 7)
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000) + i64::from(nanos / 1_000_000)
            })
            .unwrap_or_else(|| self.iat.saturating_mul(1000).saturating_add(999))
    }
}

/// A fresh token id and the issue time it encodes: `(jti, iat seconds)`.
pub fn new_token_id() -> (String, i64) {
    let id = uuid::Uuid::now_v7();
    let secs = id.get_timestamp().map_or_else(crate::unix_now, |ts| i64::try_from(ts.to_unix().0).unwrap_or(0));
    (id.simple().to_string(), secs)
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
    let (jti, now) = new_token_id();
    ConnectionClaims {
        iss: ISSUER.into(),
        sub: client_id.into(),
        tid: tenant_id.into(),
        app: app_id.into(),
        akid: api_key_id.into(),
        iat: now,
        exp: now + ttl_s,
        jti,
        cap,
        info: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Operation;
    use crate::config::Registry;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

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
    fn tokens_are_standard_jwts() {
        // What a third party holding only the JWKS does: verify with a stock JWT library.
        let (key, _) = setup();
        let c = claims(60);
        let token = key.sign(&c);
        let jwk = key.verifying_key().to_jwk();
        let decoding = DecodingKey::from_ed_components(&jwk.x).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<ConnectionClaims>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims, c);
        assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        // And what the stock library signs, we verify.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let registry = Registry::new();
        registry.set_verifying_keys([key.verifying_key()]);
        let stock = jsonwebtoken::encode(&header, &c, &EncodingKey::from_ed_der(key.pkcs8_der())).unwrap();
        assert_eq!(verify(&stock, &registry).unwrap(), c);
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
    fn rejects_tampered_and_misshapen_tokens() {
        let (key, registry) = setup();
        let token = key.sign(&claims(60));
        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        // Claims swapped under a valid signature (a longer lifetime, say): a forgery.
        let mut longer = claims(3600);
        longer.jti = "forged".into();
        let swapped = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&longer).unwrap());
        assert_eq!(verify(&format!("{header}.{swapped}.{signature}"), &registry), Err(TokenError::BadSignature));
        // A truncated or padded signature.
        assert_eq!(verify(&token[..token.len() - 4], &registry), Err(TokenError::BadSignature));
        assert_eq!(verify(&format!("{token}AAAA"), &registry), Err(TokenError::BadSignature));
        // Four parts, two parts, an empty string.
        assert_eq!(verify(&format!("{header}.{token}"), &registry), Err(TokenError::Malformed));
        assert_eq!(verify(&format!("{header}.{signature}"), &registry), Err(TokenError::Malformed));
        assert_eq!(verify("", &registry), Err(TokenError::Malformed));
    }

    #[test]
    fn rejects_a_foreign_issuer_and_missing_claims() {
        let (key, registry) = setup();
        let mut c = claims(60);
        c.iss = "someone-else".into();
        assert!(matches!(verify(&key.sign(&c), &registry), Err(TokenError::BadClaims(_))));
        // Properly signed by the trusted key, but not a connection token.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let encoding = EncodingKey::from_ed_der(key.pkcs8_der());
        let partial = jsonwebtoken::encode(&header, &serde_json::json!({"iss": ISSUER, "exp": 1}), &encoding).unwrap();
        assert!(matches!(verify(&partial, &registry), Err(TokenError::BadClaims(_))));
    }

    #[test]
    fn honours_key_and_client_revocation() {
        let (key, registry) = setup();
        let c = claims(60);
        let token = key.sign(&c);
        registry.revoke_client("app_1", "user-1", c.issued_at_ms() - 1);
        assert!(verify(&token, &registry).is_ok(), "revoked a millisecond before it was issued");
        registry.revoke_client("app_1", "user-1", c.issued_at_ms());
        assert_eq!(verify(&token, &registry), Err(TokenError::Revoked));
        let (key, registry) = setup();
        registry.revoke_api_key("app_1", "key_1");
        assert_eq!(verify(&key.sign(&c), &registry), Err(TokenError::Revoked));
    }
}
