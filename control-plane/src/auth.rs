//! Credentials: the operator token, tenant admin keys (`avt_...`), app API keys (`avk_...`),
//! how they are minted, hashed, verified and cached, and the axum extractors that demand them.
//!
//! A presented key reads `avk_<key_id>_<secret>`: the id selects one stored record, then the
//! secret is checked against that record's argon2id hash (OWASP parameters: 19 MiB, t=2, p=1).
//! An unknown id fails without running argon2; ids are not secret, so that reveals nothing.
//!
//! argon2id costs tens of milliseconds by design, far too slow to run per token mint, so
//! verified keys are cached for a short TTL under `(key id, SHA-256 of the presented secret)`.
//! Revoking a key evicts it from this process's cache at once; other control plane replicas
//! stop accepting it within the cache TTL at the latest. Hashing runs on the blocking pool,
//! behind a semaphore so a flood of wrong keys cannot occupy every thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use aviary_core::{ApiKeyAuthority, ApiKeyError, VerifiedApiKey};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use dashmap::DashMap;
use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::ControlPlaneState;
use crate::error::{Error, Result};
use crate::store::Store;

/// Prefix of tenant admin keys.
pub const ADMIN_KEY_PREFIX: &str = "avt_";
/// Prefix of app API keys; secret scanners can match `avk_[0-9a-f]{32}_[0-9A-Za-z]{40}`.
pub const API_KEY_PREFIX: &str = "avk_";
/// Length of the random secret part of a key.
const SECRET_LEN: usize = 40;
/// Most entries one verified-key cache holds; beyond it new verifications are simply not cached.
const CACHE_CAPACITY: usize = 100_000;

/// argon2id with the OWASP-recommended parameters (m = 19 MiB, t = 2, p = 1).
fn argon2() -> Argon2<'static> {
    // These constants are within argon2's bounds, so construction cannot fail.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A freshly minted key: its id, the full secret to show once, and the hash to store.
pub struct MintedKey {
    pub id: String,
    /// The full presented form, e.g. `avk_<id>_<secret>`. Shown once, never stored or logged.
    pub secret: String,
    pub hash: String,
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Generates a key with `prefix` and hashes its secret (on the blocking pool).
pub async fn mint_key(prefix: &'static str) -> Result<MintedKey> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let secret: String = OsRng.sample_iter(&Alphanumeric).take(SECRET_LEN).map(char::from).collect();
    let presented = format!("{prefix}{id}_{secret}");
    let hash = tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2().hash_password(secret.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    .map_err(|e| Error::Internal(format!("hashing failed: {e}")))?;
    Ok(MintedKey { id, secret: presented, hash })
}

/// Splits `<prefix><id>_<secret>` into id and secret, checking the shape so garbage never
/// reaches the store.
pub fn parse_key<'a>(presented: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let (id, secret) = presented.strip_prefix(prefix)?.split_once('_')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some((id, secret))
}

/// Constant-time equality of two secrets that also hides their lengths (both are hashed first).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())).into()
}

/// A short-lived map from key id to "this secret verified, here is what it grants".
///
/// Evictions bump `epoch` *before* removing; an insert checks the epoch it started from while
/// holding the entry's shard lock. So a verification that read the store before a revocation
/// and finishes after it can never put the revoked key back.
struct VerifiedCache<V> {
    entries: DashMap<String, CacheEntry<V>>,
    ttl: Duration,
    epoch: AtomicU64,
}

struct CacheEntry<V> {
    secret_sha256: [u8; 32],
    value: V,
    expires: Instant,
}

impl<V: Clone> VerifiedCache<V> {
    fn new(ttl: Duration) -> Self {
        VerifiedCache { entries: DashMap::new(), ttl, epoch: AtomicU64::new(0) }
    }

    fn get(&self, id: &str, secret_sha256: &[u8; 32]) -> Option<V> {
        let entry = self.entries.get(id)?;
        let same: bool = entry.secret_sha256.ct_eq(secret_sha256).into();
        (same && entry.expires > Instant::now()).then(|| entry.value.clone())
    }

    /// The epoch to pass to [`Self::insert`]; read it before looking the key up in the store.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn insert(&self, id: &str, secret_sha256: [u8; 32], value: V, epoch: u64) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= CACHE_CAPACITY {
                return;
            }
        }
        let entry = self.entries.entry(id.to_owned());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        entry.insert(CacheEntry { secret_sha256, value, expires: Instant::now() + self.ttl });
    }

    fn evict(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(id);
    }

    fn evict_where(&self, pred: impl Fn(&V) -> bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.retain(|_, e| !pred(&e.value));
    }
}

/// Counts a refused verification and returns the error to show.
fn refused(kind: &'static str) -> Error {
    metrics::counter!("aviary_key_verifications_total", "kind" => kind, "result" => "refused").increment(1);
    Error::Unauthorized
}

/// Holds a key id's verification turn; on drop, removes the id's lock if nobody else waits.
struct InFlightGuard {
    verifier: KeyVerifier,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self._guard.take();
        // Two references mean only the map's and ours: no waiter would lose its lock. The check
        // runs under the map's shard lock, which `entry()` in `one_at_a_time` also takes.
        self.verifier
            .inner
            .in_flight
            .remove_if(&self.id, |_, lock| Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) == 2);
    }
}

/// A verified tenant admin key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAdminKey {
    pub key_id: String,
    pub tenant_id: String,
}

/// Verifies admin and API keys against the store, with the verified-key cache in front.
#[derive(Clone)]
pub struct KeyVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    store: Arc<dyn Store>,
    api_keys: VerifiedCache<VerifiedApiKey>,
    admin_keys: VerifiedCache<VerifiedAdminKey>,
    hashing: Semaphore,
    /// One verification per key id at a time: a burst of requests on a cold key waits for the
    /// first argon2 run and then hits the cache, instead of running argon2 once per request.
    in_flight: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl KeyVerifier {
    pub fn new(store: Arc<dyn Store>, cache_ttl: Duration) -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        KeyVerifier {
            inner: Arc::new(VerifierInner {
                store,
                api_keys: VerifiedCache::new(cache_ttl),
                admin_keys: VerifiedCache::new(cache_ttl),
                hashing: Semaphore::new(cpus),
                in_flight: DashMap::new(),
            }),
        }
    }

    /// Verifies an `avk_...` key. [`Error::Unauthorized`] for anything that is not a live key.
    pub async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey> {
        let (id, secret) = parse_key(presented, API_KEY_PREFIX).ok_or(Error::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let cache = &self.inner.api_keys;
        if let Some(hit) = cache.get(id, &digest) {
            metrics::counter!("aviary_key_verifications_total", "kind" => "api", "result" => "cached").increment(1);
            return Ok(hit);
        }
        let _turn = self.one_at_a_time(id).await;
        if let Some(hit) = cache.get(id, &digest) {
            return Ok(hit);
        }
        let epoch = cache.epoch();
        let record = match self.inner.store.api_key(id).await?.filter(|r| r.revoked_at.is_none()) {
            Some(r) if self.check_secret(r.secret_hash.clone(), secret).await? => r,
            _ => return Err(refused("api")),
        };
        metrics::counter!("aviary_key_verifications_total", "kind" => "api", "result" => "verified").increment(1);
        let verified = VerifiedApiKey {
            key_id: record.id,
            tenant_id: record.tenant_id,
            app_id: record.app_id,
            capabilities: record.capabilities,
        };
        cache.insert(id, digest, verified.clone(), epoch);
        self.touch(id, false);
        Ok(verified)
    }

    /// Verifies an `avt_...` key.
    pub async fn verify_admin_key(&self, presented: &str) -> Result<VerifiedAdminKey> {
        let (id, secret) = parse_key(presented, ADMIN_KEY_PREFIX).ok_or(Error::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let cache = &self.inner.admin_keys;
        if let Some(hit) = cache.get(id, &digest) {
            metrics::counter!("aviary_key_verifications_total", "kind" => "admin", "result" => "cached").increment(1);
            return Ok(hit);
        }
        let _turn = self.one_at_a_time(id).await;
        if let Some(hit) = cache.get(id, &digest) {
            return Ok(hit);
        }
        let epoch = cache.epoch();
        let record = match self.inner.store.admin_key(id).await?.filter(|r| r.revoked_at.is_none()) {
            Some(r) if self.check_secret(r.secret_hash.clone(), secret).await? => r,
            _ => return Err(refused("admin")),
        };
        metrics::counter!("aviary_key_verifications_total", "kind" => "admin", "result" => "verified").increment(1);
        let verified = VerifiedAdminKey { key_id: record.id, tenant_id: record.tenant_id };
        cache.insert(id, digest, verified.clone(), epoch);
        self.touch(id, true);
        Ok(verified)
    }

    /// Serializes verifications of one key id; the guard's drop forgets the lock when unused.
    async fn one_at_a_time(&self, id: &str) -> InFlightGuard {
        let lock = self.inner.in_flight.entry(id.to_owned()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        InFlightGuard { verifier: self.clone(), id: id.to_owned(), lock, _guard: Some(guard) }
    }

    /// Runs argon2id verification on the blocking pool, at most one per CPU at a time.
    async fn check_secret(&self, hash: String, secret: &str) -> Result<bool> {
        let _permit = self.inner.hashing.acquire().await.map_err(|_| Error::Internal("verifier closed".into()))?;
        let secret = secret.to_owned();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).map(|parsed| argon2().verify_password(secret.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| Error::Internal(format!("verification task failed: {e}")))?
        .map_err(|_| Error::Corrupt("stored key hash is not a PHC string".into()))
    }

    /// Updates `last_used_at` in the background. Runs once per cache miss, so the figure is
    /// accurate to the cache TTL without a write per request.
    fn touch(&self, id: &str, admin: bool) {
        let store = self.inner.store.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let now = crate::store::now();
            let done = if admin { store.touch_admin_key(&id, now).await } else { store.touch_api_key(&id, now).await };
            if let Err(e) = done {
                tracing::warn!(key_id = %id, error = %e, "could not record key use");
            }
        });
    }

    /// Forgets a cached API key at once (revocation).
    pub fn evict_api_key(&self, key_id: &str) {
        self.inner.api_keys.evict(key_id);
    }

    /// Forgets a cached admin key at once (revocation).
    pub fn evict_admin_key(&self, key_id: &str) {
        self.inner.admin_keys.evict(key_id);
    }

    /// Forgets every cached API key of an app (app deleted).
    pub fn evict_app(&self, app_id: &str) {
        self.inner.api_keys.evict_where(|k| k.app_id == app_id);
    }

    /// Forgets every cached key of a tenant (tenant deleted).
    pub fn evict_tenant(&self, tenant_id: &str) {
        self.inner.api_keys.evict_where(|k| k.tenant_id == tenant_id);
        self.inner.admin_keys.evict_where(|k| k.tenant_id == tenant_id);
    }
}

#[async_trait]
impl ApiKeyAuthority for KeyVerifier {
    async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey, ApiKeyError> {
        KeyVerifier::verify_api_key(self, presented).await.map_err(|e| match e {
            Error::Unauthorized => ApiKeyError::Invalid,
            _ => ApiKeyError::Unavailable,
        })
    }
}

/// The bearer credential of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller presented the operator token.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

/// Who may administer a tenant: its own admin key, or the operator (who can create admin keys
/// for any tenant anyway, so this grants the operator nothing new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantAdmin {
    Operator,
    Tenant(VerifiedAdminKey),
}

impl TenantAdmin {
    /// Checks the caller may act on `tenant_id`. Another tenant's resources are reported as
    /// missing (404), never as forbidden, so their existence is not revealed.
    pub fn check(&self, tenant_id: &str, what: &'static str) -> Result<()> {
        match self {
            TenantAdmin::Operator => Ok(()),
            TenantAdmin::Tenant(k) if k.tenant_id == tenant_id => Ok(()),
            TenantAdmin::Tenant(_) => Err(Error::NotFound(what)),
        }
    }

    /// The tenant id to log.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            TenantAdmin::Operator => None,
            TenantAdmin::Tenant(k) => Some(&k.tenant_id),
        }
    }
}

/// A verified app API key.
#[derive(Debug, Clone)]
pub struct AppKey(pub VerifiedApiKey);

impl ControlPlaneState {
    /// Is `presented` the operator token? Constant time.
    pub fn is_operator(&self, presented: &str) -> bool {
        secrets_equal(presented, &self.config().operator_token)
    }

    /// Resolves a bearer credential to a tenant administrator.
    pub async fn tenant_admin(&self, presented: Option<&str>) -> Result<TenantAdmin> {
        let presented = presented.ok_or(Error::Unauthorized)?;
        if presented.starts_with(ADMIN_KEY_PREFIX) {
            return Ok(TenantAdmin::Tenant(self.keys().verify_admin_key(presented).await?));
        }
        if self.is_operator(presented) {
            return Ok(TenantAdmin::Operator);
        }
        Err(Error::Unauthorized)
    }
}

impl FromRequestParts<ControlPlaneState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        match bearer(parts) {
            Some(token) if state.is_operator(token) => Ok(Operator),
            _ => Err(Error::Unauthorized),
        }
    }
}

impl FromRequestParts<ControlPlaneState> for TenantAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        state.tenant_admin(bearer(parts)).await
    }
}

impl FromRequestParts<ControlPlaneState> for AppKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        let token = bearer(parts).ok_or(Error::Unauthorized)?;
        Ok(AppKey(state.keys().verify_api_key(token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_keys() {
        let id = "0192f3a4b5c6d7e8f90a1b2c3d4e5f60";
        let secret = "A".repeat(SECRET_LEN);
        let key = format!("avk_{id}_{secret}");
        assert_eq!(parse_key(&key, API_KEY_PREFIX), Some((id, secret.as_str())));
        assert_eq!(parse_key(&key, ADMIN_KEY_PREFIX), None);
        assert_eq!(parse_key(&format!("avk_{id}_{secret}x"), API_KEY_PREFIX), None);
        assert_eq!(parse_key(&format!("avk_{id}'; DROP TABLE api_keys;--_{secret}"), API_KEY_PREFIX), None);
        assert_eq!(parse_key("avk_", API_KEY_PREFIX), None);
    }

    #[test]
    fn secret_comparison_is_exact() {
        assert!(secrets_equal("op-token", "op-token"));
        assert!(!secrets_equal("op-token", "op-tokem"));
        assert!(!secrets_equal("op-token", "op-token-longer"));
    }

    #[test]
    fn a_verification_that_started_before_an_eviction_is_not_cached() {
        let cache = VerifiedCache::new(Duration::from_secs(60));
        let started = cache.epoch();
        cache.evict("k");
        cache.insert("k", [1; 32], 7u8, started);
        assert_eq!(cache.get("k", &[1; 32]), None, "a revoked key must not come back");
        cache.insert("k", [1; 32], 7u8, cache.epoch());
        assert_eq!(cache.get("k", &[1; 32]), Some(7));
        assert_eq!(cache.get("k", &[2; 32]), None, "another secret for the same id misses");
    }

    #[tokio::test]
    async fn minted_keys_verify_with_argon2id() {
        let key = mint_key(API_KEY_PREFIX).await.unwrap();
        assert!(key.hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let (_, secret) = parse_key(&key.secret, API_KEY_PREFIX).unwrap();
        let parsed = PasswordHash::new(&key.hash).unwrap();
        assert!(argon2().verify_password(secret.as_bytes(), &parsed).is_ok());
        assert!(argon2().verify_password(b"wrong", &parsed).is_err());
    }
}
