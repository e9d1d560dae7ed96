//! Usage figures per app, as `GET /v1/tenants/{tenant_id}/usage` reports them.
//!
//! The control plane does not count traffic itself: the data plane does, and plugs a
//! [`UsageSource`] in with [`crate::ControlPlaneState::with_usage_source`]. Until it does,
//! [`ZeroUsage`] reports zeros in the final shape, so clients can be written against it today.

use serde::{Deserialize, Serialize};

/// Current counters of one app (or the sum over a tenant's apps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageCounters {
    /// Connections open right now.
    pub connections: u64,
    /// Channel subscriptions held right now.
    pub subscriptions: u64,
    /// Messages accepted for publication since the node started.
    pub messages_published: u64,
    /// Message deliveries to subscribers since the node started.
    pub messages_delivered: u64,
    /// Payload bytes accepted for publication since the node started.
    pub bytes_published: u64,
}

impl UsageCounters {
    fn add(&mut self, other: &UsageCounters) {
        self.connections += other.connections;
        self.subscriptions += other.subscriptions;
        self.messages_published += other.messages_published;
        self.messages_delivered += other.messages_delivered;
        self.bytes_published += other.bytes_published;
    }
}

/// Usage of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppUsage {
    pub app_id: String,
    #[serde(flatten)]
    pub counters: UsageCounters,
}

/// Usage of a tenant: totals and per app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant_id: String,
    pub totals: UsageCounters,
    pub apps: Vec<AppUsage>,
}

impl TenantUsage {
    /// Sums per-app figures into a tenant report.
    pub fn from_apps(tenant_id: String, apps: Vec<AppUsage>) -> Self {
        let mut totals = UsageCounters::default();
        for app in &apps {
            totals.add(&app.counters);
        }
        TenantUsage { tenant_id, totals, apps }
    }
}

/// Where usage figures come from.
pub trait UsageSource: Send + Sync + 'static {
    /// Current counters of `app_id` (zeros for an app with no traffic).
    fn app_usage(&self, app_id: &str) -> UsageCounters;
}

/// Reports zeros: the source used until a data plane provides real figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroUsage;

impl UsageSource for ZeroUsage {
    fn app_usage(&self, _app_id: &str) -> UsageCounters {
        UsageCounters::default()
    }
}
