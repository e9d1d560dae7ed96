//! WebSocket transport (`GET /v1/connect`): frames in, queued frames out, pings, farewell.
//!
//! Each connection runs two tasks. The reader (this handler's task) feeds text frames to the
//! session, watches liveness, token expiry, drain and the close signal. The writer drains the
//! session's bounded queue into the socket and sends pings; it never waits on the session, so
//! a slow command (a long history replay) does not stall deliveries. On close, the writer
//! drops what is still queued and sends the `disconnect` frame and the close code, bounded by
//! `close_timeout` so a client that stopped reading cannot hold the task.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::ORIGIN;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until};
use tracing::Instrument;

use crate::error::Error;
use crate::hub::Outbound;
use crate::protocol::{CloseReason, close};
use crate::session::{Flow, Session, SessionHandle, closed};
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
    ws: WebSocketUpgrade,
) -> Response {
    let inner = dp.inner().clone();
    if inner.is_draining() {
        return Error::Draining.into_response();
    }
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let max = inner.config.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(inner.config.ws_read_buffer_bytes)
        .on_upgrade(move |socket| serve(inner, socket, query.token, origin))
}

async fn serve(inner: Arc<NodeState>, socket: WebSocket, token: Option<String>, origin: Option<String>) {
    let (session, rx) = Session::new(inner.clone(), "ws");
    let span = tracing::info_span!(
        "connection",
        transport = "ws",
        connection_id = %session.handle.connection_id,
        node = %inner.config.node_id,
        tenant_id = tracing::field::Empty,
        app_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
    );
    run(inner, session, rx, socket, token, origin).instrument(span).await;
}

async fn run(
    inner: Arc<NodeState>,
    mut session: Session,
    rx: mpsc::Receiver<Outbound>,
    socket: WebSocket,
    token: Option<String>,
    origin: Option<String>,
) {
    let (sink, mut stream) = socket.split();
    let handle = session.handle.clone();
    let writer = tokio::spawn(
        write_loop(sink, rx, handle.clone(), inner.config.ws_heartbeat_interval, inner.config.close_timeout)
            .in_current_span(),
    );
    if let Some(token) = token {
        match session.authenticate(&token, origin.as_deref()).await {
            Ok(()) => {
                if let Some(frame) = session.connected_frame() {
                    session.send(Outbound::Frame(frame)).await;
                }
            }
            Err(reason) => {
                handle.close(reason);
            }
        }
    }
    read_loop(&inner, &mut session, &mut stream, origin.as_deref()).await;
    // Whatever ended the loop, make sure the writer knows, then release everything.
    let server_initiated = !handle.close(CloseReason::new(PEER_GONE, "closed"));
    session.finish().await;
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

async fn read_loop(
    inner: &NodeState,
    session: &mut Session,
    stream: &mut SplitStream<WebSocket>,
    origin: Option<&str>,
) {
    let handle = session.handle.clone();
    let mut closing = handle.close_signal();
    // A peer that sends nothing (no frame, no pong) for two ping intervals is gone. The timer
    // is re-armed lazily, when it fires early, rather than on every frame.
    let silence_limit = inner.config.ws_heartbeat_interval * 2;
    let mut last_seen = Instant::now();
    let liveness = sleep_until(last_seen + silence_limit);
    tokio::pin!(liveness);
    // Presence refreshes follow the presence TTL, not the ping interval.
    let touch_every = inner.presence_touch_interval();
    let mut touch = interval_at(Instant::now() + touch_every, touch_every);
    touch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let connect_deadline = sleep_until(Instant::now() + inner.config.connect_timeout);
    tokio::pin!(connect_deadline);
    // Re-armed whenever the token changes (connect, refresh).
    let expiry = sleep_until(Instant::now() + inner.config.connect_timeout);
    tokio::pin!(expiry);
    let mut armed_exp: Option<i64> = None;
    loop {
        if session.expires_at() != armed_exp {
            armed_exp = session.expires_at();
            if let Some(exp) = armed_exp {
                expiry.as_mut().reset(super::expiry_instant(exp));
            }
        }
        let reason = tokio::select! {
            biased;
            _ = closed(&mut closing) => return,
            _ = inner.shutdown.cancelled() => CloseReason::new(close::GOING_AWAY, "node draining"),
            _ = &mut expiry, if armed_exp.is_some() => CloseReason::new(close::TOKEN_EXPIRED, "token expired"),
            _ = &mut connect_deadline, if !session.is_authenticated() => {
                CloseReason::new(close::INVALID_TOKEN, "no connect frame received in time")
            }
            _ = &mut liveness => {
                let deadline = last_seen + silence_limit;
                if Instant::now() >= deadline {
                    CloseReason::new(close::PROTOCOL_ERROR, "heartbeat timeout")
                } else {
                    liveness.as_mut().reset(deadline);
                    continue;
                }
            }
            _ = touch.tick() => {
                session.touch_presence().await;
                continue;
            }
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    None => return,
                    Some(Err(e)) => {
                        if is_too_big(&e) {
                            CloseReason::new(close::TOO_BIG, "frame too big")
                        } else {
                            tracing::debug!(error = %e, "websocket read failed");
                            return;
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        if session.max_frame_bytes().is_some_and(|max| text.len() > max) {
                            CloseReason::new(close::TOO_BIG, "frame too big")
                        } else {
                            match session.handle_text(text.as_str(), origin).await {
                                Flow::Continue => continue,
                                Flow::Close(reason) => reason,
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => match session.malformed_frame(None, "binary frames are not supported; send JSON text").await {
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

/// Did reading fail because a frame exceeded the size limit?
fn is_too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if matches!(err.downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_))) {
            return true;
        }
        source = err.source();
    }
    false
}

/// Most queued frames written between two flushes.
const MAX_BURST: usize = 64;

/// The WebSocket message for a queued item, counting delivered publications.
fn to_message(item: Outbound, handle: &SessionHandle) -> Message {
    match item {
        Outbound::Frame(frame) | Outbound::Position { frame, .. } => Message::Text(frame),
        Outbound::Message { frame, ts, .. } => {
            if let Some(m) = handle.metrics() {
                m.delivered(frame.len(), ts);
            }
            Message::Text(frame)
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    handle: Arc<SessionHandle>,
    ping_every: std::time::Duration,
    close_timeout: std::time::Duration,
) {
    let mut closing = handle.close_signal();
    let mut ping = interval(ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        let first = tokio::select! {
            biased;
            _ = closed(&mut closing) => break,
            _ = ping.tick() => Message::Ping(Bytes::new()),
            item = rx.recv() => match item {
                None => break,
                Some(item) => to_message(item, &handle),
            },
        };
        // Write what is queued right now as one burst and flush once: under fan-out load this
        // turns one syscall per frame into one per burst.
        let burst = async {
            sink.feed(first).await?;
            for _ in 1..MAX_BURST {
                let Ok(item) = rx.try_recv() else { break };
                sink.feed(to_message(item, &handle)).await?;
            }
            sink.flush().await
        };
        tokio::pin!(burst);
        let sent = tokio::select! {
            result = &mut burst => result.is_ok(),
            // Closing while a write is stuck: give it close_timeout to finish so the farewell
            // is not written into the middle of a frame, then give up on the client.
            _ = closed(&mut closing) => match tokio::time::timeout(close_timeout, &mut burst).await {
                Ok(result) => result.is_ok(),
                Err(_) => return,
            },
        };
        if !sent {
            return;
        }
    }
    // Drop undelivered frames: a closing connection gets its farewell next, not its backlog.
    rx.close();
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
    let _ = tokio::time::timeout(close_timeout, farewell).await;
}
