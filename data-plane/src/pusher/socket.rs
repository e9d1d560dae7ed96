//! The Pusher WebSocket endpoint, `GET /app/{key}?protocol=7`: bytes in and out, the activity
//! timeout, the farewell in Pusher's codes. Every decision is the [`Connection`]'s (and through
//! it the operations').
//!
//! Like Aviary's own WebSocket transport, each connection runs a reader (this task: frames to
//! the connection, liveness, drain, the close signal) and a writer (the connection's outbox to
//! the socket, a whole backlog per flush). The writer writes publications as Pusher events,
//! encoded once per node and shared by every Pusher subscriber ([`Delivery::pusher_frame`]).
//!
//! Liveness follows Pusher's protocol: the server announces `activity_timeout`; a client that
//! has sent nothing for that long gets a `pusher:ping`, and one that still sends nothing within
//! [`pong_timeout`] is closed with 4201.
//!
//! [`Delivery::pusher_frame`]: crate::outbound::Delivery::pusher_frame

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aviary_core::ClientAddr;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tracing::Instrument;

use super::connection::{Connection, Flow};
use super::frames::{self, code};
use crate::admission::ConnectionTicket;
use crate::metrics::Burst;
use crate::outbound::Outbound;
use crate::protocol::{CloseReason, close};
use crate::session_handle::SessionHandle;
use crate::transport::ws::admit_upgrade;
use crate::{DataPlane, NodeState};

/// The only protocol version served.
pub const PROTOCOL: u32 = 7;

/// Close code used when the peer went away first; no farewell is sent for it.
const PEER_GONE: u16 = 1000;

#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    protocol: Option<String>,
}

/// How long a client has to answer the server's `pusher:ping`.
pub fn pong_timeout(activity_timeout: Duration) -> Duration {
    activity_timeout.min(Duration::from_secs(30))
}

/// `GET /app/{key}`: upgrades to a Pusher protocol-7 WebSocket. Refusals (unknown key, wrong
/// protocol, quota) are sent on the upgraded socket as `pusher:error` and the close code, as
/// Pusher clients expect them.
pub async fn upgrade(
    State(dp): State<DataPlane>,
    Path(key): Path<String>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    ticket: Option<Extension<Arc<ConnectionTicket>>>,
    client: Option<Extension<ClientAddr>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    admit_upgrade(&dp, &headers, ws, move |inner, socket, origin| {
        serve(inner, socket, key, query.protocol, origin, ticket.map(|t| t.0), client.map(|c| c.0))
    })
}

/// Checks the `protocol` query parameter.
fn check_protocol(protocol: Option<&str>) -> Result<(), (u16, String)> {
    let Some(p) = protocol else {
        return Err((code::NO_PROTOCOL, "No protocol version supplied".into()));
    };
    match p.parse::<u32>() {
        Err(_) => Err((code::INVALID_VERSION, format!("Invalid protocol version {p:?}"))),
        Ok(PROTOCOL) => Ok(()),
        Ok(_) => Err((code::UNSUPPORTED_PROTOCOL, format!("Unsupported protocol version {p}; this server speaks 7"))),
    }
}

fn serve(
    inner: Arc<NodeState>,
    socket: WebSocket,
    key: String,
    protocol: Option<String>,
    origin: Option<String>,
    ticket: Option<Arc<ConnectionTicket>>,
    client: Option<ClientAddr>,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "connection",
        transport = "pusher",
        node = %inner.config.node_id,
        client = client.map(tracing::field::display),
        connection_id = tracing::field::Empty,
        socket_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
        app_id = tracing::field::Empty,
    );
    async move {
        let (mut sink, mut stream) = socket.split();
        let opened = match check_protocol(protocol.as_deref()) {
            Ok(()) => Connection::open(inner.clone(), &key, origin.as_deref())
                .await
                .map_err(|refused| (refused.code, refused.message)),
            Err(refusal) => Err(refusal),
        };
        let mut connection = match opened {
            Ok(connection) => Box::new(connection),
            Err((code, message)) => {
                refuse(&mut sink, &mut stream, code, &message, inner.config.close_timeout).await;
                return;
            }
        };
        if let Some(ticket) = ticket {
            ticket.authenticated();
        }
        run(inner, &mut connection, sink, stream).await;
    }
    .instrument(span)
}

/// Sends a refusal at connect time: `pusher:error`, then the close with the same code.
async fn refuse(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    code: u16,
    message: &str,
    close_timeout: Duration,
) {
    tracing::debug!(code, message, "Pusher connection refused");
    let farewell = async {
        sink.send(Message::Text(frames::error(Some(code), message).into())).await?;
        sink.send(Message::Close(Some(CloseFrame { code, reason: message.to_owned().into() }))).await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(close_timeout, farewell).await;
    let _ = tokio::time::timeout(close_timeout, async { while let Some(Ok(_)) = stream.next().await {} }).await;
}

async fn run(
    inner: Arc<NodeState>,
    connection: &mut Connection,
    sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
) {
    let handle = connection.handle.clone();
    let activity_timeout = inner.config.pusher_activity_timeout;
    let writer = tokio::spawn(write_loop(sink, handle.clone(), inner.config.close_timeout).in_current_span());
    connection.send(frames::connection_established(connection.socket_id(), activity_timeout.as_secs().max(1))).await;
    read_loop(&inner, connection, &mut stream, activity_timeout).await;
    let server_initiated = !handle.close(CloseReason::new(PEER_GONE, "closed"));
    Box::pin(connection.finish()).await;
    let _ = writer.await;
    if server_initiated {
        let _ =
            tokio::time::timeout(inner.config.close_timeout, async { while let Some(Ok(_)) = stream.next().await {} })
                .await;
    }
    tracing::debug!(reason = ?handle.close_reason(), "Pusher connection closed");
}

async fn read_loop(
    inner: &NodeState,
    connection: &mut Connection,
    stream: &mut SplitStream<WebSocket>,
    activity_timeout: Duration,
) {
    let handle = connection.handle.clone();
    let pong_wait = pong_timeout(activity_timeout);
    let mut last_seen = Instant::now();
    let mut pinged = false;
    let timer = sleep_until(last_seen + activity_timeout);
    tokio::pin!(timer);
    let touch_every = inner.presence_touch_interval();
    let mut touch = interval_at(Instant::now() + touch_every, touch_every);
    touch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let closed = handle.closed();
    tokio::pin!(closed);
    let draining = inner.shutdown.cancelled();
    tokio::pin!(draining);
    loop {
        let reason = tokio::select! {
            biased;
            _ = &mut closed => return,
            _ = &mut draining => CloseReason::new(close::GOING_AWAY, "node draining"),
            _ = &mut timer => {
                let now = Instant::now();
                if now < last_seen + activity_timeout {
                    timer.as_mut().reset(last_seen + activity_timeout);
                    continue;
                }
                if !pinged {
                    pinged = true;
                    connection.send(frames::ping()).await;
                    timer.as_mut().reset(now + pong_wait);
                    continue;
                }
                CloseReason::new(code::PONG_NOT_RECEIVED, "Pong reply not received")
            }
            _ = touch.tick() => {
                Box::pin(touch_presence(inner, connection)).await;
                continue;
            }
            frame = stream.next() => {
                last_seen = Instant::now();
                if pinged {
                    pinged = false;
                    timer.as_mut().reset(last_seen + activity_timeout);
                }
                match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > connection.max_frame_bytes() {
                            CloseReason::new(close::TOO_BIG, "frame too big")
                        } else {
                            match Box::pin(connection.handle_text(text.as_str())).await {
                                Flow::Continue => continue,
                                Flow::Close(reason) => reason,
                            }
                        }
                    }
                    Some(Ok(_)) => continue,
                }
            }
        };
        handle.close(reason);
        return;
    }
}

async fn touch_presence(inner: &NodeState, connection: &Connection) {
    let keys = connection.presence_keys();
    crate::ops::presence::touch(inner, &connection.handle.connection_id, keys.iter()).await;
}

/// The Pusher close code for a close decided in Aviary's codes (drain, revocation, a slow
/// consumer, a disabled app: every close after `connection_established` except this module's
/// own 4201); codes outside Aviary's list pass through.
pub fn pusher_close_code(aviary: u16) -> u16 {
    match aviary {
        close::GOING_AWAY => code::RECONNECT,
        close::TRY_AGAIN_LATER | close::SLOW_CONSUMER => code::OVER_CAPACITY,
        close::APP_UNAVAILABLE => code::APP_DISABLED,
        close::QUOTA_EXCEEDED => code::OVER_CONNECTION_QUOTA,
        close::REVOKED | close::FORBIDDEN | close::INVALID_TOKEN | close::TOKEN_EXPIRED => code::UNAUTHORIZED,
        close::PROTOCOL_ERROR => code::RECONNECT,
        other => other,
    }
}

/// The WebSocket message for a queued item: publications as Pusher events; positions (an
/// Aviary resume notion) are not sent.
fn to_message(item: Outbound, burst: &mut Burst) -> Option<Message> {
    match item {
        Outbound::Frame(frame) => Some(Message::Text(frame)),
        Outbound::Position(_) => None,
        Outbound::Message(delivery) => {
            let frame = delivery.pusher_frame().clone();
            burst.add(frame.len(), delivery.ts);
            Some(Message::Text(frame))
        }
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, handle: Arc<SessionHandle>, close_timeout: Duration) {
    let mut queued = VecDeque::new();
    let closed = handle.closed();
    tokio::pin!(closed);
    let mut closing = false;
    while !closing {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            open = handle.outbox.take(&mut queued) => if !open { break },
        }
        let mut burst = Burst::default();
        let write = async {
            while let Some(item) = queued.pop_front() {
                if let Some(message) = to_message(item, &mut burst) {
                    sink.feed(message).await?;
                }
            }
            sink.flush().await
        };
        let sent = {
            tokio::pin!(write);
            tokio::select! {
                biased;
                result = &mut write => result.is_ok(),
                _ = &mut closed => {
                    closing = true;
                    matches!(tokio::time::timeout(close_timeout, &mut write).await, Ok(Ok(())))
                }
            }
        };
        if let Some(m) = handle.metrics() {
            m.delivered(&burst);
        }
        if !sent {
            return handle.outbox.close();
        }
    }
    handle.outbox.close();
    let Some(reason) = handle.close_reason() else { return };
    if reason.code == PEER_GONE {
        let _ = tokio::time::timeout(close_timeout, sink.close()).await;
        return;
    }
    let code = pusher_close_code(reason.code);
    let farewell = async {
        sink.send(Message::Text(frames::error(Some(code), &reason.reason).into())).await?;
        sink.send(Message::Close(Some(CloseFrame { code, reason: reason.reason.clone().into() }))).await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(close_timeout, Box::pin(farewell)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_parameter_is_checked_with_pushers_codes() {
        assert_eq!(check_protocol(Some("7")), Ok(()));
        assert_eq!(check_protocol(None).unwrap_err().0, code::NO_PROTOCOL);
        assert_eq!(check_protocol(Some("x")).unwrap_err().0, code::INVALID_VERSION);
        assert_eq!(check_protocol(Some("6")).unwrap_err().0, code::UNSUPPORTED_PROTOCOL);
    }

    #[test]
    fn closes_decided_in_aviarys_codes_go_out_in_pushers() {
        assert_eq!(pusher_close_code(close::GOING_AWAY), code::RECONNECT);
        assert_eq!(pusher_close_code(close::REVOKED), code::UNAUTHORIZED);
        assert_eq!(pusher_close_code(close::SLOW_CONSUMER), code::OVER_CAPACITY);
        assert_eq!(pusher_close_code(close::APP_UNAVAILABLE), code::APP_DISABLED);
        assert_eq!(pusher_close_code(code::PONG_NOT_RECEIVED), code::PONG_NOT_RECEIVED);
    }
}
