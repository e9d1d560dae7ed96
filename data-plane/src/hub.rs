//! The node's channel index: which local connections subscribe to which channel, and the
//! fan-out of broker events to them.
//!
//! The hub is the broker's [`BrokerEvents`] sink. Each publication is encoded once into a
//! `message` frame ([`encode_message`]), wrapped once in an `Arc<`[`Delivery`]`>`, and every
//! subscriber gets a clone of that pointer through a non-blocking push into its connection's
//! [`Outbox`](crate::outbox::Outbox). A full queue is that connection's problem only: it is
//! closed with 4008 (slow consumer) and the loop moves on.
//!
//! A new subscriber starts *buffering*: while its session replays history, live publications
//! are parked in the subscriber; [`Subscriber::go_live`] then flushes the parked ones newer than
//! the last replayed offset, under the same lock the fan-out takes, so nothing is lost,
//! duplicated or reordered between history and live delivery.
//!
//! Once live, each subscriber checks every publication against the last position it delivered:
//! a repeat is dropped, and a jump (a new epoch after the engine lost the stream, or an offset
//! gap the engine could not fill after a reconnect) is announced with a `discontinuity` frame
//! before the publication, so the client reloads that channel's state instead of silently
//! missing publications. The subscription stays live and continues from the new position.
//!
//! The broker subscription of a channel follows its local subscribers: subscribed when the
//! first arrives, unsubscribed after the last leaves. Those two async steps are serialized per
//! channel by an async gate so an unsubscribe can never overtake a later subscribe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aviary_broker::{
    Broker, BrokerError, BrokerEvents, ChannelKey, PresenceAction, PresenceMember, Publication, StreamPosition,
};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::outbound::{Delivery, Outbound};
use crate::outbox::PushError;
use crate::protocol::{CloseReason, Text, close, encode_discontinuity, encode_presence};
use crate::pusher::members::Members;
use crate::session_handle::SessionHandle;

/// One connection's subscription to one channel, as the fan-out sees it.
pub struct Subscriber {
    session: Arc<SessionHandle>,
    /// Whether this subscription also receives presence events.
    presence: bool,
    /// False while the session replays history; deliveries are parked in `parked` meanwhile.
    live: AtomicBool,
    parked: Mutex<Vec<Outbound>>,
    /// The last publication delivered live (set by `go_live`): what the next one must follow.
    last: Mutex<Option<(Arc<str>, u64)>>,
    /// Most deliveries parked before the subscriber counts as a slow consumer.
    park_limit: usize,
    /// For a Pusher presence subscription: the users announced so far (Pusher announces users,
    /// not connections). Presence changes go through it instead of `presence` frames.
    members: Option<Mutex<Members>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("connection_id", &self.session.connection_id).finish_non_exhaustive()
    }
}

impl Subscriber {
    pub fn new(session: Arc<SessionHandle>, presence: bool, park_limit: usize) -> Self {
        Subscriber {
            session,
            presence,
            live: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            park_limit,
            members: None,
        }
    }

    /// A Pusher presence subscription: presence changes become `member_added`/`member_removed`
    /// per user once [`Subscriber::seed_members`] has sent the member list.
    pub fn with_members(session: Arc<SessionHandle>, members: Members, park_limit: usize) -> Self {
        Subscriber { members: Some(Mutex::new(members)), ..Subscriber::new(session, false, park_limit) }
    }

    /// Sends a Pusher presence subscription's member list (read after joining the fan-out),
    /// then the changes that arrived meanwhile. Under the book's lock, so a change arriving now
    /// is sent after them.
    pub fn seed_members(&self, members: &[PresenceMember]) {
        let Some(book) = &self.members else { return };
        let mut book = book.lock();
        for frame in book.seed(members) {
            self.push(Outbound::Frame(Text::from(frame)));
        }
    }

    fn slow_consumer(&self) {
        self.session.close(CloseReason::new(close::SLOW_CONSUMER, "slow consumer: outbound queue full"));
    }

    fn push(&self, item: Outbound) {
        match self.session.outbox.try_push(item) {
            Ok(()) => {}
            Err(PushError::Full) => self.slow_consumer(),
            // The session is gone and will unsubscribe shortly.
            Err(PushError::Closed) => {}
        }
    }

    /// Hands one delivery to the connection without ever waiting.
    fn offer(&self, item: Outbound) {
        if !self.live.load(Ordering::Acquire) {
            let mut parked = self.parked.lock();
            // Re-check under the lock: `go_live` may have flipped the flag meanwhile, and then
            // the parked items are already flushed and this one must go straight out.
            if !self.live.load(Ordering::Acquire) {
                if parked.len() >= self.park_limit {
                    drop(parked);
                    self.slow_consumer();
                } else {
                    parked.push(item);
                }
                return;
            }
        }
        if let Outbound::Message(delivery) = item {
            self.deliver_in_sequence(delivery, &mut self.last.lock());
        } else {
            self.push(item);
        }
    }

    /// Delivers a publication after `last`: drops it if already delivered, announces a
    /// `discontinuity` first if it does not directly follow `last`.
    fn deliver_in_sequence(&self, delivery: Arc<Delivery>, last: &mut Option<(Arc<str>, u64)>) {
        let Delivery { channel, epoch, offset, .. } = &*delivery;
        if let Some((last_epoch, last_offset)) = last.as_ref() {
            let same_epoch = Arc::ptr_eq(last_epoch, epoch) || **last_epoch == **epoch;
            if same_epoch && *offset <= *last_offset {
                return;
            }
            if !same_epoch || *offset != last_offset + 1 {
                let previous = StreamPosition { epoch: last_epoch.to_string(), offset: *last_offset };
                let position = StreamPosition { epoch: epoch.to_string(), offset: offset.saturating_sub(1) };
                tracing::debug!(channel = %channel, ?previous, ?position, "live delivery skipped publications");
                self.push(Outbound::position(
                    "discontinuity",
                    channel.clone(),
                    epoch.clone(),
                    position.offset,
                    encode_discontinuity(channel, &previous, &position),
                ));
            }
        }
        *last = Some((epoch.clone(), *offset));
        if delivery.exclude.as_deref().is_some_and(|x| *x == *self.session.socket_id) {
            // Its publisher asked that this connection not receive it; the position moved on.
            return;
        }
        self.push(Outbound::Message(delivery));
    }

    /// Ends the replay: flushes parked deliveries that come after `(epoch, offset)` (the last
    /// position the session delivered) and switches to direct delivery.
    pub fn go_live(&self, epoch: &str, offset: u64) {
        let mut parked = self.parked.lock();
        let mut last = self.last.lock();
        *last = Some((epoch.into(), offset));
        for item in parked.drain(..) {
            match item {
                Outbound::Message(delivery) => self.deliver_in_sequence(delivery, &mut last),
                other => self.push(other),
            }
        }
        self.live.store(true, Ordering::Release);
    }
}

/// The async part of a channel's state: whether the broker delivers it to this node.
#[derive(Debug, Default)]
struct Gate {
    broker_subscribed: bool,
    /// Set when the entry left the index; a subscriber that raced with the removal retries
    /// with a fresh entry.
    retired: bool,
}

#[derive(Debug, Default)]
struct ChannelEntry {
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    gate: tokio::sync::Mutex<Gate>,
    /// The channel's current epoch, shared by its deliveries. A broker that decodes each
    /// publication (Redis) hands every one its own copy of the epoch string; with one shared
    /// `Arc` the per-subscriber sequence check is a pointer compare instead of a string compare
    /// (3 % of a node's CPU under a 10,000-subscriber fan-out).
    epoch: Mutex<Option<Arc<str>>>,
}

impl ChannelEntry {
    /// `epoch` as this channel's shared `Arc`: the stored one when equal, else `epoch` (which
    /// becomes the stored one).
    fn shared_epoch(&self, epoch: &Arc<str>) -> Arc<str> {
        let mut current = self.epoch.lock();
        match &*current {
            Some(shared) if Arc::ptr_eq(shared, epoch) || **shared == **epoch => shared.clone(),
            _ => current.insert(epoch.clone()).clone(),
        }
    }
}

/// What the hub does with a node signal's bytes (see `crate::signals`).
type SignalSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Told when a channel's local subscriber count changed (webhooks turn the cluster-wide
/// count's zero crossings into `channel_occupied`/`channel_vacated`). Must not block.
pub trait OccupancyListener: Send + Sync + 'static {
    fn occupancy_changed(&self, key: &ChannelKey);
}

/// Channel -> local subscribers.
pub struct Hub {
    broker: Arc<dyn Broker>,
    channels: DashMap<ChannelKey, Arc<ChannelEntry>>,
    /// Receives publications on the reserved signals stream (empty app id) instead of fan-out.
    signals: std::sync::OnceLock<SignalSink>,
    occupancy: std::sync::OnceLock<Arc<dyn OccupancyListener>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("channels", &self.channels.len()).finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Hub {
            broker,
            channels: DashMap::new(),
            signals: std::sync::OnceLock::new(),
            occupancy: std::sync::OnceLock::new(),
        }
    }

    /// Hands publications of the node signals stream (`crate::signals`) to `sink`; set once.
    pub fn on_signal(&self, sink: impl Fn(&[u8]) + Send + Sync + 'static) {
        let _ = self.signals.set(Box::new(sink));
    }

    /// Registers the one listener told about subscriber count changes (set once).
    pub fn set_occupancy_listener(&self, listener: Arc<dyn OccupancyListener>) {
        let _ = self.occupancy.set(listener);
    }

    fn occupancy_changed(&self, key: &ChannelKey) {
        if let Some(listener) = self.occupancy.get() {
            listener.occupancy_changed(key);
        }
    }

    /// Local subscribers of `key` now.
    pub fn local_subscribers(&self, key: &ChannelKey) -> usize {
        self.channels.get(key).map_or(0, |e| e.subscribers.read().len())
    }

    /// Adds `subscriber` to `key` (buffering until [`Subscriber::go_live`]), subscribing this
    /// node to the channel at the broker first if it is the channel's first local subscriber.
    pub async fn subscribe(&self, key: &ChannelKey, subscriber: Arc<Subscriber>) -> Result<(), BrokerError> {
        loop {
            let entry = self.channels.entry(key.clone()).or_default().clone();
            let mut gate = entry.gate.lock().await;
            if gate.retired {
                continue;
            }
            if !gate.broker_subscribed {
                if let Err(e) = self.broker.subscribe(key).await {
                    // Don't leave an empty entry behind for a channel nobody could join.
                    if entry.subscribers.read().is_empty() {
                        gate.retired = true;
                        self.channels.remove_if(key, |_, e| Arc::ptr_eq(e, &entry));
                    }
                    return Err(e);
                }
                gate.broker_subscribed = true;
            }
            entry.subscribers.write().push(subscriber);
            self.occupancy_changed(key);
            return Ok(());
        }
    }

    /// Removes the connection's subscriber from `key`; unsubscribes the node at the broker when
    /// it was the last one.
    pub async fn unsubscribe(&self, key: &ChannelKey, connection_id: &str) {
        let Some(entry) = self.channels.get(key).map(|e| e.clone()) else { return };
        let mut gate = entry.gate.lock().await;
        let now_empty = {
            let mut subs = entry.subscribers.write();
            subs.retain(|s| &*s.session.connection_id != connection_id);
            subs.is_empty()
        };
        self.occupancy_changed(key);
        if !now_empty || gate.retired {
            return;
        }
        if gate.broker_subscribed {
            if let Err(e) = self.broker.unsubscribe(key).await {
                tracing::warn!(channel = ?key, error = %e, "broker unsubscribe failed");
            }
            gate.broker_subscribed = false;
        }
        // Retire under the gate, after the broker call: a subscriber waiting on this gate
        // sees `retired` and starts over with a new entry, whose broker subscribe then comes
        // strictly after this unsubscribe.
        gate.retired = true;
        self.channels.remove_if(key, |_, e| Arc::ptr_eq(e, &entry));
    }

    /// Active channels of `app_id` starting with `prefix`, with their local subscriber counts.
    pub fn channels(&self, app_id: &str, prefix: &str) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .channels
            .iter()
            .filter(|e| &*e.key().app_id == app_id && e.key().channel.starts_with(prefix))
            .map(|e| (e.key().channel.to_string(), e.value().subscribers.read().len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }

    /// Every app's channels with their local subscriber counts, each app's sorted by channel.
    pub fn snapshot(&self) -> HashMap<Arc<str>, Vec<(Arc<str>, u64)>> {
        let mut apps: HashMap<Arc<str>, Vec<(Arc<str>, u64)>> = HashMap::new();
        for e in self.channels.iter() {
            let n = e.value().subscribers.read().len() as u64;
            if n > 0 {
                apps.entry(e.key().app_id.clone()).or_default().push((e.key().channel.clone(), n));
            }
        }
        for channels in apps.values_mut() {
            channels.sort_unstable();
        }
        apps
    }

    /// Channels with at least one local subscriber, across apps.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn entry(&self, key: &ChannelKey) -> Option<Arc<ChannelEntry>> {
        // Clone the Arc so the DashMap shard lock is released before fanning out.
        self.channels.get(key).map(|e| e.clone())
    }
}

impl BrokerEvents for Hub {
    fn on_publication(&self, key: &ChannelKey, publication: Arc<Publication>) {
        if key.app_id.is_empty() {
            // Only the node signals stream has no app.
            if let Some(sink) = self.signals.get() {
                sink(&publication.data);
            }
            return;
        }
        let Some(entry) = self.entry(key) else { return };
        let subscribers = entry.subscribers.read();
        if subscribers.is_empty() {
            return;
        }
        // One span for the whole fan-out (`debug`: free unless traces are exported); in the
        // publishing task with the in-process broker, so it continues the publish's trace.
        let _span = tracing::debug_span!(
            "fan_out",
            app_id = &*key.app_id,
            channel = &*key.channel,
            offset = publication.offset,
            subscribers = subscribers.len(),
        )
        .entered();
        let delivery = Delivery::new(key, &publication, entry.shared_epoch(&publication.epoch));
        for s in subscribers.iter() {
            s.offer(Outbound::Message(delivery.clone()));
        }
    }

    fn on_presence(&self, key: &ChannelKey, action: PresenceAction, member: &PresenceMember) {
        let Some(entry) = self.entry(key) else { return };
        let subscribers = entry.subscribers.read();
        let mut frame: Option<Text> = None;
        for s in subscribers.iter() {
            if let Some(book) = &s.members {
                if let Some(f) = book.lock().apply(action, member) {
                    s.push(Outbound::Frame(Text::from(f)));
                }
            } else if s.presence {
                let f = frame.get_or_insert_with(|| encode_presence(&key.channel, action, member));
                s.offer(Outbound::Frame(f.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aviary_broker::memory::MemoryBroker;
    use bytes::Bytes;

    use super::*;

    fn publication(epoch: &str, offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            offset,
            epoch: epoch.into(),
            data: Bytes::from_static(b"1"),
            client_id: None,
            ts: 0,
            event: None,
            exclude: None,
        })
    }

    /// The type and (epoch, offset) of what the hub queued for the connection.
    async fn queued(session: &SessionHandle) -> Vec<(String, String, u64)> {
        let mut items = std::collections::VecDeque::new();
        if !session.outbox.is_empty() {
            assert!(session.outbox.take(&mut items).await);
        }
        items
            .into_iter()
            .map(|item| match item {
                Outbound::Message(d) => ("message".to_owned(), d.epoch.to_string(), d.offset),
                Outbound::Position(p) => (p.event.to_owned(), p.epoch.to_string(), p.offset),
                Outbound::Frame(f) => (f.as_str().to_owned(), String::new(), 0),
            })
            .collect()
    }

    /// A hub on the memory broker with one connection subscribed to `app_a/room`, still
    /// replaying (its deliveries are parked until `go_live`).
    async fn subscribed() -> (Hub, ChannelKey, Arc<SessionHandle>, Arc<Subscriber>) {
        let hub = Hub::new(Arc::new(MemoryBroker::new()));
        let key = ChannelKey::new("app_a", "room");
        let session = SessionHandle::new(16);
        let subscriber = Arc::new(Subscriber::new(session.clone(), false, 16));
        hub.subscribe(&key, subscriber.clone()).await.unwrap();
        (hub, key, session, subscriber)
    }

    #[tokio::test]
    async fn live_delivery_drops_repeats_and_announces_gaps_and_new_epochs() {
        let (hub, key, session, subscriber) = subscribed().await;
        // Parked during the replay: 2 was replayed already, 3 follows it.
        hub.on_publication(&key, publication("e1", 2));
        hub.on_publication(&key, publication("e1", 3));
        subscriber.go_live("e1", 2);
        hub.on_publication(&key, publication("e1", 3)); // a repeat after an engine reconnect
        hub.on_publication(&key, publication("e1", 6)); // 4 and 5 could not be filled
        hub.on_publication(&key, publication("e2", 1)); // the stream was lost
        let m = |e: &str, o| ("message".to_owned(), e.to_owned(), o);
        let d = |e: &str, o| ("discontinuity".to_owned(), e.to_owned(), o);
        assert_eq!(queued(&session).await, vec![m("e1", 3), d("e1", 5), m("e1", 6), d("e2", 0), m("e2", 1)]);
    }

    #[tokio::test]
    async fn deliveries_of_one_epoch_share_one_epoch_string() {
        let (hub, key, session, subscriber) = subscribed().await;
        subscriber.go_live("e1", 0);
        // Each publication carries its own copy of the epoch, as a decoding broker's do.
        for (epoch, offset) in [("e1", 1), ("e1", 2), ("e2", 1), ("e2", 2)] {
            hub.on_publication(&key, publication(epoch, offset));
        }
        let mut items = std::collections::VecDeque::new();
        assert!(session.outbox.take(&mut items).await);
        let epochs: Vec<Arc<str>> = items
            .into_iter()
            .filter_map(|item| match item {
                Outbound::Message(d) => Some(d.epoch.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(epochs.len(), 4);
        assert!(Arc::ptr_eq(&epochs[0], &epochs[1]), "same epoch, one string");
        assert!(Arc::ptr_eq(&epochs[2], &epochs[3]), "the new epoch becomes the shared one");
        assert_eq!((&*epochs[1], &*epochs[2]), ("e1", "e2"));
    }

    #[tokio::test]
    async fn an_excluded_socket_skips_the_publication_without_a_discontinuity() {
        let (hub, key, session, subscriber) = subscribed().await;
        let other = SessionHandle::new(16);
        let other_subscriber = Arc::new(Subscriber::new(other.clone(), false, 16));
        hub.subscribe(&key, other_subscriber.clone()).await.unwrap();
        subscriber.go_live("e1", 0);
        other_subscriber.go_live("e1", 0);
        let mut excluded = (*publication("e1", 1)).clone();
        excluded.exclude = Some(session.socket_id.clone());
        hub.on_publication(&key, Arc::new(excluded));
        hub.on_publication(&key, publication("e1", 2));
        let m = |o| ("message".to_owned(), "e1".to_owned(), o);
        assert_eq!(queued(&session).await, vec![m(2)], "left out of 1, and 2 follows without a gap");
        assert_eq!(queued(&other).await, vec![m(1), m(2)]);
    }

    #[test]
    fn discontinuity_frame_names_both_positions() {
        let frame = encode_discontinuity(
            "room",
            &StreamPosition { epoch: "e1".into(), offset: 6 },
            &StreamPosition { epoch: "e2".into(), offset: 0 },
        );
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "discontinuity", "channel": "room",
                "previous": {"epoch": "e1", "offset": 6}, "position": {"epoch": "e2", "offset": 0}})
        );
    }
}
