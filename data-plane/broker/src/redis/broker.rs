//! [`RedisBroker`]: the [`Broker`] implementation over the other modules of [`super`], with the
//! state its background tasks share ([`Inner`]) and each channel's keys.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::codec::{decode_entry, entry_meta};
use super::connection::{
    COMMAND_TIMEOUT, connect_lazy, connection_lost, register_error_counters, settle, with_timeout,
};
use super::presence::{LocalMember, PRESENCE_KEY_SLACK_MS, SWEEP_BATCH, alive_until, presence_sweeper};
use super::pubsub::{PUBSUB_QUEUE, PubSubCommand, pubsub_actor};
use super::ring::{build_ring, ring_pick};
use super::scripts::{HISTORY, PRESENCE_LEAVE, PRESENCE_READ, PRESENCE_TOUCH, PUBLISH};
use crate::memory::new_epoch;
use crate::{
    Broker, BrokerError, BrokerEvents, ChannelKey, EMPTY_STREAM_TTL_S, HistoryPage, IDEMPOTENCY_WINDOW_S,
    PresenceMember, PublishRequest, PublishResult, StreamPosition,
};

/// The Redis [`Broker`]. See the docs of [`super`] for key layout, atomicity and failure behaviour.
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

pub(super) struct Inner {
    pub(super) prefix: String,
    pub(super) shards: Vec<Shard>,
    /// Sorted (point, shard index) pairs of the consistent-hash ring.
    pub(super) ring: Vec<(u64, usize)>,
    pub(super) events: OnceLock<Arc<dyn BrokerEvents>>,
    /// Presence members this node joined and has not removed, to re-join them after the
    /// pub/sub connection comes back (Redis may have restarted and lost them).
    pub(super) local_members: Mutex<HashMap<ChannelKey, HashMap<String, LocalMember>>>,
}

pub(super) struct Shard {
    pub(super) commands: ConnectionManager,
    /// Commands to this shard's pub/sub actor.
    pub(super) pubsub: mpsc::Sender<PubSubCommand>,
    /// Topics this node subscribes to and the channel each carries. Written only by the actor
    /// (in command order); read by the actor per message and by the presence sweep.
    pub(super) topics: Mutex<HashMap<String, ChannelKey>>,
    /// Subscribed topics whose presence set may have members, with a generation bumped by
    /// every join/update seen: only these are swept, and one is dropped only when a sweep found
    /// it empty and no join came in meanwhile.
    pub(super) presence_topics: Mutex<HashMap<String, u64>>,
}

/// The Redis keys and topic of one channel.
pub(super) struct ChannelKeys {
    pub(super) tag: String,
    pub(super) stream: String,
    pub(super) history: String,
    pub(super) members: String,
    pub(super) expiries: String,
    pub(super) topic: String,
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
    pub(super) fn keys(&self, channel: &ChannelKey) -> ChannelKeys {
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

    pub(super) fn shard(&self, keys: &ChannelKeys) -> &Shard {
        &self.shards[ring_pick(&self.ring, &keys.tag)]
    }

    /// Runs the history script: the stream's epoch, offset, first offset held and entries.
    pub(super) async fn read_history(
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
