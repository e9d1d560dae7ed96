//! [`RedisQuotas`]: per-tenant (and per-app) connection counts and message rates shared by
//! every data-plane node through Redis, so limits hold across the cluster.
//!
//! # Key layout
//! All keys of one tenant carry the hash tag `{q|<tenant_id>}`, so one script can check the
//! tenant and app levels together (on one shard of the ring, or one Redis Cluster slot):
//!
//! | key                    | type | holds                                              |
//! |------------------------|------|----------------------------------------------------|
//! | `P:qt:{q\|T}`          | hash | node id → the tenant's open connections on that node |
//! | `P:qa:{q\|T}:<app_id>` | hash | node id → the app's open connections on that node    |
//! | `P:qn:{q\|T}`          | zset | node id → liveness deadline (Redis server time, ms)  |
//! | `P:qr:{q\|T}`          | hash | token buckets: `<level>:t` tokens, `<level>:l` last refill (ms) |
//!
//! # Connections
//! Counts are kept per node, never as one shared total, so a node that dies without releasing
//! anything cannot leak capacity. A node is *live* for a tenant while its deadline in
//! `P:qn` is in the future; it pushes the deadline forward on every admission and on a
//! heartbeat every [`RedisQuotas::node_ttl`]/3. Admission drops dead nodes and their counts,
//! sums the live counts and increments this node's, all in one script, so concurrent
//! admissions on different nodes never overshoot; a crashed node's connections stop counting
//! within one node TTL (30 s by default).
//!
//! Each node also keeps its own counts locally, the truth it can restore: when its liveness
//! entry is missing (Redis restarted or was flushed, or the node was silent past its TTL and
//! was declared dead), admission refuses to count on top of lost state and the node first
//! rewrites its exact counts (a heartbeat). A release Redis did not acknowledge is retried by
//! the next heartbeat. A rewrite racing a local admission or release is detected (generation
//! counter) and repeated at once.
//!
//! # Message rate
//! One token bucket per tenant and per app, refilled continuously at the limit per second and
//! holding one second of burst; one script checks both levels and takes `n` from both or from
//! neither, using Redis server time so node clocks do not matter.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::BrokerError;
use crate::redis::connection::{connect_lazy, with_timeout};
use crate::redis::lua::LUA_PRELUDE;
use crate::redis::ring::{build_ring, ring_pick};

/// Default time after which a silent node's connections no longer count.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(30);

/// Attempts per admission (restoring lost state) and per heartbeat rewrite (racing changes).
const HEARTBEAT_ATTEMPTS: usize = 3;

/// KEYS: tenant counts, app counts, liveness. ARGV: node, tenant max, app max, node ttl ms.
/// Returns 1 when admitted (and counted), 0 when a limit is reached, -1 when this node is not
/// live (its counts must be rewritten first).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return -1 end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
local function live_sum(key)
  local sum = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if redis.call('ZSCORE', KEYS[3], fields[i]) then
      sum = sum + tonumber(fields[i + 1])
    else
      redis.call('HDEL', key, fields[i])
    end
  end
  return sum
end
if live_sum(KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if live_sum(KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
return 1
"#
    ))
});

/// KEYS: tenant counts, app counts, liveness. ARGV: node. Returns 0 (nothing to do) when this
/// node is not live: its counts are gone and the next rewrite has the released one removed.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
for i = 1, 2 do
  if redis.call('HINCRBY', KEYS[i], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 1
"#,
    )
});

/// KEYS: liveness, tenant counts, app counts...
/// ARGV: node, node ttl ms, force ('1'), then for KEYS[i] (i >= 2): ARGV[2i] the exact count,
/// ARGV[2i+1] releases not yet applied.
/// Refreshes the node's deadline. When the node was not live (or `force`), rewrites its exact
/// counts and returns 1; otherwise applies the pending releases and returns 0.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local rewrite = redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) == 1 or ARGV[3] == '1'
for i = 2, #KEYS do
  local exact = tonumber(ARGV[2 * i])
  local unreleased = tonumber(ARGV[2 * i + 1])
  if rewrite then
    if exact > 0 then redis.call('HSET', KEYS[i], ARGV[1], exact) else redis.call('HDEL', KEYS[i], ARGV[1]) end
  elseif unreleased > 0 then
    if redis.call('HINCRBY', KEYS[i], ARGV[1], -unreleased) <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
  end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
if rewrite then return 1 end
return 0
"#
    ))
});

/// KEYS: buckets. ARGV: app field, tenant rate, app rate, n. Returns 1 when taken, 0 when not.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
local n = tonumber(ARGV[4])
local function refill(field, rate)
  local tokens = tonumber(redis.call('HGET', KEYS[1], field .. ':t') or rate)
  local last = tonumber(redis.call('HGET', KEYS[1], field .. ':l') or now)
  return math.min(rate, tokens + math.max(0, now - last) * rate / 1000)
end
local tenant = refill('t', tonumber(ARGV[2]))
local app = refill(ARGV[1], tonumber(ARGV[3]))
if tenant < n or app < n then return 0 end
redis.call('HSET', KEYS[1], 't:t', tenant - n, 't:l', now, ARGV[1] .. ':t', app - n, ARGV[1] .. ':l', now)
redis.call('PEXPIRE', KEYS[1], 10000)
return 1
"#
    ))
});

/// Cluster-wide quota counters in Redis; see the module docs. Cheap to share behind an `Arc`.
pub struct RedisQuotas {
    inner: Arc<Inner>,
    heartbeat: tokio::task::AbortHandle,
}

struct Inner {
    prefix: String,
    node_id: String,
    node_ttl: Duration,
    shards: Vec<ConnectionManager>,
    ring: Vec<(u64, usize)>,
    /// This node's open connections per tenant and app: the truth it re-asserts in Redis.
    local: Mutex<HashMap<String, TenantCounts>>,
}

#[derive(Default, Clone)]
struct TenantCounts {
    connections: u32,
    apps: HashMap<String, u32>,
    /// Releases Redis did not acknowledge, applied by the next heartbeat.
    unreleased: u32,
    unreleased_apps: HashMap<String, u32>,
    /// Bumped by every local change, so a rewrite can tell it raced one.
    generation: u64,
}

impl TenantCounts {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.apps.is_empty() && self.unreleased == 0 && self.unreleased_apps.is_empty()
    }
}

struct TenantKeys {
    tenant: String,
    liveness: String,
    buckets: String,
    tag: String,
}

impl RedisQuotas {
    /// Quotas over the same Redis URLs (sharded by tenant) and prefix as the broker, with
    /// [`DEFAULT_NODE_TTL`]. Must be called inside a Tokio runtime.
    pub fn new(urls: &[String], prefix: &str) -> Result<Self, BrokerError> {
        Self::with_node_ttl(urls, prefix, DEFAULT_NODE_TTL)
    }

    /// As [`RedisQuotas::new`], with the time after which a silent node's connections stop
    /// counting (its heartbeat runs three times per TTL).
    pub fn with_node_ttl(urls: &[String], prefix: &str, node_ttl: Duration) -> Result<Self, BrokerError> {
        if urls.is_empty() {
            return Err(BrokerError::Internal("at least one Redis URL is required".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BrokerError::Internal("RedisQuotas must be created inside a Tokio runtime".into()))?;
        let shards = urls
            .iter()
            .enumerate()
            .map(|(index, url)| connect_lazy(url, index).map(|(_, commands)| commands))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Arc::new(Inner {
            prefix: prefix.to_owned(),
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            node_ttl: node_ttl.max(Duration::from_secs(1)),
            shards,
            ring: build_ring(urls),
            local: Mutex::new(HashMap::new()),
        });
        let heartbeat = runtime.spawn(heartbeat_loop(Arc::clone(&inner))).abort_handle();
        Ok(RedisQuotas { inner, heartbeat })
    }

    /// The time after which a silent node's connections stop counting.
    pub fn node_ttl(&self) -> Duration {
        self.inner.node_ttl
    }

    /// Counts a new connection for the app and its tenant, or returns `false` (counting
    /// nothing) when either is at its limit. Release it with [`RedisQuotas::release_connection`].
    pub async fn try_acquire_connection(
        &self,
        tenant_id: &str,
        app_id: &str,
        tenant_max: u32,
        app_max: u32,
    ) -> Result<bool, BrokerError> {
        let keys = self.inner.keys(tenant_id);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(&keys.tenant)
            .key(self.inner.app_key(&keys, app_id))
            .key(&keys.liveness)
            .arg(&self.inner.node_id)
            .arg(tenant_max)
            .arg(app_max)
            .arg(self.inner.node_ttl_ms());
        for _ in 0..HEARTBEAT_ATTEMPTS {
            let mut conn = self.inner.shard(&keys).clone();
            match with_timeout(invocation.invoke_async::<i64>(&mut conn)).await? {
                1 => {
                    let mut local = self.inner.local.lock();
                    let counts = local.entry(tenant_id.to_owned()).or_default();
                    counts.connections += 1;
                    *counts.apps.entry(app_id.to_owned()).or_default() += 1;
                    counts.generation += 1;
                    return Ok(true);
                }
                0 => return Ok(false),
                // Not live here: restore this node's counts, then try again.
                _ => self.inner.heartbeat_tenant(tenant_id).await?,
            }
        }
        Err(BrokerError::Unavailable("could not establish this node's quota liveness".into()))
    }

    /// Forgets a connection counted by [`RedisQuotas::try_acquire_connection`]: locally at
    /// once, in Redis now or (if Redis did not answer) by the next heartbeat.
    pub async fn release_connection(&self, tenant_id: &str, app_id: &str) -> Result<(), BrokerError> {
        {
            let mut local = self.inner.local.lock();
            if let Some(counts) = local.get_mut(tenant_id) {
                counts.connections = counts.connections.saturating_sub(1);
                if let Some(app) = counts.apps.get_mut(app_id) {
                    *app = app.saturating_sub(1);
                }
                counts.generation += 1;
                // Zero counts stay until a heartbeat has written them to Redis.
            }
        }
        let keys = self.inner.keys(tenant_id);
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(&keys.tenant)
            .key(self.inner.app_key(&keys, app_id))
            .key(&keys.liveness)
            .arg(&self.inner.node_id);
        let mut conn = self.inner.shard(&keys).clone();
        if let Err(e) = with_timeout(invocation.invoke_async::<i64>(&mut conn)).await {
            let mut local = self.inner.local.lock();
            if let Some(counts) = local.get_mut(tenant_id) {
                counts.unreleased += 1;
                *counts.unreleased_apps.entry(app_id.to_owned()).or_default() += 1;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes `n` messages from the tenant's and the app's per-second budgets, or returns
    /// `false` (taking nothing) when either lacks `n`.
    pub async fn try_acquire_messages(
        &self,
        tenant_id: &str,
        app_id: &str,
        tenant_rate: u32,
        app_rate: u32,
        n: u32,
    ) -> Result<bool, BrokerError> {
        let keys = self.inner.keys(tenant_id);
        let mut invocation = TAKE.prepare_invoke();
        invocation.key(&keys.buckets).arg(format!("a|{app_id}")).arg(tenant_rate).arg(app_rate).arg(n);
        let mut conn = self.inner.shard(&keys).clone();
        let taken: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        Ok(taken == 1)
    }
}

impl Drop for RedisQuotas {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl std::fmt::Debug for RedisQuotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuotas").field("prefix", &self.inner.prefix).field("node_id", &self.inner.node_id).finish()
    }
}

impl Inner {
    fn keys(&self, tenant_id: &str) -> TenantKeys {
        let tag = format!("{{q|{tenant_id}}}");
        let p = &self.prefix;
        TenantKeys {
            tenant: format!("{p}:qt:{tag}"),
            liveness: format!("{p}:qn:{tag}"),
            buckets: format!("{p}:qr:{tag}"),
            tag,
        }
    }

    fn app_key(&self, keys: &TenantKeys, app_id: &str) -> String {
        format!("{}:qa:{}:{app_id}", self.prefix, keys.tag)
    }

    fn shard(&self, keys: &TenantKeys) -> &ConnectionManager {
        &self.shards[ring_pick(&self.ring, &keys.tag)]
    }

    fn node_ttl_ms(&self) -> u64 {
        u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Heartbeats every tenant this node holds connections of.
    async fn heartbeat(&self) {
        let tenants: Vec<String> = self.local.lock().keys().cloned().collect();
        for tenant in tenants {
            if let Err(e) = self.heartbeat_tenant(&tenant).await {
                tracing::debug!(tenant, error = %e, "quota heartbeat failed");
            }
        }
    }

    /// Refreshes this node's liveness for `tenant`, applies unacknowledged releases, and
    /// rewrites its exact counts when Redis had lost them (repeating the rewrite, bounded,
    /// while local changes race it). Forgets the tenant locally once everything is zero.
    async fn heartbeat_tenant(&self, tenant: &str) -> Result<(), BrokerError> {
        let keys = self.keys(tenant);
        let mut force = false;
        for _ in 0..HEARTBEAT_ATTEMPTS {
            let snapshot = self.local.lock().get(tenant).cloned().unwrap_or_default();
            let mut invocation = HEARTBEAT.prepare_invoke();
            invocation
                .key(&keys.liveness)
                .key(&keys.tenant)
                .arg(&self.node_id)
                .arg(self.node_ttl_ms())
                .arg(if force { "1" } else { "0" })
                .arg(snapshot.connections)
                .arg(snapshot.unreleased);
            let mut apps: Vec<&String> = snapshot.apps.keys().chain(snapshot.unreleased_apps.keys()).collect();
            apps.sort_unstable();
            apps.dedup();
            for app in apps {
                invocation
                    .key(self.app_key(&keys, app))
                    .arg(snapshot.apps.get(app).copied().unwrap_or(0))
                    .arg(snapshot.unreleased_apps.get(app).copied().unwrap_or(0));
            }
            let mut conn = self.shard(&keys).clone();
            let rewrote = with_timeout(invocation.invoke_async::<i64>(&mut conn)).await? == 1;

            let mut local = self.local.lock();
            let Some(counts) = local.get_mut(tenant) else { return Ok(()) };
            // What was sent is now applied (or superseded by the rewrite).
            counts.unreleased = counts.unreleased.saturating_sub(snapshot.unreleased);
            for (app, sent) in &snapshot.unreleased_apps {
                if let Some(n) = counts.unreleased_apps.get_mut(app) {
                    *n = n.saturating_sub(*sent);
                }
            }
            counts.unreleased_apps.retain(|_, n| *n > 0);
            if rewrote && counts.generation != snapshot.generation {
                force = true;
                continue;
            }
            counts.apps.retain(|_, n| *n > 0);
            if counts.is_empty() {
                local.remove(tenant);
            }
            return Ok(());
        }
        Ok(())
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.node_ttl / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        inner.heartbeat().await;
    }
}
