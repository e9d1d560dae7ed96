//! [`RedisLedger`]: the webhook ledger of a cluster, in Redis.
//!
//! # Key layout
//! Keys of one app carry the hash tag `{w|<app_id>}` (one shard of the ring). With `P` the
//! configured prefix:
//!
//! | key                  | type   | holds                                                   |
//! |----------------------|--------|---------------------------------------------------------|
//! | `P:wl:{w\|A}`        | zset   | node id → liveness deadline (Redis server time, ms)     |
//! | `P:wn:{w\|A}:<node>` | hash   | counter field → that node's share                       |
//! | `P:wc:{w\|A}`        | hash   | counter field → cluster-wide total (absent when 0)      |
//! | `P:wq:{w\|A}`        | stream | queued events; consumer group `deliver`, consumer `d`    |
//! | `P:wk:{w\|A}`        | string | the delivery lease: the holding node's id, with a TTL   |
//!
//! Every share change, its total and the event of a zero crossing are one Lua script, so two
//! nodes racing on one channel produce exactly one event per crossing. Reaping a dead node is
//! one script too: its shares are subtracted and the down events appended together. Only the
//! lease holder reads the stream; all nodes read as the same consumer `d`, so a new holder's
//! `from_start` read gets exactly what a dead holder had been handed and not acknowledged.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{ATTEMPTS_TTL, Counter, NewEvent, QueuedEvent, RECENT_ATTEMPTS, WebhookLedger};
use crate::BrokerError;
use crate::redis::connection::{connect_lazy, with_timeout};
use crate::redis::lua::LUA_PRELUDE;
use crate::redis::ring::{build_ring, ring_pick};

/// Appends the event of a zero crossing of `field` to KEYS[4] (set_shares) or KEYS[3] (reap).
const EMIT: &str = r#"
local function emit(stream, field, up, now)
  local kind = string.sub(field, 1, 1)
  local rest = string.sub(field, 3)
  if kind == 'o' then
    local name = up and 'channel_occupied' or 'channel_vacated'
    redis.call('XADD', stream, '*', 'name', name, 'channel', rest, 'time_ms', now)
  else
    local sep = string.find(rest, '|', 1, true)
    local name = up and 'member_added' or 'member_removed'
    redis.call('XADD', stream, '*', 'name', name, 'channel', string.sub(rest, 1, sep - 1),
      'user', string.sub(rest, sep + 1), 'time_ms', now)
  end
end
"#;

/// KEYS: liveness, node hash, totals, stream. ARGV: node, ttl ms, then field/share pairs.
static SET_SHARES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{EMIT}{}",
        r#"
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
for i = 3, #ARGV, 2 do
  local field = ARGV[i]
  local share = tonumber(ARGV[i + 1])
  local before = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if share ~= before then
    if share == 0 then redis.call('HDEL', KEYS[2], field) else redis.call('HSET', KEYS[2], field, share) end
    local total_before = tonumber(redis.call('HGET', KEYS[3], field) or '0')
    local total = total_before + share - before
    if total <= 0 then
      total = 0
      redis.call('HDEL', KEYS[3], field)
    else
      redis.call('HSET', KEYS[3], field, total)
    end
    if total_before == 0 and total > 0 then emit(KEYS[4], field, true, now) end
    if total_before > 0 and total == 0 then emit(KEYS[4], field, false, now) end
  end
end
return 1
"#
    ))
});

/// KEYS: liveness. ARGV: node, ttl ms. 0 when the node was reaped (or never reported).
static KEEP_ALIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
"#
    ))
});

/// KEYS: liveness, totals, stream. ARGV: node hash key prefix. Returns the nodes reaped.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{EMIT}{}",
        r#"
local now = now_ms()
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(dead) do
  local hash = ARGV[1] .. node
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    local field = all[i]
    local share = tonumber(all[i + 1])
    local total_before = tonumber(redis.call('HGET', KEYS[2], field) or '0')
    local total = total_before - share
    if total <= 0 then
      total = 0
      redis.call('HDEL', KEYS[2], field)
    else
      redis.call('HSET', KEYS[2], field, total)
    end
    if total_before > 0 and total == 0 then emit(KEYS[3], field, false, now) end
  end
  redis.call('DEL', hash)
  redis.call('ZREM', KEYS[1], node)
end
return #dead
"#
    ))
});

/// KEYS: lease. ARGV: node, ttl ms. 1 while held.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// KEYS: lease. ARGV: node.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#,
    )
});

/// KEYS: stream. ARGV: from id ('>' for new entries), count. Creates the group when missing.
/// Returns {id, {field, value, ...}} per entry; a deleted entry still pending has an empty list.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], 'deliver', '0', 'MKSTREAM')
local got = redis.call('XREADGROUP', 'GROUP', 'deliver', 'd', 'COUNT', ARGV[2], 'STREAMS', KEYS[1], ARGV[1])
if not got then return {} end
local out = {}
for _, entry in ipairs(got[1][2]) do
  local fields = entry[2]
  if not fields then fields = {} end
  table.insert(out, {entry[1], fields})
end
return out
"#,
    )
});

/// KEYS: stream. ARGV: ids.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('XACK', KEYS[1], 'deliver', unpack(ARGV))
redis.call('XDEL', KEYS[1], unpack(ARGV))
return 1
"#,
    )
});

/// The cluster ledger; see the module docs.
pub struct RedisLedger {
    prefix: String,
    node_id: String,
    node_ttl: Duration,
    ring: Vec<(u64, usize)>,
    shards: Vec<ConnectionManager>,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger").field("prefix", &self.prefix).field("node_id", &self.node_id).finish()
    }
}

struct Keys {
    tag: String,
    conn: ConnectionManager,
}

impl RedisLedger {
    /// A ledger over `urls` (apps sharded by consistent hashing) under `prefix`, for node
    /// `node_id`, whose shares are reaped `node_ttl` after its last sign of life. Connects
    /// lazily; must be called inside a Tokio runtime.
    pub fn new(urls: &[String], prefix: &str, node_id: &str, node_ttl: Duration) -> Result<Self, BrokerError> {
        if urls.is_empty() {
            return Err(BrokerError::Internal("at least one Redis URL is required".into()));
        }
        let shards =
            urls.iter().enumerate().map(|(i, url)| connect_lazy(url, i).map(|(_, c)| c)).collect::<Result<_, _>>()?;
        Ok(RedisLedger {
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
            node_ttl,
            ring: build_ring(urls),
            shards,
        })
    }

    fn keys(&self, app_id: &str) -> Keys {
        let tag = format!("{{w|{app_id}}}");
        Keys { conn: self.shards[ring_pick(&self.ring, &tag)].clone(), tag }
    }

    fn key(&self, kind: &str, k: &Keys) -> String {
        format!("{}:{kind}:{}", self.prefix, k.tag)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }
}

fn parse_entry(id: String, fields: Vec<String>) -> Option<QueuedEvent> {
    let mut event =
        QueuedEvent { id, name: String::new(), channel: String::new(), user_id: None, time_ms: 0, detail: None };
    for pair in fields.chunks_exact(2) {
        match pair[0].as_str() {
            "name" => event.name = pair[1].clone(),
            "channel" => event.channel = pair[1].clone(),
            "user" => event.user_id = Some(pair[1].clone()),
            "time_ms" => event.time_ms = pair[1].parse().unwrap_or(0),
            "detail" => event.detail = Some(pair[1].clone()),
            _ => {}
        }
    }
    (!event.name.is_empty()).then_some(event)
}

#[async_trait]
impl WebhookLedger for RedisLedger {
    async fn set_shares(&self, app_id: &str, shares: &[(Counter, u64)]) -> Result<(), BrokerError> {
        let mut k = self.keys(app_id);
        let mut invocation = SET_SHARES.prepare_invoke();
        invocation
            .key(self.key("wl", &k))
            .key(format!("{}:{}", self.key("wn", &k), self.node_id))
            .key(self.key("wc", &k))
            .key(self.key("wq", &k))
            .arg(&self.node_id)
            .arg(self.ttl_ms());
        for (counter, share) in shares {
            invocation.arg(counter.field()).arg(*share);
        }
        let _: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(())
    }

    async fn keep_alive(&self, app_id: &str) -> Result<bool, BrokerError> {
        let mut k = self.keys(app_id);
        let mut invocation = KEEP_ALIVE.prepare_invoke();
        invocation.key(self.key("wl", &k)).arg(&self.node_id).arg(self.ttl_ms());
        let alive: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(alive == 1)
    }

    async fn reap(&self, app_id: &str) -> Result<usize, BrokerError> {
        let mut k = self.keys(app_id);
        let mut invocation = REAP.prepare_invoke();
        invocation
            .key(self.key("wl", &k))
            .key(self.key("wc", &k))
            .key(self.key("wq", &k))
            .arg(format!("{}:", self.key("wn", &k)));
        let reaped: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(usize::try_from(reaped).unwrap_or(0))
    }

    async fn append(&self, app_id: &str, events: &[NewEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut k = self.keys(app_id);
        let stream = self.key("wq", &k);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in events {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&stream).arg("*").arg("name").arg(&e.name).arg("channel").arg(&e.channel);
            if let Some(user) = &e.user_id {
                cmd.arg("user").arg(user);
            }
            cmd.arg("time_ms").arg(if e.time_ms == 0 { now } else { e.time_ms });
            if let Some(detail) = &e.detail {
                cmd.arg("detail").arg(detail);
            }
            pipe.add_command(cmd).ignore();
        }
        let _: () = with_timeout(pipe.query_async(&mut k.conn)).await?;
        Ok(())
    }

    async fn lease(&self, app_id: &str, ttl: Duration) -> Result<bool, BrokerError> {
        let mut k = self.keys(app_id);
        let mut invocation = LEASE.prepare_invoke();
        invocation
            .key(self.key("wk", &k))
            .arg(&self.node_id)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let held: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(held == 1)
    }

    async fn release(&self, app_id: &str) -> Result<(), BrokerError> {
        let mut k = self.keys(app_id);
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(self.key("wk", &k)).arg(&self.node_id);
        let _: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(())
    }

    async fn read(
        &self,
        app_id: &str,
        from_start: bool,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<QueuedEvent>, BrokerError> {
        let mut k = self.keys(app_id);
        let from = if from_start { after.unwrap_or("0").to_owned() } else { ">".to_owned() };
        let mut invocation = READ.prepare_invoke();
        invocation.key(self.key("wq", &k)).arg(from).arg(max.max(1));
        let entries: Vec<(String, Vec<String>)> = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut gone = Vec::new();
        for (id, fields) in entries {
            match parse_entry(id.clone(), fields) {
                Some(event) => out.push(event),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            // Deleted while pending: nothing to deliver, only to forget. A page of nothing but
            // such entries must not look like the end of the backlog.
            self.ack(app_id, &gone).await?;
            if out.is_empty() && from_start {
                let last = gone.last().cloned();
                return self.read(app_id, true, last.as_deref(), max).await;
            }
        }
        Ok(out)
    }

    async fn ack(&self, app_id: &str, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut k = self.keys(app_id);
        let mut invocation = ACK.prepare_invoke();
        invocation.key(self.key("wq", &k));
        for id in ids {
            invocation.arg(id);
        }
        let _: i64 = with_timeout(invocation.invoke_async(&mut k.conn)).await?;
        Ok(())
    }

    async fn backlog(&self, app_id: &str) -> Result<u64, BrokerError> {
        let mut k = self.keys(app_id);
        let stream = self.key("wq", &k);
        let n: u64 = with_timeout(redis::cmd("XLEN").arg(stream).query_async(&mut k.conn)).await?;
        Ok(n)
    }

    async fn record_attempt(&self, app_id: &str, endpoint_id: &str, attempt: &str) -> Result<(), BrokerError> {
        let mut k = self.keys(app_id);
        let list = format!("{}:{endpoint_id}", self.key("wa", &k));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(&list)
            .arg(attempt)
            .ignore()
            .cmd("LTRIM")
            .arg(&list)
            .arg(0)
            .arg(RECENT_ATTEMPTS - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&list)
            .arg(u64::try_from(ATTEMPTS_TTL.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        let _: () = with_timeout(pipe.query_async(&mut k.conn)).await?;
        Ok(())
    }

    async fn attempts(&self, app_id: &str, endpoint_id: &str) -> Result<Vec<String>, BrokerError> {
        let mut k = self.keys(app_id);
        let list = format!("{}:{endpoint_id}", self.key("wa", &k));
        let got: Vec<String> =
            with_timeout(redis::cmd("LRANGE").arg(&list).arg(0).arg(RECENT_ATTEMPTS - 1).query_async(&mut k.conn))
                .await?;
        Ok(got)
    }
}
