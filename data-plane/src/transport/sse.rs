//! Server-Sent Events transport (`GET /v1/sse?channels=a,b`): one-way delivery for clients
//! that cannot (or need not) use a WebSocket.
//!
//! Every event carries an `id:` encoding the position of *every* channel of the stream (see
//! [`encode_event_id`]), so a browser's automatic reconnect sends `Last-Event-ID` and the new
//! stream replays exactly what was missed in each channel. Positions travel through the
//! session's queue in order with the messages, so an id never claims a publication that has
//! not been written yet. A comment line is sent every `sse_heartbeat_interval` to keep
//! proxies from timing the stream out.
//!
//! A client that stops reading is a slow consumer, as on WebSocket: when its queue overflows,
//! or one chunk waits `write_timeout` for room, the stream ends (with a `disconnect` event
//! 4008 if it still fits), the session ends at once (subscriptions, connection quota), and the
//! socket is dropped when the end of the response cannot reach the client within
//! `close_timeout`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use aviary_broker::StreamPosition;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio::time::{MissedTickBehavior, interval, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::admission::ConnectionTicket;
use crate::error::Error;
// Its rejection is a problem document like every other refusal (not axum's text/plain 400).
use crate::metrics::Burst;
use crate::outbound::Outbound;
use crate::protocol::{self, CloseReason, Text, close};
use crate::rest::Query;
use crate::session::Session;
use crate::{DataPlane, NodeState};

/// Prefix of the current event-id format; bump it if the encoding changes so old ids are
/// recognised (and ignored) rather than misread.
const EVENT_ID_PREFIX: &str = "v1.";

/// Most channels one SSE stream may carry (also bounded by the subscription quota).
pub const MAX_SSE_CHANNELS: usize = 64;

/// Chunks buffered between the driver and hyper; the real queue is the session's.
const BODY_BUFFER: usize = 16;

#[derive(Debug, Deserialize)]
pub struct SseQuery {
    /// Comma-separated channel names.
    channels: String,
    /// The connection token (EventSource cannot set headers).
    token: Option<String>,
    /// Resume point for clients that open a new EventSource (which does not carry
    /// `Last-Event-ID` over); the header wins when both are present.
    last_event_id: Option<String>,
}

/// Encodes each channel's position: `v1.` + base64url(JSON `{"channel":["epoch",offset]}`).
/// Opaque to clients.
pub fn encode_event_id(positions: &BTreeMap<Arc<str>, (Arc<str>, u64)>) -> String {
    let map: BTreeMap<&str, (&str, u64)> = positions.iter().map(|(c, (e, o))| (&**c, (&**e, *o))).collect();
    let json = serde_json::to_vec(&map).unwrap_or_default();
    format!("{EVENT_ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
}

/// Decodes an id made by [`encode_event_id`]; `None` for anything else.
pub fn decode_event_id(id: &str) -> Option<HashMap<String, StreamPosition>> {
    let raw = URL_SAFE_NO_PAD.decode(id.trim().strip_prefix(EVENT_ID_PREFIX)?).ok()?;
    let map: HashMap<String, (String, u64)> = serde_json::from_slice(&raw).ok()?;
    Some(map.into_iter().map(|(c, (epoch, offset))| (c, StreamPosition { epoch, offset })).collect())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    aviary_core::auth::bearer_credential(headers.get(AUTHORIZATION)?.to_str().ok()?)
}

fn refusal(reason: &CloseReason) -> Error {
    match reason.code {
        close::TOKEN_EXPIRED => Error::TokenExpired(reason.reason.clone()),
        close::FORBIDDEN => Error::Forbidden(reason.reason.clone()),
        close::APP_UNAVAILABLE => Error::AppDisabled,
        close::QUOTA_EXCEEDED => Error::QuotaExceeded(reason.reason.clone()),
        close::TRY_AGAIN_LATER => Error::Unavailable(reason.reason.clone()),
        _ => Error::Unauthorized(reason.reason.clone()),
    }
}

/// `GET /v1/sse`: opens an event stream on the listed channels.
pub async fn stream(
    State(dp): State<DataPlane>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
    ticket: Option<Extension<Arc<ConnectionTicket>>>,
    client: Option<Extension<aviary_core::ClientAddr>>,
) -> Result<Response, Error> {
    let inner = dp.inner().clone();
    if inner.is_draining() {
        return Err(Error::Draining);
    }
    let token = bearer(&headers)
        .or(query.token.as_deref())
        .ok_or_else(|| Error::Unauthorized("a token is required (Authorization: Bearer or ?token=)".into()))?;
    let mut channels: Vec<String> = Vec::new();
    for c in query.channels.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !channels.iter().any(|x| x == c) {
            channels.push(c.to_owned());
        }
    }
    if channels.is_empty() || channels.len() > MAX_SSE_CHANNELS {
        return Err(Error::BadRequest(format!("list between 1 and {MAX_SSE_CHANNELS} channels in ?channels=")));
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.last_event_id.as_deref())
        .and_then(decode_event_id)
        .unwrap_or_default();
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());

    let mut session = Session::new(inner.clone(), "sse");
    let span = tracing::info_span!(
        "connection",
        transport = "sse",
        connection_id = %session.handle.connection_id,
        node = %inner.config.node_id,
        client = client.map(|c| tracing::field::display(c.0)),
        tenant_id = tracing::field::Empty,
        app_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
    );
    // Refuse with an HTTP status while we still can: once the stream starts, it is 200.
    let checked = async {
        session.authenticate(token, origin).await.map_err(|r| refusal(&r))?;
        session.check_subscribe_all(&channels)?;
        Ok::<_, Error>(())
    }
    .instrument(span.clone())
    .await;
    if let Err(e) = checked {
        session.finish().await;
        return Err(e);
    }

    // An authenticated stream no longer counts against the bounds on pending connections.
    let ticket = ticket.map(|Extension(ticket)| ticket);
    if let Some(ticket) = &ticket {
        ticket.authenticated();
    }
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_BUFFER);
    // Tells the driver when hyper has taken the whole body (the client read up to its end).
    let finished = Arc::new(Notify::new());
    let done = finished.clone();
    let end = futures::stream::once(async move { done.notify_one() }).filter_map(|()| std::future::ready(None));
    tokio::spawn(drive(inner, session, body_tx, finished, ticket, channels, resume).instrument(span));
    let body = Body::from_stream(ReceiverStream::new(body_rx).chain(end).map(Ok::<_, Infallible>));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Subscribes the channels, then pumps the session's queue into the response body until the
/// client leaves or the connection is closed. A client that stopped reading loses its stream
/// and its socket: the session ends at once (subscriptions, quota), and `ticket` (the socket's
/// admission ticket, absent when the router is served without the binary's accept loop) is
/// aborted when the end of the response cannot reach the client.
async fn drive(
    inner: Arc<NodeState>,
    mut session: Session,
    body: mpsc::Sender<Bytes>,
    finished: Arc<Notify>,
    ticket: Option<Arc<ConnectionTicket>>,
    channels: Vec<String>,
    resume: HashMap<String, StreamPosition>,
) {
    let handle = session.handle.clone();
    let expires_at = session.expires_at().unwrap_or_default();
    // Registered before the body can end, so its end is never missed.
    let response_done = finished.notified();
    tokio::pin!(response_done);
    response_done.as_mut().enable();
    // Ids start from the positions the client resumed with, so that a stream dropped before
    // every channel's `subscribed` event still hands the client an id that resumes them all.
    let known = channels
        .iter()
        .filter_map(|c| resume.get(c).map(|p| (Arc::from(c.as_str()), (Arc::from(p.epoch.as_str()), p.offset))))
        .collect();
    // Pumps while subscribing, until the stream ends.
    let pumped = {
        let pump = pump(&inner, &body, &handle, expires_at, known);
        tokio::pin!(pump);
        let subscribe_all = async {
            for channel in &channels {
                let since = resume.get(channel).cloned();
                let seed = since.clone();
                let name: Arc<str> = channel.as_str().into();
                session
                    .subscribe(channel, since, false, |position, recovered| {
                        // The id starts from what the client already has: `since` when the replay
                        // will fill the gap, the current position otherwise.
                        let start = match seed {
                            Some(s) if recovered => s,
                            _ => position.clone(),
                        };
                        let frame = protocol::reply(
                            "subscribed",
                            None,
                            &protocol::Subscribed { channel: &name, position, recovered },
                        );
                        Outbound::position("subscribed", name.clone(), start.epoch.as_str().into(), start.offset, frame)
                    })
                    .await?;
            }
            Ok::<_, Error>(())
        };
        // Pump while subscribing: a long replay must flow out, not fill the queue.
        let subscribed = tokio::select! {
            result = subscribe_all => Ok(result),
            pumped = &mut pump => Err(pumped),
        };
        match subscribed {
            Ok(Ok(())) => pump.await,
            Ok(Err(e)) => {
                handle.close(CloseReason::new(
                    close::PROTOCOL_ERROR,
                    format!("subscribe failed: {}", e.public_message()),
                ));
                pump.await
            }
            Err(pumped) => pumped,
        }
    };
    let peer_gone = handle.close(CloseReason::new(1000, "closed"));
    let reason = handle.close_reason();
    // Subscriptions, presence and the connection quota go first, whatever the client does next.
    session.finish().await;
    // The farewell and the end of the response get one close deadline together: a client that
    // does not take them by then stopped reading (a slow consumer), and nothing can reach it.
    let deadline = tokio::time::Instant::now() + inner.config.close_timeout;
    let mut draining = pumped.is_ok();
    if let Some(reason) = reason.filter(|_| draining && !peer_gone) {
        let farewell = write_event(&body, Some("disconnect"), None, reason.frame(), inner.config.close_timeout);
        draining = matches!(tokio::time::timeout_at(deadline, farewell).await, Ok(Ok(())));
    }
    // Ends the response: hyper writes its last chunk once the client has read the rest.
    drop(body);
    let Some(ticket) = ticket else { return };
    let ended = draining && tokio::time::timeout_at(deadline, response_done).await.is_ok();
    if !ended {
        ticket.abort();
    }
}

/// One SSE event: optional `event:` name and `id:`, then the JSON frame as its `data:` line
/// (our frames never contain newlines, so one `data:` line suffices).
fn event_head(event: Option<&str>, id: Option<&str>) -> Bytes {
    let mut head = BytesMut::with_capacity(64 + id.map_or(0, str::len));
    if let Some(e) = event {
        head.put_slice(b"event: ");
        head.put_slice(e.as_bytes());
        head.put_u8(b'\n');
    }
    if let Some(id) = id {
        head.put_slice(b"id: ");
        head.put_slice(id.as_bytes());
        head.put_u8(b'\n');
    }
    head.put_slice(b"data: ");
    head.freeze()
}

/// Why the stream stopped taking events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The response body was dropped: the client is gone.
    Gone,
    /// One chunk waited `write_timeout` for room: the client stopped reading.
    Stalled,
}

/// Hands one chunk to the response body, waiting at most `limit` for room.
async fn send_chunk(body: &mpsc::Sender<Bytes>, chunk: Bytes, limit: Duration) -> Result<(), Stop> {
    match tokio::time::timeout(limit, body.send(chunk)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Gone),
        Err(_) => Err(Stop::Stalled),
    }
}

async fn write_event(
    body: &mpsc::Sender<Bytes>,
    event: Option<&str>,
    id: Option<&str>,
    frame: Text,
    limit: Duration,
) -> Result<(), Stop> {
    send_chunk(body, event_head(event, id), limit).await?;
    send_chunk(body, Bytes::from(frame), limit).await?;
    send_chunk(body, Bytes::from_static(b"\n\n"), limit).await
}

/// Writes taken items as events.
async fn write_queued(
    queued: &mut VecDeque<Outbound>,
    body: &mpsc::Sender<Bytes>,
    handle: &crate::session_handle::SessionHandle,
    positions: &mut BTreeMap<Arc<str>, (Arc<str>, u64)>,
    limit: Duration,
) -> Result<(), Stop> {
    let mut burst = Burst::default();
    let mut result = Ok(());
    while let Some(item) = queued.pop_front() {
        result = match item {
            // Nothing subscribes SSE streams to presence or sends them replies; pass any such
            // frame through under its own event name rather than as a message.
            Outbound::Frame(frame) => write_event(body, Some("frame"), None, frame, limit).await,
            Outbound::Position(p) => {
                positions.insert(p.channel, (p.epoch, p.offset));
                let id = encode_event_id(positions);
                write_event(body, Some(p.event), Some(&id), p.frame, limit).await
            }
            Outbound::Message(d) => {
                positions.insert(d.channel.clone(), (d.epoch.clone(), d.offset));
                let id = encode_event_id(positions);
                burst.add(d.frame.len(), d.ts);
                write_event(body, None, Some(&id), d.frame.clone(), limit).await
            }
        };
        if result.is_err() {
            break;
        }
    }
    queued.clear();
    if let Some(m) = handle.metrics() {
        m.delivered(&burst);
    }
    result
}

/// Pumps the session's queue into the body until the stream ends: `Ok` when it ended because
/// the connection is closing (the reason is on the handle), else why the client stopped taking
/// the body.
async fn pump(
    inner: &NodeState,
    body: &mpsc::Sender<Bytes>,
    handle: &crate::session_handle::SessionHandle,
    expires_at: i64,
    mut positions: BTreeMap<Arc<str>, (Arc<str>, u64)>,
) -> Result<(), Stop> {
    let limit = inner.config.write_timeout;
    let mut heartbeat = interval(inner.config.sse_heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut queued = VecDeque::new();
    // SSE has no `refresh`: the stream ends at the token's expiry and the client reconnects
    // with a new token (and its last event id).
    let expiry = sleep_until(super::expiry_instant(expires_at));
    tokio::pin!(expiry);
    // Built once: it registers for the wake-up when first polled.
    let closed = handle.closed();
    tokio::pin!(closed);
    // Ask browsers to reconnect quickly after a drop.
    let mut written = send_chunk(body, Bytes::from_static(b"retry: 2000\n\n"), limit).await;
    while written.is_ok() {
        enum Next {
            Heartbeat,
            Queued,
        }
        let next = tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = inner.shutdown.cancelled() => {
                handle.close(CloseReason::new(close::GOING_AWAY, "node draining"));
                break;
            }
            _ = &mut expiry => {
                handle.close(CloseReason::new(close::TOKEN_EXPIRED, "token expired"));
                break;
            }
            _ = heartbeat.tick() => Next::Heartbeat,
            _ = body.closed() => {
                written = Err(Stop::Gone);
                break;
            }
            open = handle.outbox.take(&mut queued) => if open { Next::Queued } else { break },
        };
        let write = async {
            match next {
                Next::Heartbeat => send_chunk(body, Bytes::from_static(b": ping\n\n"), limit).await,
                Next::Queued => write_queued(&mut queued, body, handle, &mut positions, limit).await,
            }
        };
        // A close (a full queue: slow consumer; a revocation) ends the stream at once, even in
        // the middle of a backlog the client is not reading.
        written = tokio::select! {
            biased;
            result = write => result,
            _ = &mut closed => break,
        };
    }
    if written == Err(Stop::Stalled) {
        handle.close(CloseReason::new(close::SLOW_CONSUMER, "slow consumer: the client stopped reading"));
    }
    written
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

        /// `Last-Event-ID` is client-controlled: anything decodes to positions or to nothing.
        #[test]
        fn any_last_event_id_decodes_or_is_ignored(id in prop_oneof![any::<String>(), "v1\\.[A-Za-z0-9_-]{0,80}"]) {
            let _ = decode_event_id(&id);
        }

        #[test]
        fn event_ids_round_trip_any_positions(
            positions in proptest::collection::btree_map("[a-z:#,=]{1,16}", ("[a-z0-9]{1,8}", any::<u64>()), 0..5),
        ) {
            let map: BTreeMap<Arc<str>, (Arc<str>, u64)> =
                positions.iter().map(|(c, (e, o))| (Arc::from(c.as_str()), (Arc::from(e.as_str()), *o))).collect();
            let decoded = decode_event_id(&encode_event_id(&map)).expect("our own id decodes");
            prop_assert_eq!(decoded.len(), positions.len());
            for (channel, (epoch, offset)) in &positions {
                prop_assert_eq!(&decoded[channel], &StreamPosition { epoch: epoch.clone(), offset: *offset });
            }
        }
    }

    #[test]
    fn event_ids_round_trip_every_channel_position() {
        let mut positions = BTreeMap::new();
        positions.insert(Arc::<str>::from("chat:a,b=c"), (Arc::<str>::from("ep1"), 7u64));
        positions.insert(Arc::<str>::from("news"), (Arc::<str>::from("ep2"), 0u64));
        let id = encode_event_id(&positions);
        assert!(id.starts_with("v1.") && !id.contains(['\n', '\r', ' ']));
        let decoded = decode_event_id(&id).unwrap();
        assert_eq!(decoded["chat:a,b=c"], StreamPosition { epoch: "ep1".into(), offset: 7 });
        assert_eq!(decoded["news"], StreamPosition { epoch: "ep2".into(), offset: 0 });
        assert!(decode_event_id("v0.abc").is_none());
        assert!(decode_event_id("v1.!!!").is_none());
    }
}
