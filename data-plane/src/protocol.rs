//! The wire protocol: every frame a client sends or receives, in one place.
//!
//! `docs/protocol.md` mirrors this file for SDK authors; change both together. Frames are JSON
//! text. Client frames are parsed in two steps (an [`Envelope`] naming the `type`, then the
//! type's own struct) because payloads are kept as borrowed [`RawValue`]s, which serde cannot
//! buffer through an internally tagged enum. Server frames are serialized straight to bytes;
//! the hot one, [`encode_message`], is written by hand so a publication is encoded exactly once
//! per node, whatever the number of subscribers.

use std::io::Write;

use aviary_broker::{PresenceAction, PresenceMember, Publication, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A serialized server frame: JSON text, validated as UTF-8 once when it is built, so
/// transports can hand it to the socket (or clone it per subscriber) without re-checking.
pub type Text = axum::extract::ws::Utf8Bytes;

/// WebSocket close codes (and the `code` of the `disconnect` frame sent before closing).
pub mod close {
    /// Node draining: reconnect (elsewhere).
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation (RFC 6455): a reserved opcode or bits, a continuation
    /// without a start, an unmasked client frame, a fragmented control frame.
    pub const WS_PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8 (RFC 6455: inconsistent data).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later: the node could not admit the connection now (its quota store is
    /// unreachable). Reconnect with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Protocol error: repeated malformed frames, no `connect` in time, missed heartbeats.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// The token is invalid (bad signature, unknown key, malformed, wrong claims).
    pub const INVALID_TOKEN: u16 = 4001;
    /// The token expired without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// Forbidden (e.g. an Origin the app does not allow).
    pub const FORBIDDEN: u16 = 4003;
    /// The app is disabled or deleted.
    pub const APP_UNAVAILABLE: u16 = 4004;
    /// The client did not read fast enough; its outbound queue filled.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// A quota (connections) is exhausted.
    pub const QUOTA_EXCEEDED: u16 = 4009;
    /// The API key that minted the token, or the client's tokens, were revoked.
    pub const REVOKED: u16 = 4010;

    /// Every close code above: `docs/protocol.md` documents each (a test checks).
    pub const ALL: &[u16] = &[
        GOING_AWAY,
        WS_PROTOCOL_ERROR,
        INVALID_PAYLOAD,
        TOO_BIG,
        TRY_AGAIN_LATER,
        PROTOCOL_ERROR,
        INVALID_TOKEN,
        TOKEN_EXPIRED,
        FORBIDDEN,
        APP_UNAVAILABLE,
        SLOW_CONSUMER,
        QUOTA_EXCEEDED,
        REVOKED,
    ];
}

/// The `type` of every frame a client may send; [`parse_client_frame`] knows each.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence.enter",
    "presence.update",
    "presence.leave",
    "presence.get",
    "history",
    "refresh",
    "ping",
];

/// The `type` of every frame the server sends (SSE event names included).
pub const SERVER_FRAME_TYPES: &[&str] =
    &["connected", "ok", "error", "pong", "message", "presence", "discontinuity", "disconnect", "subscribed"];

/// Why a connection is being closed: sent as a `disconnect` frame, then as the close code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
    pub reconnect: bool,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        // Whether a client should reconnect on its own follows from the code: only transient,
        // server-side conditions invite an automatic retry.
        let reconnect =
            matches!(code, close::GOING_AWAY | close::TRY_AGAIN_LATER | close::SLOW_CONSUMER | close::TOKEN_EXPIRED);
        CloseReason { code, reason: reason.into(), reconnect }
    }

    /// The `disconnect` frame announcing this close.
    pub fn frame(&self) -> Text {
        #[derive(Serialize)]
        struct Disconnect<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            code: u16,
            reason: &'a str,
            reconnect: bool,
        }
        to_bytes(&Disconnect { kind: "disconnect", code: self.code, reason: &self.reason, reconnect: self.reconnect })
    }
}

/// Error codes of `error` frames (and of REST problems, as their slug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Forbidden,
    BadRequest,
    NotFound,
    RateLimited,
    QuotaExceeded,
    PayloadTooLarge,
    TokenExpired,
    Unauthorized,
    /// The idempotency key was used earlier by the same publisher with another payload.
    Conflict,
    Internal,
}

impl ErrorCode {
    /// Every code: `docs/protocol.md` and the JS SDK list each (a test checks).
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TokenExpired,
        ErrorCode::Unauthorized,
        ErrorCode::Conflict,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------------

/// The part of every client frame read first: its type and optional correlation id.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// Echoed in the reply; any JSON value the client likes (a number, typically).
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct Connect {
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct Subscribe {
    pub channel: String,
    #[serde(default)]
    pub since: Option<StreamPosition>,
    /// Also deliver this channel's `presence` events.
    #[serde(default)]
    pub presence: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChannelOnly {
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct Publish<'a> {
    pub channel: String,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PresenceSet {
    pub channel: String,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct History {
    pub channel: String,
    #[serde(default)]
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct Refresh {
    pub token: String,
}

/// A parsed client frame.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    Connect(Connect),
    Subscribe(Subscribe),
    Unsubscribe(ChannelOnly),
    Publish(Publish<'a>),
    PresenceEnter(PresenceSet),
    PresenceUpdate(PresenceSet),
    PresenceLeave(ChannelOnly),
    PresenceGet(ChannelOnly),
    History(History),
    Refresh(Refresh),
    Ping,
}

/// Why a client frame could not be parsed; answered with `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(pub String);

/// A client frame's correlation id, borrowed from the frame text.
pub type FrameId<'a> = Option<&'a RawValue>;

/// Parses one text frame. On error the envelope's `id` is returned when it could be read, so
/// the `error` reply can still be correlated.
pub fn parse_client_frame(text: &str) -> Result<(FrameId<'_>, ClientFrame<'_>), (FrameId<'_>, FrameError)> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| (None, FrameError(format!("malformed frame: {e}"))))?;
    let id = envelope.id;
    let bad = |e: serde_json::Error| (id, FrameError(format!("invalid {} frame: {e}", envelope.kind)));
    let frame = match envelope.kind.as_ref() {
        "connect" => ClientFrame::Connect(serde_json::from_str(text).map_err(bad)?),
        "subscribe" => ClientFrame::Subscribe(serde_json::from_str(text).map_err(bad)?),
        "unsubscribe" => ClientFrame::Unsubscribe(serde_json::from_str(text).map_err(bad)?),
        "publish" => ClientFrame::Publish(serde_json::from_str(text).map_err(bad)?),
        "presence.enter" => ClientFrame::PresenceEnter(serde_json::from_str(text).map_err(bad)?),
        "presence.update" => ClientFrame::PresenceUpdate(serde_json::from_str(text).map_err(bad)?),
        "presence.leave" => ClientFrame::PresenceLeave(serde_json::from_str(text).map_err(bad)?),
        "presence.get" => ClientFrame::PresenceGet(serde_json::from_str(text).map_err(bad)?),
        "history" => ClientFrame::History(serde_json::from_str(text).map_err(bad)?),
        "refresh" => ClientFrame::Refresh(serde_json::from_str(text).map_err(bad)?),
        "ping" => ClientFrame::Ping,
        other => return Err((id, FrameError(format!("unknown frame type {other:?}")))),
    };
    Ok((id, frame))
}

// ---------------------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------------------

fn to_bytes<T: Serialize>(value: &T) -> Text {
    // Serializing our own plain structs cannot fail (no maps with non-string keys, no failing
    // Serialize impls); a String is UTF-8 already, so this costs no validation.
    Text::from(serde_json::to_string(value).unwrap_or_default())
}

/// `{"type":"connected",...}`.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    pub client_id: &'a str,
    pub connection_id: &'a str,
    /// The connection's Pusher-style socket id (`<digits>.<digits>`): a backend publishing
    /// through the Pusher HTTP API with this `socket_id` skips this connection.
    pub socket_id: &'a str,
    pub heartbeat_s: u64,
    pub expires_at: i64,
}

/// A typed reply: `{"type": kind, "id": id, ...body}`.
pub fn reply<T: Serialize>(kind: &'static str, id: Option<&RawValue>, body: &T) -> Text {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(flatten)]
        body: &'a T,
    }
    to_bytes(&Reply { kind, id, body })
}

/// `{"type":"ok","id":...,...body}`.
pub fn ok<T: Serialize>(id: Option<&RawValue>, body: &T) -> Text {
    reply("ok", id, body)
}

/// An empty body for replies that carry nothing but their type and id.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// `{"type":"error","id":...,"code":...,"message":...}`.
pub fn error(id: Option<&RawValue>, code: ErrorCode, message: &str) -> Text {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: ErrorCode,
        message: &'a str,
    }
    reply("error", id, &ErrorBody { code, message })
}

/// Body of the `ok` answering `subscribe`.
#[derive(Debug, Serialize)]
pub struct Subscribed<'a> {
    pub channel: &'a str,
    pub position: &'a StreamPosition,
    pub recovered: bool,
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters
/// (`!` to `~`). Engines put the key into storage key names (Redis), so its size and alphabet
/// are bounded before it reaches them.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("idempotency_key may only contain visible ASCII characters (no spaces)".to_owned());
    }
    Ok(())
}

/// `{"type":"unsubscribed","channel":...,"reason":...}`: the server ended a subscription (a
/// `refresh` whose token no longer allows the channel).
pub fn encode_unsubscribed(channel: &str, reason: &str) -> Text {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        reason: &'a str,
    }
    to_bytes(&Unsubscribed { kind: "unsubscribed", channel, reason })
}

/// `{"type":"discontinuity",...}`: live delivery of `channel` skipped publications (a new epoch,
/// or an offset gap the engine could not fill). `previous` is the last position delivered,
/// `position` the one the stream continues from: the next `message` has offset
/// `position.offset + 1` in `position.epoch`.
pub fn encode_discontinuity(channel: &str, previous: &StreamPosition, position: &StreamPosition) -> Text {
    #[derive(Serialize)]
    struct Discontinuity<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        previous: &'a StreamPosition,
        position: &'a StreamPosition,
    }
    to_bytes(&Discontinuity { kind: "discontinuity", channel, previous, position })
}

/// One publication inside a `history` reply.
#[derive(Debug, Serialize)]
pub struct HistoryItem<'a> {
    pub epoch: &'a str,
    pub offset: u64,
    pub data: &'a RawValue,
    pub client_id: Option<&'a str>,
    pub ts: i64,
    /// The event name it was published with, when it has one (as in the `message` frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
}

impl<'a> HistoryItem<'a> {
    /// Borrows a publication; `None` only if the broker handed back bytes that are not JSON,
    /// which the publish path never stores.
    pub fn from_publication(p: &'a Publication) -> Option<Self> {
        let data = std::str::from_utf8(&p.data).ok().and_then(|s| serde_json::from_str::<&RawValue>(s).ok())?;
        Some(HistoryItem {
            epoch: &p.epoch,
            offset: p.offset,
            data,
            client_id: p.client_id.as_deref(),
            ts: p.ts,
            event: p.event.as_deref(),
        })
    }
}

/// Body of the `ok` answering `history`.
#[derive(Debug, Serialize)]
pub struct HistoryReply<'a> {
    pub publications: Vec<HistoryItem<'a>>,
    pub position: &'a StreamPosition,
    pub recovered: bool,
}

/// Body of the `ok` answering `presence.get`.
#[derive(Debug, Serialize)]
pub struct PresenceReply<'a> {
    pub channel: &'a str,
    pub members: &'a [PresenceMember],
}

/// Writes `s` as a JSON string literal.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The `message` frame for one publication: encoded once per node and shared by every
/// subscriber (WebSocket frames as-is, SSE `data:` lines wrap it).
///
/// `data` is the publication's raw JSON, copied verbatim: it was validated as JSON when it was
/// published, so the frame stays valid JSON without a parse/serialize round trip. The frame is
/// checked as UTF-8 here, once, instead of once per subscriber at the socket.
pub fn encode_message(channel: &str, p: &Publication) -> Text {
    let cap = 96
        + channel.len()
        + p.epoch.len()
        + p.data.len()
        + p.client_id.as_deref().map_or(4, str::len)
        + p.event.as_deref().map_or(0, |e| 10 + e.len());
    let mut out = Vec::with_capacity(cap);
    out.extend_from_slice(br#"{"type":"message","channel":"#);
    write_json_str(&mut out, channel);
    if let Some(event) = p.event.as_deref() {
        out.extend_from_slice(br#","event":"#);
        write_json_str(&mut out, event);
    }
    out.extend_from_slice(br#","epoch":"#);
    write_json_str(&mut out, &p.epoch);
    let _ = write!(out, r#","offset":{},"data":"#, p.offset);
    out.extend_from_slice(&p.data);
    out.extend_from_slice(br#","client_id":"#);
    match p.client_id.as_deref() {
        Some(c) => write_json_str(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, r#","ts":{}}}"#, p.ts);
    match String::from_utf8(out) {
        Ok(text) => Text::from(text),
        // Publish paths only store payloads taken from UTF-8 text; anything else is a broker
        // bug, and an explicit null beats a frame the client cannot decode.
        Err(_) => {
            tracing::error!(offset = p.offset, "publication payload is not UTF-8; delivering null data");
            let null = Publication { data: bytes::Bytes::from_static(b"null"), ..p.clone() };
            encode_message(channel, &null)
        }
    }
}

/// The `presence` frame for one presence change, encoded once per node like a message.
pub fn encode_presence(channel: &str, action: PresenceAction, member: &PresenceMember) -> Text {
    #[derive(Serialize)]
    struct Presence<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        action: PresenceAction,
        member: &'a PresenceMember,
    }
    to_bytes(&Presence { kind: "presence", channel, action, member })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn message_frames_are_valid_json_with_raw_data() {
        let p = Publication {
            offset: 7,
            epoch: Arc::from("e1"),
            data: bytes::Bytes::from_static(br#"{"text":"hi \"there\""}"#),
            client_id: Some(Arc::from("u\"1")),
            ts: 42,
            event: None,
            exclude: Some(Arc::from("1.2")),
        };
        let frame = encode_message("chat:lobby", &p);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","channel":"chat:lobby","epoch":"e1","offset":7,
                "data":{"text":"hi \"there\""},"client_id":"u\"1","ts":42})
        );
        let backend = Publication { client_id: None, ..p };
        let v: serde_json::Value = serde_json::from_str(&encode_message("x", &backend)).unwrap();
        assert_eq!(v["client_id"], serde_json::Value::Null);
        let named = Publication { event: Some(Arc::from("order \"shipped\"")), ..backend };
        let v: serde_json::Value = serde_json::from_str(&encode_message("x", &named)).unwrap();
        assert_eq!(v["event"], "order \"shipped\"", "the event name is sent when there is one");
        assert!(v.get("exclude").is_none(), "the excluded socket is never shown");
    }

    #[test]
    fn parses_frames_by_type_and_keeps_the_id_on_errors() {
        let (id, frame) = parse_client_frame(r#"{"type":"publish","id":3,"channel":"a","data":{"x":[1,2]}}"#).unwrap();
        assert_eq!(id.unwrap().get(), "3");
        match frame {
            ClientFrame::Publish(p) => assert_eq!(p.data.get(), r#"{"x":[1,2]}"#),
            other => panic!("unexpected {other:?}"),
        }
        let (id, err) = parse_client_frame(r#"{"type":"subscribe","id":"a"}"#).unwrap_err();
        assert_eq!(id.unwrap().get(), r#""a""#);
        assert!(err.0.contains("channel"));
        assert!(parse_client_frame("not json").is_err());
        assert!(parse_client_frame(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn the_lists_of_frame_types_and_codes_are_complete() {
        for kind in CLIENT_FRAME_TYPES {
            let text = format!(r#"{{"type":"{kind}"}}"#);
            let parsed = parse_client_frame(&text);
            assert!(!matches!(&parsed, Err((_, e)) if e.0.starts_with("unknown frame type")), "{kind}");
        }
        // Adding a variant without listing it fails to compile here (no wildcard arm).
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::Forbidden
                | ErrorCode::BadRequest
                | ErrorCode::NotFound
                | ErrorCode::RateLimited
                | ErrorCode::QuotaExceeded
                | ErrorCode::PayloadTooLarge
                | ErrorCode::TokenExpired
                | ErrorCode::Unauthorized
                | ErrorCode::Conflict
                | ErrorCode::Internal => {}
            }
        }
        let distinct: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn replies_flatten_their_body() {
        let id = serde_json::from_str::<&RawValue>("9").unwrap();
        let b = ok(Some(id), &StreamPosition { epoch: "e".into(), offset: 2 });
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v, serde_json::json!({"type":"ok","id":9,"epoch":"e","offset":2}));
        let v: serde_json::Value = serde_json::from_str(&error(None, ErrorCode::RateLimited, "slow")).unwrap();
        assert_eq!(v, serde_json::json!({"type":"error","code":"rate_limited","message":"slow"}));
    }
}
