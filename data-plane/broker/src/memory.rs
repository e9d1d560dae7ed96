//! [`MemoryBroker`]: the in-process engine for `aviary dev` and single-node deployments.
//!
//! It is a product, not a test double: it keeps the whole [`Broker`] contract for one process.
//!
//! # Layout
//! Channels live in a fixed number of shards, each a `parking_lot::Mutex<HashMap<ChannelKey,
//! Channel>>`. A channel holds its stream (epoch, last offset, capped history ring, expiry),
//! its presence set, its idempotency keys and whether this node subscribed to it. Every
//! operation on a channel runs under its shard's lock and never across an `.await`, so the
//! operations on one channel are serialized. That lock is what makes publish atomic: the
//! offset is assigned, the publication appended to history and queued for [`BrokerEvents`]
//! before the lock is released, so no reader sees an offset whose publication is not in
//! history yet.
//!
//! # Events
//! The fan-out of a publication (the sink's [`BrokerEvents::on_publication`]) can take
//! milliseconds for a channel with thousands of local subscribers, so it runs *after* the
//! shard lock is released: under the lock the event is only appended to the channel's
//! [`EventQueue`]; the caller that found the queue idle becomes its drainer and delivers
//! events, oldest first, until the queue is empty. One drainer at a time per channel and a
//! queue filled in lock order keep the sink's view of a channel in offset order, while
//! publishes, subscribes and history reads on the other channels of the shard (and further
//! publishes on the same channel, which just append) proceed.
//!
//! # Expiry
//! A stream lives `history_ttl_s` after its latest publication (a stream that never had one,
//! created by [`Broker::position`] or [`Broker::history`], lives [`EMPTY_STREAM_TTL_S`]). An
//! expired stream is dropped; the next access creates a fresh one with a new random epoch and
//! offsets restarting at 1, so resuming clients are told `recovered: false`. Expiry is checked
//! lazily on every access; a background sweep task additionally visits every shard once per
//! [`SWEEP_INTERVAL`] to drop idle channels and to expire presence members nobody touches, so
//! their `leave` events fire without any further call. The sweep locks one shard at a time
//! and yields between shards, and it stops when the broker is dropped.
//!
//! # Bounds
//! History per channel is capped by `history_size`; idempotency keys per channel by
//! [`MAX_IDEMPOTENCY_KEYS`] (oldest forgotten first) and by [`IDEMPOTENCY_WINDOW_S`]; presence
//! by the caller's `max_members`. Channels with no stream, no members, no keys and no local
//! subscription are removed by the sweep.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;

use crate::{
    Broker, BrokerError, BrokerEvents, ChannelKey, EMPTY_STREAM_TTL_S, HistoryPage, IDEMPOTENCY_WINDOW_S,
    PresenceAction, PresenceMember, Publication, PublishRequest, PublishResult, StreamPosition,
};

/// Number of lock shards; a power of two well above the core count keeps contention low.
const SHARDS: usize = 64;

/// How often the background sweep visits every shard.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Idempotency keys remembered per channel; beyond this the oldest are forgotten early so a
/// flood of unique keys cannot grow memory without bound.
pub const MAX_IDEMPOTENCY_KEYS: usize = 65_536;

/// The in-process [`Broker`]. Create it inside a Tokio runtime so its sweep task can start;
/// outside one it still works, with expiry checked lazily only (no leave events for members
/// that nobody touches until the channel is accessed again).
pub struct MemoryBroker {
    inner: Arc<Inner>,
    sweeper: Option<tokio::task::AbortHandle>,
}

struct Inner {
    shards: Box<[Mutex<HashMap<ChannelKey, Channel>>]>,
    hasher: RandomState,
    events: OnceLock<Arc<dyn BrokerEvents>>,
}

#[derive(Default)]
struct Channel {
    /// Whether this node's hub asked for events on this channel.
    subscribed: bool,
    /// `None` until first needed and after expiry.
    stream: Option<Stream>,
    presence: HashMap<String, Member>,
    idempotency: IdempotencyKeys,
    /// Events on their way to the sink (see "Events" above).
    events: Arc<EventQueue>,
}

struct Stream {
    epoch: Arc<str>,
    offset: u64,
    /// The latest publications with contiguous offsets, oldest first.
    history: VecDeque<Arc<Publication>>,
    expires_at: Instant,
}

struct Member {
    member: PresenceMember,
    expires_at: Instant,
}

/// Idempotency keys in insertion order, which is also expiry order (fixed window).
#[derive(Default)]
struct IdempotencyKeys {
    positions: HashMap<Arc<str>, StreamPosition>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            events: OnceLock::new(),
        });
        let sweeper = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle.spawn(sweep_loop(Arc::downgrade(&inner))).abort_handle()),
            Err(_) => {
                tracing::warn!("MemoryBroker created outside a Tokio runtime: no background expiry sweep");
                None
            }
        };
        MemoryBroker { inner, sweeper }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels: usize = self.inner.shards.iter().map(|s| s.lock().len()).sum();
        f.debug_struct("MemoryBroker").field("channels", &channels).finish()
    }
}

/// Visits every shard each [`SWEEP_INTERVAL`] until the broker is gone.
async fn sweep_loop(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for shard in 0..SHARDS {
            let Some(inner) = inner.upgrade() else { return };
            inner.sweep_shard(shard, Instant::now());
            drop(inner);
            // One shard per lock hold; let publishers in between.
            tokio::task::yield_now().await;
        }
    }
}

impl Inner {
    fn shard(&self, key: &ChannelKey) -> &Mutex<HashMap<ChannelKey, Channel>> {
        // SHARDS is a power of two, so the mask keeps the index in range.
        &self.shards[(self.hasher.hash_one(key) as usize) & (SHARDS - 1)]
    }

    /// Runs `f` on the channel under its shard lock, creating the channel if needed, then
    /// delivers the events it queued.
    fn with_channel<R>(&self, key: &ChannelKey, f: impl FnOnce(&mut Channel, &Sink) -> R) -> R {
        let (result, sink) = {
            let mut shard = self.shard(key).lock();
            // Cloning the key is two reference-count increments.
            let channel = shard.entry(key.clone()).or_default();
            let sink = Sink::for_channel(channel);
            (f(channel, &sink), sink)
        };
        self.drain(key, sink);
        result
    }

    /// Runs `f` on the channel if it exists; reads and removals never create channels.
    fn with_existing<R>(&self, key: &ChannelKey, f: impl FnOnce(&mut Channel, &Sink) -> R) -> Option<R> {
        let (result, sink) = {
            let mut shard = self.shard(key).lock();
            let channel = shard.get_mut(key)?;
            let sink = Sink::for_channel(channel);
            (f(channel, &sink), sink)
        };
        self.drain(key, sink);
        Some(result)
    }

    /// Delivers the channel's queued events if `sink` made this caller the drainer.
    fn drain(&self, key: &ChannelKey, sink: Sink) {
        let Some(queue) = sink.queue.filter(|_| sink.drainer.get()) else { return };
        let events = self.events.get();
        loop {
            let event = {
                let mut state = queue.state.lock();
                match state.pending.pop_front() {
                    Some(event) => event,
                    None => {
                        state.draining = false;
                        return;
                    }
                }
            };
            let Some(events) = events else { continue };
            match event {
                Event::Publication(p) => events.on_publication(key, p),
                Event::Presence(action, member) => events.on_presence(key, action, &member),
            }
        }
    }

    fn sweep_shard(&self, shard: usize, now: Instant) {
        let mut to_drain = Vec::new();
        {
            let mut channels = self.shards[shard].lock();
            channels.retain(|key, channel| {
                let sink = Sink::for_channel(channel);
                channel.expire(now, &sink);
                if sink.drainer.get() {
                    to_drain.push((key.clone(), sink));
                }
                channel.subscribed
                    || channel.stream.is_some()
                    || !channel.presence.is_empty()
                    || !channel.idempotency.positions.is_empty()
            });
        }
        for (key, sink) in to_drain {
            self.drain(&key, sink);
        }
    }
}

/// A channel's events waiting for the node's sink, in the order they happened.
#[derive(Default)]
struct EventQueue {
    state: Mutex<EventState>,
}

#[derive(Default)]
struct EventState {
    pending: VecDeque<Event>,
    /// Some caller is delivering `pending`; others only append.
    draining: bool,
}

enum Event {
    Publication(Arc<Publication>),
    Presence(PresenceAction, PresenceMember),
}

/// Collects a channel's events while its shard is locked: queued only while this node
/// subscribes to the channel, and delivered by [`Inner::drain`] after the lock is released.
struct Sink {
    queue: Option<Arc<EventQueue>>,
    /// Whether this operation found the queue idle and must deliver it.
    drainer: std::cell::Cell<bool>,
}

impl Sink {
    fn for_channel(channel: &Channel) -> Self {
        Sink { queue: channel.subscribed.then(|| Arc::clone(&channel.events)), drainer: std::cell::Cell::new(false) }
    }

    fn push(&self, event: Event) {
        let Some(queue) = &self.queue else { return };
        let mut state = queue.state.lock();
        state.pending.push_back(event);
        if !state.draining {
            state.draining = true;
            self.drainer.set(true);
        }
    }

    fn publication(&self, publication: &Arc<Publication>) {
        self.push(Event::Publication(Arc::clone(publication)));
    }

    fn presence(&self, action: PresenceAction, member: &PresenceMember) {
        self.push(Event::Presence(action, member.clone()));
    }
}

impl Channel {
    /// Drops what has expired: the stream, presence members (with `leave` events), old keys.
    fn expire(&mut self, now: Instant, sink: &Sink) {
        if self.stream.as_ref().is_some_and(|s| s.expires_at <= now) {
            self.stream = None;
        }
        self.expire_presence(now, sink);
        self.idempotency.prune(now);
    }

    /// The live stream, created with a fresh epoch when missing or expired.
    fn stream(&mut self, now: Instant) -> &mut Stream {
        if self.stream.as_ref().is_some_and(|s| s.expires_at <= now) {
            self.stream = None;
        }
        self.stream.get_or_insert_with(|| Stream {
            epoch: new_epoch().into(),
            offset: 0,
            history: VecDeque::new(),
            expires_at: now + Duration::from_secs(EMPTY_STREAM_TTL_S),
        })
    }

    fn expire_presence(&mut self, now: Instant, sink: &Sink) {
        if self.presence.values().any(|m| m.expires_at <= now) {
            self.presence.retain(|_, m| {
                let alive = m.expires_at > now;
                if !alive {
                    sink.presence(PresenceAction::Leave, &m.member);
                }
                alive
            });
        }
    }
}

impl Stream {
    fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.to_string(), offset: self.offset }
    }
}

impl IdempotencyKeys {
    fn prune(&mut self, now: Instant) {
        while let Some((expires_at, key)) = self.order.front() {
            if *expires_at > now && self.order.len() <= MAX_IDEMPOTENCY_KEYS {
                break;
            }
            self.positions.remove(key);
            self.order.pop_front();
        }
    }

    fn insert(&mut self, now: Instant, key: &str, position: StreamPosition) {
        let key: Arc<str> = key.into();
        self.positions.insert(Arc::clone(&key), position);
        self.order.push_back((now + Duration::from_secs(IDEMPOTENCY_WINDOW_S), key));
        self.prune(now);
    }
}

/// A random epoch: 12 alphanumeric characters (~71 bits), so a new stream never reuses one.
pub(crate) fn new_epoch() -> String {
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(12).map(char::from).collect()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `history_ttl_s` as a duration; 0 is treated as 1 s so a stream always expires eventually
/// and is never dropped before its publish returns.
fn history_ttl(ttl_s: u32) -> Duration {
    Duration::from_secs(u64::from(ttl_s.max(1)))
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        if self.inner.events.set(events).is_err() {
            tracing::warn!("MemoryBroker::set_events called more than once; keeping the first sink");
        }
    }

    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.with_channel(channel, |ch, _| ch.subscribed = true);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError> {
        self.inner.with_existing(channel, |ch, _| ch.subscribed = false);
        Ok(())
    }

    async fn publish(&self, channel: &ChannelKey, request: PublishRequest) -> Result<PublishResult, BrokerError> {
        let now = Instant::now();
        let PublishRequest { data, client_id, event, exclude, idempotency_key, history_size, history_ttl_s } = request;
        let result = self.inner.with_channel(channel, |ch, sink| {
            ch.idempotency.prune(now);
            if let Some(key) = idempotency_key.as_deref()
                && let Some(earlier) = ch.idempotency.positions.get(key)
            {
                return PublishResult { position: earlier.clone(), duplicate: true };
            }
            let stream = ch.stream(now);
            stream.offset += 1;
            stream.expires_at = now + history_ttl(history_ttl_s);
            let publication = Arc::new(Publication {
                offset: stream.offset,
                epoch: Arc::clone(&stream.epoch),
                data,
                client_id,
                ts: now_ms(),
                event,
                exclude,
            });
            let keep = history_size as usize;
            if keep == 0 {
                stream.history.clear();
            } else {
                while stream.history.len() >= keep {
                    stream.history.pop_front();
                }
                stream.history.push_back(Arc::clone(&publication));
            }
            let position = stream.position();
            if let Some(key) = idempotency_key.as_deref() {
                ch.idempotency.insert(now, key, position.clone());
            }
            sink.publication(&publication);
            PublishResult { position, duplicate: false }
        });
        Ok(result)
    }

    async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let now = Instant::now();
        let page = self.inner.with_channel(channel, |ch, _| {
            let stream = ch.stream(now);
            let position = stream.position();
            let history = &stream.history;
            let (publications, recovered) = match since {
                None => {
                    let skip = history.len().saturating_sub(limit);
                    (history.iter().skip(skip).map(|p| Publication::clone(p)).collect(), true)
                }
                // Offsets of another epoch say nothing about this stream.
                Some(since) if since.epoch != *stream.epoch => (Vec::new(), false),
                // Nothing after `since`; a client ahead of the stream cannot continue either.
                Some(since) if since.offset >= stream.offset => (Vec::new(), since.offset == stream.offset),
                Some(since) => {
                    // History offsets are contiguous, so the first wanted one is found by index.
                    let first_held = history.front().map_or(stream.offset + 1, |p| p.offset);
                    let recovered = first_held <= since.offset + 1;
                    let skip = usize::try_from((since.offset + 1).saturating_sub(first_held)).unwrap_or(usize::MAX);
                    (history.iter().skip(skip).take(limit).map(|p| Publication::clone(p)).collect(), recovered)
                }
            };
            HistoryPage { publications, position, recovered }
        });
        Ok(page)
    }

    async fn position(&self, channel: &ChannelKey) -> Result<StreamPosition, BrokerError> {
        let now = Instant::now();
        Ok(self.inner.with_channel(channel, |ch, _| ch.stream(now).position()))
    }

    async fn presence_join(
        &self,
        channel: &ChannelKey,
        member: PresenceMember,
        ttl_s: u32,
        max_members: u32,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        let expires_at = now + Duration::from_secs(u64::from(ttl_s.max(1)));
        let mut member = member;
        if member.data.as_ref().is_some_and(serde_json::Value::is_null) {
            // Same as every engine that stores members as JSON: `null` data is no data.
            member.data = None;
        }
        self.inner.with_channel(channel, |ch, sink| {
            ch.expire_presence(now, sink);
            if let Some(existing) = ch.presence.get_mut(&member.connection_id) {
                existing.expires_at = expires_at;
                if existing.member != member {
                    existing.member = member;
                    sink.presence(PresenceAction::Update, &existing.member);
                }
                return Ok(());
            }
            if ch.presence.len() >= max_members as usize {
                return Err(BrokerError::PresenceFull);
            }
            sink.presence(PresenceAction::Join, &member);
            ch.presence.insert(member.connection_id.clone(), Member { member, expires_at });
            Ok(())
        })
    }

    async fn presence_leave(&self, channel: &ChannelKey, connection_id: &str) -> Result<(), BrokerError> {
        let now = Instant::now();
        self.inner.with_existing(channel, |ch, sink| {
            ch.expire_presence(now, sink);
            if let Some(gone) = ch.presence.remove(connection_id) {
                sink.presence(PresenceAction::Leave, &gone.member);
            }
        });
        Ok(())
    }

    async fn presence_touch(
        &self,
        channel: &ChannelKey,
        connection_ids: &[String],
        ttl_s: u32,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        let expires_at = now + Duration::from_secs(u64::from(ttl_s.max(1)));
        self.inner.with_existing(channel, |ch, sink| {
            // Expire first: a member whose TTL already passed has left and is not revived.
            ch.expire_presence(now, sink);
            for id in connection_ids {
                if let Some(member) = ch.presence.get_mut(id) {
                    member.expires_at = expires_at;
                }
            }
        });
        Ok(())
    }

    async fn presence(&self, channel: &ChannelKey) -> Result<Vec<PresenceMember>, BrokerError> {
        let now = Instant::now();
        let members = self.inner.with_existing(channel, |ch, sink| {
            ch.expire_presence(now, sink);
            ch.presence.values().map(|m| m.member.clone()).collect()
        });
        Ok(members.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ttl_s: u32) -> PublishRequest {
        PublishRequest {
            data: bytes::Bytes::from_static(b"{}"),
            client_id: None,
            event: None,
            exclude: None,
            idempotency_key: None,
            history_size: 10,
            history_ttl_s: ttl_s,
        }
    }

    fn channel_count(broker: &MemoryBroker) -> usize {
        broker.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    #[tokio::test]
    async fn sweep_removes_idle_channels_but_keeps_subscribed_ones() {
        let broker = MemoryBroker::new();
        let idle = ChannelKey::new("app", "idle");
        let watched = ChannelKey::new("app", "watched");
        broker.publish(&idle, request(1)).await.expect("publish");
        broker.publish(&watched, request(1)).await.expect("publish");
        broker.subscribe(&watched).await.expect("subscribe");
        assert_eq!(channel_count(&broker), 2);

        let later = Instant::now() + Duration::from_secs(2);
        for shard in 0..SHARDS {
            broker.inner.sweep_shard(shard, later);
        }
        assert_eq!(channel_count(&broker), 1, "only the subscribed channel is kept");
        broker.unsubscribe(&watched).await.expect("unsubscribe");
        for shard in 0..SHARDS {
            broker.inner.sweep_shard(shard, later);
        }
        assert_eq!(channel_count(&broker), 0);
    }

    #[tokio::test]
    async fn sweep_task_stops_when_the_broker_is_dropped() {
        let broker = MemoryBroker::new();
        let sweeper = broker.sweeper.clone().expect("created inside a runtime");
        let inner = Arc::downgrade(&broker.inner);
        drop(broker);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sweeper.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("sweep task ends");
        assert!(inner.upgrade().is_none(), "nothing keeps the channels alive");
    }

    #[test]
    fn idempotency_keys_are_bounded_in_count_and_time() {
        let now = Instant::now();
        let mut keys = IdempotencyKeys::default();
        let position = StreamPosition { epoch: "e".into(), offset: 1 };
        for i in 0..=MAX_IDEMPOTENCY_KEYS {
            keys.insert(now, &i.to_string(), position.clone());
        }
        assert_eq!(keys.positions.len(), MAX_IDEMPOTENCY_KEYS);
        assert!(!keys.positions.contains_key("0"), "the oldest key is forgotten first");
        assert!(keys.positions.contains_key("1"));
        keys.prune(now + Duration::from_secs(IDEMPOTENCY_WINDOW_S));
        assert!(keys.positions.is_empty() && keys.order.is_empty(), "keys expire after the window");
    }

    #[test]
    fn works_without_a_runtime_using_lazy_expiry() {
        let broker = MemoryBroker::new();
        assert!(broker.sweeper.is_none());
    }
}
