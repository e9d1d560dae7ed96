//! The per-tenant delivery rate: how many webhook events per second a node sends for one
//! tenant, over all its apps and endpoints, so one tenant's flood cannot take the node's
//! delivery capacity from the others.
//!
//! A token bucket per tenant, refilled at `rate` events/s and holding at most one second's
//! worth. A sender *reserves* its batch's events before POSTing and waits as long as the
//! bucket is in debt, so a tenant's senders share its rate in arrival order and no sender of
//! another tenant ever waits for them. The limit is per node: in a cluster the deliverers of a
//! tenant's apps may run on several nodes (one lease per app).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the module docs. A rate of 0 is unlimited.
pub struct TenantRate {
    rate: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl TenantRate {
    pub fn new(events_per_s: u32) -> Self {
        TenantRate { rate: f64::from(events_per_s), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `events` from the tenant's bucket and says how long to wait before sending them
    /// (zero while the tenant is within its rate).
    pub fn reserve(&self, tenant_id: &str, events: usize) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 10_000 {
            // Forget tenants whose bucket is full again (idle for a second or more).
            let rate = self.rate;
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let bucket = buckets.entry(tenant_id.to_owned()).or_insert(Bucket { tokens: self.rate, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate).min(self.rate);
        bucket.at = now;
        bucket.tokens -= events as f64;
        if bucket.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-bucket.tokens / self.rate) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_within_its_rate_never_waits_and_others_never_wait_for_it() {
        let rate = TenantRate::new(100);
        assert_eq!(rate.reserve("a", 100), Duration::ZERO, "a second's burst");
        let wait = rate.reserve("a", 50);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(rate.reserve("b", 100), Duration::ZERO, "another tenant is not held up");
        assert_eq!(TenantRate::new(0).reserve("a", 1_000_000), Duration::ZERO, "0 is unlimited");
    }
}
