//! Credentials: the operator token, tenant admin keys (`avt_...`), app API keys (`avk_...`),
//! how they are minted, hashed, verified and cached, and the axum extractors that demand them.
//!
//! A presented key reads `avk_<key_id>_<secret>`: the id selects one stored record, then the
//! secret is checked against that record's argon2id hash (OWASP parameters: 19 MiB, t=2, p=1).
//! An unknown id fails without running argon2; ids are not secret, so that reveals nothing.
//!
//! argon2id costs tens of milliseconds by design, far too slow to run per token mint, so
//! verified keys are cached for a short TTL under `(key id, SHA-256 of the presented secret)`.
//! When the entry expires, the store is read again but argon2 is not re-run as long as the
//! stored hash is the one the secret verified against: only the first use of a secret in a
//! process costs argon2. Revoking a key evicts it from this process's cache at once; other
//! control plane replicas stop accepting it within the cache TTL at the latest. Hashing runs on
//! the blocking pool, behind a semaphore so a flood of wrong keys cannot occupy every thread.
//!
//! The key id travels in every connection token (`akid`), so anyone can guess secrets for it.
//! Guesses must not stall the right secret: verifications are coalesced per *presented secret*
//! (never serialized per key id), a wrong secret is remembered for [`NEGATIVE_TTL`] so
//! repeating it costs nothing, and one key id has at most [`MAX_HASHING_PER_KEY`] argon2 runs
//! in flight or waiting, of which at most [`MAX_HASHING_PER_KEY_AND_SOURCE`] from one source
//! address; more are refused at once with 429 rather than queued, so guessers from one address
//! never fill the places of the backend's. Failed verifications are also limited per source
//! address ([`aviary_core::FailureLimiter`], [`FAILURES_PER_S`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use aviary_core::{ApiKeyAuthority, ApiKeyError, FailureLimiter, VerifiedApiKey};
use axum::extract::{ConnectInfo, FromRequestParts};
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
/// How long a wrong secret is remembered as wrong.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Most wrong secrets remembered; beyond it expired ones are swept, then new ones not kept.
const NEGATIVE_CAPACITY: usize = 100_000;
/// argon2 runs in flight or waiting for one key id; more are refused (429) instead of queued,
/// so guesses for one id use a bounded share of the hashing capacity.
pub const MAX_HASHING_PER_KEY: usize = 16;
/// argon2 runs in flight or waiting for one key id from one source address.
pub const MAX_HASHING_PER_KEY_AND_SOURCE: usize = 2;
pub use aviary_core::failures::{FAILURES_BURST, FAILURES_PER_S};

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
    /// The stored PHC hash the secret verified against: while the store still holds it, an
    /// expired entry is renewed without argon2.
    stored_hash: String,
    value: V,
    expires: Instant,
}

/// What the cache knows about a presented secret.
enum Cached<V> {
    /// Verified and fresh.
    Fresh(V),
    /// Verified against `stored_hash`, but the entry expired: re-read the store.
    Expired {
        stored_hash: String,
    },
    Unknown,
}

impl<V: Clone> VerifiedCache<V> {
    fn new(ttl: Duration) -> Self {
        VerifiedCache { entries: DashMap::new(), ttl, epoch: AtomicU64::new(0) }
    }

    fn get(&self, id: &str, secret_sha256: &[u8; 32]) -> Option<V> {
        match self.lookup(id, secret_sha256) {
            Cached::Fresh(value) => Some(value),
            _ => None,
        }
    }

    fn lookup(&self, id: &str, secret_sha256: &[u8; 32]) -> Cached<V> {
        let Some(entry) = self.entries.get(id) else { return Cached::Unknown };
        let same: bool = entry.secret_sha256.ct_eq(secret_sha256).into();
        if !same {
            Cached::Unknown
        } else if entry.expires > Instant::now() {
            Cached::Fresh(entry.value.clone())
        } else {
            Cached::Expired { stored_hash: entry.stored_hash.clone() }
        }
    }

    /// The epoch to pass to [`Self::insert`]; read it before looking the key up in the store.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn insert(&self, id: &str, secret_sha256: [u8; 32], stored_hash: String, value: V, epoch: u64) {
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
        entry.insert(CacheEntry { secret_sha256, stored_hash, value, expires: Instant::now() + self.ttl });
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
fn refused(kind: &'static str, result: &'static str) -> Error {
    metrics::counter!("aviary_key_verifications_total", "kind" => kind, "result" => result).increment(1);
    Error::Unauthorized
}

/// Wrong secrets seen recently, by `(key id, SHA-256 of the secret)`: repeating one costs a
/// map lookup, not argon2.
struct NegativeCache {
    entries: DashMap<(String, [u8; 32]), Instant>,
}

impl NegativeCache {
    fn contains(&self, id: &str, digest: &[u8; 32]) -> bool {
        self.entries.get(&(id.to_owned(), *digest)).is_some_and(|expires| *expires > Instant::now())
    }

    fn insert(&self, id: &str, digest: [u8; 32]) {
        if self.entries.len() >= NEGATIVE_CAPACITY {
            let now = Instant::now();
            self.entries.retain(|_, expires| *expires > now);
            if self.entries.len() >= NEGATIVE_CAPACITY {
                return;
            }
        }
        self.entries.insert((id.to_owned(), digest), Instant::now() + NEGATIVE_TTL);
    }

    /// A secret that was wrong for a record may be right after the key is re-created with
    /// the same id (never happens: ids are UUIDv7) or never; forgetting on eviction keeps the
    /// two caches symmetric anyway.
    fn forget(&self, id: &str) {
        self.entries.retain(|(k, _), _| k != id);
    }
}

/// Holds one presented secret's verification turn; on drop, removes its lock if nobody else
/// waits.
struct InFlightGuard {
    verifier: KeyVerifier,
    key: (String, [u8; 32]),
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
            .remove_if(&self.key, |_, lock| Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) == 2);
    }
}

/// A failure taken from a source's budget before a check; given back unless the check
/// refused the credential or found the key's hashing places taken (guessers crowding one key
/// spend their budget on it too, so they cannot keep its places occupied).
struct FailureCharge<'a> {
    limiter: &'a FailureLimiter,
    source: Option<IpAddr>,
}

impl FailureCharge<'_> {
    fn settle<T>(self, result: &Result<T>) {
        let charged = matches!(result, Err(Error::Unauthorized | Error::RateLimited { .. }));
        if let (Some(ip), false) = (self.source, charged) {
            self.limiter.give_back(ip);
        }
    }
}

/// One of a key id's argon2 places (and of its source's share); released on drop.
struct HashingPlace {
    verifier: KeyVerifier,
    id: String,
    source: Option<IpAddr>,
}

/// Counts one more in `map[key]` unless it is at `max`.
fn count_in<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K, max: usize) -> bool {
    let mut n = map.entry(key).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

/// Counts one less in `map[key]`, forgetting the key at zero.
fn count_out<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: &K) {
    map.remove_if_mut(key, |_, n| {
        *n = n.saturating_sub(1);
        *n == 0
    });
}

impl Drop for HashingPlace {
    fn drop(&mut self) {
        let inner = &self.verifier.inner;
        count_out(&inner.hashing_per_key, &self.id);
        if let Some(ip) = self.source {
            count_out(&inner.hashing_per_source, &(std::mem::take(&mut self.id), ip));
        }
    }
}

/// A verified tenant admin key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAdminKey {
    pub key_id: String,
    pub tenant_id: String,
}

/// What differs between the two kinds of stored keys; [`KeyVerifier::verify`] does the rest.
trait StoredKey: Clone + Send + Sync + 'static {
    /// The `kind` label of `aviary_key_verifications_total`.
    const KIND: &'static str;
    const PREFIX: &'static str;
    /// Whether a use is recorded as an admin key's.
    const ADMIN: bool;
    fn cache(inner: &VerifierInner) -> &VerifiedCache<Self>;
    /// The live (not revoked) key `id` from the store: its argon2id hash and what it verifies as.
    fn load<'a>(store: &'a dyn Store, id: &'a str) -> BoxFuture<'a, Result<Option<(String, Self)>>>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl StoredKey for VerifiedApiKey {
    const KIND: &'static str = "api";
    const PREFIX: &'static str = API_KEY_PREFIX;
    const ADMIN: bool = false;
    fn cache(inner: &VerifierInner) -> &VerifiedCache<Self> {
        &inner.api_keys
    }
    fn load<'a>(store: &'a dyn Store, id: &'a str) -> BoxFuture<'a, Result<Option<(String, Self)>>> {
        Box::pin(async move {
            Ok(store.api_key(id).await?.filter(|r| r.revoked_at.is_none()).map(|r| {
                let verified = VerifiedApiKey {
                    key_id: r.id,
                    tenant_id: r.tenant_id,
                    app_id: r.app_id,
                    capabilities: r.capabilities,
                };
                (r.secret_hash, verified)
            }))
        })
    }
}

impl StoredKey for VerifiedAdminKey {
    const KIND: &'static str = "admin";
    const PREFIX: &'static str = ADMIN_KEY_PREFIX;
    const ADMIN: bool = true;
    fn cache(inner: &VerifierInner) -> &VerifiedCache<Self> {
        &inner.admin_keys
    }
    fn load<'a>(store: &'a dyn Store, id: &'a str) -> BoxFuture<'a, Result<Option<(String, Self)>>> {
        Box::pin(async move {
            Ok(store
                .admin_key(id)
                .await?
                .filter(|r| r.revoked_at.is_none())
                .map(|r| (r.secret_hash, VerifiedAdminKey { key_id: r.id, tenant_id: r.tenant_id })))
        })
    }
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
    /// One verification per presented secret at a time: a burst of requests with the same cold
    /// key waits for the first argon2 run and then hits the cache. Keyed by the secret's digest,
    /// not the key id, so a wrong secret never holds up the right one.
    in_flight: DashMap<(String, [u8; 32]), Arc<tokio::sync::Mutex<()>>>,
    /// argon2 runs in flight or waiting per key id (at most [`MAX_HASHING_PER_KEY`]).
    hashing_per_key: DashMap<String, usize>,
    /// The same per key id and source address (at most [`MAX_HASHING_PER_KEY_AND_SOURCE`]).
    hashing_per_source: DashMap<(String, IpAddr), usize>,
    /// Wrong secrets seen recently.
    wrong: NegativeCache,
    /// Failed verifications per source address, charged by the REST extractors.
    failures: FailureLimiter,
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
                hashing_per_key: DashMap::new(),
                hashing_per_source: DashMap::new(),
                wrong: NegativeCache { entries: DashMap::new() },
                failures: FailureLimiter::new(FAILURES_PER_S, FAILURES_BURST),
            }),
        }
    }

    /// Verifies an `avk_...` key. [`Error::Unauthorized`] for anything that is not a live key;
    /// [`Error::RateLimited`] when this key id's hashing places are taken.
    pub async fn verify_api_key(&self, presented: &str) -> Result<VerifiedApiKey> {
        self.verify_api(presented, None).await
    }

    /// As [`Self::verify_api_key`] for a request from `source`, whose failed verifications are
    /// limited ([`FAILURES_PER_S`]); one that spent its budget is refused (429) before any
    /// hashing. A cached right key is never refused.
    pub async fn verify_api_key_from(&self, presented: &str, source: IpAddr) -> Result<VerifiedApiKey> {
        self.verify_api(presented, Some(source)).await
    }

    async fn verify_api(&self, presented: &str, source: Option<IpAddr>) -> Result<VerifiedApiKey> {
        self.verify::<VerifiedApiKey>(presented, source).await
    }

    /// Verifies a presented key of kind `K`: the cache, then (charged to `source`) the store and
    /// argon2. One procedure for both kinds, so a rule cannot differ between them.
    async fn verify<K: StoredKey>(&self, presented: &str, source: Option<IpAddr>) -> Result<K> {
        let (id, secret) = parse_key(presented, K::PREFIX).ok_or(Error::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some(hit) = K::cache(&self.inner).get(id, &digest) {
            metrics::counter!("aviary_key_verifications_total", "kind" => K::KIND, "result" => "cached").increment(1);
            return Ok(hit);
        }
        let charge = self.charge(source)?;
        let result = self.verify_uncached::<K>(id, secret, digest, source).await;
        charge.settle(&result);
        result
    }

    async fn verify_uncached<K: StoredKey>(
        &self,
        id: &str,
        secret: &str,
        digest: [u8; 32],
        source: Option<IpAddr>,
    ) -> Result<K> {
        let cache = K::cache(&self.inner);
        if self.inner.wrong.contains(id, &digest) {
            return Err(refused(K::KIND, "known_wrong"));
        }
        let _turn = self.one_at_a_time(id, digest).await;
        let known = match cache.lookup(id, &digest) {
            Cached::Fresh(hit) => return Ok(hit),
            Cached::Expired { stored_hash } => Some(stored_hash),
            Cached::Unknown if self.inner.wrong.contains(id, &digest) => return Err(refused(K::KIND, "known_wrong")),
            Cached::Unknown => None,
        };
        let epoch = cache.epoch();
        let Some((stored_hash, verified)) = K::load(&*self.inner.store, id).await? else {
            return Err(refused(K::KIND, "refused"));
        };
        // An expired entry whose stored hash has not changed needs no argon2: the secret
        // verified against exactly this hash before.
        if known.as_deref() != Some(stored_hash.as_str())
            && !self.check_secret(id, source, stored_hash.clone(), secret).await?
        {
            self.inner.wrong.insert(id, digest);
            return Err(refused(K::KIND, "refused"));
        }
        self.touch(id, K::ADMIN);
        metrics::counter!("aviary_key_verifications_total", "kind" => K::KIND, "result" => "verified").increment(1);
        cache.insert(id, digest, stored_hash, verified.clone(), epoch);
        Ok(verified)
    }

    /// Verifies an `avt_...` key (same rules as [`Self::verify_api_key`]).
    pub async fn verify_admin_key(&self, presented: &str) -> Result<VerifiedAdminKey> {
        self.verify_admin(presented, None).await
    }

    /// As [`Self::verify_admin_key`] for a request from `source` (see
    /// [`Self::verify_api_key_from`]).
    pub async fn verify_admin_key_from(&self, presented: &str, source: IpAddr) -> Result<VerifiedAdminKey> {
        self.verify_admin(presented, Some(source)).await
    }

    async fn verify_admin(&self, presented: &str, source: Option<IpAddr>) -> Result<VerifiedAdminKey> {
        self.verify::<VerifiedAdminKey>(presented, source).await
    }

    /// Serializes verifications of one presented secret; the guard's drop forgets the lock when
    /// unused.
    async fn one_at_a_time(&self, id: &str, digest: [u8; 32]) -> InFlightGuard {
        let key = (id.to_owned(), digest);
        let lock = self.inner.in_flight.entry(key.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        InFlightGuard { verifier: self.clone(), key, lock, _guard: Some(guard) }
    }

    /// Takes one of key `id`'s argon2 places (and one of `source`'s share of them), or refuses
    /// at once when they are taken.
    fn hashing_place(&self, id: &str, source: Option<IpAddr>) -> Result<HashingPlace> {
        let inner = &self.inner;
        let throttled = || {
            metrics::counter!("aviary_key_verifications_total", "kind" => "any", "result" => "throttled").increment(1);
            Error::RateLimited { retry_after_s: 1 }
        };
        if let Some(ip) = source
            && !count_in(&inner.hashing_per_source, (id.to_owned(), ip), MAX_HASHING_PER_KEY_AND_SOURCE)
        {
            return Err(throttled());
        }
        if !count_in(&inner.hashing_per_key, id.to_owned(), MAX_HASHING_PER_KEY) {
            if let Some(ip) = source {
                count_out(&inner.hashing_per_source, &(id.to_owned(), ip));
            }
            return Err(throttled());
        }
        Ok(HashingPlace { verifier: self.clone(), id: id.to_owned(), source })
    }

    /// Runs argon2id verification on the blocking pool, at most one per CPU at a time, within
    /// key `id`'s places.
    async fn check_secret(&self, id: &str, source: Option<IpAddr>, hash: String, secret: &str) -> Result<bool> {
        let _place = self.hashing_place(id, source)?;
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

    /// Takes one failure from `source`'s budget, or refuses (429) when it is spent.
    fn charge(&self, source: Option<IpAddr>) -> Result<FailureCharge<'_>> {
        if let Some(ip) = source
            && let Err(wait) = self.inner.failures.try_take(ip)
        {
            metrics::counter!("aviary_key_verifications_total", "kind" => "any", "result" => "source_limited")
                .increment(1);
            return Err(Error::RateLimited { retry_after_s: wait.as_secs().max(1) });
        }
        Ok(FailureCharge { limiter: &self.inner.failures, source })
    }

    /// Checks the operator token for a request from `source`, charging a mismatch to it. The
    /// comparison is cheap, so the right token is never refused for its address's failures.
    pub fn check_operator(&self, state: &ControlPlaneState, presented: Option<&str>, source: IpAddr) -> Result<()> {
        if presented.is_some_and(|token| state.is_operator(token)) {
            return Ok(());
        }
        let charge = self.charge(Some(source))?;
        let result = Err(Error::Unauthorized);
        charge.settle(&result);
        result
    }

    /// Forgets a cached API key at once (revocation).
    pub fn evict_api_key(&self, key_id: &str) {
        self.inner.api_keys.evict(key_id);
        self.inner.wrong.forget(key_id);
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
        KeyVerifier::verify_api_key(self, presented).await.map_err(api_key_error)
    }

    async fn verify_api_key_from(&self, presented: &str, source: IpAddr) -> Result<VerifiedApiKey, ApiKeyError> {
        KeyVerifier::verify_api_key_from(self, presented, source).await.map_err(api_key_error)
    }
}

fn api_key_error(e: Error) -> ApiKeyError {
    match e {
        Error::Unauthorized => ApiKeyError::Invalid,
        Error::RateLimited { .. } => ApiKeyError::Throttled,
        _ => ApiKeyError::Unavailable,
    }
}

/// The bearer credential of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    aviary_core::auth::bearer_credential(parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?)
}

/// The client address of a request ([`aviary_core::ClientAddr`]: the TCP peer, or what a
/// trusted proxy forwarded).
fn peer_ip(parts: &Parts) -> IpAddr {
    aviary_core::ClientAddr::of(
        parts.extensions.get::<aviary_core::ClientAddr>(),
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
    )
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

    /// As [`Self::tenant_admin`] for a request from `source`, whose failures are limited.
    pub async fn tenant_admin_from(&self, presented: Option<&str>, source: IpAddr) -> Result<TenantAdmin> {
        let presented = presented.ok_or(Error::Unauthorized)?;
        if presented.starts_with(ADMIN_KEY_PREFIX) {
            return Ok(TenantAdmin::Tenant(self.keys().verify_admin_key_from(presented, source).await?));
        }
        self.keys().check_operator(self, Some(presented), source).map(|()| TenantAdmin::Operator)
    }
}

impl FromRequestParts<ControlPlaneState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        state.keys().check_operator(state, bearer(parts), peer_ip(parts)).map(|()| Operator)
    }
}

impl FromRequestParts<ControlPlaneState> for TenantAdmin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        state.tenant_admin_from(bearer(parts), peer_ip(parts)).await
    }
}

impl FromRequestParts<ControlPlaneState> for AppKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self> {
        let token = bearer(parts).ok_or(Error::Unauthorized)?;
        Ok(AppKey(state.keys().verify_api_key_from(token, peer_ip(parts)).await?))
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
        cache.insert("k", [1; 32], String::new(), 7u8, started);
        assert_eq!(cache.get("k", &[1; 32]), None, "a revoked key must not come back");
        cache.insert("k", [1; 32], String::new(), 7u8, cache.epoch());
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
