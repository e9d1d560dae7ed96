//! Pusher protocol 7 frames: what clients send, what the server answers, and Pusher's error
//! codes.
//!
//! Every frame is a JSON object `{"event", "channel"?, "data"?}`. Pusher's own events
//! (`pusher:*`, `pusher_internal:*`) sent by the server carry `data` as a JSON-encoded *string*
//! (`"data":"{\"socket_id\":...}"`), except `pusher:error`, whose `data` is an object; clients
//! send `data` as an object. Channel events carry `data` as the publisher gave it: a string
//! (the server SDKs JSON-encode objects into one) or, for client events, any JSON value.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Pusher's error and close codes (`pusher:error` `code`, WebSocket close code). Ranges tell
/// clients what to do: 4000–4099 do not reconnect, 4100–4199 reconnect after backing off,
/// 4200–4299 reconnect at once; 4300–4399 are errors that keep the connection.
pub mod code {
    /// The key names no live credential (also a revoked one).
    pub const APP_DOES_NOT_EXIST: u16 = 4001;
    /// The app (or its tenant) is disabled.
    pub const APP_DISABLED: u16 = 4003;
    /// The app is at its connection quota.
    pub const OVER_CONNECTION_QUOTA: u16 = 4004;
    /// The path is not `/app/{key}`.
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// `protocol` is not a number.
    pub const INVALID_VERSION: u16 = 4006;
    /// `protocol` is a number but not 7.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No `protocol` query parameter.
    pub const NO_PROTOCOL: u16 = 4008;
    /// A subscription or sign-in whose signature does not verify (kept open), or a connection
    /// closed because its credential or user was revoked.
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over capacity: back off and reconnect.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Generic "reconnect now" (e.g. the node drains).
    pub const RECONNECT: u16 = 4200;
    /// No pong to the server's ping in time.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// Nothing received for the activity timeout.
    pub const CLOSED_AFTER_INACTIVITY: u16 = 4202;
    /// A client event refused by the rate limit (10/s per connection; kept open).
    pub const CLIENT_EVENT_RATE_LIMITED: u16 = 4301;

    /// Every code above: `docs/pusher.md` documents each (`tests/protocol_docs.rs` checks).
    pub const ALL: &[u16] = &[
        APP_DOES_NOT_EXIST,
        APP_DISABLED,
        OVER_CONNECTION_QUOTA,
        PATH_NOT_FOUND,
        INVALID_VERSION,
        UNSUPPORTED_PROTOCOL,
        NO_PROTOCOL,
        UNAUTHORIZED,
        OVER_CAPACITY,
        RECONNECT,
        PONG_NOT_RECEIVED,
        CLOSED_AFTER_INACTIVITY,
        CLIENT_EVENT_RATE_LIMITED,
    ];
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not a JSON object with a string \"event\": {0}")]
    Malformed(String),
    #[error("{event} needs a string \"{field}\"")]
    MissingField { event: String, field: &'static str },
    #[error("unknown event {0}")]
    UnknownEvent(String),
}

/// A frame a client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// `pusher:signin`: `auth` signs `user_data` (a JSON-encoded object with an `id`).
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is its raw JSON text, kept byte for byte.
    ClientEvent {
        event: String,
        channel: String,
        data: String,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// The `data` object of a `pusher:*` client event; pusher-js sends an object, some clients a
/// JSON-encoded string of one: both are accepted.
fn data_object(data: Option<&RawValue>) -> serde_json::Map<String, Value> {
    let parsed: Option<Value> = data.and_then(|raw| serde_json::from_str(raw.get()).ok());
    match parsed {
        Some(Value::Object(map)) => map,
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        },
        _ => serde_json::Map::new(),
    }
}

fn string_field(map: &serde_json::Map<String, Value>, event: &str, field: &'static str) -> Result<String, FrameError> {
    map.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| FrameError::MissingField { event: event.to_owned(), field })
}

/// Decodes one text frame from a client.
pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let event = envelope.event.as_ref();
    match event {
        "pusher:ping" => Ok(ClientFrame::Ping),
        "pusher:pong" => Ok(ClientFrame::Pong),
        "pusher:subscribe" => {
            let data = data_object(envelope.data.as_deref());
            Ok(ClientFrame::Subscribe {
                channel: string_field(&data, event, "channel")?,
                auth: data.get("auth").and_then(Value::as_str).map(str::to_owned),
                channel_data: data.get("channel_data").and_then(Value::as_str).map(str::to_owned),
            })
        }
        "pusher:unsubscribe" => {
            let data = data_object(envelope.data.as_deref());
            Ok(ClientFrame::Unsubscribe { channel: string_field(&data, event, "channel")? })
        }
        "pusher:signin" => {
            let data = data_object(envelope.data.as_deref());
            Ok(ClientFrame::Signin {
                auth: string_field(&data, event, "auth")?,
                user_data: string_field(&data, event, "user_data")?,
            })
        }
        _ if event.starts_with("client-") => Ok(ClientFrame::ClientEvent {
            event: event.to_owned(),
            channel: envelope
                .channel
                .ok_or_else(|| FrameError::MissingField { event: event.to_owned(), field: "channel" })?,
            data: envelope.data.map_or_else(|| "null".to_owned(), |raw| raw.get().to_owned()),
        }),
        other => Err(FrameError::UnknownEvent(other.to_owned())),
    }
}

/// A JSON string literal of `text` (for `data` fields that carry encoded JSON).
fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// `pusher:connection_established`: the socket id and the activity timeout in seconds.
pub fn connection_established(socket_id: &str, activity_timeout_s: u64) -> String {
    let data = serde_json::json!({ "socket_id": socket_id, "activity_timeout": activity_timeout_s }).to_string();
    format!(r#"{{"event":"pusher:connection_established","data":{}}}"#, json_string(&data))
}

/// `pusher:ping` (server to client) and `pusher:pong` (the answer to a client's ping).
pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":"{}"}"#.to_owned()
}

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":"{}"}"#.to_owned()
}

/// `pusher:error` with an optional code (a refused subscription carries none on Pusher for
/// some cases; this server always names one when it has one).
pub fn error(code: Option<u16>, message: &str) -> String {
    serde_json::json!({ "event": "pusher:error", "data": { "code": code, "message": message } }).to_string()
}

/// `pusher_internal:subscription_succeeded`; for presence channels `presence` is the member
/// list as `(user_id, user_info)`.
pub fn subscription_succeeded(channel: &str, presence: Option<&[(String, Value)]>) -> String {
    let data = match presence {
        None => "{}".to_owned(),
        Some(members) => {
            let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
            let hash: serde_json::Map<String, Value> =
                members.iter().map(|(id, info)| (id.clone(), info.clone())).collect();
            serde_json::json!({ "presence": { "ids": ids, "hash": hash, "count": members.len() } }).to_string()
        }
    };
    serde_json::json!({ "event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data })
        .to_string()
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    let data = serde_json::json!({ "user_id": user_id, "user_info": user_info }).to_string();
    serde_json::json!({ "event": "pusher_internal:member_added", "channel": channel, "data": data }).to_string()
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = serde_json::json!({ "user_id": user_id }).to_string();
    serde_json::json!({ "event": "pusher_internal:member_removed", "channel": channel, "data": data }).to_string()
}

/// `pusher:cache_miss`: a cache channel had no event to send on subscribe.
pub fn cache_miss(channel: &str) -> String {
    serde_json::json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()
}

/// `pusher:signin_success`, echoing the signed user data.
pub fn signin_success(user_data: &str) -> String {
    serde_json::json!({ "event": "pusher:signin_success", "data": { "user_data": user_data } }).to_string()
}

/// The event name Pusher clients see on a publication made without one (by Aviary's own
/// clients, SDKs and REST API).
pub const DEFAULT_EVENT: &str = "message";

/// A publication on `aviary_channel` as a Pusher channel event: its event name
/// ([`DEFAULT_EVENT`] without one), the channel's Pusher name, `data` as a string
/// ([`super::data::to_pusher`]) and, on presence channels, the publisher's `user_id`.
pub fn publication(aviary_channel: &str, event_name: Option<&str>, data: &[u8], client_id: Option<&str>) -> String {
    let channel = super::names::to_pusher(aviary_channel).unwrap_or_else(|| aviary_channel.to_owned());
    let user_id = match super::names::ChannelKind::of(aviary_channel) {
        super::names::ChannelKind::Presence => client_id,
        _ => None,
    };
    event(&channel, event_name.unwrap_or(DEFAULT_EVENT), &super::data::to_pusher(data), user_id)
}

/// A channel event. `data` is the raw JSON text of what the publisher gave (a string for server
/// SDK events, any value for client events), kept byte for byte; `user_id` names the sender of
/// a client event on a presence channel.
pub fn event(channel: &str, event: &str, data: &str, user_id: Option<&str>) -> String {
    let mut out = String::with_capacity(48 + channel.len() + event.len() + data.len());
    out.push_str(r#"{"event":"#);
    out.push_str(&json_string(event));
    out.push_str(r#","channel":"#);
    out.push_str(&json_string(channel));
    out.push_str(r#","data":"#);
    out.push_str(data);
    if let Some(user_id) = user_id {
        out.push_str(r#","user_id":"#);
        out.push_str(&json_string(user_id));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(frame: &str) -> Value {
        serde_json::from_str(frame).unwrap()
    }

    #[test]
    fn decodes_what_pusher_js_sends() {
        assert_eq!(decode(r#"{"event":"pusher:ping","data":{}}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#),
            Ok(ClientFrame::Subscribe { channel: "private-a".into(), auth: Some("k:s".into()), channel_data: None })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":\"1\"}"}}"#
            ),
            Ok(ClientFrame::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"1"}"#.into())
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientFrame::Unsubscribe { channel: "a".into() }),
            "a JSON-encoded data object is accepted too"
        );
        assert_eq!(
            decode(r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"7\"}"}}"#),
            Ok(ClientFrame::Signin { auth: "k:s".into(), user_data: r#"{"id":"7"}"#.into() })
        );
        let Ok(ClientFrame::ClientEvent { event, channel, data }) =
            decode(r#"{"event":"client-typing","channel":"private-a","data":{"who":"x"}}"#)
        else {
            panic!("a client event")
        };
        assert_eq!((event.as_str(), channel.as_str(), data.as_str()), ("client-typing", "private-a", r#"{"who":"x"}"#));
    }

    #[test]
    fn refuses_what_it_cannot_act_on() {
        assert!(matches!(decode("not json"), Err(FrameError::Malformed(_))));
        assert!(matches!(decode(r#"{"data":{}}"#), Err(FrameError::Malformed(_))));
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(FrameError::MissingField { event: "pusher:subscribe".into(), field: "channel" })
        );
        assert_eq!(
            decode(r#"{"event":"my-event","channel":"a","data":{}}"#),
            Err(FrameError::UnknownEvent("my-event".into()))
        );
        assert!(matches!(
            decode(r#"{"event":"client-x","data":{}}"#),
            Err(FrameError::MissingField { field: "channel", .. })
        ));
    }

    #[test]
    fn server_frames_carry_encoded_json_where_pusher_does() {
        let established = parsed(&connection_established("123.456", 120));
        assert_eq!(established["event"], "pusher:connection_established");
        assert_eq!(
            parsed(established["data"].as_str().unwrap()),
            json!({ "socket_id": "123.456", "activity_timeout": 120 })
        );
        assert_eq!(parsed(&pong()), json!({ "event": "pusher:pong", "data": "{}" }));
        assert_eq!(
            parsed(&error(Some(4009), "nope")),
            json!({ "event": "pusher:error", "data": { "code": 4009, "message": "nope" } })
        );
        let members = [("1".to_owned(), json!({ "name": "Ada" })), ("2".to_owned(), Value::Null)];
        let presence = parsed(&subscription_succeeded("presence-a", Some(&members)));
        assert_eq!(presence["channel"], "presence-a");
        assert_eq!(
            parsed(presence["data"].as_str().unwrap()),
            json!({ "presence": { "ids": ["1", "2"], "hash": { "1": { "name": "Ada" }, "2": null }, "count": 2 } })
        );
        assert_eq!(parsed(&subscription_succeeded("a", None))["data"], "{}");
        assert_eq!(
            parsed(parsed(&member_added("presence-a", "1", &json!({ "name": "Ada" })))["data"].as_str().unwrap()),
            json!({ "user_id": "1", "user_info": { "name": "Ada" } })
        );
        assert_eq!(
            parsed(parsed(&member_removed("presence-a", "1"))["data"].as_str().unwrap()),
            json!({ "user_id": "1" })
        );
        assert_eq!(parsed(&cache_miss("cache-a")), json!({ "event": "pusher:cache_miss", "channel": "cache-a" }));
        assert_eq!(parsed(&signin_success("{\"id\":\"7\"}"))["data"]["user_data"], "{\"id\":\"7\"}");
    }

    #[test]
    fn channel_events_keep_the_data_byte_for_byte() {
        let frame = event("chat;lobby", "my-event", r#""{\"some\":\"data\"}""#, None);
        assert_eq!(frame, r#"{"event":"my-event","channel":"chat;lobby","data":"{\"some\":\"data\"}"}"#);
        assert_eq!(
            parsed(&event("presence-a", "client-x", r#"{"x":1}"#, Some("u\"1"))),
            json!({ "event": "client-x", "channel": "presence-a", "data": { "x": 1 }, "user_id": "u\"1" })
        );
    }
}
