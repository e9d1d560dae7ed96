//! Per-tenant (and per-app) admission: connection counts and message-rate token buckets.
//!
//! [`QuotaEnforcer`] is the seam. [`LocalQuotas`] counts what this node sees: exact for
//! `aviary dev`, wrong in a cluster (each node would admit the full quota). [`ClusterQuotas`]
//! keeps the counts in Redis through [`aviary_broker::redis_quotas::RedisQuotas`], so the limits
//! hold across every node sharing that Redis. Connections and message rate count tenant-wide
//! (`AppConfig::tenant_quotas`) *and* per app (`AppConfig::quotas`, already the tighter of
//! the two), so one noisy app cannot starve its siblings beyond its own limit.
//!
//! # When the quota store is unavailable
//! An enforcer that cannot decide returns [`Error::Unavailable`]; it never admits blindly.
//! - A new connection is refused with a retryable answer: WebSocket `disconnect` with close
//!   code 1013 (try again later) and `reconnect: true`; SSE `503` with `Retry-After`. Open
//!   connections are untouched: they were admitted and stay counted locally, and the Redis
//!   enforcer re-asserts this node's exact counts when Redis returns.
//! - A publish is answered `internal` (WebSocket) or `503` (REST), retryable with the same
//!   idempotency key. With the Redis engine the broker shares the outage anyway, so the
//!   publish could not have been accepted.
//!
//! A [`ConnectionPermit`] releases its slot when [`ConnectionPermit::release`] is awaited (the
//! session does this before saying goodbye, so a client that saw its connection close can
//! open a new one on any node at once) or, as a fallback, in the background when dropped.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use aviary_broker::redis_quotas::RedisQuotas;
use aviary_core::AppConfig;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Decides admission. Called on the connect and publish paths, so implementations answer in
/// one round trip at most and never wait on anything unbounded.
#[async_trait]
pub trait QuotaEnforcer: Send + Sync + 'static {
    /// Counts a new connection for the app and its tenant: `Ok(false)` when either is at its
    /// `max_connections`, [`Error::Unavailable`] when the decision cannot be made. A granted
    /// connection must be released with [`QuotaEnforcer::release_connection`] (use
    /// [`ConnectionPermit`]).
    async fn try_acquire_connection(&self, app: &AppConfig) -> Result<bool>;

    /// Forgets a connection counted by `try_acquire_connection`. Failures are the
    /// implementation's to retry; the caller has nothing better to do.
    async fn release_connection(&self, tenant_id: &str, app_id: &str);

    /// Takes `n` messages from the app's and tenant's per-second budgets: `Ok(false)` (taking
    /// nothing) when either budget lacks `n` tokens.
    async fn try_acquire_messages(&self, app: &AppConfig, n: u32) -> Result<bool>;
}

/// A counted connection. Release it with [`ConnectionPermit::release`]; a permit dropped
/// without that is released by a background task.
pub struct ConnectionPermit {
    quotas: Arc<dyn QuotaEnforcer>,
    tenant_id: String,
    app_id: String,
    released: bool,
}

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPermit").field("tenant_id", &self.tenant_id).field("app_id", &self.app_id).finish()
    }
}

impl ConnectionPermit {
    /// Acquires a permit for `app`: `Ok(None)` when a connection quota is exhausted.
    pub async fn acquire(quotas: &Arc<dyn QuotaEnforcer>, app: &AppConfig) -> Result<Option<Self>> {
        Ok(quotas.try_acquire_connection(app).await?.then(|| ConnectionPermit {
            quotas: quotas.clone(),
            tenant_id: app.tenant_id.clone(),
            app_id: app.app_id.clone(),
            released: false,
        }))
    }

    /// Releases the slot and waits until the enforcer has applied it.
    pub async fn release(mut self) {
        self.released = true;
        self.quotas.release_connection(&self.tenant_id, &self.app_id).await;
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (quotas, tenant_id, app_id) =
            (self.quotas.clone(), std::mem::take(&mut self.tenant_id), std::mem::take(&mut self.app_id));
        // Outside a runtime (process teardown) there is nothing left to release into.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { quotas.release_connection(&tenant_id, &app_id).await });
        }
    }
}

/// A token bucket refilled continuously at `rate` tokens per second, holding at most `rate`
/// (one second of burst).
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn refill(&mut self, rate: u32, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.last = now;
    }
}

/// Node-local quotas.
#[derive(Debug, Default)]
pub struct LocalQuotas {
    /// Open connections keyed by `t:<tenant>` and `a:<app>`.
    connections: DashMap<String, u32>,
    /// Message buckets keyed the same way.
    buckets: DashMap<String, Mutex<TokenBucket>>,
}

impl LocalQuotas {
    pub fn new() -> Self {
        Self::default()
    }

    fn bucket_take(&self, key: String, rate: u32, n: u32, now: Instant, commit: bool) -> bool {
        let entry =
            self.buckets.entry(key).or_insert_with(|| Mutex::new(TokenBucket { tokens: f64::from(rate), last: now }));
        let mut bucket = entry.lock();
        bucket.refill(rate, now);
        let enough = bucket.tokens >= f64::from(n);
        if enough && commit {
            bucket.tokens -= f64::from(n);
        }
        enough
    }
}

impl LocalQuotas {
    fn acquire_connection(&self, app: &AppConfig) -> bool {
        let tenant_key = format!("t:{}", app.tenant_id);
        let app_key = format!("a:{}", app.app_id);
        // Take the tenant slot first, then the app slot, undoing the first if the second fails.
        // Each step is atomic under its DashMap shard lock; the pair is not, which can only
        // refuse a connection spuriously during a race at the limit, never admit one too many.
        {
            let mut t = self.connections.entry(tenant_key.clone()).or_insert(0);
            if *t >= app.tenant_quotas.max_connections {
                return false;
            }
            *t += 1;
        }
        let admitted = {
            let mut a = self.connections.entry(app_key).or_insert(0);
            if *a >= app.quotas.max_connections {
                false
            } else {
                *a += 1;
                true
            }
        };
        if !admitted && let Some(mut t) = self.connections.get_mut(&tenant_key) {
            *t = t.saturating_sub(1);
        }
        admitted
    }

    fn release(&self, tenant_id: &str, app_id: &str) {
        for key in [format!("t:{tenant_id}"), format!("a:{app_id}")] {
            self.connections.remove_if_mut(&key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    fn acquire_messages(&self, app: &AppConfig, n: u32) -> bool {
        let now = Instant::now();
        let tenant_key = format!("t:{}", app.tenant_id);
        let app_key = format!("a:{}", app.app_id);
        // Check both budgets before taking from either, so a refusal costs nothing.
        if !self.bucket_take(tenant_key.clone(), app.tenant_quotas.max_messages_per_s, n, now, false)
            || !self.bucket_take(app_key.clone(), app.quotas.max_messages_per_s, n, now, false)
        {
            return false;
        }
        self.bucket_take(tenant_key, app.tenant_quotas.max_messages_per_s, n, now, true)
            && self.bucket_take(app_key, app.quotas.max_messages_per_s, n, now, true)
    }
}

#[async_trait]
impl QuotaEnforcer for LocalQuotas {
    async fn try_acquire_connection(&self, app: &AppConfig) -> Result<bool> {
        Ok(self.acquire_connection(app))
    }

    async fn release_connection(&self, tenant_id: &str, app_id: &str) {
        self.release(tenant_id, app_id);
    }

    async fn try_acquire_messages(&self, app: &AppConfig, n: u32) -> Result<bool> {
        Ok(self.acquire_messages(app, n))
    }
}

/// Cluster-wide quotas: every node sharing the Redis instances (and the prefix) counts
/// against the same limits. A node that crashes stops counting within
/// [`RedisQuotas::node_ttl`] (30 s by default).
#[derive(Debug)]
pub struct ClusterQuotas {
    redis: Arc<RedisQuotas>,
}

impl ClusterQuotas {
    /// Quotas over the same Redis URLs and key prefix as the node's
    /// [`aviary_broker::redis::RedisBroker`] (tenants are sharded over the URLs by consistent
    /// hashing). Connects lazily, so this succeeds while Redis is down; admissions then fail
    /// with [`Error::Unavailable`]. Must be called inside a Tokio runtime.
    pub fn new(redis_urls: &[String], prefix: &str) -> Result<Self> {
        Ok(ClusterQuotas { redis: Arc::new(RedisQuotas::new(redis_urls, prefix)?) })
    }

    /// Wraps an existing [`RedisQuotas`] (e.g. one built with a custom node TTL).
    pub fn from_redis(redis: RedisQuotas) -> Self {
        ClusterQuotas { redis: Arc::new(redis) }
    }
}

#[async_trait]
impl QuotaEnforcer for ClusterQuotas {
    async fn try_acquire_connection(&self, app: &AppConfig) -> Result<bool> {
        // The admission runs to completion in its own task: if the caller goes away mid-way
        // (an SSE request whose client hung up), a slot Redis granted is released instead of
        // being counted forever.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let redis = self.redis.clone();
        let (tenant_id, app_id) = (app.tenant_id.clone(), app.app_id.clone());
        let (tenant_max, app_max) = (app.tenant_quotas.max_connections, app.quotas.max_connections);
        tokio::spawn(async move {
            let result = redis.try_acquire_connection(&tenant_id, &app_id, tenant_max, app_max).await;
            if let Err(Ok(true)) = tx.send(result) {
                let _ = redis.release_connection(&tenant_id, &app_id).await;
            }
        });
        rx.await
            .map_err(|_| Error::Internal("connection admission task ended without an answer".into()))?
            .map_err(Error::from)
    }

    async fn release_connection(&self, tenant_id: &str, app_id: &str) {
        // A release Redis did not acknowledge is kept by RedisQuotas and retried by its
        // heartbeat, so there is nothing to do with the error but note it.
        if let Err(e) = self.redis.release_connection(tenant_id, app_id).await {
            tracing::debug!(tenant_id, app_id, error = %e, "connection release deferred to the quota heartbeat");
        }
    }

    async fn try_acquire_messages(&self, app: &AppConfig, n: u32) -> Result<bool> {
        Ok(self
            .redis
            .try_acquire_messages(
                &app.tenant_id,
                &app.app_id,
                app.tenant_quotas.max_messages_per_s,
                app.quotas.max_messages_per_s,
                n,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use aviary_core::{Namespace, Quotas};

    use super::*;

    fn app(id: &str, tenant_conns: u32, app_conns: u32, rate: u32) -> AppConfig {
        AppConfig {
            app_id: id.into(),
            tenant_id: "ten".into(),
            name: id.into(),
            enabled: true,
            allowed_origins: vec![],
            max_token_ttl_s: 60,
            namespaces: vec![Namespace::default_namespace()],
            tenant_quotas: Quotas { max_connections: tenant_conns, max_messages_per_s: rate * 2, ..Quotas::default() },
            quotas: Quotas { max_connections: app_conns, max_messages_per_s: rate, ..Quotas::default() },
        }
    }

    async fn permit(q: &Arc<dyn QuotaEnforcer>, app: &AppConfig) -> Option<ConnectionPermit> {
        ConnectionPermit::acquire(q, app).await.expect("local quotas always decide")
    }

    #[tokio::test]
    async fn connections_count_per_app_and_per_tenant() {
        let q: Arc<dyn QuotaEnforcer> = Arc::new(LocalQuotas::new());
        let a = app("a", 3, 2, 10);
        let b = app("b", 3, 2, 10);
        let p1 = permit(&q, &a).await.unwrap();
        let _p2 = permit(&q, &a).await.unwrap();
        assert!(permit(&q, &a).await.is_none(), "app limit");
        let _p3 = permit(&q, &b).await.unwrap();
        assert!(permit(&q, &b).await.is_none(), "tenant limit");
        p1.release().await;
        assert!(permit(&q, &b).await.is_some());
    }

    #[tokio::test]
    async fn message_budget_refuses_bursts_beyond_one_second_of_rate() {
        let q = LocalQuotas::new();
        let a = app("a", 10, 10, 5);
        assert_eq!(q.try_acquire_messages(&a, 5).await, Ok(true));
        assert_eq!(q.try_acquire_messages(&a, 1).await, Ok(false));
    }
}
