//! Request rate limits (tower-governor): one bucket per client IP and one per presented
//! credential, both answering 429 `rate-limited` problems with `Retry-After`.
//!
//! The per-credential bucket is keyed by the SHA-256 of the bearer value, so a busy backend
//! behind a shared NAT is limited on its key rather than its neighbours' traffic, and secrets
//! are never kept in memory as map keys. Requests without credentials fall back to their IP.
//! The client IP is the request's [`aviary_core::ClientAddr`], which the binary resolves: the
//! TCP peer, or the address a trusted proxy forwarded (`--trusted-proxies`). This crate never
//! reads forwarding headers itself: it cannot know which proxy set them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use sha2::{Digest, Sha256};
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::error::Error;

/// Sustained rate and burst of each bucket; a rate of 0 switches that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub per_ip_per_s: u32,
    pub per_ip_burst: u32,
    pub per_key_per_s: u32,
    pub per_key_burst: u32,
}

impl Default for RateLimitConfig {
    /// Generous enough for a backend minting tokens for a busy site, tight enough to stop
    /// credential guessing from one address: 200/s per IP (burst 400), 100/s per key (burst 200).
    fn default() -> Self {
        RateLimitConfig { per_ip_per_s: 200, per_ip_burst: 400, per_key_per_s: 100, per_key_burst: 200 }
    }
}

impl RateLimitConfig {
    /// No limits at all (load tests).
    pub fn unlimited() -> Self {
        RateLimitConfig { per_ip_per_s: 0, per_ip_burst: 0, per_key_per_s: 0, per_key_burst: 0 }
    }
}

/// The resolved client address, else the TCP peer as axum (`ConnectInfo`) or tonic
/// (`TcpConnectInfo`) recorded it.
fn peer_ip<T>(req: &Request<T>) -> IpAddr {
    let extensions = req.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<tonic::transport::server::TcpConnectInfo>()?.remote_addr());
    aviary_core::ClientAddr::of(extensions.get::<aviary_core::ClientAddr>(), peer)
}

/// Buckets by client address.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        Ok(peer_ip(req))
    }
}

/// Buckets by presented credential (hashed), or by IP when there is none.
#[derive(Debug, Clone, Copy)]
pub struct Credential;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialKey {
    Bearer([u8; 32]),
    Anonymous(IpAddr),
}

impl KeyExtractor for Credential {
    type Key = CredentialKey;

    fn extract<T>(&self, req: &Request<T>) -> Result<CredentialKey, GovernorError> {
        Ok(match req.headers().get(axum::http::header::AUTHORIZATION) {
            // The credential, not the header: `bearer x` and `Bearer x` share one bucket.
            Some(value) => {
                let credential = value
                    .to_str()
                    .ok()
                    .and_then(aviary_core::auth::bearer_credential)
                    .map_or(value.as_bytes(), str::as_bytes);
                CredentialKey::Bearer(Sha256::digest(credential).into())
            }
            None => CredentialKey::Anonymous(peer_ip(req)),
        })
    }
}

pub type Limiter<K> = Arc<GovernorConfig<K, NoOpMiddleware>>;

/// Builds a limiter of `per_s` requests per second with `burst`, or `None` when switched off.
pub fn limiter<K: KeyExtractor + Send + Sync + 'static>(key: K, per_s: u32, burst: u32) -> Option<Limiter<K>>
where
    K::Key: Send + Sync + 'static,
{
    if per_s == 0 {
        return None;
    }
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_nanos(1_000_000_000 / u64::from(per_s)))
        .burst_size(burst.max(1))
        .key_extractor(key)
        .finish()?;
    let config = Arc::new(config);
    spawn_cleanup(Arc::downgrade(&config));
    Some(config)
}

/// Forgets idle buckets once a minute so the maps do not grow with every address ever seen.
/// Stops when the router holding the limiter is dropped.
fn spawn_cleanup<K: KeyExtractor + Send + Sync + 'static>(config: Weak<GovernorConfig<K, NoOpMiddleware>>)
where
    K::Key: Send + Sync + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(config) = config.upgrade() else { return };
            config.limiter().retain_recent();
            config.limiter().shrink_to_fit();
        }
    });
}

/// The gRPC answer for a governor refusal: `RESOURCE_EXHAUSTED` with `retry-after` metadata.
pub fn grpc_refusal(error: GovernorError) -> Response {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let mut response: Response =
                tonic::Status::resource_exhausted(format!("rate limit exceeded; retry after {} s", wait_time.max(1)))
                    .into_http();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, wait_time.max(1).into());
            response
        }
        other => tonic::Status::internal(format!("rate limiter: {other}")).into_http(),
    }
}

/// The 429 (or 500) answer for a governor refusal, as a problem document.
pub fn refusal(error: GovernorError) -> Response {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            Error::RateLimited { retry_after_s: wait_time.max(1) }.into_response()
        }
        other => Error::Internal(format!("rate limiter: {other}")).into_response(),
    }
}
