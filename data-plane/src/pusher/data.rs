//! How a channel event's `data` crosses between Pusher and Aviary, one rule each way.
//!
//! Pusher's server SDKs send `data` as a string, JSON-encoding objects into it, and pusher-js
//! `JSON.parse`s what it receives when it can. Aviary's messages carry any JSON value. So that
//! both kinds of client see the same message:
//! - **Pusher → Aviary** ([`to_aviary`]): a data string that is itself JSON is the Aviary value
//!   (byte for byte: `"{\"text\":\"hi\"}"` reaches Aviary clients as `{"text":"hi"}`); any other
//!   string is a JSON string (`"hello"`). A `data` that is not a string (some clients send an
//!   object) is the value as given.
//! - **Aviary → Pusher** ([`to_pusher`]): a JSON string value is sent as that string; any other
//!   value as its JSON text in a string, which pusher-js parses back into the value.
//!
//! A round trip Pusher → Aviary → Pusher gives pusher-js the value it would have got from
//! Pusher; the JSON text of an encoded event (`private-encrypted-` ciphertext) is kept byte for
//! byte.

use serde_json::value::RawValue;

/// The Aviary message value for a Pusher event's `data` (the raw JSON of the `data` field).
pub fn to_aviary(data: &RawValue) -> Box<RawValue> {
    let text = data.get();
    if text.starts_with('"')
        && let Ok(inner) = serde_json::from_str::<String>(text)
    {
        if let Ok(value) = serde_json::from_str::<Box<RawValue>>(&inner) {
            return value;
        }
        return data.to_owned();
    }
    data.to_owned()
}

/// The `data` field (raw JSON, always a string) of a Pusher event for an Aviary message value
/// (its raw JSON bytes).
pub fn to_pusher(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    if text.starts_with('"') && serde_json::from_str::<String>(text).is_ok() {
        return text.to_owned();
    }
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn a_json_string_reaches_aviary_as_the_value_it_encodes() {
        assert_eq!(to_aviary(&raw(r#""{\"text\":\"hi\"}""#)).get(), r#"{"text":"hi"}"#);
        assert_eq!(to_aviary(&raw(r#""[1, 2]""#)).get(), "[1, 2]", "kept byte for byte");
        assert_eq!(to_aviary(&raw(r#""42""#)).get(), "42");
        assert_eq!(to_aviary(&raw(r#""hello""#)).get(), r#""hello""#, "not JSON: a string");
        assert_eq!(to_aviary(&raw(r#""""#)).get(), r#""""#);
        assert_eq!(to_aviary(&raw(r#"{"x":1}"#)).get(), r#"{"x":1}"#, "a non-string is the value");
    }

    #[test]
    fn aviary_values_reach_pusher_as_strings() {
        assert_eq!(to_pusher(br#"{"text":"hi"}"#), r#""{\"text\":\"hi\"}""#);
        assert_eq!(to_pusher(br#""hello""#), r#""hello""#);
        assert_eq!(to_pusher(b"null"), r#""null""#);
    }

    #[test]
    fn pusher_to_aviary_to_pusher_gives_pusher_js_the_same_value() {
        for data in [r#""{\"text\":\"hi\"}""#, r#""hello""#, r#""{\"nonce\":\"a\",\"ciphertext\":\"b\"}""#] {
            let back = to_pusher(to_aviary(&raw(data)).get().as_bytes());
            assert_eq!(back, data);
        }
    }
}
