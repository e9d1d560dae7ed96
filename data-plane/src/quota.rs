//! Per-tenant (and per-app) admission: connection counts and message-rate token buckets.
//!
//! [`QuotaEnforcer`] is the seam: [`LocalQuotas`] counts what this node sees, which is exact
//! for `aviary dev` and a per-node approximation in a cluster; the Redis engine (issue 5)
//! provides a cluster-wide implementation behind the same trait. Connections and message rate
//! count tenant-wide (`AppConfig::tenant_quotas`) *and* per app (`AppConfig::quotas`, already
//! the tighter of the two), so one noisy app cannot starve its siblings beyond its own limit.

use std::sync::Arc;
use std::time::Instant;

use aviary_core::AppConfig;
use dashmap::DashMap;
use parking_lot::Mutex;

/// Decides admission; must be cheap and never block (it is called on the message path).
pub trait QuotaEnforcer: Send + Sync + 'static {
    /// Counts a new connection for the app and its tenant, or refuses it when either is at its
    /// `max_connections`. A granted connection must be released with
    /// [`QuotaEnforcer::release_connection`] (use [`ConnectionPermit`]).
    fn try_acquire_connection(&self, app: &AppConfig) -> bool;

    /// Forgets a connection counted by `try_acquire_connection`.
    fn release_connection(&self, tenant_id: &str, app_id: &str);

    /// Takes `n` messages from the app's and tenant's per-second budgets; `false` (taking
    /// nothing) when either budget lacks `n` tokens.
    fn try_acquire_messages(&self, app: &AppConfig, n: u32) -> bool;
}

/// Releases a counted connection when dropped, whatever path ends the connection.
pub struct ConnectionPermit {
    quotas: Arc<dyn QuotaEnforcer>,
    tenant_id: String,
    app_id: String,
}

impl ConnectionPermit {
    /// Acquires a permit for `app`, or `None` when a connection quota is exhausted.
    pub fn acquire(quotas: &Arc<dyn QuotaEnforcer>, app: &AppConfig) -> Option<Self> {
        quotas.try_acquire_connection(app).then(|| ConnectionPermit {
            quotas: quotas.clone(),
            tenant_id: app.tenant_id.clone(),
            app_id: app.app_id.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.quotas.release_connection(&self.tenant_id, &self.app_id);
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

impl QuotaEnforcer for LocalQuotas {
    fn try_acquire_connection(&self, app: &AppConfig) -> bool {
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

    fn release_connection(&self, tenant_id: &str, app_id: &str) {
        for key in [format!("t:{tenant_id}"), format!("a:{app_id}")] {
            self.connections.remove_if_mut(&key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    fn try_acquire_messages(&self, app: &AppConfig, n: u32) -> bool {
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

    #[test]
    fn connections_count_per_app_and_per_tenant() {
        let q: Arc<dyn QuotaEnforcer> = Arc::new(LocalQuotas::new());
        let a = app("a", 3, 2, 10);
        let b = app("b", 3, 2, 10);
        let p1 = ConnectionPermit::acquire(&q, &a).unwrap();
        let _p2 = ConnectionPermit::acquire(&q, &a).unwrap();
        assert!(ConnectionPermit::acquire(&q, &a).is_none(), "app limit");
        let _p3 = ConnectionPermit::acquire(&q, &b).unwrap();
        assert!(ConnectionPermit::acquire(&q, &b).is_none(), "tenant limit");
        drop(p1);
        assert!(ConnectionPermit::acquire(&q, &b).is_some());
    }

    #[test]
    fn message_budget_refuses_bursts_beyond_one_second_of_rate() {
        let q = LocalQuotas::new();
        let a = app("a", 10, 10, 5);
        assert!(q.try_acquire_messages(&a, 5));
        assert!(!q.try_acquire_messages(&a, 1));
    }
}
