//! [`RedisBroker`]: the engine for several data-plane nodes, with Redis between them.
//!
//! # Key layout
//! Every key of one channel carries the same hash tag `T = {<app_id>|<channel>}` (app ids are
//! generated `app_…` ids and channel names cannot contain `{`, `}` or `|`, so the tag is
//! unambiguous), so one channel's keys always live together: on one shard of
//! our consistent-hash ring, and in one slot on Redis Cluster (a Lua script may only touch
//! keys of one slot). With `P` the configured prefix:
//!
//! | key             | type   | holds                                                      | TTL |
//! |-----------------|--------|------------------------------------------------------------|-----|
//! | `P:s:T`         | hash   | `epoch`, `offset`: the stream's identity and last offset   | `history_ttl_s` after the latest publish ([`EMPTY_STREAM_TTL_S`] if none yet) |
//! | `P:h:T`         | list   | the latest `history_size` publications, oldest first       | same as `P:s:T` |
//! | `P:i:T:<key>`   | string | `<offset>:<epoch>` of the publish that used idempotency `<key>` | [`IDEMPOTENCY_WINDOW_S`] |
//! | `P:p:T`         | hash   | connection id → presence member (JSON)                     | longest member TTL + 60 s |
//! | `P:e:T`         | zset   | connection id → expiry (Redis server time, ms)             | same as `P:p:T` |
//! | `P:t:T`         | pub/sub topic | every publication and presence change of the channel | — |
//!
//! A history entry is `<offset>|<ts>|<meta>|<client id><event><exclude><data>`, where `<meta>`
//! gives the byte lengths of the three optional strings before the data: `-` (none of them),
//! `<n>` (a client id only, the format before event names existed, still read), or
//! `<c>,<e>,<x>` with `-` for an absent one (see [`entry_meta`]). A topic
//! message is `p<epoch length>|<epoch><entry>` for a publication, or `j`/`u`/`l` followed by
//! the member's JSON for a presence join/update/leave. Every node decodes a message once and
//! hands one `Arc<Publication>` to its sink.
//!
//! # Atomicity
//! Publish is one Lua script on the channel's shard. Redis runs a script to completion before
//! any other command, so these steps are one indivisible step for every node: check the
//! idempotency key (returning the earlier position), create the stream with the caller's fresh
//! epoch if `P:s:T` is missing (deleting any orphaned history), `HINCRBY` the offset, append to
//! and trim the history list, refresh both TTLs, remember the idempotency key, and `PUBLISH` to
//! the channel's topic. Offsets are therefore gap-free and ordered per channel across all
//! nodes, and topic messages leave Redis in offset order. Because epoch and offset live in one
//! hash with one TTL, a stream is lost as a whole (TTL, flush, restart without persistence)
//! and the next access starts a new epoch: clients resuming with the old one get
//! `recovered: false`. History reads and `position` run as one script too, so the epoch,
//! offset and entries they return are consistent with each other.
//!
//! # Subscriptions
//! Each shard has one dedicated pub/sub connection owned by an actor task; `subscribe` and
//! `unsubscribe` are commands to that task, applied in call order, so they never race each
//! other. The node subscribes only to topics of channels with local subscribers.
//! [`Broker::subscribe`] returns after Redis acknowledged `SUBSCRIBE`; from then on every
//! publication reaches this node. So a hub that subscribes first and then reads the position
//! or history misses nothing: whatever that read did not include has a greater offset and is
//! published after the acknowledgement. (It may also receive publications the read did
//! include; the hub drops those by offset.)
//!
//! The actor remembers the last position it delivered per channel. When the pub/sub connection
//! drops (Redis restart, network), it reconnects with backoff, resubscribes every topic by
//! itself, and then fills what was published meanwhile from history, in order, before live
//! messages; a publication arriving with a gap in its offsets is filled the same way. Where
//! history no longer reaches back, the hub sees the jump in positions. Where the epoch changed
//! (Redis restarted empty) and the new one already has publications, they are delivered from
//! its start, so the hub sees the jump at once rather than at the next live publication.
//!
//! # Presence
//! Members live in `P:p:T` with their expiry in `P:e:T`, scored with Redis server time so node
//! clocks do not matter. `presence_touch` (the node heartbeat) moves live members' expiry
//! forward and never revives an expired one. Every node sweeps the channels it subscribes to
//! that may have members (any it saw a join or update for, and each once after subscribing,
//! until a sweep finds the set empty) once per [`PRESENCE_SWEEP_INTERVAL`], at most
//! [`SWEEP_BATCH`] expirations per channel and call: expired members are removed and a `leave`
//! is published, atomically, so exactly one node announces each leave. Reads and joins expire
//! members too. Each node also remembers the members it joined and still touches; after its
//! pub/sub connection comes back it joins them again, which is a no-op for members Redis kept
//! and a `join` for members a restarted Redis lost.
//!
//! # Failure
//! Every command is bounded by [`COMMAND_TIMEOUT`]; an unreachable Redis yields
//! [`BrokerError::Unavailable`] quickly, while the connections keep reconnecting in the
//! background. A publish that times out may still have happened (the reply was lost); it is
//! reported as unavailable, never as published, and a retry with the same idempotency key
//! returns the original position.
//!
//! # Sharding
//! With several Redis URLs, channels are spread over them by consistent hashing of the hash tag
//! (160 virtual nodes per URL, a stable FNV-1a/SplitMix64 hash), so every node maps a channel
//! to the same Redis as long as all nodes get the same URLs, spelled the same way. Adding a
//! URL moves only the channels that land on it (their streams restart with a new epoch there,
//! which resuming clients see as `recovered: false`).
//!
//! Redis Cluster is the production path beyond a handful of instances: the hash tags already
//! keep every script on one slot, and the topic shares the tag, so switching `PUBLISH` /
//! `SUBSCRIBE` to sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`, Redis 7) keeps fan-out on the
//! slot's own node instead of broadcasting it cluster-wide. That needs a cluster-aware client
//! (the redis crate's `cluster-async`), which this implementation does not use yet.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{RedisError, Script};
use tokio::sync::{mpsc, oneshot};

use crate::memory::new_epoch;
use crate::{
    Broker, BrokerError, BrokerEvents, ChannelKey, EMPTY_STREAM_TTL_S, HistoryPage, IDEMPOTENCY_WINDOW_S,
    PresenceAction, PresenceMember, Publication, PublishRequest, PublishResult, StreamPosition,
};

/// Upper bound on any one Redis round trip, so callers learn quickly that Redis is down.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often each node expires presence members of the channels it subscribes to.
pub const PRESENCE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most members one script call expires, so no single call blocks Redis for long.
pub const SWEEP_BATCH: u32 = 1_000;
/// Sweep scripts in flight at once per shard.
const SWEEP_CONCURRENCY: usize = 16;
/// How often an idle pub/sub connection is checked with `PING`.
const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds for the pub/sub connection.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Pending subscribe/unsubscribe commands per shard.
const PUBSUB_QUEUE: usize = 4_096;
/// Topics per `SUBSCRIBE`/`UNSUBSCRIBE` command when batching.
const TOPICS_PER_COMMAND: usize = 256;
/// Publications fetched at most to fill a gap after a reconnect.
const MAX_GAP_FILL: usize = 10_000;
/// Presence keys outlive their longest member by this much, so sweeps can still announce leaves.
const PRESENCE_KEY_SLACK_MS: u64 = 60_000;
/// Virtual nodes per Redis URL on the hash ring.
const VIRTUAL_NODES: usize = 160;

/// Shared Lua helpers: server time in ms, and expiring presence members with leave events.
pub(crate) const LUA_PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- KEYS[1] members hash, KEYS[2] expiry zset, ARGV[1] topic
local function expire_members(now, batch)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(gone) do
    local m = redis.call('HGET', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if m then
      redis.call('HDEL', KEYS[1], id)
      redis.call('PUBLISH', ARGV[1], 'l' .. m)
    end
  end
end
local function keep_keys(ms)
  for i = 1, 2 do
    if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"#;

/// KEYS: stream hash, history list, [idempotency key].
/// ARGV: topic, epoch candidate, history_size, ttl_s, idempotency ttl_s, entry meta, the
/// strings it measures (client id, event, exclude) concatenated, data.
/// Returns {duplicate (0|1), epoch, offset}.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
if KEYS[3] then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then
    local sep = string.find(earlier, ':', 1, true)
    return {1, string.sub(earlier, sep + 1), tonumber(string.sub(earlier, 1, sep - 1))}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
local off = string.format('%d', offset)
local entry = off .. '|' .. string.format('%d', now_ms()) .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. ARGV[8]
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('RPUSH', KEYS[2], entry)
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
if KEYS[3] then redis.call('SET', KEYS[3], off .. ':' .. epoch, 'EX', tonumber(ARGV[5])) end
redis.call('PUBLISH', ARGV[1], 'p' .. #epoch .. '|' .. epoch .. entry)
return {0, epoch, offset}
"#
    ))
});

/// KEYS: stream hash, history list.
/// ARGV: epoch candidate, empty stream ttl_s, since offset ('' for the latest), since epoch, limit.
/// Returns {epoch, offset, first offset held, entries}.
static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
end
local len = redis.call('LLEN', KEYS[2])
local first = offset - len + 1
local limit = tonumber(ARGV[5])
local items = {}
if limit > 0 then
  if ARGV[3] == '' then
    items = redis.call('LRANGE', KEYS[2], -limit, -1)
  elseif ARGV[4] == epoch then
    local start = tonumber(ARGV[3]) + 1 - first
    if start < 0 then start = 0 end
    if start < len then items = redis.call('LRANGE', KEYS[2], start, start + limit - 1) end
  end
end
return {epoch, offset, first, items}
"#,
    )
});

/// KEYS: members, expiries. ARGV: topic, connection id, member json, ttl ms, max members, key ttl ms.
/// Returns 1, or 0 when the set is full.
static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
expire_members(now, tonumber(ARGV[7]))
local expires = now + tonumber(ARGV[4])
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
  if existing ~= ARGV[3] then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
    redis.call('PUBLISH', ARGV[1], 'u' .. ARGV[3])
  end
else
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
  redis.call('PUBLISH', ARGV[1], 'j' .. ARGV[3])
end
keep_keys(tonumber(ARGV[6]))
return 1
"#
    ))
});

/// KEYS: members, expiries. ARGV: topic, connection id. Returns 1 if the member was present.
static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('HGET', KEYS[1], ARGV[2])
if not m then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], 'l' .. m)
return 1
"#,
    )
});

/// KEYS: members, expiries. ARGV: topic, ttl ms, key ttl ms, batch, connection ids...
/// Expired members leave first, so a touch never revives one.
static PRESENCE_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
expire_members(now, tonumber(ARGV[4]))
local expires = now + tonumber(ARGV[2])
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[2], 'XX', expires, ARGV[i])
end
keep_keys(tonumber(ARGV[3]))
return 1
"#
    ))
});

/// KEYS: members, expiries. ARGV: topic, batch, '1' to return the members (else their count).
static PRESENCE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
expire_members(now_ms(), tonumber(ARGV[2]))
if ARGV[3] == '1' then return redis.call('HVALS', KEYS[1]) end
return redis.call('HLEN', KEYS[1])
"#
    ))
});

/// The Redis [`Broker`]. See the module docs for key layout, atomicity and failure behaviour.
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

struct Inner {
    prefix: String,
    shards: Vec<Shard>,
    /// Sorted (point, shard index) pairs of the consistent-hash ring.
    ring: Vec<(u64, usize)>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// Presence members this node joined and has not removed, to re-join them after the
    /// pub/sub connection comes back (Redis may have restarted and lost them).
    local_members: Mutex<HashMap<ChannelKey, HashMap<String, LocalMember>>>,
}

struct LocalMember {
    member: PresenceMember,
    ttl_s: u32,
    max_members: u32,
    /// Join or last touch plus TTL: a member this node stopped touching is never re-joined.
    alive_until: std::time::Instant,
}

struct Shard {
    commands: ConnectionManager,
    /// Commands to this shard's pub/sub actor.
    pubsub: mpsc::Sender<PubSubCommand>,
    /// Topics this node subscribes to and the channel each carries. Written only by the actor
    /// (in command order); read by the actor per message and by the presence sweep.
    topics: Mutex<HashMap<String, ChannelKey>>,
    /// Subscribed topics whose presence set may have members, with a generation bumped by
    /// every join/update seen: only these are swept, and one is dropped only when a sweep found
    /// it empty and no join came in meanwhile.
    presence_topics: Mutex<HashMap<String, u64>>,
}

enum PubSubCommand {
    Subscribe { topic: String, channel: ChannelKey, done: oneshot::Sender<Result<(), BrokerError>> },
    Unsubscribe { topic: String, done: oneshot::Sender<Result<(), BrokerError>> },
}

/// The Redis keys and topic of one channel.
struct ChannelKeys {
    tag: String,
    stream: String,
    history: String,
    members: String,
    expiries: String,
    topic: String,
}

impl RedisBroker {
    /// Creates a broker over one or more Redis URLs (channels are sharded by consistent hashing
    /// when several are given) with keys and topics under `prefix`. Connections are made lazily
    /// and re-made in the background, so this succeeds while Redis is down (operations then
    /// return [`BrokerError::Unavailable`]); use [`RedisBroker::ping`] as a readiness check.
    /// Must be called inside a Tokio runtime.
    pub fn new(urls: &[String], prefix: &str) -> Result<Self, BrokerError> {
        if urls.is_empty() {
            return Err(BrokerError::Internal("at least one Redis URL is required".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BrokerError::Internal("RedisBroker must be created inside a Tokio runtime".into()))?;
        register_error_counters();
        let mut shards = Vec::with_capacity(urls.len());
        let mut actors = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let (client, commands) = connect_lazy(url, index)?;
            let (tx, rx) = mpsc::channel(PUBSUB_QUEUE);
            shards.push(Shard {
                commands,
                pubsub: tx,
                topics: Mutex::new(HashMap::new()),
                presence_topics: Mutex::new(HashMap::new()),
            });
            actors.push((client, rx));
        }
        let inner = Arc::new(Inner {
            prefix: prefix.to_owned(),
            ring: build_ring(urls),
            shards,
            events: OnceLock::new(),
            local_members: Mutex::new(HashMap::new()),
        });
        let mut tasks = Vec::new();
        for (index, (client, rx)) in actors.into_iter().enumerate() {
            tasks.push(runtime.spawn(pubsub_actor(Arc::clone(&inner), index, client, rx)).abort_handle());
            tasks.push(runtime.spawn(presence_sweeper(Arc::clone(&inner), index)).abort_handle());
        }
        Ok(RedisBroker { inner, tasks })
    }

    /// Checks that every shard answers `PING` within [`COMMAND_TIMEOUT`].
    pub async fn ping(&self) -> Result<(), BrokerError> {
        for shard in &self.inner.shards {
            let mut conn = shard.commands.clone();
            let _: String = with_timeout(redis::cmd("PING").query_async(&mut conn)).await?;
        }
        Ok(())
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.prefix)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

impl Inner {
    fn keys(&self, channel: &ChannelKey) -> ChannelKeys {
        let tag = format!("{{{}|{}}}", channel.app_id, channel.channel);
        let p = &self.prefix;
        ChannelKeys {
            stream: format!("{p}:s:{tag}"),
            history: format!("{p}:h:{tag}"),
            members: format!("{p}:p:{tag}"),
            expiries: format!("{p}:e:{tag}"),
            topic: format!("{p}:t:{tag}"),
            tag,
        }
    }

    fn shard(&self, keys: &ChannelKeys) -> &Shard {
        &self.shards[ring_pick(&self.ring, &keys.tag)]
    }

    /// Runs the history script: the stream's epoch, offset, first offset held and entries.
    async fn read_history(
        &self,
        channel: &ChannelKey,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let keys = self.keys(channel);
        let shard = self.shard(&keys);
        let mut invocation = HISTORY.prepare_invoke();
        invocation
            .key(&keys.stream)
            .key(&keys.history)
            .arg(new_epoch())
            .arg(EMPTY_STREAM_TTL_S)
            .arg(since.map(|s| s.offset.to_string()).unwrap_or_default())
            .arg(since.map(|s| s.epoch.as_str()).unwrap_or(""))
            .arg(limit);
        let mut conn = shard.commands.clone();
        let mut outcome = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await;
        if connection_lost(&outcome) {
            // The first command after Redis came back finds the old socket dead; reading is safe
            // to repeat (the script only creates a missing stream's epoch), so the reader gets
            // its answer from the new connection instead of an error.
            outcome = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await;
        }
        let (epoch, offset, first_held, entries): (String, u64, i64, Vec<Bytes>) = settle(outcome)?;
        let epoch_arc: Arc<str> = epoch.as_str().into();
        let publications = entries
            .into_iter()
            .map(|entry| {
                decode_entry(entry, Arc::clone(&epoch_arc))
                    .ok_or_else(|| BrokerError::Internal(format!("undecodable history entry in {channel:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let recovered = match since {
            None => true,
            Some(since) if since.epoch != epoch => false,
            Some(since) if since.offset >= offset => since.offset == offset,
            Some(since) => i128::from(first_held) <= i128::from(since.offset) + 1,
        };
        Ok(HistoryPage { publications, position: StreamPosition { epoch, offset }, recovered })
    }

    /// Runs the join script: adds or updates `member`, publishing join/update.
    async fn join(
        &self,
        channel: &ChannelKey,
        member: &PresenceMember,
        ttl_s: u32,
        max_members: u32,
    ) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let shard = self.shard(&keys);
        let json = serde_json::to_string(member).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let ttl_ms = u64::from(ttl_s.max(1)) * 1_000;
        let mut invocation = PRESENCE_JOIN.prepare_invoke();
        invocation
            .key(&keys.members)
            .key(&keys.expiries)
            .arg(&keys.topic)
            .arg(&member.connection_id)
            .arg(json)
            .arg(ttl_ms)
            .arg(max_members)
            .arg(ttl_ms + PRESENCE_KEY_SLACK_MS)
            .arg(SWEEP_BATCH);
        let mut conn = shard.commands.clone();
        let joined: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        if joined == 1 { Ok(()) } else { Err(BrokerError::PresenceFull) }
    }

    /// Joins again every member this node owns on shard `index`. Idempotent for members Redis
    /// still has (no event); members Redis lost are announced with `join` again.
    async fn rejoin_local_members(&self, index: usize) {
        let members: Vec<(ChannelKey, PresenceMember, u32, u32)> = {
            let mut local = self.local_members.lock();
            // Members whose connection stopped heartbeating are gone, not to be revived.
            let now = std::time::Instant::now();
            local.retain(|_, members| {
                members.retain(|_, m| m.alive_until > now);
                !members.is_empty()
            });
            local
                .iter()
                .filter(|(channel, _)| std::ptr::eq(self.shard(&self.keys(channel)), &self.shards[index]))
                .flat_map(|(channel, members)| {
                    members.values().map(|m| (channel.clone(), m.member.clone(), m.ttl_s, m.max_members))
                })
                .collect()
        };
        if members.is_empty() {
            return;
        }
        let count = members.len();
        stream::iter(members)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(channel, member, ttl_s, max_members)| async move {
                if let Err(e) = self.join(&channel, &member, ttl_s, max_members).await {
                    tracing::warn!(?channel, error = %e, "could not re-join a presence member");
                }
            })
            .await;
        tracing::info!(shard = index, members = count, "re-joined local presence members");
    }

    async fn pubsub_command(&self, channel: &ChannelKey, subscribe: bool) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let shard = self.shard(&keys);
        let (done, result) = oneshot::channel();
        let command = if subscribe {
            PubSubCommand::Subscribe { topic: keys.topic, channel: channel.clone(), done }
        } else {
            PubSubCommand::Unsubscribe { topic: keys.topic, done }
        };
        let sent = tokio::time::timeout(COMMAND_TIMEOUT, shard.pubsub.send(command)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(counted(BrokerError::Unavailable("pub/sub command queue is full".into())));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, result).await {
            Ok(Ok(result)) => result,
            // The actor dropped the command: its connection was reset meanwhile.
            Ok(Err(_)) => Err(counted(BrokerError::Unavailable("Redis pub/sub connection was reset".into()))),
            Err(_) => Err(counted(BrokerError::Unavailable("Redis pub/sub did not answer in time".into()))),
        }
    }
}

fn alive_until(ttl_s: u32) -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(u64::from(ttl_s.max(1)))
}

/// Failed Redis calls (counter). Labels: kind (`unavailable`: connection, timeout or a
/// transient server state; `internal`: anything else).
pub const BROKER_ERRORS: &str = "aviary_broker_errors_total";

/// Describes this crate's series (their Prometheus `# HELP` lines) and registers the error
/// counters at zero, so dashboards and alerts see the series before the first error.
pub fn describe_metrics() {
    metrics::describe_counter!(
        BROKER_ERRORS,
        "Failed Redis calls of the broker, quotas and channel counts, by kind (unavailable: connection, timeout \
         or transient server state; internal: anything else)."
    );
}

fn register_error_counters() {
    for kind in ["unavailable", "internal"] {
        metrics::counter!(BROKER_ERRORS, "kind" => kind).increment(0);
    }
}

/// Counts a failed Redis call and passes the error on.
fn counted(error: BrokerError) -> BrokerError {
    let kind = if matches!(error, BrokerError::Unavailable(_)) { "unavailable" } else { "internal" };
    metrics::counter!(BROKER_ERRORS, "kind" => kind).increment(1);
    error
}

/// Awaits a Redis call with [`COMMAND_TIMEOUT`], mapping failures to [`BrokerError`] (and
/// counting them in [`BROKER_ERRORS`]).
pub(crate) async fn with_timeout<T>(call: impl Future<Output = Result<T, RedisError>>) -> Result<T, BrokerError> {
    settle(tokio::time::timeout(COMMAND_TIMEOUT, call).await)
}

/// Whether a command failed because its connection was gone (Redis restarted, a stale socket):
/// the connection manager reconnects, so a command that is safe to repeat may be sent again.
fn connection_lost(outcome: &Result<Result<impl Sized, RedisError>, tokio::time::error::Elapsed>) -> bool {
    matches!(outcome, Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error())
}

fn settle<T>(outcome: Result<Result<T, RedisError>, tokio::time::error::Elapsed>) -> Result<T, BrokerError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(counted(map_error(&e))),
        Err(_) => Err(counted(BrokerError::Unavailable("Redis did not answer in time".into()))),
    }
}

/// Connection-level and transient server errors mean "try again later"; anything else (a
/// script or type error) is a bug worth surfacing as internal.
fn map_error(e: &RedisError) -> BrokerError {
    const TRANSIENT: [&str; 7] = ["LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "MOVED"];
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code().is_some_and(|code| TRANSIENT.contains(&code));
    if transient { BrokerError::Unavailable(e.to_string()) } else { BrokerError::Internal(e.to_string()) }
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        if self.inner.events.set(events).is_err() {
            tracing::warn!("RedisBroker::set_events called more than once; keeping the first sink");
        }
    }

    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.pubsub_command(channel, true).await
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.pubsub_command(channel, false).await
    }

    async fn publish(&self, channel: &ChannelKey, request: PublishRequest) -> Result<PublishResult, BrokerError> {
        let keys = self.inner.keys(channel);
        let shard = self.inner.shard(&keys);
        let mut invocation = PUBLISH.prepare_invoke();
        invocation.key(&keys.stream).key(&keys.history);
        if let Some(key) = &request.idempotency_key {
            invocation.key(format!("{}:i:{}:{key}", self.inner.prefix, keys.tag));
        }
        invocation
            .arg(&keys.topic)
            .arg(new_epoch())
            .arg(request.history_size)
            .arg(request.history_ttl_s.max(1))
            .arg(IDEMPOTENCY_WINDOW_S);
        let (meta, strings) = entry_meta(&request);
        invocation.arg(meta).arg(strings).arg(&request.data[..]);
        let mut conn = shard.commands.clone();
        let (duplicate, epoch, offset): (i64, String, u64) = with_timeout(invocation.invoke_async(&mut conn)).await?;
        Ok(PublishResult { position: StreamPosition { epoch, offset }, duplicate: duplicate == 1 })
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.read_history(channel, since, limit).await
    }

    async fn position(&self, channel: &ChannelKey) -> Result<StreamPosition, BrokerError> {
        Ok(self.inner.read_history(channel, None, 0).await?.position)
    }

    async fn presence_join(
        &self,
        channel: &ChannelKey,
        member: PresenceMember,
        ttl_s: u32,
        max_members: u32,
    ) -> Result<(), BrokerError> {
        self.inner.join(channel, &member, ttl_s, max_members).await?;
        let connection_id = member.connection_id.clone();
        self.inner
            .local_members
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(connection_id, LocalMember { member, ttl_s, max_members, alive_until: alive_until(ttl_s) });
        Ok(())
    }

    async fn presence_leave(&self, channel: &ChannelKey, connection_id: &str) -> Result<(), BrokerError> {
        // Forgotten locally first: even if Redis is unreachable now, the member is not
        // re-joined later, and its TTL removes it from Redis.
        {
            let mut local = self.inner.local_members.lock();
            if let Some(members) = local.get_mut(channel) {
                members.remove(connection_id);
                if members.is_empty() {
                    local.remove(channel);
                }
            }
        }
        let keys = self.inner.keys(channel);
        let shard = self.inner.shard(&keys);
        let mut invocation = PRESENCE_LEAVE.prepare_invoke();
        invocation.key(&keys.members).key(&keys.expiries).arg(&keys.topic).arg(connection_id);
        let mut conn = shard.commands.clone();
        let _: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn presence_touch(
        &self,
        channel: &ChannelKey,
        connection_ids: &[String],
        ttl_s: u32,
    ) -> Result<(), BrokerError> {
        let keys = self.inner.keys(channel);
        let shard = self.inner.shard(&keys);
        let ttl_ms = u64::from(ttl_s.max(1)) * 1_000;
        let mut invocation = PRESENCE_TOUCH.prepare_invoke();
        invocation
            .key(&keys.members)
            .key(&keys.expiries)
            .arg(&keys.topic)
            .arg(ttl_ms)
            .arg(ttl_ms + PRESENCE_KEY_SLACK_MS)
            .arg(SWEEP_BATCH)
            .arg(connection_ids);
        {
            let mut local = self.inner.local_members.lock();
            if let Some(members) = local.get_mut(channel) {
                for id in connection_ids {
                    if let Some(m) = members.get_mut(id) {
                        m.ttl_s = ttl_s;
                        m.alive_until = alive_until(ttl_s);
                    }
                }
            }
        }
        let mut conn = shard.commands.clone();
        let _: i64 = with_timeout(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn presence(&self, channel: &ChannelKey) -> Result<Vec<PresenceMember>, BrokerError> {
        let keys = self.inner.keys(channel);
        let shard = self.inner.shard(&keys);
        let mut invocation = PRESENCE_READ.prepare_invoke();
        invocation.key(&keys.members).key(&keys.expiries).arg(&keys.topic).arg(SWEEP_BATCH).arg("1");
        let mut conn = shard.commands.clone();
        let members: Vec<Bytes> = with_timeout(invocation.invoke_async(&mut conn)).await?;
        members
            .iter()
            .map(|m| serde_json::from_slice(m).map_err(|e| BrokerError::Internal(format!("bad presence member: {e}"))))
            .collect()
    }
}

/// Expires presence members of this shard's subscribed channels that may have any, every
/// [`PRESENCE_SWEEP_INTERVAL`]; the scripts publish the leave events.
async fn presence_sweeper(inner: Arc<Inner>, index: usize) {
    let mut ticker = tokio::time::interval(PRESENCE_SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let shard = &inner.shards[index];
        let candidates: Vec<(String, u64)> =
            shard.presence_topics.lock().iter().map(|(t, g)| (t.clone(), *g)).collect();
        let sweeps: Vec<(String, u64, ChannelKey)> = {
            let topics = shard.topics.lock();
            candidates.into_iter().filter_map(|(t, g)| topics.get(&t).cloned().map(|c| (t, g, c))).collect()
        };
        let inner = &inner;
        stream::iter(sweeps)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(topic, generation, channel)| async move {
                let keys = inner.keys(&channel);
                let mut invocation = PRESENCE_READ.prepare_invoke();
                invocation.key(&keys.members).key(&keys.expiries).arg(&keys.topic).arg(SWEEP_BATCH).arg("0");
                let mut conn = shard.commands.clone();
                match with_timeout(invocation.invoke_async::<i64>(&mut conn)).await {
                    Ok(0) => {
                        let mut active = shard.presence_topics.lock();
                        if active.get(&topic) == Some(&generation) {
                            active.remove(&topic);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(shard = index, ?channel, error = %e, "presence sweep failed"),
                }
            })
            .await;
    }
}

/// What the pub/sub actor tracks per subscribed topic: the last position it delivered.
struct Delivered {
    channel: ChannelKey,
    last: Option<(Arc<str>, u64)>,
}

/// Owns shard `index`'s pub/sub connection: applies subscribe/unsubscribe commands in order,
/// delivers topic messages to the sink, and reconnects and resubscribes when the connection
/// drops.
async fn pubsub_actor(
    inner: Arc<Inner>,
    index: usize,
    client: redis::Client,
    mut commands: mpsc::Receiver<PubSubCommand>,
) {
    let shard = &inner.shards[index];
    let mut delivered: HashMap<String, Delivered> = HashMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        // Connect. Commands arriving meanwhile wait for the outcome (at most CONNECT_TIMEOUT),
        // so a node that just started does not refuse its first subscribers.
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub());
        tokio::pin!(connect);
        let mut pending = Vec::new();
        let connected = loop {
            tokio::select! {
                result = &mut connect => break result,
                Some(command) = commands.recv() => {
                    if pending.len() < PUBSUB_QUEUE {
                        pending.push(command);
                    } else {
                        apply_offline(shard, &mut delivered, command);
                    }
                }
            }
        };
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(shard = index, error = %e, "Redis pub/sub connection failed; retrying")
                    }
                    _ => tracing::warn!(shard = index, "Redis pub/sub connection timed out; retrying"),
                }
                for command in pending {
                    apply_offline(shard, &mut delivered, command);
                }
                wait_backoff(shard, &mut delivered, &mut commands, &mut backoff).await;
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();

        // Resubscribe everything wanted, then fill what was published while disconnected.
        let topics: Vec<String> = delivered.keys().cloned().collect();
        if let Err(e) = subscribe_all(&mut sink, &topics).await {
            tracing::warn!(shard = index, error = %e, "Redis resubscribe failed; reconnecting");
            for command in pending {
                apply_offline(shard, &mut delivered, command);
            }
            wait_backoff(shard, &mut delivered, &mut commands, &mut backoff).await;
            continue;
        }
        backoff = MIN_BACKOFF;
        {
            // Leaves may have been missed while disconnected: sweep every topic once more.
            let mut active = shard.presence_topics.lock();
            for topic in &topics {
                *active.entry(topic.clone()).or_default() += 1;
            }
        }
        if !topics.is_empty() {
            tracing::info!(shard = index, topics = topics.len(), "Redis pub/sub resubscribed");
        }
        catch_up_all(&inner, &mut delivered).await;
        if !pending.is_empty() && apply_online(shard, &mut delivered, &mut sink, pending).await.is_err() {
            continue;
        }
        // Redis may have restarted empty: put this node's presence members back (off the actor,
        // so messages keep flowing meanwhile).
        let rejoin = Arc::clone(&inner);
        tokio::spawn(async move { rejoin.rejoin_local_members(index).await });

        let mut ping = tokio::time::interval(PUBSUB_PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => on_message(&inner, shard, &mut delivered, message).await,
                    None => break,
                },
                Some(command) = commands.recv() => {
                    let mut batch = vec![command];
                    while batch.len() < TOPICS_PER_COMMAND {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if apply_online(shard, &mut delivered, &mut sink, batch).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(shard = index, "Redis pub/sub connection lost; reconnecting");
    }
}

async fn wait_backoff(
    shard: &Shard,
    delivered: &mut HashMap<String, Delivered>,
    commands: &mut mpsc::Receiver<PubSubCommand>,
    backoff: &mut Duration,
) {
    let sleep = tokio::time::sleep(*backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => break,
            Some(command) = commands.recv() => apply_offline(shard, delivered, command),
        }
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// While disconnected: subscribes fail (the caller learns Redis is down, and nothing is
/// remembered), unsubscribes succeed (there is nothing to stop on Redis, and the topic will not
/// be resubscribed).
fn apply_offline(shard: &Shard, delivered: &mut HashMap<String, Delivered>, command: PubSubCommand) {
    match command {
        PubSubCommand::Subscribe { done, .. } => {
            let _ = done.send(Err(BrokerError::Unavailable("Redis pub/sub is reconnecting".into())));
        }
        PubSubCommand::Unsubscribe { topic, done } => {
            delivered.remove(&topic);
            shard.topics.lock().remove(&topic);
            shard.presence_topics.lock().remove(&topic);
            let _ = done.send(Ok(()));
        }
    }
}

/// Applies a batch of commands in order, merging runs of the same kind into one Redis command.
/// Returns `Err` when the connection failed (the caller reconnects).
async fn apply_online(
    shard: &Shard,
    delivered: &mut HashMap<String, Delivered>,
    sink: &mut PubSubSink,
    batch: Vec<PubSubCommand>,
) -> Result<(), ()> {
    let mut commands = batch.into_iter().peekable();
    while let Some(first) = commands.next() {
        let subscribing = matches!(first, PubSubCommand::Subscribe { .. });
        let mut run = vec![first];
        while let Some(next) = commands.peek() {
            if matches!(next, PubSubCommand::Subscribe { .. }) != subscribing {
                break;
            }
            run.extend(commands.next());
        }
        if subscribing {
            // A caller that gave up waiting was told "unavailable": do not subscribe behind
            // its back (nobody would unsubscribe).
            run.retain(|command| !matches!(command, PubSubCommand::Subscribe { done, .. } if done.is_closed()));
            if run.is_empty() {
                continue;
            }
            // Wanted before asking Redis, so a message arriving right after the
            // acknowledgement is not dropped.
            let mut topics = Vec::with_capacity(run.len());
            let mut added = Vec::new();
            {
                let mut wanted = shard.topics.lock();
                for command in &run {
                    if let PubSubCommand::Subscribe { topic, channel, .. } = command {
                        wanted.insert(topic.clone(), channel.clone());
                        if !delivered.contains_key(topic) {
                            delivered.insert(topic.clone(), Delivered { channel: channel.clone(), last: None });
                            added.push(topic.clone());
                        }
                        // Members may predate this node's subscription: sweep at least once.
                        *shard.presence_topics.lock().entry(topic.clone()).or_default() += 1;
                        topics.push(topic.clone());
                    }
                }
            }
            let result = with_timeout(sink.subscribe(&topics)).await;
            if result.is_err() {
                // Not acknowledged: forget the new ones, their callers are told to retry.
                // Topics subscribed before stay wanted and are resubscribed on reconnect.
                let mut wanted = shard.topics.lock();
                for topic in &added {
                    wanted.remove(topic);
                    delivered.remove(topic);
                }
            }
            let failed = result.is_err();
            for command in run {
                if let PubSubCommand::Subscribe { done, .. } = command {
                    let _ = done.send(result.clone().map(|_| ()));
                }
            }
            if failed {
                commands.for_each(|rest| apply_offline(shard, delivered, rest));
                return Err(());
            }
        } else {
            // Unwanted at once: nothing more is delivered even before Redis acknowledges.
            let mut topics = Vec::with_capacity(run.len());
            {
                let mut wanted = shard.topics.lock();
                for command in &run {
                    if let PubSubCommand::Unsubscribe { topic, .. } = command {
                        wanted.remove(topic);
                        delivered.remove(topic);
                        shard.presence_topics.lock().remove(topic);
                        topics.push(topic.clone());
                    }
                }
            }
            let result = with_timeout(sink.unsubscribe(&topics)).await;
            for command in run {
                if let PubSubCommand::Unsubscribe { done, .. } = command {
                    // Locally stopped either way; a dropped connection forgets its subscriptions.
                    let _ = done.send(Ok(()));
                }
            }
            if result.is_err() {
                commands.for_each(|rest| apply_offline(shard, delivered, rest));
                return Err(());
            }
        }
    }
    Ok(())
}

async fn subscribe_all(sink: &mut PubSubSink, topics: &[String]) -> Result<(), BrokerError> {
    for chunk in topics.chunks(TOPICS_PER_COMMAND) {
        with_timeout(sink.subscribe(chunk)).await?;
    }
    Ok(())
}

/// Reads what `channel` published after `since`, at most `limit` (and [`MAX_GAP_FILL`]).
async fn fetch_gap(inner: &Inner, channel: &ChannelKey, since: StreamPosition, limit: usize) -> Option<HistoryPage> {
    match inner.read_history(channel, Some(&since), limit.min(MAX_GAP_FILL)).await {
        Ok(page) => Some(page),
        Err(e) => {
            tracing::warn!(?channel, error = %e, "could not fill a gap from history");
            None
        }
    }
}

/// Delivers a gap read by [`fetch_gap`], in order, skipping what was delivered meanwhile and
/// stopping before `until`. Best effort: where history no longer reaches back or the epoch
/// changed, the hub sees the jump in positions.
fn fill_gap(
    delivered: &mut HashMap<String, Delivered>,
    topic: &str,
    events: &Arc<dyn BrokerEvents>,
    channel: &ChannelKey,
    page: HistoryPage,
    until: Option<u64>,
) {
    for publication in page.publications {
        if until.is_some_and(|u| publication.offset >= u) {
            break;
        }
        let Some(entry) = delivered.get(topic) else { return };
        if entry.last.as_ref().is_some_and(|(e, last)| **e == *publication.epoch && publication.offset <= *last) {
            continue;
        }
        deliver(delivered, topic, events, channel, publication);
    }
}

/// After a reconnect: delivers, per channel, what was published while the node was not
/// subscribed. History is read concurrently; each channel's gap is delivered in order.
async fn catch_up_all(inner: &Inner, delivered: &mut HashMap<String, Delivered>) {
    let Some(events) = inner.events.get() else { return };
    let gaps: Vec<(String, ChannelKey, StreamPosition)> = delivered
        .iter()
        .filter_map(|(topic, d)| {
            let (epoch, offset) = d.last.as_ref()?;
            Some((topic.clone(), d.channel.clone(), StreamPosition { epoch: epoch.to_string(), offset: *offset }))
        })
        .collect();
    let mut pages = stream::iter(gaps)
        .map(|(topic, channel, since)| async move {
            let page = fetch_gap(inner, &channel, since, MAX_GAP_FILL).await;
            (topic, channel, page)
        })
        .buffer_unordered(SWEEP_CONCURRENCY);
    while let Some((topic, channel, page)) = pages.next().await {
        let Some(page) = page else { continue };
        let since_epoch = delivered.get(&topic).and_then(|d| d.last.as_ref()).map(|(e, _)| Arc::clone(e));
        let new_epoch = since_epoch.is_some_and(|e| *e != *page.position.epoch) && page.position.offset > 0;
        let position = page.position.clone();
        fill_gap(delivered, &topic, events, &channel, page, None);
        if new_epoch {
            // The stream was lost (Redis restarted empty) and the new epoch already has
            // publications: deliver them from its start, so the hub sees the jump now and
            // announces it, instead of at the next live publication, which may never come.
            let start = StreamPosition { epoch: position.epoch, offset: 0 };
            if let Some(page) = fetch_gap(inner, &channel, start, MAX_GAP_FILL).await {
                fill_gap(delivered, &topic, events, &channel, page, None);
            }
        }
    }
}

async fn on_message(inner: &Inner, shard: &Shard, delivered: &mut HashMap<String, Delivered>, message: redis::Msg) {
    let topic = message.get_channel_name();
    let Some(entry) = delivered.get(topic) else { return };
    let channel = entry.channel.clone();
    let Some(events) = inner.events.get() else { return };
    match decode_message(message.get_payload_bytes()) {
        Some(Message::Publication(publication)) => {
            if let Some((epoch, last)) = entry.last.clone()
                && *epoch == *publication.epoch
            {
                if publication.offset <= last {
                    return; // already delivered (by a gap fill)
                }
                if publication.offset > last + 1 {
                    let since = StreamPosition { epoch: epoch.to_string(), offset: last };
                    let missing = usize::try_from(publication.offset - last - 1).unwrap_or(MAX_GAP_FILL);
                    if let Some(page) = fetch_gap(inner, &channel, since, missing).await {
                        fill_gap(delivered, topic, events, &channel, page, Some(publication.offset));
                    }
                }
            }
            deliver(delivered, topic, events, &channel, publication);
        }
        Some(Message::Presence(action, member)) => {
            if action != PresenceAction::Leave {
                *shard.presence_topics.lock().entry(topic.to_owned()).or_default() += 1;
            }
            events.on_presence(&channel, action, &member);
        }
        None => tracing::warn!(?channel, "undecodable pub/sub message"),
    }
}

fn deliver(
    delivered: &mut HashMap<String, Delivered>,
    topic: &str,
    events: &Arc<dyn BrokerEvents>,
    channel: &ChannelKey,
    publication: Publication,
) {
    if let Some(entry) = delivered.get_mut(topic) {
        entry.last = Some((Arc::clone(&publication.epoch), publication.offset));
        events.on_publication(channel, Arc::new(publication));
    }
}

enum Message {
    Publication(Publication),
    Presence(PresenceAction, PresenceMember),
}

fn decode_message(payload: &[u8]) -> Option<Message> {
    let (&kind, rest) = payload.split_first()?;
    let action = match kind {
        b'p' => {
            let (epoch_len, rest) = split_field(rest)?;
            let epoch_len: usize = parse(epoch_len)?;
            let epoch = std::str::from_utf8(rest.get(..epoch_len)?).ok()?;
            let entry = Bytes::copy_from_slice(rest.get(epoch_len..)?);
            return decode_entry(entry, epoch.into()).map(Message::Publication);
        }
        b'j' => PresenceAction::Join,
        b'u' => PresenceAction::Update,
        b'l' => PresenceAction::Leave,
        _ => return None,
    };
    serde_json::from_slice(rest).ok().map(|member| Message::Presence(action, member))
}

/// The `<meta>` field of a history entry and the strings it measures, concatenated.
fn entry_meta(request: &PublishRequest) -> (String, Vec<u8>) {
    let parts = [request.client_id.as_deref(), request.event.as_deref(), request.exclude.as_deref()];
    let mut strings = Vec::new();
    for part in parts.iter().flatten() {
        strings.extend_from_slice(part.as_bytes());
    }
    let meta = match parts {
        [None, None, None] => "-".to_owned(),
        [Some(client), None, None] => client.len().to_string(),
        _ => parts
            .iter()
            .map(|p| p.map_or_else(|| "-".to_owned(), |s| s.len().to_string()))
            .collect::<Vec<_>>()
            .join(","),
    };
    (meta, strings)
}

/// Decodes `<offset>|<ts>|<meta>|<client id><event><exclude><data>`; `data` shares `entry`.
fn decode_entry(entry: Bytes, epoch: Arc<str>) -> Option<Publication> {
    let (offset, rest) = split_field(&entry)?;
    let (ts, rest) = split_field(rest)?;
    let (meta, mut rest) = split_field(rest)?;
    let mut strings: [Option<Arc<str>>; 3] = [None, None, None];
    for (slot, length) in strings.iter_mut().zip(meta.split(|&b| b == b',')) {
        if length == b"-" {
            continue;
        }
        let len: usize = parse(length)?;
        *slot = Some(Arc::<str>::from(std::str::from_utf8(rest.get(..len)?).ok()?));
        rest = rest.get(len..)?;
    }
    if meta.split(|&b| b == b',').count() > 3 {
        return None;
    }
    let data_start = entry.len() - rest.len();
    let [client_id, event, exclude] = strings;
    Some(Publication {
        offset: parse(offset)?,
        epoch,
        data: entry.slice(data_start..),
        client_id,
        ts: parse(ts)?,
        event,
        exclude,
    })
}

fn split_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'|')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn parse<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A hash that every node and every Rust release computes identically (unlike `std`'s):
/// FNV-1a, finished with SplitMix64 for a good spread of similar keys over the ring.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard index the ring assigns to a hash tag.
pub(crate) fn ring_pick(ring: &[(u64, usize)], tag: &str) -> usize {
    let point = stable_hash(tag.as_bytes());
    ring[ring.partition_point(|(p, _)| *p < point) % ring.len()].1
}

/// A client and a lazily connecting, self-reconnecting command connection for one Redis URL,
/// with short timeouts so an unreachable Redis is reported quickly.
pub(crate) fn connect_lazy(url: &str, index: usize) -> Result<(redis::Client, ConnectionManager), BrokerError> {
    let client =
        redis::Client::open(url).map_err(|e| BrokerError::Internal(format!("invalid Redis URL #{index}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(MAX_BACKOFF);
    let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| BrokerError::Internal(format!("Redis connection manager #{index}: {e}")))?;
    Ok((client, commands))
}

pub(crate) fn build_ring(urls: &[String]) -> Vec<(u64, usize)> {
    let mut ring: Vec<(u64, usize)> = urls
        .iter()
        .enumerate()
        .flat_map(|(index, url)| (0..VIRTUAL_NODES).map(move |v| (stable_hash(format!("{url}#{v}").as_bytes()), index)))
        .collect();
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn fuzz_config() -> Config {
        let mut config = Config { failure_persistence: None, ..Config::default() };
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = RngSeed::Fixed(0xA71A_2026);
        }
        config
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        /// Whatever arrives on a pub/sub topic (another version's format, a stray PUBLISH) is
        /// decoded or skipped, never a panic.
        #[test]
        fn any_pubsub_payload_decodes_or_is_skipped(payload in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_message(&payload);
        }

        #[test]
        fn stream_entries_round_trip_any_client_id_and_data(
            offset in any::<u64>(),
            ts in any::<i64>(),
            client_id in proptest::option::of(".{0,12}"),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut entry = format!("{offset}|{ts}|").into_bytes();
            match &client_id {
                Some(id) => entry.extend_from_slice(format!("{}|{id}", id.len()).as_bytes()),
                None => entry.extend_from_slice(b"-|"),
            }
            entry.extend_from_slice(&data);
            let p = decode_entry(Bytes::from(entry), "ep".into()).expect("a well-formed entry decodes");
            prop_assert_eq!((p.offset, p.ts), (offset, ts));
            prop_assert_eq!(p.client_id.as_deref(), client_id.as_deref());
            prop_assert_eq!(&p.data[..], &data[..]);
        }
    }

    #[test]
    fn entries_round_trip_with_and_without_client_id() {
        let entry = Bytes::from_static(b"42|1700000000000|5|alice{\"a\":\"|x|\"}");
        let p = decode_entry(entry, "ep".into()).expect("decodes");
        assert_eq!((p.offset, p.ts, p.client_id.as_deref()), (42, 1_700_000_000_000, Some("alice")));
        assert_eq!(p.data, Bytes::from_static(b"{\"a\":\"|x|\"}"));
        let p = decode_entry(Bytes::from_static(b"1|2|-|null"), "ep".into()).expect("decodes");
        assert_eq!((p.client_id, p.data), (None, Bytes::from_static(b"null")));
        assert!(decode_entry(Bytes::from_static(b"1|2|9|short"), "ep".into()).is_none());
        let p = decode_entry(Bytes::from_static(b"3|4|-,2,7|ev123.456{}"), "ep".into()).expect("decodes");
        assert_eq!(
            (p.client_id, p.event.as_deref(), p.exclude.as_deref(), p.data.as_ref()),
            (None, Some("ev"), Some("123.456"), &b"{}"[..])
        );
        assert!(decode_entry(Bytes::from_static(b"3|4|-,-,-,1|x{}"), "ep".into()).is_none());
        assert!(decode_entry(Bytes::from_static(b"3|4|-,9,-|ev{}"), "ep".into()).is_none());
    }

    #[test]
    fn topic_messages_decode_publications_and_presence() {
        let Some(Message::Publication(p)) = decode_message(b"p3|abc7|9|-|[1]") else { panic!("publication") };
        assert_eq!((&*p.epoch, p.offset, p.data.as_ref()), ("abc", 7, &b"[1]"[..]));
        let Some(Message::Presence(action, member)) =
            decode_message(br#"l{"client_id":"c","connection_id":"x","data":null}"#)
        else {
            panic!("presence")
        };
        assert_eq!((action, member.connection_id.as_str()), (PresenceAction::Leave, "x"));
        assert!(decode_message(b"zzz").is_none());
    }

    #[test]
    fn ring_spreads_channels_and_moves_few_when_a_shard_is_added() {
        let two: Vec<String> = vec!["redis://a".into(), "redis://b".into()];
        let three: Vec<String> = vec!["redis://a".into(), "redis://b".into(), "redis://c".into()];
        let (ring2, ring3) = (build_ring(&two), build_ring(&three));
        let pick = ring_pick;
        let keys: Vec<String> = (0..3_000).map(|i| format!("{{app|room-{i}}}")).collect();
        let on_b = keys.iter().filter(|k| pick(&ring2, k) == 1).count();
        assert!((1_000..2_000).contains(&on_b), "two shards share the channels: {on_b} of 3000 on b");
        let moved = keys.iter().filter(|k| pick(&ring2, k) != pick(&ring3, k)).count();
        let moved_elsewhere =
            keys.iter().filter(|k| pick(&ring2, k) != pick(&ring3, k) && pick(&ring3, k) != 2).count();
        assert_eq!(moved_elsewhere, 0, "adding a shard only moves channels onto it");
        assert!(moved < 1_600, "about a third moves, not most: {moved}");
    }
}
