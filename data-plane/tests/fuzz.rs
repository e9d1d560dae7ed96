//! Property-based fuzzing of the data plane's parsers of client frames: Aviary's protocol
//! (`parse_client_frame`) and Pusher's protocol 7 (`pusher::frames::decode`), and the mapping of
//! Pusher channel names onto Aviary's.
//!
//! Invariants: no input panics; a frame is either parsed or refused with a typed error that
//! names what was wrong; a parsed frame holds what the text said. Deterministic (fixed seed)
//! unless `PROPTEST_RNG_SEED` is set; `PROPTEST_CASES` sets the budget (256 by default).

use aviary_data_plane::protocol::{ClientFrame, parse_client_frame};
use aviary_data_plane::pusher::frames::{self, ClientFrame as PusherFrame};
use aviary_data_plane::pusher::names;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Value, json};

fn config() -> Config {
    let mut config = Config { failure_persistence: None, ..Config::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xA71A_2026);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const AVIARY_KINDS: &[&str] = &[
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
    "nonsense",
];

/// An Aviary frame: a known (or unknown) type with arbitrary values under the fields frames use.
fn aviary_frame() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("id"),
        Just("channel"),
        Just("token"),
        Just("data"),
        Just("since"),
        Just("limit"),
        Just("presence"),
        Just("idempotency_key"),
        Just("other"),
    ];
    (
        proptest::sample::select(AVIARY_KINDS),
        proptest::collection::btree_map(field, json_value(), 0..6),
        proptest::option::of(json_value()),
    )
        .prop_map(|(kind, fields, kind_override)| {
            let mut object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("type".into(), kind_override.unwrap_or_else(|| json!(kind)));
            Value::Object(object)
        })
}

const PUSHER_EVENTS: &[&str] = &[
    "pusher:ping",
    "pusher:pong",
    "pusher:subscribe",
    "pusher:unsubscribe",
    "pusher:signin",
    "client-typing",
    "pusher:unknown",
];

/// A Pusher frame: an event with `data` as an object, as a JSON-encoded string, or anything.
fn pusher_frame() -> impl Strategy<Value = Value> {
    let data = prop_oneof![
        json_value(),
        json_value().prop_map(|v| Value::String(v.to_string())),
        (".{0,12}", proptest::option::of(".{0,12}"), proptest::option::of(".{0,12}")).prop_map(
            |(channel, auth, channel_data)| {
                json!({"channel": channel, "auth": auth, "channel_data": channel_data, "user_data": channel_data})
            }
        ),
    ];
    (proptest::sample::select(PUSHER_EVENTS), proptest::option::of(data), proptest::option::of(json_value())).prop_map(
        |(event, data, channel)| {
            let mut object = serde_json::Map::new();
            object.insert("event".into(), json!(event));
            if let Some(data) = data {
                object.insert("data".into(), data);
            }
            if let Some(channel) = channel {
                object.insert("channel".into(), channel);
            }
            Value::Object(object)
        },
    )
}

/// A Pusher frame's `data` as an object, whether sent as one or as a JSON-encoded string.
fn data_of(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_an_aviary_frame_or_a_typed_error(text in any::<String>()) {
        if let Err((_, error)) = parse_client_frame(&text) {
            prop_assert!(!error.0.is_empty());
        }
    }

    #[test]
    fn structured_aviary_frames_parse_to_what_they_say(frame in aviary_frame()) {
        let text = frame.to_string();
        match parse_client_frame(&text) {
            Ok((id, parsed)) => {
                // The id is handed back verbatim for correlation (compared as text: a float need
                // not survive a parse and print unchanged, the bytes must).
                if let Some(id) = id {
                    prop_assert_eq!(Some(id.get().to_owned()), frame.get("id").map(Value::to_string));
                }
                let kind = frame["type"].as_str().unwrap_or_default();
                let channel = || frame["channel"].as_str().unwrap_or_default().to_owned();
                match parsed {
                    ClientFrame::Ping => prop_assert_eq!(kind, "ping"),
                    ClientFrame::Connect(c) => prop_assert_eq!(Some(c.token.as_str()), frame["token"].as_str()),
                    ClientFrame::Refresh(r) => prop_assert_eq!(Some(r.token.as_str()), frame["token"].as_str()),
                    ClientFrame::Subscribe(s) => prop_assert_eq!(s.channel, channel()),
                    ClientFrame::Unsubscribe(c) | ClientFrame::PresenceLeave(c) | ClientFrame::PresenceGet(c) => {
                        prop_assert_eq!(c.channel, channel())
                    }
                    ClientFrame::Publish(p) => {
                        prop_assert_eq!(p.channel, channel());
                        prop_assert_eq!(Some(p.data.get().to_owned()), frame.get("data").map(Value::to_string));
                    }
                    ClientFrame::PresenceEnter(p) | ClientFrame::PresenceUpdate(p) => prop_assert_eq!(p.channel, channel()),
                    ClientFrame::History(h) => prop_assert_eq!(h.channel, channel()),
                }
                prop_assert!(AVIARY_KINDS[..AVIARY_KINDS.len() - 1].contains(&kind), "parsed a {:?} frame", kind);
            }
            Err((_, error)) => prop_assert!(!error.0.is_empty()),
        }
    }

    #[test]
    fn any_text_is_a_pusher_frame_or_a_typed_error(text in any::<String>()) {
        if let Err(error) = frames::decode(&text) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn structured_pusher_frames_decode_to_what_they_say(frame in pusher_frame()) {
        let text = frame.to_string();
        match frames::decode(&text) {
            Ok(PusherFrame::Ping) => prop_assert_eq!(&frame["event"], "pusher:ping"),
            Ok(PusherFrame::Pong) => prop_assert_eq!(&frame["event"], "pusher:pong"),
            Ok(PusherFrame::Subscribe { channel, .. }) | Ok(PusherFrame::Unsubscribe { channel }) => {
                prop_assert!(frame["event"] == "pusher:subscribe" || frame["event"] == "pusher:unsubscribe");
                let data = data_of(&frame);
                prop_assert_eq!(data["channel"].as_str(), Some(channel.as_str()));
            }
            Ok(PusherFrame::Signin { .. }) => prop_assert_eq!(&frame["event"], "pusher:signin"),
            Ok(PusherFrame::ClientEvent { event, channel, .. }) => {
                prop_assert_eq!(frame["event"].as_str(), Some(event.as_str()));
                prop_assert_eq!(frame["channel"].as_str(), Some(channel.as_str()));
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn pusher_channel_names_map_onto_aviary_names_and_back(name in prop_oneof![
        any::<String>(),
        "(private-|presence-|private-encrypted-|cache-)?[A-Za-z0-9_=@,.;-]{1,40}",
    ]) {
        if let Ok(aviary) = names::to_aviary(&name) {
            prop_assert!(aviary_core::channel::validate_channel(&aviary).is_ok(), "{:?} -> {:?}", name, aviary);
            prop_assert_eq!(names::to_pusher(&aviary), Some(name.clone()));
        }
    }
}
