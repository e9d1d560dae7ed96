//! Sealing secrets the control plane must be able to read back (Pusher signing secrets, webhook
//! signing secrets), at rest and on the config stream. Here because both planes use it: the
//! control plane seals at rest and onto the stream, a node opens what the stream and its cache
//! file carry.
//!
//! Unlike API keys, which are only ever compared and so are stored as argon2id hashes, a
//! Pusher secret is an HMAC key: every node that checks a Pusher signature needs it in clear.
//! So it is sealed with AES-256-GCM wherever it is stored or sent:
//!
//! - **At rest** under the *credentials key* (`--credentials-key` / `AVIARY_CREDENTIALS_KEY`,
//!   32 random bytes; `aviary dev` creates one in its data directory). A copy of the database
//!   alone reveals no secret.
//! - **On the `Watch` stream and in a node's config cache file** under a *stream key* derived
//!   from the node token with HKDF-SHA256. The gRPC link may be plain HTTP/2 inside a private
//!   network, and the cache file sits on the node's disk: neither shows a secret to anyone
//!   who does not hold the node token (whoever does could `Watch` anyway).
//!
//! Every sealed value is bound to what it belongs to (the associated data is the credential's
//! key), so a ciphertext copied onto another credential does not open. Format:
//! `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, nonces random (96 bits): far below the
//! 2^32 seals per key where random nonces start to risk a collision.

use rand::RngCore;
use rand::rngs::OsRng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// A configured credentials key that is not 32 bytes written as 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidKey(&'static str);

/// The only format so far; a rotation of the sealing scheme would add one.
const VERSION: u8 = 1;
/// HKDF salt and info naming what the stream key is for, so the node token never doubles as
/// a key for anything else.
const STREAM_SALT: &[u8] = b"aviary config stream v1";
const STREAM_INFO: &[u8] = b"pusher credential secrets";

/// An AES-256-GCM key that seals and opens secrets.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    /// A box from 32 raw key bytes.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        // 32 bytes is exactly AES-256's key length, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        SecretBox { key: LessSafeKey::new(unbound) }
    }

    /// Parses a configured credentials key: 64 hex characters (e.g. `openssl rand -hex 32`).
    pub fn parse(text: &str) -> Result<SecretBox, InvalidKey> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| InvalidKey("the credentials key must be 64 hex characters (openssl rand -hex 32)"))?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|_| InvalidKey("the credentials key must be 32 bytes (64 hex characters)"))?;
        Ok(SecretBox::new(&key))
    }

    /// A fresh random key, hex-encoded (what `aviary dev` keeps in its data directory).
    pub fn generate_hex() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        hex::encode(key)
    }

    /// The stream key every node and the control plane derive from the shared node token.
    pub fn for_config_stream(node_token: &str) -> SecretBox {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, STREAM_SALT);
        let prk = salt.extract(node_token.as_bytes());
        let mut key = [0u8; 32];
        // One 32-byte block of HKDF-SHA256 output is always available.
        prk.expand(&[STREAM_INFO], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut key))
            .unwrap_or_else(|_| unreachable!("32 bytes of HKDF-SHA256 output"));
        SecretBox::new(&key)
    }

    /// Seals `plaintext`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut buffer = plaintext.to_vec();
        // Sealing only fails for inputs beyond GCM's ~64 GiB limit.
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buffer)
            .unwrap_or_else(|_| unreachable!("a secret far below GCM's size limit"));
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&buffer);
        sealed
    }

    /// Opens what [`SecretBox::seal`] sealed with this key and `context`; `None` for anything
    /// else (another key, another context, altered bytes).
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(context), &mut buffer).ok()?;
        Some(plain.to_vec())
    }

    /// Seals a UTF-8 secret.
    pub fn seal_str(&self, secret: &str, context: &str) -> Vec<u8> {
        self.seal(secret.as_bytes(), context.as_bytes())
    }

    /// Opens a UTF-8 secret.
    pub fn open_str(&self, sealed: &[u8], context: &str) -> Option<String> {
        self.open(sealed, context.as_bytes()).and_then(|b| String::from_utf8(b).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let a = SecretBox::parse(&SecretBox::generate_hex()).unwrap();
        let b = SecretBox::parse(&SecretBox::generate_hex()).unwrap();
        let sealed = a.seal_str("the-secret", "key1");
        assert!(!sealed.windows(10).any(|w| w == b"the-secret"), "the secret is not in clear");
        assert_eq!(a.open_str(&sealed, "key1").as_deref(), Some("the-secret"));
        assert_eq!(a.open_str(&sealed, "key2"), None, "bound to its credential");
        assert_eq!(b.open_str(&sealed, "key1"), None, "another key cannot open it");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(a.open_str(&tampered, "key1"), None);
        assert_eq!(a.open_str(&[], "key1"), None);
        assert_ne!(a.seal_str("the-secret", "key1"), sealed, "nonces are fresh");
    }

    #[test]
    fn stream_keys_agree_for_the_same_node_token_only() {
        let sealed = SecretBox::for_config_stream("node-token").seal_str("s", "k");
        assert_eq!(SecretBox::for_config_stream("node-token").open_str(&sealed, "k").as_deref(), Some("s"));
        assert_eq!(SecretBox::for_config_stream("other-token").open_str(&sealed, "k"), None);
    }

    #[test]
    fn configured_keys_must_be_64_hex_characters() {
        assert!(SecretBox::parse("abcd").is_err());
        assert!(SecretBox::parse(&"zz".repeat(32)).is_err());
        assert!(SecretBox::parse(&"ab".repeat(32)).is_ok());
    }
}
