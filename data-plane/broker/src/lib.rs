//! The engine between data-plane nodes: publication fan-out, history and presence.
//!
//! [`Broker`] is the contract every engine keeps; its doc comments are the spec and
//! [`contract`] is the one test suite every implementation passes (the in-process
//! [`memory::MemoryBroker`] for `aviary dev`, [`redis::RedisBroker`] for clusters). Beside the
//! engine, Redis also holds cluster-wide quota counters ([`redis_quotas`]) and per-node channel
//! subscriber counts for listings ([`channels`]) and the webhook ledger ([`webhooks`]:
//! cluster-wide occupancy and membership transitions and the durable event queue).
//!
//! # Contract
//! - **Streams.** Each channel (keyed by [`ChannelKey`], so two apps never share one) has a
//!   stream identified by an `epoch` string. Within an epoch, offsets start at 1 and are strictly
//!   increasing and gap-free: the n-th accepted publication gets offset n.
//! - **Atomic publish.** Assigning the offset, appending to history (when `history_size > 0`)
//!   and handing the publication to every node's [`BrokerEvents`] is one atomic step per
//!   channel: no reader can see an offset before its publication is in history, and events for
//!   one channel reach a node in offset order.
//! - **Lost streams.** When a channel's stream is lost (history TTL expired, engine restarted or
//!   flushed), the channel gets a new epoch and offsets start again. A client resuming with the
//!   old epoch is told `recovered: false` instead of silently missing publications.
//! - **Idempotency.** A publish carrying an idempotency key seen on the same channel within
//!   [`IDEMPOTENCY_WINDOW_S`] returns the earlier [`StreamPosition`] and publishes nothing.
//! - **Presence.** Members are keyed by connection id. Joining again updates the member's data.
//!   Members carry a TTL that the owning node refreshes; a node that dies stops refreshing, and
//!   its members expire (with leave events) within the TTL.
//! - **Failure.** An engine that cannot reach its backing store returns
//!   [`BrokerError::Unavailable`]; nothing it reported as published is lost while it stays up.

pub mod channels;
pub mod contract;
pub mod memory;
pub mod redis;
pub mod redis_quotas;
pub mod webhooks;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Seconds an idempotency key is remembered per channel.
pub const IDEMPOTENCY_WINDOW_S: u64 = 300;

/// Seconds a stream that never had a publication (created by [`Broker::position`] or
/// [`Broker::history`]) is kept before it may be replaced by one with a new epoch.
pub const EMPTY_STREAM_TTL_S: u64 = 3600;

/// A channel as the engine sees it: an app's channel. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub app_id: Arc<str>,
    pub channel: Arc<str>,
}

impl ChannelKey {
    pub fn new(app_id: &str, channel: &str) -> Self {
        ChannelKey { app_id: app_id.into(), channel: channel.into() }
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app_id, self.channel)
    }
}

/// Where a channel's stream is: the epoch and the offset of its latest publication (0 if none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

/// A publication as stored and fanned out.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub offset: u64,
    pub epoch: Arc<str>,
    /// The message payload: one JSON value, already validated, as raw bytes.
    pub data: Bytes,
    /// The publishing client, `None` for backend (REST) publishes.
    pub client_id: Option<Arc<str>>,
    /// Milliseconds since the Unix epoch when the broker accepted it.
    pub ts: i64,
    /// The event name its publisher gave (Pusher's `event`); `None` for plain Aviary publishes.
    pub event: Option<Arc<str>>,
    /// A connection's socket id that must not receive it live (Pusher's `socket_id`
    /// exclusion: the publisher's own connection). Kept with it like `event`.
    pub exclude: Option<Arc<str>>,
}

/// What to publish and how the channel's history is kept.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub data: Bytes,
    pub client_id: Option<Arc<str>>,
    /// Stored and delivered with the publication ([`Publication::event`]).
    pub event: Option<Arc<str>>,
    /// Stored and delivered with the publication ([`Publication::exclude`]).
    pub exclude: Option<Arc<str>>,
    pub idempotency_key: Option<String>,
    /// Publications kept in history; 0 keeps none (offsets still advance).
    pub history_size: u32,
    /// Lifetime of the stream (offset, epoch and history) after its latest publication, in
    /// seconds; when it passes, the stream is lost and the next one has a new epoch. 0 counts as 1.
    pub history_ttl_s: u32,
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    pub position: StreamPosition,
    /// True when the idempotency key matched an earlier publish and nothing new was published.
    pub duplicate: bool,
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Publications after `since` (or the latest `limit` without `since`), oldest first.
    pub publications: Vec<Publication>,
    /// The stream's current position.
    pub position: StreamPosition,
    /// With `since`: whether every publication after it was still in history *and* the epoch
    /// matched, i.e. the caller can continue without a gap. Always true without `since`.
    pub recovered: bool,
}

/// One member of a channel's presence set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceMember {
    pub client_id: String,
    pub connection_id: String,
    /// The member's data; JSON `null` is the same as none (engines store `None` for it).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// A presence change, fanned out to every node like a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceAction {
    Join,
    Leave,
    Update,
}

/// Errors an engine reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The backing store is unreachable; the operation did not happen and may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The channel's presence set is full.
    #[error("presence set is full")]
    PresenceFull,
    #[error("broker error: {0}")]
    Internal(String),
}

/// Receives what the engine fans out to this node. Implemented by the hub.
///
/// Calls must not block: implementations hand work to bounded queues and return. Calls for one
/// channel arrive in offset order.
pub trait BrokerEvents: Send + Sync + 'static {
    fn on_publication(&self, channel: &ChannelKey, publication: Arc<Publication>);
    fn on_presence(&self, channel: &ChannelKey, action: PresenceAction, member: &PresenceMember);
}

/// The engine contract; see the module docs.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Registers the node's event sink. Called once, before any `subscribe`.
    fn set_events(&self, events: Arc<dyn BrokerEvents>);

    /// Starts delivering `channel`'s publications and presence events to this node's
    /// [`BrokerEvents`]. Called when the first local subscriber arrives; idempotent.
    ///
    /// Race-free with reads: once this returns, every publication with an offset greater than
    /// a [`Broker::position`] or [`Broker::history`] read made afterwards reaches the sink. The
    /// sink may also get publications at or below that position (and, after an engine
    /// reconnect, a jump in offsets or a new epoch where history could not fill the gap); the
    /// hub drops what it already delivered by offset and treats a jump or an epoch change
    /// like a resume with `recovered: false`.
    async fn subscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Stops delivery for `channel` to this node. Called after the last local subscriber left.
    async fn unsubscribe(&self, channel: &ChannelKey) -> Result<(), BrokerError>;

    /// Publishes atomically: offset, history append, fan-out, idempotency (see module docs).
    async fn publish(&self, channel: &ChannelKey, request: PublishRequest) -> Result<PublishResult, BrokerError>;

    /// Reads history. With `since`, returns publications with offset > `since.offset` in the
    /// same epoch, at most `limit`, oldest first; `recovered` says whether that is gap-free.
    /// Without `since`, returns the latest `limit` publications, oldest first.
    async fn history(
        &self,
        channel: &ChannelKey,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError>;

    /// The channel's current stream position (creating the stream, and its epoch, if needed).
    async fn position(&self, channel: &ChannelKey) -> Result<StreamPosition, BrokerError>;

    /// Adds or updates a presence member (keyed by connection id) with a TTL in seconds, and
    /// fans out `join` (new member) or `update` (existing member, changed data). Refused with
    /// [`BrokerError::PresenceFull`] when a new member would exceed `max_members`.
    async fn presence_join(
        &self,
        channel: &ChannelKey,
        member: PresenceMember,
        ttl_s: u32,
        max_members: u32,
    ) -> Result<(), BrokerError>;

    /// Removes a member and fans out `leave` if it was present.
    async fn presence_leave(&self, channel: &ChannelKey, connection_id: &str) -> Result<(), BrokerError>;

    /// Extends the TTL of members this node owns (called by the node's heartbeat).
    async fn presence_touch(
        &self,
        channel: &ChannelKey,
        connection_ids: &[String],
        ttl_s: u32,
    ) -> Result<(), BrokerError>;

    /// Current members, expired ones excluded.
    async fn presence(&self, channel: &ChannelKey) -> Result<Vec<PresenceMember>, BrokerError>;
}
