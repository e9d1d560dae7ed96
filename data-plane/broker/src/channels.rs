//! [`RedisChannelCounts`]: each node's per-channel subscriber counts, shared through Redis so
//! any node can list an app's active channels cluster-wide.
//!
//! # Key layout
//! Keys of one app carry the hash tag `{c|<app_id>}` (one shard of the ring, one Redis Cluster
//! slot). With `P` the configured prefix:
//!
//! | key                   | type | holds                                                  |
//! |-----------------------|------|--------------------------------------------------------|
//! | `P:cn:{c\|A}`         | zset | node id → liveness deadline (Redis server time, ms)    |
//! | `P:cc:{c\|A}:<node>`  | hash | channel → subscribers on that node                     |
//!
//! A node rewrites its hash when its counts change and otherwise only pushes its deadline
//! forward, on an interval well inside the node TTL. A node that dies stops doing so: readers
//! skip it once its deadline passes and its hash expires on its own (twice the TTL), so its
//! channels leave the listing within one node TTL. The listing is therefore eventually
//! consistent: another node's changes show after at most one report interval.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::BrokerError;
use crate::redis::connection::{connect_lazy, with_timeout};
use crate::redis::lua::LUA_PRELUDE;
use crate::redis::ring::{build_ring, ring_pick};

/// KEYS: liveness, this node's hash. ARGV: node, node ttl ms, mode ('replace' or 'keep'), then
/// channel/count pairs for 'replace'. Returns 1, or 0 in 'keep' mode when the hash is gone
/// (Redis lost it): the caller must replace it.
static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'replace' then
  redis.call('DEL', KEYS[2])
  for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#
    ))
});

/// KEYS: liveness. Returns the ids of live nodes.
static LIVE_NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')
"#
    ))
});

/// Per-channel subscriber counts of every node; see the module docs.
pub struct RedisChannelCounts {
    prefix: String,
    node_id: String,
    node_ttl: Duration,
    ring: Vec<(u64, usize)>,
    shards: Vec<ConnectionManager>,
}

impl std::fmt::Debug for RedisChannelCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannelCounts").field("prefix", &self.prefix).field("node_id", &self.node_id).finish()
    }
}

impl RedisChannelCounts {
    /// Counts over `urls` (apps sharded by consistent hashing) under `prefix`, reported as
    /// `node_id`, whose entries stop counting `node_ttl` after its last report. Connects
    /// lazily. Must be called inside a Tokio runtime.
    pub fn new(urls: &[String], prefix: &str, node_id: &str, node_ttl: Duration) -> Result<Self, BrokerError> {
        if urls.is_empty() {
            return Err(BrokerError::Internal("at least one Redis URL is required".into()));
        }
        let shards =
            urls.iter().enumerate().map(|(i, url)| connect_lazy(url, i).map(|(_, c)| c)).collect::<Result<_, _>>()?;
        Ok(RedisChannelCounts {
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
            node_ttl,
            ring: build_ring(urls),
            shards,
        })
    }

    /// The time after which a silent node's channels leave the listing.
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    fn keys(&self, app_id: &str) -> (String, String, ConnectionManager) {
        let tag = format!("{{c|{app_id}}}");
        let shard = self.shards[ring_pick(&self.ring, &tag)].clone();
        (format!("{}:cn:{tag}", self.prefix), format!("{}:cc:{tag}:", self.prefix), shard)
    }

    /// Reports this node's counts for `app_id`: `Some` replaces them (an empty slice removes
    /// the node from the app's listing), `None` only confirms the last report. Returns `false`
    /// when a confirmation found Redis had lost the last report: replace it.
    pub async fn report(&self, app_id: &str, counts: Option<&[(Arc<str>, u64)]>) -> Result<bool, BrokerError> {
        let (liveness, hash_prefix, mut conn) = self.keys(app_id);
        let mut invocation = REPORT.prepare_invoke();
        invocation
            .key(liveness)
            .key(format!("{hash_prefix}{}", self.node_id))
            .arg(&self.node_id)
            .arg(u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(if counts.is_some() { "replace" } else { "keep" });
        for (channel, n) in counts.unwrap_or_default() {
            invocation.arg(&**channel).arg(*n);
        }
        let kept: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        Ok(kept == 1)
    }

    /// Channels of `app_id` starting with `prefix` and their subscriber counts summed over the
    /// live nodes *other than this one* (the caller adds its own, fresher, counts).
    pub async fn others(&self, app_id: &str, prefix: &str) -> Result<Vec<(String, u64)>, BrokerError> {
        let (liveness, hash_prefix, mut conn) = self.keys(app_id);
        let mut invocation = LIVE_NODES.prepare_invoke();
        invocation.key(liveness);
        let nodes: Vec<String> = with_timeout(invocation.invoke_async(&mut conn)).await?;
        let nodes: Vec<String> = nodes.into_iter().filter(|n| *n != self.node_id).collect();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.hgetall(format!("{hash_prefix}{node}"));
        }
        let hashes: Vec<Vec<(String, u64)>> = with_timeout(pipe.query_async(&mut conn)).await?;
        let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for (channel, n) in hashes.into_iter().flatten().filter(|(c, _)| c.starts_with(prefix)) {
            *sums.entry(channel).or_default() += n;
        }
        Ok(sums.into_iter().collect())
    }
}
