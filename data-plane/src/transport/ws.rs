//! WebSocket transport (`GET /v1/connect`): frames in, queued frames out, pings, farewell.
//!
//! Each connection runs two tasks. The reader (this handler's task) feeds text frames to the
//! session, watches liveness, token expiry, drain and the close signal. The writer drains the
//! session's [`Outbox`](crate::outbox::Outbox) into the socket, a whole backlog per flush, and
//! sends pings; it never waits on the session, so a slow command (a long history replay) does
//! not stall deliveries. Every write must make progress within `write_timeout`; a client that
//! stopped reading is closed as a slow consumer (4008), as is one whose queue overflows. On
//! close, the writer drops what is still queued (the rest of a burst included) and sends the
//! `disconnect` frame and the close code, bounded by `close_timeout`: best effort, so a client
//! that never reads cannot hold the task.

use std::collections::VecDeque;
use std::sync::Arc;

use aviary_core::ClientAddr;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::http::header::ORIGIN;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until};
use tracing::Instrument;

use crate::admission::ConnectionTicket;
use crate::error::Error;
// Its rejection is a problem document like every other refusal (not axum's text/plain 400).
use crate::metrics::Burst;
use crate::outbound::Outbound;
use crate::protocol::{CloseReason, close};
use crate::rest::Query;
use crate::session::{Flow, Session};
use crate::session_handle::SessionHandle;
use crate::{DataPlane, NodeState};

/// Close code used when the peer went away first; no farewell is sent for it.
const PEER_GONE: u16 = 1000;

#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    /// The connection token, for clients that cannot send a `connect` frame first.
    token: Option<String>,
}

/// `GET /v1/connect`: upgrades to a WebSocket.
pub async fn upgrade(
    State(dp): State<DataPlane>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    ticket: Option<Extension<Arc<ConnectionTicket>>>,
    client: Option<Extension<ClientAddr>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    admit_upgrade(&dp, &headers, ws, move |inner, socket, origin| {
        serve(inner, socket, query.token, origin, ticket.map(|t| t.0), client.map(|c| c.0))
    })
}

/// The prelude every WebSocket front end (ours, Pusher's) runs before upgrading, in one order:
/// the request must be an upgrade (else a 400 problem), the node must not be draining (else
/// 503); then the socket gets the node's frame size limits and read buffer, and `serve` gets the
/// node state, the socket and the request's `Origin` (checked later against the app's list).
pub(crate) fn admit_upgrade<F, Fut>(
    dp: &DataPlane,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    serve: F,
) -> Response
where
    F: FnOnce(Arc<NodeState>, WebSocket, Option<String>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return Error::BadRequest(format!("this endpoint expects a WebSocket upgrade: {}", rejection.body_text()))
                .into_response();
        }
    };
    let inner = dp.inner().clone();
    if inner.is_draining() {
        return Error::Draining.into_response();
    }
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let max = inner.config.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(inner.config.ws_read_buffer_bytes)
        .on_upgrade(move |socket| serve(inner, socket, origin))
}

/// The connection's future. A plain function, not an `async fn`: an `async fn` keeps its
/// arguments in its state for as long as it runs, and this one runs as long as the
/// connection. So the socket is split and the session boxed *before* the long-lived future
/// is built, and what it carries is a few pointers.
fn serve(
    inner: Arc<NodeState>,
    socket: WebSocket,
    token: Option<String>,
    origin: Option<String>,
    ticket: Option<Arc<ConnectionTicket>>,
    client: Option<ClientAddr>,
) -> impl Future<Output = ()> + Send {
    let session = Box::new(Session::new(inner.clone(), "ws"));
    let span = tracing::info_span!(
        "connection",
        transport = "ws",
        connection_id = %session.handle.connection_id,
        node = %inner.config.node_id,
        client = client.map(tracing::field::display),
        tenant_id = tracing::field::Empty,
        app_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
    );
    let (sink, stream) = socket.split();
    run(inner, session, sink, stream, token, origin, ticket).instrument(span)
}

async fn run(
    inner: Arc<NodeState>,
    mut session: Box<Session>,
    sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    token: Option<String>,
    origin: Option<String>,
    mut ticket: Option<Arc<ConnectionTicket>>,
) {
    let handle = session.handle.clone();
    let writer = tokio::spawn(
        write_loop(
            sink,
            handle.clone(),
            inner.config.ws_heartbeat_interval,
            inner.config.write_timeout,
            inner.config.close_timeout,
        )
        .in_current_span(),
    );
    if let Some(token) = token {
        match Box::pin(session.authenticate(&token, origin.as_deref())).await {
            Ok(()) => {
                if let Some(frame) = session.connected_frame() {
                    Box::pin(session.send(Outbound::Frame(frame))).await;
                }
            }
            Err(reason) => {
                handle.close(reason);
            }
        }
    }
    read_loop(&inner, &mut session, &mut stream, origin.as_deref(), &mut ticket).await;
    // Whatever ended the loop, make sure the writer knows, then release everything.
    let server_initiated = !handle.close(CloseReason::new(PEER_GONE, "closed"));
    Box::pin(session.finish()).await;
    // The writer is bounded by close_timeout per write; this only waits for the farewell.
    let _ = writer.await;
    if server_initiated {
        // Complete the close handshake: wait (bounded) for the client's close reply, so the
        // TCP connection is not torn down under the farewell the client has yet to read.
        let _ =
            tokio::time::timeout(inner.config.close_timeout, async { while let Some(Ok(_)) = stream.next().await {} })
                .await;
    }
    tracing::debug!(reason = ?handle.close_reason(), "connection closed");
}

// The connection's tasks live as long as the connection, idle most of the time, and a task's
// state is as large as the largest future it ever awaits inline. The rarely running ones
// (commands, authentication, presence refresh, the farewell) are boxed at their await points
// so an idle connection does not carry their state.
async fn read_loop(
    inner: &NodeState,
    session: &mut Session,
    stream: &mut SplitStream<WebSocket>,
    origin: Option<&str>,
    ticket: &mut Option<Arc<ConnectionTicket>>,
) {
    let handle = session.handle.clone();
    // A peer that sends nothing (no frame, no pong) for two ping intervals is gone.
    let silence_limit = inner.config.ws_heartbeat_interval * 2;
    let mut last_seen = Instant::now();
    let connect_deadline = last_seen + inner.config.connect_timeout;
    // Presence refreshes follow the presence TTL, not the ping interval.
    let touch_every = inner.presence_touch_interval();
    let mut touch = interval_at(Instant::now() + touch_every, touch_every);
    touch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One timer for the three deadlines (silence, connect frame, token expiry), set to the
    // earliest. It is moved earlier at once when needed and re-armed lazily, when it fires
    // before the deadline it stood for (a frame arrived, the token was refreshed).
    let mut expiry: Option<(i64, Instant)> = None;
    let deadline = |expiry: Option<(i64, Instant)>, authenticated: bool, last_seen: Instant| {
        let mut next = last_seen + silence_limit;
        if !authenticated {
            next = next.min(connect_deadline);
        }
        if let Some((_, at)) = expiry {
            next = next.min(at);
        }
        next
    };
    let timer = sleep_until(deadline(None, false, last_seen));
    tokio::pin!(timer);
    // Built once, not per frame: each registers for a wake-up (a lock) when first polled.
    let closed = handle.closed();
    tokio::pin!(closed);
    let draining = inner.shutdown.cancelled();
    tokio::pin!(draining);
    loop {
        // Once authenticated, the socket no longer counts against the bounds on pending
        // connections (per address and per node).
        if session.is_authenticated()
            && let Some(ticket) = ticket.take()
        {
            ticket.authenticated();
        }
        let exp = session.expires_at();
        if exp != expiry.map(|(e, _)| e) {
            expiry = exp.map(|e| (e, super::expiry_instant(e)));
            let next = deadline(expiry, session.is_authenticated(), last_seen);
            if next < timer.deadline() {
                timer.as_mut().reset(next);
            }
        }
        let reason = tokio::select! {
            biased;
            _ = &mut closed => return,
            _ = &mut draining => CloseReason::new(close::GOING_AWAY, "node draining"),
            _ = &mut timer => {
                let now = Instant::now();
                if expiry.is_some_and(|(_, at)| now >= at) {
                    CloseReason::new(close::TOKEN_EXPIRED, "token expired")
                } else if !session.is_authenticated() && now >= connect_deadline {
                    CloseReason::new(close::INVALID_TOKEN, "no connect frame received in time")
                } else if now >= last_seen + silence_limit {
                    CloseReason::new(close::PROTOCOL_ERROR, "heartbeat timeout")
                } else {
                    timer.as_mut().reset(deadline(expiry, session.is_authenticated(), last_seen));
                    continue;
                }
            }
            _ = touch.tick() => {
                Box::pin(session.touch_presence()).await;
                continue;
            }
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    None => return,
                    Some(Err(e)) => match violation(&e) {
                        Some(reason) => reason,
                        None => {
                            tracing::debug!(error = %e, "websocket read failed");
                            return;
                        }
                    },
                    Some(Ok(Message::Text(text))) => {
                        if session.max_frame_bytes().is_some_and(|max| text.len() > max) {
                            CloseReason::new(close::TOO_BIG, "frame too big")
                        } else {
                            match Box::pin(session.handle_text(text.as_str(), origin)).await {
                                Flow::Continue => continue,
                                Flow::Close(reason) => reason,
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => match Box::pin(session.malformed_frame(None, "binary frames are not supported; send JSON text")).await {
                        Flow::Continue => continue,
                        Flow::Close(reason) => reason,
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => return,
                }
            }
        };
        handle.close(reason);
        return;
    }
}

/// The close for a read that failed because the client broke the rules (RFC 6455's codes: 1009
/// too big, 1007 invalid UTF-8, 1002 protocol violation); `None` when the transport failed
/// (reset, EOF), where nobody is left to tell.
fn violation(e: &axum::Error) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => return Some(CloseReason::new(close::TOO_BIG, "frame too big")),
            Some(tungstenite::Error::Utf8(_)) => {
                return Some(CloseReason::new(close::INVALID_PAYLOAD, "text frame is not valid UTF-8"));
            }
            // The peer vanished (no close handshake): nobody is left to tell.
            Some(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                | tungstenite::error::ProtocolError::ReceivedAfterClosing
                | tungstenite::error::ProtocolError::SendAfterClosing,
            )) => return None,
            Some(tungstenite::Error::Protocol(violation)) => {
                return Some(CloseReason::new(
                    close::WS_PROTOCOL_ERROR,
                    format!("WebSocket protocol error: {violation}"),
                ));
            }
            _ => {}
        }
        source = err.source();
    }
    None
}

/// The WebSocket message for a queued item; publications are added to `burst`.
fn to_message(item: Outbound, burst: &mut Burst) -> Message {
    match item {
        Outbound::Frame(frame) => Message::Text(frame),
        Outbound::Position(p) => Message::Text(p.frame),
        Outbound::Message(delivery) => {
            burst.add(delivery.frame.len(), delivery.ts);
            Message::Text(delivery.frame.clone())
        }
    }
}

/// Why a burst was not written completely.
enum WriteError {
    /// The socket failed (the peer is gone).
    Failed,
    /// One write made no progress for `write_timeout`: the client stopped reading.
    Stalled,
}

/// Runs one step of a burst (a frame into the socket's buffer, or a flush) within `limit`.
async fn step(
    limit: std::time::Duration,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), WriteError> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteError::Failed),
        Err(_) => Err(WriteError::Stalled),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    handle: Arc<SessionHandle>,
    ping_every: std::time::Duration,
    write_timeout: std::time::Duration,
    close_timeout: std::time::Duration,
) {
    let mut ping = interval(ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    let mut queued = VecDeque::new();
    // Built once: registering for the close wake-up on every pass would cost a lock each time.
    let closed = handle.closed();
    tokio::pin!(closed);
    loop {
        let ping_now = tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = ping.tick() => true,
            open = handle.outbox.take(&mut queued) => if open { false } else { break },
        };
        // Write everything that was queued as one burst and flush once: under fan-out load
        // this turns one syscall per frame into one per burst. Each step must make progress
        // within `write_timeout`, so a client that stopped reading cannot hold the task.
        let mut burst = Burst::default();
        let write = async {
            if ping_now {
                step(write_timeout, sink.feed(Message::Ping(Bytes::new()))).await?;
            }
            while let Some(item) = queued.pop_front() {
                step(write_timeout, sink.feed(to_message(item, &mut burst))).await?;
            }
            step(write_timeout, sink.flush()).await
        };
        let written = tokio::select! {
            biased;
            result = write => result,
            // Closing (a full queue, a revocation, drain) while a burst is being written: the
            // rest of the burst is dropped and the farewell goes next. The sink buffers whole
            // frames, so stopping between two steps never cuts one in half.
            _ = &mut closed => Ok(()),
        };
        queued.clear();
        if let Some(m) = handle.metrics() {
            m.delivered(&burst);
        }
        match written {
            Ok(()) => {}
            Err(WriteError::Failed) => return handle.outbox.close(),
            Err(WriteError::Stalled) => {
                handle.close(CloseReason::new(close::SLOW_CONSUMER, "slow consumer: the client stopped reading"));
            }
        }
        if handle.close_reason().is_some() {
            break;
        }
    }
    // Drop undelivered frames: a closing connection gets its farewell next, not its backlog.
    handle.outbox.close();
    let Some(reason) = handle.close_reason() else { return };
    if reason.code == PEER_GONE {
        // Completes the close handshake if the peer started it (tungstenite queued the reply).
        let _ = tokio::time::timeout(close_timeout, sink.close()).await;
        return;
    }
    let farewell = async {
        sink.send(Message::Text(reason.frame())).await?;
        sink.send(Message::Close(Some(CloseFrame { code: reason.code, reason: reason.reason.clone().into() }))).await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(close_timeout, Box::pin(farewell)).await;
}
