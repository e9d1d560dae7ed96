//! What a connection's outbound queue carries: a reply or presence frame, a frame that moves a
//! channel's position (SSE ids), or a publication's shared [`Delivery`]. A leaf module: the
//! hub produces these, the outbox queues them, the transports write them, and none of those
//! needs the others to name them.

use std::sync::{Arc, OnceLock};

use aviary_broker::{ChannelKey, Publication};
use bytes::Bytes;

use crate::protocol::{Text, encode_message};

/// An item of a connection's outbound queue: a pointer and a tag, so a queue slot is small
/// and handing a publication to a subscriber is one reference-count increment.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame for this connection only (a reply) or a presence event.
    Frame(Text),
    /// A frame that also tells the transport a channel's position (SSE `subscribed` and
    /// `discontinuity` events, named by `event`, so resume ids stay in step with what was
    /// actually written).
    Position(Box<Position>),
    /// A publication's `message` frame, shared by every subscriber.
    Message(Arc<Delivery>),
}

/// A publication as the transports write it: built once per publication per node.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// When the broker accepted it (Unix ms), for the publish-to-deliver histogram.
    pub ts: i64,
    /// The socket id of the one connection that must not receive it (Pusher's `socket_id`
    /// exclusion); that subscriber's position still moves past it.
    pub exclude: Option<Arc<str>>,
    /// The encoded `message` frame.
    pub frame: Text,
    /// What the Pusher event frame is made of (shared handles, no copies).
    pusher_parts: PusherParts,
    /// The Pusher event frame, encoded once per node by the first Pusher subscriber to need
    /// it ([`Delivery::pusher_frame`]).
    pusher: OnceLock<Text>,
}

#[derive(Debug)]
struct PusherParts {
    data: Bytes,
    event: Option<Arc<str>>,
    client_id: Option<Arc<str>>,
}

impl Delivery {
    /// The delivery of `p`, whose epoch is `epoch` (the channel's shared copy of `p.epoch`).
    pub fn new(key: &ChannelKey, p: &Publication, epoch: Arc<str>) -> Arc<Self> {
        debug_assert_eq!(*epoch, *p.epoch);
        Arc::new(Delivery {
            channel: key.channel.clone(),
            epoch,
            offset: p.offset,
            ts: p.ts,
            exclude: p.exclude.clone(),
            frame: encode_message(&key.channel, p),
            pusher_parts: PusherParts { data: p.data.clone(), event: p.event.clone(), client_id: p.client_id.clone() },
            pusher: OnceLock::new(),
        })
    }

    /// The publication as a Pusher channel event (`crate::pusher::frames::publication`).
    pub fn pusher_frame(&self) -> &Text {
        self.pusher.get_or_init(|| {
            let PusherParts { data, event, client_id } = &self.pusher_parts;
            Text::from(crate::pusher::frames::publication(&self.channel, event.as_deref(), data, client_id.as_deref()))
        })
    }
}

/// A frame that moves a channel's position (see [`Outbound::Position`]).
#[derive(Debug, Clone)]
pub struct Position {
    pub event: &'static str,
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    pub frame: Text,
}

impl Outbound {
    pub fn position(event: &'static str, channel: Arc<str>, epoch: Arc<str>, offset: u64, frame: Text) -> Self {
        Outbound::Position(Box::new(Position { event, channel, epoch, offset, frame }))
    }
}
