//! A small realtime client speaking the WebSocket protocol of `docs/protocol.md`: connect with a
//! token, subscribe (optionally resuming `since` a position) and receive messages as a `Stream`,
//! publish, presence, history, refresh, ping. Used by backends, tests and load generators.
//!
//! One background task owns the socket: it writes commands in the order they are made, matches
//! replies to requests by `id`, and routes pushed `message`/`presence` frames to the
//! [`Subscription`] of their channel. Each subscription has a bounded queue; when the application
//! stops reading one, the task waits for it (and stops reading the socket), so a slow reader is
//! pushed back to the server, which closes the connection with 4008 rather than letting memory
//! grow. Read your subscriptions.
//!
//! A connection from which nothing (not even the server's WebSocket ping) arrives for two
//! heartbeat intervals is treated as dead and closed. It does not reconnect: on [`Error::Closed`] make a new [`Connection`] and subscribe with the
//! last [`StreamPosition`] you processed (see `Message::position`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::error::{Error, Result};
use crate::types::{History, PresenceMember, StreamPosition};

/// How many pushed frames a subscription buffers before the connection stops reading.
const SUBSCRIPTION_QUEUE: usize = 1024;
/// How many commands may wait for the socket task.
const COMMAND_QUEUE: usize = 256;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The server's `connected` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Connected {
    /// The token's `sub`.
    pub client_id: String,
    /// This connection's id (as seen in presence).
    pub connection_id: String,
    /// The server pings this often; two intervals of silence mean a dead connection.
    pub heartbeat_s: u64,
    /// The token's expiry (Unix seconds): [`Connection::refresh`] before then.
    pub expires_at: i64,
}

/// A publication pushed to a subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// Its channel.
    pub channel: String,
    /// Its stream epoch.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
    /// The published JSON value.
    pub data: Value,
    /// The publishing client; `None` for backend (REST) publishes.
    #[serde(default)]
    pub client_id: Option<String>,
    /// When the engine accepted it (ms since the Unix epoch).
    pub ts: i64,
    /// The event name it was published under, when it has one (a Pusher client event or a
    /// Pusher HTTP API event).
    #[serde(default)]
    pub event: Option<String>,
}

impl Message {
    /// The position to resume after this message (`since`).
    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.clone(), offset: self.offset }
    }
}

/// What happened to a presence member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceAction {
    /// Entered.
    Join,
    /// Changed its data.
    Update,
    /// Left (or its connection closed).
    Leave,
}

/// A presence change, pushed to subscriptions made with `presence: true`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PresenceEvent {
    /// Its channel.
    pub channel: String,
    /// What happened.
    pub action: PresenceAction,
    /// Who.
    pub member: PresenceMember,
}

/// An item of a [`Subscription`] stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A publication.
    Message(Message),
    /// A presence change.
    Presence(PresenceEvent),
}

/// Options of [`Connection::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Resume after this position: every later publication is replayed first, in order.
    pub since: Option<StreamPosition>,
    /// Also receive presence events.
    pub presence: bool,
}

/// A channel subscription: a `Stream` of [`Event`]s that ends when the connection closes or the
/// channel is unsubscribed. Dropping it unsubscribes lazily: the connection sends `unsubscribe`
/// when the next event for the channel finds no reader.
#[derive(Debug)]
pub struct Subscription {
    /// The channel.
    pub channel: String,
    /// The channel's position when the subscription started (or the replay began).
    pub position: StreamPosition,
    /// With `since`: whether every publication after it will be replayed. `false` means history
    /// no longer reaches back that far: reload your state.
    pub recovered: bool,
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next message, skipping presence events; `None` once the subscription ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        while let Some(event) = self.events.recv().await {
            if let Event::Message(message) = event {
                return Some(message);
            }
        }
        None
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_recv(cx)
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code, when the server sent one.
    pub code: Option<u16>,
    /// Why.
    pub reason: String,
    /// Whether reconnecting (with backoff) makes sense without user action.
    pub reconnect: bool,
}

impl CloseInfo {
    fn to_error(&self) -> Error {
        Error::Closed { code: self.code, reason: self.reason.clone(), reconnect: self.reconnect }
    }
}

enum Pending {
    Subscribe { channel: String, events: mpsc::Sender<Event> },
    Unsubscribe { channel: String },
    Other,
}

struct Request {
    id: u64,
    frame: Value,
    pending: Pending,
    reply: oneshot::Sender<Result<Value>>,
}

/// A connected realtime client. Dropping it closes the socket.
#[derive(Debug)]
pub struct Connection {
    connected: Connected,
    commands: mpsc::Sender<Request>,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<CloseInfo>>,
    request_timeout: Duration,
    task: TaskGuard,
}

/// Aborts the socket task when the connection is dropped, so a dropped connection never lingers.
#[derive(Debug)]
struct TaskGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `url` (`ws://HOST/v1/connect`, or `wss://` with the `rustls` feature),
    /// sends the token in the `connect` frame and waits for `connected`.
    pub async fn connect(url: &str, token: &str) -> Result<Connection> {
        let timeout = Duration::from_secs(10);
        let (mut socket, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Error::Timeout)??;
        socket.send(WsMessage::text(json!({"type": "connect", "token": token}).to_string())).await?;
        let connected =
            tokio::time::timeout(timeout, await_connected(&mut socket)).await.map_err(|_| Error::Timeout)??;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (closed_tx, closed) = watch::channel(None);
        // Two heartbeat intervals without any inbound frame (the server pings every `heartbeat_s`)
        // mean the connection is dead even if TCP has not noticed; the margin absorbs jitter.
        let silence = Duration::from_secs(connected.heartbeat_s.max(1) * 2 + 5);
        let task = tokio::spawn(run(socket, command_rx, closed_tx, silence));
        Ok(Connection {
            connected,
            commands,
            next_id: AtomicU64::new(1),
            closed,
            request_timeout: timeout,
            task: TaskGuard(Some(task)),
        })
    }

    /// What the server said when the connection was accepted.
    pub fn info(&self) -> &Connected {
        &self.connected
    }

    /// Changes how long a command waits for its reply (default 10 s).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Subscribes to `channel`; the reply arrives before any of the channel's messages.
    pub async fn subscribe(&self, channel: &str, options: SubscribeOptions) -> Result<Subscription> {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(since) = &options.since {
            frame["since"] = json!({"epoch": since.epoch, "offset": since.offset});
        }
        if options.presence {
            frame["presence"] = json!(true);
        }
        let (events_tx, events) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let ok = self.request(frame, Pending::Subscribe { channel: channel.to_owned(), events: events_tx }).await?;
        let position = decode(&ok["position"])?;
        let recovered = ok["recovered"].as_bool().unwrap_or(false);
        Ok(Subscription { channel: channel.to_owned(), position, recovered, events })
    }

    /// Unsubscribes; the channel's [`Subscription`] stream ends.
    pub async fn unsubscribe(&self, channel: &str) -> Result<()> {
        let frame = json!({"type": "unsubscribe", "channel": channel});
        self.request(frame, Pending::Unsubscribe { channel: channel.to_owned() }).await.map(drop)
    }

    /// Publishes `data` (needs the `publish` capability and a namespace with `client_publish`).
    pub async fn publish(&self, channel: &str, data: Value, idempotency_key: Option<&str>) -> Result<StreamPosition> {
        let mut frame = json!({"type": "publish", "channel": channel, "data": data});
        if let Some(key) = idempotency_key {
            frame["idempotency_key"] = json!(key);
        }
        decode(&self.request(frame, Pending::Other).await?)
    }

    /// Enters the channel's presence with `data` (or the token's `info` when `None`).
    pub async fn presence_enter(&self, channel: &str, data: Option<Value>) -> Result<()> {
        self.presence_command("presence.enter", channel, data).await
    }

    /// Updates this connection's presence data (entering if needed).
    pub async fn presence_update(&self, channel: &str, data: Value) -> Result<()> {
        self.presence_command("presence.update", channel, Some(data)).await
    }

    /// Leaves the channel's presence.
    pub async fn presence_leave(&self, channel: &str) -> Result<()> {
        self.presence_command("presence.leave", channel, None).await
    }

    /// The channel's presence members.
    pub async fn presence_get(&self, channel: &str) -> Result<Vec<PresenceMember>> {
        let ok = self.request(json!({"type": "presence.get", "channel": channel}), Pending::Other).await?;
        decode(&ok["members"])
    }

    /// The channel's history (needs the `history` capability).
    pub async fn history(&self, channel: &str, since: Option<&StreamPosition>, limit: Option<u32>) -> Result<History> {
        let mut frame = json!({"type": "history", "channel": channel});
        if let Some(since) = since {
            frame["since"] = json!({"epoch": since.epoch, "offset": since.offset});
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        decode(&self.request(frame, Pending::Other).await?)
    }

    /// Replaces the connection's token; returns the new `expires_at`.
    pub async fn refresh(&self, token: &str) -> Result<i64> {
        let ok = self.request(json!({"type": "refresh", "token": token}), Pending::Other).await?;
        ok["expires_at"].as_i64().ok_or_else(|| Error::Decode(format!("refresh reply without expires_at: {ok}")))
    }

    /// Round-trips a `ping` command.
    pub async fn ping(&self) -> Result<()> {
        self.request(json!({"type": "ping"}), Pending::Other).await.map(drop)
    }

    /// Closes the connection with a normal close handshake (the server removes this connection's
    /// presence at once) and waits for the socket task to finish. Dropping a `Connection` instead
    /// just drops the socket.
    pub async fn close(mut self) {
        // The task sees its command queue end only when this, the only sender, is gone.
        let (placeholder, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, placeholder));
        if let Some(task) = self.task.0.take() {
            let _ = tokio::time::timeout(self.request_timeout, task).await;
        }
    }

    /// Waits until the connection is closed and says why.
    pub async fn closed(&self) -> CloseInfo {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(info) => info.clone().unwrap_or_else(unknown_close),
            Err(_) => unknown_close(),
        }
    }

    async fn presence_command(&self, kind: &str, channel: &str, data: Option<Value>) -> Result<()> {
        let mut frame = json!({"type": kind, "channel": channel});
        if let Some(data) = data {
            frame["data"] = data;
        }
        self.request(frame, Pending::Other).await.map(drop)
    }

    async fn request(&self, mut frame: Value, pending: Pending) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame["id"] = json!(id);
        let (reply, rx) = oneshot::channel();
        let closed = || self.closed.borrow().clone().unwrap_or_else(unknown_close).to_error();
        if self.commands.send(Request { id, frame, pending, reply }).await.is_err() {
            return Err(closed());
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(closed()),
            Ok(Ok(result)) => result,
        }
    }
}

fn unknown_close() -> CloseInfo {
    CloseInfo { code: None, reason: "connection lost".to_owned(), reconnect: true }
}

fn decode<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::Decode(format!("{e}: {value}")))
}

async fn await_connected(socket: &mut Socket) -> Result<Connected> {
    let mut disconnect: Option<CloseInfo> = None;
    while let Some(message) = socket.next().await {
        match message? {
            WsMessage::Text(text) => {
                let frame: Value = serde_json::from_str(&text).map_err(|e| Error::Decode(e.to_string()))?;
                match frame["type"].as_str() {
                    Some("connected") => return decode(&frame),
                    Some("disconnect") => disconnect = Some(disconnect_info(&frame)),
                    _ => {}
                }
            }
            WsMessage::Close(close) => return Err(close_info(disconnect, close.as_ref()).to_error()),
            _ => {}
        }
    }
    Err(disconnect.unwrap_or_else(unknown_close).to_error())
}

fn disconnect_info(frame: &Value) -> CloseInfo {
    CloseInfo {
        code: frame["code"].as_u64().and_then(|c| u16::try_from(c).ok()),
        reason: frame["reason"].as_str().unwrap_or_default().to_owned(),
        reconnect: frame["reconnect"].as_bool().unwrap_or(false),
    }
}

fn close_info(disconnect: Option<CloseInfo>, close: Option<&CloseFrame>) -> CloseInfo {
    disconnect.unwrap_or_else(|| match close {
        Some(frame) => CloseInfo {
            code: Some(u16::from(frame.code)),
            reason: frame.reason.to_string(),
            reconnect: u16::from(frame.code) == 1001,
        },
        None => unknown_close(),
    })
}

/// The socket task: runs until the server closes, the socket fails, or every handle is dropped.
async fn run(
    mut socket: Socket,
    mut commands: mpsc::Receiver<Request>,
    closed: watch::Sender<Option<CloseInfo>>,
    silence: Duration,
) {
    let dead_after = tokio::time::sleep(silence);
    tokio::pin!(dead_after);
    let mut pending: HashMap<u64, (Pending, oneshot::Sender<Result<Value>>)> = HashMap::new();
    let mut subscriptions: HashMap<String, mpsc::Sender<Event>> = HashMap::new();
    let mut disconnect: Option<CloseInfo> = None;
    let info = loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(Request { id, frame, pending: kind, reply }) = command else {
                    let _ = socket.close(None).await;
                    break CloseInfo { code: Some(1000), reason: "closed by the client".to_owned(), reconnect: false };
                };
                if let Err(e) = socket.send(WsMessage::text(frame.to_string())).await {
                    let _ = reply.send(Err(e.into()));
                    break disconnect.take().unwrap_or_else(unknown_close);
                }
                pending.insert(id, (kind, reply));
            }
            () = &mut dead_after => {
                break CloseInfo {
                    code: None,
                    reason: format!("no frame from the server for {} s", silence.as_secs()),
                    reconnect: true,
                };
            }
            message = socket.next() => {
                dead_after.as_mut().reset(tokio::time::Instant::now() + silence);
                let text = match message {
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(WsMessage::Close(close))) => break close_info(disconnect.take(), close.as_ref()),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break disconnect.take().unwrap_or_else(unknown_close),
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                match frame["type"].as_str() {
                    Some("message") | Some("presence") => {
                        let Some(channel) = frame["channel"].as_str() else { continue };
                        let Some(events) = subscriptions.get(channel) else { continue };
                        let event = if frame["type"] == "message" {
                            decode(&frame).map(Event::Message)
                        } else {
                            decode(&frame).map(Event::Presence)
                        };
                        let Ok(event) = event else { continue };
                        if events.send(event).await.is_err() {
                            // The application dropped the Subscription: stop the server sending.
                            let channel = channel.to_owned();
                            subscriptions.remove(&channel);
                            let frame = json!({"type": "unsubscribe", "channel": channel});
                            let _ = socket.send(WsMessage::text(frame.to_string())).await;
                        }
                    }
                    Some("disconnect") => disconnect = Some(disconnect_info(&frame)),
                    Some(kind @ ("ok" | "error" | "pong")) => {
                        let Some((request, reply)) = frame["id"].as_u64().and_then(|id| pending.remove(&id)) else {
                            continue;
                        };
                        let result = if kind == "error" {
                            Err(Error::Realtime {
                                code: frame["code"].as_str().unwrap_or("unknown").to_owned(),
                                message: frame["message"].as_str().unwrap_or_default().to_owned(),
                            })
                        } else {
                            match request {
                                Pending::Subscribe { channel, events } => {
                                    subscriptions.insert(channel, events);
                                }
                                Pending::Unsubscribe { channel } => {
                                    subscriptions.remove(&channel);
                                }
                                Pending::Other => {}
                            }
                            Ok(frame)
                        };
                        let _ = reply.send(result);
                    }
                    _ => {}
                }
            }
        }
    };
    for (_, (_, reply)) in pending.drain() {
        let _ = reply.send(Err(info.to_error()));
    }
    let _ = closed.send(Some(info));
}
